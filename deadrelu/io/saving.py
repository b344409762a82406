"""Model → file: saved atomically, in the format the extension names, loadable by plain Keras."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

from deadrelu.errors import UsageError
from deadrelu.io.files import atomic_output, check_output_path, same_file

# Keras chooses the format from the extension (case-sensitively).
MODEL_EXTENSIONS = (".keras", ".h5", ".hdf5")
_H5_EXTENSIONS = (".h5", ".hdf5")


def model_output_path(model_path: str, output: str | None, suffix: str, *, force: bool = False) -> str:
    """Resolves and checks where a transformed model goes, before any work is done.

    Args:
        model_path: The input model (never overwritten).
        output: Where to write (the CLI's -o OUT), or None for `<stem>_<suffix>.keras` beside the input.
        suffix: What the transformation is called ("prelu", "revived", ...).
        force: Whether an existing OUT may be overwritten.

    Returns:
        OUT, as a string.

    Raises:
        UsageError: OUT has no model extension, is the input itself, or exists without `force`.
    """
    out = os.fspath(output) if output else default_output_path(model_path, suffix)
    if not out.endswith(MODEL_EXTENSIONS):
        raise UsageError(f"`output={out!r}`: the output name must end in .keras or .h5")
    if same_file(out, model_path):  # a link, or another spelling of the same file
        raise UsageError(
            f"`output={out!r}` is the input model; deadrelu never overwrites its input, choose another path"
        )
    check_output_path(out, force=force)
    return out


def default_output_path(model_path: str, suffix: str) -> str:
    """`<stem>_<suffix>.keras` beside the input model: where a transformed model goes by default."""
    model_path = os.path.normpath(os.fspath(model_path))
    stem = os.path.splitext(os.path.basename(model_path))[0]
    return os.path.join(os.path.dirname(model_path), f"{stem}_{suffix}.keras")


def save_model(model, path, *, force: bool = False, verify: bool = True, notes: list[str] | None = None) -> str:
    """Saves a Keras model to `path` through a temporary file renamed into place.

    A failure halfway (disk full, an unserialisable layer) leaves no partial file and leaves an
    existing `path` as it was. With `verify`, the temporary file is read back with plain
    `keras.models.load_model` before it takes `path`'s place. Keras 3 writes some compile settings
    into `.h5` files that it cannot read back (e.g. `loss="mse"`); such a file is then written
    again without the compile settings, and a note says so.

    Args:
        model: A `keras.Model`.
        path: Where to write: `.keras` (the Keras 3 format) or `.h5` / `.hdf5` (legacy HDF5).
        force: Overwrite `path` if it exists.
        verify: Read the file back with plain Keras before renaming it into place.
        notes: If given, one-line remarks for the user are appended to it.

    Returns:
        `path`, as a string.

    Raises:
        UsageError: The extension is not one Keras can save to, the folder does not exist, or
            `path` exists and `force` is False (decided again, atomically, when the file is moved
            into place: a concurrent run that wrote `path` first is never replaced).

    Example:
        >>> save_model(patched, "model_prelu.keras")
    """
    import keras

    path = os.fspath(path)
    if not path.endswith(MODEL_EXTENSIONS):
        raise UsageError(
            f"cannot save a model as {path!r}: the name must end in .keras or .h5 (Keras chooses the format from it)"
        )
    from deadrelu.io.legacy.tf_ops import TFOpLambda

    # deadrelu's own layer for tf.keras TensorFlow ops is not registered with Keras (a file naming
    # it must not load in a process just because deadrelu was imported): the check names it.
    own = {"TFOpLambda": TFOpLambda}
    h5 = path.endswith(_H5_EXTENSIONS)
    with atomic_output(path, force=force) as tmp, _quiet_keras():
        model.save(tmp)
        if verify:
            try:
                keras.models.load_model(tmp, custom_objects=own)
            except Exception as exc:
                if not (h5 and model.compiled):
                    raise RuntimeError(f"plain Keras cannot read back the model it just wrote ({exc})") from exc
                model.save(tmp, include_optimizer=False)
                keras.models.load_model(tmp, custom_objects=own)
                if notes is not None:
                    notes.append(
                        f"saved {os.path.basename(path)} without its compile settings, which Keras "
                        "cannot read back from .h5; compile it before training, or save as .keras"
                    )
    return path


@contextlib.contextmanager
def _quiet_keras():
    """Hides Keras's "HDF5 is legacy" and "compiled metrics not built" chatter while saving."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        absl.setLevel(level)

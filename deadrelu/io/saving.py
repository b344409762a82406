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

    The file loads with plain `keras.saving.load_model` compiled (loss, metrics, optimizer class
    and configuration), ready to `fit`, and without Keras's "Skipping variable loading for
    optimizer …" warning: in a `.keras` file, an optimizer that has no variables yet (deadrelu's
    fixed models are compiled like the original with a fresh optimizer) gets them first
    (`optimizer.build`: step 0, zero moments, what a fresh optimizer starts from), since Keras
    builds the optimizer of a compiled file as it loads it and warns when the file holds fewer
    variables; a `.h5` file keeps its compile settings but no optimizer variables, which Keras 3
    restores into an optimizer built for no weight (the loaded model's first `fit` would fail).

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
    if not h5:
        _build_fresh_optimizer(model)
    with atomic_output(path, force=force) as tmp, _quiet_keras():
        model.save(tmp)
        if h5:
            _drop_h5_optimizer_weights(tmp)
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


def _build_fresh_optimizer(model) -> None:
    """Creates the variables of a compiled model's optimizer that has none yet (its state at step 0).

    Loading a compiled file, Keras builds the optimizer for every trainable variable and then
    reads the optimizer variables the file holds; an unbuilt optimizer saves only two of them (the
    step and the learning rate), so every load would warn that it skipped them. Built here, the
    file holds exactly what a fresh optimizer has, and it loads silently, with the same result.
    """
    optimizer = getattr(model, "optimizer", None)
    if not getattr(model, "compiled", False) or optimizer is None or getattr(optimizer, "built", True):
        return
    if not model.built:
        return  # nothing to build the optimizer for (Keras builds it when the model is built)
    with contextlib.suppress(Exception):  # a custom optimizer that cannot build: the file is still right
        optimizer.build(model.trainable_variables)


def _drop_h5_optimizer_weights(path: str) -> None:
    """Rewrites a legacy `.h5` file Keras 3 just wrote without its optimizer variables (the
    compile settings stay).

    Keras 3 loads them by building the optimizer for `model._trainable_variables`, which is empty
    for a functional model: the loaded optimizer then refuses the model's weights at the first
    `fit` ("Unknown variable"). Without them, `fit` builds the optimizer, as for a new model. The
    file is copied rather than edited in place, since HDF5 keeps the space of a deleted group.
    """
    import h5py

    with h5py.File(path, "r") as f:
        if "optimizer_weights" not in f:
            return
    lean = path + ".lean"
    try:
        with h5py.File(path, "r") as src, h5py.File(lean, "w") as dst:
            for key, value in src.attrs.items():
                dst.attrs[key] = value
            for name in src:
                if name != "optimizer_weights":
                    src.copy(src[name], dst, name=name)
        os.replace(lean, path)
    finally:
        if os.path.exists(lean):
            os.remove(lean)


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

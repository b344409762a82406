"""Files → `keras.Model` (minimal first version; issue 3 extends it to legacy files)."""

from __future__ import annotations

import dataclasses
import hashlib
import os

from deadrelu.errors import ModelLoadError


@dataclasses.dataclass
class LoadedModel:
    """A model and where it came from.

    Attributes:
        model: The loaded `keras.Model`.
        path: The path the user gave.
        format: "keras", "h5" or "savedmodel".
        sha256: Hash of the file (of `saved_model.pb` for a SavedModel directory).
        repairs: Human-readable descriptions of the repairs applied to the stored configuration.
    """

    model: object
    path: str
    format: str
    sha256: str
    repairs: list = dataclasses.field(default_factory=list)


def file_sha256(path: str) -> str:
    """Returns the sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load(path: str, *, custom_objects=None, architecture=None, unsafe=False, compile=True) -> LoadedModel:
    """Loads a Keras model file and describes it. See `load_model`."""
    if not os.path.exists(path):
        raise ModelLoadError(f"model file not found: {path}; check the path")
    import keras

    try:
        model = keras.models.load_model(path, custom_objects=custom_objects, compile=compile, safe_mode=not unsafe)
    except Exception as exc:  # noqa: BLE001 - any loader failure is the user's file
        raise ModelLoadError(f"cannot load {path} as a Keras model: {exc}") from exc
    fmt = "h5" if path.endswith((".h5", ".hdf5")) else "keras"
    return LoadedModel(model=model, path=path, format=fmt, sha256=file_sha256(path))


def load_model(path: str, **options):
    """Loads a Keras model from `.keras`, legacy `.h5` or a SavedModel directory.

    Args:
        path: The model file or directory.
        **options: `custom_objects`, `architecture`, `unsafe`, `compile` (see `load`).

    Returns:
        A `keras.Model`.

    Example:
        >>> model = deadrelu.load_model("model.h5")
    """
    return load(path, **options).model

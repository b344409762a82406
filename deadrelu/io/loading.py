"""Files → `keras.Model`: open the Keras files people really have.

The format is decided by the file's content, never by its extension:

* a zip (`PK\\x03\\x04`): a `.keras` archive from Keras 3 or from tf.keras 2.13–2.15;
* HDF5 (`\\x89HDF\\r\\n\\x1a\\n`): a legacy `.h5` from Keras 2.2 → 2.15 or Keras 3, a whole model or
  weights only (then the architecture comes from a Keras JSON file, `architecture=`);
* a directory with `saved_model.pb`: a TensorFlow SavedModel written by tf.keras (its metadata and
  checkpoint read as data, `deadrelu.io.legacy.savedmodel`, then rebuilt like an HDF5 file).

Plain `keras.models.load_model` is tried first. When it refuses a file, or the file is known to need
it, the stored configuration (the HDF5 `model_config` attribute, the zip's `config.json`) is repaired
in memory (`deadrelu.io.legacy.config_repairs`), rebuilt with Keras 3, and the weights are copied by
layer name (`deadrelu.io.legacy.h5_weights`). The user's file is only ever opened for reading. Each
repair is described in `LoadedModel.repairs`; every failure is a `ModelLoadError` that says what is
wrong and how to fix it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import types
import zipfile
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

import deadrelu.io.refusals as refusals
import deadrelu.io.safety as safety
from deadrelu.errors import ModelLoadError
from deadrelu.io.files import file_kind
from deadrelu.io.legacy import config_repairs, first_line, h5_weights, training_config

if TYPE_CHECKING:
    import keras

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"


@dataclasses.dataclass
class LoadedModel:
    """A model and where it came from.

    Attributes:
        model: The loaded `keras.Model`.
        path: The path the user gave.
        format: "keras", "h5" or "savedmodel".
        sha256: Hash of the file (of `saved_model.pb` for a SavedModel directory).
        repairs: Human-readable descriptions of the repairs applied to the stored configuration.
        compiled: Whether the model was compiled from the training configuration in the file.
        keras_version: The Keras version that wrote the file, when the file records it.
    """

    model: object
    path: str
    format: str
    sha256: str
    repairs: list = dataclasses.field(default_factory=list)
    compiled: bool = False
    keras_version: str | None = None


def file_sha256(path: str) -> str:
    """Returns the sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load(
    path: str,
    *,
    custom_objects=None,
    architecture=None,
    unsafe: bool = False,
    compile: bool = True,
    input_shape=None,
) -> LoadedModel:
    """Loads a Keras model file and describes it. See `load_model`.

    Args:
        path: A `.keras` zip, an HDF5 file (whatever its extension) or a SavedModel directory.
        custom_objects: A dict of custom classes and functions, or the path of a `.py` file that
            defines them (the CLI's --custom-objects module.py).
        architecture: Path of a Keras JSON model config (`model.to_json()`), used to rebuild the model
            when `path` is an HDF5 file holding weights only (the CLI's --architecture).
        unsafe: Run Python code stored in the file (Lambda layers, TFSMLayer) and read files its
            configuration names (lookup vocabularies); only for files you trust (the CLI's
            --unsafe). Modules outside Keras stay refused (`deadrelu.io.safety`).
        compile: Compile the model from the training configuration stored in the file, when possible.
        input_shape: Input shape without the batch axis (a tuple, or a string such as "28,28,1"),
            for Sequential models saved without one (the CLI's --input-shape).

    Returns:
        A `LoadedModel`.

    Raises:
        ModelLoadError: The file cannot be found, read or rebuilt; the message says how to fix it.
    """
    path = os.fspath(path)
    fmt = _detect_format(path)
    ctx = _Context(
        path=path,
        objects=_custom_objects(custom_objects),
        unsafe=unsafe,
        input_shape=_parse_input_shape(input_shape),
    )
    if architecture is not None and fmt != "h5":
        raise ModelLoadError(
            f"`architecture` only applies to an HDF5 weights file, but {path} is a "
            f"{'SavedModel' if fmt == 'savedmodel' else '.keras archive'}; drop `architecture`"
        )
    if fmt == "savedmodel":
        model, training = _load_savedmodel(ctx)
    elif fmt == "keras":
        model, training = _load_zip(ctx)
    else:
        model, training = _load_hdf5(ctx, architecture)
    sha = file_sha256(_saved_model_pb(path) if fmt == "savedmodel" else path)
    compiled = False
    if compile:
        compiled = training_config.compile_model(model, training, objects=ctx.objects, notes=ctx.repairs)
    return LoadedModel(
        model=model,
        path=path,
        format=fmt,
        sha256=sha,
        repairs=ctx.repairs,
        compiled=compiled,
        keras_version=ctx.keras_version,
    )


def load_model(
    path: str | os.PathLike,
    *,
    custom_objects: Mapping | str | os.PathLike | None = None,
    architecture: str | os.PathLike | None = None,
    unsafe: bool = False,
    compile: bool = True,
    input_shape: tuple | str | None = None,
) -> keras.Model:
    """Loads a Keras model from `.keras`, legacy `.h5` or a SavedModel directory.

    The format is read from the file's content, not its extension. What plain Keras 3 refuses
    (Keras 2 configurations, tf.keras archives, SavedModels) is repaired in memory; the file is
    never written.

    Args:
        path: The model file (a `.keras` zip, an HDF5 file whatever its extension) or a SavedModel
            directory written by tf.keras.
        custom_objects: A dict of custom classes and functions, or the path of a `.py` file that
            defines them. Defaults to None (Keras's own objects only).
        architecture: Path of a Keras JSON model config (`model.to_json()`), to rebuild the model
            when `path` is an HDF5 file holding weights only. Defaults to None.
        unsafe: Run Python code stored in the file (`Lambda` layers, `TFSMLayer`) and read files
            its configuration names (lookup vocabularies); only for files you trust. Modules
            outside Keras stay refused. Defaults to False.
        compile: Compile the model from the training configuration stored in the file, when
            possible. Defaults to True.
        input_shape: Input shape without the batch axis (a tuple, or a string such as
            `"28,28,1"`), for a Sequential model saved without one. Defaults to None.

    Returns:
        The `keras.Model`.

    Raises:
        ModelLoadError: The file cannot be found, read or rebuilt; the message says how to fix it.

    Example:
        >>> model = deadrelu.load_model("model.h5")
        >>> model = deadrelu.load_model("weights.h5", architecture="model.json")
    """
    return load(
        path,
        custom_objects=custom_objects,
        architecture=architecture,
        unsafe=unsafe,
        compile=compile,
        input_shape=input_shape,
    ).model


@dataclasses.dataclass
class _Context:
    """What one `load` call knows: the user's options and the repairs made so far."""

    path: str
    objects: dict
    unsafe: bool
    input_shape: tuple | None
    repairs: list = dataclasses.field(default_factory=list)
    keras_version: str | None = None

    @property
    def runs_stored_code(self) -> bool:
        """Whether code from outside Keras may run while the model is rebuilt (lambdas, custom objects)."""
        return self.unsafe or bool(self.objects)


# ----------------------------------------------------------------------------------------------
# Format detection and user options


def _detect_format(path: str) -> str:
    """Returns "keras", "h5" or "savedmodel" from the file's content, or raises ModelLoadError."""
    if not os.path.exists(path):
        raise ModelLoadError(f"model file not found: {path}; check the path")
    kind = file_kind(path)
    if kind is not None:  # opening a FIFO would wait for a writer forever
        raise ModelLoadError(f"{path} is {kind}, not a model file; pass a model saved with model.save()")
    if os.path.isdir(path):
        if os.path.exists(_saved_model_pb(path)):
            return "savedmodel"
        raise ModelLoadError(
            f"{path} is a directory but not a TensorFlow SavedModel (it has no saved_model.pb); "
            "pass a .keras or .h5 model file, or a SavedModel directory"
        )
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path} ({exc.strerror}); check its permissions") from exc
    if head.startswith(_HDF5_MAGIC):
        return "h5"
    if head.startswith(_ZIP_MAGIC):
        return "keras"
    import h5py  # HDF5 files may start with a user block; h5py finds the superblock further on.

    if head and h5py.is_hdf5(path):
        return "h5"
    raise ModelLoadError(f"{path} {_describe_non_model(head)}")


def _describe_non_model(head: bytes) -> str:
    """Says what a file that is not a model seems to be, and what to pass instead."""
    if not head:
        return "is empty; pass a model saved with model.save()"
    if head.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the model itself; run `git lfs pull` to fetch the file"
    if head.lstrip()[:1] in (b"{", b'"'):
        return (
            "is a JSON file, not a model; if it is a model architecture, pass the weights file as "
            "the model and this file with `architecture=`"
        )
    return (
        "is neither a Keras .keras archive nor an HDF5 .h5 file; pass a model saved with "
        "model.save() (or a SavedModel directory)"
    )


def _saved_model_pb(path: str) -> str:
    """Returns the path of the SavedModel's graph file (what its sha256 describes)."""
    pb = os.path.join(path, "saved_model.pb")
    return pb if os.path.exists(pb) else os.path.join(path, "saved_model.pbtxt")


def _parse_input_shape(value) -> tuple | None:
    """Parses an input shape without the batch axis: (28, 28, 1), "28,28,1" or "(28, 28, 1)"."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.strip().strip("()[]").split(",") if p.strip()]
        try:
            value = [None if p.lower() == "none" else int(p) for p in parts]
        except ValueError:
            raise ModelLoadError(
                f"`input_shape` must be integers separated by commas, such as 28,28,1; got {value!r}"
            ) from None
    shape = tuple(value)
    if not shape or not all(d is None or (isinstance(d, int) and d > 0) for d in shape):
        raise ModelLoadError(
            f"`input_shape` must be positive integers without the batch axis, such as 28,28,1; got {value!r}"
        )
    return shape


def _custom_objects(spec) -> dict:
    """Turns `custom_objects` (None, a dict, or the path of a .py file) into a dict."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return dict(spec)
    if isinstance(spec, (str, os.PathLike)):
        return _objects_from_file(os.fspath(spec))
    raise ModelLoadError(f"`custom_objects` must be a dict or the path of a .py file, not {type(spec).__name__}")


def _objects_from_file(path: str) -> dict:
    """Imports a .py file by path and returns the classes and functions it defines or imports."""
    if file_kind(path) is not None:
        raise ModelLoadError(f"`custom_objects={path!r}` is {file_kind(path)}, not a file; pass a .py file")
    if not os.path.isfile(path):
        raise ModelLoadError(
            f"`custom_objects` file not found: {path}; pass the .py file that defines the custom layers"
        )
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    name = f"deadrelu_custom_{stem}_{hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"`custom_objects={path!r}` is not a Python file; pass a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # The file may import its neighbours (a package of layers), as it would when run from its folder.
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ModelLoadError(
            f"cannot import `custom_objects={path!r}`: {type(exc).__name__}: {first_line(exc)}; "
            "fix the file so that `python` can import it"
        ) from exc
    finally:
        sys.path.remove(folder)
    objects = {
        key: value
        for key, value in vars(module).items()
        if not key.startswith("_") and isinstance(value, (type, types.FunctionType))
    }
    if not objects:
        raise ModelLoadError(f"`custom_objects={path!r}` defines no classes or functions")
    return objects


# ----------------------------------------------------------------------------------------------
# Stored configurations


def _decode_json(text: str, where: str) -> dict:
    """Parses a stored JSON config, including Keras's tuple encoding and double-encoded strings."""

    def hook(obj):
        if obj.get("class_name") == "__tuple__" and "items" in obj:
            return tuple(obj["items"])
        if obj.get("class_name") == "TensorShape" and "items" in obj:
            return list(obj["items"])
        return obj

    try:
        value = json.loads(text, object_hook=hook)
        if isinstance(value, str):  # json.dump(model.to_json()) stores a JSON string inside JSON
            value = json.loads(value, object_hook=hook)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(
            f"the model configuration in {where} is not valid JSON ({exc.msg}, line {exc.lineno})"
        ) from exc
    except RecursionError:  # a hostile nesting depth, not a model
        raise ModelLoadError(f"the model configuration in {where} is nested too deeply to be a model's") from None
    if not isinstance(value, dict) or "class_name" not in value:
        raise ModelLoadError(
            f"{where} does not hold a Keras model configuration (a JSON object with 'class_name' "
            "and 'config', as written by model.to_json())"
        )
    return value


def _read_architecture(path: str) -> dict:
    """Reads the `architecture` JSON file."""
    if file_kind(path) is not None:
        raise ModelLoadError(f"`architecture={path!r}` is {file_kind(path)}, not a file; pass the model's JSON file")
    if not os.path.isfile(path):
        raise ModelLoadError(f"`architecture` file not found: {path}; pass the model's JSON file")
    with open(path, encoding="utf-8") as f:
        return _decode_json(f.read(), path)


def _decode_training_config(text: str | None) -> dict | None:
    """Parses the HDF5 `training_config` attribute; a broken one only means no compiling."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _zip_metadata(archive: zipfile.ZipFile) -> dict:
    """Reads metadata.json of a `.keras` archive ({} when absent or unreadable)."""
    try:
        value = json.loads(archive.read("metadata.json"))
    except (KeyError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _repair(config: dict, ctx: _Context) -> tuple[dict, config_repairs.ConfigRepair]:
    """Checks a stored model config (`deadrelu.io.safety`), then repairs it for Keras 3.

    Returns:
        (repaired config, the repair's record).
    """
    safety.check_model_config(config, path=ctx.path, objects=ctx.objects, unsafe=ctx.unsafe)
    repair = config_repairs.ConfigRepair(
        ctx.path, ctx.objects, unsafe=ctx.unsafe, input_shape=ctx.input_shape, written_by=ctx.keras_version
    )
    return repair.run(config), repair


# ----------------------------------------------------------------------------------------------
# HDF5


def _load_hdf5(ctx: _Context, architecture: str | None):
    """Loads a legacy HDF5 file: a whole model, or weights plus a JSON architecture.

    Returns:
        (model, training_config or None).
    """
    import h5py

    try:
        f = h5py.File(ctx.path, "r")
    except OSError as exc:
        raise ModelLoadError(
            f"cannot read {ctx.path} as HDF5 ({first_line(exc)}); the file may be truncated, save it again"
        ) from exc
    # Keras picks its loader by extension: an HDF5 file named .keras always needs our path.
    return _read_hdf5(f, ctx, architecture, named_h5=ctx.path.endswith((".h5", ".hdf5")))


def _read_hdf5(f, ctx: _Context, architecture: str | None, *, named_h5: bool | None):
    """Rebuilds the model an open HDF5 file holds, then closes the file.

    Args:
        f: An open `h5py.File`: the user's file, or a SavedModel converted in memory.
        named_h5: Whether the user's file is named .h5 or .hdf5 (Keras's own loader is tried first);
            None for a converted SavedModel, which is no file Keras could read.

    Returns:
        (model, training_config or None).
    """
    with f:
        safety.check_hdf5(f, path=ctx.path)
        ctx.keras_version = h5_weights.attr_text(f, "keras_version") or h5_weights.attr_text(
            f.get("model_weights"), "keras_version"
        )
        config = _hdf5_config(f, ctx, architecture)
        training = _decode_training_config(h5_weights.attr_text(f, "training_config"))
        safety.check_config(training, path=ctx.path, objects=ctx.objects, unsafe=ctx.unsafe)
        fixed, repair = _repair(config, ctx)
        tried_keras = architecture is None and not repair.changed and bool(named_h5)
        if tried_keras:
            model = _try_plain_keras(ctx)
            if model is not None:
                return model, training
        try:
            model = _build(fixed, repair.custom_objects, ctx)
            h5_weights.load_weights(model, f, repair.original_names, ctx.path)
        except ModelLoadError as exc:
            raise refusals.lambda_backend_hint(exc, repair.functions, ctx.path) from exc
    if named_h5 is False and architecture is None:
        ctx.repairs.append("read as HDF5: the file's content is HDF5, whatever its name says")
    ctx.repairs.extend(repair.messages())
    if tried_keras:
        ctx.repairs.append("weights matched by layer name (Keras's own legacy loader refused the file)")
    return model, training


def _hdf5_config(f, ctx: _Context, architecture: str | None) -> dict:
    """The model config to rebuild: the `architecture` JSON, or the file's `model_config`."""
    if architecture is not None:
        ctx.repairs.append(f"model rebuilt from the architecture in {os.path.basename(architecture)}")
        return _read_architecture(architecture)
    stored = h5_weights.attr_text(f, "model_config")
    arrays = _dataset_names(f) if stored is None and not _holds_weights(f) else []
    if arrays:
        listed = ", ".join(arrays[:5]) + (", ..." if len(arrays) > 5 else "")
        raise ModelLoadError(
            f"{ctx.path} holds arrays ({listed}), not a Keras model; to read them as the inputs pass the file "
            f'as `data="{ctx.path}:{arrays[0]}"`, and give a model saved with model.save() as the model'
        )
    if stored is None:
        raise ModelLoadError(
            f"{ctx.path} holds only weights, no model architecture; pass the architecture as a Keras "
            'JSON file with `architecture="model.json"` to rebuild the model and load these weights'
        )
    return _decode_json(stored, ctx.path)


def _holds_weights(f) -> bool:
    """Whether an HDF5 file without a model config looks like Keras weights (else it holds data)."""
    # Keras 2 (save_weights, or a model's weights group), Keras 3 (.weights.h5: layers/, vars/).
    return "layer_names" in f.attrs or any(name in f for name in ("model_weights", "layers", "vars"))


def _dataset_names(f) -> list[str]:
    """The paths of the datasets in an HDF5 file, in the file's order."""
    import h5py

    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


# ----------------------------------------------------------------------------------------------
# .keras zips


def _load_zip(ctx: _Context):
    """Loads a `.keras` archive from Keras 3, or from tf.keras 2.13–2.15.

    Returns:
        (model, compile_config or None).
    """
    try:
        archive = zipfile.ZipFile(ctx.path)
    except zipfile.BadZipFile as exc:
        raise ModelLoadError(f"{ctx.path} is a damaged zip archive ({exc}); save the model again") from exc
    with archive:
        # Every entry is read once and its CRC checked: a damaged weights entry could otherwise
        # load as wrong weights, or fail deep inside Keras.
        try:
            damaged = archive.testzip()
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            damaged = f"? ({exc})"
        if damaged is not None:
            raise ModelLoadError(
                f"{ctx.path} is a damaged zip archive (entry {damaged} fails its CRC check); the file was "
                "corrupted on disk or in transfer: save or download the model again"
            )
        safety.check_zip(archive, path=ctx.path)
        names = set(archive.namelist())
        if "config.json" not in names:
            raise ModelLoadError(
                f"{ctx.path} is a zip archive but not a Keras model (it has no config.json); "
                "pass a file written by model.save('model.keras')"
            )
        config = _decode_json(archive.read("config.json").decode("utf-8"), ctx.path)
        ctx.keras_version = _zip_metadata(archive).get("keras_version")
        fixed, repair = _repair(config, ctx)
        training = fixed.get("compile_config")  # as fitted to the installed Keras (legacy.newer_keras)
        written_by_keras3 = str(ctx.keras_version or "3").startswith("3")
        if written_by_keras3 and not repair.changed:
            model = _try_plain_keras(ctx)
            if model is not None:
                return model, training
        if "model.weights.h5" not in names:
            raise ModelLoadError(f"{ctx.path} has no model.weights.h5; save the model again with model.save")
        if written_by_keras3:
            model = _load_repaired_zip(archive, fixed, repair.custom_objects, ctx)
        else:
            model = _build(fixed, repair.custom_objects, ctx)
            h5_weights.load_archive_weights(model, archive.read("model.weights.h5"), ctx.path)
            ctx.repairs.append(
                f"weights read from the tf.keras {ctx.keras_version} archive layout and matched by layer"
            )
    ctx.repairs[:0] = repair.messages()
    return model, training


def _load_repaired_zip(archive: zipfile.ZipFile, fixed: dict, objects: dict, ctx: _Context):
    """Loads a Keras 3 archive whose config needed repairs: a temporary copy with the fixed config."""
    with tempfile.TemporaryDirectory(prefix="deadrelu-") as tmp:
        copy_path = os.path.join(tmp, "repaired.keras")
        with zipfile.ZipFile(copy_path, "w") as out:
            for info in archive.infolist():
                data = json.dumps(fixed).encode() if info.filename == "config.json" else archive.read(info)
                out.writestr(info.filename, data)
        with refusals.explained(ctx.path, stored_code=ctx.runs_stored_code):
            return _keras_load_model(copy_path, objects, ctx)


# ----------------------------------------------------------------------------------------------
# TensorFlow SavedModel (read as data by deadrelu.io.legacy.savedmodel)


def _load_savedmodel(ctx: _Context):
    """Loads a SavedModel written by tf.keras, without running anything it holds.

    `deadrelu.io.legacy.savedmodel` reads `keras_metadata.pb` and the checkpoint in `variables/` into an
    in-memory HDF5 file in Keras 2's layout; the HDF5 path then rebuilds it with its checks, repairs
    and by-name weight copy. Neither tf_keras nor `tf.saved_model.load` is used: both would run the
    directory's functions and stored code.

    Returns:
        (model, training_config or None).
    """
    from deadrelu.io.legacy import savedmodel

    saved = savedmodel.read(ctx.path)
    model, training = _read_hdf5(saved.to_hdf5(), ctx, None, named_h5=None)
    note = "read from the SavedModel's keras_metadata.pb and checkpoint (weights matched by name)"
    ctx.repairs[:0] = [note, *saved.notes]
    return model, training


# ----------------------------------------------------------------------------------------------
# Keras 3: the plain loader, and rebuilding a model from a (repaired) config


def _try_plain_keras(ctx: _Context):
    """The fast path: `keras.models.load_model` without compiling; None when Keras refuses."""
    try:
        return _keras_load_model(ctx.path, ctx.objects or None, ctx)
    except Exception:  # noqa: BLE001 - any refusal sends the file down the repair path
        return None


def _keras_load_model(path: str, objects: dict | None, ctx: _Context):
    """`keras.models.load_model` without compiling, running stored code only with `unsafe`."""
    import keras

    return keras.models.load_model(path, custom_objects=objects, compile=False, safe_mode=not ctx.unsafe)


def _build(config: dict, objects: dict, ctx: _Context):
    """Deserializes a repaired model config with Keras 3; errors become ModelLoadError."""
    import keras

    with refusals.explained(ctx.path, stored_code=ctx.runs_stored_code):
        model = keras.saving.deserialize_keras_object(
            config,
            custom_objects=objects,
            safe_mode=not ctx.unsafe,
            module_objects=_module_objects(),
        )
    if not getattr(model, "built", True):
        raise ModelLoadError(
            f"{ctx.path} holds a model that was saved without an input shape; pass one with "
            '`input_shape`, e.g. `input_shape="28,28,1"` (without the batch axis)'
        )
    return model


def _module_objects() -> dict:
    """Names a legacy config (without "module" keys) may use, mapped to Keras 3 objects."""
    import keras

    objects = {k: v for k, v in vars(keras.layers).items() if isinstance(v, type)}
    objects.update({"Functional": keras.Model, "Model": keras.Model, "Sequential": keras.Sequential})
    return objects

"""Files → `keras.Model`: open the Keras files people really have.

The format is decided by the file's content, never by its extension:

* a zip (`PK\\x03\\x04`): a `.keras` archive from Keras 3 or from tf.keras 2.13–2.15;
* HDF5 (`\\x89HDF\\r\\n\\x1a\\n`): a legacy `.h5` from Keras 2.2 → 2.15 or Keras 3, a whole model or
  weights only (then the architecture comes from a Keras JSON file, `architecture=`);
* a directory with `saved_model.pb`: a TensorFlow SavedModel written by tf.keras (read with the
  optional `tf_keras`, then converted).

Plain `keras.models.load_model` is tried first. When it refuses a file, or the file is known to need
it, the stored configuration (the HDF5 `model_config` attribute, the zip's `config.json`) is repaired
in memory by `_ConfigRepair`, rebuilt with Keras 3, and the weights are copied by layer name with
h5py. The user's file is only ever opened for reading. Each repair is described in
`LoadedModel.repairs`; every failure is a `ModelLoadError` that says what is wrong and how to fix it.
"""

from __future__ import annotations

import base64
import builtins
import collections
import copy
import dataclasses
import functools
import hashlib
import importlib.util
import inspect
import io
import json
import marshal
import math
import operator
import os
import re
import struct
import sys
import tempfile
import types
import zipfile
from collections.abc import Callable, Iterator, Mapping

from deadrelu.errors import ModelLoadError

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
_MODEL_CLASSES = ("Functional", "Model", "Sequential")
_LEGACY_EXTRA = "pip install 'deadrelu[legacy]'"


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
            defines them (the CLI's `--custom-objects module.py`).
        architecture: Path of a Keras JSON model config (`model.to_json()`), used to rebuild the model
            when `path` is an HDF5 file holding weights only (`--architecture`).
        unsafe: Run Python code stored in the file (Lambda layers); only for files you trust
            (`--unsafe`).
        compile: Compile the model from the training configuration stored in the file, when possible.
        input_shape: Input shape without the batch axis (a tuple, or a string such as "28,28,1"),
            for Sequential models saved without one (`--input-shape`).

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
            f"--architecture only applies to an HDF5 weights file, but {path} is a "
            f"{'SavedModel' if fmt == 'savedmodel' else '.keras archive'}; drop --architecture"
        )
    if fmt == "savedmodel":
        model, training = _load_savedmodel(ctx)
        sha = file_sha256(_saved_model_pb(path))
    elif fmt == "keras":
        model, training = _load_zip(ctx)
        sha = file_sha256(path)
    else:
        model, training = _load_hdf5(ctx, architecture)
        sha = file_sha256(path)
    compiled = _compile(model, training, ctx) if compile else False
    return LoadedModel(
        model=model,
        path=path,
        format=fmt,
        sha256=sha,
        repairs=ctx.repairs,
        compiled=compiled,
        keras_version=ctx.keras_version,
    )


def load_model(path: str, **options):
    """Loads a Keras model from `.keras`, legacy `.h5` or a SavedModel directory.

    Args:
        path: The model file or directory.
        **options: `custom_objects`, `architecture`, `unsafe`, `compile`, `input_shape` (see `load`).

    Returns:
        A `keras.Model`.

    Example:
        >>> model = deadrelu.load_model("model.h5")
    """
    return load(path, **options).model


@dataclasses.dataclass
class _Context:
    """What one `load` call knows: the user's options and the repairs made so far."""

    path: str
    objects: dict
    unsafe: bool
    input_shape: tuple | None
    repairs: list = dataclasses.field(default_factory=list)
    keras_version: str | None = None


# ----------------------------------------------------------------------------------------------
# Format detection and user options


def _detect_format(path: str) -> str:
    """Returns "keras", "h5" or "savedmodel" from the file's content, or raises ModelLoadError."""
    if not os.path.exists(path):
        raise ModelLoadError(f"model file not found: {path}; check the path")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "saved_model.pb")) or os.path.exists(
            os.path.join(path, "saved_model.pbtxt")
        ):
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
            "the model and this file with --architecture"
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
                f"--input-shape must be integers separated by commas, such as 28,28,1; got {value!r}"
            ) from None
    shape = tuple(value)
    if not shape or not all(d is None or (isinstance(d, int) and d > 0) for d in shape):
        raise ModelLoadError(
            f"--input-shape must be positive integers without the batch axis, such as 28,28,1; "
            f"got {value!r}"
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
    raise ModelLoadError(
        f"custom_objects must be a dict or the path of a .py file, not {type(spec).__name__}"
    )


def _objects_from_file(path: str) -> dict:
    """Imports a .py file by path and returns the classes and functions it defines or imports."""
    if not os.path.isfile(path):
        raise ModelLoadError(
            f"--custom-objects file not found: {path}; pass the .py file that defines the custom layers"
        )
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    name = f"deadrelu_custom_{stem}_{hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"--custom-objects {path} is not a Python file; pass a .py file")
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
            f"cannot import --custom-objects {path}: {type(exc).__name__}: {_first_line(exc)}; "
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
        raise ModelLoadError(f"--custom-objects {path} defines no classes or functions")
    return objects


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, shortened: enough to recognise it."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
            f"cannot read {ctx.path} as HDF5 ({_first_line(exc)}); the file may be truncated, save it again"
        ) from exc
    with f:
        weights_group = f.get("model_weights")
        ctx.keras_version = _attr_text(f, "keras_version") or _attr_text(weights_group, "keras_version")
        config = _hdf5_config(f, ctx, architecture)
        training = _decode_training_config(_attr_text(f, "training_config"))
        repair = _ConfigRepair(ctx)
        fixed = repair.run(config, top_level=True)
        # Keras picks its loader by extension: an HDF5 file named .keras always needs our path.
        named_h5 = ctx.path.endswith((".h5", ".hdf5"))
        tried_keras = architecture is None and not repair.changed and named_h5
        if tried_keras:
            model = _try_plain_keras(ctx)
            if model is not None:
                return model, training
        model = _build(fixed, ctx, repair)
        if "layer_names" not in f.attrs and ("layers" in f or "_layer_checkpoint_dependencies" in f):
            _assign_archive_weights(model, f, ctx)  # a `.weights.h5` from Keras 3 or tf_keras
        else:
            _load_h5_weights(model, f.get("model_weights", f), repair.original_names, ctx)
    if not named_h5 and architecture is None:
        ctx.repairs.append("read as HDF5: the file's content is HDF5, whatever its name says")
    ctx.repairs.extend(repair.messages())
    if tried_keras:
        ctx.repairs.append("weights matched by layer name (Keras's own legacy loader refused the file)")
    return model, training


def _hdf5_config(f, ctx: _Context, architecture: str | None) -> dict:
    """The model config to rebuild: the `--architecture` JSON, or the file's `model_config`."""
    if architecture is not None:
        ctx.repairs.append(f"model rebuilt from the architecture in {os.path.basename(architecture)}")
        return _read_architecture(architecture)
    stored = _attr_text(f, "model_config")
    if stored is None:
        raise ModelLoadError(
            f"{ctx.path} holds only weights, no model architecture; pass the architecture as a Keras "
            "JSON file with --architecture model.json to rebuild the model and load these weights"
        )
    return _decode_json(stored, ctx.path)


def _try_plain_keras(ctx: _Context):
    """The fast path: `keras.models.load_model` without compiling; None when Keras refuses."""
    import keras

    try:
        return keras.models.load_model(
            ctx.path, custom_objects=ctx.objects or None, compile=False, safe_mode=not ctx.unsafe
        )
    except Exception:  # noqa: BLE001 - any refusal sends the file down the repair path
        return None


def _attr_text(obj, name: str) -> str | None:
    """Reads a text attribute of an h5py object (stored as bytes or str), or None."""
    value = obj.attrs.get(name) if obj is not None else None
    if value is None:
        return None
    if hasattr(value, "decode"):
        value = value.decode("utf-8")
    return str(value)


def _attr_list(group, name: str) -> list[str]:
    """Reads a list-of-names attribute, including the chunked form (`name0`, `name1`, ...)."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, k = [], 0
        while f"{name}{k}" in group.attrs:
            values.extend(group.attrs[f"{name}{k}"])
            k += 1
    return [v.decode("utf-8") if hasattr(v, "decode") else str(v) for v in values]


def _decode_json(text: str, where: str):
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
    if not isinstance(value, dict) or "class_name" not in value:
        raise ModelLoadError(
            f"{where} does not hold a Keras model configuration (a JSON object with 'class_name' "
            "and 'config', as written by model.to_json())"
        )
    return value


def _read_architecture(path: str) -> dict:
    """Reads the `--architecture` JSON file."""
    if not os.path.isfile(path):
        raise ModelLoadError(f"--architecture file not found: {path}; pass the model's JSON file")
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


# ----------------------------------------------------------------------------------------------
# Weights from HDF5, by layer name


def _load_h5_weights(model, group, original_names: dict, ctx: _Context) -> None:
    """Copies the weights stored in a Keras HDF5 weights group onto `model`, by layer name.

    Keras 2 stores each top-level layer's weights in `group/<layer>/` and lists them, in order,
    in the `weight_names` attribute; a nested model keeps all its sublayers' weights in its own group.

    Args:
        model: The rebuilt Keras 3 model.
        group: `model_weights` of a whole-model file, or the root of a weights-only file.
        original_names: Keras 3 layer name -> name in the file, for renamed layers.
        ctx: The load context (for messages).
    """
    listed = _attr_list(group, "layer_names") or list(group)  # some writers omit the list
    stored = {n for n in listed if n in group and _attr_list(group[n], "weight_names")}
    used = set()
    for layer in model.layers:
        targets = _legacy_order(layer)
        if not targets:
            continue
        original = original_names.get(layer.name, layer.name)
        if original not in group or not _attr_list(group[original], "weight_names"):
            raise ModelLoadError(
                f"{ctx.path} has no weights for layer '{original}'; the architecture does not match "
                "the weights file (check --architecture)"
            )
        values = _stored_weights(group[original])
        if _is_model(layer):
            _assign_nested(layer, values, original_names, ctx)
        else:
            _assign(layer.name, targets, values, ctx)
        used.add(original)
    unused = sorted(stored - used)
    if unused:
        raise ModelLoadError(
            f"{ctx.path} holds weights for layers the model does not have ({', '.join(unused[:5])}); "
            "the architecture does not match the weights file (check --architecture)"
        )


def _stored_weights(layer_group) -> list[tuple[str, object]]:
    """Returns [(weight name, numpy array)] of one layer group, in the stored order."""
    import numpy as np

    return [(name, np.asarray(layer_group[name])) for name in _attr_list(layer_group, "weight_names")]


def _legacy_order(layer) -> list:
    """A layer's variables in the order Keras HDF5 files store them: trainable, then the rest."""
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _is_model(layer) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _leaf_layers(model) -> Iterator:
    """The layers of a (nested) model that own weights, recursing into nested models."""
    for layer in model.layers:
        if _is_model(layer):
            yield from _leaf_layers(layer)
        elif _legacy_order(layer):
            yield layer


def _assign_nested(model, values: list, original_names: dict, ctx: _Context) -> None:
    """Assigns a nested model's stored weights to its sublayers.

    Each stored name starts with (or contains, after an outer scope) the name of the sublayer that
    owns it, such as `conv2d_3/kernel:0` or `layer1/conv/bn/beta:0`; the longest matching sublayer
    name wins, so `layer1/conv` and `layer1/conv/bn` are told apart. When names do not identify the
    owners, fall back to Keras's own rule: the nested model's variables in order.
    """
    leaves = list(_leaf_layers(model))
    originals = [original_names.get(leaf.name, leaf.name) for leaf in leaves]
    owned: dict[int, list] = {k: [] for k in range(len(leaves))}
    for name, value in values:
        owner = _owner_of(name, originals)
        if owner is None:
            break
        owned[owner].append((name, value))
    else:
        if all(len(owned[k]) == len(_legacy_order(leaf)) for k, leaf in enumerate(leaves)):
            for k, leaf in enumerate(leaves):
                _assign(leaf.name, _legacy_order(leaf), owned[k], ctx)
            return
    _assign(model.name, _legacy_order(model), values, ctx)


def _owner_of(weight_name: str, layer_names: list[str]) -> int | None:
    """Index of the layer that owns a stored weight, by the longest name prefix; None if unclear."""
    best, best_len, ties = None, -1, 0
    for k, name in enumerate(layer_names):
        if weight_name.startswith(name + "/") or f"/{name}/" in weight_name:
            if len(name) > best_len:
                best, best_len, ties = k, len(name), 0
            elif len(name) == best_len:
                ties += 1
    return None if ties else best


def _assign(owner: str, targets: list, values: list, ctx: _Context) -> None:
    """Assigns stored arrays to variables in order, checking their number and shapes."""
    if len(targets) != len(values):
        raise ModelLoadError(
            f"layer '{owner}' has {len(targets)} weights in the rebuilt model but {len(values)} in "
            f"{ctx.path}; the architecture does not match the weights"
        )
    for variable, (name, value) in zip(targets, values):
        if tuple(variable.shape) != tuple(value.shape):
            raise ModelLoadError(
                f"weight '{name}' of layer '{owner}' has shape {tuple(value.shape)} in {ctx.path} but "
                f"{tuple(variable.shape)} in the rebuilt model; the architecture does not match the weights"
            )
        variable.assign(value.astype(variable.dtype) if str(value.dtype) != str(variable.dtype) else value)


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
        names = set(archive.namelist())
        if "config.json" not in names:
            raise ModelLoadError(
                f"{ctx.path} is a zip archive but not a Keras model (it has no config.json); "
                "pass a file written by model.save('model.keras')"
            )
        config = _decode_json(archive.read("config.json").decode("utf-8"), ctx.path)
        metadata = _zip_metadata(archive)
        ctx.keras_version = metadata.get("keras_version")
        training = config.get("compile_config")
        repair = _ConfigRepair(ctx)
        fixed = repair.run(config, top_level=True)
        written_by_keras3 = str(ctx.keras_version or "3").startswith("3")
        if written_by_keras3 and not repair.changed:
            model = _try_plain_keras(ctx)
            if model is not None:
                return model, training
        weights = archive.read("model.weights.h5") if "model.weights.h5" in names else None
        if weights is None:
            raise ModelLoadError(f"{ctx.path} has no model.weights.h5; save the model again with model.save")
        if written_by_keras3:
            model = _load_repaired_zip(archive, fixed, ctx, repair)
        else:
            model = _build(fixed, ctx, repair)
            _load_tf_keras_zip_weights(model, weights, ctx)
            ctx.repairs.append(
                f"weights read from the tf.keras {ctx.keras_version} archive layout and matched by layer"
            )
    ctx.repairs[:0] = repair.messages()
    return model, training


def _zip_metadata(archive: zipfile.ZipFile) -> dict:
    """Reads metadata.json of a `.keras` archive ({} when absent or unreadable)."""
    try:
        value = json.loads(archive.read("metadata.json"))
    except (KeyError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _load_repaired_zip(archive: zipfile.ZipFile, fixed: dict, ctx: _Context, repair: _ConfigRepair):
    """Loads a Keras 3 archive whose config needed repairs: a temporary copy with the fixed config."""
    import keras

    with tempfile.TemporaryDirectory(prefix="deadrelu-") as tmp:
        copy_path = os.path.join(tmp, "repaired.keras")
        with zipfile.ZipFile(copy_path, "w") as out:
            for info in archive.infolist():
                data = json.dumps(fixed).encode() if info.filename == "config.json" else archive.read(info)
                out.writestr(info.filename, data)
        objects = {**ctx.objects, **repair.functions}
        try:
            return keras.models.load_model(
                copy_path, custom_objects=objects, compile=False, safe_mode=not ctx.unsafe
            )
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - explained to the user
            raise _explain(exc, ctx) from exc


def _load_tf_keras_zip_weights(model, data: bytes, ctx: _Context) -> None:
    """Copies weights from the `model.weights.h5` of a tf.keras / tf_keras archive onto `model`."""
    import h5py

    with h5py.File(io.BytesIO(data), "r") as f:
        _assign_archive_weights(model, f, ctx)


def _assign_archive_weights(model, root, ctx: _Context) -> None:
    """Copies the weights of a `.keras`-style weights file onto `model`, checking that all arrived.

    tf.keras 2.13–2.15 stored a model's layers under `_layer_checkpoint_dependencies/`, tf_keras and
    Keras 3 under `layers/`; both name each layer by its class in snake_case plus `_k`, with `k`
    growing in layer order but counted differently. So layers are matched per class, in order;
    inside a layer, sub-objects (an LSTM's `cell`, a Bidirectional's `forward_layer`) are matched by
    attribute name, and each object's own variables are in `vars/0..n`.
    """
    loaded = _assign_archive_object(model, root, ctx)
    if loaded < len(model.weights):
        raise ModelLoadError(
            f"{ctx.path} holds {loaded} of the model's {len(model.weights)} weights; the weights do not "
            "match the model's config"
        )


def _assign_archive_object(obj, group, ctx: _Context) -> int:
    """Loads one layer or model from its group; returns how many arrays it consumed."""
    import keras

    count = 0
    stored = group.get("vars")
    if stored is not None:
        try:
            obj.load_own_variables(stored)
        except Exception as exc:  # noqa: BLE001 - a count or shape mismatch
            raise ModelLoadError(
                f"cannot load the weights of layer '{obj.name}' from {ctx.path} ({_first_line(exc, 160)}); "
                "the weights do not match the model's config"
            ) from exc
        count += len(stored)
    for key in group:
        if key in ("layers", "_layer_checkpoint_dependencies") and _is_model(obj):
            for layer, layer_group in _match_archive_layers(obj, group[key], ctx):
                count += _assign_archive_object(layer, layer_group, ctx)
        elif key != "vars" and isinstance(getattr(obj, key, None), keras.layers.Layer):
            count += _assign_archive_object(getattr(obj, key), group[key], ctx)
    return count


def _match_archive_layers(model, container, ctx: _Context) -> Iterator[tuple]:
    """Pairs a model's layers with their groups (`dense`, `dense_2`, ...), class by class, in order."""
    by_class: dict[str, list] = collections.defaultdict(list)
    for layer in model.layers:
        by_class[_snake_case(type(layer).__name__)].append(layer)
    for prefix, layers in by_class.items():
        keys = sorted(
            (k for k in container if re.fullmatch(re.escape(prefix) + r"(_\d+)?", k)),
            key=lambda k: int(k[len(prefix) + 1 :] or 0) if k != prefix else -1,
        )
        if len(keys) == len(layers):
            yield from ((layer, container[key]) for layer, key in zip(layers, keys))
        elif any(layer.weights for layer in layers):
            raise ModelLoadError(
                f"{ctx.path} stores {len(keys)} {prefix} layers but the model has {len(layers)}; "
                "the weights do not match the model's config"
            )


def _snake_case(name: str) -> str:
    """Class name → the snake_case name tf.keras used in archives (Conv2D → conv2d, ReLU → re_lu)."""
    text = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", text).lower()


# ----------------------------------------------------------------------------------------------
# TensorFlow SavedModel (through tf_keras)


def _load_savedmodel(ctx: _Context):
    """Loads a SavedModel written by tf.keras: tf_keras reads it, the HDF5 path converts it.

    tf_keras rebuilds the layers from `keras_metadata.pb`; saving that model as a temporary HDF5
    file then reuses every repair and the by-name weight copy of the HDF5 path.

    Returns:
        (model, training_config or None).
    """
    try:
        import tf_keras
    except ImportError:
        raise ModelLoadError(
            f"{ctx.path} is a TensorFlow SavedModel; reading it needs tf_keras: {_LEGACY_EXTRA}"
        ) from None
    if not os.path.exists(os.path.join(ctx.path, "keras_metadata.pb")):
        raise ModelLoadError(
            f"{ctx.path} is a SavedModel without Keras metadata (written by tf.saved_model.save or "
            "model.export), so its layers cannot be rebuilt; save the model with model.save('model.h5') "
            "or model.save('model.keras') instead"
        )
    try:
        original = tf_keras.models.load_model(ctx.path)
    except Exception:  # noqa: BLE001 - a custom loss or metric: the layers may still load
        try:
            original = tf_keras.models.load_model(ctx.path, compile=False)
        except Exception as exc:  # noqa: BLE001 - explained to the user
            raise ModelLoadError(
                f"tf_keras cannot read the SavedModel {ctx.path}: {type(exc).__name__}: {_first_line(exc)}"
            ) from exc
    with tempfile.TemporaryDirectory(prefix="deadrelu-") as tmp:
        converted = os.path.join(tmp, "converted.h5")
        try:
            original.save(converted, save_format="h5")
        except NotImplementedError as exc:
            raise ModelLoadError(
                f"{ctx.path} holds a subclassed model, whose layers tf_keras cannot describe; "
                "save it from the code that defines it with model.save('model.keras') under Keras 3"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - explained to the user
            raise ModelLoadError(
                f"cannot convert the SavedModel {ctx.path}: {type(exc).__name__}: {_first_line(exc)}"
            ) from exc
        inner = dataclasses.replace(ctx, path=converted, repairs=[])
        try:
            model, training = _load_hdf5(inner, None)
        except ModelLoadError as exc:  # name the user's directory, not the temporary file
            raise ModelLoadError(str(exc).replace(converted, ctx.path)) from exc
    ctx.keras_version = inner.keras_version
    version = tf_keras.__version__
    ctx.repairs.append(f"converted from a SavedModel with tf_keras {version} (weights copied by name)")
    ctx.repairs.extend(inner.repairs)
    return model, training


# ----------------------------------------------------------------------------------------------
# Rebuilding a model from a (repaired) config


def _build(config: dict, ctx: _Context, repair: _ConfigRepair):
    """Deserializes a repaired model config with Keras 3; errors become ModelLoadError."""
    import keras

    objects = {**ctx.objects, **repair.functions}
    try:
        model = keras.saving.deserialize_keras_object(
            config,
            custom_objects=objects,
            safe_mode=not ctx.unsafe,
            module_objects=_module_objects(),
        )
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - explained to the user
        raise _explain(exc, ctx) from exc
    if not getattr(model, "built", True):
        raise ModelLoadError(
            f"{ctx.path} holds a model that was saved without an input shape; pass one with "
            "--input-shape, e.g. --input-shape 28,28,1 (without the batch axis)"
        )
    return model


def _module_objects() -> dict:
    """Names a legacy config (without "module" keys) may use, mapped to Keras 3 objects."""
    import keras

    objects = {k: v for k, v in vars(keras.layers).items() if isinstance(v, type)}
    objects.update({"Functional": keras.Model, "Model": keras.Model, "Sequential": keras.Sequential})
    return objects


def _explain(exc: BaseException, ctx: _Context) -> ModelLoadError:
    """Turns a raw Keras deserialization error into a message that says how to fix it."""
    text = str(exc)
    kinds = "layer|object|activation|loss|metric|initializer|regularizer|constraint"
    missing = re.search(r"Could not locate (?:class|function) '([^']+)'", text) or re.search(
        rf"Unknown (?:{kinds})\S*:? '?([\w>.]+)", text
    )
    if missing:
        return ModelLoadError(
            f"{ctx.path} uses '{missing.group(1)}', which is not part of Keras; pass the Python file "
            "that defines it with --custom-objects module.py"
        )
    if "lambda" in text.lower() and "safe_mode" in text:
        return ModelLoadError(
            f"{ctx.path} holds Python code (a lambda) that deadrelu does not run by default; "
            "if you trust the file, pass --unsafe"
        )
    innermost = text.split("Exception encountered:")[-1].strip() or type(exc).__name__
    return ModelLoadError(f"Keras 3 cannot rebuild the model in {ctx.path}: {_first_line(innermost)}")


# ----------------------------------------------------------------------------------------------
# Config repairs


# Keras 2 settings that Keras 3 layers no longer accept, with the values that change nothing.
_INERT_SETTINGS = {
    "groups": (1,),
    "time_major": (False,),
    "implementation": None,  # any value: it only chose a kernel
    "fused": None,
    "virtual_batch_size": (None,),
    "adjustment": (None,),
    "ragged": (False, None),
    "dynamic": (False,),
    "query_shape": None,  # MultiHeadAttention: build-time hints; Keras 3 builds on the first call
    "key_shape": None,
    "value_shape": None,
    "softmax_robust_masking": (False,),
}


def _is_inert(key: str, value) -> bool:
    """Whether a setting Keras 3 rejects can be dropped without changing the loaded model."""
    if key in _INERT_SETTINGS:
        inert = _INERT_SETTINGS[key]
        return inert is None or value in inert
    # Initializers only matter before weights are loaded (tf.keras SeparableConv2D kept a
    # kernel_initializer it never used); unused regularizers and constraints are None.
    return key.endswith("_initializer") or (key.endswith(("_regularizer", "_constraint")) and value is None)


# Layers that only exist in Keras 2, with a note for the error message.
_REMOVED_LAYERS = {
    "LocallyConnected1D": "was removed in Keras 3",
    "LocallyConnected2D": "was removed in Keras 3",
    "CuDNNLSTM": "was removed in Keras 3 (use LSTM)",
    "CuDNNGRU": "was removed in Keras 3 (use GRU)",
    "TFOpLambda": "wraps a raw TensorFlow op (tf.keras), which Keras 3 cannot rebuild",
    "SlicingOpLambda": "wraps a raw TensorFlow op (tf.keras), which Keras 3 cannot rebuild",
    "DenseFeatures": "was removed in Keras 3",
}


_INPUT_LAYER_SHAPE = "converted batch_input_shape to batch_shape in {n} InputLayer config{s}"
# Repairs that Keras 3's legacy HDF5 loader also makes: alone, they do not require the repair path.
_ROUTINE_REPAIRS = {_INPUT_LAYER_SHAPE}


class _ConfigRepair:
    """Rewrites a stored Keras 2 / tf.keras model config so that Keras 3 can rebuild it.

    Works on a deep copy of the config; counts what it changed so that `messages()` can describe it.
    Repairs: old list-style Sequential configs; `batch_input_shape` → `batch_shape` / an InputLayer;
    inert Keras 2 settings (`groups=1`, `implementation`, ...); names containing '/'; node indices
    of nested models; tensors in call kwargs; tf.keras module paths; ThresholdedReLU; Python
    lambdas (only with `unsafe`). Missing custom classes and refused lambdas raise ModelLoadError.

    Attributes:
        original_names: Keras 3 layer name -> the name stored in the file (for renamed layers).
        functions: Functions rebuilt from Lambda bytecode, passed to Keras as custom objects.
        changed: Whether any repair was needed.
    """

    def __init__(self, ctx: _Context):
        self.ctx = ctx
        self.counts: collections.Counter = collections.Counter()
        self.original_names: dict[str, str] = {}
        self.functions: dict[str, Callable] = {}
        self._new_names: dict[str, str] = {}
        self._all_names: set[str] = set()
        self._lambdas: list[str] = []

    @property
    def changed(self) -> bool:
        """Whether Keras 3's own loader would need these repairs (not just ones it makes itself)."""
        return bool(self.functions) or any(t not in _ROUTINE_REPAIRS for t in self.counts)

    def run(self, config: dict, *, top_level: bool = False) -> dict:
        """Returns a repaired deep copy of a model config (`{"class_name": ..., "config": ...}`)."""
        config = copy.deepcopy(config)
        self._all_names = set(_all_names(config))
        self._check_classes(config)
        self._entry(config, top_level=top_level)
        if self._lambdas and not self.ctx.unsafe:
            shown = ", ".join(f"'{n}'" for n in self._lambdas[:3])
            raise ModelLoadError(
                f"{self.ctx.path} has {len(self._lambdas)} Lambda layer(s) ({shown}) holding Python "
                "code, which deadrelu does not run by default; if you trust the file, pass --unsafe "
                "to run the code stored in it"
            )
        return config

    def messages(self) -> list[str]:
        """Human-readable descriptions of the repairs made."""
        plural = {1: ""}
        return [t.replace("{n}", str(n)).replace("{s}", plural.get(n, "s")) for t, n in self.counts.items()]

    # -- walking

    def _entry(self, entry: dict, *, top_level: bool = False, in_sequential: bool = False) -> bool:
        """Repairs one layer entry in place; returns whether Keras 2 gave it a node of its own.

        Keras 2 gave a nested model built on an Input a first node of its own, so the outer model
        refers to its first call as node 1; Keras 3 models have no such node.
        """
        self._module_path(entry)
        name = entry.get("class_name")
        if name == "ThresholdedReLU":
            cfg = entry["config"]
            entry["class_name"] = "ReLU"
            entry["config"] = {k: v for k, v in cfg.items() if k in ("name", "trainable", "dtype")}
            entry["config"].update(threshold=float(cfg.get("theta", 1.0)), negative_slope=0.0, max_value=None)
            self._count("replaced {n} ThresholdedReLU layer{s} by the equivalent ReLU(threshold=theta)")
        if name == "Sequential":
            return self._sequential(entry, top_level=top_level)
        if name in ("Functional", "Model") or _looks_functional(entry.get("config")):
            self._functional(entry, in_sequential=in_sequential)
            return True
        self._layer(entry)
        return False

    def _sequential(self, entry: dict, *, top_level: bool) -> bool:
        cfg = entry["config"]
        if isinstance(cfg, list):  # Keras <= 2.2.2 stored a Sequential as a bare list of layers
            cfg = entry["config"] = {"name": "sequential", "layers": cfg}
            self._count("converted {n} Keras 2.2 list-style Sequential config{s}")
        self._rename(cfg)
        layers = cfg.get("layers", [])
        had_input = bool(layers) and (
            layers[0].get("class_name") == "InputLayer" or "batch_input_shape" in layers[0].get("config", {})
        )
        if layers and layers[0].get("class_name") != "InputLayer":
            self._add_input_layer(cfg, layers, top_level=top_level)
        for layer in cfg["layers"][1:]:
            inner = layer.get("config")
            if layer.get("class_name") != "InputLayer" and isinstance(inner, dict):
                if inner.pop("batch_input_shape", None) is not None:  # tf.keras 2.13 kept it on layer 1
                    self._count("dropped batch_input_shape from {n} layer{s} after an InputLayer")
        for layer in cfg["layers"]:
            layer.pop("build_config", None)  # built when the model calls it (tf.keras hints misfit Keras 3)
            self._entry(layer, in_sequential=True)
        return had_input

    def _add_input_layer(self, cfg: dict, layers: list, *, top_level: bool) -> None:
        """Gives a Sequential model saved without an InputLayer an explicit one."""
        first = layers[0].get("config", {})
        shape = first.pop("batch_input_shape", None)
        source = "batch_input_shape of its first layer"
        if shape is None and cfg.get("build_input_shape"):
            shape, source = cfg["build_input_shape"], "its build_input_shape"
        if shape is None and top_level and self.ctx.input_shape is not None:
            shape, source = (None, *self.ctx.input_shape), "the --input-shape option"
        if shape is None:
            if top_level:
                raise ModelLoadError(
                    f"{self.ctx.path} holds a Sequential model saved without an input shape; pass one "
                    "with --input-shape, e.g. --input-shape 28,28,1 (without the batch axis)"
                )
            return  # a nested Sequential is built when the outer model calls it
        name = self._unique(f"{first.get('name', 'input')}_input")
        layer = {
            "class_name": "InputLayer",
            "config": {"batch_shape": list(shape), "dtype": first.get("dtype", "float32"), "name": name},
        }
        if "module" in layers[0]:
            layer.update(module="keras.layers", registered_name=None)
        layers.insert(0, layer)
        where = f"Sequential '{cfg.get('name')}'"
        self._count(f"added an input layer of shape {tuple(shape)} to {where}, from {source}")

    def _functional(self, entry: dict, *, in_sequential: bool = False) -> None:
        cfg = entry["config"]
        self._rename(cfg)
        # Keras 2 gave every nested model built on an Input a first node of its own, so the outer
        # model calls its first use node 1. Keras 3 models have no such node: shift the legacy
        # references of layer calls. (Keras 3 already shifts output references to Functional models.)
        shift_calls, shift_outputs = set(), set()
        for layer in cfg.get("layers", []):
            if "name" in layer:
                layer["name"] = self._new_name(layer["name"])
            inner = layer.get("config")
            if layer.get("class_name") != "InputLayer" and isinstance(inner, dict):
                if inner.pop("batch_input_shape", None) is not None:
                    self._count("dropped batch_input_shape from {n} non-input layer{s} of Functional models")
            layer.pop("build_config", None)  # built when the model calls it (tf.keras hints misfit Keras 3)
            if self._entry(layer):
                shift_calls.add(layer.get("name"))
                if layer.get("class_name") == "Sequential":
                    shift_outputs.add(layer.get("name"))
        for layer in cfg.get("layers", []):
            nodes = self._refs(layer.get("inbound_nodes", []), shift_calls)
            layer["inbound_nodes"] = [self._tensor_kwargs(node) for node in nodes]
        for key in ("input_layers", "output_layers"):
            if key in cfg:
                cfg[key] = self._refs(cfg[key], shift_outputs)
                # Keras 2 wrote one input or output as a list of one; Keras 3 then passes a list
                # on, which breaks a Sequential holding this model and warns on every call.
                if _is_single_ref_list(cfg[key]):
                    cfg[key] = cfg[key][0]
                    if key == "output_layers" and in_sequential:
                        self._count("unwrapped the single output of {n} model{s} nested in a Sequential")

    def _refs(self, data, shift: set):
        """Renames and re-indexes node references ([name, node, tensor(, kwargs)] or keras_history)."""
        if isinstance(data, list):
            if len(data) in (3, 4) and isinstance(data[0], str) and isinstance(data[1], int):
                name = self._new_name(data[0])
                node = data[1]
                if name in shift and node > 0:
                    node -= 1
                    self._count("re-indexed {n} call{s} of nested models (Keras 2 counted an extra node)")
                return [name, node, *data[2:]]
            return [self._refs(item, shift) for item in data]
        if isinstance(data, tuple):
            return tuple(self._refs(list(data), shift))
        if isinstance(data, dict):
            if data.get("class_name") == "__keras_tensor__":  # Keras 3 format: indices are right
                history = data.get("config", {}).get("keras_history")
                if history:
                    data["config"]["keras_history"] = self._refs(list(history), set())
                return data
            return {k: self._refs(v, shift) for k, v in data.items()}
        return data

    def _tensor_kwargs(self, node):
        """Rewrites a legacy node whose call kwargs hold tensors (`mha(q, value=v)`) in Keras 3 form.

        Keras 3 reads legacy nodes but passes their kwargs on as raw [layer, node, tensor] lists.
        """
        if not isinstance(node, list) or not any(
            isinstance(ref, list) and len(ref) == 4 and _holds_ref(ref[3]) for ref in node
        ):
            return node
        tensors = [_keras_tensor(ref[:3]) for ref in node]
        kwargs = {}
        for ref in node:
            kwargs.update(ref[3] if len(ref) == 4 else {})
        self._count("converted {n} layer call{s} with tensors among their arguments to the Keras 3 form")
        return {"args": [tensors[0] if len(tensors) == 1 else tensors], "kwargs": _map_refs(kwargs, _keras_tensor)}

    def _layer(self, entry: dict) -> None:
        """Repairs a plain layer's config."""
        cfg = entry.get("config")
        if not isinstance(cfg, dict):
            return
        name = entry.get("class_name")
        self._rename(cfg)
        if "name" in entry:
            entry["name"] = self._new_name(entry["name"])
        if name == "InputLayer" and "batch_input_shape" in cfg:
            cfg["batch_shape"] = cfg.pop("batch_input_shape")
            self._count(_INPUT_LAYER_SHAPE)
        if name == "BatchNormalization" and isinstance(cfg.get("axis"), list) and len(cfg["axis"]) == 1:
            cfg["axis"] = int(cfg["axis"][0])
        if name == "Lambda":
            self._lambda(entry)
        for key in ("layer", "backward_layer"):  # wrappers: TimeDistributed, Bidirectional
            if isinstance(cfg.get(key), dict) and "class_name" in cfg[key]:
                self._entry(cfg[key])
        self._inert_settings(name, cfg)

    def _inert_settings(self, class_name: str, cfg: dict) -> None:
        """Drops Keras 2 settings that a Keras 3 built-in layer rejects but that change nothing."""
        import keras

        cls = getattr(keras.layers, class_name or "", None)
        if not isinstance(cls, type) or class_name in self.ctx.objects:
            return
        accepted = _accepted_arguments(cls)
        removed = []
        for key in [k for k in cfg if k not in accepted and _is_inert(k, cfg[k])]:
            value = cfg.pop(key)
            removed.append(key if isinstance(value, dict) else f"{key}={json.dumps(value)}")
        if removed:
            shown = ", ".join(removed)
            self._count(f"removed {shown} from {{n}} {class_name} config{{s}} (not in Keras 3; no effect)")

    def _lambda(self, entry: dict) -> None:
        """Finds Python code in a Lambda; with `unsafe`, turns it into a function Keras can call."""
        cfg = entry["config"]
        for key in ("module", "function_type", "output_shape_type", "output_shape_module"):
            cfg.pop(key, None)
        code = _lambda_code(cfg.get("function"))
        if code is None:
            return
        self._lambdas.append(cfg.get("name", "lambda"))
        if not self.ctx.unsafe:
            return
        key = f"deadrelu_lambda_{len(self.functions)}_{cfg.get('name', '')}"
        function, origin = _function_from_code(*code, where=f"Lambda layer '{cfg.get('name')}'")
        self.functions[key] = function
        cfg["function"] = key
        # Keras 3's legacy (module-less) route cannot take a function by name: use the current one.
        entry.update(module="keras.layers", registered_name=None)
        if _lambda_code(cfg.get("output_shape")) is not None:
            cfg["output_shape"] = None  # Keras 3 infers the output shape by tracing the function
        self._count(f"rebuilt {{n}} Lambda function{{s}} from {origin} stored in the file (--unsafe)")

    # -- helpers

    def _check_classes(self, config: dict) -> None:
        """Raises a clear error for layer classes that are neither Keras 3 nor custom objects."""
        import keras

        for entry in _layer_entries(config):
            name = entry.get("class_name")
            registered = entry.get("registered_name")
            if name in self.ctx.objects:
                if _is_keras2_class(self.ctx.objects[name]):
                    raise ModelLoadError(
                        f"the --custom-objects class {name} is written for tf.keras (Keras 2), but "
                        "deadrelu rebuilds models with Keras 3; make it subclass keras.layers.Layer "
                        "(import keras) instead of tf.keras.layers.Layer"
                    )
                if registered and registered not in self.ctx.objects:  # "package>Name" in Keras 3 files
                    self.ctx.objects[registered] = self.ctx.objects[name]
                continue
            if name in (*_MODEL_CLASSES, "ThresholdedReLU") or _importable_package(entry.get("module")):
                continue
            if isinstance(getattr(keras.layers, name or "", None), type) and registered in (None, name):
                continue
            if registered and keras.saving.get_registered_object(registered, custom_objects=self.ctx.objects):
                continue
            if name in _REMOVED_LAYERS:
                raise ModelLoadError(
                    f"{self.ctx.path} uses the layer {name}, which {_REMOVED_LAYERS[name]}; "
                    f"pass an implementation of {name} with --custom-objects module.py"
                )
            raise ModelLoadError(
                f"{self.ctx.path} uses the custom layer class '{name}', which Keras cannot find; pass "
                "the Python file that defines it with --custom-objects module.py"
            )

    def _module_path(self, entry: dict) -> None:
        """Points tf.keras module paths (keras.src.engine..., tf_keras...) at their Keras 3 home."""
        module, name = entry.get("module"), entry.get("class_name")
        if not isinstance(module, str) or not re.match(r"(tf_keras|keras\.(src\.)?engine)\b", module):
            return
        import keras

        if name in _MODEL_CLASSES:
            entry.update(module="keras", class_name="Sequential" if name == "Sequential" else "Model")
        elif isinstance(getattr(keras.layers, name or "", None), type):
            entry["module"] = "keras.layers"
        else:
            return
        entry["registered_name"] = None
        self._count("pointed {n} tf.keras module path{s} (keras.src.engine, tf_keras) at Keras 3")

    def _rename(self, cfg: dict) -> None:
        if isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
            cfg["name"] = self._new_name(cfg["name"])

    def _new_name(self, old: str) -> str:
        """A Keras 3 name for a stored name: '/' is not allowed in Keras 3 names."""
        if "/" not in old:
            return old
        if old not in self._new_names:
            new = self._unique(old.replace("/", "_"))
            self._new_names[old] = new
            self.original_names[new] = old
            self._count("renamed {n} layer{s} containing '/' (weights matched by original name)")
        return self._new_names[old]

    def _unique(self, name: str) -> str:
        candidate, k = name, 1
        while candidate in self._all_names:
            candidate, k = f"{name}_{k}", k + 1
        self._all_names.add(candidate)
        return candidate

    def _count(self, template: str) -> None:
        self.counts[template] += 1


def _is_keras2_class(obj) -> bool:
    """Whether a custom object is a tf.keras / tf_keras (Keras 2) class, which Keras 3 cannot use."""
    prefixes = ("tf_keras", "tensorflow.python.keras", "keras.engine", "tensorflow.keras")
    return isinstance(obj, type) and any(c.__module__.startswith(prefixes) for c in obj.__mro__[1:])


def _is_ref(value) -> bool:
    return isinstance(value, list) and len(value) == 3 and isinstance(value[0], str) and isinstance(value[1], int)


def _holds_ref(value) -> bool:
    """Whether call kwargs of a legacy node contain a tensor reference."""
    if _is_ref(value):
        return True
    if isinstance(value, dict):
        return any(_holds_ref(v) for v in value.values())
    return isinstance(value, list) and any(_holds_ref(v) for v in value)


def _map_refs(value, function):
    """Applies `function` to each tensor reference inside nested kwargs."""
    if _is_ref(value):
        return function(value)
    if isinstance(value, dict):
        return {k: _map_refs(v, function) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_refs(v, function) for v in value]
    return value


def _keras_tensor(ref: list) -> dict:
    """A Keras 3 serialized tensor pointing at [layer, node, tensor]; Keras swaps in the real one."""
    return {"class_name": "__keras_tensor__", "config": {"shape": [], "dtype": "float32", "keras_history": ref}}


def _importable_package(module) -> bool:
    """Whether a config names a module of an installed package other than Keras (keras_hub...)."""
    if not isinstance(module, str) or not module:
        return False
    top = module.split(".")[0]
    return top not in ("keras", "builtins", "__main__") and importlib.util.find_spec(top) is not None


def _is_single_ref_list(value) -> bool:
    """Whether `value` is [[name, node, tensor]]: one node reference wrapped in a list."""
    return (
        isinstance(value, list)
        and len(value) == 1
        and isinstance(value[0], list)
        and len(value[0]) == 3
        and isinstance(value[0][0], str)
    )


def _looks_functional(cfg) -> bool:
    """A custom Model subclass saved with a functional config (layers and input/output refs)."""
    return isinstance(cfg, dict) and "layers" in cfg and "input_layers" in cfg and "output_layers" in cfg


def _layer_entries(config) -> Iterator[dict]:
    """Every layer entry of a model config, nested models and wrapped layers included."""
    if not isinstance(config, dict):
        return
    yield config
    cfg = config.get("config")
    layers = cfg if isinstance(cfg, list) else cfg.get("layers", []) if isinstance(cfg, dict) else []
    for layer in layers if isinstance(layers, list) else []:
        yield from _layer_entries(layer)
    if isinstance(cfg, dict):
        for key in ("layer", "backward_layer"):
            if isinstance(cfg.get(key), dict) and "class_name" in cfg[key]:
                yield from _layer_entries(cfg[key])


def _all_names(config) -> Iterator[str]:
    """Every layer and model name in a config, to keep renamed layers unique."""
    for entry in _layer_entries(config):
        cfg = entry.get("config")
        if isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
            yield cfg["name"]


def _accepted_arguments(cls) -> set[str]:
    """Keyword arguments a Keras 3 layer class accepts, following `**kwargs` up to `Layer`."""
    import keras

    accepted = {"input_shape", "input_dim", "batch_input_shape", "batch_shape"}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        accepted.update(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if klass is keras.layers.Layer or not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return accepted


# ----------------------------------------------------------------------------------------------
# Python code stored in Lambda layers


def _lambda_code(function) -> tuple | None:
    """Returns (base64 code, defaults, closure) if a Lambda's function is stored Python code."""
    if isinstance(function, (list, tuple)) and function and isinstance(function[0], str):
        padded = list(function) + [None, None]
        return padded[0], padded[1], padded[2]
    if isinstance(function, dict) and function.get("class_name") == "__lambda__":
        inner = function.get("config") or {}
        if "code" in inner:
            return inner["code"], inner.get("defaults"), inner.get("closure")
        if isinstance(inner.get("value"), (list, tuple)):
            return _lambda_code(list(inner["value"]))
    return None


def _function_from_code(code: str, defaults, closure, *, where: str) -> tuple[Callable, str]:
    """Rebuilds a function from the marshalled bytecode Keras stores for a Python lambda.

    Bytecode only runs on the Python version that wrote it, and loading another version's
    bytecode can crash the interpreter. So the code object is first parsed by `_MarshalReader`:
    when it has this Python's layout, `marshal` loads it; when it comes from Python 3.6–3.10,
    `_run_wordcode` evaluates it (the arithmetic, indexing and calls that preprocessing lambdas
    use); anything else is refused with a clear message.

    Returns:
        (function, a description of where its code came from).
    """
    try:
        raw = base64.b64decode(code.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raw = code.encode("raw_unicode_escape")
    layout, parsed = _MarshalReader.identify(raw)
    defaults = tuple(defaults) if isinstance(defaults, list) else defaults
    closure = tuple(closure) if closure else ()
    if layout == _MarshalReader.current_layout():
        try:
            native = marshal.loads(raw)
        except (ValueError, EOFError, TypeError) as exc:
            raise ModelLoadError(f"the {where} holds Python code that cannot be read ({exc})") from exc
        cells = tuple(types.CellType(value) for value in closure) or None
        function = types.FunctionType(native, _lambda_globals(), native.co_name, defaults, cells)
        return function, "the Python code"
    versions = {"3.6": "Python 3.6-3.7", "3.8": "Python 3.8-3.10", "3.11": "Python 3.11 or later"}
    if layout in ("3.6", "3.8") and parsed is not None:
        function = _wordcode_function(parsed, defaults, closure, where)
        return function, f"the {versions[layout]} bytecode (evaluated instruction by instruction)"
    found = versions.get(layout, "an unknown or older Python version (e.g. 2.7 or 3.5)")
    raise ModelLoadError(
        f"the {where} holds Python bytecode from {found}, which Python "
        f"{sys.version_info.major}.{sys.version_info.minor} cannot run; load the model with that "
        "Python version, or rebuild the Lambda in code"
    )


@functools.lru_cache(maxsize=1)
def _lambda_globals() -> dict:
    """Globals for stored lambdas: the module aliases Keras 2 code used (K, tf, np, keras)."""
    import keras
    import numpy as np

    names = {"__builtins__": builtins, "np": np, "numpy": np, "keras": keras, "ops": keras.ops, "math": math}
    try:
        import tensorflow as tf

        names["tf"] = tf
    except ImportError:  # pragma: no cover - TensorFlow is a dependency
        pass
    try:
        import tf_keras

        names["K"] = names["backend"] = tf_keras.backend
    except ImportError:
        names["K"] = names["backend"] = keras.ops
    return names


@dataclasses.dataclass
class _Code:
    """The parts of a foreign code object that `_run_wordcode` needs."""

    argcount: int
    code: bytes
    consts: tuple
    names: tuple
    varnames: tuple
    freevars: tuple
    cellvars: tuple


class _MarshalReader:
    """Reads marshalled code objects written by other Python 3 versions.

    The marshal format is stable, but the fields of a code object are not: 3.6–3.7 store 5 ints
    (with nlocals), 3.8–3.10 6 ints (with posonlyargcount), 3.11+ 5 different ints and other tuples.
    `identify` tries each layout and keeps the one that reads the whole stream consistently.
    """

    LAYOUTS = ("3.6", "3.8", "3.11")

    def __init__(self, data: bytes, layout: str):
        self.data, self.pos, self.layout, self.refs = data, 0, layout, []

    @classmethod
    def identify(cls, data: bytes) -> tuple[str | None, _Code | None]:
        """Returns (layout, code) for the layout that parses `data`, or (None, None)."""
        for layout in cls.LAYOUTS:
            reader = cls(data, layout)
            try:
                code = reader.read()
            except (ValueError, IndexError, struct.error, KeyError, UnicodeDecodeError):
                continue
            if isinstance(code, _Code) and reader.pos == len(data):
                return layout, code
        return None, None

    @staticmethod
    def current_layout() -> str:
        version = sys.version_info[:2]
        return "3.6" if version < (3, 8) else "3.8" if version < (3, 11) else "3.11"

    def _byte(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def _int(self) -> int:
        (value,) = struct.unpack_from("<i", self.data, self.pos)
        self.pos += 4
        return value

    def _bytes(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("truncated")
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return value

    def read(self):
        code = self._byte()
        kind, flagged = chr(code & 0x7F), code & 0x80
        slot = None
        if flagged:  # CPython reserves the reference slot before reading the object's children
            slot = len(self.refs)
            self.refs.append(None)
        value = self._value(kind)
        if slot is not None:
            self.refs[slot] = value
        return value

    def _value(self, kind: str):
        simple = {"N": None, "F": False, "T": True, ".": Ellipsis}
        if kind in simple:
            return simple[kind]
        if kind == "i":
            return self._int()
        if kind == "g":
            return struct.unpack("<d", self._bytes(8))[0]
        if kind == "y":
            real, imag = struct.unpack("<dd", self._bytes(16))
            return complex(real, imag)
        if kind == "l":
            n = self._int()
            digits = [struct.unpack("<H", self._bytes(2))[0] for _ in range(abs(n))]
            value = sum(d << (15 * k) for k, d in enumerate(digits))
            return -value if n < 0 else value
        if kind == "s":
            return self._bytes(self._int())
        if kind in "uta":
            return self._bytes(self._int()).decode("utf-8" if kind in "ut" else "latin-1")
        if kind in "zZA":
            n = self._byte() if kind in "zZ" else self._int()
            return self._bytes(n).decode("latin-1")
        if kind in ")([<>":
            n = self._byte() if kind == ")" else self._int()
            items = [self.read() for _ in range(n)]
            return tuple(items) if kind in ")(" else items if kind == "[" else frozenset(items)
        if kind == "r":
            return self.refs[self._int()]
        if kind == "c":
            return self._code()
        raise ValueError(f"unsupported marshal type {kind!r}")

    def _skip(self, *fields: str) -> None:
        """Reads past fields the interpreter does not need (`firstlineno` is a bare int)."""
        for field in fields:
            self._int() if field == "firstlineno" else self.read()

    def _code(self) -> _Code:
        ints = {"3.6": 5, "3.8": 6, "3.11": 5}[self.layout]
        header = [self._int() for _ in range(ints)]
        code, consts, names = self.read(), self.read(), self.read()
        if self.layout == "3.11":
            localsplusnames, kinds = self.read(), self.read()
            self._skip("filename", "name", "qualname", "firstlineno", "linetable", "exceptiontable")
            if not isinstance(kinds, bytes) or not isinstance(localsplusnames, tuple):
                raise ValueError("not a 3.11 code object")
            varnames, freevars, cellvars = localsplusnames, (), ()
        else:
            varnames, freevars, cellvars = self.read(), self.read(), self.read()
            self._skip("filename", "name", "firstlineno", "lnotab")
            if not all(isinstance(v, tuple) for v in (varnames, freevars, cellvars)):
                raise ValueError("not a 3.6-3.10 code object")
        if not isinstance(code, bytes) or not isinstance(consts, tuple) or not isinstance(names, tuple):
            raise ValueError("not a code object")
        return _Code(header[0], code, consts, names, varnames, freevars, cellvars)


_BINARY_OPS = {
    16: operator.matmul, 19: operator.pow, 20: operator.mul, 22: operator.mod, 23: operator.add,
    24: operator.sub, 25: operator.getitem, 26: operator.floordiv, 27: operator.truediv,
    62: operator.lshift, 63: operator.rshift, 64: operator.and_, 65: operator.xor, 66: operator.or_,
}
_UNARY_OPS = {10: operator.pos, 11: operator.neg, 12: operator.not_, 15: operator.invert}
_COMPARE_OPS = (operator.lt, operator.le, operator.eq, operator.ne, operator.gt, operator.ge)


def _wordcode_function(code: _Code, defaults, closure: tuple, where: str) -> Callable:
    """A Python function that evaluates Python 3.6–3.10 lambda bytecode with `_run_wordcode`."""
    params = code.varnames[: code.argcount]
    defaults = tuple(defaults or ())

    def function(*args, **kwargs):
        local = dict(zip(params[len(params) - len(defaults) :], defaults))
        local.update(zip(params, args))
        local.update(kwargs)
        return _run_wordcode(code, local, closure, where)

    _run_wordcode(code, None, closure, where)  # check every instruction now, not at the first call
    return function


def _run_wordcode(code: _Code, local: dict | None, closure: tuple, where: str):
    """Evaluates straight-line Python 3.6–3.10 bytecode; with `local=None` only checks the opcodes."""
    stack: list = []
    glob = _lambda_globals() if local is not None else {}
    extended = 0
    for offset in range(0, len(code.code) - 1, 2):
        op, arg = code.code[offset], code.code[offset + 1] | extended
        extended = 0
        if op == 144:  # EXTENDED_ARG
            extended = arg << 8
            continue
        if local is None:
            if op not in _WORDCODE_SUPPORTED and op not in _BINARY_OPS and op not in _UNARY_OPS:
                raise ModelLoadError(
                    f"the {where} holds Python 3.6-3.10 bytecode with an instruction (opcode {op}) "
                    "that deadrelu cannot translate to this Python; load the model with the Python "
                    "version that saved it, or rebuild the Lambda in code"
                )
            continue
        if op in _BINARY_OPS:
            right = stack.pop()
            stack.append(_BINARY_OPS[op](stack.pop(), right))
        elif op in _UNARY_OPS:
            stack.append(_UNARY_OPS[op](stack.pop()))
        elif op == 83:  # RETURN_VALUE
            return stack.pop()
        else:
            _step(op, arg, code, stack, local, glob, closure, where)
    if local is not None:
        raise ModelLoadError(f"the {where} holds Python bytecode that does not return a value")
    return None


_WORDCODE_SUPPORTED = {1, 2, 4, 9, 83, 100, 102, 103, 106, 107, 116, 124, 131, 133, 136, 141, 156, 160, 161}


def _step(op: int, arg: int, code: _Code, stack: list, local: dict, glob: dict, closure: tuple, where: str):
    """Executes one non-arithmetic instruction of `_run_wordcode`."""
    if op == 100:  # LOAD_CONST
        stack.append(code.consts[arg])
    elif op == 124:  # LOAD_FAST
        stack.append(local[code.varnames[arg]])
    elif op == 116:  # LOAD_GLOBAL
        name = code.names[arg]
        if name in glob:
            stack.append(glob[name])
        elif hasattr(builtins, name):
            stack.append(getattr(builtins, name))
        else:
            raise ModelLoadError(f"the {where} uses the global name '{name}', which deadrelu cannot provide")
    elif op == 136:  # LOAD_DEREF: the lambda's closure (it has no cells of its own)
        stack.append(closure[arg - len(code.cellvars)])
    elif op in (106, 160):  # LOAD_ATTR, LOAD_METHOD (here: push the bound attribute)
        stack.append(getattr(stack.pop(), code.names[arg]))
    elif op in (131, 161):  # CALL_FUNCTION, CALL_METHOD
        args = [stack.pop() for _ in range(arg)][::-1]
        stack.append(stack.pop()(*args))
    elif op == 141:  # CALL_FUNCTION_KW
        keys = stack.pop()
        values = [stack.pop() for _ in range(arg)][::-1]
        split = len(values) - len(keys)
        stack.append(stack.pop()(*values[:split], **dict(zip(keys, values[split:]))))
    elif op in (102, 103):  # BUILD_TUPLE, BUILD_LIST
        items = [stack.pop() for _ in range(arg)][::-1]
        stack.append(tuple(items) if op == 102 else items)
    elif op == 156:  # BUILD_CONST_KEY_MAP
        keys = stack.pop()
        values = [stack.pop() for _ in range(arg)][::-1]
        stack.append(dict(zip(keys, values)))
    elif op == 133:  # BUILD_SLICE
        items = [stack.pop() for _ in range(arg)][::-1]
        stack.append(slice(*items))
    elif op == 107:  # COMPARE_OP (<, <=, ==, !=, >, >=)
        right = stack.pop()
        stack.append(_COMPARE_OPS[arg](stack.pop(), right))
    elif op == 1:  # POP_TOP
        stack.pop()
    elif op == 2:  # ROT_TWO
        stack[-1], stack[-2] = stack[-2], stack[-1]
    elif op == 4:  # DUP_TOP
        stack.append(stack[-1])


# ----------------------------------------------------------------------------------------------
# Compiling from the stored training configuration


def _compile(model, training: dict | None, ctx: _Context) -> bool:
    """Compiles `model` from a Keras 2 `training_config` or a Keras 3 `compile_config`.

    A model that cannot be compiled is still usable for scanning: keep it uncompiled and say why.

    Returns:
        Whether the model was compiled.
    """
    if not training:
        return False
    if "optimizer" in training and "optimizer_config" not in training:
        try:
            model.compile_from_config(training)
            if getattr(model, "compiled", False) or getattr(model, "optimizer", None) is not None:
                return True
        except Exception:  # noqa: BLE001 - fall back to the translation below
            pass
    try:
        arguments = _compile_arguments(training, ctx)
        model.compile(**arguments)
    except Exception as exc:  # noqa: BLE001 - compiling is optional
        ctx.repairs.append(
            f"not compiled: the saved training configuration cannot be used ({type(exc).__name__}: "
            f"{_first_line(exc, 160)}); compile the model yourself to train it"
        )
        return False
    return True


def _compile_arguments(training: dict, ctx: _Context) -> dict:
    """Translates a stored training configuration into `model.compile` arguments."""
    optimizer = training.get("optimizer_config", training.get("optimizer"))
    loss = training.get("loss")
    if loss is None:
        raise ValueError("the file stores no loss")
    metrics, dropped = _metrics(training.get("metrics"))
    if dropped:
        shown = ", ".join(sorted(set(dropped)))
        ctx.repairs.append(f"compiled without the metric(s) {shown}, which Keras 3 does not provide")
    arguments = {"optimizer": _optimizer(optimizer, ctx), "loss": _map_nested(loss, lambda v: _loss(v, ctx))}
    if metrics:
        arguments["metrics"] = metrics
    if training.get("loss_weights") is not None:
        arguments["loss_weights"] = training["loss_weights"]
    return arguments


def _map_nested(value, function):
    """Applies `function` to each leaf of a loss given as one value, a list or a dict."""
    if isinstance(value, dict) and "class_name" not in value:
        return {k: _map_nested(v, function) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_nested(v, function) for v in value]
    return function(value)


def _optimizer(config, ctx: _Context):
    """Builds a Keras 3 optimizer from a Keras 2 or Keras 3 optimizer config."""
    import keras

    if config is None:
        raise ValueError("the file stores no optimizer")
    if isinstance(config, str):
        return keras.optimizers.get(config)
    name = str(config.get("class_name", "")).split(">")[-1]  # tf.keras 2.11+ wrote "Custom>Adam"
    cls = ctx.objects.get(name) or getattr(keras.optimizers, name, None)
    if not isinstance(cls, type):
        raise ValueError(f"unknown optimizer {name}")
    settings = dict(config.get("config", {}))
    if "lr" in settings:
        settings.setdefault("learning_rate", settings.pop("lr"))
    if isinstance(settings.get("learning_rate"), dict):
        settings["learning_rate"] = keras.optimizers.schedules.deserialize(settings["learning_rate"])
    accepted = set(inspect.signature(cls.__init__).parameters)
    return cls(**{k: v for k, v in settings.items() if k in accepted})


def _loss(config, ctx: _Context):
    """Builds a Keras 3 loss from a name or a Keras 2 loss config."""
    import keras

    if isinstance(config, str):
        return ctx.objects.get(config) or keras.losses.get(config)
    if isinstance(config, dict) and "class_name" in config:
        cls = ctx.objects.get(config["class_name"]) or getattr(keras.losses, config["class_name"], None)
        if not isinstance(cls, type):
            raise ValueError(f"unknown loss {config['class_name']}")
        settings = dict(config.get("config", {}))
        if settings.get("reduction") in ("auto", "sum_over_batch_size", None):
            settings["reduction"] = "sum_over_batch_size"
        accepted = set(inspect.signature(cls.__init__).parameters)
        return cls(**{k: v for k, v in settings.items() if k in accepted})
    raise ValueError(f"unknown loss {config!r}")


def _metrics(config) -> tuple[list | None, list[str]]:
    """Keeps the stored metrics that Keras 3 understands; returns (metrics, names dropped)."""
    import keras

    kept, dropped = [], []

    def one(item):
        name = item
        if isinstance(item, dict):  # tf.keras MeanMetricWrapper {"name": "accuracy", "fn": ...}
            name = item.get("config", {}).get("name") or item.get("class_name")
        if name in ("accuracy", "acc"):
            return "accuracy"
        try:
            keras.metrics.get(name)
            return name
        except Exception:  # noqa: BLE001 - a metric Keras 3 does not know is dropped
            dropped.append(str(name))
            return None

    for item in _flatten(config or []):
        metric = one(item)
        if metric is not None and metric not in kept:
            kept.append(metric)
    return (kept or None), dropped


def _flatten(value) -> Iterator:
    """Leaves of nested lists (Keras 2 stored metrics per output)."""
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _flatten(item)
    elif isinstance(value, dict) and "class_name" not in value:
        for item in value.values():
            yield from _flatten(item)
    else:
        yield value

"""What a model file may make deadrelu do: compute with its weights, and nothing else.

Model files are untrusted input: people scan files they did not write. Keras has closed one door
after another (Lambda bytecode, CVE-2024-3660; configs naming any module, CVE-2025-1550; gadgets
reachable from a config, CVE-2025-8747 and CVE-2025-9906; vocabulary paths, CVE-2025-12058; HDF5
external storage, CVE-2026-1669; HDF5 shape bombs, CVE-2026-0897; TFSMLayer, CVE-2026-1462), but
only in recent releases, and deadrelu reads files on its own paths too. So every file is checked
here before Keras, tf_keras or deadrelu's own readers see it, whatever Keras version is installed:

* `check_config`: every object a stored configuration names must be a Keras modelling object
  (a layer, operation, initializer, regularizer, constraint, loss, metric, optimizer, schedule,
  dtype policy, or an activation / loss / metric / `keras.ops` function) or one of the user's
  custom objects. A module outside Keras, or a Keras function that is not for modelling
  (`load_model`, `get_file`, `enable_unsafe_deserialization`, ...), is refused even with
  `unsafe`: no model needs one, and they are the gadgets of the CVEs above. Python code
  (lambdas), file paths (lookup vocabularies, `TFSMLayer`) are refused unless `unsafe`.
* `check_hdf5`: no external links, soft links, external storage or virtual datasets (each can read
  another local file into the weights), and no dataset that declares far more bytes than it stores.
* `check_zip`: no archive entry that inflates far beyond its stored size.

Every refusal is a `ModelLoadError` that names the file, what it holds, and what to do.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
from collections.abc import Iterator, Mapping

from deadrelu.errors import ModelLoadError

# Packages whose modules a configuration may name (tf_keras paths are repaired to Keras 3).
KERAS_PACKAGES = frozenset({"keras", "keras_hub", "keras_cv", "keras_nlp", "tf_keras"})

# Keras's markers for values that are not objects (tuples, tensors, slices, ...).
_VALUE_MARKERS = frozenset(
    {"__tuple__", "__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__"}
)
_LAMBDA = "__lambda__"
# tf.keras layers that call a TensorFlow op stored by name (and deadrelu's Keras 3 version of them).
_TF_OP_LAYERS = frozenset({"TFOpLambda", "SlicingOpLambda"})

# Config keys that hold the path of a file a layer reads when it is built.
_FILE_KEYS = frozenset(
    {"vocabulary", "idf_weights", "filepath", "file_path", "path", "vocabulary_file", "merges", "proto", "spm_proto"}
)
# Layers that load outside code or files however they are configured: another SavedModel
# (CVE-2026-1462), a pickled PyTorch module (`torch.load` runs code).
_FILE_LAYERS = frozenset({"TFSMLayer", "TorchModuleWrapper"})

# Function names that a configuration may never reach, even where Keras would resolve them.
_GADGETS = frozenset(
    {
        "deserialize",
        "deserialize_keras_object",
        "enable_unsafe_deserialization",
        "get",
        "get_file",
        "load_model",
        "load_weights",
        "model_from_json",
        "register_keras_serializable",
        "save_model",
        "serialize",
        "set_global_attribute",
    }
)

# Sizes beyond which a declared size must be backed by stored bytes (see `check_hdf5`).
_BOMB_FLOOR_BYTES = 64 << 20
_MAX_EXPANSION = 100  # Keras never compresses weights; real arrays compress far less than this


def check_config(config, *, path: str, objects: Mapping | None = None, unsafe: bool = False) -> None:
    """Refuses a stored model configuration that names anything but Keras modelling objects.

    Args:
        config: The stored configuration (a model config, a compile or training config).
        path: The model file, for messages.
        objects: The user's custom objects (trusted: the user passed them).
        unsafe: Whether Python code and file paths stored in the configuration may be used.

    Raises:
        ModelLoadError: The configuration names a module or function outside Keras's modelling
            API (even with `unsafe`), or holds code or a file path (without `unsafe`).
    """
    objects = objects or {}
    for entry in _objects_in(config):
        _check_entry(entry, path=path, objects=objects, unsafe=unsafe)


def check_model_config(config, *, path: str, objects: Mapping | None = None, unsafe: bool = False) -> None:
    """`check_config` for a whole model: the top-level object must also be a model.

    Raises:
        ModelLoadError: As `check_config`, or the configuration is not a model's.
    """
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        raise ModelLoadError(f"{path} does not hold a Keras model configuration; pass a model saved with model.save()")
    check_config(config, path=path, objects=objects, unsafe=unsafe)
    name = config["class_name"]
    target = _user_object(config, objects or {}) or _resolve_class(config)
    if target is None and name in ("Functional", "Model", "Sequential"):
        return
    import keras

    if not (isinstance(target, type) and issubclass(target, keras.Model)):
        raise ModelLoadError(
            f"{path} holds a configuration of '{name}', which is not a Keras model; pass a model saved "
            "with model.save()"
        )


def _objects_in(value) -> Iterator[dict]:
    """Every dict of a configuration that names an object (has a "class_name"), depth first."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "class_name" in item:
                yield item
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def _check_entry(entry: dict, *, path: str, objects: Mapping, unsafe: bool) -> None:
    name, module = entry.get("class_name"), entry.get("module")
    if not isinstance(name, str) or name in _VALUE_MARKERS or name == "TensorShape":
        return
    if name == _LAMBDA:
        if not unsafe:
            raise ModelLoadError(
                f"{path} holds Python code (a lambda) that deadrelu does not run by default; if you trust "
                "the file, pass `unsafe=True` (--unsafe)"
            )
        return
    if _user_object(entry, objects) is not None:
        _check_file_settings(entry, path=path, unsafe=unsafe)
        return
    if name in _TF_OP_LAYERS:  # rebuilt by deadrelu.io.legacy.tf_ops from the op's name alone
        from deadrelu.io.legacy import tf_ops

        function = (entry.get("config") or {}).get("function")
        if not tf_ops.is_allowed_op_name(function):
            raise ModelLoadError(f"{path}: {tf_ops.refusal(function)}")
        return
    if isinstance(module, str) and module and module.split(".")[0] not in KERAS_PACKAGES | {"builtins"}:
        raise ModelLoadError(
            f"{path} names '{module}.{_object_name(entry)}', which is not part of Keras: a model file "
            "may only use Keras's layers and functions (refused even with `unsafe`); if it is your own "
            'code, pass it with `custom_objects="module.py"`'
        )
    if name == "function":
        _check_function(entry, path=path, objects=objects)
        return
    if name == "Lambda":
        _check_named_lambda(entry, path=path, objects=objects)
    if name == "__typespec__":
        return  # resolved by Keras among TensorFlow's TypeSpec classes only
    if name in _GADGETS or (module and _resolve_class(entry) is False):
        raise ModelLoadError(
            f"{path} names '{_dotted(entry)}', which is not a Keras layer, loss, metric or other "
            "modelling object; such a reference only serves to attack the loader, so deadrelu refuses it "
            "(even with `unsafe`)"
        )
    if name in _FILE_LAYERS and not unsafe:
        raise ModelLoadError(
            f"{path} holds a {name} layer, which loads code stored in or named by the file; deadrelu does "
            "not run it by default: if you trust the file, pass `unsafe=True` (--unsafe)"
        )
    _check_file_settings(entry, path=path, unsafe=unsafe)


def _check_file_settings(entry: dict, *, path: str, unsafe: bool) -> None:
    """Refuses file paths among a layer's settings (a lookup vocabulary read from disk)."""
    cfg = entry.get("config")
    if unsafe or not isinstance(cfg, dict):
        return
    for key in _FILE_KEYS & cfg.keys():
        if isinstance(cfg[key], str) and cfg[key]:
            raise ModelLoadError(
                f"{path} holds a layer ('{cfg.get('name', entry.get('class_name'))}') whose `{key}` is the "
                f"path of a file on this machine ({cfg[key]!r}); deadrelu does not read files named by a "
                "model file by default: if you trust the file, pass `unsafe=True` (--unsafe)"
            )


def _check_function(entry: dict, *, path: str, objects: Mapping) -> None:
    """A stored function must be the user's, or a Keras activation, loss, metric or op."""
    name = entry.get("config")
    registered = entry.get("registered_name")
    if isinstance(name, str) and (name in objects or (registered and registered in objects)):
        return
    if isinstance(name, str) and name not in _GADGETS and _modelling_function(entry.get("module"), name):
        return
    raise ModelLoadError(
        f"{path} names the function '{_dotted(entry)}', which is not a Keras activation, loss, metric or "
        "operation; deadrelu refuses it (even with `unsafe`); if it is your own function, pass it with "
        '`custom_objects="module.py"`'
    )


def _check_named_lambda(entry: dict, *, path: str, objects: Mapping) -> None:
    """A Keras 2 Lambda may name its function and the module to find it in (`function_type:
    "function"`): the function must be the user's or a Keras one, the module Keras's."""
    cfg = entry.get("config")
    if not isinstance(cfg, dict):
        return
    for key in ("function", "output_shape"):
        function, module = cfg.get(key), cfg.get("module" if key == "function" else "output_shape_module")
        if cfg.get(f"{key}_type") != "function" or not isinstance(function, str) or function in objects:
            continue
        keras_module = not module or str(module).split(".")[0] in KERAS_PACKAGES | {"builtins"}
        if not (keras_module and function not in _GADGETS and _modelling_function(None, function)):
            raise ModelLoadError(
                f"{path} has a Lambda layer ('{cfg.get('name')}') calling '{module}.{function}', which is not "
                "a Keras function; deadrelu refuses it (even with `unsafe`); if it is your own function, pass "
                'it with `custom_objects="module.py"`'
            )


def _user_object(entry: dict, objects: Mapping):
    """The user's custom object (or a registered one) an entry names, or None."""
    import keras

    for key in (entry.get("registered_name"), entry.get("class_name")):
        if isinstance(key, str) and key:
            found = objects.get(key)
            if found is None and key == entry.get("registered_name"):
                found = keras.saving.get_registered_object(key)  # registered by the user's own code
            if found is not None:
                return found
    return None


def _resolve_class(entry: dict):
    """The class an entry with a Keras module names: the class if allowed, False if the module holds
    something else under that name, None if there is no module or no such name."""
    module, name = entry.get("module"), entry.get("class_name")
    if not isinstance(module, str) or not module or module == "builtins":
        return None
    if module.split(".")[0] == "tf_keras":  # repaired to the Keras 3 class of the same name
        return _keras3_class_named(name) or False
    found = _keras_module_member(module, name)
    if found is None:
        return None
    return found if isinstance(found, type) and issubclass(found, _modelling_bases()) else False


def _keras_module_member(module: str, name) -> object | None:
    """`module.name` when `module` is an installed module of a Keras package, else None.

    Only Keras's own (trusted, installed) modules are ever imported for a stored name.
    """
    top = module.split(".")[0]
    if top not in KERAS_PACKAGES or importlib.util.find_spec(top) is None:
        return None
    try:
        return vars(importlib.import_module(module)).get(name)
    except ImportError:
        return None


def _keras3_class_named(name) -> type | None:
    """The Keras 3 modelling class called `name` in Keras's public namespaces, or None."""
    import keras

    if name in ("Functional", "Model"):
        return keras.Model
    spaces = (keras, keras.layers, keras.initializers, keras.regularizers, keras.constraints, keras.losses)
    for space in (*spaces, keras.metrics, keras.optimizers):
        found = getattr(space, str(name), None)
        if isinstance(found, type) and issubclass(found, _modelling_bases()):
            return found
    return None


def _object_name(entry: dict) -> str:
    name = entry.get("config") if entry.get("class_name") == "function" else entry.get("class_name")
    return str(name)


def _dotted(entry: dict) -> str:
    module = entry.get("module")
    return f"{module}.{_object_name(entry)}" if module else _object_name(entry)


@functools.cache
def _modelling_bases() -> tuple[type, ...]:
    """The base classes of what a model file may instantiate, on the installed Keras."""
    import keras

    candidates = [
        "keras.Operation",
        "keras.layers.Layer",
        "keras.initializers.Initializer",
        "keras.regularizers.Regularizer",
        "keras.constraints.Constraint",
        "keras.losses.Loss",
        "keras.metrics.Metric",
        "keras.optimizers.Optimizer",
        "keras.optimizers.schedules.LearningRateSchedule",
        "keras.dtype_policies.DTypePolicy",
        "keras.quantizers.Quantizer",
        "keras.src.saving.keras_saveable.KerasSaveable",
    ]
    bases = []
    for dotted in candidates:
        module, _, name = dotted.rpartition(".")
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError:
            found = None
        if isinstance(found, type):
            bases.append(found)
    bases.append(keras.Model)
    return tuple(bases)


@functools.cache
def _function_namespaces() -> tuple:
    import keras

    spaces = [keras.activations, keras.losses, keras.metrics, keras.ops]
    spaces += [getattr(keras.ops, sub) for sub in ("nn", "numpy", "math", "image", "linalg") if hasattr(keras.ops, sub)]
    return tuple(spaces)


@functools.cache
def _modelling_functions() -> frozenset[int]:
    """ids of the functions of Keras's activation, loss, metric and ops namespaces."""
    found = set()
    for space in _function_namespaces():
        for key in dir(space):
            value = getattr(space, key, None)
            if callable(value) and not isinstance(value, type) and not key.startswith("_") and key not in _GADGETS:
                found.add(id(value))
    return frozenset(found)


def _modelling_function(module, name: str) -> bool:
    """Whether `module.name` (or a built-in `name`) is a Keras activation, loss, metric or op."""
    if not name.isidentifier() or name.startswith("_"):
        return False
    if not module or module == "builtins":  # Keras looks such names up among its built-ins
        return any(id(getattr(space, name, None)) in _modelling_functions() for space in _function_namespaces())
    value = _keras_module_member(module, name)
    return value is not None and id(value) in _modelling_functions()


# ----------------------------------------------------------------------------------------------
# HDF5 files and zip archives


def check_hdf5(f, *, path: str, error: type[Exception] = ModelLoadError) -> None:
    """Refuses an HDF5 file that would read other files or claim memory it does not store.

    Args:
        f: An open `h5py.File` (or group).
        path: The file, for messages.
        error: The exception to raise (a `DataError` for a data file).

    Raises:
        ModelLoadError (or `error`): The file holds an external or soft link, an external or virtual dataset, or
            a dataset that declares far more bytes than it stores (a shape bomb).
    """
    import h5py

    seen: set = set()
    groups = [("", f)]
    while groups:
        prefix, group = groups.pop()
        if group.id.__hash__() in seen:
            continue
        seen.add(group.id.__hash__())
        for key in group:
            name = f"{prefix}/{key}"
            link = group.get(key, getlink=True)
            if isinstance(link, (h5py.ExternalLink, h5py.SoftLink)):
                raise error(
                    f"{path} holds a {type(link).__name__} at {name}, which can read another file; "
                    "deadrelu does not follow links: save the arrays into the file itself"
                )
            item = group.get(key)
            if isinstance(item, h5py.Group):
                groups.append((name, item))
            elif isinstance(item, h5py.Dataset):
                _check_dataset(item, name, path, error)


def _check_dataset(dataset, name: str, path: str, error: type[Exception]) -> None:
    if dataset.external:
        raise error(
            f"{path} stores the dataset {name} in another file ({dataset.external[0][0]!r}): reading it "
            "would read that file; deadrelu does not follow it: save the arrays into the file itself"
        )
    if dataset.is_virtual:
        raise error(
            f"{path} holds a virtual dataset at {name}, which reads other files; deadrelu does not follow "
            "it: save the arrays into the file itself"
        )
    declared = math.prod(dataset.shape or ()) * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    if declared > _BOMB_FLOOR_BYTES and declared > _MAX_EXPANSION * stored:
        raise error(
            f"{path} declares {declared:,} bytes for the dataset {name} but stores {stored:,}: the file is "
            "damaged or built to exhaust memory; refusing it"
        )


def check_zip(archive, *, path: str) -> None:
    """Refuses a `.keras` archive that would exhaust memory, read other files or unpickle code.

    Args:
        archive: An open `zipfile.ZipFile`.
        path: The archive's path, for messages.

    Raises:
        ModelLoadError: An entry declares more than `_MAX_EXPANSION` × its compressed size (and more
            than 64 MiB); an HDF5 entry fails `check_hdf5`; an `.npz` entry holds pickled objects
            (Keras before 3.15 loads `model.weights.npz` with `allow_pickle=True`: code, even with
            `unsafe`, since no weights are Python objects).
    """
    import io

    for info in archive.infolist():
        if info.file_size > _BOMB_FLOOR_BYTES and info.file_size > _MAX_EXPANSION * max(info.compress_size, 1):
            raise ModelLoadError(
                f"{path}: the entry {info.filename} inflates from {info.compress_size:,} to "
                f"{info.file_size:,} bytes; the archive is damaged or built to exhaust memory: refusing it"
            )
    for info in archive.infolist():
        if info.filename.endswith(".h5"):
            import h5py

            with h5py.File(io.BytesIO(archive.read(info)), "r") as inner:
                check_hdf5(inner, path=f"{path} ({info.filename})")
        elif info.filename.endswith(".npz"):
            _check_npz(archive.read(info), f"{path} ({info.filename})")


def _check_npz(data: bytes, where: str) -> None:
    import io

    import numpy as np

    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            for key in arrays.files:
                arrays[key]
    except ValueError as exc:
        if "pickle" not in str(exc):
            raise ModelLoadError(f"{where} is not a readable .npz ({exc})") from exc
        raise ModelLoadError(
            f"{where} holds pickled Python objects, which run code when loaded; model weights are arrays "
            "of numbers: refusing the file (even with `unsafe`)"
        ) from None
    except (OSError, EOFError) as exc:
        raise ModelLoadError(f"{where} is not a readable .npz ({exc})") from exc

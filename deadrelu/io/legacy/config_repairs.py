"""In-memory repairs that let Keras 3 rebuild a model config stored by Keras 2 or tf.keras.

`ConfigRepair.run` walks a deep copy of a model config (`{"class_name": ..., "config": ...}`) and
rewrites what Keras 3 refuses or reads differently:

* list-style Sequential configs (Keras <= 2.2.2) and Sequential models without an InputLayer;
* `batch_input_shape` → `batch_shape` or an explicit InputLayer;
* inert Keras 2 settings that Keras 3 layers no longer accept (`groups=1`, `implementation`, ...);
* names containing '/', node indices of nested models, tensors among call arguments;
* tf.keras module paths, ThresholdedReLU, TensorFlow ops stored as `TFOpLambda` layers, and Python
  lambdas (only with `unsafe`).

Each repair returns a note such as "renamed {n} layer{s} containing '/'"; `ConfigRepair` counts the
notes and `ConfigRepair.messages` fills in the counts. Layer classes that Keras cannot find and
lambdas without `unsafe` raise `ModelLoadError`.
"""

from __future__ import annotations

import collections
import copy
import importlib.util
import json
import re
from collections.abc import Callable, Iterator

import deadrelu.io.safety as safety
from deadrelu.errors import ModelLoadError
from deadrelu.io.legacy import lambda_bytecode, newer_keras

_MODEL_CLASSES = ("Functional", "Model", "Sequential")

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

# Layers that only exist in Keras 2, with a note for the error message.
_REMOVED_LAYERS = {
    "LocallyConnected1D": "was removed in Keras 3",
    "LocallyConnected2D": "was removed in Keras 3",
    "CuDNNLSTM": "was removed in Keras 3 (use LSTM)",
    "CuDNNGRU": "was removed in Keras 3 (use GRU)",
    "DenseFeatures": "was removed in Keras 3",
}

# tf.keras layers holding a TensorFlow op, rebuilt by `deadrelu.io.legacy.tf_ops`.
_TF_OP_LAYERS = ("TFOpLambda", "SlicingOpLambda")

_INPUT_LAYER_SHAPE = "converted batch_input_shape to batch_shape in {n} InputLayer config{s}"
# Repairs that Keras 3's legacy HDF5 loader also makes: alone, they do not require the repair path.
_ROUTINE_REPAIRS = {_INPUT_LAYER_SHAPE}


class ConfigRepair:
    """Rewrites a stored Keras 2 / tf.keras model config so that Keras 3 can rebuild it.

    Args:
        path: The model file, for messages.
        objects: The user's custom objects. Classes a Keras 3 file registers under another name
            ("package>Name") are added to this dict.
        unsafe: Whether Python code stored in Lambda layers may be rebuilt and run.
        input_shape: Input shape without the batch axis (`input_shape` of `load`), for a Sequential model
            saved without one; or None.
        written_by: The Keras version recorded in the file: a file from a newer Keras 3 is first fitted
            to the installed one (`deadrelu.io.legacy.newer_keras`).

    Attributes:
        original_names: Keras 3 layer name -> the name stored in the file (for renamed layers).
        functions: Functions rebuilt from Lambda bytecode, passed to Keras as custom objects.
    """

    def __init__(
        self,
        path: str,
        objects: dict,
        *,
        unsafe: bool = False,
        input_shape: tuple | None = None,
        written_by: str | None = None,
    ):
        self.path = path
        self.written_by = written_by
        self.objects = objects
        self.unsafe = unsafe
        self.input_shape = input_shape
        self.original_names: dict[str, str] = {}
        self.functions: dict[str, Callable] = {}
        self.classes: dict[str, type] = {}  # deadrelu's own layer classes the repaired config uses
        self._tf_ops: set[str] = set()  # names of layers rebuilt from tf.keras TFOpLambda
        self._counts: collections.Counter = collections.Counter()
        self._new_names: dict[str, str] = {}
        self._all_names: set[str] = set()
        self._lambdas: list[str] = []

    @property
    def changed(self) -> bool:
        """Whether Keras 3's own loader would need these repairs (not just ones it makes itself)."""
        return bool(self.functions or self.classes) or any(note not in _ROUTINE_REPAIRS for note in self._counts)

    @property
    def custom_objects(self) -> dict:
        """The objects Keras needs to rebuild the repaired config: the user's and the lambdas'."""
        return {**self.objects, **self.functions, **self.classes}

    def run(self, config: dict) -> dict:
        """Returns a repaired deep copy of a whole model's config.

        Args:
            config: The stored model config (`{"class_name": ..., "config": ...}`).

        Returns:
            The repaired copy; `messages()` then describes the repairs.

        Raises:
            ModelLoadError: The config uses a layer class Keras cannot find, or holds lambdas and
                `unsafe` is False.
        """
        config = copy.deepcopy(config)
        fitted = newer_keras.fit_to_installed(config, path=self.path, written_by=self.written_by, objects=self.objects)
        for note in fitted:  # a file from a newer Keras 3: settings the installed one lacks
            self._note(note)
        self._all_names = set(_all_names(config))
        _check_classes(config, self.objects, self.path)
        self._entry(config, top_level=True)
        if self._lambdas and not self.unsafe:
            shown = ", ".join(f"'{n}'" for n in self._lambdas[:3])
            raise ModelLoadError(
                f"{self.path} has {len(self._lambdas)} Lambda layer(s) ({shown}) holding Python "
                "code, which deadrelu does not run by default; if you trust the file, pass `unsafe=True` "
                "to run the code stored in it"
            )
        return config

    def messages(self) -> list[str]:
        """Human-readable descriptions of the repairs made, in the order they first occurred."""
        return [note.replace("{n}", str(n)).replace("{s}", "" if n == 1 else "s") for note, n in self._counts.items()]

    # -- walking the config

    def _entry(self, entry: dict, *, top_level: bool = False, in_sequential: bool = False) -> bool:
        """Repairs one layer entry in place; returns whether Keras 2 gave it a node of its own."""
        self._note(_module_path(entry))
        self._note(_thresholded_relu(entry))
        name = entry.get("class_name")
        if name in _TF_OP_LAYERS and name not in self.objects:  # the user's own implementation wins
            self._note(self._tf_op(entry))
            return False
        if name == "Sequential":
            return self._sequential(entry, top_level=top_level)
        if name in ("Functional", "Model") or _looks_functional(entry.get("config")):
            self._functional(entry, in_sequential=in_sequential)
            return True
        self._layer(entry)
        return False

    def _child(self, layer: dict, *, in_sequential: bool = False) -> bool:
        """Repairs a layer of a model; returns whether Keras 2 gave it a node of its own."""
        layer.pop("build_config", None)  # built when the model calls it (tf.keras hints misfit Keras 3)
        return self._entry(layer, in_sequential=in_sequential)

    def _sequential(self, entry: dict, *, top_level: bool) -> bool:
        """Repairs a Sequential model; returns whether it had an input (so Keras 2 gave it a node)."""
        self._note(_list_style_sequential(entry))
        cfg = entry["config"]
        self._rename(cfg)
        layers = cfg["layers"]
        had_input = bool(layers) and (
            layers[0].get("class_name") == "InputLayer" or "batch_input_shape" in layers[0].get("config", {})
        )
        if layers and layers[0].get("class_name") != "InputLayer":
            self._note(self._add_input_layer(cfg, layers, top_level=top_level))
        for layer in layers[1:]:
            if _drop_batch_input_shape(layer):  # tf.keras 2.13 kept it on the first layer
                self._note("dropped batch_input_shape from {n} layer{s} after an InputLayer")
        for layer in layers:
            self._child(layer, in_sequential=True)
        return had_input

    def _functional(self, entry: dict, *, in_sequential: bool = False) -> None:
        """Repairs a Functional model: its layers, then the node references between them."""
        cfg = entry["config"]
        self._rename(cfg)
        # Keras 2 gave every nested model built on an Input a first node of its own, so the outer
        # model calls its first use node 1. Keras 3 models have no such node: shift the legacy
        # references of layer calls. (Keras 3 already shifts output references to Functional models.)
        shift_calls, shift_outputs = set(), set()
        for layer in cfg.get("layers", []):
            self._rename(layer)
            if _drop_batch_input_shape(layer):
                self._note("dropped batch_input_shape from {n} non-input layer{s} of Functional models")
            if self._child(layer):
                shift_calls.add(layer.get("name"))
                if layer.get("class_name") == "Sequential":
                    shift_outputs.add(layer.get("name"))
        for layer in cfg.get("layers", []):
            nodes = self._refs(layer.get("inbound_nodes", []), shift_calls)
            if layer.get("name") in self._tf_ops:
                nodes = [_without_op_name(node) for node in nodes]
            layer["inbound_nodes"] = [self._tensor_kwargs(node) for node in nodes]
        for key in ("input_layers", "output_layers"):
            if key in cfg:
                cfg[key] = self._refs(cfg[key], shift_outputs)
                # Keras 2 wrote one input or output as a list of one; Keras 3 then passes a list
                # on, which breaks a Sequential holding this model and warns on every call.
                # (Keras before ~3.4 reads only that form, and gives a single tensor.)
                if _is_single_ref_list(cfg[key]) and newer_keras.writes_flat_single_refs():
                    cfg[key] = cfg[key][0]
                    if key == "output_layers" and in_sequential:
                        self._note("unwrapped the single output of {n} model{s} nested in a Sequential")

    def _layer(self, entry: dict) -> None:
        """Repairs a plain layer's config."""
        cfg = entry.get("config")
        if not isinstance(cfg, dict):
            return
        self._rename(cfg)
        self._rename(entry)
        self._note(_input_layer_shape(entry))
        if entry.get("class_name") == "BatchNormalization":
            _batch_norm_axis(cfg)
        if entry.get("class_name") == "Lambda":
            self._note(self._lambda(entry))
        for wrapped in _wrapped_layers(cfg):
            self._entry(wrapped)
            self._note(_wrapped_module(wrapped))
        self._note(_inert_settings(entry, self.objects))

    # -- repairs that need the walk's state

    def _add_input_layer(self, cfg: dict, layers: list, *, top_level: bool) -> str | None:
        """Gives a Sequential model saved without an InputLayer an explicit one."""
        first = layers[0].get("config", {})
        shape = first.pop("batch_input_shape", None)
        source = "batch_input_shape of its first layer"
        if shape is None and cfg.get("build_input_shape"):
            shape, source = cfg["build_input_shape"], "its build_input_shape"
        if shape is None and top_level and self.input_shape is not None:
            shape, source = (None, *self.input_shape), "`input_shape`"
        if shape is None:
            if top_level:
                raise ModelLoadError(
                    f"{self.path} holds a Sequential model saved without an input shape; pass one "
                    'with `input_shape`, e.g. `input_shape="28,28,1"` (without the batch axis)'
                )
            return None  # a nested Sequential is built when the outer model calls it
        name = self._unique(f"{first.get('name', 'input')}_input")
        layer = {
            "class_name": "InputLayer",
            "config": {"batch_shape": list(shape), "dtype": first.get("dtype", "float32"), "name": name},
        }
        if "module" in layers[0]:
            layer.update(module="keras.layers", registered_name=None)
        layers.insert(0, layer)
        where = f"Sequential '{cfg.get('name')}'"
        return f"added an input layer of shape {tuple(shape)} to {where}, from {source}"

    def _lambda(self, entry: dict) -> str | None:
        """Finds Python code in a Lambda; with `unsafe`, turns it into a function Keras can call."""
        cfg = entry["config"]
        for key in ("module", "function_type", "output_shape_type", "output_shape_module"):
            cfg.pop(key, None)
        code = lambda_bytecode.lambda_code(cfg.get("function"))
        if code is None:
            return None
        self._lambdas.append(cfg.get("name", "lambda"))
        if not self.unsafe:
            return None
        key = f"deadrelu_lambda_{len(self.functions)}_{cfg.get('name', '')}"
        where = f"Lambda layer '{cfg.get('name')}'"
        function, origin = lambda_bytecode.function_from_code(*code, where=where)
        self.functions[key] = function
        cfg["function"] = key
        # Keras 3's legacy (module-less) route cannot take a function by name: use the current one.
        entry.update(module="keras.layers", registered_name=None)
        if lambda_bytecode.lambda_code(cfg.get("output_shape")) is not None:
            cfg["output_shape"] = None  # Keras 3 infers the output shape by tracing the function
        return f"rebuilt {{n}} Lambda function{{s}} from {origin} stored in the file (`unsafe=True`)"

    def _tf_op(self, entry: dict) -> str:
        """Rebuilds a tf.keras TensorFlow-op layer (see `deadrelu.io.legacy.tf_ops`)."""
        from deadrelu.io.legacy import tf_ops

        self._rename(entry["config"])
        self._tf_ops.add(entry["config"].get("name"))
        if tf_ops.rebuild_entry(entry):
            return "rebuilt {n} tf.nn.relu/relu6 op layer{s} (tf.keras TFOpLambda) as ReLU layers"
        self.classes["TFOpLambda"] = tf_ops.TFOpLambda
        return "rebuilt {n} TensorFlow op layer{s} (tf.keras TFOpLambda) as deadrelu TFOpLambda layers"

    def _refs(self, data, shift: set):
        """Renames and re-indexes node references ([name, node, tensor(, kwargs)] or keras_history)."""
        if isinstance(data, list):
            if len(data) in (3, 4) and isinstance(data[0], str) and isinstance(data[1], int):
                name = self._new_name(data[0])
                node = data[1]
                if name in shift and node > 0:
                    node -= 1
                    self._note("re-indexed {n} call{s} of nested models (Keras 2 counted an extra node)")
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
        self._note("converted {n} layer call{s} with tensors among their arguments to the Keras 3 form")
        args = [tensors[0] if len(tensors) == 1 else tensors]
        return {"args": args, "kwargs": _map_refs(kwargs, _keras_tensor)}

    # -- names and notes

    def _rename(self, obj: dict) -> None:
        """Gives a config or layer entry with a stored name a valid Keras 3 name."""
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            obj["name"] = self._new_name(obj["name"])

    def _new_name(self, old: str) -> str:
        """A Keras 3 name for a stored name: '/' is not allowed in Keras 3 names."""
        if "/" not in old:
            return old
        if old not in self._new_names:
            new = self._unique(old.replace("/", "_"))
            self._new_names[old] = new
            self.original_names[new] = old
            self._note("renamed {n} layer{s} containing '/' (weights matched by original name)")
        return self._new_names[old]

    def _unique(self, name: str) -> str:
        candidate, k = name, 1
        while candidate in self._all_names:
            candidate, k = f"{name}_{k}", k + 1
        self._all_names.add(candidate)
        return candidate

    def _note(self, note: str | None) -> None:
        """Counts one occurrence of a repair (None: nothing was repaired)."""
        if note is not None:
            self._counts[note] += 1


# ----------------------------------------------------------------------------------------------
# Repairs of one entry: each rewrites it in place and returns its note, or None when not needed


def _without_op_name(node):
    """A legacy node of a TensorFlow-op layer in the usual form (a list of references) and without
    the op's `name` argument (a graph name, which Keras layers do not take).

    tf.keras wrote the node of an op on one tensor as that tensor's reference alone:
    `["dense", 0, 0, {"y": 2.0, "name": null}]`, not `[["dense", 0, 0, {...}]]`.
    """
    if not isinstance(node, list):
        return node
    if node and isinstance(node[0], str):
        node = [node]
    return [
        [*ref[:3], {k: v for k, v in ref[3].items() if k != "name"}]
        if isinstance(ref, list) and len(ref) == 4 and isinstance(ref[3], dict)
        else ref
        for ref in node
    ]


def _module_path(entry: dict) -> str | None:
    """Points tf.keras module paths (keras.src.engine..., tf_keras...) at their Keras 3 home."""
    module, name = entry.get("module"), entry.get("class_name")
    if not isinstance(module, str) or not re.match(r"(tf_keras|keras\.(src\.)?engine)\b", module):
        return None
    if name in _MODEL_CLASSES:
        entry.update(module="keras", class_name="Sequential" if name == "Sequential" else "Model")
    elif _keras_layer_class(name) is not None:
        entry["module"] = "keras.layers"
    else:
        return None
    entry["registered_name"] = None
    return "pointed {n} tf.keras module path{s} (keras.src.engine, tf_keras) at Keras 3"


def _thresholded_relu(entry: dict) -> str | None:
    """Replaces a ThresholdedReLU (not in Keras 3) by the equivalent ReLU(threshold=theta)."""
    if entry.get("class_name") != "ThresholdedReLU":
        return None
    cfg = entry["config"]
    entry["class_name"] = "ReLU"
    entry["config"] = {k: v for k, v in cfg.items() if k in ("name", "trainable", "dtype")}
    entry["config"].update(threshold=float(cfg.get("theta", 1.0)), negative_slope=0.0, max_value=None)
    return "replaced {n} ThresholdedReLU layer{s} by the equivalent ReLU(threshold=theta)"


def _list_style_sequential(entry: dict) -> str | None:
    """Keras <= 2.2.2 stored a Sequential's config as the bare list of its layers."""
    if not isinstance(entry["config"], list):
        return None
    entry["config"] = {"name": "sequential", "layers": entry["config"]}
    return "converted {n} Keras 2.2 list-style Sequential config{s}"


def _drop_batch_input_shape(layer: dict) -> bool:
    """Drops `batch_input_shape` from a layer that is not an InputLayer; returns whether it had one."""
    cfg = layer.get("config")
    if layer.get("class_name") == "InputLayer" or not isinstance(cfg, dict):
        return False
    return cfg.pop("batch_input_shape", None) is not None


def _input_layer_shape(entry: dict) -> str | None:
    """Keras 3 calls an InputLayer's `batch_input_shape` `batch_shape`."""
    cfg = entry["config"]
    if entry.get("class_name") != "InputLayer" or "batch_input_shape" not in cfg:
        return None
    cfg["batch_shape"] = cfg.pop("batch_input_shape")
    return _INPUT_LAYER_SHAPE


def _batch_norm_axis(cfg: dict) -> None:
    """Keras 2 could store a BatchNormalization axis as a list of one; Keras 3 wants the int."""
    if isinstance(cfg.get("axis"), list) and len(cfg["axis"]) == 1:
        cfg["axis"] = int(cfg["axis"][0])


def _inert_settings(entry: dict, objects: dict) -> str | None:
    """Drops Keras 2 settings that a Keras 3 built-in layer rejects but that change nothing."""
    class_name, cfg = entry.get("class_name"), entry["config"]
    cls = _keras_layer_class(class_name)
    if cls is None or class_name in objects:
        return None
    accepted = _accepted_arguments(cls)
    removed = []
    for key in [k for k in cfg if k not in accepted and _is_inert(k, cfg[k])]:
        value = cfg.pop(key)
        removed.append(key if isinstance(value, dict) else f"{key}={json.dumps(value)}")
    if not removed:
        return None
    return f"removed {', '.join(removed)} from {{n}} {class_name} config{{s}} (not in Keras 3; no effect)"


def _is_inert(key: str, value) -> bool:
    """Whether a setting Keras 3 rejects can be dropped without changing the loaded model."""
    if key in _INERT_SETTINGS:
        inert = _INERT_SETTINGS[key]
        return inert is None or value in inert
    # Initializers only matter before weights are loaded (tf.keras SeparableConv2D kept a
    # kernel_initializer it never used); unused regularizers and constraints are None.
    return key.endswith("_initializer") or (key.endswith(("_regularizer", "_constraint")) and value is None)


def _accepted_arguments(cls) -> set[str]:
    """Keyword arguments a Keras 3 layer class accepts (`newer_keras.accepted_arguments`), and the
    input shapes Keras 2 stored on layers, which `ConfigRepair` moves to an input layer."""
    return newer_keras.accepted_arguments(cls) | {"input_shape", "input_dim", "batch_input_shape", "batch_shape"}


# ----------------------------------------------------------------------------------------------
# Layer classes


def _check_classes(config: dict, objects: dict, path: str) -> None:
    """Raises a clear error for layer classes that are neither Keras 3 nor custom objects.

    Also registers custom classes under the name a Keras 3 file gives them ("package>Name").
    """
    import keras

    for entry in _layer_entries(config):
        name = entry.get("class_name")
        registered = entry.get("registered_name")
        if name in objects:
            if _is_keras2_class(objects[name]):
                raise ModelLoadError(
                    f"the `custom_objects` class {name} is written for tf.keras (Keras 2), but "
                    "deadrelu rebuilds models with Keras 3; make it subclass keras.layers.Layer "
                    "(import keras) instead of tf.keras.layers.Layer"
                )
            if registered and registered not in objects:
                objects[registered] = objects[name]
            continue
        if name in (*_MODEL_CLASSES, "ThresholdedReLU", *_TF_OP_LAYERS) or _importable_package(entry.get("module")):
            continue
        if _keras_layer_class(name) is not None and registered in (None, name):
            continue
        if registered and keras.saving.get_registered_object(registered, custom_objects=objects):
            continue
        if name in _REMOVED_LAYERS:
            raise ModelLoadError(
                f"{path} uses the layer {name}, which {_REMOVED_LAYERS[name]}; "
                f'pass an implementation of {name} with `custom_objects="module.py"`'
            )
        raise ModelLoadError(
            f"{path} uses the custom layer class '{name}', which Keras cannot find; pass "
            'the Python file that defines it with `custom_objects="module.py"`'
        )


def _keras_layer_class(name) -> type | None:
    """The Keras 3 built-in layer class called `name`, or None."""
    import keras

    cls = getattr(keras.layers, name or "", None)
    return cls if isinstance(cls, type) else None


def _is_keras2_class(obj) -> bool:
    """Whether a custom object is a tf.keras / tf_keras (Keras 2) class, which Keras 3 cannot use."""
    prefixes = ("tf_keras", "tensorflow.python.keras", "keras.engine", "tensorflow.keras")
    return isinstance(obj, type) and any(c.__module__.startswith(prefixes) for c in obj.__mro__[1:])


def _importable_package(module) -> bool:
    """Whether a config names a module of an installed Keras package other than Keras (keras_hub...).

    Only Keras's own family: `deadrelu.io.safety` refuses every other module before this runs.
    """
    if not isinstance(module, str) or not module:
        return False
    top = module.split(".")[0]
    return top in safety.KERAS_PACKAGES - {"keras", "tf_keras"} and importlib.util.find_spec(top) is not None


# ----------------------------------------------------------------------------------------------
# Walking configs


def _looks_functional(cfg) -> bool:
    """A custom Model subclass saved with a functional config (layers and input/output refs)."""
    return isinstance(cfg, dict) and "layers" in cfg and "input_layers" in cfg and "output_layers" in cfg


def _wrapped_module(entry: dict) -> str | None:
    """Names Keras 3's module in a wrapped layer's entry that has none (Keras ≤ 2.12 files, SavedModel
    metadata): a wrapper's `from_config` looks a module-less class up among registered objects only."""
    import keras

    if "module" in entry or not isinstance(vars(keras.layers).get(entry.get("class_name")), type):
        return None
    entry.update(module="keras.layers", registered_name=None)
    return "named the module of {n} layer{s} inside Bidirectional or TimeDistributed (Keras 2 wrote none)"


def _wrapped_layers(cfg: dict) -> list[dict]:
    """The layer entries a wrapper's config holds (TimeDistributed, Bidirectional)."""
    entries = (cfg.get("layer"), cfg.get("backward_layer"))
    return [entry for entry in entries if isinstance(entry, dict) and "class_name" in entry]


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
        for wrapped in _wrapped_layers(cfg):
            yield from _layer_entries(wrapped)


def _all_names(config) -> Iterator[str]:
    """Every layer and model name in a config, to keep renamed layers unique."""
    for entry in _layer_entries(config):
        cfg = entry.get("config")
        if isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
            yield cfg["name"]


# ----------------------------------------------------------------------------------------------
# Node references: [layer name, node index, tensor index]


def _is_ref(value) -> bool:
    return isinstance(value, list) and len(value) == 3 and isinstance(value[0], str) and isinstance(value[1], int)


def _is_single_ref_list(value) -> bool:
    """Whether `value` is [[name, node, tensor]]: one node reference wrapped in a list."""
    return isinstance(value, list) and len(value) == 1 and _is_ref(value[0])


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
    config = {"shape": [], "dtype": "float32", "keras_history": ref}
    return {"class_name": "__keras_tensor__", "config": config}

"""Opening a model saved by a newer Keras 3 than the one installed.

Each Keras release adds constructor arguments, and `get_config` writes them even at their default:
Dense's `quantization_config` (Keras 3.13), the initializers' `input_axes` (3.15), ... An older
Keras refuses every key its class does not take ("Unrecognized keyword arguments passed to Dense:
{'quantization_config': None}"), so a `.keras` or `.h5` file from a colleague with a newer Keras
does not open, although nothing in it needs the new release.

`fit_to_installed` walks every serialized object of the stored config: layers, nested models,
wrapped layers, initializers, regularizers, constraints, activations and dtype policies stored as
objects, and the compile config's optimizer, learning-rate schedule, loss and metrics. It compares
each stored key with what the *installed* class reads: the arguments of its `__init__` (following
`**kwargs` up the classes it is passed to, with the names an `__init__` takes out of `**kwargs`),
and the keys its `from_config` reads. Nothing is listed by hand, so the next release's additions
are found the same way. A key the installed class does not read is

* dropped, with a note, when its value is the "off" value new Keras settings default to (None,
  False, or empty): leaving it out builds the same model;
* refused (`ModelLoadError`, one line naming the layer, the key, the value and both Keras versions)
  when it holds a real value: the installed Keras would build a different model than the one saved.
  In the compile config the model itself is unaffected: the training configuration is left out
  instead, with a note, and the model loads uncompiled.

A class the installed Keras does not have at all (a layer added by a later release) is refused the
same way. Models (Sequential, Functional) are not checked themselves: their `from_config` reads the
keys it needs and ignores the others; their layers are. Classes the user passes in
`custom_objects` and classes outside Keras are left to their own code.

One change of layout, not of settings, needs the same treatment: Keras before ~3.4 reads a
Functional model's single input or output only as a list of one reference (`[["x", 0, 0]]`), and
later releases write the bare reference (`writes_flat_single_refs`).

Only files whose recorded Keras version is newer than the installed one are changed: older files
are Keras's own business (and Keras 2 files that of `config_repairs`).

Keras's classes are found through the attributes of the already imported `keras` package (never by
importing a module a file names), and only their signatures and source are read, never called.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import re
import textwrap

from deadrelu.errors import ModelLoadError

# Public Keras namespaces for configs without a "module" key (legacy `.h5`), by the key holding them.
_NAMESPACE_BY_KEY = (
    ("_initializer", "initializers"),
    ("_regularizer", "regularizers"),
    ("_constraint", "constraints"),
    ("optimizer", "optimizers"),
    ("learning_rate", "optimizers.schedules"),
    ("loss", "losses"),
    ("metrics", "metrics"),
)


def fit_to_installed(config: dict, *, path: str, written_by: str | None, objects: dict) -> list[str]:
    """Fits, in place, a model config saved by a newer Keras 3 to the installed Keras.

    Args:
        config: The stored model config (`{"class_name": ..., "config": ..., "compile_config": ...}`),
            a copy the caller owns: it is changed in place.
        path: The model file, for messages.
        written_by: The Keras version recorded in the file (metadata.json, the HDF5 `keras_version`).
        objects: The user's custom objects; their classes are not checked.

    Returns:
        Notes describing what was dropped (empty when nothing was, or the file is not newer).

    Raises:
        ModelLoadError: A setting or a class the installed Keras does not have holds a real value.

    Example:
        >>> notes = fit_to_installed(config, path="model.keras", written_by="3.15.1", objects={})
        >>> notes
        ['dropped quantization_config=null from 2 Dense layers (dense, dense_1): ...']
    """
    import keras

    installed = keras.__version__
    if not is_newer(written_by, installed):
        return []
    walk = _Walk(path=path, written_by=str(written_by), installed=installed, objects=objects)
    training = config.get("compile_config")
    walk.visit({k: v for k, v in config.items() if k != "compile_config"}, owner=None, key=None)
    notes = walk.notes()
    if isinstance(training, dict):
        notes += _fit_training(config, training, walk)
    return notes


def is_newer(written_by: str | None, installed: str) -> bool:
    """Whether a file written by Keras `written_by` comes from a later Keras 3 than `installed`.

    Example:
        >>> is_newer("3.15.1", "3.3.3"), is_newer("3.3.3", "3.15.1"), is_newer("2.15.0", "3.3.3")
        (True, False, False)
    """
    written, current = _release(written_by), _release(installed)
    return bool(written) and written[0] == 3 and written > current


def _release(version) -> tuple[int, ...]:
    """(3, 15, 1) from "3.15.1" or "3.16.0.dev2026..."; () when unreadable."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", str(version or ""))
    return tuple(int(part or 0) for part in match.groups()) if match else ()


def is_off(value) -> bool:
    """Whether a value is the one new Keras settings default to (None, False, empty): leaving it out
    builds the same model."""
    return value is None or value is False or (isinstance(value, (str, list, tuple, dict)) and len(value) == 0)


def accepted_arguments(cls) -> set[str]:
    """Keyword arguments the constructor of `cls` takes, however deep.

    Follows `**kwargs` up the class hierarchy as long as each `__init__` passes it on to its base
    (Dense → Layer), and adds the names an `__init__` takes out of `**kwargs` itself
    (`kwargs.pop("input_shape")`). Stops at the first `__init__` that keeps `**kwargs` to itself.

    Args:
        cls: A class.

    Returns:
        The argument names.

    Example:
        >>> "units" in accepted_arguments(keras.layers.Dense)
        True
    """
    accepted: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        init = vars(klass)["__init__"]
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):  # a builtin (object.__init__): takes nothing
            break
        accepted.update(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        varkw = next((p.name for p in params if p.kind == p.VAR_KEYWORD), None)
        if varkw is None:
            break
        used, forwarded, _ = _uses_of(init, varkw)
        accepted.update(used)
        if not forwarded:
            break
    accepted.discard("self")
    return accepted


@functools.cache
def writes_flat_single_refs() -> bool:
    """Whether the installed Keras writes a Functional model's one input as `["x", 0, 0]`.

    Keras before ~3.4 wrote (and reads only) a list of references, `[["x", 0, 0]]`, and gives a
    single tensor for a list of one; later versions write the bare reference and take a list of one
    as a list. Asked of a two-layer model, since no version says when it changed.
    """
    import keras

    inputs = keras.Input((1,), name="deadrelu_probe_input")
    outputs = keras.layers.Identity(name="deadrelu_probe_identity")(inputs)
    refs = keras.Model(inputs, outputs, name="deadrelu_probe").get_config()["input_layers"]
    return not isinstance(refs[0], list)


def _is_functional(cfg: dict) -> bool:
    """A Functional model's config (also a Model subclass's, and module-less in a legacy `.h5`)."""
    return all(key in cfg for key in ("layers", "input_layers", "output_layers"))


def _nest_single_refs(cfg: dict) -> None:
    """Writes a Functional config's bare input and output references as lists of one."""
    for key in ("input_layers", "output_layers"):
        ref = cfg.get(key)
        if isinstance(ref, list) and len(ref) == 3 and isinstance(ref[0], str) and isinstance(ref[1], int):
            cfg[key] = [ref]


# ----------------------------------------------------------------------------------------------
# Reading Keras's source: which keys a function takes out of a dict, and whether it passes it on


@functools.cache
def _uses_of(function, name: str) -> tuple[frozenset, bool, bool]:
    """What `function` does with its dict argument `name`.

    Returns:
        (the keys it reads from it, whether it passes `**name` to a call, whether it passes `name` on
        to another `from_config`, as `super().from_config(config)` does). Unreadable source counts
        as passing `**name` on, as Keras's own `__init__` and `from_config` methods do.
    """
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return frozenset(), True, False
    keys, forwarded, delegated = set(), False, False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            forwarded |= any(kw.arg is None and _is_name(kw.value, name) for kw in node.keywords)
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "from_config":
                delegated |= any(_is_name(arg, name) for arg in [*node.args, *(kw.value for kw in node.keywords)])
            if isinstance(func, ast.Attribute) and func.attr in ("pop", "get") and _is_name(func.value, name):
                keys.update(_literal(arg) for arg in node.args[:1])
        elif isinstance(node, ast.Subscript) and _is_name(node.value, name):
            keys.add(_literal(node.slice))
        elif isinstance(node, ast.Compare) and any(_is_name(c, name) for c in node.comparators):
            keys.add(_literal(node.left))
    keys.discard(None)
    return frozenset(keys), forwarded, delegated


def _is_name(node, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _literal(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


@functools.cache
def _known_keys(cls) -> frozenset | None:
    """The config keys the installed `cls` reads, or None when it ignores keys it does not know.

    `from_config` usually ends in `cls(**config)`, perhaps through `super().from_config(config)`:
    then every key must be a constructor argument or one that a `from_config` on the way takes out
    first (Bidirectional's "backward_layer"). A `from_config` that does neither reads what it needs
    and ignores the rest.
    """
    import keras

    if issubclass(cls, keras.Model):  # Sequential and Functional rebuild from the keys they need
        return None
    read: set[str] = set()
    for klass in cls.__mro__:
        function = vars(klass).get("from_config")
        function = getattr(function, "__func__", function)
        if not callable(function):
            continue
        params = list(inspect.signature(function).parameters)
        if len(params) < 2:
            break
        keys, forwarded, delegated = _uses_of(function, params[1])
        read |= keys
        if forwarded:
            break
        if not delegated:
            return None
    return frozenset(accepted_arguments(cls) | read)


# ----------------------------------------------------------------------------------------------
# Walking a config


@dataclasses.dataclass
class _Problem:
    """A setting (or class) the installed Keras does not have, holding a real value."""

    where: str
    what: str


@dataclasses.dataclass
class _Walk:
    """One pass over a config: what was dropped, and the first real value that could not be."""

    path: str
    written_by: str
    installed: str
    objects: dict
    strict: bool = True  # raise at the first problem (the model); else record it (the compile config)
    dropped: dict = dataclasses.field(default_factory=dict)  # (kind, keys) -> owner names
    problems: list = dataclasses.field(default_factory=list)

    def visit(self, node, *, owner: str | None, key: str | None) -> None:
        """Checks every serialized object under `node`; `owner` names the layer that holds it."""
        if isinstance(node, (list, tuple)):
            for item in node:
                self.visit(item, owner=owner, key=key)
            return
        if not isinstance(node, dict):
            return
        cfg = node.get("config")
        class_name = node.get("class_name")
        if not (isinstance(class_name, str) and isinstance(cfg, dict)):
            for child_key, value in node.items():
                self.visit(value, owner=owner, key=child_key)
            return
        cls = self._resolve(node, owner, key)
        if _is_functional(cfg) and not writes_flat_single_refs():
            _nest_single_refs(cfg)
        if cls is not None and _is_layer(cls):
            owner, key = _layer_label(cls, cfg, class_name), None
        elif cls is None and _entry_label(cfg, key):  # the user's layer: name it as the owner
            owner, key = _entry_label(cfg, key), None
        if cls is not None:
            self._check(cls, cfg, class_name, owner, key)
        for child_key, value in list(cfg.items()):
            self.visit(value, owner=owner, key=child_key)

    def _resolve(self, node: dict, owner: str | None, key: str | None):
        """The installed Keras class a serialized object names; None when it is not Keras's."""
        import keras

        class_name, module = node["class_name"], node.get("module")
        registered = node.get("registered_name")
        if class_name.startswith("__") or class_name == "function":  # tensors, tuples, functions
            return None
        if class_name in self.objects or (registered and (registered in self.objects or ">" in registered)):
            return None  # the user's class, or one registered by a package
        if module is None:  # a legacy .h5 config: the key holding it says which namespace
            namespace = next((ns for suffix, ns in _NAMESPACE_BY_KEY if (key or "").endswith(suffix)), "layers")
            cls = getattr(_attribute(keras, namespace), class_name, None)
            return cls if _is_keras_class(cls) else None
        if not isinstance(module, str) or module.split(".")[0] != "keras":
            return None
        namespace = _attribute(keras, module.partition(".")[2])
        if namespace is None:  # a module this Keras does not have: leave the verdict to Keras
            return None
        cls = getattr(namespace, class_name, None)
        if cls is None and keras.saving.get_registered_object(registered or class_name) is None:
            where = _entry_label(node["config"], key) or _object_label(class_name, owner, key)
            self._problem(where, f"is a {class_name} ({module}), which Keras {self.installed} does not have")
        return cls if _is_keras_class(cls) else None

    def _check(self, cls, cfg: dict, class_name: str, owner: str | None, key: str | None) -> None:
        """Drops the keys `cls` does not read that are off; records the others as problems."""
        known = _known_keys(cls)
        if known is None:
            return
        unknown = [k for k in cfg if k not in known]
        for name in unknown:
            if not is_off(cfg[name]):
                self._problem(
                    _object_label(class_name, owner, key),
                    f"sets {name}={_shown(cfg[name])}, which Keras {self.installed} does not have",
                )
        off = ", ".join(f"{k}={_shown(cfg.pop(k))}" for k in unknown if is_off(cfg[k]))
        if off:
            noun = class_name if class_name.endswith("Layer") else f"{class_name} layer"  # InputLayer
            kind = noun if key is None else f"the {key} ({class_name})"
            self._drop(kind, off, owner)

    def _drop(self, kind: str, settings: str, owner: str | None) -> None:
        owners = self.dropped.setdefault((kind, settings), [])
        if owner is not None and owner not in owners:
            owners.append(owner)

    def _problem(self, where: str, what: str) -> None:
        if self.strict:
            raise ModelLoadError(
                f"{self.path}: {where} {what} (the file was saved by Keras {self.written_by}); "
                f"upgrade Keras to read it: pip install -U 'keras>={self.written_by}'"
            )
        self.problems.append(_Problem(where, what))

    def notes(self) -> list[str]:
        """One note per kind of object and settings dropped, naming the layers they were dropped from."""
        notes = []
        for (kind, settings), owners in self.dropped.items():
            if not kind.startswith("the "):  # a layer's own settings
                where = _owners(owners, kind)
            else:
                where = f"{kind} of {_owners(owners, 'layer')}" if owners else kind
            it = "these settings at their default" if ", " in settings else "this setting at its default"
            notes.append(
                f"dropped {settings} from {where}: Keras {self.written_by} wrote {it}, "
                f"and Keras {self.installed} does not have {'them' if ', ' in settings else 'it'}"
            )
        return notes


def _fit_training(config: dict, training: dict, model_walk: _Walk) -> list[str]:
    """Fits the compile config; one that holds real values the installed Keras lacks is left out."""
    import keras

    walk = dataclasses.replace(model_walk, strict=False, dropped={}, problems=[])
    where = "the training configuration"
    known = set(inspect.signature(keras.Model.compile).parameters)
    for name in [k for k in training if k not in known]:
        if is_off(training[name]):
            walk._drop(where, f"{name}={_shown(training.pop(name))}", None)
        else:
            walk.problems.append(_Problem(where, f"sets {name}={_shown(training[name])}"))
    walk.visit(training, owner=where, key=None)
    if not walk.problems:
        return walk.notes()
    del config["compile_config"]
    first = walk.problems[0]
    return [
        f"not compiled: {first.where} {first.what} (the file was saved by Keras {walk.written_by}); "
        "the model loads without its training configuration: upgrade Keras to train it as saved"
    ]


def _attribute(root, dotted: str):
    """`root.a.b.c` for "a.b.c" through public attributes only (no import); None when one is missing."""
    for part in dotted.split(".") if dotted else ():
        root = getattr(root, part, None) if not part.startswith("_") else None
        if root is None:
            return None
    return root


def _is_keras_class(cls) -> bool:
    return isinstance(cls, type) and cls.__module__.split(".")[0] == "keras"


def _is_layer(cls) -> bool:
    import keras

    return issubclass(cls, keras.layers.Layer)


def _layer_label(cls, cfg: dict, class_name: str) -> str:
    import keras

    kind = "model" if issubclass(cls, keras.Model) else "layer"
    return f"{kind} '{cfg.get('name', class_name)}'"


def _entry_label(cfg: dict, key: str | None) -> str | None:
    """ "layer 'name'" for an entry of a model's layers or a wrapper's layer, else None."""
    name = cfg.get("name")
    in_layers = key in (None, "layers", "layer", "backward_layer", "cell", "cells")
    return f"layer '{name}'" if in_layers and isinstance(name, str) else None


def _object_label(class_name: str, owner: str | None, key: str | None) -> str:
    """ "layer 'dense' (Dense)" or "the kernel_initializer (GlorotUniform) of layer 'dense'"."""
    if key is None and owner is not None:
        return f"{owner} ({class_name})"
    thing = f"the {key} ({class_name})" if key else f"a {class_name}"
    return f"{thing} of {owner}" if owner else thing


def _owners(owners: list[str], noun: str) -> str:
    """ "4 Dense layers (a, b, c, d)" from ["layer 'a'", ...]; other owners ("the training
    configuration") are named as they are."""
    names = [owner.split("'")[1] for owner in owners if owner.count("'") == 2]
    if len(names) != len(owners):
        return ", ".join(owners)
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"{len(names)} {noun}{'' if len(names) == 1 else 's'} ({shown})"


def _shown(value) -> str:
    """A stored value as JSON, shortened for a message; a serialized object as `Class(...)`."""
    if isinstance(value, dict) and isinstance(value.get("class_name"), str) and "config" in value:
        return f"{value['class_name']}(...)"
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."

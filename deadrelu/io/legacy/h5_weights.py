"""Stored weights → a rebuilt Keras 3 model, matched by layer name.

Two layouts exist:

* legacy HDF5 (Keras 2 `model.save("m.h5")` / `save_weights`): one group per top-level layer, with
  the layer's arrays listed, in order, in its `weight_names` attribute; a nested model keeps all its
  sublayers' arrays in its own group. See `load_weights`.
* the `.keras`-style weights file (tf.keras 2.13–2.15 and tf_keras archives, Keras 3 and tf_keras
  `.weights.h5`): one group per layer named after its class, with the arrays in `vars/`. See
  `load_archive_weights` (and `load_weights` for such a layout in a plain HDF5 file).
"""

from __future__ import annotations

import collections
import io
import re
from collections.abc import Iterator

from deadrelu.errors import ModelLoadError
from deadrelu.io.legacy import first_line

# Where archive-style files keep a model's layers: tf.keras 2.13–2.15, then tf_keras and Keras 3.
_LAYER_CONTAINERS = ("_layer_checkpoint_dependencies", "layers")
_CHECK_ARCHITECTURE = "the architecture does not match the weights file (check `architecture`)"
_CHECK_CONFIG = "the weights do not match the model's config"


def attr_text(obj, name: str) -> str | None:
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


def load_weights(model, f, original_names: dict, path: str) -> None:
    """Copies the weights of an HDF5 file, in either layout, onto `model`.

    Args:
        model: The Keras 3 model rebuilt from the file's (repaired) config.
        f: The open `h5py.File`: a whole-model file or a weights-only file.
        original_names: Keras 3 layer name -> name in the file, for renamed layers.
        path: The file's path, for messages.

    Raises:
        ModelLoadError: The stored weights do not fit the model.
    """
    if "layer_names" not in f.attrs and any(key in f for key in _LAYER_CONTAINERS):
        _load_archive_layout(model, f, path)  # a `.weights.h5` from Keras 3 or tf_keras
    else:
        _load_legacy_weights(model, f.get("model_weights", f), original_names, path)


def load_archive_weights(model, data: bytes, path: str) -> None:
    """Copies the weights in the `model.weights.h5` of a tf.keras 2.13–2.15 archive onto `model`.

    Args:
        model: The Keras 3 model rebuilt from the archive's (repaired) config.
        data: The bytes of the archive's `model.weights.h5`.
        path: The archive's path, for messages.

    Raises:
        ModelLoadError: The stored weights do not fit the model.
    """
    import h5py

    with h5py.File(io.BytesIO(data), "r") as f:
        _load_archive_layout(model, f, path)


# ----------------------------------------------------------------------------------------------
# Legacy HDF5 layout


def _load_legacy_weights(model, group, original_names: dict, path: str) -> None:
    """Copies the weights of a Keras 2 HDF5 weights group onto `model`, layer by layer."""
    listed = _attr_list(group, "layer_names") or list(group)  # some writers omit the list
    stored = {n for n in listed if n in group and _attr_list(group[n], "weight_names")}
    used = set()
    for layer in model.layers:
        targets = _legacy_order(layer)
        if not targets:
            continue
        original = original_names.get(layer.name, layer.name)
        if original not in group or not _attr_list(group[original], "weight_names"):
            raise ModelLoadError(f"{path} has no weights for layer '{original}'; {_CHECK_ARCHITECTURE}")
        values = _stored_weights(group[original])
        if _is_model(layer):
            _assign_nested(layer, values, original_names, path)
        else:
            _assign(layer.name, targets, values, path)
        used.add(original)
    unused = sorted(stored - used)
    if unused:
        raise ModelLoadError(
            f"{path} holds weights for layers the model does not have ({', '.join(unused[:5])}); {_CHECK_ARCHITECTURE}"
        )


def _stored_weights(layer_group) -> list[tuple[str, object]]:
    """Returns [(weight name, dataset)] of one layer group, in the stored order.

    The datasets are read by `_assign` once their shapes fit the model (`deadrelu.io.safety.check_hdf5`
    has refused links, external storage and shape bombs before).
    """
    return [(name, layer_group[name]) for name in _attr_list(layer_group, "weight_names")]


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


def _assign_nested(model, values: list, original_names: dict, path: str) -> None:
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
                _assign(leaf.name, _legacy_order(leaf), owned[k], path)
            return
    _assign(model.name, _legacy_order(model), values, path)


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


def _assign(owner: str, targets: list, values: list, path: str) -> None:
    """Assigns stored arrays (or datasets) to variables in order, checking their number and shapes
    before reading them."""
    import numpy as np

    if len(targets) != len(values):
        raise ModelLoadError(
            f"layer '{owner}' has {len(targets)} weights in the rebuilt model but {len(values)} in "
            f"{path}; the architecture does not match the weights"
        )
    for variable, (name, value) in zip(targets, values):
        if tuple(variable.shape) != tuple(value.shape):
            raise ModelLoadError(
                f"weight '{name}' of layer '{owner}' has shape {tuple(value.shape)} in {path} but "
                f"{tuple(variable.shape)} in the rebuilt model; the architecture does not match the weights"
            )
        array = np.asarray(value)
        variable.assign(array.astype(variable.dtype) if str(array.dtype) != str(variable.dtype) else array)


# ----------------------------------------------------------------------------------------------
# `.keras`-style layout


def _load_archive_layout(model, root, path: str) -> None:
    """Copies the weights of a `.keras`-style weights file onto `model`, checking that all arrived.

    Both archive layouts name each layer by its class in snake_case plus `_k`, with `k` growing in
    layer order but counted differently; so layers are matched per class, in order. Inside a layer,
    sub-objects (an LSTM's `cell`, a Bidirectional's `forward_layer`) are matched by attribute
    name, and each object's own variables are in `vars/0..n`.
    """
    loaded = _load_archive_object(model, root, path)
    if loaded < len(model.weights):
        raise ModelLoadError(f"{path} holds {loaded} of the model's {len(model.weights)} weights; {_CHECK_CONFIG}")


def _load_archive_object(obj, group, path: str) -> int:
    """Loads one layer or model from its group; returns how many arrays it consumed."""
    import keras

    count = 0
    stored = group.get("vars")
    if stored is not None:
        try:
            obj.load_own_variables(stored)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load the weights of layer '{obj.name}' from {path} ({first_line(exc, 160)}); {_CHECK_CONFIG}"
            ) from exc
        count += len(stored)
    for key in group:
        if key in _LAYER_CONTAINERS and _is_model(obj):
            for layer, layer_group in _match_archive_layers(obj, group[key], path):
                count += _load_archive_object(layer, layer_group, path)
        elif key != "vars" and isinstance(getattr(obj, key, None), keras.layers.Layer):
            count += _load_archive_object(getattr(obj, key), group[key], path)
    return count


def _match_archive_layers(model, container, path: str) -> Iterator[tuple]:
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
                f"{path} stores {len(keys)} {prefix} layers but the model has {len(layers)}; {_CHECK_CONFIG}"
            )


def _snake_case(name: str) -> str:
    """Class name → the snake_case name tf.keras used in archives (Conv2D → conv2d, ReLU → re_lu)."""
    text = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", text).lower()

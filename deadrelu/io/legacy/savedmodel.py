"""TensorFlow SavedModel directories written by tf.keras, read as data: nothing in them runs.

A SavedModel written by tf.keras (`model.save("dir", save_format="tf")`) holds the TensorFlow graph
and its functions (`saved_model.pb`), the variables' values (a checkpoint in `variables/`) and,
since TensorFlow 2.5, `keras_metadata.pb`: each layer's class and JSON configuration. tf_keras and
`tf.saved_model.load` revive such a model from all three, and so run what it holds: a Lambda's
code, a lookup layer reading a vocabulary path, the graph's resource initialisers. This module
reads the metadata and the checkpoint only, and never imports tf_keras:

* `keras_metadata.pb` (tf_keras's `SavedMetadata` proto) and the checkpoint's object graph
  (TensorFlow's `TrackableObjectGraph` proto) are decoded by a small protobuf wire reader;
* the variables are read with `tf.train.load_checkpoint`, which reads tensor bundles and nothing
  else, from files that must lie inside the directory;
* a lookup layer built from a vocabulary file keeps that file as an asset (`assets/`), which
  TensorFlow loads into a hash table when it restores the graph: the asset is found through the
  object graph of `saved_model.pb` and read as text into the layer's configuration;
* `SavedKerasModel.to_hdf5` writes both into an in-memory HDF5 file in the layout of Keras 2's
  `model.save("m.h5")`, which `deadrelu.io.loading` rebuilds like any legacy HDF5 file (every check,
  repair and the by-name weight copy).

Example:

>>> saved = read("saved_model_dir")    # the metadata: configs, which variables each layer owns
>>> with saved.to_hdf5() as f:         # the weights, read from the checkpoint
...     model_config = f.attrs["model_config"]
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
from collections.abc import Iterator

from deadrelu.errors import ModelLoadError
from deadrelu.io.files import is_inside
from deadrelu.io.legacy import first_line

METADATA = "keras_metadata.pb"
CHECKPOINT = os.path.join("variables", "variables")  # the checkpoint's prefix inside the directory

# tf_keras's identifiers of a saved model object: a Functional model (or a subclass of it), a
# Sequential, and a subclassed model, whose layers and calls no configuration describes.
_GRAPH_MODELS = ("_tf_keras_network", "_tf_keras_sequential")
_SUBCLASSED = "_tf_keras_model"
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_VARIABLE = "VARIABLE_VALUE"
_TOP_LAYER = re.compile(r"root\.layer(_with_weights)?-\d+")
# An attribute holds at most 64 KiB in HDF5's object header; Keras 2 splits longer name lists in
# chunks (`layer_names0`, `layer_names1`, ...), which `h5_weights` reads.
_ATTR_CHUNK_BYTES = 60_000


@dataclasses.dataclass
class Variable:
    """A variable of a layer, as the checkpoint knows it.

    Attributes:
        name: The variable's name in tf.keras, such as "dense/kernel:0".
        key: The key of its value in the checkpoint.
    """

    name: str
    key: str


@dataclasses.dataclass
class SavedKerasModel:
    """What a tf.keras SavedModel says about its model, read without running anything.

    Attributes:
        path: The SavedModel directory.
        config: The root model's configuration ({"class_name": ..., "config": ...}).
        training_config: The stored compile arguments, or None.
        keras_version: The version of tf.keras that wrote the directory, when recorded.
        backend: The backend recorded with it ("tensorflow").
        layers: The top-level layers' names, in the model's order, each with its variables in
            the order of Keras 2's HDF5 files (trainable ones first).
        notes: What was read besides the configuration and the variables (vocabularies).
    """

    path: str
    config: dict
    training_config: dict | None
    keras_version: str | None
    backend: str | None
    layers: list[tuple[str, list[Variable]]]
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_hdf5(self):
        """Reads the weights and returns an in-memory `h5py.File` in Keras 2's `model.save` layout.

        The file holds `model_config`, `training_config`, `keras_version` and `backend` attributes
        and a `model_weights` group: one group per top-level layer, with its variables' names in
        the `weight_names` attribute and their values as datasets (a nested model's group holds
        all its sublayers' variables). Nothing is written to disk; close the file when done.

        Returns:
            An open, writable `h5py.File` backed by memory.

        Raises:
            ModelLoadError: The checkpoint is missing, lies outside the directory, is damaged, or
                lacks a variable the object graph lists.
        """
        import h5py

        f = h5py.File(io.BytesIO(), "w")
        try:
            _fill_hdf5(f, self)
        except BaseException:
            f.close()
            raise
        return f


def read(path: str) -> SavedKerasModel:
    """Reads a tf.keras SavedModel's metadata and the variables each of its layers owns.

    Args:
        path: The SavedModel directory.

    Returns:
        A `SavedKerasModel`; its `to_hdf5` reads the weights.

    Raises:
        ModelLoadError: The directory has no Keras metadata, holds a subclassed model, a file
            it needs resolves outside the directory, or a file is damaged.
    """
    for graph_file in ("saved_model.pb", "saved_model.pbtxt"):  # hashed by `deadrelu.io.loading`
        _own_file(path, graph_file)
    nodes = _read_metadata(path)
    root = _root_metadata(nodes, path)
    config = root.get("model_config")
    if not isinstance(config, dict) or not isinstance(config.get("config"), (dict, list)):
        config = {"class_name": root.get("class_name"), "config": root.get("config")}
    notes = _fill_vocabularies(config, nodes, path)
    graph = _ObjectGraph.of_checkpoint(path)
    names = _layer_names(nodes, graph, path)
    layers = []
    for node in graph.listed(0, "layer-"):
        if node not in names:
            raise _damaged(path, METADATA, f"a layer of the model (object {node}) has no metadata")
        layers.append((names[node], graph.legacy_variables(node, names[node])))
    training = root.get("training_config")
    return SavedKerasModel(
        path=path,
        config=config,
        training_config=training if isinstance(training, dict) else None,
        keras_version=_text(root.get("keras_version")),
        backend=_text(root.get("backend")),
        layers=layers,
        notes=notes,
    )


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _damaged(path: str, what: str, detail: str) -> ModelLoadError:
    """The error for a damaged file of the SavedModel: which file, what is wrong, and the fix."""
    return ModelLoadError(
        f"{os.path.join(path, what)} is damaged or was not written by tf.keras ({detail}); copy the whole "
        "SavedModel directory again, or save the model again with model.save()"
    )


def _own_file(path: str, relative: str) -> str:
    """The path of a file of the SavedModel, refusing one that resolves outside the directory."""
    full = os.path.join(path, relative)
    if os.path.lexists(full) and not is_inside(full, path):
        raise ModelLoadError(
            f"{full} resolves to {os.path.realpath(full)}, outside the SavedModel directory; deadrelu reads "
            "only the model's own files: copy the real file into the directory"
        )
    return full


# ----------------------------------------------------------------------------------------------
# keras_metadata.pb


def _read_metadata(path: str) -> list[tuple[str, str, bytes]]:
    """Decodes `keras_metadata.pb`: [(node path, identifier, metadata)] of every saved object.

    The proto is tf_keras's `SavedMetadata`: `repeated SavedObject nodes = 1`, each with
    `node_id = 2`, `node_path = 3` ("root.layer-1"), `identifier = 4` ("_tf_keras_layer"),
    `metadata = 5` (JSON) and `version = 6`.
    """
    file = _own_file(path, METADATA)
    if not os.path.isfile(file):
        raise ModelLoadError(
            f"{path} is a SavedModel without Keras metadata (written by tf.saved_model.save or "
            "model.export), so its layers cannot be rebuilt; save the model with model.save('model.h5') "
            "or model.save('model.keras') instead"
        )
    with open(file, "rb") as f:
        data = f.read()
    nodes = []
    try:
        for number, value in _fields(data):
            if number != 1:
                continue
            fields = dict(_fields(_bytes(value)))
            node_path, identifier = _string(fields.get(3, b"")), _string(fields.get(4, b""))
            nodes.append((node_path, identifier, fields.get(5, b"")))
    except _Damaged as exc:
        raise _damaged(path, METADATA, str(exc)) from None
    if not nodes:
        raise _damaged(path, METADATA, "it describes no objects")
    return nodes


def _json(raw: bytes, node_path: str, path: str) -> dict:
    try:
        value = json.loads(_string(raw))
    except (_Damaged, ValueError) as exc:
        raise _damaged(path, METADATA, f"the metadata of {node_path} is not JSON ({first_line(exc, 80)})") from None
    if not isinstance(value, dict):
        raise _damaged(path, METADATA, f"the metadata of {node_path} is not a JSON object")
    return value


def _root_metadata(nodes: list, path: str) -> dict:
    """The root object's metadata, which must describe a Functional or Sequential model."""
    found = [(identifier, raw) for node_path, identifier, raw in nodes if node_path == "root"]
    if not found:
        raise _damaged(path, METADATA, "it has no root object")
    identifier, raw = found[0]
    root = _json(raw, "root", path)
    name = root.get("class_name")
    if identifier == _SUBCLASSED:
        raise ModelLoadError(
            f"{path} holds a subclassed model ('{name}'), whose layers and calls a SavedModel describes only "
            "as TensorFlow functions, which deadrelu does not run; save it from the code that defines it "
            "with model.save('model.keras') under Keras 3"
        )
    if identifier not in _GRAPH_MODELS:
        raise ModelLoadError(
            f"{path} holds a '{name}' ({identifier}), not a Keras model; pass a directory written by "
            "model.save() of a Keras model"
        )
    return root


def _layer_names(nodes: list, graph: _ObjectGraph, path: str) -> dict[int, str]:
    """Checkpoint object -> layer name, for the root model's layers.

    tf_keras records each object once, under its first path: "root.layer_with_weights-0" for a
    layer with weights, "root.layer-3" for one without; both lead to the object in the checkpoint.
    """
    names = {}
    for node_path, _, raw in nodes:
        if not _TOP_LAYER.fullmatch(node_path):
            continue
        name = _json(raw, node_path, path).get("name")
        node = graph.find(node_path)
        if not isinstance(name, str) or not name or node is None:
            raise _damaged(path, METADATA, f"the layer {node_path} has no name or no object")
        names[node] = name
    return names


# ----------------------------------------------------------------------------------------------
# Lookup vocabularies (assets)

# Lookup layers whose vocabulary may be a file, and how a line of it becomes a token.
_LOOKUPS = {"StringLookup": str, "IntegerLookup": int}
# Where a lookup layer's object keeps the asset: its table, the table's initializer, its file.
_ASSET_PATH = ("lookup_table", "_initializer", "_filename")


def _fill_vocabularies(config: dict, nodes: list, path: str) -> list[str]:
    """Puts the vocabulary of each lookup layer into its configuration, read from its asset.

    tf.keras saves a lookup layer built from a vocabulary file with `vocabulary: None`; the file
    itself is copied into `assets/`, and only restoring the TensorFlow graph would load it. A
    vocabulary given as a list is kept; a path left in the configuration is refused by
    `deadrelu.io.safety` unless `unsafe`.

    Returns:
        One note per vocabulary read.

    Raises:
        ModelLoadError: A lookup layer's vocabulary is neither in its configuration nor in an asset
            (an adapted layer keeps it inside the graph), or its asset lies outside the directory.
    """
    notes: list[str] = []
    graph = None
    for node_path, _, raw in nodes:
        if b"Lookup" not in raw and b"TextVectorization" not in raw:
            continue  # most layers: no need to decode their metadata
        meta = _json(raw, node_path, path)
        kind, name = meta.get("class_name"), meta.get("name")
        found = _layer_settings(config, kind, name) if kind in (*_LOOKUPS, "TextVectorization") else []
        if len(found) > 1:
            raise ModelLoadError(
                f"{path} holds several {kind} layers named '{name}', so their vocabularies cannot be told apart; "
                "give the layers unique names and save the model again"
            )
        settings = found[0] if found else None  # none: a layer's inner lookup, described by its owner
        if settings is None or settings.get("vocabulary") is not None:
            continue
        graph = graph or _ObjectGraph.of_saved_model(path)
        node = graph.find(node_path)
        for step in _ASSET_PATH:
            node = None if node is None else graph.child(node, step)
        if kind not in _LOOKUPS or node is None or graph.nodes[node].asset is None:
            raise ModelLoadError(
                f"{path}: the vocabulary of layer '{name}' ({kind}) is kept inside the SavedModel's TensorFlow "
                "graph, which deadrelu does not run; save the model with tf.keras as model.save('model.h5'), "
                "or pass a SavedModel whose lookup layers were built from a vocabulary file or list"
            )
        asset = graph.asset_file(graph.nodes[node].asset)
        settings["vocabulary"] = _read_vocabulary(path, asset, _LOOKUPS[kind])
        notes.append(f"read the vocabulary of {kind} '{name}' from the SavedModel's assets/{asset}")
    return notes


def _layer_settings(config, kind: str, name) -> list[dict]:
    """The `config` of each layer of class `kind` named `name` in a model configuration."""
    found, stack = [], [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            settings = item.get("config")
            if item.get("class_name") == kind and isinstance(settings, dict) and settings.get("name") == name:
                found.append(settings)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _read_vocabulary(path: str, asset: str, token) -> list:
    """The lines of a vocabulary asset, as tokens: TensorFlow's `TextFileInitializer` reads whole lines."""
    file = _own_file(path, os.path.join("assets", asset))
    if not os.path.isfile(file):
        raise ModelLoadError(
            f"{path} lacks its asset assets/{asset} (a lookup layer's vocabulary); copy the whole SavedModel directory"
        )
    with open(file, "rb") as f:
        data = f.read()
    try:
        lines = [line.removesuffix("\r") for line in data.decode("utf-8").split("\n")]
        return [token(line) for line in (lines[:-1] if lines[-1] == "" else lines)]
    except ValueError:  # UnicodeDecodeError is one
        raise _damaged(
            path, os.path.join("assets", asset), f"it is not a vocabulary of {token.__name__} tokens"
        ) from None


# ----------------------------------------------------------------------------------------------
# The checkpoint: its object graph and its tensors


@dataclasses.dataclass
class _Node:
    """One object of an object graph."""

    children: list[tuple[str, int]]  # (local name, node id)
    variable: tuple[str, str] | None = None  # (full name, checkpoint key) of a variable
    asset: int | None = None  # for an asset of saved_model.pb: its index in the asset file list


class _ObjectGraph:
    """An object graph: the checkpoint's (`_CHECKPOINTABLE_OBJECT_GRAPH`) or `saved_model.pb`'s.

    Both protos list the objects with node 0 the root, and give each object its children as
    `repeated ObjectReference children = 1` (`node_id = 1`, `local_name = 2`, such as "layer-3",
    "cell", "kernel", "variables"). In the checkpoint's `TrackableObjectGraph`, `repeated
    SerializedTensor attributes = 2` (`name = 1`, "VARIABLE_VALUE" for a variable; `full_name = 2`,
    such as "dense/kernel"; `checkpoint_key = 3`) locate a variable's value. In `saved_model.pb`
    (`SavedModel.meta_graphs = 2` → `MetaGraphDef.object_graph_def = 7` → `nodes = 1`), a
    `SavedObject` may be an asset (`asset = 5`, whose `asset_file_def_index = 1` indexes
    `MetaGraphDef.asset_file_def = 6`, whose `filename = 2` is relative to `assets/`).
    """

    def __init__(self, nodes: list[_Node], path: str, assets: list[str] | None = None):
        self.nodes = nodes
        self.path = path
        self.assets = assets or []

    @classmethod
    def of_checkpoint(cls, path: str) -> _ObjectGraph:
        with _Checkpoint(path) as checkpoint:
            data = checkpoint.object_graph()
        try:
            return cls(_decode_objects(data, saved_model=False), path)
        except _Damaged as exc:
            raise _damaged(path, CHECKPOINT, f"its object graph is broken ({exc})") from None

    @classmethod
    def of_saved_model(cls, path: str) -> _ObjectGraph:
        file = _own_file(path, "saved_model.pb")
        if not os.path.isfile(file):
            raise ModelLoadError(
                f"{path} has no binary saved_model.pb, where a lookup layer's vocabulary file is named; "
                "save the model with tf.keras again"
            )
        with open(file, "rb") as f:
            data = f.read()
        try:
            meta = next((_bytes(v) for n, v in _fields(data) if n == 2), None)
            if meta is None:
                raise _Damaged("it holds no graph")
            assets, objects = [], b""
            for number, value in _fields(meta):
                if number == 6:
                    assets.append(_string(dict(_fields(_bytes(value))).get(2, b"")))
                elif number == 7:
                    objects = _bytes(value)
            nodes = _decode_objects(objects, saved_model=True)
        except _Damaged as exc:
            raise _damaged(path, "saved_model.pb", str(exc)) from None
        return cls(nodes, path, assets)

    def asset_file(self, index: int) -> str:
        """The file name (relative to `assets/`) of an asset."""
        if not 0 <= index < len(self.assets) or not self.assets[index]:
            raise _damaged(self.path, "saved_model.pb", "an asset names no file")
        return self.assets[index]

    def child(self, node: int, name: str) -> int | None:
        return next((target for local, target in self.nodes[node].children if local == name), None)

    def find(self, node_path: str) -> int | None:
        """The node at a metadata path such as "root.layer-3"; None when absent."""
        node: int | None = 0
        for name in node_path.split(".")[1:]:
            node = self.child(node, name)
            if node is None:
                return None
        return node

    def listed(self, node: int, name: str) -> list[int]:
        """The nodes a node lists in order: under its child `name` ("variables" → "0", "1", ...),
        or, for a `name` ending in "-", as its children `name` + number ("layer-0", "layer-1", ...)."""
        if name.endswith("-"):
            holder, prefix = node, name
        else:
            holder, prefix = self.child(node, name), ""
        if holder is None:
            return []
        items = []
        for local, target in self.nodes[holder].children:
            number = local[len(prefix) :]
            if local.startswith(prefix) and number.isdigit():
                items.append((int(number), target))
        return [target for _, target in sorted(items)]

    def legacy_variables(self, node: int, layer: str) -> list[Variable]:
        """A layer's variables in the order Keras 2 stores them in HDF5: trainable, then the rest.

        tf.keras saves each layer's `variables` and `trainable_variables` lists as children of
        the layer's object; a nested model's lists hold all its sublayers' variables.
        """
        everything = self.listed(node, "variables")
        if self.child(node, "variables") is None and any(
            self.nodes[target].variable for _, target in self.nodes[node].children
        ):
            raise _damaged(self.path, CHECKPOINT, f"layer '{layer}' has variables but no list of them")
        trainable = [n for n in self.listed(node, "trainable_variables") if n in everything]
        order = trainable + [n for n in everything if n not in trainable]
        variables = []
        for target in order:
            stored = self.nodes[target].variable
            if stored is None:
                raise ModelLoadError(
                    f"{self.path}: layer '{layer}' holds a TensorFlow object that is not a variable (a lookup "
                    "table or another resource), which deadrelu cannot read without running the SavedModel; "
                    "save the model with model.save('model.h5') instead"
                )
            variables.append(Variable(name=f"{stored[0] or layer}:0", key=stored[1]))
        return variables


def _decode_objects(data: bytes, *, saved_model: bool) -> list[_Node]:
    """Decodes the nodes of an object graph (see `_ObjectGraph`); raises _Damaged."""
    nodes = []
    for number, value in _fields(data):
        if number != 1:
            continue
        node = _Node(children=[])
        for field, item in _fields(_bytes(value)):
            if field == 1:
                reference = dict(_fields(_bytes(item)))
                node.children.append((_string(reference.get(2, b"")), _int(reference.get(1, 0))))
            elif field == 2 and not saved_model:
                attribute = dict(_fields(_bytes(item)))
                if _string(attribute.get(1, b"")) == _VARIABLE:
                    node.variable = (_string(attribute.get(2, b"")), _string(attribute.get(3, b"")))
            elif field == 5 and saved_model:
                node.asset = _int(dict(_fields(_bytes(item))).get(1, 0))
        nodes.append(node)
    if not nodes:
        raise _Damaged("it holds no objects")
    if any(not 0 <= target < len(nodes) for node in nodes for _, target in node.children):
        raise _Damaged("a reference to no object")
    return nodes


class _Checkpoint:
    """The SavedModel's checkpoint, opened with TensorFlow's tensor-bundle reader.

    `tf.train.load_checkpoint` given a directory would follow a `checkpoint` state file to any
    path, so it is given the prefix of files checked to lie inside the SavedModel directory.
    """

    def __init__(self, path: str):
        self.path = path
        prefix = os.path.join(path, CHECKPOINT)
        folder = _own_file(path, "variables")
        if not os.path.isfile(prefix + ".index") or os.path.isdir(prefix):
            raise ModelLoadError(
                f"{path} has no {CHECKPOINT}.index, so its weights are missing; copy the whole SavedModel "
                "directory, variables/ included"
            )
        shards = sorted(n for n in os.listdir(folder) if n.startswith(os.path.basename(CHECKPOINT) + "."))
        for name in shards:
            _own_file(path, os.path.join("variables", name))
        self.stored_bytes = sum(os.path.getsize(os.path.join(folder, n)) for n in shards if ".data-" in n)
        import tensorflow as tf

        try:
            self.reader = tf.train.load_checkpoint(prefix)
            self.shapes = self.reader.get_variable_to_shape_map()
            self.dtypes = self.reader.get_variable_to_dtype_map()
        except Exception as exc:  # noqa: BLE001 - TensorFlow raises several kinds for a damaged bundle
            raise _damaged(path, CHECKPOINT, f"{type(exc).__name__}: {first_line(exc, 160)}") from None

    def __enter__(self) -> _Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.reader = None

    def object_graph(self) -> bytes:
        if _OBJECT_GRAPH_KEY not in self.shapes:
            raise _damaged(self.path, CHECKPOINT, "it has no object graph (it was not written with a SavedModel)")
        return self._tensor(_OBJECT_GRAPH_KEY)

    def tensor(self, key: str, name: str):
        """A variable's value as a numpy array, its declared size checked against the stored bytes."""
        if key not in self.shapes:
            raise _damaged(self.path, CHECKPOINT, f"it has no value for the variable {name}")
        dtype = self.dtypes[key]
        declared = math.prod(self.shapes[key]) * (dtype.size if dtype.is_numpy_compatible else 1)
        if declared > self.stored_bytes:  # a shape bomb: allocating it could exhaust memory
            raise _damaged(
                self.path,
                CHECKPOINT,
                f"the variable {name} declares {declared:,} bytes but the checkpoint stores {self.stored_bytes:,}",
            )
        return self._tensor(key)

    def _tensor(self, key: str):
        try:
            return self.reader.get_tensor(key)
        except Exception as exc:  # noqa: BLE001 - a damaged shard fails its checksum inside TensorFlow
            raise _damaged(self.path, CHECKPOINT, f"{type(exc).__name__}: {first_line(exc, 160)}") from None


# ----------------------------------------------------------------------------------------------
# The Keras 2 HDF5 layout


def _fill_hdf5(f, saved: SavedKerasModel) -> None:
    """Writes a SavedModel's metadata and weights into `f` as Keras 2's `model.save("m.h5")` does."""
    import numpy as np

    f.attrs["model_config"] = json.dumps(saved.config)
    if saved.training_config is not None:
        f.attrs["training_config"] = json.dumps(saved.training_config)
    weights = f.create_group("model_weights")
    for obj in (f, weights):
        obj.attrs["keras_version"] = saved.keras_version or "2"
        obj.attrs["backend"] = saved.backend or "tensorflow"
    _set_names(weights, "layer_names", [name for name, _ in saved.layers])
    with _Checkpoint(saved.path) as checkpoint:
        for name, variables in saved.layers:
            group = weights.require_group(name)
            names = []
            for variable in variables:
                unique = _unique(variable.name, group)  # two sublayers may share a variable name
                group.create_dataset(unique, data=np.asarray(checkpoint.tensor(variable.key, variable.name)))
                names.append(unique)
            _set_names(group, "weight_names", names)


def _unique(name: str, group) -> str:
    stem, suffix, k = name.removesuffix(":0"), ":0" if name.endswith(":0") else "", 1
    while name in group:
        name, k = f"{stem}_{k}{suffix}", k + 1
    return name


def _set_names(group, attribute: str, names: list[str]) -> None:
    """Stores a list of names as Keras 2 does: one attribute, or chunks when it is too long."""
    import numpy as np

    def array(items: list[bytes]):  # fixed-length byte strings, as Keras 2 wrote them
        return np.array(items, dtype=f"S{max([1, *map(len, items)])}")

    encoded = [n.encode("utf-8") for n in names]
    if sum(len(n) + 1 for n in encoded) <= _ATTR_CHUNK_BYTES:
        group.attrs[attribute] = array(encoded)
        return
    chunk, size, k = [], 0, 0
    for name in [*encoded, None]:
        if name is None or (chunk and size + len(name) + 1 > _ATTR_CHUNK_BYTES):
            group.attrs[f"{attribute}{k}"] = array(chunk)
            chunk, size, k = [], 0, k + 1
        if name is not None:
            chunk.append(name)
            size += len(name) + 1


# ----------------------------------------------------------------------------------------------
# Protobuf wire format: what the two protos above need, and no code from the file


class _Damaged(Exception):
    """The bytes are not a valid protobuf message."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Damaged("a number runs past its end")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: an int for varints, bytes for the others."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Damaged("a field has number 0")
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, pos = data[pos : pos + width], pos + width
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        else:
            raise _Damaged(f"a field has the unknown wire type {wire}")
        if pos > len(data):
            raise _Damaged("a field runs past the end of the data")
        yield number, value


def _bytes(value) -> bytes:
    if not isinstance(value, bytes):
        raise _Damaged("a message field holds a number")
    return value


def _string(value) -> str:
    try:
        return _bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise _Damaged("a text field is not UTF-8") from None


def _int(value) -> int:
    if not isinstance(value, int):
        raise _Damaged("a number field holds bytes")
    return value

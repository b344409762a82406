"""SavedModel directories are read as data (`deadrelu.io.legacy.savedmodel`): nothing stored in them runs.

The directories are written by tf_keras, the Keras 2 that writes them in the wild. A loaded model
must give the outputs of tf_keras's own load of the same directory; a directory whose Lambda would
leave a marker file, or whose metadata or asset list names a file outside it, is refused without
`unsafe` and leaves no marker and no trace of the file's content in any output. tf_keras and
`tf.saved_model.load` (which run the directory's code and graph functions) are never used.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import deadrelu
from deadrelu.errors import ModelLoadError
from deadrelu.io import loading

tk = pytest.importorskip("tf_keras", reason="writing SavedModels needs tf_keras (pip install 'deadrelu[legacy]')")

import keras2_files  # noqa: E402 - needs tf_keras, checked above

SECRET = "TOPSECRET-7f3a9c-do-not-leak"


def error_of(path, **options) -> str:
    """The one-line ModelLoadError that loading `path` raises."""
    with pytest.raises(ModelLoadError) as info:
        deadrelu.load_model(str(path), **options)
    message = str(info.value)
    assert "\n" not in message.strip(), message
    return message


def refused_by_cli(run_cli, path) -> str:
    """`deadrelu inspect path`: exit 2, nothing on stdout, one error line; returns that line."""
    code, out, err = run_cli(["inspect", path])
    assert code == 2 and out == "", (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deadrelu: error: "), err
    return lines[0]


def outputs(model, x) -> np.ndarray:
    return np.asarray(model(x, training=False))


def copy_of(folder: Path, tmp_path: Path) -> Path:
    """A copy of a SavedModel directory that a test may damage."""
    return Path(shutil.copytree(folder, tmp_path / folder.name))


# ----------------------------------------------------------------------------------------------
# Layers: the same outputs as tf_keras's own load


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Conv2D + BatchNorm, TimeDistributed(Dense) → LSTM, Embedding, and a nested Sequential with a
    frozen Dense (its variables are not in Keras 2's HDF5 order in the SavedModel's lists), every
    weight random. The metadata's configs are module-less (Keras 2's legacy form), also inside the
    wrapper."""
    L = tk.layers
    image, sequence, tokens = L.Input((8, 8, 3)), L.Input((6, 4)), L.Input((5,), dtype="int32")
    a = L.Flatten()(L.BatchNormalization(name="bn")(L.Conv2D(4, 3, activation="relu", name="conv")(image)))
    b = L.LSTM(5, name="lstm")(L.TimeDistributed(L.Dense(3, activation="relu"), name="steps")(sequence))
    c = L.Flatten()(L.Embedding(12, 3, name="embedding")(tokens))
    frozen = L.Dense(6, activation="relu", name="frozen")
    frozen.trainable = False
    inner = tk.Sequential(
        [L.InputLayer((6 * 6 * 4 + 5 + 15,)), frozen, L.BatchNormalization(name="inner_bn"), L.Dense(4, name="d")],
        name="inner",
    )
    model = tk.Model([image, sequence, tokens], L.Dense(2, name="head")(inner(L.Concatenate()([a, b, c]))))
    model.compile(optimizer="adam", loss="mse")
    keras2_files._randomize(model)
    rng = np.random.default_rng(3)
    x = [
        rng.normal(size=(3, 8, 8, 3)).astype("float32"),
        rng.normal(size=(3, 6, 4)).astype("float32"),
        rng.integers(0, 12, size=(3, 5)).astype("int32"),
    ]
    folder = tmp_path_factory.mktemp("zoo") / "zoo_savedmodel"
    written = keras2_files._finish(model, str(folder), x, save_format="tf")
    return folder, written


def test_layers_load_with_the_outputs_of_tf_keras(zoo):
    folder, written = zoo
    loaded = loading.load(str(folder))
    assert loaded.format == "savedmodel" and loaded.compiled and loaded.keras_version == tk.__version__
    assert loaded.repairs[0].startswith("read from the SavedModel's keras_metadata.pb and checkpoint")
    reference = tk.models.load_model(str(folder), compile=False)
    expected = reference(written.x, training=False).numpy()
    np.testing.assert_allclose(expected, written.expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(outputs(loaded.model, written.x), expected, atol=1e-6, rtol=0)
    # Every weight arrived where tf_keras put it (not only the ones the outputs depend on strongly).
    for name in ("conv", "bn", "steps", "lstm", "embedding", "head"):
        ours = [np.asarray(w) for w in loaded.model.get_layer(name).weights]
        theirs = [w.numpy() for w in reference.get_layer(name).weights]
        assert len(ours) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(ours, theirs)), name
    inner = loaded.model.get_layer("inner")
    assert not inner.get_layer("frozen").trainable
    np.testing.assert_array_equal(
        np.asarray(inner.get_layer("frozen").kernel), reference.get_layer("inner").get_layer("frozen").kernel.numpy()
    )


def test_the_weights_are_laid_out_as_tf_keras_saves_them_in_h5(zoo, tmp_path):
    """The in-memory file holds what tf_keras's own `save("m.h5")` writes: the layers, each layer's
    weight names in Keras 2's order (a nested model with a frozen layer: trainable ones first), the values."""
    import h5py

    from deadrelu.io.legacy import h5_weights, savedmodel

    folder, _ = zoo
    tk.models.load_model(str(folder), compile=False).save(str(tmp_path / "reference.h5"), save_format="h5")
    with savedmodel.read(str(folder)).to_hdf5() as ours, h5py.File(tmp_path / "reference.h5", "r") as theirs:
        ours, theirs = ours["model_weights"], theirs["model_weights"]
        layers = h5_weights._attr_list(theirs, "layer_names")
        assert h5_weights._attr_list(ours, "layer_names") == layers
        for layer in layers:
            names = h5_weights._attr_list(theirs[layer], "weight_names")
            assert h5_weights._attr_list(ours[layer], "weight_names") == names, layer
            for name in names:
                np.testing.assert_array_equal(ours[layer][name][()], theirs[layer][name][()])
        assert h5_weights._attr_list(ours["inner"], "weight_names")[:2] == ["inner_bn/gamma:0", "inner_bn/beta:0"]


# ----------------------------------------------------------------------------------------------
# Stored code: a Lambda that leaves a marker file


@pytest.fixture(scope="module")
def lambda_dir(tmp_path_factory):
    """A SavedModel whose Lambda writes a marker file when it runs (tf_keras stores its bytecode)."""
    folder = tmp_path_factory.mktemp("lambda")
    marker = folder / "marker"

    def payload(t, marker=str(marker)):
        open(marker, "w").close()
        return t * 2.0

    L = tk.layers
    model = tk.Sequential([L.InputLayer((3,)), L.Lambda(payload, name="payload"), L.Dense(2, name="out")])
    keras2_files._randomize(model)
    written = keras2_files._finish(
        model, str(folder / "lambda_savedmodel"), keras2_files._inputs((3,)), save_format="tf"
    )
    marker.unlink()  # building the model ran the Lambda once
    return Path(written.path), marker, written


def test_a_lambda_does_not_run_without_unsafe(lambda_dir, run_cli):
    folder, marker, _ = lambda_dir
    message = error_of(folder)
    assert "unsafe" in message and "lambda" in message.lower()
    assert "unsafe" in refused_by_cli(run_cli, folder)
    assert not marker.exists()


def test_the_lambda_is_a_real_payload_that_runs_with_unsafe(lambda_dir):
    folder, marker, written = lambda_dir
    try:
        model = deadrelu.load_model(str(folder), unsafe=True)
        np.testing.assert_allclose(outputs(model, written.x), written.expected, atol=1e-6, rtol=0)
        assert marker.exists()  # the user asked for it
        marker.unlink()
        tk.models.load_model(str(folder), compile=False)  # what deadrelu used to call: it runs the payload
        assert marker.exists()
    finally:
        marker.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Files named by the directory: lookup vocabularies


@pytest.fixture(scope="module")
def vocabulary_dir(tmp_path_factory):
    """A SavedModel with a StringLookup built from a vocabulary file (kept as an asset), and a secret
    file beside the directory."""
    folder = tmp_path_factory.mktemp("vocabulary")
    words = folder / "words.txt"
    words.write_text("red\ngreen\nblue\n")
    (folder / "secret.txt").write_text(f"{SECRET}\n")
    L = tk.layers
    tokens = L.Input((3,), dtype="string")
    ids = L.StringLookup(vocabulary=str(words), name="lookup")(tokens)
    model = tk.Model(tokens, L.Dense(2, name="out")(L.Flatten()(L.Embedding(5, 2, name="embedding")(ids))))
    keras2_files._randomize(model)
    x = np.array([["red", "blue", "cyan"], ["green", "green", "red"]])
    written = keras2_files._finish(model, str(folder / "model"), x, save_format="tf")
    words.unlink()  # the vocabulary now lives in the directory's assets/ only
    return Path(written.path), written


def test_a_vocabulary_asset_is_read_from_the_directory(vocabulary_dir):
    folder, written = vocabulary_dir
    loaded = loading.load(str(folder))
    assert "read the vocabulary of StringLookup 'lookup' from the SavedModel's assets/words.txt" in loaded.repairs
    np.testing.assert_allclose(outputs(loaded.model, written.x), written.expected, atol=1e-6, rtol=0)
    assert np.ptp(written.expected[:, 0]) > 0  # the tokens map to different embeddings


def test_an_adapted_vocabulary_kept_in_the_graph_is_refused(tmp_path):
    L = tk.layers
    lookup = L.StringLookup(name="adapted")
    lookup.adapt(np.array([["red", "green"], ["blue", "red"]]))
    tokens = L.Input((2,), dtype="string")
    tk.Model(tokens, L.Embedding(5, 2)(lookup(tokens))).save(str(tmp_path / "adapted"), save_format="tf")
    for options in ({}, {"unsafe": True}):
        message = error_of(tmp_path / "adapted", **options)
        assert "the vocabulary of layer 'adapted' (StringLookup) is kept inside the SavedModel's" in message


def _edit_metadata(folder: Path, edit) -> None:
    """Rewrites the JSON of every object in keras_metadata.pb (tf_keras's proto, in the test only)."""
    from tf_keras.protobuf import saved_metadata_pb2

    metadata = saved_metadata_pb2.SavedMetadata()
    metadata.ParseFromString((folder / "keras_metadata.pb").read_bytes())
    for node in metadata.nodes:
        node.metadata = json.dumps(edit(json.loads(node.metadata)))
    (folder / "keras_metadata.pb").write_bytes(metadata.SerializeToString())


def _point_lookup_at(path: str):
    def edit(value):
        if isinstance(value, dict):
            if value.get("class_name") == "StringLookup" and isinstance(value.get("config"), dict):
                value["config"]["vocabulary"] = path
            return {k: edit(v) for k, v in value.items()}
        return [edit(v) for v in value] if isinstance(value, list) else value

    return edit


def test_a_vocabulary_path_in_the_metadata_is_not_read(vocabulary_dir, tmp_path, run_cli):
    folder, _ = vocabulary_dir
    secret = folder.parent / "secret.txt"
    edited = copy_of(folder, tmp_path)
    _edit_metadata(edited, _point_lookup_at(str(secret)))
    message = error_of(edited)
    assert "unsafe" in message and "vocabulary" in message and SECRET not in message
    line = refused_by_cli(run_cli, edited)
    assert "unsafe" in line and SECRET not in line


def test_an_asset_outside_the_directory_is_refused(vocabulary_dir, tmp_path, run_cli):
    from tensorflow.core.protobuf import saved_model_pb2

    folder, _ = vocabulary_dir
    edited = copy_of(folder, tmp_path)
    shutil.copy(folder.parent / "secret.txt", tmp_path / "secret.txt")
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((edited / "saved_model.pb").read_bytes())
    saved.meta_graphs[0].asset_file_def[0].filename = "../../secret.txt"  # assets/../../ = beside the directory
    (edited / "saved_model.pb").write_bytes(saved.SerializeToString())
    for refusal in (error_of(edited, unsafe=True), refused_by_cli(run_cli, edited)):
        assert "outside the SavedModel directory" in refusal and SECRET not in refusal


# ----------------------------------------------------------------------------------------------
# Links out of the directory, damaged files, subclassed models


@pytest.mark.parametrize(
    "linked", ["variables/variables.data-00000-of-00001", "variables/variables.index", "variables", "saved_model.pb"]
)
def test_a_file_linked_outside_the_directory_is_refused(linked, zoo, tmp_path, run_cli):
    folder, _ = zoo
    edited = copy_of(folder, tmp_path)
    outside = tmp_path / "elsewhere"
    shutil.move(edited / linked, outside)
    (edited / linked).symlink_to(outside)
    message = error_of(edited, unsafe=True)
    assert f"{edited / linked} resolves to {outside}, outside the SavedModel directory" in message
    assert "outside the SavedModel directory" in refused_by_cli(run_cli, edited)


def test_metadata_linked_to_a_secret_is_not_read(vocabulary_dir, tmp_path):
    folder, _ = vocabulary_dir
    edited = copy_of(folder, tmp_path)
    (edited / "keras_metadata.pb").unlink()
    (edited / "keras_metadata.pb").symlink_to(folder.parent / "secret.txt")
    message = error_of(edited)
    assert "keras_metadata.pb resolves to" in message and SECRET not in message


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _varint(data, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte, pos = data[pos], pos + 1
        value, shift = value | (byte & 0x7F) << shift, shift + 7
        if byte < 0x80:
            return value, pos


def _edit_checkpoint_index(path: Path, old: bytes, new: bytes) -> None:
    """Replaces bytes (same length) in the entries of a tensor bundle's index, an uncompressed LevelDB
    table, and writes the changed blocks' checksums again, as a crafted file would have them."""
    data = bytearray(path.read_bytes())
    _, pos = _varint(data, len(data) - 48)  # the footer: the metaindex block's handle, the index block's
    _, pos = _varint(data, pos)
    index_offset, pos = _varint(data, pos)
    index_size, _ = _varint(data, pos)
    block = data[index_offset : index_offset + index_size]
    pos, end, edited = 0, len(block) - 4 - 4 * struct.unpack_from("<I", block, len(block) - 4)[0], 0
    while pos < end:  # each entry: shared key bytes, new key bytes, value size, key, value (a block handle)
        _, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        size, pos = _varint(block, pos)
        offset, at = _varint(block, pos + unshared)
        length, _ = _varint(block, at)
        pos += unshared + size
        contents = bytes(data[offset : offset + length])
        if old in contents:
            contents, edited = contents.replace(old, new), edited + contents.count(old)
            crc = _crc32c(contents + data[offset + length : offset + length + 1])  # + the block type
            data[offset : offset + length] = contents
            struct.pack_into("<I", data, offset + length + 1, (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)
    assert edited == 1, edited
    path.write_bytes(bytes(data))


def _dims(*sizes: int) -> bytes:
    """A TensorShapeProto's dims as stored: `dim { size: n }` for each n < 128."""
    return b"".join(bytes([0x12, 2, 8, n]) for n in sizes)


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("truncated metadata", r"keras_metadata.pb is damaged .*runs past"),
        ("garbage index", r"variables/variables is damaged"),
        ("truncated shard", r"variables/variables is damaged"),
        ("shape bomb", r"the variable conv/kernel:0 declares 1,040,578,564 bytes but the checkpoint stores"),
        ("no metadata", r"without Keras metadata"),
        ("no variables", r"has no variables.variables.index"),
    ],
)
def test_a_damaged_directory_is_one_line_saying_so(damage, expected, zoo, tmp_path, run_cli):
    folder, _ = zoo
    edited = copy_of(folder, tmp_path)
    metadata, index = edited / "keras_metadata.pb", edited / "variables" / "variables.index"
    if damage == "truncated metadata":
        metadata.write_bytes(metadata.read_bytes()[: metadata.stat().st_size // 2])
    elif damage == "garbage index":
        index.write_bytes(os.urandom(64))
    elif damage == "truncated shard":
        with open(edited / "variables" / "variables.data-00000-of-00001", "r+b") as f:
            f.truncate(8)
    elif damage == "shape bomb":  # the conv kernel, 3×3×3×4, declared 127×127×127×127 (a GB)
        _edit_checkpoint_index(index, _dims(3, 3, 3, 4), _dims(127, 127, 127, 127))
    elif damage == "no metadata":
        metadata.unlink()
    else:
        shutil.rmtree(edited / "variables")
    assert re.search(expected, error_of(edited)), error_of(edited)
    assert re.search(expected, refused_by_cli(run_cli, edited))


def test_a_subclassed_model_is_refused_even_with_unsafe(tmp_path):
    class Doubler(tk.Model):
        def __init__(self):
            super().__init__()
            self.dense = tk.layers.Dense(2)

        def call(self, x):
            return self.dense(x) * 2.0

    model = Doubler()
    model(np.zeros((1, 3), "float32"))
    model.save(str(tmp_path / "subclassed"), save_format="tf")
    for options in ({}, {"unsafe": True}):
        message = error_of(tmp_path / "subclassed", **options)
        assert "subclassed model ('Doubler')" in message and "model.save('model.keras')" in message


# ----------------------------------------------------------------------------------------------
# Neither tf_keras nor tf.saved_model.load


NO_TF_KERAS = """
import sys
import tensorflow as tf
from tensorflow.python.saved_model import load as saved_model_load

def refuse(*args, **kwargs):
    raise AssertionError("the SavedModel's graph was restored")

tf.saved_model.load = saved_model_load.load = saved_model_load.load_partial = refuse
from deadrelu.cli import main

for path in sys.argv[1:]:
    assert main(["inspect", path]) == 0  # loads the model with deadrelu.load_model
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "tf_keras")
assert not loaded, loaded
print("read without tf_keras")
"""


def test_a_safe_load_neither_imports_tf_keras_nor_restores_the_graph(zoo, vocabulary_dir):
    paths = [str(zoo[0]), str(vocabulary_dir[0])]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", NO_TF_KERAS, *paths], capture_output=True, text=True, timeout=180, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("read without tf_keras"), done.stdout[-2000:]


def test_long_name_lists_are_stored_in_chunks_as_keras_2_does():
    """An HDF5 attribute holds at most 64 KiB: thousands of weight names go in `weight_names0`, `1`, ..."""
    import h5py

    from deadrelu.io.legacy import h5_weights, savedmodel

    names = [f"block_{k}/some_long_sublayer_name/kernel:0" for k in range(3000)]  # ~130 kB
    with h5py.File(io.BytesIO(), "w") as f:
        savedmodel._set_names(f, "weight_names", names)
        assert "weight_names" not in f.attrs and "weight_names2" in f.attrs
        assert h5_weights._attr_list(f, "weight_names") == names
        savedmodel._set_names(f, "layer_names", ["input_1", "dense"])
        assert h5_weights._attr_list(f, "layer_names") == ["input_1", "dense"]

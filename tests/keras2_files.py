"""Writers of small Keras 2 style model files, made with tf_keras, for the loading tests.

tf_keras writes genuine Keras 2 files (legacy HDF5 with `model_config`/`model_weights`, SavedModel
directories). Where tf_keras itself no longer writes an old variant (a Sequential without an
InputLayer, Keras 2.2 list-style configs, Python 3.6 lambda bytecode), the writer edits a copy of
the stored config with h5py, exactly as such files look in the wild.

Every writer returns a `Written`: the path, sample inputs, and the outputs of the original tf_keras
model on them, so a test can check that every weight arrived.
"""

from __future__ import annotations

import dataclasses
import json
import os

import h5py
import numpy as np

# The Keras 2.2.2 / Python 3.6 bytecode of `lambda p: p / 255.0 - 0.5`, as stored in a public
# GTSRB model (Wardat-ISU/DeepLocalize); Python 3.11 cannot unmarshal it.
PY36_LAMBDA = (
    "4wEAAAAAAAAAAQAAAAIAAABDAAAAcwwAAAB8AGQBGwBkAhgAUwApA07nAAAAAADgb0DnAAAAAAAA\n"
    "4D+pACkB2gFwcgMAAAByAwAAAPoyL2hvbWUvbWFyY3VzL2NvZGUvVHJhZmZpYy1TaWduLUNsYXNz\n"
    "aWZpZXIvdHJhaW4ucHnaCDxsYW1iZGE+OAAAAHMAAAAA\n"
)

# A Keras 3 implementation of the custom layer `ScaleShift` that `write_custom_layer` uses.
CUSTOM_LAYER_SOURCE = '''
import keras


class ScaleShift(keras.layers.Layer):
    """y = x * scale + shift, one scale and shift per feature."""

    def __init__(self, init=1.0, **kwargs):
        super().__init__(**kwargs)
        self.init = init

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")
        self.shift = self.add_weight(name="shift", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x):
        return x * self.scale + self.shift

    def get_config(self):
        return {**super().get_config(), "init": self.init}
'''


@dataclasses.dataclass
class Written:
    """A model file written by tf_keras, with inputs and the original model's outputs on them."""

    path: str
    x: np.ndarray
    expected: np.ndarray


def _tk():
    import tf_keras

    return tf_keras


def _randomize(model, seed: int = 0) -> None:
    """Gives every weight a random value (BatchNorm variances positive) so mapping errors show."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        value = rng.normal(0.0, 0.5, size=tuple(w.shape)).astype("float32")
        if "moving_variance" in w.name:
            value = np.abs(value) + 0.5
        w.assign(value)


def _finish(model, path: str, x: np.ndarray, **save) -> Written:
    expected = model.predict(x, verbose=0)
    model.save(path, **save)
    return Written(path, x, np.asarray(expected))


def _edit_config(path: str, edit) -> None:
    """Rewrites the `model_config` attribute of an HDF5 file (only used on files we wrote)."""
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        f.attrs["model_config"] = json.dumps(edit(config)).encode("utf-8")


def _inputs(shape, n: int = 4, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


def write_nested(folder: str) -> Written:
    """A Functional model holding a nested Sequential (with BatchNorm) and a nested Functional."""
    tk = _tk()
    L = tk.layers
    inner_seq = tk.Sequential(
        [L.Dense(8, activation="relu", input_shape=(6,)), L.BatchNormalization(), L.Dense(5, activation="relu")],
        name="inner_seq",
    )
    block_in = L.Input((5,))
    block = tk.Model(block_in, L.Dense(4, activation="relu", name="block_dense")(block_in), name="block")
    inp = L.Input((7,), name="x")
    h = L.Dense(6, activation="relu", name="pre")(inp)
    out = L.Dense(3, name="head")(block(inner_seq(h)))
    model = tk.Model(inp, out, name="outer")
    model.compile(optimizer="adam", loss="mse")
    _randomize(model)
    return _finish(model, os.path.join(folder, "nested.h5"), _inputs((7,)))


def write_functional_in_sequential(folder: str) -> Written:
    """The transfer-learning pattern: Sequential([functional base, Dense])."""
    tk = _tk()
    L = tk.layers
    base_in = L.Input((6,))
    base = tk.Model(base_in, L.Dense(5, activation="relu")(base_in), name="base")
    model = tk.Sequential([base, L.Dense(2)], name="transfer")
    _randomize(model)
    return _finish(model, os.path.join(folder, "functional_in_sequential.h5"), _inputs((6,)))


def write_depthwise(folder: str) -> Written:
    """DepthwiseConv2D, SeparableConv2D and Conv2DTranspose (tf_keras writes `groups: 1`)."""
    tk = _tk()
    L = tk.layers
    model = tk.Sequential(
        [
            L.InputLayer((8, 8, 3)),
            L.DepthwiseConv2D(3, activation="relu"),
            L.BatchNormalization(),
            L.SeparableConv2D(4, 3, activation="relu"),
            L.Conv2DTranspose(2, 3, activation="relu"),
        ]
    )
    _randomize(model)
    written = _finish(model, os.path.join(folder, "depthwise.h5"), _inputs((8, 8, 3)))
    _edit_config(written.path, _ensure_groups)
    return written


def _ensure_groups(config: dict) -> dict:
    """Adds `groups: 1` where a tf_keras version did not write it (older TF 2.x did)."""
    for layer in config["config"]["layers"]:
        if layer["class_name"] in ("DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose"):
            layer["config"].setdefault("groups", 1)
    return config


def write_slash_names(folder: str) -> Written:
    """Layer names containing '/', at the top level and inside a nested model (like YAMNet)."""
    tk = _tk()
    L = tk.layers
    sub_in = L.Input((5,), name="sub_in")
    s = L.Dense(4, name="layer1/conv", activation="relu")(sub_in)
    s = L.BatchNormalization(name="layer1/conv/bn")(s)
    sub = tk.Model(sub_in, s, name="features")
    inp = L.Input((4,), name="in")
    x = L.Dense(5, name="block1/dense", activation="relu")(inp)
    x = L.BatchNormalization(name="block1/dense/bn")(x)
    x = L.Dense(2, name="block2/out")(sub(x))
    model = tk.Model(inp, x)
    _randomize(model)
    return _finish(model, os.path.join(folder, "slash.h5"), _inputs((4,)))


def write_sequential_without_input(folder: str, *, keep_shape: bool = True) -> Written:
    """A Keras 2.2 style Sequential: a bare list of layers, no InputLayer.

    With `keep_shape`, the first layer carries `batch_input_shape` (as Keras 2.2 wrote it);
    without, the file has no input shape at all.
    """
    tk = _tk()
    L = tk.layers
    model = tk.Sequential([L.Dense(6, activation="relu", input_shape=(3,)), L.Dense(2)])
    _randomize(model)
    name = "seq_no_input.h5" if keep_shape else "seq_no_shape.h5"
    written = _finish(model, os.path.join(folder, name), _inputs((3,)))

    def strip_input(config):
        layers = [layer for layer in config["config"]["layers"] if layer["class_name"] != "InputLayer"]
        if keep_shape:
            layers[0]["config"]["batch_input_shape"] = [None, 3]
        else:
            layers[0]["config"].pop("batch_input_shape", None)
        config["config"] = layers
        return config

    _edit_config(written.path, strip_input)
    return written


def write_hdf5_named_keras(folder: str) -> Written:
    """An HDF5 model whose name ends in `.keras`."""
    tk = _tk()
    L = tk.layers
    model = tk.Sequential([L.InputLayer((5,)), L.Dense(4, activation="relu"), L.Dense(1)])
    _randomize(model)
    return _finish(model, os.path.join(folder, "really_hdf5.keras"), _inputs((5,)), save_format="h5")


def write_savedmodel(folder: str) -> Written:
    """A TensorFlow SavedModel directory written by tf.keras, with a Conv2D and BatchNorm."""
    tk = _tk()
    L = tk.layers
    inp = L.Input((6, 6, 2))
    x = L.Conv2D(3, 3, activation="relu", name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Flatten()(x)
    model = tk.Model(inp, L.Dense(2, name="out")(x))
    model.compile(optimizer="adam", loss="mse")
    _randomize(model)
    return _finish(model, os.path.join(folder, "saved_model_dir"), _inputs((6, 6, 2)), save_format="tf")


def write_tf_keras_archive(folder: str) -> Written:
    """A `.keras` archive written by tf_keras (tf.keras 2.13+ style config, nested models, BatchNorm)."""
    tk = _tk()
    L = tk.layers
    inner_seq = tk.Sequential(
        [L.Dense(8, activation="relu", input_shape=(6,)), L.BatchNormalization(), L.Dense(5, activation="relu")],
        name="inner_seq",
    )
    block_in = L.Input((5,))
    block = tk.Model(block_in, L.Dense(4, activation="relu")(block_in), name="block")
    inp = L.Input((7,))
    out = L.Dense(3)(block(inner_seq(L.Dense(6, activation="relu")(inp))))
    model = tk.Model(inp, out)
    model.compile(optimizer="adam", loss="mse")
    _randomize(model)
    return _finish(model, os.path.join(folder, "tf_keras_archive.keras"), _inputs((7,)))


def write_weights_only(folder: str) -> tuple[Written, str]:
    """A weights-only HDF5 file (`save_weights`) and the model's JSON architecture beside it."""
    tk = _tk()
    L = tk.layers
    model = tk.Sequential([L.InputLayer((4,)), L.Dense(5, activation="relu"), L.BatchNormalization(), L.Dense(2)])
    _randomize(model)
    path = os.path.join(folder, "weights_only.h5")
    written = Written(path, _inputs((4,)), np.asarray(model.predict(_inputs((4,)), verbose=0)))
    model.save_weights(path)
    architecture = os.path.join(folder, "weights_only.json")
    with open(architecture, "w") as f:
        f.write(model.to_json())
    return written, architecture


def write_custom_layer(folder: str) -> tuple[Written, str]:
    """A model with the custom layer `ScaleShift`, and a .py file with its Keras 3 version."""
    tk = _tk()

    class ScaleShift(tk.layers.Layer):
        def __init__(self, init=1.0, **kwargs):
            super().__init__(**kwargs)
            self.init = init

        def build(self, input_shape):
            self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")
            self.shift = self.add_weight(name="shift", shape=(input_shape[-1],), initializer="zeros")

        def call(self, x):
            return x * self.scale + self.shift

        def get_config(self):
            return {**super().get_config(), "init": self.init}

    L = tk.layers
    inp = L.Input((4,))
    x = L.Dense(3, activation="relu")(inp)
    model = tk.Model(inp, ScaleShift(name="scale_shift")(x))
    _randomize(model)
    written = _finish(model, os.path.join(folder, "custom.h5"), _inputs((4,)))
    module = os.path.join(folder, "custom_layers.py")
    with open(module, "w") as f:
        f.write(CUSTOM_LAYER_SOURCE)
    return written, module


def write_lambda(folder: str) -> Written:
    """A Lambda holding a Python lambda, marshalled by this Python."""
    tk = _tk()
    L = tk.layers
    model = tk.Sequential([L.InputLayer((3,)), L.Lambda(lambda t: t * 2.0 - 1.0), L.Dense(2, activation="relu")])
    _randomize(model)
    return _finish(model, os.path.join(folder, "lambda.h5"), _inputs((3,)))


def write_tf_ops(folder: str) -> Written:
    """TensorFlow ops called on symbolic tensors, which tf.keras stores as TFOpLambda layers
    (and indexing as SlicingOpLambda); `tf.nn.relu`/`relu6` are ReLU sites. Unit 0 of the first
    `tf.nn.relu` is planted dead (bias -1e3)."""
    import tensorflow as tf

    tk = _tk()
    # TFOpLambda layers are named by tf.keras's global counter ("tf.nn.relu", "tf.nn.relu_1"):
    # reset it, so the names do not depend on what the process built before.
    tk.backend.clear_session()
    L = tk.layers
    inp = L.Input((6, 4), name="x")
    a = L.Dense(8, name="a")(inp)
    b = L.Dense(8, name="b")(inp)
    h = tf.nn.relu(a + b)  # __operators__.add with a tensor argument, then a site
    h = tf.nn.relu6(h * 3.0)  # math.multiply by a constant, then a capped site
    h = tf.concat([h, tf.nn.relu(b)], axis=-1)
    h = tf.reduce_mean(h[:, 1:5], axis=1)  # indexing, then an op with keyword arguments
    model = tk.Model(inp, L.Dense(3, name="head")(h), name="ops")
    _randomize(model)
    bias = model.get_layer("a").bias.numpy()
    bias[0] = -1e3
    model.get_layer("a").bias.assign(bias)
    return _finish(model, os.path.join(folder, "tf_ops.h5"), _inputs((6, 4), n=16))


def write_py36_lambda(folder: str) -> Written:
    """A Lambda whose code is Python 3.6 bytecode (`p / 255 - 0.5`), as Keras 2.2 files hold it."""
    tk = _tk()
    L = tk.layers
    model = tk.Sequential([L.InputLayer((3,)), L.Lambda(lambda p: p / 255.0 - 0.5), L.Dense(2)])
    _randomize(model)
    written = _finish(model, os.path.join(folder, "lambda_py36.h5"), _inputs((3,)) * 255.0)

    def use_py36_code(config):
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Lambda":
                layer["config"]["function"] = [PY36_LAMBDA, None, None]
        return config

    _edit_config(written.path, use_py36_code)
    return written


def write_layer_zoo(folder: str) -> dict[str, Written]:
    """Small models with the layers whose Keras 2 configs or weights need care, as .h5 and .keras.

    LSTM/GRU (`time_major`, `implementation`), Bidirectional and TimeDistributed (weights held by
    sub-objects), ThresholdedReLU (gone from Keras 3), MultiHeadAttention (a tensor in the call's
    kwargs, shape hints in its config) and a nested model shared by two inputs.
    """
    tk = _tk()
    L = tk.layers
    rng = np.random.default_rng(5)
    sequence = rng.normal(size=(3, 6, 4)).astype("float32")
    models = {}

    i = L.Input((6, 4))
    h = L.LSTM(4, return_sequences=True, implementation=1)(L.Conv1D(5, 3, activation="relu")(i))
    models["rnn"] = (tk.Model(i, L.GRU(3, reset_after=False)(h)), sequence)

    i = L.Input((6, 4))
    h = L.TimeDistributed(L.Dense(2, activation="relu"))(L.Bidirectional(L.LSTM(3, return_sequences=True))(i))
    models["wrappers"] = (tk.Model(i, L.LayerNormalization()(h)), sequence)

    i = L.Input((5,), dtype="int32")
    h = L.PReLU()(L.Flatten()(L.Embedding(10, 4)(i)))
    h = L.ThresholdedReLU(0.1)(L.ReLU(max_value=6.0)(L.LeakyReLU(0.2)(L.Dense(3)(h))))
    models["activations"] = (tk.Model(i, h), rng.integers(0, 10, size=(3, 5)).astype("int32"))

    i = L.Input((6, 4))
    models["attention"] = (tk.Model(i, L.MultiHeadAttention(2, 3)(i, i)), sequence)

    shared_in = L.Input((4,))
    shared = tk.Model(shared_in, L.Dense(3, activation="relu")(shared_in), name="shared")
    a, b = L.Input((4,)), L.Input((4,))
    pair = [rng.normal(size=(3, 4)).astype("float32") for _ in range(2)]
    models["shared"] = (tk.Model([a, b], L.Concatenate()([shared(a), shared(b)])), pair)

    written = {}
    for name, (model, x) in models.items():
        _randomize(model)
        for suffix in ("h5", "keras"):
            save = {"save_format": "h5"} if suffix == "h5" else {}
            written[f"{name}.{suffix}"] = _finish(model, os.path.join(folder, f"zoo_{name}.{suffix}"), x, **save)
    return written

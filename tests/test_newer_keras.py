"""Files saved by a newer Keras 3 than the installed one (`deadrelu.io.legacy.newer_keras`).

A small model (a TimeDistributed Dense with a regularizer and a constraint, a nested Sequential, a
compiled Adam) is saved by the installed Keras, then forged to look saved by "Keras 3.99.0": its
metadata says so and its config gains settings no Keras has (on layers, on the layer a wrapper
holds, on the layers of the nested model, on initializers, regularizers, constraints, the optimizer
and the compile config). At their "off" value they are dropped with a note and the model gives the
original outputs; with a real value the file is refused in one line. Keys the installed Keras knows
are never dropped: a zoo of layers, optimizers, losses and initializers saved by this Keras comes
through unchanged.
"""

from __future__ import annotations

import json
import shutil
import zipfile

import h5py
import numpy as np
import pytest

from deadrelu.errors import ModelLoadError
from deadrelu.io import loading
from deadrelu.io.legacy import newer_keras

FUTURE = "3.99.0"
X = np.random.default_rng(5).normal(size=(8, 4, 6)).astype("float32")


def _model():
    import keras

    L = keras.layers
    keras.utils.set_random_seed(3)
    # Every layer named: an unnamed one would shift the automatic names other tests expect.
    inner_input = keras.Input((16,), name="inner_input")
    inner = keras.Sequential([inner_input, L.Dense(5, activation="relu", name="inner_dense")], name="inner")
    inputs = keras.Input((4, 6), name="x")
    dense = L.Dense(
        4,
        activation="relu",
        kernel_regularizer=keras.regularizers.L2(1e-3),
        kernel_constraint=keras.constraints.MaxNorm(3.0),
        name="td_dense",
    )
    h = L.TimeDistributed(dense, name="td")(inputs)
    h = inner(L.Flatten(name="flat")(h))
    model = keras.Model(inputs, L.Dense(3, name="head")(h), name="outer")
    model.compile(optimizer=keras.optimizers.Adam(1e-3, name="adam_newer"), loss="mse")
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(path of the .keras file, path of the .h5 file, the model's outputs on X)."""
    model = _model()
    folder = tmp_path_factory.mktemp("newer")
    model.save(folder / "model.keras")
    model.save(folder / "model.h5")
    return folder / "model.keras", folder / "model.h5", np.asarray(model(X))


def _objects(node):
    """Every serialized object (`{"class_name": ..., "config": {...}}`) in a config, depth first."""
    if isinstance(node, list):
        for item in node:
            yield from _objects(item)
    elif isinstance(node, dict):
        if isinstance(node.get("class_name"), str) and isinstance(node.get("config"), dict):
            yield node
        for value in node.values():
            yield from _objects(value)


def _future_defaults(config: dict) -> None:
    """Adds settings no Keras has, each at an "off" value (None, False, empty)."""
    for obj in _objects(config):
        module, cfg = obj.get("module", ""), obj["config"]
        if module == "keras.layers":
            cfg["future_hint"] = None
        if obj["class_name"] == "Dense":
            cfg["future_gate"] = False
        if module == "keras.initializers":
            cfg["future_axes"] = None
        if module == "keras.regularizers":
            cfg["future_mode"] = ""
        if module == "keras.constraints":
            cfg["future_axes"] = []
        if module == "keras.optimizers":
            cfg["future_schedule"] = None
    config["compile_config"]["future_compile"] = False


def _forge(src, dst, edit=_future_defaults, version: str = FUTURE):
    """Copies a .keras archive as if saved by Keras `version`, its config changed by `edit`."""
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w") as out:
        for info in archive.infolist():
            data = archive.read(info)
            if info.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            elif info.filename == "metadata.json":
                data = json.dumps({**json.loads(data), "keras_version": version}).encode()
            out.writestr(info, data)
    return dst


def _layer(config: dict, name: str) -> dict:
    return next(obj for obj in _objects(config) if obj["config"].get("name") == name)


def _error(path) -> str:
    with pytest.raises(ModelLoadError) as info:
        loading.load(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_settings_at_their_default_are_dropped_with_a_note(saved, tmp_path):
    src, _, expected = saved
    path = _forge(src, tmp_path / "future.keras")
    before = loading.file_sha256(path)
    loaded = loading.load(path)
    assert loading.file_sha256(path) == before and loaded.keras_version == FUTURE
    np.testing.assert_allclose(np.asarray(loaded.model(X)), expected, atol=1e-6, rtol=0)
    assert loaded.compiled
    notes = " | ".join(loaded.repairs)
    # Each dropped setting is named with its value and the layers it was dropped from: the layer a
    # wrapper holds (td_dense) and the layer of the nested model (inner_dense) included.
    gate = next(n for n in loaded.repairs if "future_gate=false" in n)
    assert "3 Dense layers (td_dense, inner_dense, head)" in gate and FUTURE in gate
    assert "future_axes=null from the kernel_initializer (GlorotUniform) of 3 layers" in notes
    assert 'future_mode="" from the kernel_regularizer (L2) of 1 layer (td_dense)' in notes
    assert "future_axes=[] from the kernel_constraint (MaxNorm) of 1 layer (td_dense)" in notes
    assert "future_hint=null" in notes and "TimeDistributed layer" in notes and "Flatten layer" in notes
    assert "future_schedule=null from the optimizer (Adam)" in notes
    assert "future_compile=false from the training configuration" in notes


def test_legacy_h5_from_a_newer_keras(saved, tmp_path):
    _, src, expected = saved
    path = tmp_path / "future.h5"
    shutil.copy(src, path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for obj in _objects(config):
            if obj["class_name"] == "Dense":
                obj["config"]["future_gate"] = False
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = FUTURE
    loaded = loading.load(path)
    np.testing.assert_allclose(np.asarray(loaded.model(X)), expected, atol=1e-6, rtol=0)
    assert any("future_gate=false from 3 Dense layers" in note for note in loaded.repairs)


def test_a_real_value_is_refused_in_one_line(saved, tmp_path, run_cli):
    import keras

    def enable(config):
        _layer(config, "head")["config"]["future_gate"] = True

    path = _forge(saved[0], tmp_path / "gate.keras", enable)
    np.savez(tmp_path / "x.npz", x=X)
    code, out, err = run_cli(["scan", path, "--data", tmp_path / "x.npz"])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "layer 'head' (Dense) sets future_gate=true" in err
    assert f"Keras {keras.__version__} does not have" in err and f"saved by Keras {FUTURE}" in err
    assert f"upgrade Keras to read it: pip install -U 'keras>={FUTURE}'" in err


def test_a_real_value_on_an_initializer_names_its_layer(saved, tmp_path):
    def axes(config):
        _layer(config, "inner_dense")["config"]["kernel_initializer"]["config"]["future_axes"] = [0]

    message = _error(_forge(saved[0], tmp_path / "axes.keras", axes))
    assert "the kernel_initializer (GlorotUniform) of layer 'inner_dense' sets future_axes=[0]" in message


def test_a_layer_class_this_keras_lacks_is_refused(saved, tmp_path):
    def rename(config):
        _layer(config, "flat")["class_name"] = "FutureFlatten"

    message = _error(_forge(saved[0], tmp_path / "class.keras", rename))
    assert "layer 'flat' is a FutureFlatten (keras.layers), which Keras" in message and "upgrade Keras" in message


def test_a_real_training_setting_leaves_the_model_uncompiled(saved, tmp_path):
    src, _, expected = saved

    def optimizer(config):
        config["compile_config"]["optimizer"]["config"]["future_momentum"] = 0.5

    loaded = loading.load(_forge(src, tmp_path / "optimizer.keras", optimizer))
    np.testing.assert_allclose(np.asarray(loaded.model(X)), expected, atol=1e-6, rtol=0)
    assert not loaded.compiled
    assert any(
        note.startswith("not compiled: the optimizer (Adam) of the training configuration sets future_momentum=0.5")
        for note in loaded.repairs
    )


def test_a_file_from_this_keras_or_older_is_not_touched(saved, tmp_path):
    import keras

    for version in (keras.__version__, "3.0.0"):
        path = _forge(saved[0], tmp_path / f"{version}.keras", version=version)
        message = _error(path)  # left to Keras, which refuses the settings it does not know
        assert "future_" in message and "does not have" not in message
    assert newer_keras.is_newer("3.15.1", "3.3.3") and newer_keras.is_newer("3.16.0.dev2026", "3.15.1")
    assert not newer_keras.is_newer("2.15.0", "3.3.3") and not newer_keras.is_newer(None, "3.3.3")


def _zoo() -> dict:
    """A config holding many Keras classes as this Keras serializes them."""
    import keras

    L, ser = keras.layers, keras.saving.serialize_keras_object
    # Every object named: an unnamed layer would shift the automatic names other tests expect.
    specs = [
        (L.InputLayer, (), {"shape": (4,)}),
        (L.Dense, (3,), {"kernel_regularizer": "l1l2", "bias_constraint": keras.constraints.NonNeg()}),
        (L.EinsumDense, ("ab,bc->ac",), {"output_shape": 3}),
        (L.Conv2D, (2, 3), {"kernel_initializer": "he_normal"}),
        (L.Conv2DTranspose, (2, 3), {}),
        (L.DepthwiseConv2D, (3,), {}),
        (L.SeparableConv2D, (2, 3), {}),
        (L.Conv1D, (2, 3), {"groups": 1}),
        (L.BatchNormalization, (), {}),
        (L.LayerNormalization, (), {}),
        (L.GroupNormalization, (), {"groups": 1}),
        (L.Embedding, (10, 3), {}),
        (L.LSTM, (3,), {}),
        (L.GRU, (3,), {}),
        (L.SimpleRNN, (3,), {}),
        (L.MultiHeadAttention, (2, 4), {}),
        (L.Attention, (), {}),
        (L.Dropout, (0.1,), {}),
        (L.SpatialDropout2D, (0.1,), {}),
        (L.GaussianNoise, (0.1,), {}),
        (L.ReLU, (), {"max_value": 6.0}),
        (L.LeakyReLU, (), {}),
        (L.PReLU, (), {}),
        (L.ELU, (), {}),
        (L.Softmax, (), {}),
        (L.Activation, ("relu",), {}),
        (L.Add, (), {}),
        (L.Concatenate, (), {}),
        (L.Reshape, ((2, 2),), {}),
        (L.Permute, ((2, 1),), {}),
        (L.Flatten, (), {}),
        (L.ZeroPadding2D, (), {}),
        (L.UpSampling2D, (), {}),
        (L.MaxPooling2D, (), {}),
        (L.AveragePooling1D, (2,), {}),
        (L.GlobalAveragePooling2D, (), {}),
        (L.Rescaling, (1 / 255,), {}),
        (L.Normalization, (), {}),
        (L.Masking, (), {}),
        (L.RepeatVector, (2,), {}),
    ]
    layers = [cls(*args, name=f"zoo_{i}", **kwargs) for i, (cls, args, kwargs) in enumerate(specs)]
    layers += [
        L.Bidirectional(L.LSTM(3, name="zoo_lstm"), name="zoo_bidirectional"),
        L.TimeDistributed(L.Dense(2, name="zoo_td_dense"), name="zoo_td"),
    ]
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 100, 0.9, name="zoo_decay")
    optimizers = [
        keras.optimizers.Adam(schedule, name="zoo_adam"),
        keras.optimizers.SGD(momentum=0.9, name="zoo_sgd"),
        keras.optimizers.RMSprop(name="zoo_rmsprop"),
    ]
    initializers = [keras.initializers.get(name) for name in ("glorot_uniform", "he_normal", "orthogonal", "zeros")]
    training = {
        "optimizer": ser(optimizers[0]),
        "loss": ser(keras.losses.SparseCategoricalCrossentropy(from_logits=True, name="zoo_loss")),
        "metrics": [ser(keras.metrics.SparseCategoricalAccuracy(name="zoo_accuracy"))],
        "loss_weights": None,
        "run_eagerly": False,
    }
    extras = [ser(obj) for obj in [*optimizers[1:], *initializers]]
    model = {"layers": [ser(layer) for layer in layers], "extras": extras}
    return {"module": "keras", "class_name": "Sequential", "config": model, "compile_config": training}


def test_keys_this_keras_knows_are_never_dropped():
    config = _zoo()
    fitted = json.loads(json.dumps(config))
    notes = newer_keras.fit_to_installed(fitted, path="zoo.keras", written_by=FUTURE, objects={})
    assert notes == [] and fitted == json.loads(json.dumps(config))
    # Known keys at an "off" value stay: only keys this Keras lacks are ever dropped.
    dense = fitted["config"]["layers"][1]["config"]
    assert dense["kernel_constraint"] is None and dense["bias_regularizer"] is None


def test_the_users_classes_are_left_to_their_code_but_what_they_hold_is_checked():
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "layers": [
                {
                    "module": "my_layers",
                    "class_name": "Scale",
                    "config": {
                        "name": "scale",
                        "future_knob": None,
                        "kernel_initializer": {
                            "module": "keras.initializers",
                            "class_name": "GlorotUniform",
                            "config": {"seed": None, "future_axes": None},
                        },
                    },
                }
            ]
        },
    }
    notes = newer_keras.fit_to_installed(config, path="m.keras", written_by=FUTURE, objects={"Scale": object})
    layer = config["config"]["layers"][0]["config"]
    assert "future_knob" in layer and "future_axes" not in layer["kernel_initializer"]["config"]
    assert notes and "the kernel_initializer (GlorotUniform) of 1 layer (scale)" in notes[0]

"""Tests for `deadrelu.io.loading`: the Keras files people really have.

Unit tests: small Keras 2 files written by tf_keras (`keras2_files.py`); each loaded model must give
the original model's outputs (so every weight arrived) and leave the file's bytes untouched.
Sweep: every real model in `../shared/models` (skipped when that folder is absent).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import deadrelu
from deadrelu.errors import ModelLoadError
from deadrelu.io import loading
from paths import SHARED, synthetic_inputs

MODELS = SHARED / "models"
MNIST = SHARED / "data" / "mnist.npz"


def tree_sha256(path: str) -> str:
    """sha256 over every file under `path` (or of the file itself): proves nothing was written."""
    digest = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(str(p) for p in Path(path).rglob("*") if p.is_file())
    for name in files:
        digest.update(os.path.relpath(name, path).encode())
        digest.update(loading.file_sha256(name).encode())
    return digest.hexdigest()


def outputs(model, x) -> np.ndarray:
    return np.asarray(model(x, training=False))


def load_checked(path: str, **options) -> loading.LoadedModel:
    """Loads with `deadrelu.io.loading.load` and checks that the file or folder is unchanged."""
    before = tree_sha256(path)
    loaded = loading.load(path, **options)
    assert tree_sha256(path) == before
    return loaded


def assert_same(loaded: loading.LoadedModel, written) -> None:
    np.testing.assert_allclose(outputs(loaded.model, written.x), written.expected, atol=1e-5, rtol=0)


def error_of(path, **options) -> str:
    with pytest.raises(ModelLoadError) as info:
        loading.load(path, **options)
    message = str(info.value)
    assert "\n" not in message.strip()
    return message


# ----------------------------------------------------------------------------------------------
# Keras 2 files written by tf_keras


@pytest.fixture(scope="module")
def k2(tmp_path_factory):
    """(the keras2_files module, a folder for this module's files); skipped without tf_keras."""
    pytest.importorskip("tf_keras")
    import keras2_files

    return keras2_files, str(tmp_path_factory.mktemp("keras2"))


def _written(name):
    @pytest.fixture(scope="module")
    def fixture(k2):
        module, folder = k2
        return getattr(module, name)(folder)

    return fixture


nested = _written("write_nested")
functional_in_sequential = _written("write_functional_in_sequential")
depthwise = _written("write_depthwise")
slash = _written("write_slash_names")
seq_no_input = _written("write_sequential_without_input")
hdf5_named_keras = _written("write_hdf5_named_keras")
savedmodel = _written("write_savedmodel")
tf_keras_archive = _written("write_tf_keras_archive")
weights_only = _written("write_weights_only")
custom = _written("write_custom_layer")
lambda_file = _written("write_lambda")
py36_lambda = _written("write_py36_lambda")
tf_ops = _written("write_tf_ops")


@pytest.fixture(scope="module")
def seq_no_shape(k2):
    module, folder = k2
    return module.write_sequential_without_input(folder, keep_shape=False)


def test_nested_sequential_and_functional_in_h5(nested):
    loaded = load_checked(nested.path)
    assert_same(loaded, nested)
    assert loaded.format == "h5" and loaded.sha256 == loading.file_sha256(nested.path)
    assert any("re-indexed 2 calls of nested models" in r for r in loaded.repairs)
    assert [layer.name for layer in loaded.model.layers][2:4] == ["inner_seq", "block"]
    assert loaded.compiled  # adam + mse from the training_config


def test_functional_model_inside_sequential(functional_in_sequential):
    loaded = load_checked(functional_in_sequential.path)
    assert_same(loaded, functional_in_sequential)
    assert any("nested in a Sequential" in r for r in loaded.repairs)


def test_depthwise_and_transpose_configs_with_groups(depthwise):
    with h5py.File(depthwise.path, "r") as f:
        config = json.loads(f.attrs["model_config"])
    assert all(
        layer["config"].get("groups") == 1
        for layer in config["config"]["layers"]
        if layer["class_name"] in ("DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose")
    )
    loaded = load_checked(depthwise.path)
    assert_same(loaded, depthwise)
    assert any(r.startswith("removed groups=1 from 1 DepthwiseConv2D config") for r in loaded.repairs)
    assert any("Conv2DTranspose" in r for r in loaded.repairs)


def test_layer_names_with_slashes(slash):
    loaded = load_checked(slash.path)
    assert_same(loaded, slash)
    names = [layer.name for layer in loaded.model.layers]
    assert "block1_dense" in names and not any("/" in n for n in names)
    assert any("renamed 5 layers containing '/'" in r for r in loaded.repairs)


def test_sequential_without_input_layer_takes_first_layer_shape(seq_no_input):
    loaded = load_checked(seq_no_input.path)
    assert_same(loaded, seq_no_input)
    assert loaded.model.input_shape == (None, 3)
    assert any("from batch_input_shape of its first layer" in r for r in loaded.repairs)


def test_sequential_without_any_shape_needs_input_shape(seq_no_shape):
    message = error_of(seq_no_shape.path)
    assert "`input_shape" in message and "without an input shape" in message
    loaded = load_checked(seq_no_shape.path, input_shape="3")
    assert_same(loaded, seq_no_shape)
    assert any("from `input_shape`" in r for r in loaded.repairs)


def test_hdf5_file_named_keras(hdf5_named_keras):
    assert hdf5_named_keras.path.endswith(".keras")
    loaded = load_checked(hdf5_named_keras.path)
    assert loaded.format == "h5"
    assert_same(loaded, hdf5_named_keras)


def test_savedmodel_directory(savedmodel):
    loaded = load_checked(savedmodel.path)
    assert loaded.format == "savedmodel"
    assert loaded.sha256 == loading.file_sha256(os.path.join(savedmodel.path, "saved_model.pb"))
    assert_same(loaded, savedmodel)
    assert [layer.name for layer in loaded.model.layers if layer.weights] == ["conv", "bn", "out"]
    assert any("SavedModel" in r for r in loaded.repairs)


def test_savedmodel_loads_without_tf_keras(savedmodel, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf_keras", None)  # `import tf_keras` now fails
    assert_same(load_checked(savedmodel.path), savedmodel)


def test_tf_keras_archive_with_nested_models(tf_keras_archive):
    loaded = load_checked(tf_keras_archive.path)
    assert loaded.format == "keras" and loaded.keras_version.startswith("2.")
    assert_same(loaded, tf_keras_archive)
    assert any("archive layout" in r for r in loaded.repairs)
    assert loaded.compiled


ZOO_MODELS = ("rnn", "wrappers", "activations", "attention", "shared")
ZOO = [f"{name}.{suffix}" for name in ZOO_MODELS for suffix in ("h5", "keras")]


@pytest.fixture(scope="module")
def zoo(k2):
    module, folder = k2
    return module.write_layer_zoo(folder)


@pytest.mark.parametrize("name", ZOO)
def test_layer_zoo_keeps_every_weight(name, zoo):
    written = zoo[name]
    loaded = load_checked(written.path)
    x = [np.asarray(v) for v in written.x] if isinstance(written.x, list) else written.x
    np.testing.assert_allclose(np.asarray(loaded.model.predict(x, verbose=0)), written.expected, atol=1e-5, rtol=0)


def test_weights_only_h5_needs_architecture(weights_only):
    written, architecture = weights_only
    message = error_of(written.path)
    assert "only weights" in message and "`architecture" in message
    loaded = load_checked(written.path, architecture=architecture)
    assert_same(loaded, written)


def test_weights_only_with_wrong_architecture_is_explained(weights_only, nested, tmp_path):
    written, _ = weights_only
    other = tmp_path / "other.json"
    with h5py.File(nested.path, "r") as f:
        config = f.attrs["model_config"]
    other.write_text(config.decode() if isinstance(config, bytes) else config)
    assert "does not match" in error_of(written.path, architecture=str(other))


def test_keras3_weights_file_with_architecture(tmp_path):
    import keras

    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2),
        ]
    )
    for variable in model.weights:  # non-trivial values, positive variances
        variable.assign(np.abs(np.random.default_rng(3).normal(size=variable.shape)) + 0.1)
    weights, architecture = tmp_path / "model.weights.h5", tmp_path / "model.json"
    model.save_weights(weights)
    architecture.write_text(model.to_json())
    x = np.random.default_rng(4).normal(size=(3, 4)).astype("float32")
    loaded = load_checked(str(weights), architecture=str(architecture))
    np.testing.assert_allclose(outputs(loaded.model, x), outputs(model, x), atol=1e-6)


def test_custom_layer_from_python_file(custom):
    written, module = custom
    message = error_of(written.path)
    assert "'ScaleShift'" in message and "`custom_objects" in message
    loaded = load_checked(written.path, custom_objects=module)
    assert_same(loaded, written)
    assert type(loaded.model.layers[-1]).__name__ == "ScaleShift"


def test_custom_layer_from_dict(custom, k2):
    written, _ = custom
    namespace = {}
    exec(k2[0].CUSTOM_LAYER_SOURCE, namespace)
    loaded = load_checked(written.path, custom_objects={"ScaleShift": namespace["ScaleShift"]})
    assert_same(loaded, written)


def test_custom_objects_written_for_tf_keras_are_explained(custom, tmp_path):
    written, _ = custom
    module = tmp_path / "old_layers.py"
    module.write_text("import tf_keras\n\nclass ScaleShift(tf_keras.layers.Layer):\n    pass\n")
    message = error_of(written.path, custom_objects=str(module))
    assert "tf.keras (Keras 2)" in message and "keras.layers.Layer" in message


def test_lambda_needs_unsafe(lambda_file):
    message = error_of(lambda_file.path)
    assert "Lambda" in message and "`unsafe" in message
    loaded = load_checked(lambda_file.path, unsafe=True)
    assert_same(loaded, lambda_file)


def test_python36_lambda_bytecode_runs_with_unsafe(py36_lambda):
    assert "`unsafe" in error_of(py36_lambda.path)
    loaded = load_checked(py36_lambda.path, unsafe=True)
    assert_same(loaded, py36_lambda)
    assert any("Python 3.6-3.7 bytecode" in r for r in loaded.repairs)


def test_unreadable_lambda_bytecode_is_refused_clearly(lambda_file, tmp_path):
    broken = tmp_path / "broken_lambda.h5"
    shutil.copy(lambda_file.path, broken)
    with h5py.File(broken, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Lambda":
                layer["config"]["function"] = ["YwAAAAABAAAAAgAAAEMAAABzBAAAAHwAAFMo", None, None]  # Python 2.7
        f.attrs["model_config"] = json.dumps(config)
    message = error_of(str(broken), unsafe=True)
    assert "cannot run" in message and "Python" in message


def test_tensorflow_op_layers_are_rebuilt_and_relu_ops_are_sites(tf_ops, tmp_path, capfd):
    from models import assert_site_matches, outputs_of, reference_stats

    loaded = load_checked(tf_ops.path)
    assert_same(loaded, tf_ops)
    assert any("as ReLU layers" in note for note in loaded.repairs)
    report = deadrelu.scan(loaded.model, tf_ops.x, batch_size=5)
    assert [(s.path, s.kind, s.params.get("max_value")) for s in report.sites] == [
        ("tf.nn.relu", "relu_layer", None),
        ("tf.nn.relu6", "relu_layer", 6.0),
        ("tf.nn.relu_1", "relu_layer", None),
    ]
    layers = [loaded.model.get_layer(s.path) for s in report.sites]
    for site, activations in zip(
        report.sites, outputs_of(loaded.model.inputs, [layer.output for layer in layers], tf_ops.x)
    ):
        assert_site_matches(site, reference_stats(activations, max_value=site.params.get("max_value")))
    assert 0 in report.sites[0].dead

    # The patched model saves and loads again, with the same outputs at slope 0: through deadrelu, and
    # through plain Keras given the class (deadrelu does not register it where Keras would find it).
    out = tmp_path / "patched.keras"
    from deadrelu.cli import main

    assert main(["patch", tf_ops.path, "--to", "leaky", "-o", str(out), "--quiet"]) == 0
    assert "max |Δ| = 0" in capfd.readouterr().out
    import keras

    from deadrelu.io.legacy.tf_ops import TFOpLambda

    with pytest.raises(TypeError, match="TFOpLambda"):
        keras.models.load_model(out)
    patched = keras.models.load_model(out, custom_objects={"TFOpLambda": TFOpLambda})
    np.testing.assert_allclose(outputs(deadrelu.load_model(str(out)), tf_ops.x), outputs(patched, tf_ops.x))
    slopes = [
        float(layer.negative_slope)
        for layer in patched.layers
        if isinstance(layer, (keras.layers.LeakyReLU, keras.layers.ReLU))
    ]
    assert slopes == pytest.approx([0.01] * 3)  # relu6 keeps its cap: ReLU(max_value=6, negative_slope=0.01)
    np.testing.assert_allclose(
        outputs(patched, tf_ops.x), outputs(deadrelu.patch(loaded.model, "leaky"), tf_ops.x), atol=1e-6
    )


def test_compile_failure_keeps_model_uncompiled(nested, tmp_path):
    copy = tmp_path / "odd_loss.h5"
    shutil.copy(nested.path, copy)
    with h5py.File(copy, "r+") as f:
        training = json.loads(f.attrs["training_config"])
        training["loss"] = "my_private_loss"
        f.attrs["training_config"] = json.dumps(training)
    loaded = load_checked(str(copy))
    assert not loaded.compiled
    assert any(r.startswith("not compiled") for r in loaded.repairs)
    assert_same(loaded, nested)


# ----------------------------------------------------------------------------------------------
# Keras 3 archives


@pytest.fixture(scope="module")
def keras3_files(tmp_path_factory):
    """A plain Keras 3 `.keras` model and one holding a Python lambda, with inputs and outputs."""
    import keras

    folder = tmp_path_factory.mktemp("keras3")
    x = np.random.default_rng(2).normal(size=(4, 5)).astype("float32")
    L = keras.layers
    plain = keras.Sequential([keras.Input((5,)), L.Dense(4, activation="relu"), L.Dense(2)])
    with_lambda = keras.Sequential([keras.Input((5,)), L.Lambda(lambda t: t * 3.0), L.Dense(2)])
    files = {}
    for name, model in (("plain", plain), ("lambda", with_lambda)):
        model.compile(optimizer="sgd", loss="mse")
        path = str(folder / f"{name}.keras")
        model.save(path)
        files[name] = (path, x, outputs(model, x))
    return files


def test_keras3_archive_loads_plainly(keras3_files):
    path, x, expected = keras3_files["plain"]
    loaded = load_checked(path)
    assert loaded.format == "keras" and loaded.repairs == [] and loaded.compiled
    np.testing.assert_allclose(outputs(loaded.model, x), expected, atol=1e-6)


def test_keras3_archive_with_lambda_needs_unsafe(keras3_files):
    path, x, expected = keras3_files["lambda"]
    assert "`unsafe" in error_of(path)
    loaded = load_checked(path, unsafe=True)
    np.testing.assert_allclose(outputs(loaded.model, x), expected, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Wrong input


def test_missing_path():
    message = error_of("/nonexistent/model.h5")
    assert "not found" in message and "/nonexistent/model.h5" in message


def test_text_file_is_not_a_model(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("these are not weights\n")
    assert "neither a Keras .keras archive nor an HDF5" in error_of(str(path))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.keras"
    path.write_bytes(b"")
    assert "is empty" in error_of(str(path))


def test_json_passed_as_model_points_to_architecture(tmp_path):
    path = tmp_path / "model.json"
    path.write_text('{"class_name": "Sequential", "config": {}}')
    assert "`architecture" in error_of(str(path))


def test_directory_that_is_not_a_savedmodel(tmp_path):
    message = error_of(str(tmp_path))
    assert "not a TensorFlow SavedModel" in message and "saved_model.pb" in message


def test_zip_that_is_not_a_keras_archive(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert "no config.json" in error_of(str(path))


def test_bad_options(nested, tmp_path):
    assert "`custom_objects" in error_of(nested.path, custom_objects=str(tmp_path / "missing.py"))
    assert "`input_shape" in error_of(nested.path, input_shape="28,x")
    assert "`architecture" in error_of(nested.path, architecture=str(tmp_path / "missing.json"))


def test_load_model_returns_the_keras_model(hdf5_named_keras):
    import keras

    assert isinstance(loading.load_model(hdf5_named_keras.path, compile=False), keras.Model)


# ----------------------------------------------------------------------------------------------
# Real models written by other people (../shared/models, see its MANIFEST.md)

# file -> (input shape, how to make inputs, load options)
REAL = {
    "moonflower_mnist_cnn_k311.keras": ((28, 28, 1), "mnist", {}),
    "moonflower_mnist_cnn_k311.h5": ((28, 28, 1), "mnist", {}),
    "dd_mnist_al22_trained_stuck.h5": ((28, 28, 1), "mnist", {}),
    "at_dyingrelu_mlp34.h5": ((784,), "mnist", {}),
    "tiny_ic_resnet8.h5": ((32, 32, 3), "pixels", {}),
    "st_mobilenetv2_035_128_flowers.h5": ((128, 128, 3), "signed", {}),
    "lucie_ae_nested_k35.keras": ((896, 896, 1), "unit", {}),
    "ml3arn_mnist_ae_nested.h5": ((28, 28, 1), "mnist", {}),
    "st_yamnet256_esc10.h5": ((64, 96, 1), "normal", {}),
    "eriks_supervised_clf_tfkeras213.keras": ((28, 28), "mnist", {}),
    "koustav_ae_hdf5_misnamed.keras": ((37,), "normal", {}),
    "dl_trafficsign_buggy.h5": (
        (32, 32, 3),
        "pixels",
        {"architecture": str(MODELS / "dl_trafficsign_buggy.model.json"), "unsafe": True},
    ),
}
# Keras 2 HDF5 files tf_keras can read too: their outputs must match tf_keras exactly.
TF_KERAS_READABLE = [
    "dd_mnist_al22_trained_stuck.h5",
    "at_dyingrelu_mlp34.h5",
    "tiny_ic_resnet8.h5",
    "st_mobilenetv2_035_128_flowers.h5",
    "ml3arn_mnist_ae_nested.h5",
    "st_yamnet256_esc10.h5",
    "koustav_ae_hdf5_misnamed.keras",
]
SAMPLES = {"lucie_ae_nested_k35.keras": 1, "st_mobilenetv2_035_128_flowers.h5": 2}


def _real_files() -> list[str]:
    """The table's files, plus any other model file in the folder (found at collection time)."""
    found = set()
    if MODELS.is_dir():
        found = {p.name for p in MODELS.iterdir() if p.suffix in (".h5", ".keras", ".hdf5") or p.is_dir()}
    return sorted(set(REAL) | found)


def _manifest_sha256() -> dict:
    text = (MODELS / "MANIFEST.md").read_text()
    return dict(re.findall(r"^(\S+\.(?:h5|keras|json)) ([0-9a-f]{64})$", text, flags=re.M))


@pytest.fixture(scope="module")
def real(shared):
    """Loads each real model once: name -> (LoadedModel, inputs); skipped without ../shared/models."""
    shared("models")
    mnist = np.load(MNIST)["x_test"][:8] / 255.0 if MNIST.exists() else None
    cache = {}

    def get(name):
        if name not in cache:
            shape, kind, options = REAL.get(name, (None, "normal", {}))
            loaded = loading.load(str(MODELS / name), **options)
            shape = shape or tuple(loaded.model.input_shape[1:])
            cache[name] = (loaded, _real_inputs(shape, kind, SAMPLES.get(name, 4), mnist))
        return cache[name]

    return get


def _real_inputs(shape, kind, n, mnist) -> np.ndarray:
    if kind == "mnist" and mnist is not None:
        return mnist[:n].reshape((n, *shape)).astype("float32")
    return synthetic_inputs(shape, kind, n)


@pytest.mark.parametrize("name", _real_files())
def test_real_model_loads_and_runs(name, real):
    loaded, x = real(name)
    manifest = _manifest_sha256()
    assert name in manifest, f"{name} is not listed in {MODELS / 'MANIFEST.md'}"
    assert loaded.sha256 == manifest[name]  # loading never writes the user's files
    assert loading.file_sha256(str(MODELS / name)) == manifest[name]
    architecture = REAL.get(name, (None, None, {}))[2].get("architecture")
    if architecture:
        assert loading.file_sha256(architecture) == manifest[Path(architecture).name]
    if name in REAL:
        assert tuple(loaded.model.input_shape[1:]) == REAL[name][0]
    y = outputs(loaded.model, x)
    assert y.shape[0] == len(x) and np.isfinite(y).all()


def test_real_weights_only_file_needs_architecture_and_unsafe(shared):
    weights = str(shared("models", "dl_trafficsign_buggy.h5"))
    assert "`architecture" in error_of(weights)
    message = error_of(weights, architecture=str(MODELS / "dl_trafficsign_buggy.model.json"))
    assert "`unsafe" in message and "lambda_1" in message


@pytest.mark.parametrize("name", TF_KERAS_READABLE)
def test_real_h5_matches_tf_keras(name, real, tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    loaded, x = real(name)
    copy = tmp_path / "model.h5"  # tf_keras picks its loader by extension
    shutil.copy(MODELS / name, copy)
    reference = tf_keras.models.load_model(str(copy), compile=False)
    np.testing.assert_allclose(outputs(loaded.model, x[:2]), reference(x[:2], training=False).numpy(), atol=1e-5)


# file -> (ReLU sites, their units, site kind), counted from each architecture (MANIFEST.md:
# 34 Dense + Activation('relu') pairs, MobileNetV2's 35 ReLU(max_value=6), ...).
REAL_SITES = {
    "at_dyingrelu_mlp34.h5": (34, 4352, "activation"),
    "dd_mnist_al22_trained_stuck.h5": (16, 1234, "fused"),
    "dl_trafficsign_buggy.h5": (6, 371, "fused"),
    "eriks_supervised_clf_tfkeras213.keras": (2, 384, "fused"),
    "koustav_ae_hdf5_misnamed.keras": (3, 160, "fused"),
    "lucie_ae_nested_k35.keras": (6, 112, "fused"),
    "ml3arn_mnist_ae_nested.h5": (7, 3264, "fused"),
    "moonflower_mnist_cnn_k311.h5": (2, 96, "fused"),
    "moonflower_mnist_cnn_k311.keras": (2, 96, "fused"),
    "st_mobilenetv2_035_128_flowers.h5": (35, 6496, "relu_layer"),
    "st_yamnet256_esc10.h5": (11, 1472, "relu_layer"),
    "tiny_ic_resnet8.h5": (7, 240, "activation"),
}
SLOW_REAL = {"st_mobilenetv2_035_128_flowers.h5"}  # ~15 s to scan on 2 cores


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_REAL else n for n in _real_files()]
)
def test_real_model_scan_finds_relu_sites(name, real):
    """Every ReLU of each real model is a site, every site is reached, and the verdicts match the counts."""
    assert name in REAL_SITES, f"{name}: a new real model; add its sites, units and kind to REAL_SITES"
    loaded, x = real(name)
    report = deadrelu.scan(loaded.model, x, batch_size=len(x))
    sites, units, kind = REAL_SITES[name]
    assert len(report.sites) == sites and {s.kind for s in report.sites} == {kind}
    assert report.summary["units"] == units and report.summary["unreached_sites"] == 0
    assert report.data["samples"] == len(x)
    for site in report.sites:  # dead = never fired on these inputs, and nothing else
        assert site.dead == np.flatnonzero(site.fires == 0).tolist(), site.path

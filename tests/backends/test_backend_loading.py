"""Model files on this backend: Keras 2 files load unless they need TensorFlow ops, which is said in one line.

The Keras 2 files are written by tf_keras (with TensorFlow, which every install has) together
with their outputs on a few inputs; the model deadrelu rebuilds on this backend must give the
same outputs.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import deadrelu
from deadrelu.errors import ModelLoadError
from deadrelu.io.loading import load

pytest.importorskip("tf_keras", reason="writing Keras 2 files needs tf_keras (pip install 'deadrelu[legacy]')")

import keras2_files


@pytest.fixture(scope="module")
def keras2(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("keras2"))
    return {
        "nested": keras2_files.write_nested(folder),
        "savedmodel": keras2_files.write_savedmodel(folder),
        "tf_ops": keras2_files.write_tf_ops(folder),
    }


@pytest.mark.parametrize("name", ["nested", "savedmodel"])
def test_keras2_files_of_plain_layers_load_with_the_same_outputs(keras2, name, backend):
    written = keras2[name]
    loaded = load(written.path)
    outputs = keras.ops.convert_to_numpy(loaded.model(written.x, training=False))
    np.testing.assert_allclose(outputs, written.expected, rtol=1e-5, atol=1e-5)
    assert loaded.repairs  # rebuilt by deadrelu's own route, not by plain Keras


def test_tensorflow_op_layers_need_tensorflow(keras2, backend, run_cli):
    written = keras2["tf_ops"]
    if backend == "tensorflow":
        model = deadrelu.load_model(written.path)
        np.testing.assert_allclose(model.predict(written.x, verbose=0), written.expected, rtol=1e-5, atol=1e-5)
        return
    with pytest.raises(
        ModelLoadError, match=rf"tf\.__operators__\.add .* needs TensorFlow, but Keras runs on {backend}"
    ):
        deadrelu.load_model(written.path)
    code, out, err = run_cli(["inspect", written.path])
    assert code == 2 and out == ""
    assert err.splitlines()[-1].startswith("deadrelu: error: the TensorFlow op tf.__operators__.add")
    assert err.splitlines()[-1].endswith("rerun with KERAS_BACKEND=tensorflow")
    assert len(err.splitlines()) == 1  # the error alone: the backend is named after the work


def test_a_keras2_file_from_the_field_loads_with_its_weights(shared):
    import h5py

    path = shared("models", "dd_mnist_al22_trained_stuck.h5")  # Keras 2.3.1, a real training run
    model = deadrelu.load_model(path)
    assert len(deadrelu.find_sites(model).sites) == 16
    with h5py.File(path, "r") as f:
        stored = f["model_weights/conv2d_1/conv2d_1_67/kernel:0"][()]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("conv2d_1").kernel), stored)

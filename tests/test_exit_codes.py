"""Honest exit codes: bad input is exit 2 with one line, a bug inside deadrelu is exit 3.

The probe and the loader each guard a call into Keras: what Keras and the backend raise for data the
model cannot run on, or for a file Keras cannot rebuild, becomes a one-line error (exit 2). Here a
bug is planted inside deadrelu — in the statistics traced into the step, in the probe's eager pass,
in the loader's rebuild — and the real command line must call it an internal error (exit 3), while
the same files with wrong-shaped data or a damaged configuration stay exit 2.
"""

from __future__ import annotations

import inspect
import json
import shutil

import numpy as np
import pytest

import deadrelu
from deadrelu.errors import DataError, InternalError, ModelLoadError


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _internal_error(code: int, err: str, *names: str) -> None:
    line = _one_error_line(err)
    assert code == 3, err
    assert line.startswith("deadrelu: internal error: ") and "please report" in line, err
    for name in names:
        assert name in line, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny model files and data, each named for what it tests.

    - reshape.keras: `Input((None,))` → Reshape((2, 2)) → Dense(3, relu). Any width passes the data
      checks (the input width is free), so 5-wide data first fails inside the model's call.
    - mlp.bin: a Keras 3 HDF5 file not named .h5: rebuilt by deadrelu from its stored config
      (Keras's own loader picks its format by the extension), inside the loader's guard.
    - unknown_kwarg.h5: the same file with a Dense config Keras refuses ("unitz").
    - custom.keras: a custom layer (not registered: loading it needs `custom_objects`), whose
      `custom_objects` file objects.py fails in `__init__`.
    """
    import h5py
    import keras

    folder = tmp_path_factory.mktemp("exit_codes")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None,))
    hidden = keras.layers.Flatten()(keras.layers.Reshape((2, 2))(inputs))
    keras.Model(inputs, keras.layers.Dense(3, activation="relu", name="d")(hidden)).save(folder / "reshape.keras")
    rng = np.random.default_rng(0)
    np.save(folder / "x4.npy", rng.normal(size=(6, 4)).astype(np.float32))
    np.save(folder / "x5.npy", rng.normal(size=(6, 5)).astype(np.float32))

    mlp = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5, activation="relu", name="d"), keras.layers.Dense(2, name="o")]
    )
    mlp.save(folder / "mlp.h5")
    shutil.copy(folder / "mlp.h5", folder / "mlp.bin")
    shutil.copy(folder / "mlp.h5", folder / "unknown_kwarg.h5")
    with h5py.File(folder / "unknown_kwarg.h5", "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Dense":
                layer["config"]["unitz"] = 3
        f.attrs["model_config"] = json.dumps(config)

    keras.Sequential([keras.Input((4,)), _Double()(), keras.layers.Dense(3, activation="relu")]).save(
        folder / "custom.keras"
    )
    (folder / "objects.py").write_text(
        "import keras\nimport numpy as np\n\n\n"
        "class Double(keras.layers.Layer):\n"
        "    def __init__(self, **kwargs):\n"
        "        super().__init__(**kwargs)\n"
        "        self.factor = np.a_function_numpy_removed(2.0)\n\n"
        "    def call(self, x):\n"
        "        return x * self.factor\n"
    )
    return folder


# -- the probe -----------------------------------------------------------------------------------


def test_wrong_shaped_data_is_exit_2_with_one_line(files, run_cli):
    assert run_cli(["scan", files / "reshape.keras", "--data", files / "x4.npy", "--quiet"])[0] == 0
    code, _, err = run_cli(["scan", files / "reshape.keras", "--data", files / "x5.npy", "--quiet"])
    assert code == 2, err
    assert _one_error_line(err).startswith("deadrelu: error: the model cannot run on this data"), err


@pytest.mark.parametrize("error", [ValueError, TypeError, ZeroDivisionError])
def test_a_bug_in_the_statistics_traced_into_the_step_is_exit_3(error, files, run_cli, monkeypatch):
    # ValueError and TypeError are also what Keras raises for bad data: only where they are raised
    # (deadrelu's reductions, not the model's call) tells them apart.
    import deadrelu.engine.probe as probe

    def broken(*args, **kwargs):
        raise error("planted bug")

    monkeypatch.setattr(probe, "site_batch_stats", broken)
    monkeypatch.setattr(probe, "fused_relu_stats", broken)  # the kernel's one-pass path, where it applies
    code, _, err = run_cli(["scan", files / "reshape.keras", "--data", files / "x4.npy", "--quiet"])
    _internal_error(code, err, "InternalError", error.__name__, "planted bug")


@pytest.mark.parametrize("error", [AttributeError, KeyError, ZeroDivisionError])
def test_a_bug_in_the_eager_pass_is_exit_3(error, files, run_cli, monkeypatch):
    from deadrelu.engine.probe import Probe

    def broken(self, on_apply):
        raise error("planted bug")

    monkeypatch.setattr(Probe, "_intercepting", broken)
    code, _, err = run_cli(["scan", files / "reshape.keras", "--data", files / "x4.npy", "--quiet"])
    _internal_error(code, err, error.__name__)


def test_a_type_error_of_deadrelu_inside_the_model_call_is_internal(monkeypatch):
    """A TypeError of deadrelu's own hook code, raised inside the model's call, is no DataError."""
    import keras

    import deadrelu.engine.probe as probe

    class Squash(keras.layers.Layer):  # a ReLU applied in `call`: an op-level site, named by the eager pass
        def call(self, x):
            return keras.ops.relu(x - 0.5)

    inputs = keras.Input((4,))
    model = keras.Model(inputs, Squash(name="squash")(keras.layers.Dense(3)(inputs)))
    x = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    assert [site.path for site in deadrelu.scan(model, x).sites] == ["squash:relu_0"]

    def broken(*args, **kwargs):
        raise TypeError("planted bug")

    monkeypatch.setattr(probe, "op_site", broken)
    model = keras.Model(inputs, Squash(name="squash")(keras.layers.Dense(3)(inputs)))  # no cached probe
    with pytest.raises(InternalError, match="naming an op-level site failed: TypeError: planted bug") as caught:
        deadrelu.scan(model, x)
    assert not isinstance(caught.value, DataError)


# -- the loader ----------------------------------------------------------------------------------


def test_the_guarded_rebuild_runs_for_a_file_not_named_h5(files):
    from deadrelu.io.loading import load

    loaded = load(files / "mlp.bin")
    assert any("read as HDF5" in repair for repair in loaded.repairs), loaded.repairs


@pytest.mark.parametrize("error", [AttributeError, ZeroDivisionError, NameError])
def test_a_bug_in_the_rebuild_is_exit_3(error, files, run_cli, monkeypatch):
    import deadrelu.io.loading as loading

    def broken():
        raise error("planted bug")

    monkeypatch.setattr(loading, "_module_objects", broken)  # called inside the guarded rebuild
    code, _, err = run_cli(["scan", files / "mlp.bin", "--data", files / "x4.npy", "--quiet"])
    _internal_error(code, err, error.__name__, "planted bug")


def test_a_configuration_keras_refuses_is_exit_2(files, run_cli):
    code, _, err = run_cli(["scan", files / "unknown_kwarg.h5", "--data", files / "x4.npy", "--quiet"])
    assert code == 2, err
    line = _one_error_line(err)
    assert "Keras 3 cannot rebuild the model" in line and "unitz" in line, err


def test_a_truncated_model_file_is_exit_2(files, tmp_path, run_cli):
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes((files / "reshape.keras").read_bytes()[:300])
    code, _, err = run_cli(["scan", truncated, "--data", files / "x4.npy", "--quiet"])
    assert code == 2, err
    assert "damaged zip archive" in _one_error_line(err), err


def test_an_error_of_the_custom_objects_code_is_the_files(files, run_cli):
    # An AttributeError is a bug where only deadrelu's and Keras's code run; here the file's own
    # code (its custom layer) raised it while Keras rebuilt the model.
    argv = ["scan", files / "custom.keras", "--data", files / "x4.npy", "--quiet"]
    code, _, err = run_cli([*argv, "--custom-objects", files / "objects.py"])
    assert code == 2, err
    assert "a_function_numpy_removed" in _one_error_line(err), err


# -- load_model's keywords -----------------------------------------------------------------------


def test_load_model_names_its_keywords(files):
    parameters = inspect.signature(deadrelu.load_model).parameters
    assert {name: p.default for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY} == {
        "custom_objects": None,
        "architecture": None,
        "unsafe": False,
        "compile": True,
        "input_shape": None,
    }
    assert not any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    with pytest.raises(TypeError, match="safe_mode"):
        deadrelu.load_model(files / "mlp.h5", safe_mode=False)


def test_load_model_passes_each_keyword_on(files, tmp_path):
    import keras

    compiled = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="o")])
    compiled.compile(loss="mse")
    compiled.save(tmp_path / "compiled.keras")
    assert deadrelu.load_model(tmp_path / "compiled.keras").compiled
    assert not deadrelu.load_model(tmp_path / "compiled.keras", compile=False).compiled

    mlp = deadrelu.load_model(files / "mlp.h5")
    (tmp_path / "mlp.json").write_text(mlp.to_json())
    mlp.save_weights(tmp_path / "mlp.weights.h5")
    rebuilt = deadrelu.load_model(tmp_path / "mlp.weights.h5", architecture=tmp_path / "mlp.json")
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0), mlp.predict(x, verbose=0), rtol=1e-6)

    custom = deadrelu.load_model(files / "custom.keras", custom_objects={"Double": _Double()})
    assert custom.layers[0].__class__.__name__ == "Double"
    with pytest.raises(ModelLoadError, match="custom_objects"):
        deadrelu.load_model(files / "custom.keras", custom_objects=42)


def _Double() -> type:
    """A custom layer class, made anew on each call (never registered with Keras)."""
    import keras

    class Double(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    return Double

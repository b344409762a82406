"""patch, prune and revive (from a report), inspect and report on this backend, through the API and the CLI.

The sample `dying_mlp` has 104 of its 192 units dead on probe.npz. The report the API tests act
on comes from `measured_report` (a plain forward pass, no engine); the engine is checked against it.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import deadrelu

HIDDEN = ("hidden_1", "hidden_2", "hidden_3")


def _numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def _outputs(model, x) -> np.ndarray:
    return _numpy(model(x, training=False))


@pytest.fixture(scope="module")
def mlp(dying_mlp):
    return deadrelu.load_model(dying_mlp)


def _pre_activations(model, x) -> list[np.ndarray]:
    """Each hidden layer's input to its ReLU, computed in numpy from the original weights."""
    z, out = x.reshape(len(x), -1).astype(np.float64), []  # flatten_1
    for name in HIDDEN:
        layer = model.get_layer(name)
        z = z @ _numpy(layer.kernel) + _numpy(layer.bias)
        out.append(z)
        z = np.maximum(z, 0)
    return out


def test_the_report_finds_the_samples_dead_units(mlp_report, backend):
    assert [len(mlp_report.site(name).dead) for name in HIDDEN] == [48, 21, 35]
    assert mlp_report.summary["dead"] == 104
    assert mlp_report.tool["backend"] == backend


def test_the_engine_agrees_with_a_plain_forward_pass(mlp, mlp_report, probe_x):
    report = deadrelu.scan(mlp, probe_x, batch_size=300)
    for name in HIDDEN:
        assert report.site(name).dead == mlp_report.site(name).dead
        np.testing.assert_array_equal(report.site(name).fires, mlp_report.site(name).fires)


@pytest.mark.parametrize("to, slope", [("leaky", 0.01), ("prelu", 0.25)])
def test_patch_keeps_the_weights_and_changes_only_negative_inputs(mlp, probe_x, to, slope):
    patched = deadrelu.patch(mlp, to)
    new = "LeakyReLU" if to == "leaky" else "PReLU"
    assert [type(layer).__name__ for layer in patched.layers].count(new) == 3
    x = probe_x[:200]
    z = _pre_activations(mlp, x)[0]
    # hidden_1 keeps its kernel and bias (now without activation); a new activation layer follows.
    patched_layers = [patched.get_layer("hidden_1"), patched.get_layer(f"hidden_1_{to}")]
    first, activated = (_numpy(t) for t in keras.Model(patched.inputs, [layer.output for layer in patched_layers])(x))
    original = _numpy(keras.Model(mlp.inputs, mlp.get_layer("hidden_1").output)(x))
    np.testing.assert_allclose(first, z, rtol=1e-5, atol=1e-4)  # numpy float64 against float32 matmuls
    negative = first < 0
    assert negative.mean() > 0.5  # the sample's first layer is mostly dead: the slopes matter
    np.testing.assert_allclose(activated[~negative], original[~negative], rtol=1e-6)
    np.testing.assert_allclose(activated[negative], slope * first[negative], rtol=1e-6)
    assert not original[negative].any()


def test_patch_slope_zero_check_reproduces_the_outputs(mlp, probe_x):
    result = deadrelu.patch_model(mlp, "prelu", data=probe_x)
    assert len(result.rewrites) == 3
    assert result.check.max_abs_diff <= 1e-6 and result.check.samples == 1000


def test_patch_cli_writes_a_plain_keras_file(run_cli, dying_mlp, probe_npz, probe_x, mlp, tmp_path, backend):
    out, summary = tmp_path / "fixed.keras", tmp_path / "patch.json"
    code, _, err = run_cli(["patch", dying_mlp, "--to", "leaky", "-o", out, "--data", probe_npz, "--json", summary])
    assert code == 0, err
    fixed = keras.models.load_model(out)
    assert sum(isinstance(layer, keras.layers.LeakyReLU) for layer in fixed.layers) == 3
    for name in HIDDEN:
        np.testing.assert_array_equal(_numpy(fixed.get_layer(name).kernel), _numpy(mlp.get_layer(name).kernel))
    written = json.loads(summary.read_text())
    assert written["tool"]["backend"] == backend
    assert written["schema"] == "deadrelu/patch@2" and written["check"]["samples"] == 1000
    assert written["check"]["passed"] and written["check"]["max_abs_diff"] <= 1e-6


def test_prune_from_a_report_keeps_the_outputs(mlp, mlp_report, probe_x, tmp_path):
    result = deadrelu.prune_model(mlp, mlp_report)  # the data: probe.npz, named by the report
    assert result.params_after == 6419
    assert sum(len(units) for units in result.removed.values()) == 104
    assert result.check.max_abs_diff <= 1e-5 and result.check.samples == 1000 and result.check.passed
    smaller = result.model
    assert [smaller.get_layer(name).units for name in HIDDEN] == [16, 43, 29]
    plain = deadrelu.prune(mlp, mlp_report)  # the plain verb: the model itself, the same weights
    assert isinstance(plain, keras.Model) and plain.count_params() == 6419
    for a, b in zip(plain.get_weights(), smaller.get_weights()):
        np.testing.assert_array_equal(_numpy(a), _numpy(b))
    np.testing.assert_allclose(_outputs(smaller, probe_x), _outputs(mlp, probe_x), atol=1e-5)
    path = tmp_path / "smaller.keras"
    smaller.save(path)
    np.testing.assert_allclose(_outputs(keras.models.load_model(path), probe_x), _outputs(mlp, probe_x), atol=1e-5)


def test_prune_cli_from_a_report(run_cli, dying_mlp, mlp_report_file, probe_x, mlp, tmp_path, backend):
    out, summary = tmp_path / "smaller.keras", tmp_path / "prune.json"
    code, stdout, err = run_cli(
        ["prune", dying_mlp, "--report", mlp_report_file, "-o", out, "--no-timing", "--json", summary]
    )
    assert code == 0, err
    assert "parameters: 25,418 → 6,419" in stdout
    written = json.loads(summary.read_text())
    assert written["schema"] == "deadrelu/prune@2" and written["tool"]["backend"] == backend
    assert written["check"]["passed"] and written["units_removed"] == 104 and written["summary_after"]["dead"] == 0
    np.testing.assert_allclose(_outputs(keras.models.load_model(out), probe_x), _outputs(mlp, probe_x), atol=1e-5)


def test_revive_from_a_report_gives_dead_units_new_weights(mlp, mlp_report, probe_x):
    result = deadrelu.revive_model(mlp, mlp_report, seed=0)
    revived = result.model
    assert result.units_revived == 104
    np.testing.assert_allclose(_outputs(revived, probe_x), _outputs(mlp, probe_x), atol=1e-6)
    previous_dead: list[int] = []
    for name in HIDDEN:
        dead = mlp_report.site(name).dead
        live = np.setdiff1d(np.arange(64), dead)
        before, after = _numpy(mlp.get_layer(name).kernel), _numpy(revived.get_layer(name).kernel)
        assert np.all(np.any(before[:, dead] != after[:, dead], axis=0))  # every dead unit: a new column
        kept_rows = np.setdiff1d(np.arange(len(before)), previous_dead)  # rows of revived inputs are cut
        np.testing.assert_array_equal(before[np.ix_(kept_rows, live)], after[np.ix_(kept_rows, live)])
        previous_dead = dead
    # The weights from the revived units to the live units after them are zero: nothing sees them yet.
    for name, reader in zip(HIDDEN, ("hidden_2", "hidden_3", "output")):
        kernel = _numpy(revived.get_layer(reader).kernel)
        read_by_live = np.setdiff1d(
            np.arange(kernel.shape[1]), mlp_report.site(reader).dead if reader != "output" else []
        )
        rows = kernel[mlp_report.site(name).dead]
        assert not rows[:, read_by_live].any()
        if reader != "output":
            assert rows.any()  # the revived units after them read them with fresh weights


def test_revive_cli_from_a_report(run_cli, dying_mlp, mlp_report_file, probe_x, mlp, tmp_path):
    out = tmp_path / "revived.keras"
    code, stdout, err = run_cli(["revive", dying_mlp, "--report", mlp_report_file, "-o", out, "--seed", "0"])
    assert code == 0, err
    assert "104 revived" in stdout
    revived = keras.models.load_model(out)
    np.testing.assert_allclose(_outputs(revived, probe_x), _outputs(mlp, probe_x), atol=1e-6)
    dead = mlp_report_file and json.loads(mlp_report_file.read_text())["sites"][0]["dead"]
    kernel = _numpy(revived.get_layer("hidden_1").kernel)
    assert np.all(np.any(kernel[:, dead] != _numpy(mlp.get_layer("hidden_1").kernel)[:, dead], axis=0))


def test_revived_in_place_the_optimizer_slots_of_revived_weights_are_reset(mlp_report, probe_npz):
    model = deadrelu.load_model(probe_npz.parent / "dying_mlp.keras")
    with np.load(probe_npz) as f:
        x, y = f["x"][:64], f["y"][:64]
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)  # Adam's moments become non-zero
    result = deadrelu.revive_model(model, mlp_report, seed=0, in_place=True)
    assert result.model is model and result.optimizer_entries_reset > 0
    kernel = model.get_layer("hidden_1").kernel
    mask = result.reinitialized[next(k for k, v in result.variables.items() if v is kernel)]
    index = [id(v) for v in model.optimizer._trainable_variables].index(id(kernel))
    for slots in (model.optimizer._momentums, model.optimizer._velocities):
        value = _numpy(slots[index])
        assert not value[mask].any()
        assert value[~mask].any()


def test_inspect_cli(run_cli, dying_mlp):
    code, out, err = run_cli(["inspect", dying_mlp])
    assert code == 0, err
    for name in HIDDEN:
        assert name in out
    assert "dying_mlp: 3 ReLU sites, 1 other activations (format keras)" in out


def test_report_cli_renders_figures(run_cli, mlp_report_file, tmp_path):
    plot, html = tmp_path / "dead.png", tmp_path / "report.html"
    code, out, err = run_cli(["report", mlp_report_file, "--plot", plot, "--html", html])
    assert code == 0, err
    assert "backend" not in err  # rendering a report runs no model: no backend to name
    assert "104 of 192 units dead" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "hidden_1" in html.read_text()

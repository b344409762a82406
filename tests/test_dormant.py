"""ReDo's τ-dormancy as a verdict: scan, prune's plan, revive and the monitor select the same units,
and those are the units an independent ReDo computation finds.

The reference here is computed from scratch: a multi-output `keras.Model` materialises every site's
activations, each unit's mean |a| over samples (and positions) is divided by the layer's mean of
those, and a unit is dormant when that is ≤ τ (Sokar et al. 2023; google/dopamine's
`weight_recyclers.py` adds 1e-9 to the denominator, as here). Dormant units are planted by
construction: dead units (zero weights, negative bias), units with a tiny constant output, and units
whose incoming weights are a small multiple of another unit's (so their score is that multiple of
its score) — alive, firing on the same samples, and dormant at some τ only.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import deadrelu
from deadrelu.fixes.prune import prune_model
from deadrelu.fixes.prune_plan import plan_pruning
from deadrelu.fixes.revive import revive_model

TAUS = (0.0, 0.025, 0.1)
SITES = ("conv", "h1")


def planted_model() -> keras.Model:
    """Conv2D(8) → Flatten → Dense(16) → Dense(3, softmax), with dead and dormant units planted."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(16, activation="relu", name="h1")(h)
    outputs = keras.layers.Dense(3, activation="softmax", name="out")(h)
    model = keras.Model(inputs, outputs, name="planted")
    conv, h1 = model.get_layer("conv"), model.get_layer("h1")
    kernel, bias = conv.kernel.numpy(), np.zeros(8, np.float32)
    kernel[..., 0], bias[0] = 0.0, -1.0  # dead
    kernel[..., 1] = 1e-3 * kernel[..., 2]  # tiny: dormant at every τ > 0
    kernel[..., 3] = 0.05 * kernel[..., 4]  # 0.05 × a live unit's score
    conv.kernel.assign(kernel)
    conv.bias.assign(bias)
    kernel, bias = h1.kernel.numpy(), np.zeros(16, np.float32)
    kernel[:, :2], bias[:2] = 0.0, -1.0  # dead
    kernel[:, 2], bias[2] = 0.0, 1e-4  # a tiny constant output: alive, dormant at every τ > 0
    kernel[:, 4] = 0.05 * kernel[:, 10]
    kernel[:, 5] = 0.015 * kernel[:, 11]
    h1.kernel.assign(kernel)
    h1.bias.assign(bias)
    out = model.get_layer("out")
    kernel = out.kernel.numpy()
    kernel[[4, 5]] *= 40.0  # the dormant units matter downstream: cutting them flips predictions
    out.kernel.assign(kernel)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def probe_data(n: int = 300) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 6, 6, 2)).astype("float32")


def redo_dormant(model: keras.Model, x: np.ndarray, tau: float) -> dict[str, list[int]]:
    """ReDo's dormant units, computed independently of deadrelu: per site, mean |a| over samples and
    positions, divided by the layer's mean of those (+1e-9), ≤ τ."""
    outputs = [model.get_layer(name).output for name in SITES]
    activations = keras.Model(model.input, outputs)(x, training=False)
    dormant = {}
    for name, a in zip(SITES, activations):
        a = np.abs(keras.ops.convert_to_numpy(a)).astype(np.float64)
        score = a.reshape(-1, a.shape[-1]).mean(axis=0)
        score = score / (score.mean() + 1e-9)
        dormant[name] = [int(u) for u in np.flatnonzero(score <= tau)]
    return dormant


def test_scan_prune_and_revive_select_redo_dormant_units():
    model, x = planted_model(), probe_data()
    before = [w.copy() for w in model.get_weights()]
    found = {}
    for tau in TAUS:
        reference = redo_dormant(model, x, tau)
        report = deadrelu.scan(model, x, dormant=tau, verbose=0)
        assert {s.path: s.dormant for s in report.sites} == reference, tau
        assert report.settings["dormant_threshold"] == tau
        units = sum(s.units for s in report.sites)
        assert report.summary["dormant"] == sum(map(len, reference.values()))
        assert report.summary["dormant_fraction"] == report.summary["dormant"] / units
        # Prune's plan takes the same units (dead ones included).
        assert plan_pruning(model, report, dormant=tau).candidates == {k: v for k, v in reference.items() if v}
        found[tau] = reference
    # Planted by construction: dead units at τ = 0, the tiny ones from 0.025, the 0.05× ones at 0.1.
    assert found[0.0] == {"conv": [0], "h1": [0, 1]}
    assert {1} <= set(found[0.025]["conv"]) and {2, 5} <= set(found[0.025]["h1"])
    assert 4 not in found[0.025]["h1"] and {3} <= set(found[0.1]["conv"]) and {4, 5} <= set(found[0.1]["h1"])
    # Without `dormant`, nothing is listed and the JSON has no `dormant` fields; it round-trips with it.
    plain = deadrelu.scan(model, x, verbose=0)
    assert all(s.dormant is None for s in plain.sites) and "dormant" not in plain.summary
    assert "dormant_threshold" not in plain.settings and "dormant" not in plain.to_dict()["sites"][0]
    report = deadrelu.scan(model, x, dormant=0.1, verbose=0)
    again = deadrelu.Report.from_dict(json.loads(json.dumps(report.to_dict())))
    assert [s.dormant for s in again.sites] == [s.dormant for s in report.sites]

    # Revive re-initialises exactly those units; the outputs change by their removed contribution.
    reference = found[0.1]
    result = revive_model(model, x, dormant=0.1, seed=0)
    assert result.revived == reference and result.dormant == 0.1 and not result.skipped
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # the input is untouched
    expected = contribution_removed(model, reference)
    original = keras.ops.convert_to_numpy(model(x, training=False))
    revived = keras.ops.convert_to_numpy(result.model(x, training=False))
    np.testing.assert_allclose(revived, expected, atol=1e-6)
    check = result.check
    assert not check.enforced and not check.passed and check.samples == len(x)
    assert check.max_abs_diff == pytest.approx(np.abs(original - expected).max(), rel=1e-5)
    flipped = np.mean(original.argmax(-1) != expected.argmax(-1))
    assert 0 < flipped < 0.5 and check.changed_predictions == pytest.approx(flipped)
    assert check.to_dict()["enforced"] is False and "not enforced" in check.describe()
    # Prune removes the same units (each replaced by its mean), and says its check is not enforced.
    labels = np.random.default_rng(1).integers(0, 3, len(x))
    pruned = prune_model(model, x, labels=labels, dormant=0.1)
    assert pruned.removed == reference and not pruned.check.enforced and pruned.to_dict()["check"]["enforced"] is False
    # The dead-only revival still enforces its check, and reports no class change.
    exact = revive_model(model, x, seed=0)
    assert exact.check.passed and exact.check.enforced and exact.check.changed_predictions == 0.0
    assert exact.revived == found[0.0]


def contribution_removed(model: keras.Model, dormant: dict[str, list[int]]) -> np.ndarray:
    """The model's outputs with the dormant units' outgoing weights zeroed: what a ReDo revival
    (new incoming weights, zero outgoing ones) must compute."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    h1, out = clone.get_layer("h1"), clone.get_layer("out")
    kernel = h1.kernel.numpy()
    rows = np.arange(kernel.shape[0]).reshape(4, 4, 8)[..., dormant["conv"]].ravel()  # Flatten of (4, 4, 8)
    kernel[rows] = 0.0
    h1.kernel.assign(kernel)
    kernel = out.kernel.numpy()
    kernel[dormant["h1"]] = 0.0
    out.kernel.assign(kernel)
    # h1's own dormant units now read fewer inputs; their outputs are cut anyway.
    return keras.ops.convert_to_numpy(clone(probe_data(), training=False))


def test_monitor_logs_the_dormant_fraction_and_revives_dormant_units():
    model, x = planted_model(), probe_data()
    y = np.random.default_rng(1).integers(0, 3, len(x))
    monitor = deadrelu.DeadReluMonitor(x[:200], dormant=0.1, on_dead=None, verbose=0)
    history = model.fit(x, y, epochs=2, batch_size=64, callbacks=[monitor], verbose=0)
    logged = history.history["deadrelu/dormant_fraction"]
    assert len(logged) == 2 and "deadrelu/dead_fraction" in history.history
    # The last check ran on the final weights: the scan's number, and ReDo's units.
    report = deadrelu.scan(model, x[:200], dormant=0.1, verbose=0)
    assert logged[-1] == report.summary["dormant_fraction"] > 0
    assert monitor.timeline[-1].dormant == redo_dormant(model, x[:200], 0.1)

    # on_dead="revive" with dormant=: the dormant units (not only the dead ones) are re-initialised.
    model = planted_model()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="sparse_categorical_crossentropy")
    reference = redo_dormant(model, x[:200], 0.1)
    before = {name: model.get_layer(name).kernel.numpy() for name in ("conv", "h1", "out")}
    monitor = deadrelu.DeadReluMonitor(x[:200], dormant=0.1, on_dead="revive", max_dead_fraction=0.0, seed=0, verbose=0)
    model.fit(x, y, epochs=1, batch_size=64, callbacks=[monitor], verbose=0)
    assert monitor.revivals == 1 and monitor.timeline[0].action == "revive"
    assert monitor.timeline[0].dormant == reference
    # h1's rows that read the dormant conv channels are cut (zeroed) for its other units (its revived
    # units may read them); its other rows change only in the columns of its own dormant units,
    # which get new incoming weights (dead ones included).
    cut = np.arange(128).reshape(4, 4, 8)[..., reference["conv"]].ravel()
    others = np.setdiff1d(np.arange(16), reference["h1"])
    new = {name: model.get_layer(name).kernel.numpy() for name in ("conv", "h1", "out")}
    moved = (new["conv"] != before["conv"]).reshape(-1, 8).any(axis=0)
    assert [int(u) for u in np.flatnonzero(moved)] == reference["conv"]
    assert not new["h1"][np.ix_(cut, others)].any() and before["h1"][np.ix_(cut, others)].all()
    kept = np.setdiff1d(np.arange(128), cut)
    moved = (new["h1"][kept] != before["h1"][kept]).any(axis=0)
    assert [int(u) for u in np.flatnonzero(moved)] == reference["h1"]
    assert not new["out"][reference["h1"]].any()  # outgoing weights cut
    assert np.array_equal(new["out"][others], before["out"][others])


def test_monitor_flags_and_stops_on_the_dormant_share(capsys):
    model, x = planted_model(), probe_data(200)
    # 3 of 24 units are dead (12.5%), 8 are dormant at τ = 0.1 (33%): only the dormant share is over 0.2.
    warn = deadrelu.DeadReluMonitor(x, dormant=0.1, on_dead="warn", flag_threshold=0.3, verbose=1)
    check = warn.check(model=model)
    assert check.dead_fraction == 3 / 24 and check.dormant_fraction == 8 / 24
    assert "conv flagged, 3/8 units dormant (≤ 0.1) (38%)" in capsys.readouterr().out  # h1: 5/16 is 31%
    for dormant, stops in ((None, False), (0.1, True)):
        model.stop_training = False
        monitor = deadrelu.DeadReluMonitor(x, dormant=dormant, on_dead="stop", max_dead_fraction=0.2, verbose=0)
        assert monitor.check(model=model).action == ("stop" if stops else None)
        assert model.stop_training is stops


def test_cli_scan_and_revive_dormant(run_cli, tmp_path):
    model, x = planted_model(), probe_data()
    model_path, data = tmp_path / "planted.keras", tmp_path / "probe.npz"
    model.save(model_path)
    np.savez(data, x=x)
    code, out, err = run_cli(["scan", model_path, "--data", data, "--dormant", "0.1", "--json", tmp_path / "s.json"])
    assert code == 0, err
    assert "dormant" in out
    document = json.loads((tmp_path / "s.json").read_text())
    reference = redo_dormant(model, x, 0.1)
    assert {s["path"]: s["dormant"] for s in document["sites"]} == reference
    assert document["summary"]["dormant"] == sum(map(len, reference.values()))

    out_path, summary = tmp_path / "revived.keras", tmp_path / "revive.json"
    argv = ["revive", model_path, "--data", data, "--dormant", "0.1", "--seed", "0", "-o", out_path, "--json", summary]
    code, out, err = run_cli(argv)
    assert code == 0, err
    assert "outputs changed by design: max |Δ| = " in out and "predictions changed on" in out
    result = json.loads(summary.read_text())
    assert result["dormant"] == 0.1 and result["revived"] == reference
    assert result["check"]["max_abs_diff"] > 1e-5 and result["check"]["enforced"] is False
    assert 0.0 <= result["check"]["changed_predictions"] <= 1.0
    revived = keras.models.load_model(out_path)  # plain Keras
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(revived(x, training=False)), contribution_removed(model, reference), atol=1e-6
    )
    # A negative τ is refused with the flag's name.
    code, _, err = run_cli(["revive", model_path, "--data", data, "--dormant", "-1"])
    assert code == 2 and "--dormant" in err

"""JAX: full batches run in groups, one `jax.lax.scan` each (`deadrelu.engine.steps_jax`).

The grouped scan must give the per-batch scan's numbers: counts exactly, sums to 1e-6 — and both
the numpy reference of a plain forward pass.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import deadrelu
from deadrelu.engine import steps_jax
from deadrelu.engine.probe import probe_for


@pytest.fixture(autouse=True)
def _jax_only(backend):
    if backend != "jax":
        pytest.skip("the lax.scan groups are JAX's")


def _model(name="model"):
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(6, name="dense")(h)
    h = keras.ops.relu(h - 0.3)  # an op-level site
    outputs = keras.layers.Dense(3, activation="relu6", name="capped")(h)
    model = keras.Model(inputs, outputs, name=name)
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    return model


def _scan(model, x, batch_size, monkeypatch, largest):
    monkeypatch.setattr(steps_jax, "MAX_GROUP", largest)
    return deadrelu.scan(model, x, batch_size=batch_size, verbose=0)


def test_grouped_scan_equals_per_batch_scan_and_numpy(monkeypatch):
    x = np.random.default_rng(0).normal(size=(297, 6, 6, 2)).astype("float32")
    model, twin = _model(), _model()  # same weights (seeded), same name
    # 14 full batches: a group of 8, one of 4, two alone (fewer than MIN_GROUP); then the short 17
    grouped = _scan(model, x, 20, monkeypatch, 8)
    step = probe_for(model)._step
    assert step._groups is not None and step._groups.size == 8
    assert step._groups.traces == 2 and step.traces == 1  # one program per group size, the per-batch one apart
    alone = _scan(twin, x, 20, monkeypatch, 1)
    assert probe_for(twin)._step._groups is None
    for a, b in zip(grouped.sites, alone.sites):
        assert a.path == b.path and a.dead == b.dead
        for name in ("active_rate", "sample_active_rate", "max_output", "preact_min"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        for name in ("mean_abs", "preact_mean", "preact_std"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-6)
    conv = keras.Model(model.input, model.get_layer("conv").output)(x)
    fires = np.asarray(conv > 0).reshape(-1, 4).mean(0)
    np.testing.assert_allclose(grouped.sites[0].active_rate, fires, rtol=1e-12)
    again = _scan(model, x, 20, monkeypatch, 8)  # the compiled groups are reused
    assert step._groups.traces == 2
    np.testing.assert_array_equal(again.sites[0].active_rate, grouped.sites[0].active_rate)


def test_group_size_follows_the_memory_budget(monkeypatch):
    x = np.random.default_rng(1).normal(size=(64, 6, 6, 2)).astype("float32")
    model = _model()
    monkeypatch.setattr(steps_jax, "GROUP_BYTES", 5 * x[:8].nbytes)  # five batches fit: groups of four
    report = _scan(model, x, 8, monkeypatch, 64)
    assert probe_for(model)._step._groups.size == 4
    few = _model()
    monkeypatch.setattr(steps_jax, "GROUP_BYTES", 3 * x[:8].nbytes)  # groups of two: not worth a program
    _scan(few, x, 8, monkeypatch, 64)
    assert probe_for(few)._step._groups is None
    conv = np.asarray(keras.Model(model.input, model.get_layer("conv").output)(x))
    np.testing.assert_allclose(report.sites[0].max_output, conv.reshape(-1, 4).max(0), rtol=1e-6)

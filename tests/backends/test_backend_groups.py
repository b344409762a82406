"""JAX: full batches run in groups, one `jax.lax.scan` each, and the step's compiler options
(`deadrelu.engine.steps_jax`).

The grouped scan must give the per-batch scan's numbers: counts exactly, sums to 1e-6 — and both
the numpy reference of a plain forward pass. The forward step compiled with YNNPACK's elementwise
fusions must give the default compile's numbers bit for bit on a ReLU / BatchNormalization model, and
an XLA that rejects them its defaults.
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


# -- the step's compiler options (`steps_jax.COMPILER_OPTIONS`) ----------------------------------


def _cnn():
    """Big enough for XLA to hand its elementwise work to YNNPACK (small tensors stay in its own loops)."""
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(32, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(16, 3, name="conv_bn")(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU(max_value=6.0, name="relu6")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(32, activation="relu", name="hidden")(h)
    outputs = keras.layers.Dense(10, activation="softmax", name="classes")(h)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(5)
    model.set_weights([rng.normal(scale=0.3, size=w.shape).astype("float32") for w in model.get_weights()])
    return model


def _compiled_text(model, x) -> str:
    step = probe_for(model)._step
    weights = [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]
    return step._fn.lower(*weights, x, np.ones(len(x), np.float32)).compile().as_text()


def test_the_step_compiles_with_ynnpack_elementwise_fusions_and_gives_the_same_numbers(monkeypatch):
    if not steps_jax._takes_options():
        pytest.skip("this XLA does not take the YNNPACK fusion option (or runs on no CPU)")
    x = np.random.default_rng(6).normal(size=(200, 28, 28, 1)).astype("float32")
    fused, plain = _cnn(), _cnn()
    report = deadrelu.scan(fused, x, batch_size=64, verbose=0)
    texts = [_compiled_text(fused, x[:64])]
    monkeypatch.setattr(steps_jax, "COMPILER_OPTIONS", {})  # jax.jit's defaults
    reference = deadrelu.scan(plain, x, batch_size=64, verbose=0)
    texts.append(_compiled_text(plain, x[:64]))
    # The options take effect: XLA hands more of the step to YNNPACK…
    assert texts[0].count("__ynn_fusion") > texts[1].count("__ynn_fusion")
    # …and every number of the scan is the default compile's, bit for bit.
    assert [s.to_dict() for s in report.sites] == [s.to_dict() for s in reference.sites]
    conv = np.asarray(keras.Model(fused.input, fused.get_layer("conv").output)(x))
    np.testing.assert_allclose(report.sites[0].active_rate, (conv > 0).reshape(-1, 32).mean(0), rtol=1e-12)


def test_an_xla_that_rejects_the_options_compiles_the_step_with_its_defaults(monkeypatch):
    monkeypatch.setattr(steps_jax, "COMPILER_OPTIONS", {"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_FUSION"})
    steps_jax._takes_options.cache_clear()
    try:
        assert not steps_jax._takes_options()
        model, x = _model(), np.random.default_rng(7).normal(size=(40, 6, 6, 2)).astype("float32")
        report = deadrelu.scan(model, x, batch_size=16, verbose=0)
    finally:
        monkeypatch.undo()
        steps_jax._takes_options.cache_clear()
    conv = np.asarray(keras.Model(model.input, model.get_layer("conv").output)(x))
    np.testing.assert_allclose(report.sites[0].active_rate, (conv > 0).reshape(-1, 4).mean(0), rtol=1e-12)


def test_kernel_off_compiles_the_step_with_jax_jits_defaults(monkeypatch):
    if not steps_jax._takes_options():
        pytest.skip("this XLA does not take the YNNPACK fusion option (or runs on no CPU)")
    x = np.random.default_rng(8).normal(size=(64, 28, 28, 1)).astype("float32")
    counts = {}
    for setting in ("auto", "off"):
        monkeypatch.setenv("DEADRELU_KERNEL", setting)
        model = _cnn()
        deadrelu.scan(model, x, batch_size=64, verbose=0)
        counts[setting] = _compiled_text(model, x).count("__ynn_fusion")
    monkeypatch.setattr(steps_jax, "COMPILER_OPTIONS", {})
    plain = _cnn()
    deadrelu.scan(plain, x, batch_size=64, verbose=0)
    assert counts["off"] == _compiled_text(plain, x).count("__ynn_fusion") < counts["auto"]
    monkeypatch.setenv("DEADRELU_KERNEL", "fast")
    with pytest.raises(deadrelu.UsageError, match="DEADRELU_KERNEL='fast'"):
        deadrelu.scan(_cnn(), x, batch_size=64, verbose=0)

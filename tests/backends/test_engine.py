"""The engine on the active Keras backend: scan, gradients, op-level sites, the monitor, revive.

Runs in the main (TensorFlow) test process and again, through tests/test_backends.py, in one
subprocess per other backend (KERAS_BACKEND=jax, torch). Every number is checked against plain
Keras tensors reduced with numpy, and gradients against the backend's own automatic
differentiation.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import deadrelu
from models import (
    L,
    assert_reports_equal,
    assert_site_matches,
    close,
    outputs_of,
    plant_bias,
    random_x,
    reference_grad_stats,
    reference_stats,
    to_numpy,
)

BACKEND = keras.backend.backend()


def _mlp(seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(16, activation="relu", name="d1"),
            L.Dense(12, name="d2"),
            L.ReLU(max_value=1.5, name="capped"),
            L.Dense(3, name="out"),
        ]
    )
    plant_bias(model.get_layer("d1"), {0: -50.0, 5: -50.0, 9: -50.0})  # dead by construction
    plant_bias(model.get_layer("d2"), {2: -50.0})
    return model


def _cnn(seed: int = 1):
    keras.utils.set_random_seed(seed)
    inner = keras.Sequential(
        [keras.Input((6, 6, 8)), L.Conv2D(5, 3, padding="same", activation="relu", name="inner_conv")], name="block"
    )
    inputs = keras.Input((8, 8, 2))
    h = L.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    h = inner(h)
    h = L.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, L.Dense(2, name="head")(h))
    plant_bias(model.get_layer("conv"), {1: -80.0, 6: -80.0})
    return model


class OpRelu(L.Layer):
    """A custom layer that applies ReLU as a function call (an op-level site), spelled
    `ops.relu(z)` or `ops.maximum(z, 0)`."""

    def __init__(self, units: int, maximum: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(units)
        self.maximum = maximum

    def call(self, x):
        z = self.dense(x) - 0.5
        return ops.maximum(z, 0.0) if self.maximum else ops.relu(z)


def test_scan_matches_numpy_on_a_planted_mlp():
    model = _mlp()
    x = random_x((6,), 203, seed=3, scale=2.0)
    report = deadrelu.scan(model, x, batch_size=50)
    d1 = L.Dense(16, name="d1_ref")
    d1.build((None, 6))
    d1.set_weights(model.get_layer("d1").get_weights())
    h1 = np.maximum(to_numpy(d1(x)), 0)
    capped_in = to_numpy(model.get_layer("d2")(h1))
    capped = np.clip(capped_in, 0, 1.5)
    assert [s.path for s in report.sites] == ["d1", "capped"]
    assert_site_matches(report.sites[0], reference_stats([h1]))
    assert_site_matches(report.sites[1], reference_stats([capped], max_value=1.5))
    assert {0, 5, 9} <= set(report.sites[0].dead) and 2 in report.sites[1].dead


def test_scan_matches_numpy_on_a_nested_cnn_with_batch_sizes_that_do_not_divide():
    model = _cnn()
    x = random_x((8, 8, 2), 37, seed=4)
    conv, inner = model.get_layer("conv"), model.get_layer("block")
    expected = outputs_of(model.inputs, [conv.output, inner.output], x)
    report = deadrelu.scan(model, x, batch_size=10)
    assert [s.path for s in report.sites] == ["conv", "block/inner_conv"]
    assert_site_matches(report.sites[0], reference_stats([expected[0]]))
    assert_site_matches(report.sites[1], reference_stats([expected[1]]))
    assert report.sites[0].dead == [1, 6]
    assert_reports_equal(report, deadrelu.scan(model, x, batch_size=37))


@pytest.mark.parametrize("maximum", [False, True], ids=["ops.relu", "ops.maximum"])
def test_op_level_site_is_found_and_measured(maximum):
    keras.utils.set_random_seed(5)
    inputs = keras.Input((4,))
    layer = OpRelu(7, maximum, name="op_relu")
    model = keras.Model(inputs, L.Dense(1)(layer(inputs)))
    plant_bias(layer.dense, {3: -40.0})
    x = random_x((4,), 64, seed=6)
    report = deadrelu.scan(model, x, batch_size=20)
    sites = [s for s in report.sites if s.path.startswith("op_relu")]
    assert [(s.path, s.kind) for s in sites] == (
        [("op_relu:maximum_0", "op:maximum")] if maximum else [("op_relu:relu_0", "op:relu")]
    )
    expected = np.maximum(to_numpy(layer.dense(x)) - 0.5, 0)
    assert_site_matches(sites[0], reference_stats([expected]))
    assert 3 in sites[0].dead


def _site_gradient(head, z, y):
    """∂(Σₙ ℓₙ)/∂z by the backend's own autodiff; ℓₙ = mean squared error of `head(z)`."""

    def loss(z):
        return ops.sum(ops.mean(ops.square(ops.subtract(head(z), ops.convert_to_tensor(y))), axis=-1))

    if BACKEND == "tensorflow":
        import tensorflow as tf

        z = tf.constant(z)
        with tf.GradientTape() as tape:
            tape.watch(z)
            value = loss(z)
        return tape.gradient(value, z).numpy()
    if BACKEND == "jax":
        import jax

        return np.asarray(jax.grad(loss)(z))
    import torch

    z = torch.tensor(z, requires_grad=True)
    loss(z).backward()
    return z.grad.detach().numpy()


def test_gradients_match_the_backends_autodiff():
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((5,)), L.Dense(9, activation="relu", name="hidden"), L.Dense(2, name="out")])
    model.compile(loss="mse")
    plant_bias(model.get_layer("hidden"), {4: -60.0})
    x = random_x((5,), 90, seed=8)
    y = random_x((2,), 90, seed=9)
    report = deadrelu.scan(model, x, labels=y, gradients=True, batch_size=40)
    hidden = L.Dense(9)
    hidden.build((None, 5))
    hidden.set_weights(model.get_layer("hidden").get_weights())
    z = np.maximum(to_numpy(hidden(x)), 0).astype(np.float32)
    grad = to_numpy(_site_gradient(model.get_layer("out"), z, y)) * (z > 0)
    mean_abs, zero_rate = reference_grad_stats([grad])
    site = report.sites[0]
    close(site.grad_mean_abs, mean_abs, "grad_mean_abs")
    close(site.grad_zero_rate, zero_rate, "grad_zero_rate")
    assert site.grad_zero_rate[4] == 1.0  # the planted dead unit passes no gradient
    expected_loss = np.mean(np.mean((to_numpy(model(x)) - y) ** 2, axis=-1))
    assert report.loss == pytest.approx(expected_loss, rel=1e-5)


class _ReadsZTwice(L.Layer):
    """A user's layer with an `activation` that also adds z to its output: ∂ℓ/∂z is not ∂ℓ/∂relu(z) masked."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(units)
        self.activation = keras.activations.relu

    def call(self, x):
        z = self.dense(x)
        return self.activation(z) + 0.5 * z


@pytest.mark.skipif(BACKEND != "torch", reason="the ∂ℓ/∂z shortcut is PyTorch's gradient step")
def test_torch_gradient_statistics_from_the_relus_own_backward_equal_the_masked_output_gradient(monkeypatch):
    """Keras layers' own ReLUs take ∂ℓ/∂z from autograd (no mask pass); every other site keeps
    ∂ℓ/∂output masked where the unit passes gradient. Both give the same statistics."""
    from deadrelu.engine import steps

    keras.utils.set_random_seed(21)
    inputs = keras.Input((9, 9, 3))
    h = L.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    h = L.Conv2D(6, 3, activation="relu6", name="capped")(h)
    h = L.ReLU(name="relu_layer")(L.Conv2D(5, 2, name="before_relu")(h))
    h = _ReadsZTwice(7, name="reads_z_twice")(L.Flatten()(h))
    outputs = L.Dense(3, activation="softmax")(L.Dense(12, activation="relu", name="dense")(h))
    model = keras.Model(inputs, outputs)
    model.compile(loss="categorical_crossentropy")
    plant_bias(model.get_layer("conv"), {2: -1e3})
    x = random_x((9, 9, 3), 70, seed=22)
    y = keras.utils.to_categorical(np.arange(70) % 3, 3)
    decided = []
    shortcut = steps._relu_of_preact

    def spy(site, record):
        decided.append((site.path, shortcut(site, record)))
        return decided[-1][1]

    monkeypatch.setattr(steps, "_relu_of_preact", spy)
    fast = deadrelu.scan(model, x, labels=y, gradients=True, batch_size=32)
    assert {path for path, used in decided if used} == {"conv", "dense"}
    assert {path for path, used in decided if not used} == {"capped", "relu_layer", "reads_z_twice"}
    monkeypatch.setattr(steps, "_relu_of_preact", lambda site, record: False)
    masked = deadrelu.scan(model, x, labels=y, gradients=True, batch_size=32)
    for a, b in zip(fast.sites, masked.sites):
        assert a.path == b.path
        np.testing.assert_array_equal(a.grad_zero_rate, b.grad_zero_rate, err_msg=a.path)
        close(a.grad_mean_abs, b.grad_mean_abs, f"{a.path} grad_mean_abs")
    conv = fast.sites[0]
    assert conv.grad_zero_rate[2] == 1.0 and conv.grad_mean_abs.max() > 0


def _all_dead_classifier(seed: int, samples: int, units: int = 24, optimizer: str = "adam"):
    """A compiled classifier whose hidden ReLUs are all dead (bias -30), and its data."""
    keras.utils.set_random_seed(seed)
    x = random_x((8,), samples, seed=seed + 1)
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential(
        [
            keras.Input((8,)),
            L.Dense(units, activation="relu", name="hidden", bias_initializer=keras.initializers.Constant(-30.0)),
            L.Dense(2, activation="softmax"),
        ]
    )
    model.compile(optimizer, "sparse_categorical_crossentropy")
    return model, x, y


def test_monitor_inside_fit_revives_and_logs():
    model, x, y = _all_dead_classifier(seed=10, samples=256)
    monitor = deadrelu.DeadReluMonitor(x[:128], on_dead="revive", verbose=0)
    history = model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[monitor])
    fractions = history.history["deadrelu/dead_fraction"]
    assert fractions[0] == 1.0  # every unit dead at the end of epoch 1: revived there
    assert fractions[1] < 0.5  # the revived units stay revived in the backend's training state
    after = deadrelu.scan(model, x[:128])
    assert after.sites[0].dead_fraction == pytest.approx(fractions[1])


def test_monitor_stop_ends_training():
    model, x, y = _all_dead_classifier(seed=12, samples=128, units=16, optimizer="sgd")
    history = model.fit(x, y, epochs=5, verbose=0, callbacks=[deadrelu.DeadReluMonitor(x, on_dead="stop", verbose=0)])
    assert len(history.history["loss"]) == 1


def test_revive_keeps_outputs_and_renews_dead_units():
    model = _mlp()
    x = random_x((6,), 120, seed=14, scale=2.0)
    before = to_numpy(model(x))
    result = deadrelu.revive_model(model, x, seed=0)
    revived = result.model
    np.testing.assert_allclose(to_numpy(revived(x)), before, rtol=1e-5, atol=1e-5)
    kernel_before = to_numpy(model.get_layer("d1").kernel)
    kernel_after = to_numpy(revived.get_layer("d1").kernel)
    for unit in (0, 5, 9):
        assert not np.allclose(kernel_after[:, unit], kernel_before[:, unit])
    alive = [u for u in range(16) if u not in (0, 5, 9)]
    np.testing.assert_array_equal(kernel_after[:, alive], kernel_before[:, alive])
    assert not {0, 5, 9} & set(deadrelu.scan(revived, x).sites[0].dead)


def test_gradients_reach_sites_inside_frozen_layers():
    # ∂ℓ/∂z does not depend on whether the weights below a site train: a frozen feature
    # extractor under a trainable head (transfer learning) must give the same site gradients.
    keras.utils.set_random_seed(15)
    base = keras.Sequential([keras.Input((6,)), L.Dense(10, activation="relu", name="frozen_relu")], name="base")
    model = keras.Sequential([keras.Input((6,)), base, L.Dense(3, name="head")])
    model.compile(loss="mse")
    x = random_x((6,), 40, seed=16)
    y = random_x((3,), 40, seed=17)
    trainable = deadrelu.scan(model, x, labels=y, gradients=True, batch_size=16)
    base.trainable = False
    frozen = deadrelu.scan(model, x, labels=y, gradients=True, batch_size=16)
    site = frozen.sites[0]
    assert site.path == "base/frozen_relu" and site.grad_mean_abs.max() > 0
    close(site.grad_mean_abs, trainable.sites[0].grad_mean_abs, "grad_mean_abs")
    close(site.grad_zero_rate, trainable.sites[0].grad_zero_rate, "grad_zero_rate")


def test_monitor_checks_between_batches_and_revives():
    # check_freq in batches: on JAX the weights live outside the model mid-epoch; the check must
    # see the current ones, and a revival must reach the training that goes on.
    model, x, y = _all_dead_classifier(seed=18, samples=256)
    monitor = deadrelu.DeadReluMonitor(x[:128], check_freq=2, on_dead="revive", verbose=0)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[monitor])
    assert len(monitor.timeline) == 4  # 8 batches, a check every 2
    assert monitor.timeline[0].dead_fraction == 1.0 and monitor.timeline[0].action == "revive"
    assert monitor.timeline[1].dead_fraction < 0.5  # the revived weights went on training
    assert deadrelu.scan(model, x[:128]).dead_fraction == pytest.approx(monitor.timeline[-1].dead_fraction)


def test_lstm_and_gru_sites_match_a_step_by_step_reference():
    from preact_reference import assert_preact_matches, reference_preact
    from recurrent_reference import gru_steps, lstm_steps, plant_candidate

    keras.utils.set_random_seed(8)
    inputs = keras.Input((4, 3))
    lstm = L.LSTM(5, activation="relu", return_sequences=True, name="lstm")
    gru = L.GRU(4, activation="relu", go_backwards=True, name="gru")
    model = keras.Model(inputs, L.Dense(2)(gru(lstm(inputs))))
    # -20, not -100: on JAX without x64 the sums are float32, and a unit's preact_std loses about
    # (mean / std)² × 1e-7 of its digits (docs/backends.md); -20 keeps that under the 1e-4 compared.
    plant_candidate(lstm, [1], 4, 2, -20.0)
    plant_candidate(gru, [3], 3, 2, -20.0)
    x = random_x((4, 3), 29, seed=9, scale=1.5)
    report = deadrelu.scan(model, x, batch_size=10)
    assert [s.path for s in report.sites] == ["lstm:candidate", "lstm:state", "gru:candidate"]
    candidates, states = lstm_steps(lstm, x)
    [lstm_out] = outputs_of(model.inputs, [lstm.output], x)
    expected = {
        "lstm:candidate": candidates,
        "lstm:state": states,
        "gru:candidate": gru_steps(gru, lstm_out, backwards=True),
    }
    for path, zs in expected.items():
        site = report.site(path)
        assert_site_matches(site, reference_stats([np.maximum(z, 0.0).astype(np.float32) for z in zs]))
        assert_preact_matches(site, reference_preact(zs))
    # The planted units (others may be dead at this initialisation too, as the reference says).
    assert 1 in report.site("lstm:candidate").dead and 3 in report.site("gru:candidate").dead


def test_masked_go_backwards_and_bidirectional_recurrent_sites_match_the_reference():
    """A masked `go_backwards` GRU and a masked `Bidirectional` LSTM: PyTorch's unrolled loop cannot
    run them (Keras flips a tuple), so there the layer keeps its loop and its shape step is not counted."""
    from preact_reference import assert_preact_matches, reference_preact
    from recurrent_reference import gru_steps, lstm_steps, plant_candidate

    keras.utils.set_random_seed(12)
    inputs = keras.Input((3, 2))
    gru = L.GRU(3, activation="relu", return_sequences=True, go_backwards=True, name="gru")
    bi = L.Bidirectional(L.LSTM(2, activation="relu", name="inner"), name="bi")
    model = keras.Model(inputs, L.Dense(2)(bi(gru(L.Masking(0.0)(inputs)))))
    plant_candidate(gru, [2], 3, 2, -20.0)
    x = random_x((3, 2), 17, seed=13, scale=1.5)
    x[:6, -1:] = 0.0  # padding, masked: the state carries over those steps
    mask = np.any(x != 0.0, axis=-1)
    report = deadrelu.scan(model, x, batch_size=10)
    [gru_out] = outputs_of(model.inputs, [gru.output], x)
    forward, backward = bi.forward_layer, bi.backward_layer
    expected = {
        "gru:candidate": gru_steps(gru, x, mask, backwards=True),
        "bi/forward_inner:candidate": lstm_steps(forward, gru_out, mask)[0],
        "bi/forward_inner:state": lstm_steps(forward, gru_out, mask)[1],
        "bi/backward_inner:candidate": lstm_steps(backward, gru_out, mask, backwards=True)[0],
        "bi/backward_inner:state": lstm_steps(backward, gru_out, mask, backwards=True)[1],
    }
    assert [s.path for s in report.sites] == list(expected)
    for path, zs in expected.items():
        site = report.site(path)
        assert site.calls == len(zs) == 3, path
        assert_site_matches(site, reference_stats([np.maximum(z, 0.0).astype(np.float32) for z in zs]))
        assert_preact_matches(site, reference_preact(zs))
    assert 2 in report.site("gru:candidate").dead

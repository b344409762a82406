"""Recurrent sites: the ReLUs of `LSTM` and `GRU` layers (and `SimpleRNN`) measured per unit over samples × time steps.

Each model plants dead units by construction (a candidate bias of -100) and is checked against an
independent step-by-step computation in numpy over the layer's own weights
(tests/recurrent_reference.py): per-unit counts equal exactly, rates to 1e-5,
pre-activation statistics (margins) to 1e-5 — and the gradient statistics against
`tf.GradientTape` on the same written-out recurrence.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import deadrelu
from models import L, assert_site_matches, close, reference_grad_stats, reference_stats
from preact_reference import assert_preact_matches, reference_preact
from recurrent_reference import gru_steps, lstm_steps, plant_candidate

N, T, F = 37, 7, 4  # samples (the batch size does not divide them), time steps, features
BATCH = 16


def data(seed=0, scale=1.5):
    return np.random.default_rng(seed).normal(scale=scale, size=(N, T, F)).astype("float32")


def check(site, zs, dead=None):
    outputs = [np.maximum(z, 0.0).astype(np.float32) for z in zs]
    assert_site_matches(site, reference_stats(outputs))
    assert_preact_matches(site, reference_preact(zs))
    assert site.calls == len(zs) and site.params["time_steps"] == len(zs)
    if dead is not None:
        assert site.dead == dead


@pytest.mark.parametrize("return_sequences", [False, True])
def test_lstm_candidate_and_state_match_a_step_by_step_reference(return_sequences):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((T, F))
    lstm = L.LSTM(6, activation="relu", return_sequences=return_sequences, name="lstm_1")
    h = lstm(inputs)
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(h) if return_sequences else h))
    plant_candidate(lstm, [1, 4], 4, 2)
    x = data(1)
    report = deadrelu.scan(model, x, batch_size=BATCH)
    assert [(s.path, s.layer, s.params.get("role")) for s in report.sites] == [
        ("lstm_1:candidate", "LSTM", "candidate"),
        ("lstm_1:state", "LSTM", "state"),
    ]
    candidates, states = lstm_steps(lstm, x)
    check(report.site("lstm_1:candidate"), candidates, dead=[1, 4])
    check(report.site("lstm_1:state"), states)
    assert {1, 4} <= set(report.site("lstm_1:state").dead)  # no candidate, no state: c stays 0


def test_gru_masking_go_backwards_stacked_and_bidirectional():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((T, F))
    masked = L.Masking(0.0)(inputs)
    gru = L.GRU(5, activation="relu", return_sequences=True, go_backwards=True, name="gru_1")
    lstm = L.LSTM(4, activation="relu", return_sequences=True, name="lstm_2")
    bi = L.Bidirectional(L.GRU(3, activation="relu", name="inner"), name="bi")
    model = keras.Model(inputs, L.Dense(2)(bi(lstm(gru(masked)))))
    plant_candidate(gru, [0, 3], 3, 2)
    x = data(2)
    x[:5, -3:] = 0.0  # padding, masked: the state carries over those steps
    mask = np.any(x != 0.0, axis=-1)
    report = deadrelu.scan(model, x, batch_size=BATCH)
    paths = [s.path for s in report.sites]
    assert paths == [
        "gru_1:candidate",
        "lstm_2:candidate",
        "lstm_2:state",
        "bi/forward_inner:candidate",
        "bi/backward_inner:candidate",
    ]
    # The layers' inputs, for the references: each layer reads the one before (masked the same way).
    [gru_out, lstm_out] = keras.Model(inputs, [gru.output, lstm.output]).predict(x, verbose=0)
    check(report.site("gru_1:candidate"), gru_steps(gru, x, mask, backwards=True), dead=[0, 3])
    candidates, states = lstm_steps(lstm, gru_out, mask)
    check(report.site("lstm_2:candidate"), candidates)
    check(report.site("lstm_2:state"), states)
    check(report.site("bi/forward_inner:candidate"), gru_steps(bi.forward_layer, lstm_out, mask))
    check(report.site("bi/backward_inner:candidate"), gru_steps(bi.backward_layer, lstm_out, mask, backwards=True))
    assert not [o for o in report.others if o.layer_class in ("LSTM", "GRU")]


def test_lstm_gradient_statistics_match_gradient_tape():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((T, F))
    lstm = L.LSTM(5, activation="relu", name="lstm_g")
    head = L.Dense(3, activation="softmax", name="head")
    model = keras.Model(inputs, head(lstm(inputs)))
    plant_candidate(lstm, [2], 4, 2)
    x = data(3)
    y = keras.utils.to_categorical(np.arange(N) % 3, 3)
    report = deadrelu.scan(model, x, labels=y, gradients=True, loss="categorical_crossentropy", batch_size=BATCH)
    # The recurrence written out with TensorFlow ops. The gradient statistics are of what reaches
    # the unit through each step's two ReLUs, ∂ℓ/∂a · 1[z > 0] (docs/report-format.md): for the
    # candidate that is ∂ℓ/∂z itself; the cell state c also reaches the next step around its ReLU
    # (f·c), so there ∂ℓ/∂a of the watched output is taken and masked.
    w, u, b = (tf.constant(a) for a in lstm.get_weights())
    n = lstm.units
    with tf.GradientTape(persistent=True) as tape:
        h = c = tf.zeros((N, n))
        candidates, states = [], []
        for t in range(T):
            z = tf.constant(x[:, t]) @ w + h @ u + b
            i, f, o = tf.sigmoid(z[:, :n]), tf.sigmoid(z[:, n : 2 * n]), tf.sigmoid(z[:, 3 * n :])
            zc = z[:, 2 * n : 3 * n]
            tape.watch(zc)
            candidates.append(zc)
            c = f * c + i * tf.nn.relu(zc)
            a = tf.nn.relu(c)
            tape.watch(a)
            states.append((a, c))
            h = o * a
        total = tf.reduce_sum(keras.losses.categorical_crossentropy(y, head(h)))
    gradients = {
        "lstm_g:candidate": [tape.gradient(total, z).numpy() for z in candidates],
        "lstm_g:state": [tape.gradient(total, a).numpy() * (c.numpy() > 0) for a, c in states],
    }
    for path, grads in gradients.items():
        mean_abs, zero_rate = reference_grad_stats(grads)
        site = report.site(path)
        close(site.grad_mean_abs, mean_abs, f"{path}: grad_mean_abs")
        close(site.grad_zero_rate, zero_rate, f"{path}: grad_zero_rate")
    assert report.site("lstm_g:candidate").grad_zero_rate[2] == 1.0


def test_recurrent_layers_are_left_as_they_were():
    keras.utils.set_random_seed(4)
    inputs = keras.Input((T, F))
    lstm = L.LSTM(3, activation="relu", name="lstm")
    model = keras.Model(inputs, lstm(inputs))
    x = data(4)
    before = model.predict(x, verbose=0)
    deadrelu.scan(model, x)
    assert lstm.unroll is False and lstm.cell.activation is keras.activations.relu
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)


def test_patch_to_leaky_rewrites_the_cell_activation_and_the_file_loads_in_plain_keras(tmp_path):
    keras.utils.set_random_seed(5)
    inputs = keras.Input((T, F))
    lstm = L.LSTM(4, activation="relu", return_sequences=True, name="lstm")
    bi = L.Bidirectional(L.GRU(3, activation="relu", return_sequences=True, name="inner"), name="bi")
    model = keras.Model(inputs, L.Dense(2)(L.SimpleRNN(3, activation="relu", name="rnn")(bi(lstm(inputs)))))
    plant_candidate(lstm, [0], 4, 2)
    x = data(5)
    result = deadrelu.patch_model(model, "leaky", alpha=0.05, data=x)
    assert result.skipped == {} and result.check.passed and result.check.max_abs_diff == 0.0  # slope 0: the same
    paths = ["lstm:candidate", "lstm:state", "bi/forward_inner:candidate", "bi/backward_inner:candidate", "rnn"]
    assert [r.path for r in result.rewrites] == paths
    assert result.rewrites[0].new == "LSTM(activation=LeakyReLU(negative_slope=0.05))"
    path = tmp_path / "leaky.keras"
    result.model.save(path)
    plain = keras.models.load_model(path)  # no custom objects
    np.testing.assert_allclose(plain.predict(x, verbose=0), result.model.predict(x, verbose=0), rtol=0, atol=1e-6)
    # The written model: the LSTM step by step with a 0.05 slope where the ReLU was.
    cell = plain.get_layer("lstm")
    assert isinstance(cell.cell.activation, L.LeakyReLU) and cell.cell.activation.negative_slope == 0.05
    w, u, b = (a.astype(np.float64) for a in cell.get_weights())
    h = c = np.zeros((N, 4))
    leaky = lambda v: np.where(v > 0, v, 0.05 * v)  # noqa: E731
    for t in range(T):
        z = x[:, t].astype(np.float64) @ w + h @ u + b
        i, f, o = 1 / (1 + np.exp(-z[:, :4])), 1 / (1 + np.exp(-z[:, 4:8])), 1 / (1 + np.exp(-z[:, 12:]))
        c = f * c + i * leaky(z[:, 8:12])
        h = o * leaky(c)
    [out] = [keras.Model(plain.inputs, plain.get_layer("lstm").output).predict(x, verbose=0)[:, -1]]
    np.testing.assert_allclose(out, h, rtol=1e-4, atol=1e-5)
    assert [s.path for s in deadrelu.scan(plain, x).sites] == []  # nothing left to die
    refused = deadrelu.patch_model(model, "prelu", data=x)
    assert not refused.changed and "cannot learn a slope per unit (PReLU)" in refused.skipped["lstm:candidate"]


def test_prune_keeps_recurrent_units():  # revive revives them: tests/test_revive_recurrent.py
    keras.utils.set_random_seed(5)
    inputs = keras.Input((T, F))
    lstm = L.LSTM(4, activation="relu", return_sequences=True, name="lstm")
    model = keras.Model(inputs, L.Dense(2)(L.GRU(3, activation="relu", name="gru")(lstm(inputs))))
    plant_candidate(lstm, [0], 4, 2)
    x = data(5)
    report = deadrelu.scan(model, x)
    pruned = deadrelu.prune_model(model, report, data=x)
    assert pruned.kept["lstm:candidate"] == [0] and pruned.kept["lstm:state"] == [0]

"""Pre-activation statistics (margin, preact_mean, preact_std, preact_min) on the active Keras backend.

Runs on TensorFlow in the main suite and on JAX and PyTorch through tests/test_backends.py. The
pre-activations are materialised with plain Keras (linear copies of fused layers, sub-models,
direct layer calls, a SimpleRNN's recurrence in numpy) and reduced with numpy
(tests/preact_reference.py). The cases take the engine's per-backend paths: JAX's compiled batch
filled up with copies of the last batch's samples (padding), reductions in place over channels-first
feature maps, op-level ReLUs, the unrolled SimpleRNN, TimeDistributed, and the gradient step (on JAX
the outputs and pre-activations leave the differentiated function as its aux).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import deadrelu
from models import L, linear_clone, one_hot, outputs_of, plant_bias, random_x, randomize_batchnorm, to_numpy
from preact_reference import RTOL, assert_preact_matches, reference_preact

BACKEND = keras.backend.backend()
N, BATCH = 37, 10  # the batch size does not divide the samples


def _float32_sums() -> bool:
    """JAX without `jax_enable_x64` sums a batch in float32 (docs/report-format.md)."""
    if BACKEND != "jax":
        return False
    import jax

    return not jax.config.jax_enable_x64


def check(site, calls, *, axis: int = -1, threshold: float = 0.0) -> None:
    expected = reference_preact(calls, channel_axis=axis, threshold=threshold)
    if _float32_sums():
        # E[z²] − E[z]² of float32 sums keeps about 7 digits of E[z²]: compare the variance on that scale.
        np.testing.assert_allclose(site.margin, expected["margin"], rtol=RTOL, atol=1e-5)
        np.testing.assert_allclose(site.preact_min, expected["preact_min"], rtol=RTOL, atol=1e-5)
        np.testing.assert_allclose(site.preact_mean, expected["preact_mean"], rtol=1e-5, atol=1e-5)
        scale = expected["preact_mean"] ** 2 + expected["preact_std"] ** 2
        np.testing.assert_allclose(site.preact_std**2, expected["preact_std"] ** 2, rtol=1e-4, atol=1e-6 * scale.max())
    else:
        assert_preact_matches(site, expected)
    assert sorted(np.flatnonzero(np.asarray(site.margin) <= 0)) == site.dead, site.path


def test_fused_conv_with_planted_units_and_padding():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((7, 6, 3))
    conv = L.Conv2D(5, 3, activation="relu", name="conv")
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(conv(inputs))))
    weights = to_numpy(conv.kernel).copy()
    weights[..., 3] = 0.0  # unit 3: z is its bias, 0.25, everywhere
    conv.kernel.assign(weights)
    plant_bias(conv, {1: -100.0, 3: 0.25})
    x = random_x((7, 6, 3), N, 1, scale=2.0)
    z = to_numpy(linear_clone(conv, (None, 7, 6, 3))(x))
    site = deadrelu.scan(model, x, batch_size=BATCH).sites[0]
    check(site, [z])
    assert site.dead == [1] and site.margin[1] < -90
    assert site.preact_std[3] == 0.0 and site.preact_min[3] == site.margin[3] == np.float32(0.25)
    again = deadrelu.scan(model, x, batch_size=N).sites[0]  # no padding on JAX
    check(again, [z])
    np.testing.assert_array_equal(again.margin, site.margin)
    np.testing.assert_array_equal(again.preact_min, site.preact_min)


def test_channels_first_relu_with_threshold_and_cap():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((3, 7, 8))
    pre = L.Conv2D(4, 3, data_format="channels_first", name="pre")
    site_layer = L.ReLU(threshold=0.3, max_value=2.0, name="site")
    h = site_layer(pre(inputs))
    model = keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D(data_format="channels_first")(h)))
    plant_bias(pre, {2: -100.0})
    x = random_x((3, 7, 8), N, 3, scale=2.0)
    [z] = outputs_of(model.inputs, [site_layer.input], x)
    site = deadrelu.scan(model, x, batch_size=BATCH).sites[0]
    assert site.params["channel_axis"] == 1
    check(site, [z], axis=1, threshold=0.3)


def test_batchnorm_then_relu6():
    keras.utils.set_random_seed(4)
    inputs = keras.Input((6,))
    bn = L.BatchNormalization(name="bn")
    site_layer = L.Activation("relu6", name="site")
    model = keras.Model(inputs, L.Dense(2)(site_layer(bn(L.Dense(5)(inputs)))))
    randomize_batchnorm(bn, np.random.default_rng(4), beta={0: -100.0})
    x = random_x((6,), N, 5, scale=3.0)
    [z] = outputs_of(model.inputs, [site_layer.input], x)
    check(deadrelu.scan(model, x, batch_size=BATCH).sites[0], [z])


class OpRelus(L.Layer):
    """ReLUs applied as function calls: keras.ops.relu, keras.activations.relu with threshold and cap, relu6."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a, self.b, self.c = L.Dense(5, name="a"), L.Dense(3, name="b"), L.Dense(4, name="c")

    def call(self, x):
        h = [
            ops.relu(self.a(x) - 0.5),
            keras.activations.relu(self.b(x), threshold=0.3, max_value=2.0),
            ops.relu6(self.c(x) * 3.0),
        ]
        return ops.concatenate(h, axis=-1)


def _op_level():
    keras.utils.set_random_seed(6)
    inputs = keras.Input((6,))
    layer = OpRelus(name="ops")
    model = keras.Model(inputs, L.Dense(2, name="out")(layer(inputs)))
    plant_bias(layer.a, {1: -100.0})
    x = random_x((6,), N, 7, scale=2.0)
    zs = [to_numpy(layer.a(x)) - 0.5, to_numpy(layer.b(x)), to_numpy(layer.c(x)) * 3.0]
    return model, x, zs


@pytest.mark.parametrize("gradients", [False, True], ids=["forward", "gradients"])
def test_op_level_relus(gradients):
    model, x, zs = _op_level()
    labels = None
    if gradients:
        model.compile(loss="categorical_crossentropy")
        labels = one_hot(np.arange(N) % 2, 2)
    report = deadrelu.scan(model, x, labels=labels, gradients=gradients, batch_size=BATCH)
    assert report.has_gradients is gradients
    for k, (z, threshold) in enumerate(zip(zs, (0.0, 0.3, 0.0))):
        check(report.site(f"ops:relu_{k}"), [z], threshold=threshold)


def test_simple_rnn_and_time_distributed():
    keras.utils.set_random_seed(8)
    inputs = keras.Input((4, 3))
    rnn = L.SimpleRNN(5, activation="relu", return_sequences=True, name="rnn")
    dense = L.Dense(4, activation="relu", name="inner")
    h = L.TimeDistributed(dense, name="td")(rnn(inputs))
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(h)))
    w, u, b = rnn.get_weights()
    b[2] = -100.0
    rnn.set_weights([w, u, b])
    x = random_x((4, 3), N, 9, scale=2.0)
    w, u, b = (v.astype(np.float64) for v in rnn.get_weights())
    state, zs = np.zeros((N, 5)), []
    for t in range(4):
        zs.append(x[:, t].astype(np.float64) @ w + state @ u + b)
        state = np.maximum(zs[-1], 0.0)
    [sequence] = outputs_of(model.inputs, [rnn.output], x)
    report = deadrelu.scan(model, x, batch_size=BATCH)
    check(report.site("rnn"), zs)
    check(report.site("td/inner"), [to_numpy(linear_clone(dense, (None, 4, 5))(sequence))])

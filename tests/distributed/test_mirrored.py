"""`MirroredStrategy` on 2 and 3 logical CPUs: the scan, the monitor and revive equal one device's.

Run by tests/test_distribute.py in a process whose CPU is split into 3 logical devices (see
conftest.py). Every distributed number is compared with a plain single-device scan of the same
weights on the same data: counts exactly, float sums to 1e-6 relative.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import deadrelu
from deadrelu.engine.distribute import describe, resolve_strategy

L = keras.layers
N = 101  # no batch size below divides it, and 101 = 3·33 + 2 leaves replicas uneven


def mirrored(replicas: int):
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])


def cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            L.Conv2D(6, 3, activation="relu", name="conv"),
            L.MaxPooling2D(2),
            L.Flatten(),
            L.Dense(12, activation="relu", name="dense"),
            L.Dense(3, activation="softmax", name="out"),
        ],
        name="cnn",
    )


def nested():
    inner = keras.Sequential(
        [keras.Input((8, 8, 2)), L.Conv2D(5, 3, name="c"), L.ReLU(name="r"), L.GlobalAveragePooling2D()],
        name="block",
    )
    x = keras.Input((8, 8, 2))
    h = L.Dense(7, activation="relu", name="head")(inner(x))
    return keras.Model(x, L.Dense(3, activation="softmax", name="out")(h), name="nested")


def batchnorm():
    x = keras.Input((8, 8, 2))
    h = L.Conv2D(6, 3, use_bias=False, name="conv")(x)
    h = L.BatchNormalization(name="bn")(h)
    h = L.Activation("relu", name="act")(h)
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(x, L.Dense(3, activation="softmax", name="out")(h), name="bn_model")


class OpRelus(L.Layer):
    """ReLUs applied as function calls (op-level sites): keras.ops and tf.nn."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(4, 3, name="conv")

    @property
    def bias(self):  # where make_pair plants the dead units
        return self.conv.bias

    def call(self, x):
        h = self.conv(x)
        return keras.ops.relu(h - 0.1) + tf.nn.relu(h)


def op_level():
    x = keras.Input((8, 8, 2))
    h = L.GlobalAveragePooling2D()(OpRelus(name="ops")(x))
    return keras.Model(x, L.Dense(3, activation="softmax", name="out")(h), name="op_model")


BUILDERS = {"cnn": cnn, "nested": nested, "batchnorm": batchnorm, "op_level": op_level}


def make_pair(builder, strategy, seed: int = 0):
    """The same model twice: plain, and built in `strategy`'s scope, with equal weights (some units dead)."""
    keras.utils.set_random_seed(seed)
    plain = builder()
    for layer in keras_layers(plain):  # plant dead units: very negative biases on a third of the channels
        bias = getattr(layer, "beta", None) if isinstance(layer, L.BatchNormalization) else getattr(layer, "bias", None)
        if bias is not None and layer.name != "out":
            value = np.array(bias.numpy())
            value[::3] = -50.0
            bias.assign(value)
        if isinstance(layer, L.BatchNormalization):  # inference uses the moving statistics: make them matter
            layer.moving_mean.assign(np.linspace(-0.5, 0.5, layer.moving_mean.shape[0]).astype("float32"))
            layer.moving_variance.assign(np.linspace(0.5, 2.0, layer.moving_variance.shape[0]).astype("float32"))
    weights = plain.get_weights()
    plain.compile(loss="sparse_categorical_crossentropy")
    with strategy.scope():
        distributed = builder()
        distributed.set_weights(weights)
        distributed.compile(loss="sparse_categorical_crossentropy")
    return plain, distributed


def keras_layers(model):
    for layer in model.layers:
        yield from keras_layers(layer) if isinstance(layer, keras.Model) else [layer]


def data(seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (N, 8, 8, 2)).astype("float32")
    y = rng.integers(0, 3, N)
    return x, y


def assert_same(plain, distributed, *, gradients: bool) -> None:
    assert distributed.data["samples"] == plain.data["samples"] == N
    assert distributed.summary == plain.summary
    assert [s.path for s in distributed.sites] == [s.path for s in plain.sites]
    assert plain.summary["dead"] > 0  # the planted units: the comparison covers dead and live units
    for a, b in zip(plain.sites, distributed.sites):
        assert (a.dead, a.dying, a.saturated) == (b.dead, b.dying, b.saturated), a.path
        np.testing.assert_array_equal(b.fires, a.fires, err_msg=a.path)
        np.testing.assert_array_equal(b.sample_active_rate, a.sample_active_rate, err_msg=a.path)
        np.testing.assert_allclose(b.mean_abs, a.mean_abs, rtol=1e-6, atol=0, err_msg=a.path)
        np.testing.assert_allclose(b.max_output, a.max_output, rtol=1e-6, atol=0, err_msg=a.path)
        if gradients:
            assert a.grad_mean_abs is not None and b.grad_mean_abs is not None
            np.testing.assert_array_equal(b.grad_zero_rate, a.grad_zero_rate, err_msg=a.path)
            np.testing.assert_allclose(b.grad_mean_abs, a.grad_mean_abs, rtol=1e-6, atol=0, err_msg=a.path)
    if gradients:
        for la, lb in zip(plain.layer_gradients, distributed.layer_gradients):
            assert la["path"] == lb["path"]
            # A norm of weight-gradient sums whose terms cancel (signed): summed in another order on
            # several replicas, it keeps 5 digits, not 6 (1.1e-6 measured on the BatchNorm model).
            np.testing.assert_allclose(lb["grad_norm"], la["grad_norm"], rtol=1e-5)


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_scan_on_replicas_equals_one_device(name, replicas):
    strategy = mirrored(replicas)
    plain, distributed = make_pair(BUILDERS[name], strategy)
    assert resolve_strategy(None, distributed) is strategy  # the default: the model's own strategy
    x, y = data()
    for batch_size in (32, 4):  # last batches of 5 and 1 samples: some replicas get none
        for gradients in (False, True):
            labels = y if gradients else None
            expected = deadrelu.scan(plain, x, labels, batch_size=batch_size, gradients=gradients)
            got = deadrelu.scan(distributed, x, labels, batch_size=batch_size, gradients=gradients)
            assert got.settings["strategy"] == {"name": "MirroredStrategy", "replicas": replicas, "workers": 1}
            assert_same(expected, got, gradients=gradients)


@pytest.mark.parametrize("replicas", [2, 3])
def test_datasets_and_distributed_datasets_equal_arrays(replicas):
    strategy = mirrored(replicas)
    plain, distributed = make_pair(cnn, strategy, seed=3)
    x, y = data(2)
    expected = deadrelu.scan(plain, x, y, batch_size=16, gradients=True)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    assert_same(expected, deadrelu.scan(distributed, dataset, gradients=True), gradients=True)
    spread = strategy.experimental_distribute_dataset(dataset)
    report = deadrelu.scan(distributed, spread, gradients=True)
    assert report.data["source"] == "tf.distribute.DistributedDataset"
    assert_same(expected, report, gradients=True)
    inputs_only = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(x).batch(10))
    assert_same(deadrelu.scan(plain, x), deadrelu.scan(distributed, inputs_only), gradients=False)


def test_a_strategy_passed_explicitly_and_describe():
    strategy = mirrored(2)
    plain, distributed = make_pair(cnn, strategy, seed=4)
    x, _ = data(4)
    assert_same(deadrelu.scan(plain, x), deadrelu.scan(distributed, x, strategy=strategy), gradients=False)
    assert describe(strategy) == "strategy: MirroredStrategy, 2 replicas on 2 devices"
    with pytest.raises(deadrelu.UsageError, match=r"strategy\.scope\(\)"):
        deadrelu.scan(plain, x, strategy=strategy)  # built outside the scope
    with pytest.raises(deadrelu.UsageError, match="was not built under a strategy"):
        deadrelu.scan(plain, strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(x).batch(8)))


def replicas_identical(model, strategy) -> int:
    """Asserts every variable of `model` (and its optimizer) holds the same value on every replica."""
    checked = 0
    variables = list(model.variables) + list(getattr(model.optimizer, "variables", []))
    with strategy.scope():
        for variable in variables:
            copies = [np.asarray(v) for v in strategy.experimental_local_results(getattr(variable, "value", variable))]
            assert len(copies) == strategy.num_replicas_in_sync, variable.path
            for copy in copies[1:]:
                np.testing.assert_array_equal(copy, copies[0], err_msg=variable.path)
            checked += 1
    return checked


def fit_with_monitor(on_dead: str, replicas: int = 2, epochs: int = 3):
    strategy = mirrored(replicas)
    plain, model = make_pair(cnn, strategy, seed=5)
    with strategy.scope():
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    x, y = data(6)
    monitor = deadrelu.DeadReluMonitor(x[:64], on_dead=on_dead, max_dead_fraction=0.0, verbose=0, log_details=True)
    history = keras.callbacks.History()
    # 96 samples in batches of 12: Keras's own step splits them evenly on 2 and 3 replicas.
    model.fit(x[:96], y[:96], batch_size=12, epochs=epochs, verbose=0, callbacks=[monitor, history])
    return strategy, plain, model, monitor, history


def test_monitor_warn_logs_the_keys_and_equals_a_plain_scan():
    _strategy, plain, model, monitor, history = fit_with_monitor("warn", epochs=2)
    assert len(history.epoch) == 2
    for key in ("deadrelu/dead_fraction", "deadrelu/dying_fraction", "deadrelu/conv/dead_fraction"):
        assert len(history.history[key]) == 2, key
    # The last check measured the trained weights on both replicas: a plain model holding them agrees.
    plain.set_weights(model.get_weights())
    expected = deadrelu.scan(plain, monitor.data, batch_size=monitor.batch_size)
    assert history.history["deadrelu/dead_fraction"][-1] == pytest.approx(expected.dead_fraction, abs=0)
    assert monitor.last_report.summary == expected.summary


def test_monitor_stop_stops_at_the_first_check():
    _, _, _, monitor, history = fit_with_monitor("stop", epochs=3)
    assert len(history.epoch) == 1
    assert monitor.timeline[-1].action == "stop"


def test_monitor_revive_keeps_replicas_identical():
    # `fit` on 2 replicas only: Keras's own all-reduce in `fit` under a second MirroredStrategy of
    # another size in the same process fails in TensorFlow ("joining a group with size 3, but that
    # group has size 2"); deadrelu's scans use no collective and run on 3 replicas above.
    strategy, _, model, monitor, history = fit_with_monitor("revive", replicas=2, epochs=2)
    assert monitor.revivals >= 1
    assert len(history.history["deadrelu/dead_fraction"]) == 2
    assert replicas_identical(model, strategy) > len(model.variables)  # the optimizer slots too


def test_revive_model_assigns_every_replica_and_keeps_outputs():
    strategy = mirrored(3)
    plain, model = make_pair(cnn, strategy, seed=7)
    x, _ = data(7)
    result = deadrelu.revive_model(model, x, seed=0)
    expected = deadrelu.revive_model(plain, x, seed=0)
    assert result.revived == expected.revived and result.units_revived > 0
    assert result.check.max_abs_diff <= 1e-5
    assert replicas_identical(result.model, strategy) >= len(result.model.variables)
    assert resolve_strategy(None, result.model) is strategy  # the copy lives on the replicas too
    for a, b in zip(result.model.get_weights(), expected.model.get_weights()):
        np.testing.assert_array_equal(a, b)  # same seed, same draw as on one device


def test_prune_under_a_strategy_equals_one_device():
    strategy = mirrored(2)
    plain, model = make_pair(cnn, strategy, seed=8)
    x, _ = data(8)
    result, expected = deadrelu.prune_model(model, x), deadrelu.prune_model(plain, x)
    assert result.removed == expected.removed and result.units_removed > 0
    assert result.params_after == expected.params_after and result.check.passed
    assert resolve_strategy(None, result.model) is strategy
    smaller = deadrelu.prune(model, x)  # the plain verb: the model, built on the replicas too
    assert smaller.count_params() == result.params_after and resolve_strategy(None, smaller) is strategy

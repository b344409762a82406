"""Pre-activation statistics (issue 25): every site's `margin`, `preact_mean`, `preact_std`, `preact_min`.

Each case builds a tiny Keras model, materialises the pre-activation z of its sites with plain Keras
(a linear copy of a fused layer, a sub-model ending at an activation layer's input, direct calls of
the layers an op-level ReLU reads, the recurrence of a SimpleRNN written out in numpy) and compares
the scan with numpy (tests/preact_reference.py): on deadrelu's fused kernel and on TensorFlow's own
ops (`DEADRELU_KERNEL=off`), which must then agree with each other too. Planted units: a dead one
(bias −100: its margin is its largest z, far below 0) and a constant one (a zero kernel column: its
z never varies, so its std is exactly 0.0 and its minimum is its maximum). Batch sizes that do not
divide the samples, NaN and ±inf pre-activations, the gradient step, the JSON report and a
two-worker cluster (slow) are covered too. JAX and PyTorch: tests/backends/test_backend_preact.py;
MirroredStrategy on 2 logical CPUs: tests/distributed/test_preact_mirrored.py.
"""

from __future__ import annotations

import json
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import deadrelu
from deadrelu import kernel
from models import L, linear_clone, one_hot, outputs_of, plant_bias, random_x, randomize_batchnorm, to_numpy
from preact_reference import FIELDS, assert_preact_matches, reference_preact

N = 41  # samples
BATCH = 16  # does not divide N
DEAD, CONSTANT = 1, 3  # planted units: bias −100 (dead), zero kernel column (z constant: its bias)


def plant(layer, *, constant: bool = True) -> None:
    """Unit DEAD gets bias −100; unit CONSTANT (with `constant`) a zero kernel column and bias 0.25."""
    bias = {DEAD: -100.0}
    if constant:
        weights = to_numpy(layer.kernel).copy()
        weights[..., CONSTANT] = 0.0
        layer.kernel.assign(weights)
        bias[CONSTANT] = 0.25
    plant_bias(layer, bias)


# -- the cases: (model, x, {site path: (z per call, channel axis, threshold)}) ---------------------------

FUSED = {
    "Dense": (lambda act: L.Dense(5, activation=act), (6,), -1),
    "Dense-sequence": (lambda act: L.Dense(5, activation=act), (7, 4), -1),
    "Conv1D": (lambda act: L.Conv1D(4, 3, activation=act), (9, 3), -1),
    "Conv2D": (lambda act: L.Conv2D(4, 3, activation=act), (7, 6, 3), -1),
    # channels_first: width (6) != filters (4), see the note in test_reference.py
    "Conv2D-channels_first": (lambda act: L.Conv2D(4, 3, activation=act, data_format="channels_first"), (3, 7, 8), 1),
    "DepthwiseConv2D": (lambda act: L.DepthwiseConv2D(3, depth_multiplier=2, activation=act), (6, 5, 3), -1),
}


def fused_case(name: str, act: str):
    keras.utils.set_random_seed(0)
    factory, shape, axis = FUSED[name]
    inputs = keras.Input(shape)
    site = factory(act)
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(site(inputs))))
    plant(site, constant=name != "DepthwiseConv2D")  # a depthwise kernel's last axis is the multiplier
    x = random_x(shape, N, 0, scale=3.0)
    z = to_numpy(linear_clone(site, (None, *shape))(x))
    return model, x, {site.name: ([z], axis, 0.0)}


STANDALONE = [
    "Activation-relu",
    "Activation-relu6",
    "ReLU",
    "ReLU-threshold",
    "ReLU-max_value-threshold",
    "BatchNorm-Activation",
    "BatchNorm-ReLU",
    "channels_first-ReLU-threshold",
]


def standalone_case(kind: str):
    keras.utils.set_random_seed(11)
    conv = kind.startswith(("BatchNorm", "channels_first", "ReLU-threshold"))
    if kind.startswith("channels_first"):
        shape, pre = (3, 7, 8), L.Conv2D(4, 3, data_format="channels_first", name="pre")
    elif conv:
        shape, pre = (6, 7, 2), L.Conv2D(4, 3, name="pre")
    else:
        shape, pre = (6,), L.Dense(5, name="pre")
    inputs = keras.Input(shape)
    z = pre(inputs)
    bn = None
    if kind.startswith("BatchNorm"):
        bn = L.BatchNormalization(name="bn")
        z = bn(z)
    site, threshold = {
        "Activation-relu": (L.Activation("relu", name="site"), 0.0),
        "Activation-relu6": (L.Activation("relu6", name="site"), 0.0),
        "ReLU": (L.ReLU(name="site"), 0.0),
        "ReLU-threshold": (L.ReLU(threshold=0.5, name="site"), 0.5),
        "ReLU-max_value-threshold": (L.ReLU(max_value=2.0, threshold=0.25, name="site"), 0.25),
        "BatchNorm-Activation": (L.Activation("relu", name="site"), 0.0),
        "BatchNorm-ReLU": (L.ReLU(name="site"), 0.0),
        "channels_first-ReLU-threshold": (L.ReLU(threshold=0.3, name="site"), 0.3),
    }[kind]
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(site(z))))
    plant(pre)
    if bn is not None:
        randomize_batchnorm(bn, np.random.default_rng(11))
    x = random_x(shape, N, 11, scale=3.0)
    [z] = outputs_of(model.inputs, [site.input], x)
    return model, x, {"site": ([z], 1 if kind.startswith("channels_first") else -1, threshold)}


class OpRelus(L.Layer):
    """ReLUs applied as function calls: keras.ops, tf.nn, keras.activations with threshold and cap, relu6,
    and one on a reshaped tensor (3 units, 2 positions per sample)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a, self.b, self.c, self.d, self.e = (L.Dense(u, name=n) for u, n in zip((5, 4, 3, 4, 6), "abcde"))

    def call(self, x):
        h = [
            ops.relu(self.a(x) - 0.5),
            tf.nn.relu(self.b(x)),
            keras.activations.relu(self.c(x), threshold=0.3, max_value=2.0),
            ops.relu6(self.d(x) * 3.0),
            ops.reshape(tf.nn.relu(ops.reshape(self.e(x), (-1, 2, 3))), (-1, 6)),
        ]
        return ops.concatenate(h, axis=-1)


def op_level_case():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((6,))
    layer = OpRelus(name="ops")
    model = keras.Model(inputs, L.Dense(2)(layer(inputs)))
    plant(layer.a)
    x = random_x((6,), N, 5, scale=2.0)
    a, b, c, d, e = (to_numpy(dense(x)) for dense in (layer.a, layer.b, layer.c, layer.d, layer.e))
    zs = [(a - 0.5, 0.0), (b, 0.0), (c, 0.3), (d * 3.0, 0.0), (e.reshape(N, 2, 3), 0.0)]
    return model, x, {f"ops:relu_{k}": ([z], -1, t) for k, (z, t) in enumerate(zs)}


def simple_rnn_case():
    """A SimpleRNN is unrolled by the scan: each time step is a call; z_t = x_t W + h_{t−1} U + b."""
    keras.utils.set_random_seed(6)
    inputs = keras.Input((5, 3))
    rnn = L.SimpleRNN(4, activation="relu", return_sequences=True, name="rnn")
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(rnn(inputs))))
    w, u, b = rnn.get_weights()
    b[DEAD] = -100.0
    rnn.set_weights([w, u, b])
    x = random_x((5, 3), N, 6)
    w, u, b = (w.astype(np.float64) for w in rnn.get_weights())
    h, zs = np.zeros((N, 4)), []
    for t in range(5):
        z = x[:, t].astype(np.float64) @ w + h @ u + b
        zs.append(z)
        h = np.maximum(z, 0.0)
    return model, x, {"rnn": (zs, -1, 0.0)}


def time_distributed_case():
    keras.utils.set_random_seed(7)
    inputs = keras.Input((5, 6))
    dense = L.Dense(4, activation="relu", name="inner_dense")
    relu = L.ReLU(max_value=1.0, threshold=0.1, name="inner_relu")
    linear = L.TimeDistributed(L.Dense(3, name="inner_linear"), name="td_linear")
    h = L.TimeDistributed(relu, name="td_relu")(linear(L.TimeDistributed(dense, name="td_dense")(inputs)))
    conv_inputs = keras.Input((3, 6, 5, 2))
    conv = L.Conv2D(4, 3, activation="relu6", name="inner_conv")
    g = L.TimeDistributed(conv, name="td_conv")(conv_inputs)
    outputs = L.Dense(2)(L.Concatenate()([L.Flatten()(h), L.Flatten()(g)]))
    model = keras.Model([inputs, conv_inputs], outputs)
    plant(dense)
    plant(conv)
    x = [random_x((5, 6), N, 7, scale=2.0), random_x((3, 6, 5, 2), N, 8, scale=2.0)]
    z_dense = to_numpy(linear_clone(dense, (None, 5, 6))(x[0]))
    [z_relu] = outputs_of(inputs, [linear.output], x[0])
    clone = linear_clone(conv, (None, 6, 5, 2))
    z_conv = np.stack([to_numpy(clone(x[1][:, t])) for t in range(3)], axis=1)
    return (
        model,
        x,
        {
            "td_dense/inner_dense": ([z_dense], -1, 0.0),
            "td_relu/inner_relu": ([z_relu], -1, 0.1),
            "td_conv/inner_conv": ([z_conv], -1, 0.0),
        },
    )


CASES = {
    **{f"fused-{name}-relu": (lambda name=name: fused_case(name, "relu")) for name in FUSED},
    "fused-Conv2D-relu6": lambda: fused_case("Conv2D", "relu6"),
    "fused-Dense-relu6": lambda: fused_case("Dense", "relu6"),
    **{kind: (lambda kind=kind: standalone_case(kind)) for kind in STANDALONE},
    "op-level": op_level_case,
    "SimpleRNN": simple_rnn_case,
    "TimeDistributed": time_distributed_case,
}


def check(report, expected: dict) -> None:
    """Every expected site's fields equal numpy's; the planted units read as planted."""
    by_path = {site.path: site for site in report.sites}
    assert set(expected) <= set(by_path), sorted(by_path)
    for path, (calls, axis, threshold) in expected.items():
        site = by_path[path]
        assert site.params.get("threshold", 0.0) == threshold, path
        assert_preact_matches(site, reference_preact(calls, channel_axis=axis, threshold=threshold))
        dead = np.asarray(site.margin) <= 0
        assert sorted(np.flatnonzero(dead)) == site.dead, f"{path}: margin ≤ 0 exactly for the dead units"


def preact_op_built() -> bool:
    module = kernel.ops()
    return module is not None and getattr(module, "deadrelu_preact_stats", None) is not None


@pytest.mark.parametrize("case", list(CASES))
def test_preact_statistics_match_numpy_with_and_without_the_kernel(case, monkeypatch):
    model, x, expected = CASES[case]()
    fused = deadrelu.scan(model, x, batch_size=BATCH)
    check(fused, expected)
    built = preact_op_built()
    monkeypatch.setenv("DEADRELU_KERNEL", "off")
    plain = deadrelu.scan(model, x, batch_size=BATCH)
    check(plain, expected)
    if not built:
        pytest.skip(
            f"the kernel's deadrelu_preact_stats op is not built here ({kernel.status()}): compared with numpy only"
        )
    for a, b in zip(fused.sites, plain.sites):
        # Extremes are single values of z: the same bits; sums differ in order only.
        np.testing.assert_array_equal(a.margin, b.margin, err_msg=a.path)
        np.testing.assert_array_equal(a.preact_min, b.preact_min, err_msg=a.path)
        np.testing.assert_allclose(a.preact_mean, b.preact_mean, rtol=1e-6, atol=1e-7, err_msg=a.path)
        np.testing.assert_allclose(a.preact_std, b.preact_std, rtol=1e-5, atol=1e-6, err_msg=a.path)


@pytest.mark.parametrize("off", [False, True], ids=["kernel", "ops"])
def test_planted_dead_and_constant_units(off, monkeypatch):
    if off:
        monkeypatch.setenv("DEADRELU_KERNEL", "off")
    model, x, expected = fused_case("Conv2D", "relu")
    site = deadrelu.scan(model, x, batch_size=BATCH).sites[0]
    [z], _, _ = expected[site.path]
    assert site.dead == [DEAD]
    # Dead: the margin is its largest z, far below 0 (LeakyReLU will not bring it back).
    assert site.margin[DEAD] == pytest.approx(float(z[..., DEAD].max()), rel=1e-6) and site.margin[DEAD] < -90
    # Constant: z is its bias everywhere.
    assert site.preact_std[CONSTANT] == 0.0
    assert site.preact_min[CONSTANT] == site.margin[CONSTANT] == np.float32(0.25)
    assert site.preact_mean[CONSTANT] == pytest.approx(0.25, rel=1e-7)
    assert all(site.preact_std[j] > 0 for j in range(site.units) if j != CONSTANT)


def test_batch_sizes_that_do_not_divide_the_samples_change_nothing():
    model, x, expected = time_distributed_case()
    reports = [deadrelu.scan(model, x, batch_size=b) for b in (1, 7, N)]
    for report in reports:
        check(report, expected)
    for other in reports[:2]:
        for a, b in zip(reports[2].sites, other.sites):
            np.testing.assert_array_equal(a.margin, b.margin)
            np.testing.assert_array_equal(a.preact_min, b.preact_min)
            # TensorFlow's ops (DEADRELU_KERNEL=off) sum each sample in float32: ~1e-7 of the spread.
            np.testing.assert_allclose(a.preact_mean, b.preact_mean, rtol=1e-6, atol=1e-8)
            np.testing.assert_allclose(a.preact_std, b.preact_std, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("off", [False, True], ids=["kernel", "ops"])
def test_nan_and_inf_pre_activations_are_read_as_zero(off, monkeypatch):
    if off:
        monkeypatch.setenv("DEADRELU_KERNEL", "off")
    keras.utils.set_random_seed(9)
    model = keras.Sequential([keras.Input((4,)), L.Dense(5, name="pre"), L.ReLU(name="site"), L.Dense(2)])
    pre = model.get_layer("pre")
    weights, bias = (to_numpy(w).copy() for w in (pre.kernel, pre.bias))
    weights[0, 2] = 3e38  # unit 2: z is ±inf on the three samples whose first input is not 0
    bias[4] = np.nan  # unit 4: z is NaN everywhere
    pre.set_weights([weights, bias])
    x = random_x((4,), N, 9)
    x[:, 0] = 0.0
    x[[3, 17, 30], 0] = [2.0, -2.0, 5.0]
    [z] = outputs_of(model.inputs, [model.get_layer("site").input], x)
    assert 0 < np.isinf(z[:, 2]).sum() < N and np.isnan(z[:, 4]).all() and np.isfinite(z[:, [0, 1, 3]]).all()
    site = deadrelu.scan(model, x, batch_size=BATCH).sites[0]
    assert_preact_matches(site, reference_preact(z))
    assert all(np.isfinite(getattr(site, name)).all() for name in FIELDS)


def test_the_gradient_step_measures_the_same_pre_activations():
    model, x, expected = op_level_case()
    model.compile(loss="categorical_crossentropy")
    labels = one_hot(np.arange(N) % 2, 2)
    report = deadrelu.scan(model, x, labels=labels, gradients=True, batch_size=BATCH)
    assert report.has_gradients
    check(report, expected)


class Unused(keras.Model):
    """A model with a ReLU site its call never reaches."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.used = L.Dense(4, activation="relu", name="used")
        self.unused = L.Dense(4, activation="relu", name="unused")

    def build(self, input_shape):
        self.used.build(input_shape)
        self.unused.build(input_shape)

    def call(self, x):
        return self.used(x)


def test_report_json_round_trip_and_unreached_sites(tmp_path):
    keras.utils.set_random_seed(3)
    model = Unused(name="branchy")
    x = random_x((3,), 20, 3)
    model(x[:1])
    model.unused(keras.Input((3,)))  # a symbolic call: its units are known, its call by the model never runs
    report = deadrelu.scan(model, x, batch_size=8)
    used, unused = report.site("used"), report.site("unused")
    assert used.reached and not unused.reached
    assert all(getattr(unused, name) is None for name in FIELDS)
    document = report.to_dict()
    by_path = {site["path"]: site for site in document["sites"]}
    for name in FIELDS:
        assert by_path["unused"][name] == [None] * 4  # one entry per unit, null: not measured
        assert by_path["used"][name] == [float(v) for v in getattr(used, name)]
    report.to_json(str(tmp_path / "scan.json"))
    back = deadrelu.Report.from_json(str(tmp_path / "scan.json"))
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(back.site("used"), name), getattr(used, name))
        assert getattr(back.site("unused"), name) is None
    # A report written before these fields existed reads back with them None.
    for site in document["sites"]:
        for name in FIELDS:
            del site[name]
    old = deadrelu.Report.from_dict(json.loads(json.dumps(document)))
    assert all(getattr(old.site("used"), name) is None for name in FIELDS)


@pytest.mark.slow
def test_two_worker_cluster_combines_the_pre_activations(tmp_path):
    """MultiWorkerMirroredStrategy on two local workers: maxima, minima and sums of both shards combine."""
    from cluster import run_cluster

    keras.utils.set_random_seed(0)
    conv = L.Conv2D(4, 3, activation="relu", name="conv")
    model = keras.Sequential([keras.Input((6, 6, 1)), conv, L.Flatten(), L.Dense(3, name="out")])
    plant(conv)
    model.save(tmp_path / "m.keras")
    x = np.random.default_rng(1).normal(size=(45, 6, 6, 1)).astype("float32")  # 45 = 2·16 + 13: uneven
    np.savez(tmp_path / "x.npz", x=x)
    z = to_numpy(linear_clone(conv, (None, 6, 6, 1))(x))
    workers = [tmp_path / "w0", tmp_path / "w1"]
    for folder in workers:
        folder.mkdir()
    command = [sys.executable, "-m", "deadrelu", "scan", str(tmp_path / "m.keras"), "--data", str(tmp_path / "x.npz")]
    command += ["--batch-size", "16", "--strategy", "multi-worker", "--json", "scan.json", "--quiet"]
    results = run_cluster(command, workers=2, cwd=workers, timeout=150)
    for result in results:
        assert result.returncode == 0, f"worker {result.index}:\n{result.stderr[-3000:]}"
    report = deadrelu.Report.from_json(str(workers[0] / "scan.json"))
    assert report.data["samples"] == 45
    assert_preact_matches(report.site("conv"), reference_preact(z))

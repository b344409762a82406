"""Reference tests: every statistic of `deadrelu.scan` checked against plain numpy.

Each test builds a tiny Keras model with a fixed seed, materialises the outputs of its ReLU sites
with separate Keras models or direct layer calls, computes the per-unit statistics of docs/report-format.md with
numpy (tests/models.py) and compares them with the report: counts exactly, rates to rtol 1e-5 /
atol 1e-6. Gradient statistics are checked against `tf.GradientTape` on the model split by hand at
the site. No expected number comes from the engine itself.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import deadrelu
from models import (
    ATOL,
    RTOL,
    L,
    assert_reports_equal,
    assert_site_matches,
    close,
    leaves,
    linear_clone,
    one_hot,
    outputs_of,
    plant_bias,
    random_x,
    randomize_batchnorm,
    reference_grad_stats,
    reference_stats,
    to_numpy,
)

N = 40  # samples in most tests
BATCH = 16  # does not divide N
DEAD, HOT = 1, 2  # planted units: DEAD gets bias -1e3 (dead), HOT gets +1e3 (saturated when capped)


# -- fused activations on every layer type --------------------------------------------------------

# Note on channels_first shapes: with Keras 3.15 on TensorFlow, `keras.ops.add(conv_out, bias)` takes a
# `tf.nn.bias_add(data_format="NHWC")` shortcut whenever the output's last axis has the bias's length, so
# an eager call of a channels_first conv whose width equals its filter count adds the bias along the
# width (compiled calls do not). The shapes below keep width != filters so eager references are sound.
FUSED = {
    # name: (layer factory, input shape, channel axis of the output)
    "Dense": (lambda act: L.Dense(5, activation=act), (6,), -1),
    "Dense-sequence": (lambda act: L.Dense(5, activation=act), (7, 4), -1),
    "Conv1D": (lambda act: L.Conv1D(4, 3, activation=act), (9, 3), -1),
    "Conv1D-channels_first": (lambda act: L.Conv1D(4, 3, activation=act, data_format="channels_first"), (3, 9), 1),
    "Conv2D": (lambda act: L.Conv2D(4, 3, activation=act), (7, 6, 3), -1),
    "Conv2D-channels_first": (lambda act: L.Conv2D(4, 3, activation=act, data_format="channels_first"), (3, 7, 8), 1),
    "Conv3D": (lambda act: L.Conv3D(3, 2, activation=act), (4, 5, 3, 2), -1),
    "DepthwiseConv2D": (lambda act: L.DepthwiseConv2D(3, depth_multiplier=2, activation=act), (6, 5, 3), -1),
    "SeparableConv2D": (lambda act: L.SeparableConv2D(4, 3, activation=act), (6, 5, 3), -1),
    "Conv2DTranspose": (lambda act: L.Conv2DTranspose(4, 3, strides=2, activation=act), (3, 4, 3), -1),
}


def _fused_model(name: str, act: str, seed: int = 0):
    keras.utils.set_random_seed(seed)
    factory, shape, axis = FUSED[name]
    inp = keras.Input(shape)
    site = factory(act)
    h = site(inp)
    out = L.Dense(2)(L.Flatten()(h))
    model = keras.Model(inp, out, name=f"top_{name.replace('-', '_')}")
    plant_bias(site, {DEAD: -1e3, HOT: 1e3})
    # Scaled inputs: relu6 outputs reach the cap on some (not all) positions of the other units.
    x = random_x(shape, N, seed, scale=6.0)
    return model, site, x, axis


@pytest.mark.parametrize("act", ["relu", "relu6"])
@pytest.mark.parametrize("name", list(FUSED))
def test_fused_site_matches_numpy(name, act):
    model, site, x, axis = _fused_model(name, act)
    [a] = outputs_of(model.inputs, [site.output], x)
    cap = 6.0 if act == "relu6" else None
    ref = reference_stats(a, channel_axis=axis, max_value=cap)

    report = deadrelu.scan(model, x, batch_size=BATCH)

    assert [s.path for s in report.sites] == [site.name]
    s = report.sites[0]
    assert (s.kind, s.layer) == ("fused", type(site).__name__)
    assert s.params.get("max_value") == cap
    assert_site_matches(s, ref)
    # Planted by construction: exactly the unit with the huge negative bias is dead; with a cap,
    # exactly the unit with the huge positive bias is saturated (and not dead).
    assert s.dead == [DEAD]
    assert s.saturated == ([HOT] if cap else [])
    if cap:
        assert s.saturated_rate[HOT] == 1.0 and s.max_output[HOT] == cap
        others = [j for j in range(ref.units) if j not in (DEAD, HOT)]
        assert any(0 < ref.saturated_rate[j] < 1 for j in others), "test data never reaches the cap"
    assert report.data["samples"] == N
    assert report.summary["units"] == s.units and report.summary["dead"] == 1


def test_channels_last_conv2d_units_are_the_last_axis():
    keras.utils.set_random_seed(3)
    inp = keras.Input((5, 8, 3))  # non-square, 3 input channels, 4 output channels: no axis coincides
    site = L.Conv2D(4, (2, 3), activation="relu")
    model = keras.Model(inp, site(inp))
    plant_bias(site, {3: -1e3})
    x = random_x((5, 8, 3), 30, 3)
    report = deadrelu.scan(model, x, batch_size=7)
    s = report.sites[0]
    assert (s.units, s.positions) == (4, 4 * 6)
    assert s.dead == [3]
    assert_site_matches(s, reference_stats(to_numpy(model(x)), channel_axis=-1))


# -- standalone activations: Activation, ReLU(threshold / max_value), BatchNorm → Activation ----------


def _standalone_case(kind: str):
    """Returns (model, site layer, x, max_value, expected dead, expected saturated)."""
    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(11)
    if kind in ("Activation-relu", "ReLU", "BatchNorm-Activation"):
        shape = (6, 6, 2)
        pre = L.Conv2D(4, 3, name="pre")
    else:
        shape = (6,)
        pre = L.Dense(5, name="pre")
    inp = keras.Input(shape)
    z = pre(inp)
    cap, dead, sat = None, [DEAD], []
    plant = {DEAD: -1e3}
    if kind == "Activation-relu":
        site = L.Activation("relu")
    elif kind == "Activation-relu6":
        site, cap, sat = L.Activation("relu6"), 6.0, [HOT]
        plant[HOT] = 1e3
    elif kind == "ReLU":
        site = L.ReLU()
    elif kind == "ReLU-threshold":
        site = L.ReLU(threshold=0.5)
    elif kind == "ReLU-max_value":
        site, cap, sat = L.ReLU(max_value=6.0), 6.0, [HOT]
        plant[HOT] = 1e3
    elif kind == "ReLU-max_value-threshold":
        site, cap, sat = L.ReLU(max_value=2.0, threshold=0.25), 2.0, [HOT]
        plant[HOT] = 1e3
    elif kind == "BatchNorm-Activation":
        bn = L.BatchNormalization(name="bn")
        z = bn(z)
        site = L.Activation("relu")
    else:
        raise AssertionError(kind)
    h = site(z)
    out = L.Dense(2)(L.Flatten()(h))
    model = keras.Model(inp, out)
    if kind == "BatchNorm-Activation":
        randomize_batchnorm(bn, rng, beta={DEAD: -1e3})
    else:
        plant_bias(pre, plant)
    if kind == "ReLU-threshold":
        # Unit 0: pre-activation 0.3 on every sample — positive, but under the threshold: dead by output.
        kernel = to_numpy(pre.kernel).copy()
        kernel[:, 0] = 0.0
        pre.kernel.assign(kernel)
        plant_bias(pre, {0: 0.3})
        dead = [0, DEAD]
    x = random_x(shape, N, 11, scale=3.0)
    return model, site, x, cap, dead, sat


STANDALONE = [
    "Activation-relu",
    "Activation-relu6",
    "ReLU",
    "ReLU-threshold",
    "ReLU-max_value",
    "ReLU-max_value-threshold",
    "BatchNorm-Activation",
]


@pytest.mark.parametrize("kind", STANDALONE)
def test_standalone_site_matches_numpy(kind):
    model, site, x, cap, dead, sat = _standalone_case(kind)
    [a] = outputs_of(model.inputs, [site.output], x)
    ref = reference_stats(a, max_value=cap)
    report = deadrelu.scan(model, x, batch_size=BATCH)
    assert [s.path for s in report.sites] == [site.name]
    s = report.sites[0]
    assert s.kind == ("relu_layer" if isinstance(site, L.ReLU) else "activation")
    assert_site_matches(s, ref)
    assert s.dead == dead
    assert s.saturated == sat
    for unit in sat:  # stuck at the cap: saturated, never dead
        assert s.status(unit) == "saturated" and s.fires[unit] == s.positions * N


def test_threshold_unit_is_positive_but_dead():
    """The planted threshold unit's pre-activation is > 0 everywhere, its output 0 everywhere."""
    model, site, x, _, _, _ = _standalone_case("ReLU-threshold")
    pre = model.get_layer("pre")
    z, a = outputs_of(model.inputs, [pre.output, site.output], x)
    assert (z[:, 0] > 0).all() and (a[:, 0] == 0).all()
    s = deadrelu.scan(model, x, batch_size=BATCH).sites[0]
    assert 0 in s.dead and s.params["threshold"] == 0.5


# -- batch sizes --------------------------------------------------------------------------------


def _conv_model_37(seed=5):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((5, 5, 2))
    c1 = L.Conv2D(3, 2, activation="relu", name="c1")
    c2 = L.Conv2D(4, 2, activation="relu6", name="c2")
    h2 = c2(c1(inp))
    model = keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling2D()(h2)))
    plant_bias(c1, {0: -1e3})
    return model, c1, c2, random_x((5, 5, 2), 37, seed, scale=5.0)


def test_batch_sizes_that_do_not_divide_the_samples_give_identical_results():
    model, c1, c2, x = _conv_model_37()
    refs = [
        reference_stats(a, max_value=m)
        for a, m in zip(outputs_of(model.inputs, [c1.output, c2.output], x), (None, 6.0))
    ]
    reports = {b: deadrelu.scan(model, x, batch_size=b) for b in (1, 10, 37)}
    for b, report in reports.items():
        assert report.data["samples"] == 37 and report.settings["batch_size"] == b
        for s, ref in zip(report.sites, refs):
            assert_site_matches(s, ref)
    assert_reports_equal(reports[1], reports[37])
    assert_reports_equal(reports[10], reports[37])


def test_unbuilt_sequential_without_input():
    keras.utils.set_random_seed(8)
    d1 = L.Dense(4, activation="relu")
    model = keras.Sequential([d1, L.Dense(2)])
    x = random_x((3,), 25, 8)
    report = deadrelu.scan(model, x, batch_size=10)
    assert [s.path for s in report.sites] == [d1.name]
    assert_site_matches(report.sites[0], reference_stats(to_numpy(d1(x))))


# -- repeated scans of one model reuse the traced probe -----------------------------------------------


def _fully_convolutional(seed=9):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, 2))
    c1 = L.Conv2D(3, 2, activation="relu", name="c1")
    model = keras.Model(inp, L.GlobalAveragePooling2D()(c1(inp)))
    plant_bias(c1, {0: -1e3})
    return model, c1


def test_repeated_scans_reuse_the_trace_and_start_from_zero():
    from deadrelu.engine.probe import probe_for

    model, c1 = _fully_convolutional()
    x = random_x((6, 6, 2), 30, 1, scale=2.0)
    first = deadrelu.scan(model, x, batch_size=8)
    step = probe_for(model)._step
    second = deadrelu.scan(model, x[:11], batch_size=8)  # other data: nothing carried over
    assert probe_for(model)._step is step and step.traces == 1
    assert_site_matches(first.sites[0], reference_stats(to_numpy(c1(x))))
    assert_site_matches(second.sites[0], reference_stats(to_numpy(c1(x[:11]))))

    plant_bias(c1, {1: -1e3})  # new weights are read by the same trace
    third = deadrelu.scan(model, x, batch_size=8)
    assert third.sites[0].dead == [0, 1] and step.traces == 1


def test_repeated_scan_with_other_input_shape_or_dtype_retraces():
    model, c1 = _fully_convolutional()
    for shape, dtype in [((6, 6, 2), "float32"), ((9, 5, 2), "float32"), ((9, 5, 2), "float64")]:
        x = random_x(shape, 13, 2, scale=2.0).astype(dtype)
        report = deadrelu.scan(model, x, batch_size=5)
        ref = reference_stats(to_numpy(c1(x.astype("float32"))))
        assert report.sites[0].positions == ref.positions
        assert_site_matches(report.sites[0], ref)


def test_probe_cache_does_not_keep_models_alive():
    import gc
    import weakref

    from deadrelu.engine import probe

    model, _ = _fully_convolutional()
    deadrelu.scan(model, random_x((4, 4, 2), 5, 3), gradients=False)
    alive = weakref.ref(model)
    assert model in probe._PROBES
    del model
    gc.collect()
    assert alive() is None


def test_scanning_many_models_in_a_loop_is_not_reported_as_retracing():
    import logging

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    collect = Collect()
    logger = tf.get_logger()
    logger.addHandler(collect)
    try:
        x = random_x((4,), 16, 0)
        for seed in range(8):
            keras.utils.set_random_seed(seed)
            model = keras.Sequential([keras.Input((4,)), L.Dense(3, activation="relu"), L.Dense(1)])
            deadrelu.scan(model, x, batch_size=16)  # one trace and one call per model
    finally:
        logger.removeHandler(collect)
    assert not any("retracing" in message for message in collect.messages), collect.messages
    assert not logger.filters  # the filter is gone after each run


def test_recompiled_loss_gets_a_new_gradient_probe():
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((3,)), L.Dense(4, activation="relu"), L.Dense(2)])
    x, y = random_x((3,), 20, 4), np.arange(20) % 2
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    logits = deadrelu.scan(model, x, labels=y, gradients=True).loss
    model.compile(loss="sparse_categorical_crossentropy")  # now the outputs are taken as probabilities
    as_probs = deadrelu.scan(model, x, labels=y, gradients=True).loss
    out = model(x, training=False)
    expected = [keras.losses.sparse_categorical_crossentropy(y, out, from_logits=f) for f in (True, False)]
    assert logits == pytest.approx(float(np.mean(to_numpy(expected[0]))), rel=RTOL)
    assert as_probs == pytest.approx(float(np.mean(to_numpy(expected[1]))), rel=RTOL)


# -- verdicts: dead, saturated, dying, first match wins, flag threshold ----------------------------


def _identity_model(act, units=6):
    """Dense with an identity kernel and zero bias: each unit's pre-activation is one input column."""
    inp = keras.Input((units,))
    site = L.Dense(units, activation=act, name="identity")
    model = keras.Model(inp, site(inp))
    site.set_weights([np.eye(units, dtype=np.float32), np.zeros(units, np.float32)])
    return model


def _verdict_data(n=200):
    """Columns chosen so the verdicts are known by construction (n = 200 samples)."""
    rng = np.random.default_rng(2)
    x = rng.uniform(0.5, 2.0, size=(n, 6)).astype(np.float32)  # positive, under 6
    x[:, 0] = -rng.uniform(0.1, 1.0, n)  # 0: never fires → dead
    x[:, 1] = -1.0
    x[7, 1] = 0.5  # 1: fires once in 200 → dying
    x[:, 2] = 10.0  # 2: always ≥ 6 → saturated (capped)
    x[:, 3] = 10.0
    x[0, 3] = 1.0
    x[1, 3] = -1.0  # 3: 198/200 = 0.99 at the cap → saturated,
    #                                                              and fires on 199/200 (< 1: a dying candidate)
    x[:, 4] = 10.0
    x[:3, 4] = 1.0  # 4: 197/200 at the cap → not saturated
    x[::2, 5] = -1.0  # 5: fires on half → healthy
    return x


@pytest.mark.parametrize(
    "act, dying, dead, sat, dying_units",
    [
        ("relu", 0.01, [0], [], [1]),
        ("relu6", 0.01, [0], [2, 3], [1]),
        # At the highest dying threshold (1.0) every unit that misses a sample is dying — unit 3 too,
        # but it is saturated, and saturated is checked first. Unit 4 fires on every sample.
        ("relu6", 1.0, [0], [2, 3], [1, 5]),
        ("relu", 0.005, [0], [], []),  # 1/200 is not < 0.005
    ],
)
def test_verdicts_first_match_wins(act, dying, dead, sat, dying_units):
    model = _identity_model(act)
    x = _verdict_data()
    report = deadrelu.scan(model, x, batch_size=64, dying_threshold=dying)
    s = report.sites[0]
    cap = 6.0 if act == "relu6" else None
    assert_site_matches(s, reference_stats(to_numpy(model(x)), max_value=cap, dying=dying))
    assert (s.dead, s.saturated, s.dying) == (dead, sat, dying_units)
    assert report.settings["dying_threshold"] == dying
    summary = report.summary
    assert (summary["dead"], summary["saturated"], summary["dying"]) == (len(dead), len(sat), len(dying_units))
    assert summary["units"] == 6 and summary["dead_fraction"] == pytest.approx(len(dead) / 6)
    assert summary["healthy"] == 6 - len(dead) - len(sat) - len(dying_units)
    statuses = [s.status(j) for j in range(6)]
    assert statuses == [
        "dead" if j in dead else "saturated" if j in sat else "dying" if j in dying_units else "healthy"
        for j in range(6)
    ]


@pytest.mark.parametrize("flag, flagged", [(1 / 6, True), (0.10, True), (0.17, False), (0.5, False)])
def test_site_flagged_when_dead_share_reaches_flag_threshold(flag, flagged):
    model = _identity_model("relu")
    report = deadrelu.scan(model, _verdict_data(), batch_size=64, flag_threshold=flag)
    assert report.sites[0].dead == [0]
    assert report.sites[0].flagged is flagged
    assert report.settings["flag_threshold"] == flag
    assert report.summary["flagged_sites"] == int(flagged)


def test_fully_dead_site():
    model = _identity_model("relu", units=3)
    x = -np.abs(random_x((3,), 20, 4)) - 0.1
    s = deadrelu.scan(model, x, batch_size=6).sites[0]
    assert_site_matches(s, reference_stats(to_numpy(model(x))))
    assert s.dead == [0, 1, 2] and s.flagged and s.dead_fraction == 1.0
    assert np.all(np.asarray(s.dormancy) == 0) and np.all(np.asarray(s.max_output) == 0)


# -- nested models, shared layers, subclassed models -----------------------------------------------


def test_sites_in_nested_sequential_and_functional_models():
    keras.utils.set_random_seed(21)
    inner = keras.Sequential([keras.Input((5,)), L.Dense(4, activation="relu6", name="deep")], name="inner")
    e_in = keras.Input((6,))
    d1 = L.Dense(5, activation="relu", name="dense_1")
    encoder = keras.Model(e_in, inner(d1(e_in)), name="encoder")
    stem = L.Dense(6, name="stem")
    top_relu = L.ReLU(name="top_relu")
    model = keras.Sequential([keras.Input((3,)), stem, top_relu, encoder, L.Dense(2)], name="top")
    plant_bias(d1, {DEAD: -1e3})
    x = random_x((3,), N, 21, scale=3.0)

    # Materialise by calling the layers one by one.
    h0 = to_numpy(top_relu(stem(x)))
    h1 = to_numpy(d1(h0))
    h2 = to_numpy(inner.get_layer("deep")(h1))
    report = deadrelu.scan(model, x, batch_size=BATCH)

    assert [s.path for s in report.sites] == ["top_relu", "encoder/dense_1", "encoder/inner/deep"]
    for s, (a, cap) in zip(report.sites, [(h0, None), (h1, None), (h2, 6.0)]):
        assert_site_matches(s, reference_stats(a, max_value=cap))
    assert report.site("encoder/dense_1").dead == [DEAD]


def test_nested_model_called_twice_counts_both_calls():
    keras.utils.set_random_seed(22)
    enc_dense = L.Dense(5, activation="relu", name="enc_dense")
    encoder = keras.Sequential([keras.Input((4,)), enc_dense], name="encoder")
    inp = keras.Input((4,))
    pre = L.Dense(4, name="pre")
    a, b = encoder(inp), encoder(pre(inp))
    model = keras.Model(inp, L.Dense(2)(L.Concatenate()([a, b])))
    x = random_x((4,), N, 22)
    calls = [to_numpy(enc_dense(x)), to_numpy(enc_dense(pre(x)))]
    ref = reference_stats(calls)
    assert ref.calls == 2 and ref.samples == 2 * N

    report = deadrelu.scan(model, x, batch_size=BATCH)
    assert [s.path for s in report.sites] == ["encoder/enc_dense"]
    s = report.sites[0]
    assert s.calls == 2
    assert_site_matches(s, ref)
    # Both calls count: the statistics differ from those of either call alone.
    assert not np.allclose(s.active_rate, reference_stats(calls[0]).active_rate)


def test_shared_layer_used_twice():
    keras.utils.set_random_seed(23)
    shared = L.Dense(5, activation="relu", name="shared")
    inp = keras.Input((4,))
    pre = L.Dense(4, name="pre")
    model = keras.Model(inp, L.Add()([shared(inp), shared(pre(inp))]))
    x = random_x((4,), N, 23)
    ref = reference_stats([to_numpy(shared(x)), to_numpy(shared(pre(x)))])
    report = deadrelu.scan(model, x, batch_size=BATCH)
    assert [s.path for s in report.sites] == ["shared"]
    assert report.sites[0].calls == 2
    assert_site_matches(report.sites[0], ref)


class _Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc1 = L.Dense(6, activation="relu")
        self.cap = L.ReLU(max_value=1.0)
        self.body = keras.Sequential([L.Dense(5, activation="relu")], name="body")
        self.fc2 = L.Dense(4, activation="relu")
        self.head = L.Dense(2)

    def call(self, x):
        return self.head(self.fc2(self.body(self.cap(self.fc1(x)))))


@pytest.mark.parametrize("prebuilt", [True, False])
def test_subclassed_model(prebuilt):
    keras.utils.set_random_seed(24)
    model = _Net(name="net")
    x = random_x((3,), N, 24, scale=2.0)
    if prebuilt:
        model(x[:1])
    report = deadrelu.scan(model, x, batch_size=BATCH)

    a1 = to_numpy(model.fc1(x))
    a2 = to_numpy(model.cap(a1))
    a3 = to_numpy(model.body.layers[0](a2))
    a4 = to_numpy(model.fc2(a3))
    expected = {
        model.fc1.name: (a1, None),
        model.cap.name: (a2, 1.0),
        f"body/{model.body.layers[0].name}": (a3, None),
        model.fc2.name: (a4, None),
    }
    paths = [s.path for s in report.sites]
    assert len(set(paths)) == len(paths) == 4
    assert set(paths) == set(expected)
    for s in report.sites:
        a, cap = expected[s.path]
        assert_site_matches(s, reference_stats(a, max_value=cap))


class _TwinNet(keras.Model):
    """Two different layers that happen to share a name (legal in a subclassed model)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.left = L.Dense(3, activation="relu", name="fc")
        self.right = L.Dense(3, activation="relu", name="fc")

    def call(self, x):
        return self.right(self.left(x))


def test_subclassed_model_with_duplicate_layer_names_has_unique_paths():
    keras.utils.set_random_seed(25)
    model = _TwinNet(name="twin")
    x = random_x((3,), 10, 25)
    report = deadrelu.scan(model, x, batch_size=4)
    paths = [s.path for s in report.sites]
    assert len(paths) == 2 and len(set(paths)) == 2


@pytest.mark.parametrize("gradients", [False, True])
def test_model_without_relu_sites(gradients):
    keras.utils.set_random_seed(26)
    inp = keras.Input((4,))
    model = keras.Model(inp, L.Dense(3, activation="softmax")(L.Dense(5, activation="tanh")(inp)))
    x = random_x((4,), 20, 26)
    y = np.arange(20) % 3
    report = deadrelu.scan(
        model,
        x,
        labels=y if gradients else None,
        batch_size=8,
        gradients=gradients,
        loss="categorical_crossentropy" if gradients else None,
    )
    assert report.sites == []
    summary = report.summary
    assert (summary["sites"], summary["units"], summary["dead"]) == (0, 0, 0)
    assert summary["dead_fraction"] == 0.0
    assert {o["activation"] for o in report.others} >= {"tanh", "softmax"}
    report.to_dict()  # serialisable without sites


# -- gradients ------------------------------------------------------------------------------------

CLASSES = 3


def _grad_model(kind: str):
    """Chains of layers (possibly nested Sequential) so the reference can split them at a site."""
    keras.utils.set_random_seed(31)
    rng = np.random.default_rng(31)
    if kind == "dense":
        d1 = L.Dense(6, activation="relu")
        model = keras.Sequential(
            [keras.Input((5,)), d1, L.Dense(5, activation="relu6"), L.Dense(CLASSES, activation="softmax")]
        )
        plant_bias(d1, {DEAD: -1e3})
        shape = (5,)
    elif kind == "conv2d":
        c1 = L.Conv2D(4, 3, activation="relu")
        model = keras.Sequential(
            [keras.Input((6, 6, 2)), c1, L.MaxPooling2D(2), L.Flatten(), L.Dense(CLASSES, activation="softmax")]
        )
        plant_bias(c1, {DEAD: -1e3})
        shape = (6, 6, 2)
    elif kind == "nested":
        d1 = L.Dense(6, activation="relu")
        encoder = keras.Sequential([keras.Input((5,)), d1, L.Dense(4, activation="relu")], name="encoder")
        model = keras.Sequential([keras.Input((5,)), encoder, L.Dense(CLASSES, activation="softmax")])
        plant_bias(d1, {DEAD: -1e3})
        shape = (5,)
    elif kind == "batchnorm":
        bn = L.BatchNormalization()
        model = keras.Sequential(
            [
                keras.Input((6, 6, 2)),
                L.Conv2D(4, 3),
                bn,
                L.Activation("relu"),
                L.GlobalAveragePooling2D(),
                L.Dense(CLASSES, activation="softmax"),
            ]
        )
        randomize_batchnorm(bn, rng, beta={DEAD: -1e3})
        shape = (6, 6, 2)
    elif kind == "relu_layers":
        model = keras.Sequential(
            [
                keras.Input((5,)),
                L.Dense(6),
                L.ReLU(threshold=0.2),
                L.Dense(5),
                L.ReLU(max_value=1.0),
                L.Dense(CLASSES, activation="softmax"),
            ]
        )
        plant_bias(model.layers[0], {DEAD: -1e3})
        shape = (5,)
    else:
        raise AssertionError(kind)
    x = random_x(shape, 50, 31, scale=2.0)
    y = np.random.default_rng(32).integers(0, CLASSES, 50)
    return model, x, y


def _is_site(layer) -> bool:
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    if isinstance(layer, L.ReLU):
        return not layer.negative_slope
    return name in ("relu", "relu6")


def _cce(from_logits=False):
    return lambda y_true, y_pred: keras.losses.categorical_crossentropy(y_true, y_pred, from_logits=from_logits)


def reference_site_gradient(model, layer, x, y_ref, per_sample_loss) -> np.ndarray:
    """∂ℓₙ/∂z at one site: the chain split by hand, z watched, per-sample losses summed."""
    chain = leaves(model)
    k = chain.index(layer)
    h = tf.convert_to_tensor(x)
    for before in chain[:k]:
        h = before(h, training=False)
    fused = not isinstance(layer, (L.Activation, L.ReLU))
    z = linear_clone(layer, h.shape)(h) if fused else h
    act = layer.activation if fused else (lambda t: layer(t, training=False))
    with tf.GradientTape() as tape:
        tape.watch(z)
        out = act(z)
        np.testing.assert_allclose(to_numpy(out), to_numpy(layer(h, training=False)), rtol=1e-6, atol=1e-6)
        for after in chain[k + 1 :]:
            out = after(out, training=False)
        per_sample = per_sample_loss(y_ref, out)
        assert tuple(per_sample.shape) == (len(x),)
        total = tf.reduce_sum(per_sample)
    return to_numpy(tape.gradient(total, z))


def _check_gradients(report, model, x, y_ref, per_sample_loss=None):
    per_sample_loss = per_sample_loss or _cce()
    sites = [layer for layer in leaves(model) if _is_site(layer)]
    assert len(report.sites) == len(sites)
    for s, layer in zip(report.sites, sites):
        g = reference_site_gradient(model, layer, x, y_ref, per_sample_loss)
        mean_abs, zero_rate = reference_grad_stats(g)
        close(s.grad_mean_abs, mean_abs, f"{s.path}: grad_mean_abs")
        close(s.grad_zero_rate, zero_rate, f"{s.path}: grad_zero_rate")
        for unit in s.dead:  # no gradient reaches a dead unit
            assert s.grad_zero_rate[unit] == 1.0 and s.grad_mean_abs[unit] == 0.0


GRAD_MODELS = ["dense", "conv2d", "nested", "batchnorm", "relu_layers"]


@pytest.mark.parametrize("kind", GRAD_MODELS)
def test_gradients_match_gradient_tape(kind):
    model, x, y = _grad_model(kind)
    y1 = one_hot(y, CLASSES)
    reports = [
        deadrelu.scan(model, x, labels=y1, gradients=True, loss="categorical_crossentropy", batch_size=b)
        for b in (7, 50)
    ]
    for report in reports:
        _check_gradients(report, model, x, y1)
        assert DEAD in report.sites[0].dead
        assert all(st.grad_mean_abs is not None and st.grad_zero_rate is not None for st in report.sites)
        expected_loss = float(np.mean(to_numpy(keras.losses.categorical_crossentropy(y1, model(x, training=False)))))
        assert report.loss == pytest.approx(expected_loss, rel=RTOL)
    assert_reports_equal(reports[0], reports[1])


def test_nested_paths_with_gradients():
    model, x, y = _grad_model("nested")
    report = deadrelu.scan(model, x, labels=y, gradients=True, loss="categorical_crossentropy", batch_size=16)
    enc = model.layers[0]
    assert [s.path for s in report.sites] == [f"encoder/{la.name}" for la in enc.layers]


def _labels_and_loss(variant, y):
    if variant == "string-sparse":
        return y, "categorical_crossentropy"
    if variant == "string-onehot":
        return one_hot(y, CLASSES), "categorical_crossentropy"
    if variant == "object-sparse":
        return y, keras.losses.CategoricalCrossentropy()
    if variant == "object-onehot":
        return one_hot(y, CLASSES), keras.losses.CategoricalCrossentropy()
    if variant == "sparse-loss-sparse":
        return y, "sparse_categorical_crossentropy"
    if variant == "sparse-loss-onehot":
        return one_hot(y, CLASSES), "sparse_categorical_crossentropy"
    if variant == "compiled-sparse":
        return y, None
    raise AssertionError(variant)


@pytest.mark.parametrize(
    "variant",
    [
        "string-sparse",
        "string-onehot",
        "object-sparse",
        "object-onehot",
        "sparse-loss-sparse",
        "sparse-loss-onehot",
        "compiled-sparse",
    ],
)
def test_sparse_and_onehot_labels_give_the_same_numbers(variant):
    model, x, y = _grad_model("dense")
    model.compile(loss="categorical_crossentropy")
    labels, loss = _labels_and_loss(variant, y)
    report = deadrelu.scan(model, x, labels=labels, gradients=True, loss=loss, batch_size=16)
    _check_gradients(report, model, x, one_hot(y, CLASSES))


def _logits_model():
    keras.utils.set_random_seed(33)
    model = keras.Sequential([keras.Input((5,)), L.Dense(6, activation="relu"), L.Dense(CLASSES)])
    x = random_x((5,), 50, 33, scale=2.0)
    y = np.random.default_rng(34).integers(0, CLASSES, 50)
    return model, x, y


def test_from_logits_loss_with_onehot_labels():
    model, x, y = _logits_model()
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    report = deadrelu.scan(model, x, labels=one_hot(y, CLASSES), gradients=True, loss=loss, batch_size=16)
    _check_gradients(report, model, x, one_hot(y, CLASSES), _cce(from_logits=True))


def test_from_logits_loss_with_sparse_labels():
    model, x, y = _logits_model()
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    report = deadrelu.scan(model, x, labels=y, gradients=True, loss=loss, batch_size=16)
    _check_gradients(report, model, x, one_hot(y, CLASSES), _cce(from_logits=True))


@pytest.mark.parametrize("kind", ["dense", "nested", "batchnorm"])
def test_layer_gradients_match_mean_loss_gradient(kind):
    model, x, y = _grad_model(kind)
    y1 = one_hot(y, CLASSES)
    report = deadrelu.scan(model, x, labels=y, gradients=True, loss="categorical_crossentropy", batch_size=16)
    entries = {g["path"]: g for g in report.layer_gradients}

    layers = [la for la in leaves(model) if la.trainable_weights]
    with tf.GradientTape() as tape:
        mean_loss = tf.reduce_mean(keras.losses.categorical_crossentropy(y1, model(x, training=False)))
    variables = [v for la in layers for v in la.trainable_weights]
    grads = tape.gradient(mean_loss, variables)
    by_layer, i = {}, 0
    for la in layers:
        n = len(la.trainable_weights)
        by_layer[id(la)] = (grads[i : i + n], la.trainable_weights)
        i += n

    nested = {id(la) for la in model.layers[0].layers} if kind == "nested" else set()
    assert len(entries) == len(layers)
    for la in layers:
        path = f"encoder/{la.name}" if id(la) in nested else la.name
        entry = entries[path]
        g, w = by_layer[id(la)]
        norm = np.sqrt(sum(np.sum(np.square(to_numpy(t).astype(np.float64))) for t in g))
        wnorm = np.sqrt(sum(np.sum(np.square(to_numpy(t).astype(np.float64))) for t in w))
        np.testing.assert_allclose(entry["grad_norm"], norm, rtol=RTOL, atol=ATOL, err_msg=path)
        np.testing.assert_allclose(entry["weight_norm"], wnorm, rtol=RTOL, err_msg=path)
        assert entry["params"] == sum(int(np.prod(t.shape)) for t in w)


@pytest.mark.parametrize(
    "labels_1d, loss",
    [
        (False, "binary_crossentropy"),
        (True, "object"),
        (False, "object"),
        (True, "binary_crossentropy"),
    ],
)
def test_binary_crossentropy_labels_of_shape_n_or_n1(labels_1d, loss):
    keras.utils.set_random_seed(35)
    d1 = L.Dense(5, activation="relu")
    model = keras.Sequential([keras.Input((4,)), d1, L.Dense(1, activation="sigmoid")])
    plant_bias(d1, {DEAD: -1e3})
    x = random_x((4,), 40, 35, scale=2.0)
    y = (np.random.default_rng(36).random(40) < 0.5).astype(np.float32)
    labels = y if labels_1d else y[:, None]
    loss = keras.losses.BinaryCrossentropy() if loss == "object" else loss
    report = deadrelu.scan(model, x, labels=labels, gradients=True, loss=loss, batch_size=16)
    _check_gradients(report, model, x, y[:, None], keras.losses.binary_crossentropy)
    assert report.sites[0].dead == [DEAD]


def test_gradients_of_a_nested_model_called_twice():
    keras.utils.set_random_seed(37)
    enc_dense = L.Dense(5, activation="relu", name="enc_dense")
    encoder = keras.Sequential([keras.Input((4,)), enc_dense], name="encoder")
    inp = keras.Input((4,))
    pre, concat, head = L.Dense(4, name="pre"), L.Concatenate(), L.Dense(CLASSES, activation="softmax")
    model = keras.Model(inp, head(concat([encoder(inp), encoder(pre(inp))])))
    plant_bias(enc_dense, {DEAD: -1e3})
    x = random_x((4,), 40, 37, scale=2.0)
    y = np.random.default_rng(38).integers(0, CLASSES, 40)
    report = deadrelu.scan(model, x, labels=y, gradients=True, loss="categorical_crossentropy", batch_size=16)

    linear = linear_clone(enc_dense, (None, 4))
    z1, z2 = linear(tf.convert_to_tensor(x)), linear(pre(x))
    with tf.GradientTape() as tape:
        tape.watch([z1, z2])
        out = head(concat([keras.activations.relu(z1), keras.activations.relu(z2)]))
        total = tf.reduce_sum(keras.losses.categorical_crossentropy(one_hot(y, CLASSES), out))
    g1, g2 = tape.gradient(total, [z1, z2])
    mean_abs, zero_rate = reference_grad_stats([to_numpy(g1), to_numpy(g2)])
    s = report.sites[0]
    assert (s.path, s.calls) == ("encoder/enc_dense", 2)
    close(s.grad_mean_abs, mean_abs, "grad_mean_abs")
    close(s.grad_zero_rate, zero_rate, "grad_zero_rate")
    assert s.grad_zero_rate[DEAD] == 1.0


def _two_head_model():
    """A shared ReLU trunk with a softmax head and a regression head (two outputs)."""
    keras.utils.set_random_seed(41)
    inp = keras.Input((5,), name="x")
    trunk = L.Dense(7, activation="relu", name="trunk")
    h = trunk(inp)
    model = keras.Model(inp, [L.Dense(CLASSES, activation="softmax", name="cls")(h), L.Dense(2, name="reg")(h)])
    plant_bias(trunk, {DEAD: -1e3})
    rng = np.random.default_rng(41)
    x = random_x((5,), 30, 41)
    return model, x, rng.integers(0, CLASSES, 30), rng.normal(size=(30, 2)).astype(np.float32)


def test_multi_output_gradients_are_the_weighted_sum_of_output_losses(tmp_path, capfd):
    """ℓₙ = 1.0 · sparse CE(cls) + 0.3 · MSE(reg), as `fit` minimises it; checked against a tape."""
    model, x, y_cls, y_reg = _two_head_model()
    model.compile(loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"}, loss_weights={"cls": 1.0, "reg": 0.3})
    trunk, cls, reg = (model.get_layer(n) for n in ("trunk", "cls", "reg"))
    kernel, bias = trunk.get_weights()
    z = tf.constant(x @ kernel + bias)
    with tf.GradientTape() as tape:
        tape.watch(z)
        a = tf.nn.relu(z)
        per_sample = keras.losses.sparse_categorical_crossentropy(
            y_cls, cls(a)
        ) + 0.3 * keras.losses.mean_squared_error(y_reg, reg(a))
        total = tf.reduce_sum(per_sample)
    mean_abs, zero_rate = reference_grad_stats(to_numpy(tape.gradient(total, z)))

    reports = [
        deadrelu.scan(model, x, labels=labels, gradients=True, batch_size=8)
        for labels in ([y_cls, y_reg], {"reg": y_reg, "cls": y_cls})
    ]
    for report in reports:
        site = report.sites[0]
        close(site.grad_mean_abs, mean_abs, "grad_mean_abs")
        close(site.grad_zero_rate, zero_rate, "grad_zero_rate")
        assert DEAD in site.dead and site.grad_zero_rate[DEAD] == 1.0
        assert report.loss == pytest.approx(float(np.mean(to_numpy(per_sample))), rel=RTOL)
        assert report.settings["loss"] == "cls: sparse_categorical_crossentropy, reg: mse"
    assert_reports_equal(reports[0], reports[1])

    # From the command line: labels in an .npz with one array per output name.
    from deadrelu.cli import main

    model.save(tmp_path / "two_heads.keras")
    np.savez(tmp_path / "data.npz", x=x, cls=y_cls, reg=y_reg)
    assert (
        main(
            [
                "scan",
                str(tmp_path / "two_heads.keras"),
                "--data",
                str(tmp_path / "data.npz"),
                "--gradients",
                "--json",
                str(tmp_path / "scan.json"),
                "--quiet",
            ]
        )
        == 0
    ), capfd.readouterr().err
    assert_reports_equal(deadrelu.Report.from_json(str(tmp_path / "scan.json")), reports[0])


def test_multi_output_labels_must_cover_every_output():
    model, x, y_cls, _ = _two_head_model()
    model.compile(loss=["sparse_categorical_crossentropy", "mse"])
    with pytest.raises(deadrelu.UsageError, match="2 outputs"):
        deadrelu.scan(model, x, labels=[y_cls], gradients=True)
    with pytest.raises(deadrelu.UsageError, match="names the output 'nope'"):
        deadrelu.scan(model, x, labels=[y_cls, y_cls], gradients=True, loss={"nope": "mse"})


def _simple_rnn_reference(x, kernel, recurrent, bias, *, cap=None, backwards=False):
    """The activation of every time step of a SimpleRNN, by a plain loop: a list of [N, units]."""
    h = np.zeros((len(x), kernel.shape[1]), np.float32)
    steps = []
    for t in range(x.shape[1] - 1, -1, -1) if backwards else range(x.shape[1]):
        h = np.maximum(x[:, t] @ kernel + h @ recurrent + bias, 0)
        if cap is not None:
            h = np.minimum(h, cap)
        steps.append(h)
    return steps


@pytest.mark.parametrize("variant", ["last", "sequences", "relu6", "backwards"])
def test_simple_rnn_every_time_step_is_a_call(variant):
    """SimpleRNN(relu): the probe unrolls it, so each time step's activation counts (N × T)."""
    keras.utils.set_random_seed(17)
    act = "relu6" if variant == "relu6" else "relu"
    rnn = L.SimpleRNN(
        5, activation=act, return_sequences=variant == "sequences", go_backwards=variant == "backwards", name="rnn"
    )
    inp = keras.Input((6, 3))
    h = rnn(inp)
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(h) if variant == "sequences" else h))
    kernel, recurrent, bias = rnn.get_weights()
    bias[DEAD] = -1e3
    rnn.set_weights([kernel, recurrent * 0.5, bias + 0.5])
    x = random_x((6, 3), N, 17, scale=3.0)
    steps = _simple_rnn_reference(
        x, kernel, recurrent * 0.5, bias + 0.5, cap=6.0 if act == "relu6" else None, backwards=variant == "backwards"
    )
    before = json.dumps(model.get_config(), sort_keys=True, default=str)
    report = deadrelu.scan(model, x, batch_size=BATCH)
    site = report.sites[0]
    assert (site.path, site.kind, site.calls, site.params["time_steps"]) == ("rnn", "fused", 6, 6)
    assert_site_matches(site, reference_stats(steps, max_value=6.0 if act == "relu6" else None))
    assert DEAD in site.dead
    assert rnn.unroll is False and json.dumps(model.get_config(), sort_keys=True, default=str) == before


def test_simple_rnn_behind_a_mask_counts_every_step():
    """Masked steps still run the cell's activation (Keras selects the outputs afterwards)."""
    keras.utils.set_random_seed(19)
    rnn = L.SimpleRNN(4, activation="relu", name="rnn")
    model = keras.Model(inp := keras.Input((6, 3)), L.Dense(2)(rnn(L.Masking(0.0)(inp))))
    x = random_x((6, 3), 10, 19, scale=2.0)
    x[:, 4:] = 0.0  # the last two steps are masked
    kernel, recurrent, bias = rnn.get_weights()
    site = deadrelu.scan(model, x, batch_size=4).sites[0]
    assert site.calls == 6
    assert_site_matches(
        site,
        reference_stats(
            _simple_rnn_reference(x, kernel, recurrent, bias)[:4] + _masked_steps(x, kernel, recurrent, bias)
        ),
    )


def _masked_steps(x, kernel, recurrent, bias):
    """Steps 5 and 6 behind the mask: the cell runs on zeros from the last unmasked state."""
    h = _simple_rnn_reference(x[:, :4], kernel, recurrent, bias)[-1]
    return [np.maximum(x[:, t] @ kernel + h @ recurrent + bias, 0) for t in (4, 5)]


def test_simple_rnn_that_cannot_be_unrolled_is_listed_patch_makes_a_measured_one_leaky_and_revive_revives_it():
    from deadrelu.fixes.patch import patch_model
    from deadrelu.fixes.revive import revive_model

    variable = keras.Model(inp := keras.Input((None, 3)), L.SimpleRNN(4, activation="relu", name="rnn")(inp))
    site_map = deadrelu.find_sites(variable)
    assert not site_map.sites and [o.path for o in site_map.others] == ["rnn"]
    assert "not fixed or not known here" in site_map.others[0].reason
    assert not patch_model(variable, "leaky").changed  # not a site: nothing selected

    keras.utils.set_random_seed(18)
    model = keras.Model(inp := keras.Input((5, 3)), L.Dense(2)(L.SimpleRNN(4, activation="relu", name="rnn")(inp)))
    kernel, recurrent, bias = model.get_layer("rnn").get_weights()
    bias[0] = -1e3
    model.get_layer("rnn").set_weights([kernel, recurrent, bias])
    x = random_x((5, 3), 12, 18)
    result = patch_model(model, "leaky")
    assert [(r.path, r.new) for r in result.rewrites] == [
        ("rnn", "SimpleRNN(activation=LeakyReLU(negative_slope=0.01))")
    ]
    report = deadrelu.scan(model, x)
    assert list(report.site("rnn").dead) == [0]
    before = np.asarray(model(x))
    revived = revive_model(model, report, seed=0)
    assert revived.revived == {"rnn": [0]} and not revived.skipped
    np.testing.assert_allclose(np.asarray(revived.model(x)), before, atol=1e-6)  # unit 0's output read by nothing


def test_time_distributed_dense_time_steps_are_positions():
    keras.utils.set_random_seed(39)
    inp = keras.Input((7, 4))
    td = L.TimeDistributed(L.Dense(5, activation="relu"))
    model = keras.Model(inp, td(inp))
    x = random_x((7, 4), 40, 39)
    s = deadrelu.scan(model, x, batch_size=16).sites[0]
    assert_site_matches(s, reference_stats(to_numpy(model(x))))

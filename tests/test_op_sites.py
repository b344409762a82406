"""Op-level sites: ReLUs applied as function calls inside custom layers, subclassed models, `Lambda`
layers and custom activation functions.

Every model plants its dead units by construction (a bias of -100 on chosen units; +100 for units
saturated at a relu6 cap). Each planted case is checked three ways against references that never
come from the engine: the dead (and saturated) units are exactly the planted ones, every per-unit
statistic equals numpy on activations materialised by a hand-written forward pass of the same
layers, and the gradient statistics equal `tf.GradientTape` on that forward pass with the
pre-activation watched (per-sample categorical cross-entropy, summed).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import deadrelu
from deadrelu.engine.probe import find_all_sites
from deadrelu.engine.sites import UNKNOWN_REASON
from models import (
    L,
    assert_reports_equal,
    assert_site_matches,
    close,
    one_hot,
    plant_bias,
    random_x,
    reference_grad_stats,
    reference_stats,
    to_numpy,
)

N, BATCH, CLASSES = 48, 20, 3  # the batch does not divide the samples


# -- layers that apply their ReLU as a function call -----------------------------------------------

RELUS: dict[str, Callable] = {
    "ops.relu": ops.relu,
    "ops.nn.relu": ops.nn.relu,
    "activations.relu": keras.activations.relu,
    "tf.nn.relu": tf.nn.relu,
    "threshold": lambda t: keras.activations.relu(t, threshold=0.5),
    "max_value": lambda t: keras.activations.relu(t, max_value=2.0),
    "ops.relu6": ops.relu6,
    "activations.relu6": keras.activations.relu6,
    "tf.nn.relu6": tf.nn.relu6,
    # The maximum-with-zero spellings (their sites are named "…:maximum_<k>", kind "op:maximum").
    "ops.maximum": lambda t: ops.maximum(t, 0.0),
    "ops.maximum(0, x)": lambda t: ops.maximum(0, t),
    "tf.maximum": lambda t: tf.maximum(t, 0),
}
MAXIMUM = ("ops.maximum", "ops.maximum(0, x)", "tf.maximum")
try:  # tf.keras 2's backend function, where installed: it reaches TensorFlow's Relu op directly
    import tf_keras

    RELUS["tf_keras.backend.relu"] = tf_keras.backend.relu
except ImportError:
    pass
CAPS = {"max_value": 2.0, "ops.relu6": 6.0, "activations.relu6": 6.0, "tf.nn.relu6": 6.0}
KINDS = {
    "threshold": "op:relu(threshold=0.5)",
    "max_value": "op:relu(max_value=2)",
    "ops.relu6": "op:relu6",
    "activations.relu6": "op:relu6",
    "tf.nn.relu6": "op:relu6",
    **dict.fromkeys(MAXIMUM, "op:maximum"),
}


@keras.saving.register_keras_serializable("deadrelu_tests")
class Gated(L.Layer):
    """A custom layer: `relu(gate(x))`, with the ReLU spelled as `spelling`."""

    def __init__(self, units: int, spelling: str = "ops.relu", conv: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.units, self.spelling, self.conv = units, spelling, conv
        self.gate = L.Conv2D(units, 3) if conv else L.Dense(units)

    def build(self, input_shape):
        self.gate.build(input_shape)

    def compute_output_shape(self, input_shape):
        return self.gate.compute_output_shape(input_shape)

    def call(self, x):
        return RELUS[self.spelling](self.gate(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "spelling": self.spelling, "conv": self.conv}


@keras.saving.register_keras_serializable("deadrelu_tests")
class TwoRelus(L.Layer):
    """A custom layer applying two ReLUs in one call: `relu(a(x)) * 1 + relu6(b(x))`."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.a = L.Dense(units)
        self.b = L.Dense(units)

    def call(self, x):
        return ops.relu(self.a(x)) + ops.relu6(self.b(x))

    def get_config(self):
        return {**super().get_config(), "units": self.a.units}


class TfNet(keras.Model):
    """A subclassed model whose own `call` applies `tf.nn.relu`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = L.Dense(8)
        self.head = L.Dense(CLASSES, activation="softmax")

    def call(self, x):
        return self.head(tf.nn.relu(self.hidden(x)))


def named_relu(t):
    """A custom activation function (a named Python function)."""
    return ops.relu(t)


# -- the planted cases -----------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    """A model, its data, and a hand-written forward pass of its layers.

    `forward(x, relu)` runs the model's layers by hand; at each op-level site it calls
    `relu(path, z, fn)`, which applies the site's ReLU `fn` to the pre-activation `z` and returns it.
    """

    model: keras.Model
    x: np.ndarray
    forward: Callable
    dead: dict[str, list[int]]
    caps: dict[str, float | None]
    kinds: dict[str, str]
    layers: dict[str, str]
    saturated: dict[str, list[int]] = dataclasses.field(default_factory=dict)


def _head():
    return L.Dense(CLASSES, activation="softmax", name="head")


def _custom_layer(spelling: str = "ops.relu") -> Case:
    keras.utils.set_random_seed(1)
    block = Gated(8, spelling, name="block_2")
    inp = keras.Input((5,))
    head = _head()
    model = keras.Model(inp, head(block(inp)), name="custom")
    dead = [0, 3, 5]
    plant_bias(block.gate, dict.fromkeys(dead, -100.0))
    saturated = []
    if CAPS.get(spelling) == 6.0:
        saturated = [2, 6]
        plant_bias(block.gate, dict.fromkeys(saturated, 100.0))
    path = "block_2:maximum_0" if spelling in MAXIMUM else "block_2:relu_0"
    return Case(
        model,
        random_x((5,), N, 1, 2.0),
        lambda x, relu: head(relu(path, block.gate(x), RELUS[spelling])),
        {path: dead},
        {path: CAPS.get(spelling)},
        {path: KINDS.get(spelling, "op:relu")},
        {path: "Gated"},
        {path: saturated},
    )


def _threshold() -> Case:
    case = _custom_layer("threshold")
    # A unit whose pre-activation is always 0.4: positive, yet never above the threshold, so dead.
    gate = case.model.get_layer("block_2").gate
    kernel = to_numpy(gate.kernel).copy()
    kernel[:, 7] = 0.0
    gate.kernel.assign(kernel)
    plant_bias(gate, {7: 0.4})
    case.dead["block_2:relu_0"] = [0, 3, 5, 7]
    return case


def _subclassed() -> Case:
    keras.utils.set_random_seed(2)
    model = TfNet(name="tf_net")
    x = random_x((5,), N, 2, 2.0)
    model(x[:1])
    plant_bias(model.hidden, {1: -100.0, 4: -100.0})
    path = "tf_net:relu_0"
    return Case(
        model,
        x,
        lambda x, relu: model.head(relu(path, model.hidden(x), tf.nn.relu)),
        {path: [1, 4]},
        {path: None},
        {path: "op:relu"},
        {path: "TfNet"},
    )


def _fused_callable(activation, name: str, spelling: str = "relu") -> Case:
    keras.utils.set_random_seed(3)
    dense = L.Dense(8, activation=activation, name=name)
    inp = keras.Input((5,))
    head = _head()
    model = keras.Model(inp, head(dense(inp)))
    plant_bias(dense, {2: -100.0, 6: -100.0})
    path = f"{name}:{spelling}_0"

    def forward(x, relu):
        z = ops.matmul(x, dense.kernel) + dense.bias
        return head(relu(path, z, ops.relu))

    return Case(
        model,
        random_x((5,), N, 3, 2.0),
        forward,
        {path: [2, 6]},
        {path: None},
        {path: f"op:{spelling}"},
        {path: "Dense"},
    )


def _lambda_unsafe(tmp_path) -> Case:
    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [keras.Input((5,)), L.Dense(8, name="pre"), L.Lambda(lambda t: ops.relu(t), name="lam"), _head()],
        name="with_lambda",
    )
    plant_bias(model.get_layer("pre"), {0: -100.0, 7: -100.0})
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(deadrelu.errors.ModelLoadError):
        deadrelu.load_model(str(path))  # Python code in a file runs only with unsafe=True (--unsafe)
    loaded = deadrelu.load_model(str(path), unsafe=True)
    pre, head = loaded.get_layer("pre"), loaded.get_layer("head")
    site = "lam:relu_0"
    return Case(
        loaded,
        random_x((5,), N, 4, 2.0),
        lambda x, relu: head(relu(site, pre(x), ops.relu)),
        {site: [0, 7]},
        {site: None},
        {site: "op:relu"},
        {site: "Lambda"},
    )


def _shared_layer() -> Case:
    keras.utils.set_random_seed(5)
    block = Gated(6, name="block")
    p1, p2 = L.Dense(4, name="p1"), L.Dense(4, name="p2")
    inp = keras.Input((5,))
    head = _head()
    model = keras.Model(inp, head(L.Add(name="add")([block(p1(inp)), block(p2(inp))])))
    plant_bias(block.gate, {1: -100.0, 2: -100.0})
    path = "block:relu_0"

    def forward(x, relu):
        return head(relu(path, block.gate(p1(x)), ops.relu) + relu(path, block.gate(p2(x)), ops.relu))

    return Case(
        model, random_x((5,), N, 5, 2.0), forward, {path: [1, 2]}, {path: None}, {path: "op:relu"}, {path: "Gated"}
    )


def _nested() -> Case:
    keras.utils.set_random_seed(6)
    block = Gated(8, name="blk")
    inner = keras.Sequential([keras.Input((4,)), block], name="inner")
    pre, head = L.Dense(4, name="pre"), _head()
    model = keras.Sequential([keras.Input((5,)), pre, inner, head], name="outer")
    plant_bias(block.gate, {4: -100.0})
    path = "inner/blk:relu_0"
    return Case(
        model,
        random_x((5,), N, 6, 2.0),
        lambda x, relu: head(relu(path, block.gate(pre(x)), ops.relu)),
        {path: [4]},
        {path: None},
        {path: "op:relu"},
        {path: "Gated"},
    )


def _two_in_one_call() -> Case:
    keras.utils.set_random_seed(7)
    block = TwoRelus(6, name="two")
    inp = keras.Input((5,))
    head = _head()
    model = keras.Model(inp, head(block(inp)))
    plant_bias(block.a, {0: -100.0})
    plant_bias(block.b, {3: -100.0, 5: 100.0})
    x = random_x((5,), N, 7, 2.0)

    def forward(x, relu):
        return head(relu("two:relu_0", block.a(x), ops.relu) + relu("two:relu_1", block.b(x), ops.relu6))

    first, second = "two:relu_0", "two:relu_1"
    return Case(
        model,
        x,
        forward,
        {first: [0], second: [3]},
        {first: None, second: 6.0},
        {first: "op:relu", second: "op:relu6"},
        dict.fromkeys((first, second), "TwoRelus"),
        {first: [], second: [5]},
    )


def _conv() -> Case:
    keras.utils.set_random_seed(8)
    block = Gated(4, conv=True, name="conv_block")
    inp = keras.Input((6, 7, 2))
    pool, head = L.GlobalAveragePooling2D(name="pool"), _head()
    model = keras.Model(inp, head(pool(block(inp))))
    plant_bias(block.gate, {1: -100.0})
    path = "conv_block:relu_0"
    return Case(
        model,
        random_x((6, 7, 2), N, 8),
        lambda x, relu: head(pool(relu(path, block.gate(x), ops.relu))),
        {path: [1]},
        {path: None},
        {path: "op:relu"},
        {path: "Gated"},
    )


def _time_distributed() -> Case:
    # TimeDistributed calls `layer.call` directly, once per time step: each step is one call of the site.
    keras.utils.set_random_seed(9)
    block = Gated(6, name="blk")
    inp = keras.Input((4, 5))
    flat, head = L.Flatten(name="flat"), _head()
    model = keras.Model(inp, head(flat(L.TimeDistributed(block, name="td")(inp))))
    plant_bias(block.gate, {3: -100.0})
    path = "td/blk:relu_0"

    def forward(x, relu):
        steps = [relu(path, block.gate(x[:, t]), ops.relu) for t in range(x.shape[1])]
        return head(flat(ops.stack(steps, axis=1)))

    return Case(
        model, random_x((4, 5), N, 9, 2.0), forward, {path: [3]}, {path: None}, {path: "op:relu"}, {path: "Gated"}
    )


CASES = {
    "custom-layer-ops.relu": lambda tmp: _custom_layer("ops.relu"),
    "custom-layer-ops.nn.relu": lambda tmp: _custom_layer("ops.nn.relu"),
    "custom-layer-activations.relu": lambda tmp: _custom_layer("activations.relu"),
    "custom-layer-tf.nn.relu": lambda tmp: _custom_layer("tf.nn.relu"),
    **(
        {"custom-layer-tf_keras.backend.relu": lambda tmp: _custom_layer("tf_keras.backend.relu")}
        if "tf_keras.backend.relu" in RELUS
        else {}
    ),
    "subclassed-model-tf.nn.relu": lambda tmp: _subclassed(),
    "activations.relu-threshold": lambda tmp: _threshold(),
    "activations.relu-max_value": lambda tmp: _custom_layer("max_value"),
    "relu6-op-saturated": lambda tmp: _custom_layer("ops.relu6"),
    "activations.relu6-saturated": lambda tmp: _custom_layer("activations.relu6"),
    "tf.nn.relu6-saturated": lambda tmp: _custom_layer("tf.nn.relu6"),
    "activation=lambda": lambda tmp: _fused_callable(lambda t: ops.relu(t), "lam_dense"),
    "activation=named-function": lambda tmp: _fused_callable(named_relu, "named"),
    "activation=lambda-maximum": lambda tmp: _fused_callable(lambda t: ops.maximum(t, 0.0), "max_dense", "maximum"),
    **{f"custom-layer-{spelling}": (lambda tmp, s=spelling: _custom_layer(s)) for spelling in MAXIMUM},
    "Lambda-unsafe": _lambda_unsafe,
    "custom-layer-used-twice": lambda tmp: _shared_layer(),
    "nested-model": lambda tmp: _nested(),
    "two-relus-in-one-call": lambda tmp: _two_in_one_call(),
    "custom-conv-layer": lambda tmp: _conv(),
    "time-distributed-custom-layer": lambda tmp: _time_distributed(),
}


def _materialise(case: Case, y: np.ndarray):
    """Per site: its outputs (one array per call), and ∂ℓₙ/∂z of each call from `tf.GradientTape`."""
    outputs: dict[str, list] = {}
    zs: dict[str, list] = {}
    with tf.GradientTape(persistent=True) as tape:

        def relu(path, z, fn):
            tape.watch(z)
            zs.setdefault(path, []).append(z)
            a = fn(z)
            outputs.setdefault(path, []).append(to_numpy(a))
            return a

        y_pred = case.forward(tf.convert_to_tensor(case.x), relu)
        total = tf.reduce_sum(keras.losses.categorical_crossentropy(y, y_pred))
    np.testing.assert_allclose(to_numpy(y_pred), to_numpy(case.model(case.x, training=False)), rtol=1e-5, atol=1e-6)
    grads = {path: [to_numpy(tape.gradient(total, z)) for z in calls] for path, calls in zs.items()}
    return outputs, grads


@pytest.mark.parametrize("name", list(CASES))
def test_planted_op_sites_match_numpy_and_gradient_tape(name, tmp_path):
    case = CASES[name](tmp_path)
    y = one_hot(np.random.default_rng(0).integers(0, CLASSES, N), CLASSES)
    outputs, grads = _materialise(case, y)

    report = deadrelu.scan(case.model, case.x, batch_size=BATCH)
    with_grads = deadrelu.scan(
        case.model, case.x, labels=y, gradients=True, loss="categorical_crossentropy", batch_size=BATCH
    )
    assert_reports_equal(report, deadrelu.scan(case.model, case.x, batch_size=N))  # batch size does not matter
    op_sites = [s for s in report.sites if s.kind.startswith("op:")]
    assert [s.path for s in op_sites] == list(case.dead)
    for site in op_sites:
        path = site.path
        assert site.kind == case.kinds[path] and site.layer == case.layers[path]
        assert site.dead == case.dead[path]  # exactly the planted units
        assert site.saturated == case.saturated.get(path, [])
        assert_site_matches(site, reference_stats(outputs[path], max_value=case.caps[path]))
        graded = with_grads.site(path)
        mean_abs, zero_rate = reference_grad_stats(grads[path])
        close(graded.grad_mean_abs, mean_abs, f"{path}: grad_mean_abs")
        close(graded.grad_zero_rate, zero_rate, f"{path}: grad_zero_rate")
        assert all(graded.grad_zero_rate[u] == 1.0 for u in site.dead)
    assert not any(o["reason"] == UNKNOWN_REASON for o in report.others)  # what it applies is measured
    assert not [note for note in report.notes if "no site covers" in note]


def test_threshold_params_and_op_site_paths_are_stable():
    case = _two_in_one_call()
    first = deadrelu.scan(case.model, case.x, batch_size=BATCH)
    again = deadrelu.scan(case.model, case.x, batch_size=BATCH)
    fresh = deadrelu.scan(case.model, case.x, batch_size=7)
    assert (
        [s.path for s in first.sites]
        == [s.path for s in again.sites]
        == [s.path for s in fresh.sites]
        == ["two:relu_0", "two:relu_1"]
    )
    assert first.site("two:relu_1").params == {"activation": "relu6", "max_value": 6.0, "applied_in": "call"}
    case = _threshold()
    threshold = deadrelu.scan(case.model, case.x).site("block_2:relu_0")
    gate = case.model.get_layer("block_2").gate.name
    assert threshold.params == {
        "activation": "relu",
        "threshold": 0.5,
        "applied_in": "call",
        "fed_by": f"block_2/{gate}",
    }


# -- no double counting, no change for layer-only models ------------------------------------------


def _layer_level_model():
    keras.utils.set_random_seed(11)
    inp = keras.Input((6, 5))
    h = L.Dense(6, activation="relu", name="fused")(inp)
    h = L.Dense(6, activation=keras.activations.relu, name="fused_fn")(h)
    h = L.ReLU(max_value=2.0, threshold=0.1, name="relu_layer")(h)
    h = L.Activation("relu6", name="act")(h)
    h = L.PReLU(name="prelu")(h)  # applies activations.relu inside: not a site
    h = L.ReLU(negative_slope=0.1, max_value=3.0, name="slope")(h)  # applies backend relu inside: not a site
    h = L.LeakyReLU(name="leaky")(h)
    h = L.TimeDistributed(L.Dense(4, activation="relu", name="inner"), name="td")(h)
    h = L.SimpleRNN(4, activation="relu", return_sequences=True, name="rnn")(h)
    h = L.LSTM(3, activation="relu", name="lstm")(h)  # two sites: its candidate and its cell state
    return keras.Model(inp, L.Dense(CLASSES, activation="softmax", name="out")(h))


def test_layer_level_sites_are_not_counted_twice():
    model = _layer_level_model()
    x = random_x((6, 5), N, 11)
    site_map = deadrelu.find_sites(model)
    report = deadrelu.scan(model, x, batch_size=BATCH)
    assert (
        [s.path for s in report.sites]
        == [s.path for s in site_map.sites]
        == ["fused", "fused_fn", "relu_layer", "act", "td/inner", "rnn", "lstm:candidate", "lstm:state"]
    )
    assert [o["path"] for o in report.others] == [o.path for o in site_map.others]
    assert report.notes == []
    assert find_all_sites(model).sites == site_map.sites


def test_scan_puts_back_every_function_and_call_it_wrapped():
    from deadrelu._keras_compat import relu_functions

    case = _custom_layer()
    before = [(owner, name, owner.__dict__[name]) for owner, name in relu_functions()]
    layers = [case.model] + case.model._flatten_layers(include_self=False, recursive=True)
    calls = [layer.__dict__.get("call") for layer in layers]
    deadrelu.scan(case.model, case.x, batch_size=BATCH)
    with pytest.raises(deadrelu.errors.DataError):
        deadrelu.scan(case.model, random_x((7,), 4, 0))  # fails midway: the wrong input shape
    assert all(owner.__dict__[name] is fn for owner, name, fn in before)
    assert [layer.__dict__.get("call") for layer in layers] == calls
    from tensorflow.python.eager import context

    assert not context.context().op_callbacks
    x = case.x[:5]
    np.testing.assert_array_equal(to_numpy(ops.relu(x)), np.maximum(x, 0))


# -- honest labels -------------------------------------------------------------------------------


def test_unclassifiable_callable_is_unknown_never_cannot_die():
    keras.utils.set_random_seed(12)
    inp = keras.Input((5,))
    swishy = L.Dense(4, activation=lambda t: t * ops.sigmoid(t), name="swishy")
    model = keras.Model(inp, L.Dense(2, name="out")(swishy(inp)))
    listed = {o.path: o.reason for o in deadrelu.find_sites(model).others}
    assert listed == {"swishy": UNKNOWN_REASON}
    report = deadrelu.scan(model, random_x((5,), 10, 12))
    assert report.sites == [] and [o["reason"] for o in report.others] == [UNKNOWN_REASON]


class Looped(L.Layer):
    """A ReLU inside a loop (`ops.fori_loop`) and one applied to the layer's own weights."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(4)

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.scale = self.add_weight(shape=(4,), initializer="ones")

    def call(self, x):
        h = self.dense(x) * ops.relu(self.scale)
        return ops.fori_loop(0, 2, lambda i, t: ops.relu(t) - 0.1, h)


def test_relus_no_site_covers_are_said_in_one_line():
    keras.utils.set_random_seed(13)
    inp = keras.Input((5,))
    model = keras.Model(inp, L.Dense(2)(Looped(name="looped")(inp)))
    report = deadrelu.scan(model, random_x((5,), 10, 13))
    assert report.sites == []
    uncovered = {o["path"]: o["reason"] for o in report.others}
    assert "weights" in uncovered["looped:relu_0"] and "loop" in uncovered["looped:relu_1"]
    [note] = [note for note in report.notes if "no site covers" in note]
    assert note.startswith("2 ReLUs ran that no site covers: looped:relu_0 (Looped)")


# -- everything that reads a report treats them as sites -------------------------------------------


def test_json_report_compare_plots_html_monitor_and_inspect(tmp_path, capfd):
    from deadrelu.cli import main

    case = _custom_layer()
    path = tmp_path / "custom.keras"
    case.model.save(path)
    report = deadrelu.scan(case.model, case.x)
    report.to_json(tmp_path / "a.json")
    again = deadrelu.Report.from_json(tmp_path / "a.json")
    assert again.site("block_2:relu_0").dead == [0, 3, 5] and again.site("block_2:relu_0").kind == "op:relu"
    assert json.loads((tmp_path / "a.json").read_text())["sites"][0]["path"] == "block_2:relu_0"

    monitor = deadrelu.DeadReluMonitor(case.x, check_freq="epoch", verbose=0)
    case.model.compile(optimizer="sgd", loss="categorical_crossentropy")
    y = one_hot(np.arange(N) % CLASSES, CLASSES)
    case.model.fit(case.x, y, epochs=1, verbose=0, callbacks=[monitor])
    assert [s.path for s in monitor.last_report.sites] == ["block_2:relu_0"]

    np.savez(tmp_path / "x.npz", x=case.x, y=y)
    scan = [
        "scan",
        path,
        "--data",
        tmp_path / "x.npz",
        "--json",
        tmp_path / "b.json",
        "--gradients",
        "--quiet",
        "--loss",
        "categorical_crossentropy",
    ]
    assert main([str(a) for a in scan]) == 0
    assert deadrelu.Report.from_json(tmp_path / "b.json").site("block_2:relu_0").grad_mean_abs is not None
    report = ["report", tmp_path / "b.json", "--compare", tmp_path / "a.json", "--html", tmp_path / "r.html"]
    assert main([str(a) for a in report + ["--plot", tmp_path / "r.png", "--quiet"]]) == 0
    assert "block_2:relu_0" in (tmp_path / "r.html").read_text() and (tmp_path / "r.png").stat().st_size > 0
    capfd.readouterr()
    assert main(["inspect", str(path)]) == 0
    out = capfd.readouterr().out
    assert "block_2:relu_0" in out and "1 ReLU sites (1 applied as function calls" in out


# -- patch and revive: fixes where they can be done, reasons where they cannot --------------------

REWRITABLE = ["activation=lambda", "activation=named-function", "Lambda-unsafe", "activation=lambda-maximum"]
REVIVABLE = REWRITABLE + [
    "custom-layer-ops.relu",
    "custom-layer-ops.maximum",
    "custom-layer-tf.maximum",
    "custom-layer-tf.nn.relu",
    "activations.relu-threshold",
    "custom-layer-used-twice",
    "nested-model",
    "custom-conv-layer",
]
LEFT = {  # case: (patch reason, revive reason), each a phrase of the reason given
    "custom-layer-ops.relu": ("inside Gated.call", None),
    "two-relus-in-one-call": ("inside TwoRelus.call", "cannot tell which weights"),
    "time-distributed-custom-layer": ("inside Gated.call", "not part of a functional graph"),
}


@pytest.mark.parametrize("name", REWRITABLE)
def test_patch_rewrites_an_exact_relu_callable(name, tmp_path):
    case = CASES[name](tmp_path)
    [path] = case.dead
    result = deadrelu.patch_model(case.model, "prelu", data=case.x)
    assert result.changed and result.skipped == {}
    [rewrite] = result.rewrites
    kind = case.kinds[path]
    assert rewrite.path == path and rewrite.kind == kind and rewrite.old.endswith(f": {kind}")
    assert result.check.passed and result.check.max_abs_diff == 0.0  # alpha 0 is the original function
    patched = deadrelu.scan(result.model, case.x)
    assert not [s for s in patched.sites if s.kind.startswith("op:")]  # the ReLU became a PReLU layer
    assert any(isinstance(layer, L.PReLU) for layer in result.model.layers)


@pytest.mark.parametrize("name", REVIVABLE)
def test_revive_reinitialises_op_level_dead_units_outputs_unchanged(name, tmp_path):
    from deadrelu.fixes.revive import revive_model

    case = CASES[name](tmp_path)
    before = to_numpy(case.model(case.x, training=False))
    report = deadrelu.scan(case.model, case.x, batch_size=BATCH)
    result = revive_model(case.model, report, seed=0, data=case.x, in_place=True)  # lambdas do not copy
    assert result.revived == case.dead and result.skipped == {}
    np.testing.assert_allclose(to_numpy(case.model(case.x, training=False)), before, rtol=0, atol=1e-6)
    after = deadrelu.scan(case.model, case.x, batch_size=BATCH)
    assert all(after.site(path).dead == [] for path in case.dead)


@pytest.mark.parametrize("name", list(LEFT))
def test_sites_patch_and_revive_cannot_change_are_left_with_the_reason(name, tmp_path):
    case = CASES[name](tmp_path)
    patch_reason, revive_reason = LEFT[name]
    result = deadrelu.patch_model(case.model, "leaky")
    assert not result.changed and set(result.skipped) == set(case.dead)
    assert all(patch_reason in reason for reason in result.skipped.values())
    assert "nothing patched: no selected site can be rewritten (the result is an unchanged copy)" in result.notes
    if revive_reason is not None:
        revived = deadrelu.revive_model(case.model, case.x, seed=0)
        assert revived.revived == {} and set(revived.skipped) == set(case.dead)
        assert all(revive_reason in reason for reason in revived.skipped.values())


def test_cli_writes_nothing_when_nothing_changed_and_hints_only_what_can_act(tmp_path, capfd):
    from deadrelu.cli import main

    def run(argv):
        code = main([str(a) for a in argv])
        return code, capfd.readouterr()

    data = tmp_path / "x.npz"
    custom = _custom_layer()  # revive can act (Dense inside the layer), patch cannot
    np.savez(data, x=custom.x)
    custom.model.save(tmp_path / "custom.keras")
    code, (_, err) = run(["scan", tmp_path / "custom.keras", "--data", data])
    [hint] = [line for line in err.splitlines() if line.startswith("deadrelu: next:")]
    assert code == 0 and "deadrelu revive" in hint and "deadrelu patch" not in hint
    code, (_, err) = run(["patch", tmp_path / "custom.keras", "--to", "leaky", "-o", tmp_path / "p.keras", "--quiet"])
    assert code == 2 and "nothing patched: the selected site cannot be rewritten" in err
    assert "inside Gated.call" in err and not (tmp_path / "p.keras").exists()
    code, (out, _) = run(["revive", tmp_path / "custom.keras", "--data", data, "-o", tmp_path / "r.keras", "--quiet"])
    assert code == 0 and (tmp_path / "r.keras").exists() and "3 revived" in out

    two = _two_in_one_call()  # neither can act
    two.model.save(tmp_path / "two.keras")
    np.savez(data, x=two.x)
    code, (_, err) = run(["scan", tmp_path / "two.keras", "--data", data])
    [hint] = [line for line in err.splitlines() if line.startswith("deadrelu: next:")]
    assert "revive and patch cannot change the flagged sites (two:relu_0, two:relu_1)" in hint and "`" not in hint
    code, (_, err) = run(["revive", tmp_path / "two.keras", "--data", data, "-o", tmp_path / "r2.keras", "--quiet"])
    assert code == 2 and "nothing revived: none of the 2 dead units can be re-initialised" in err
    assert not (tmp_path / "r2.keras").exists()

    healthy = keras.Sequential([keras.Input((5,)), L.Dense(4, activation="relu"), L.Dense(2)])
    healthy.layers[0].bias.assign(np.full(4, 100.0, np.float32))  # every unit fires: nothing to revive
    healthy.save(tmp_path / "healthy.keras")
    code, (out, _) = run(["revive", tmp_path / "healthy.keras", "--data", data, "-o", tmp_path / "r3.keras"])
    assert code == 0 and "nothing revived: no dead units; nothing was written" in out
    assert not (tmp_path / "r3.keras").exists()


def celu(t):
    """A custom activation calling Keras's CELU (so the model runs code of its own)."""
    return keras.activations.celu(t)


class NotAReLU(L.Layer):
    """`maximum` against something that is not a scalar zero: no ReLU."""

    def call(self, x):
        return ops.maximum(x, 0.5) + ops.maximum(x, ops.zeros_like(x)) + tf.maximum(x, -1.0)


def test_maximum_is_a_site_only_against_zero_and_only_in_the_users_code():
    # Keras's own code also takes maxima with 0 (the TensorFlow backend's CELU is
    # `tf.maximum(x, 0.0) + …`): those are not ReLU sites, nor are maxima against other values.
    keras.utils.set_random_seed(4)
    inp = keras.Input((6,))
    h = L.Dense(8, activation=celu, name="celu_dense")(inp)
    h = L.LayerNormalization()(h)
    h = L.BatchNormalization()(h)
    h = NotAReLU(name="not_relu")(h)
    model = keras.Model(inp, _head()(h))
    report = deadrelu.scan(model, random_x((6,), N, 2, 2.0), batch_size=BATCH)
    assert [s.path for s in report.sites if s.kind.startswith("op:")] == []
    assert not [note for note in report.notes if "no site covers" in note]

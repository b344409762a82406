"""`deadrelu.find_sites` (what is a site, its kind, params and unit axis) and the promise that a
scan leaves the user's model exactly as it was, even when it fails midway."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import deadrelu
from models import L, all_layers, assert_reports_equal, random_x, reference_stats, to_numpy

# -- classification --------------------------------------------------------------------------------

SITES = {
    # id: (layer factory, kind, params)
    "Dense-relu": (lambda: L.Dense(4, activation="relu"), "fused", {"activation": "relu"}),
    "Dense-relu6": (lambda: L.Dense(4, activation="relu6"), "fused", {"activation": "relu6", "max_value": 6.0}),
    "Dense-keras.activations.relu": (
        lambda: L.Dense(4, activation=keras.activations.relu),
        "fused",
        {"activation": "relu"},
    ),
    "Activation-relu": (lambda: L.Activation("relu"), "activation", {"activation": "relu"}),
    "Activation-relu6": (lambda: L.Activation("relu6"), "activation", {"activation": "relu6", "max_value": 6.0}),
    "ReLU": (lambda: L.ReLU(), "relu_layer", {"activation": "relu"}),
    "ReLU-max_value": (lambda: L.ReLU(max_value=6.0), "relu_layer", {"activation": "relu", "max_value": 6.0}),
    "ReLU-threshold": (lambda: L.ReLU(threshold=0.5), "relu_layer", {"activation": "relu", "threshold": 0.5}),
    "ReLU-both": (
        lambda: L.ReLU(max_value=2.0, threshold=0.25),
        "relu_layer",
        {"activation": "relu", "max_value": 2.0, "threshold": 0.25},
    ),
    "ReLU-explicit-zero-slope": (lambda: L.ReLU(negative_slope=0.0), "relu_layer", {"activation": "relu"}),
}

OTHERS = {
    "LeakyReLU": lambda: L.LeakyReLU(),
    "PReLU": lambda: L.PReLU(),
    "ELU": lambda: L.ELU(),
    "ReLU-negative_slope": lambda: L.ReLU(negative_slope=0.1),
    "Activation-gelu": lambda: L.Activation("gelu"),
    "Activation-leaky_relu": lambda: L.Activation("leaky_relu"),
    "Activation-silu": lambda: L.Activation("silu"),
    "Dense-elu": lambda: L.Dense(4, activation="elu"),
    "Dense-tanh": lambda: L.Dense(4, activation="tanh"),
    "Dense-sigmoid": lambda: L.Dense(4, activation="sigmoid"),
}


def _wrap(layer):
    inp = keras.Input((3,))
    return keras.Model(inp, L.Dense(2)(layer(L.Dense(4, name="pre")(inp))), name="top")


@pytest.mark.parametrize("case", list(SITES))
def test_site_kinds_and_params(case):
    factory, kind, params = SITES[case]
    layer = factory()
    site_map = deadrelu.find_sites(_wrap(layer))
    assert [s.path for s in site_map.sites] == [layer.name]
    site = site_map.sites[0]
    assert site.layer is layer
    assert site.kind == kind
    assert site.params == params
    assert site.channel_axis == -1 and site.index == 0
    assert site.capped == ("max_value" in params)
    assert site_map.others == [] or all(o.path != layer.name for o in site_map.others)


@pytest.mark.parametrize("case", list(OTHERS))
def test_non_dying_activations_are_listed_never_sites(case):
    layer = OTHERS[case]()
    model = _wrap(layer)
    site_map = deadrelu.find_sites(model)
    assert site_map.sites == []
    assert [o.path for o in site_map.others] == [layer.name]
    assert site_map.others[0].layer_class == type(layer).__name__

    # Scanning measures nothing there, and lists it.
    x = random_x((3,), 12, 0)
    report = deadrelu.scan(model, x, batch_size=5)
    assert report.sites == [] and report.summary["units"] == 0 and report.summary["dead"] == 0
    assert [o["path"] for o in report.others] == [layer.name]


def test_mixed_model_site_order_and_others():
    keras.utils.set_random_seed(1)
    inp = keras.Input((3,))
    h = L.Dense(4, activation="relu", name="a")(inp)
    h = L.LeakyReLU(name="leaky")(h)
    h = L.Dense(4, name="b")(h)
    h = L.ReLU(max_value=6.0, name="c")(h)
    h = L.PReLU(name="prelu")(h)
    h = L.Dense(4, activation="gelu", name="d")(h)
    h = L.Activation("relu6", name="e")(h)
    h = L.ReLU(negative_slope=0.1, name="slope")(h)
    model = keras.Model(inp, L.Dense(2, activation="softmax", name="out")(h))
    site_map = deadrelu.find_sites(model)
    assert [s.path for s in site_map.sites] == ["a", "c", "e"]
    assert [s.index for s in site_map.sites] == [0, 1, 2]
    assert {o.path for o in site_map.others} == {"leaky", "prelu", "d", "slope", "out"}
    report = deadrelu.scan(model, random_x((3,), 30, 1), batch_size=8)
    assert [s.path for s in report.sites] == ["a", "c", "e"]
    assert report.summary["units"] == 12


def test_nested_paths_leave_out_the_top_model():
    inner = keras.Sequential([keras.Input((4,)), L.Dense(4, activation="relu", name="deep")], name="inner")
    e_in = keras.Input((3,))
    encoder = keras.Model(e_in, inner(L.Dense(4, activation="relu", name="dense_1")(e_in)), name="encoder")
    decoder = keras.Sequential([keras.Input((4,)), L.Dense(3), L.ReLU(name="act")], name="decoder")
    inp = keras.Input((3,))
    model = keras.Model(inp, decoder(encoder(inp)), name="autoencoder")
    paths = [s.path for s in deadrelu.find_sites(model)]
    assert paths == ["encoder/dense_1", "encoder/inner/deep", "decoder/act"]


# -- unit axis -------------------------------------------------------------------------------------


def test_channels_last_conv_unit_axis_is_last():
    inp = keras.Input((6, 5, 2))
    model = keras.Model(inp, L.Conv2D(3, 2, activation="relu")(inp))
    assert deadrelu.find_sites(model).sites[0].channel_axis == -1


def test_channels_first_conv_and_following_activation_use_axis_1():
    keras.utils.set_random_seed(2)
    inp = keras.Input((2, 7, 9))
    conv = L.Conv2D(3, 2, data_format="channels_first", activation="relu", name="conv")
    h = conv(inp)
    pre = L.Conv2D(4, 2, data_format="channels_first", name="pre")
    act = L.Activation("relu", name="act")
    bn = L.BatchNormalization(axis=1, name="bn")
    act_bn = L.ReLU(name="act_bn")
    out = act_bn(bn(act(pre(h))))
    model = keras.Model(inp, out)
    sites = {s.path: s for s in deadrelu.find_sites(model)}
    assert {p: s.channel_axis for p, s in sites.items()} == {"conv": 1, "act": 1, "act_bn": 1}
    assert sites["conv"].params["channel_axis"] == 1

    x = random_x((2, 7, 9), 20, 2)
    report = deadrelu.scan(model, x, batch_size=6)
    assert [(s.units, s.positions) for s in report.sites] == [(3, 6 * 8), (4, 5 * 7), (4, 5 * 7)]
    # Reference: the site outputs from a separate compiled model, reduced on axis 1.
    outs = tf.function(keras.Model(inp, [conv.output, act.output, act_bn.output]))(x)
    for s, a in zip(report.sites, outs):
        ref = reference_stats(to_numpy(a), channel_axis=1)
        np.testing.assert_array_equal(s.fires, ref.fires)
        np.testing.assert_allclose(s.mean_abs, ref.mean_abs, rtol=1e-5, atol=1e-6)


def test_activation_after_add_in_channels_first_network_uses_axis_1():
    inp = keras.Input((4, 6, 7))
    a = L.Conv2D(4, 3, padding="same", data_format="channels_first")(inp)
    b = L.Add()([inp, a])
    act = L.Activation("relu", name="act")
    c = L.Dropout(0.5)(act(b))
    act2 = L.ReLU(name="act2")
    model = keras.Model(inp, act2(c))
    sites = {s.path: s.channel_axis for s in deadrelu.find_sites(model)}
    assert sites == {"act": 1, "act2": 1}


# -- the scan leaves the model exactly as it was ---------------------------------------------------


class _Guard(L.Layer):
    """Passes its input through; fails at run time when a value exceeds 100 (inside the compiled step),
    or at trace time when armed with `fail_on_trace`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fail_on_trace = False

    def call(self, x):
        if self.fail_on_trace and not tf.executing_eagerly():
            raise RuntimeError("trace-time failure")
        tf.debugging.assert_less(tf.reduce_max(tf.abs(x)), 100.0, message="guard tripped")
        return x


def _hooked_model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((4,))
    h = L.Dense(5, activation="relu", name="fused")(inp)
    h = _Guard(name="guard")(h)
    h = L.ReLU(max_value=6.0, name="relu_layer")(h)
    inner = keras.Sequential([keras.Input((5,)), L.Dense(4), L.Activation("relu", name="act")], name="inner")
    h = inner(h)
    model = keras.Model(inp, L.Dense(3, activation="softmax", name="out")(h), name="hooked")
    model.compile(loss="categorical_crossentropy")
    return model


def _snapshot(model):
    return {
        id(layer): (layer.name, sorted(layer.__dict__), layer.__dict__.get("activation"), layer.__dict__.get("call"))
        for layer in all_layers(model)
    }


def _assert_untouched(model, before, x, y_before, json_before):
    after = _snapshot(model)
    assert after.keys() == before.keys()
    for key, (name, keys, activation, call) in before.items():
        _a_name, a_keys, a_activation, a_call = after[key]
        assert a_keys == keys, f"{name}: instance attributes changed"
        assert a_activation is activation, f"{name}: activation not restored"
        assert a_call is None and call is None, f"{name}: instance `call` left over"
        layer = next(la for la in all_layers(model) if id(la) == key)
        assert not hasattr(getattr(layer, "activation", None), "__deadrelu_wrapped__"), name
    np.testing.assert_array_equal(to_numpy(model(x, training=False)), y_before)
    assert model.to_json() == json_before


@pytest.mark.parametrize(
    "scenario", ["ok", "ok-gradients", "nan-in-second-batch", "fails-in-second-batch", "fails-while-tracing"]
)
def test_scan_leaves_model_unchanged(scenario):
    model = _hooked_model()
    x = random_x((4,), 37, 3)
    y = np.arange(37) % 3
    y_before = to_numpy(model(x, training=False))
    json_before = model.to_json()
    before = _snapshot(model)
    assert "call" not in model.get_layer("relu_layer").__dict__

    data = x.copy()
    first = None
    if scenario == "ok":
        first = deadrelu.scan(model, data, batch_size=10)
    elif scenario == "ok-gradients":
        deadrelu.scan(model, data, labels=y, gradients=True, batch_size=10)
    elif scenario == "nan-in-second-batch":
        data[13, 2] = np.nan
        with pytest.raises(deadrelu.DataError, match="NaN"):
            deadrelu.scan(model, data, batch_size=10)
    elif scenario == "fails-in-second-batch":
        data[12] = 1e4  # finite, but trips the guard inside the compiled step of batch 2
        with pytest.raises(deadrelu.DataError, match="guard tripped"):
            deadrelu.scan(model, data, batch_size=10)
    elif scenario == "fails-while-tracing":
        model.get_layer("guard").fail_on_trace = True
        before = _snapshot(model)
        with pytest.raises(Exception, match="trace-time failure"):
            deadrelu.scan(model, data, batch_size=10)
        model.get_layer("guard").fail_on_trace = False
    _assert_untouched(model, before, x, y_before, json_before)

    # And the model can be scanned again (with the same results as a first scan).
    again = deadrelu.scan(model, x, batch_size=37)
    assert [s.path for s in again.sites] == ["fused", "relu_layer", "inner/act"]
    if first is not None:
        assert_reports_equal(first, again)

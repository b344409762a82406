"""`deadrelu.patch` and `deadrelu patch`: every site kind, every model kind, real numbers, real files.

For each model: the slope-0 patch reproduces the outputs; with a slope the new activation equals
a numpy computation of `min(z, cap)` above the threshold and `alpha * (z - threshold)` below it;
every original weight is carried over; the files load with plain `keras.models.load_model`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import keras
import numpy as np
import pytest

import deadrelu
from deadrelu.errors import OutputCheckError, UnsupportedModelError, UsageError
from deadrelu.fixes.check import OutputCheck
from deadrelu.fixes.patch import patch, patch_model
from deadrelu.io.saving import save_model
from paths import SAMPLES

L = keras.layers
ATOL = 1e-5


# -- helpers --------------------------------------------------------------------------------


def outputs(model, x) -> list[np.ndarray]:
    return [np.asarray(o) for o in keras.tree.flatten(model(x, training=False))]


def max_diff(a, b, x) -> float:
    return max(float(np.max(np.abs(p - q))) for p, q in zip(outputs(a, x), outputs(b, x)))


def leaf_weights(model, prefix: str = "") -> dict[str, list[np.ndarray]]:
    """{path: weights} of every non-model layer, found by walking nested models by name."""
    found = {}
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            found.update(leaf_weights(layer, f"{path}/"))
        elif layer.weights:
            found[path] = [np.asarray(w) for w in layer.get_weights()]
    return found


def layer_at(model, path: str):
    layer = model
    for name in path.split("/"):
        layer = layer.get_layer(name)
    return layer


def assert_weights_carried(original, patched) -> None:
    """Every weight array of `original` is in `patched`, at the same layer path, bit for bit."""
    old, new = leaf_weights(original), leaf_weights(patched)
    assert old, "the model has weights"
    for path, arrays in old.items():
        assert path in new, f"{path} missing from the patched model"
        assert len(arrays) == len(new[path]), path
        for a, b in zip(arrays, new[path]):
            assert a.shape == b.shape and np.array_equal(a, b), path
    # The only new weights are PReLU slopes.
    for path in set(new) - set(old):
        assert isinstance(layer_at(patched, path), L.PReLU), path


def numpy_site(z, *, alpha, cap=None, threshold=0.0):
    """The rewritten nonlinearity: min(z, cap) above the threshold, alpha·(z − threshold) at or below."""
    upper = z if cap is None else np.minimum(z, cap)
    return np.where(z > threshold, upper, alpha * (z - threshold))


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- models: one per site kind, tiny --------------------------------------------------------

FUSED = {
    "dense": (lambda act: L.Dense(5, activation=act, name="site"), (6,)),
    "conv2d": (lambda act: L.Conv2D(3, 3, activation=act, name="site"), (6, 6, 2)),
    "conv1d": (lambda act: L.Conv1D(3, 3, activation=act, name="site"), (7, 2)),
    "depthwise": (lambda act: L.DepthwiseConv2D(3, activation=act, name="site"), (6, 6, 2)),
    "separable": (lambda act: L.SeparableConv2D(3, 3, activation=act, name="site"), (6, 6, 2)),
    "transpose": (lambda act: L.Conv2DTranspose(3, 3, activation=act, name="site"), (4, 4, 2)),
}
# (builder of the site layer placed after a linear Dense/Conv named "pre", input shape, cap, threshold)
STANDALONE = {
    "activation_relu": (lambda: L.Activation("relu", name="site"), None, 0.0),
    "activation_relu6": (lambda: L.Activation("relu6", name="site"), 6.0, 0.0),
    "relu_cap_threshold": (lambda: L.ReLU(max_value=6.0, threshold=0.5, name="site"), 6.0, 0.5),
    "relu_cap": (lambda: L.ReLU(max_value=1.5, name="site"), 1.5, 0.0),
    "relu_threshold": (lambda: L.ReLU(threshold=0.3, name="site"), None, 0.3),
}


def build_kind(kind: str):
    """A Sequential [Input → (pre) → site → pooling → Dense(2)] and the site's (cap, threshold)."""
    keras.utils.set_random_seed(hash(kind) % 1000)
    if kind in STANDALONE:
        make, cap, threshold = STANDALONE[kind]
        body = [keras.Input((6,)), L.Dense(8, name="pre"), make()]
    elif kind == "bn_activation":
        body = [
            keras.Input((6, 6, 2)),
            L.Conv2D(4, 3, name="pre"),
            L.BatchNormalization(name="bn"),
            L.Activation("relu", name="site"),
            L.GlobalAveragePooling2D(),
        ]
        cap, threshold = None, 0.0
    else:
        name, act = kind.rsplit("_", 1)
        make, shape = FUSED[name]
        body = [keras.Input(shape), make(act)]
        body += [L.Flatten()] if len(shape) > 1 else []
        cap, threshold = (6.0 if act == "relu6" else None), 0.0
    model = keras.Sequential(body + [L.Dense(2, name="head")], name=f"m_{kind}")
    if kind == "bn_activation":  # non-trivial moving statistics, so carrying them over is tested
        bn = model.get_layer("bn")
        gamma, beta, mean, var = bn.get_weights()
        rng = np.random.default_rng(1)
        bn.set_weights([gamma * 1.5, beta + 0.1, rng.normal(0, 0.3, mean.shape), rng.uniform(0.5, 2, var.shape)])
    return model, cap, threshold


KINDS = [f"{name}_{act}" for name in FUSED for act in ("relu", "relu6")] + list(STANDALONE) + ["bn_activation"]


@pytest.fixture(scope="module")
def kind_models():
    return {kind: build_kind(kind) for kind in KINDS}


def inputs_for(model, n: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Centered inputs, scaled up: pre-activations fall on both sides of 0 and above the caps.
    return rng.normal(0, 8, (n, *model.input_shape[1:])).astype("float32")


def build_functional():
    """A branch + Add, a shared fused Conv2D called twice, BN → ReLU6, a thresholded ReLU, and a
    nested Sequential sub-model — every kind of wiring in one graph."""
    keras.utils.set_random_seed(7)
    inp = keras.Input((8, 8, 3), name="image")
    shared = L.Conv2D(4, 3, padding="same", activation="relu", name="shared")
    a = shared(inp)
    b = shared(L.Conv2D(3, 1, name="pre")(inp))
    x = L.Add(name="add")([a, b])
    x = L.BatchNormalization(name="bn")(x)
    x = L.Activation("relu6", name="act6")(x)
    x = L.ReLU(max_value=4.0, threshold=0.2, name="relu_t")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    sub = keras.Sequential(
        [
            keras.Input((4,)),
            L.Dense(6, activation="relu", name="sub_dense"),
            L.Dense(5, activation="relu6", name="sub_dense6"),
        ],
        name="sub",
    )
    out = L.Dense(2, name="out")(sub(x))
    model = keras.Model(inp, out, name="graph")
    model.compile(optimizer="adam", loss="mse")
    return model


def build_nested():
    """A Sequential holding a Functional sub-model, itself holding a Sequential: three levels."""
    keras.utils.set_random_seed(11)
    inner = keras.Sequential([keras.Input((5,)), L.Dense(4, activation="relu", name="deep")], name="inner")
    i = keras.Input((6,), name="mid_in")
    h = L.Dense(5, name="mid_pre")(i)
    h = L.Activation("relu", name="mid_act")(h)
    middle = keras.Model(i, inner(h), name="middle")
    return keras.Sequential(
        [keras.Input((6,)), middle, L.Dense(3, activation="relu", name="top"), L.Dense(2, name="head")], name="nested"
    )


@pytest.fixture(scope="module")
def graph():
    return build_functional()


@pytest.fixture(scope="module")
def nested():
    return build_nested()


# -- (1) slope 0 reproduces, (3) every weight carried, for every site kind --------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_site_kind(kind_models, kind):
    model, cap, threshold = kind_models[kind]
    x = inputs_for(model)
    before = [w.copy() for w in model.get_weights()]
    expected = outputs(model, x)
    for to in ("leaky", "prelu"):
        result = patch_model(model, to, alpha=0.0, alpha_init=0.0)
        assert [r.path for r in result.rewrites] == ["site"]
        assert max_diff(model, result.model, x) <= ATOL
        assert_weights_carried(model, result.model)
        # (2) with a slope, the new activation is the numpy formula of the pre-activation.
        patched = patch(model, to, alpha=0.1, alpha_init=0.1)
        assert not deadrelu.find_sites(patched).sites, "no zero-slope ReLU is left"
        fused = result.rewrites[0].kind == "fused"
        pre = "site" if fused else ("bn" if kind == "bn_activation" else "pre")
        last = f"site_{to}" if fused else "site"
        probe = keras.Model(patched.inputs[0], [patched.get_layer(pre).output, patched.get_layer(last).output])
        z, a = (np.asarray(t) for t in probe(x, training=False))
        np.testing.assert_allclose(a, numpy_site(z, alpha=0.1, cap=cap, threshold=threshold), rtol=1e-6, atol=1e-6)
        below = z <= threshold
        assert below.any() and (~below).any(), "the inputs reach both sides of the threshold"
        if cap is not None:
            assert (z > cap).any(), "the inputs reach the cap"
        # It differs from the original exactly where the pre-activation is under the threshold.
        original = numpy_site(z, alpha=0.0, cap=cap, threshold=threshold)
        assert np.array_equal(a != original, below & (z != threshold))
    # The input model is left as it was.
    for a, b in zip(before, model.get_weights()):
        assert np.array_equal(a, b)
    for a, b in zip(expected, outputs(model, x)):
        assert np.array_equal(a, b)


def test_dense_by_hand():
    """Input → Dense(relu) → Dense: the leaky patch is np.where(z > 0, z, 0.1 z) by hand."""
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((4,)), L.Dense(6, activation="relu", name="hidden"), L.Dense(2, name="out")])
    x = np.random.default_rng(0).normal(0, 2, (20, 4)).astype("float32")
    w1, b1 = model.get_layer("hidden").get_weights()
    w2, b2 = model.get_layer("out").get_weights()
    z = x @ w1 + b1
    expected = np.where(z > 0, z, 0.1 * z) @ w2 + b2
    np.testing.assert_allclose(outputs(patch(model, "leaky", alpha=0.1), x)[0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs(patch(model, "prelu", alpha_init=0.1), x)[0], expected, rtol=1e-5, atol=1e-5)
    # With the defaults (0.01 / 0.25) the outputs move away from the original.
    assert max_diff(model, patch(model, "leaky"), x) > 1e-4


def test_defaults_and_layer_types(kind_models):
    model, _, _ = kind_models["conv2d_relu"]
    leaky = patch(model, "leaky")
    assert leaky.get_layer("site").get_config()["activation"] == "linear"
    assert isinstance(leaky.get_layer("site_leaky"), L.LeakyReLU)
    assert leaky.get_layer("site_leaky").negative_slope == pytest.approx(0.01)
    prelu = patch(model, "prelu")
    alpha = prelu.get_layer("site_prelu").get_weights()[0]
    assert alpha.shape == (1, 1, 3) and np.allclose(alpha, 0.25)  # one alpha per channel
    per_element = patch(model, "prelu", prelu_shared_axes=None)
    assert per_element.get_layer("site_prelu").get_weights()[0].shape == (4, 4, 3)
    conv1d = patch(kind_models["conv1d_relu"][0], "prelu")
    assert conv1d.get_layer("site_prelu").get_weights()[0].shape == (1, 3)
    dense = patch(kind_models["dense_relu"][0], "prelu")
    assert dense.get_layer("site_prelu").get_weights()[0].shape == (5,)
    # Standalone activation layers are replaced and keep their name; caps get a clip layer.
    relu6 = patch(kind_models["activation_relu6"][0], "prelu")
    assert isinstance(relu6.get_layer("site"), L.PReLU)
    clip = relu6.get_layer("site_clip")
    assert isinstance(clip, L.ReLU) and clip.max_value == 6.0 and clip.negative_slope == 1.0
    leaky6 = patch(kind_models["relu_cap_threshold"][0], "leaky", alpha=0.2)
    site = leaky6.get_layer("site")
    assert (site.max_value, site.negative_slope, site.threshold) == (6.0, 0.2, 0.5)


# -- Functional with branches and a shared layer; nested sub-models ---------------------------


def test_functional_branches_shared_layer(graph):
    x = inputs_for(graph, 10)
    for to in ("leaky", "prelu"):
        result = patch_model(graph, to, alpha=0.0, alpha_init=0.0)
        assert [r.path for r in result.rewrites] == ["shared", "act6", "relu_t", "sub/sub_dense", "sub/sub_dense6"]
        assert max_diff(graph, result.model, x) <= ATOL
        assert_weights_carried(graph, result.model)
        assert result.model.layers[0].name == "image"
        assert result.model.compiled  # the compile settings came along
    patched = patch(graph, "prelu")
    act = patched.get_layer("shared_prelu")
    # The shared Conv2D is called twice; its one PReLU is called twice too: alphas are shared.
    assert len(patched.get_layer("shared")._inbound_nodes) == 2
    assert len(act._inbound_nodes) == 2
    assert len([w for w in patched.weights if "shared_prelu" in w.path]) == 1
    # Sub-models are rewritten inside and keep their names.
    sub = patched.get_layer("sub")
    assert isinstance(sub, keras.Sequential)
    assert [layer.name for layer in sub.layers] == [
        "sub_dense",
        "sub_dense_prelu",
        "sub_dense6",
        "sub_dense6_clip",
        "sub_dense6_prelu",
    ]


def test_nested_three_levels(nested):
    x = inputs_for(nested)
    for to in ("leaky", "prelu"):
        result = patch_model(nested, to, alpha=0.0, alpha_init=0.0)
        assert [r.path for r in result.rewrites] == ["middle/mid_act", "middle/inner/deep", "top"]
        assert max_diff(nested, result.model, x) <= ATOL
        assert_weights_carried(nested, result.model)
        inner = result.model.get_layer("middle").get_layer("inner")
        assert f"deep_{to}" in [layer.name for layer in inner.layers]


def test_input_left_unchanged(graph):
    x = inputs_for(graph, 4)
    before = outputs(graph, x)
    config = json.dumps(graph.get_config(), sort_keys=True, default=str)
    patch(graph, "prelu")
    assert json.dumps(graph.get_config(), sort_keys=True, default=str) == config
    assert graph.get_layer("shared").activation.__name__ == "relu"
    assert np.array_equal(before[0], outputs(graph, x)[0])


def test_new_names_do_not_collide():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((3,)), L.Dense(4, activation="relu", name="d"), L.Dense(4, name="d_leaky"), L.Dense(1)]
    )
    patched = patch(model, "leaky")
    assert [layer.name for layer in patched.layers][:3] == ["d", "d_leaky_1", "d_leaky"]
    assert max_diff(model, patch(model, "leaky", alpha=0.0), np.ones((2, 3), "float32")) <= ATOL


def test_site_inside_a_wrapper_layer_is_left_and_said():
    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [
            keras.Input((5, 4)),
            L.TimeDistributed(L.Dense(3, activation="relu", name="inner"), name="time_distributed"),
            L.Dense(2, activation="relu", name="d"),
        ]
    )
    result = patch_model(model, "prelu", alpha_init=0.0)
    assert [r.path for r in result.rewrites] == ["d"]
    assert list(result.skipped) == ["time_distributed/inner"]
    assert any("time_distributed/inner" in note for note in result.notes)
    assert max_diff(model, result.model, inputs_for(model, 4)) <= ATOL
    assert_weights_carried(model, result.model)


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.dense = L.Dense(3, activation="relu")

        def call(self, x):
            return self.dense(x)

    model = Net()
    model(np.zeros((1, 2), "float32"))
    with pytest.raises(UnsupportedModelError, match=r"subclassed.*(LeakyReLU|revive)"):
        patch(model, "leaky")


def test_bad_options(graph):
    with pytest.raises(UsageError, match=r"leaky.*prelu"):
        patch(graph, "elu")
    with pytest.raises(UsageError, match="report"):
        patch(graph, "leaky", only="dead")
    with pytest.raises(UsageError, match="regular expression"):
        patch(graph, "leaky", layers="(")
    with pytest.raises(UsageError, match=r"matches no site.*shared"):
        patch(graph, "leaky", layers="nothing_like_this")
    with pytest.raises(UsageError, match="alpha"):
        patch(graph, "leaky", alpha=-1)


def test_layers_regex(graph):
    result = patch_model(graph, "leaky", layers="^sub/")
    assert [r.path for r in result.rewrites] == ["sub/sub_dense", "sub/sub_dense6"]
    assert result.kept == ["shared", "act6", "relu_t"]
    kept = deadrelu.find_sites(result.model)
    assert [s.path for s in kept] == ["shared", "act6", "relu_t"]


# -- (4) save → plain keras.models.load_model → same outputs ---------------------------------


@pytest.mark.parametrize(
    "which, ext",
    [
        ("graph", ".keras"),
        ("graph", ".h5"),
        ("nested", ".keras"),
        ("nested", ".h5"),
        ("conv2d_relu6", ".h5"),
        ("relu_cap_threshold", ".keras"),
    ],
)
def test_save_load_round_trip(tmp_path, graph, nested, kind_models, which, ext):
    model = {"graph": graph, "nested": nested}[which] if which in ("graph", "nested") else kind_models[which][0]
    x = inputs_for(model, 6)
    for to in ("leaky", "prelu"):
        patched = patch(model, to, alpha=0.1, alpha_init=0.3)
        path = tmp_path / f"{which}_{to}{ext}"
        notes: list[str] = []
        assert save_model(patched, path, notes=notes) == str(path)
        loaded = keras.models.load_model(path)  # plain Keras, no custom objects
        np.testing.assert_allclose(outputs(loaded, x)[0], outputs(patched, x)[0], rtol=1e-6, atol=1e-6)
        assert_weights_carried(model, loaded)
        assert not list(tmp_path.glob(".deadrelu-*")), "no temporary file left behind"


def test_save_model_refuses(tmp_path, graph):
    existing = tmp_path / "m.keras"
    existing.write_bytes(b"keep me")
    with pytest.raises(UsageError, match="`force=True`"):
        save_model(graph, existing)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(UsageError, match=r"\.keras or \.h5"):
        save_model(graph, tmp_path / "m.pb")
    save_model(graph, existing, force=True)
    assert keras.models.load_model(existing).name == "graph"


# -- (5) only="dead" / "flagged" from a scan ------------------------------------------------


@pytest.fixture(scope="module")
def planted():
    """Three Dense(relu) sites: 1 of 20 units dead (dead, not flagged), 5 of 10 dead (flagged), none."""
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(20, activation="relu", name="few_dead"),
            L.Dense(10, activation="relu", name="half_dead"),
            L.Dense(8, activation="relu", name="alive"),
            L.Dense(2, name="out"),
        ],
        name="planted",
    )
    for name, units in (("few_dead", [3]), ("half_dead", [0, 2, 4, 6, 8])):
        kernel, bias = model.get_layer(name).get_weights()
        bias[:] = 50.0  # the others always fire
        bias[units] = -1e3
        model.get_layer(name).set_weights([kernel, bias])
    kernel, bias = model.get_layer("alive").get_weights()
    model.get_layer("alive").set_weights([np.abs(kernel), bias + 1.0])  # non-negative inputs: always fires
    x = np.random.default_rng(3).uniform(0, 1, (64, 6)).astype("float32")
    return model, x, deadrelu.scan(model, x)


def test_only_dead_and_flagged(planted):
    model, x, report = planted
    assert [len(report.site(p).dead) for p in ("few_dead", "half_dead", "alive")] == [1, 5, 0]
    dead = patch_model(model, "prelu", only="dead", report=report)
    assert [r.path for r in dead.rewrites] == ["few_dead", "half_dead"]
    assert [(r.dead, r.units) for r in dead.rewrites] == [(1, 20), (5, 10)]
    assert dead.kept == ["alive"]
    assert [s.path for s in deadrelu.find_sites(dead.model)] == ["alive"]
    flagged = patch_model(model, "prelu", only="flagged", report=report)
    assert [r.path for r in flagged.rewrites] == ["half_dead"]
    check = patch_model(model, "prelu", only="dead", report=report, data=x).check
    assert check.passed and float(check) <= ATOL and check.samples == 64 and not check.synthetic
    assert_weights_carried(model, dead.model)


def test_report_of_another_model(planted, graph):
    _, _, report = planted
    with pytest.raises(UsageError, match="another model"):
        patch(graph, "leaky", only="dead", report=report)


def numpy_planted(model, x, *, leaky: set[str], alpha: float) -> np.ndarray:
    """The planted MLP in numpy: ReLU at every hidden layer, LeakyReLU(alpha) at the `leaky` ones."""
    a = x.astype(np.float64)
    for layer in model.layers:
        kernel, bias = layer.get_weights()
        z = a @ kernel + bias
        a = z if layer.name == "out" else np.where(z > 0, z, alpha * z if layer.name in leaky else 0.0)
    return a


def test_patch_model_result_carries_the_check_and_selects_by_sites(planted):
    model, x, report = planted
    result = patch_model(model, "leaky", alpha=0.1, sites=["few_dead", "alive"], data=x)
    assert [r.path for r in result.rewrites] == ["few_dead", "alive"]
    assert result.kept == ["half_dead"] and result.skipped == {}
    assert [s.path for s in deadrelu.find_sites(result.model)] == ["half_dead"]
    # The model: the leaky slope where selected, nothing else (the dead unit's -1e3 now leaks through).
    expected = numpy_planted(model, x, leaky={"few_dead", "alive"}, alpha=0.1)
    np.testing.assert_allclose(outputs(result.model, x)[0], expected, rtol=1e-5, atol=1e-3)
    assert max_diff(result.model, model, x) > 1.0
    # The check: the slope-0 patch of the same selection, on the data given.
    check = result.check
    assert isinstance(check, OutputCheck) and check.passed and not check.synthetic and check.samples == len(x)
    assert (
        float(check) <= ATOL
        and check.tolerance == 1e-5
        and check.scale == pytest.approx(np.abs(outputs(model, x)[0]).max())
    )
    assert result.to_dict()["check"] == check.to_dict() and result.to_dict()["check"]["passed"] is True
    # Without data: 256 synthetic samples; `samples` and `tolerance` are the check's.
    synthetic = patch_model(model, "leaky").check
    assert synthetic.synthetic and synthetic.samples == 256 and synthetic.passed
    few = patch_model(model, "leaky", data=x, samples=10, batch_size=4, tolerance=0.0).check
    assert (few.samples, few.tolerance, few.synthetic) == (10, 0.0, False) and few.passed
    # `sites` and `only` combine; `patch` is the same selection, returned as a bare model.
    both = patch_model(model, "prelu", sites=["few_dead", "alive"], only="dead", report=report)
    assert [r.path for r in both.rewrites] == ["few_dead"] and both.kept == ["half_dead", "alive"]
    plain = patch(model, "leaky", alpha=0.1, sites=["few_dead", "alive"])
    assert max_diff(plain, result.model, x) == 0.0
    with pytest.raises(UsageError, match="no site 'nope' in the model"):
        patch_model(model, "leaky", sites=["nope"])
    with pytest.raises(UsageError, match="no site 'nope' in the report"):
        patch_model(model, "leaky", sites=["nope"], only="dead", report=report)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute needs the TensorFlow backend")
def test_strategy_builds_the_patched_model_in_its_scope():
    import tensorflow as tf

    from deadrelu.engine.distribute import resolve_strategy

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = build_nested()
    x = inputs_for(model, 8)
    for given in (None, strategy):  # None: the strategy the model was built under
        result = patch_model(model, "prelu", alpha_init=0.0, data=x, strategy=given)
        assert resolve_strategy(None, result.model) is strategy  # its variables (PReLU alphas too) are the strategy's
        assert result.check.passed and max_diff(model, result.model, x) <= ATOL
        assert resolve_strategy(None, patch(model, "leaky", strategy=given)) is strategy
    with pytest.raises(UsageError, match=r"strategy\.scope\(\)"):
        patch(build_nested(), "leaky", strategy=strategy)  # a model built outside the strategy's scope


# -- the command line -------------------------------------------------------------------------


def test_cli_dying_mlp_prelu(tmp_path, run_cli):
    out, summary = tmp_path / "fixed.keras", tmp_path / "patch.json"
    code, stdout, err = run_cli(
        [
            "patch",
            SAMPLES / "dying_mlp.keras",
            "--to",
            "prelu",
            "--data",
            SAMPLES / "probe.npz",
            "--only",
            "dead",
            "-o",
            out,
            "--json",
            summary,
        ]
    )
    assert code == 0, err
    assert "hidden_1" in stdout and "PReLU" in stdout
    assert "slope-0 check: outputs unchanged: max |Δ| = " in stdout and "on 1,000 samples" in stdout
    assert f"wrote {out}" in stdout
    loaded = keras.models.load_model(out)
    original = deadrelu.load_model(SAMPLES / "dying_mlp.keras")
    assert_weights_carried(original, loaded)
    data = json.loads(summary.read_text())
    assert data["schema"] == "deadrelu/patch@2" and data["check"]["passed"] and data["check"]["samples"] == 1000
    assert data["output"] == {"path": str(out), "format": "keras"} and data["model"]["name"] == "dying_mlp"
    assert {r["path"] for r in data["rewrites"]} <= {"hidden_1", "hidden_2", "hidden_3"}
    assert all(r["dead"] > 0 for r in data["rewrites"])


def test_cli_healthy_cnn_h5_leaky(tmp_path, run_cli):
    src = tmp_path / "healthy_cnn.h5"
    src.write_bytes((SAMPLES / "healthy_cnn.h5").read_bytes())
    code, stdout, err = run_cli(
        ["patch", src, "--to", "leaky", "--alpha", "0.1", "--data", SAMPLES / "probe.npz", "--samples", "100"]
    )
    assert code == 0, err
    out = tmp_path / "healthy_cnn_leaky.keras"  # the default OUT, beside the input
    assert out.exists() and "on 100 samples" in stdout and "conv_1_leaky" in stdout
    x = np.load(SAMPLES / "probe.npz")["x"][:50]
    original = deadrelu.load_model(src)
    expected = patch(original, "leaky", alpha=0.1)
    np.testing.assert_allclose(outputs(keras.models.load_model(out), x)[0], outputs(expected, x)[0], atol=1e-6)
    # .h5 output, --layers
    out_h5 = tmp_path / "fixed.h5"
    code, stdout, err = run_cli(["patch", src, "--to", "prelu", "--layers", "^conv", "-o", out_h5])
    assert code == 0, err
    assert "synthetic samples" in stdout and "kept as they were: 1 site (dense_1)" in stdout
    assert [s.path for s in deadrelu.find_sites(keras.models.load_model(out_h5))] == ["dense_1"]


def test_cli_report_file(tmp_path, run_cli):
    scan_json = tmp_path / "scan.json"
    code, _, err = run_cli(["scan", SAMPLES / "dying_mlp.keras", "--data", SAMPLES / "probe.npz", "--json", scan_json])
    assert code == 0, err
    out = tmp_path / "flagged.keras"
    code, stdout, err = run_cli(
        ["patch", SAMPLES / "dying_mlp.keras", "--to", "leaky", "--only", "flagged", "--report", scan_json, "-o", out]
    )
    assert code == 0, err
    report = deadrelu.Report.from_json(str(scan_json))
    flagged = [s.path for s in report.sites if s.flagged]
    assert flagged and all(path in stdout for path in flagged)
    assert len(deadrelu.find_sites(keras.models.load_model(out))) == len(report.sites) - len(flagged)


def test_cli_refusals(tmp_path, run_cli):
    model = SAMPLES / "dying_mlp.keras"
    existing = tmp_path / "out.keras"
    existing.write_bytes(b"precious")
    before = sha256(existing)
    code, _, err = run_cli(["patch", model, "--to", "leaky", "-o", existing])
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    assert sha256(existing) == before
    code, _, err = run_cli(["patch", model, "--to", "leaky", "-o", model])
    assert code == 2 and "input" in err
    code, _, err = run_cli(["patch", model, "--to", "leaky", "--only", "dead", "-o", tmp_path / "x.keras"])
    assert code == 2 and "--data" in err and "--report" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["patch", model, "--to", "prelu", "--alpha", "0.1", "-o", tmp_path / "x.keras"])
    assert code == 2 and "--alpha-init" in err
    code, _, err = run_cli(["patch", model, "--to", "leaky", "-o", existing, "--force"])
    assert code == 0 and sha256(existing) != before
    keras.models.load_model(existing)


def test_cli_json_is_the_library_result(tmp_path, run_cli):
    """--json is `patch_model(...).to_dict()` under the header, for the same model and options."""
    out, summary = tmp_path / "fixed.keras", tmp_path / "patch.json"
    data = SAMPLES / "probe.npz"
    argv = ["patch", SAMPLES / "dying_mlp.keras", "--to", "leaky", "--alpha", "0.2", "--data", data]
    argv += ["--only", "dead", "--site", "hidden_1", "--site", "hidden_3", "--samples", "300", "-o", out]
    code, _, err = run_cli([*argv, "--json", summary])
    assert code == 0, err
    written = json.loads(summary.read_text())
    model = deadrelu.load_model(SAMPLES / "dying_mlp.keras")
    report = deadrelu.scan(model, str(data), samples=300)
    result = patch_model(
        model,
        "leaky",
        alpha=0.2,
        only="dead",
        report=report,
        sites=["hidden_1", "hidden_3"],
        data=str(data),
        samples=300,
    )
    header = {"schema", "tool", "model", "output"}
    assert {k: v for k, v in written.items() if k not in header} == json.loads(json.dumps(result.to_dict()))
    assert written["schema"] == "deadrelu/patch@2" and written["tool"]["name"] == "deadrelu"
    assert written["model"]["sha256"] == sha256(SAMPLES / "dying_mlp.keras")
    assert written["output"] == {"path": str(out), "format": "keras"}
    assert [r["path"] for r in written["rewrites"]] == ["hidden_1", "hidden_3"] and written["kept"] == ["hidden_2"]
    assert written["check"]["samples"] == 300 and written["check"]["passed"]


def test_cli_site_selects_exact_paths(tmp_path, run_cli):
    model = SAMPLES / "dying_mlp.keras"
    out = tmp_path / "one.keras"
    code, stdout, err = run_cli(["patch", model, "--to", "leaky", "--site", "hidden_2", "-o", out])
    assert code == 0, err
    assert [s.path for s in deadrelu.find_sites(keras.models.load_model(out))] == ["hidden_1", "hidden_3"]
    assert "1 site rewritten" in stdout and "kept as they were: 2 sites (hidden_1, hidden_3)" in stdout
    out = tmp_path / "two.keras"
    code, _, err = run_cli(["patch", model, "--to", "prelu", "--site", "hidden_1", "--site", "hidden_3", "-o", out])
    assert code == 0, err
    assert [s.path for s in deadrelu.find_sites(keras.models.load_model(out))] == ["hidden_2"]
    out = tmp_path / "none.keras"
    code, _, err = run_cli(["patch", model, "--to", "leaky", "--site", "hidden", "-o", out])  # a prefix is no path
    assert code == 2 and "no site 'hidden' in the model" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.fixture
def broken_check(monkeypatch):
    """Every slope-0 twin gets +1 on the bias of `hidden_1` before the comparison: its outputs really move."""
    import deadrelu.fixes.check as check_module

    real = check_module.compare_outputs

    def compare_outputs(original, fixed, batches, **options):
        layer = fixed.get_layer("hidden_1")
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel, bias + 1.0])
        return real(original, fixed, batches, **options)

    monkeypatch.setattr(check_module, "compare_outputs", compare_outputs)


def test_failed_check_raises_and_the_cli_writes_nothing(tmp_path, run_cli, broken_check):
    model = deadrelu.load_model(SAMPLES / "dying_mlp.keras")
    x = np.load(SAMPLES / "probe.npz")["x"][:64]
    with pytest.raises(OutputCheckError, match=r"slope-0 patched model's outputs differ .* on 64 samples") as raised:
        patch_model(model, "prelu", data=x)
    error = raised.value
    assert error.cause == "deadrelu" and error.exit_code == 4
    assert not error.check.passed and error.check.max_abs_diff > 1e-3 and error.check.samples == 64
    assert error.result.check is error.check and len(error.result.rewrites) == 3
    out, summary = tmp_path / "never.keras", tmp_path / "never.json"
    argv = ["patch", SAMPLES / "dying_mlp.keras", "--to", "leaky", "-o", out, "--json", summary]
    code, stdout, err = run_cli(argv)
    assert code == 4 and "outputs differ" in err and "nothing was written" in err
    assert not out.exists() and not summary.exists() and "wrote" not in stdout


# -- real models written by other people --------------------------------------------------------

REAL = {
    "moonflower_mnist_cnn_k311.keras": (0.0, 1.0),
    "tiny_ic_resnet8.h5": (0.0, 255.0),
    "ml3arn_mnist_ae_nested.h5": (0.0, 1.0),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_models(name, tmp_path, shared):
    path = shared("models", name)
    model = deadrelu.load_model(str(path))
    low, high = REAL[name]
    x = np.random.default_rng(0).uniform(low, high, (4, *model.input_shape[1:])).astype("float32")
    for to in ("leaky", "prelu"):
        check = patch_model(model, to, data=x).check
        assert check.passed and check.max_abs_diff <= ATOL, check.describe()
    result = patch_model(model, "prelu")
    assert len(result.rewrites) == len(deadrelu.find_sites(model).sites) and not result.skipped
    out = tmp_path / "patched.keras"
    save_model(result.model, out)
    assert_weights_carried(model, keras.models.load_model(out))

"""The cause analysis (`deadrelu.scan(..., why=True)`): every planted dead unit gets its cause.

One small model per cause, each planted so that the rule of docs/fixing.md#why-units-die is the
one that must fire (`deadrelu.diagnosis.causes`):

- starved: a layer whose every upstream unit is dead reads zeros, so its z is its bias;
- output_relu: a `Dense(1, activation="relu")` regression head with a bias far below its inputs;
- born_dead: a deep narrow MLP whose initialisers (tiny kernel, negative bias) kill the first
  layer at every draw — and so starve the eleven after it;
- killed_in_training: an MLP trained on MNIST with Adam at lr 0.05 (50× Adam's default), and a
  unit planted with a margin of −0.5 × its site's spread;
- data_dependent: a unit planted with a margin of −0.02 × its site's spread.

And the plumbing: `why=False` leaves every cause field None; the JSON round trip keeps them; the
baseline leaves the user's model byte-equal and is deterministic; the baseline re-draws every
weight from its layer's own initialiser; `deadrelu scan --why` writes the fields.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import deadrelu
from deadrelu.diagnosis.baseline import draw_plan, redraw, variable_seed
from deadrelu.diagnosis.causes import KILLED_MARGIN, KINDS, spread
from deadrelu.errors import UsageError
from models import random_x, to_numpy

L = keras.layers


def causes_of(site) -> dict[int, str]:
    """`{unit: cause}` of a site's dead units."""
    assert site.dead_causes is not None and len(site.dead_causes) == len(site.dead)
    return dict(zip(site.dead, site.dead_causes))


# -- the planted causes ------------------------------------------------------------------------


def starved_model() -> keras.Model:
    """a (Dense 8, relu; every unit dead) → Dropout → lin (Dense 4, linear) → b (ReLU layer, bias −0.5: starved)."""
    keras.utils.set_random_seed(1)
    i = keras.Input((6,))
    x = L.Dense(8, activation="relu", name="a")(i)
    x = L.Dropout(0.3, name="drop")(x)
    x = L.Dense(4, name="lin")(x)
    x = L.ReLU(name="b")(x)
    o = L.Dense(2, name="out")(x)
    model = keras.Model(i, o)
    a, lin = model.get_layer("a"), model.get_layer("lin")
    a.bias.assign(np.full(8, -100.0, np.float32))  # far below w·x: a is dead on every input
    lin.bias.assign(np.full(4, -0.5, np.float32))  # b reads zeros through lin: z = −0.5 for every sample
    return model


def test_starved_layer_fed_only_by_dead_units():
    report = deadrelu.scan(starved_model(), random_x((6,), 300, seed=0), why=True)
    a, b = report.site("a"), report.site("b")
    assert b.dead == [0, 1, 2, 3] and set(causes_of(b).values()) == {"starved"}
    assert b.causes == {"starved": 4}
    evidence = b.cause_evidence["starved"]
    assert evidence["preact_value"] == pytest.approx(-0.5)
    # The walk goes up through lin (no activation) and the Dropout to the dead site a.
    assert evidence["upstream"] == [{"path": "a", "dead": 8, "units": 8}]
    # a itself: alive at initialisation (zero bias), its z varies, margin ≈ −100: killed.
    assert set(causes_of(a).values()) == {"killed_in_training"}
    assert report.summary["causes"] == {"starved": 4, "killed_in_training": 8}


def regression_head(nested: bool) -> keras.Model:
    keras.utils.set_random_seed(2)
    i = keras.Input((5,))
    x = L.Dense(8, activation="relu", name="hidden")(i)
    head = L.Dense(1, activation="relu", name="head")
    if nested:
        inner = keras.Sequential([keras.Input((8,)), head], name="inner")
        model = keras.Model(i, inner(x), name="nested_regressor")
    else:
        model = keras.Model(i, head(x), name="regressor")
    head.bias.assign(np.array([-100.0], np.float32))  # the head never fires: the model predicts 0
    return model


@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested"])
def test_output_relu_regression_head(nested):
    model = regression_head(nested)
    report = deadrelu.scan(model, random_x((5,), 200, seed=1), why=True)
    path = "inner/head" if nested else "head"
    head = report.site(path)
    assert head.dead == [0] and head.dead_causes == ["output_relu"]
    assert head.cause_evidence == {"output_relu": {"output": model.output_names[0]}}
    assert report.summary["causes"].get("output_relu") == 1


def deep_narrow_mlp() -> keras.Model:
    """12 × Dense(3, relu) with a tiny kernel initialiser and a negative bias initialiser."""
    keras.utils.set_random_seed(3)
    layers = [keras.Input((4,))]
    for k in range(12):
        layers.append(
            L.Dense(
                3,
                activation="relu",
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
                bias_initializer=keras.initializers.Constant(-0.1),
                name=f"d{k}",
            )
        )
    layers.append(L.Dense(1, name="out"))
    return keras.Sequential(layers, name="deep_narrow")


def test_born_dead_deep_narrow_mlp():
    report = deadrelu.scan(deep_narrow_mlp(), random_x((4,), 256, seed=2), why=True)
    first = report.site("d0")
    # z = w·x − 0.1 with |w| ~ 0.001: varies over the data but never reaches 0, at every draw.
    assert first.dead == [0, 1, 2] and first.dead_causes == ["born_dead"] * 3
    evidence = first.cause_evidence["born_dead"]
    assert evidence == {
        "init_dead_fraction_mean": 1.0,
        "init_dead_fraction_min": 1.0,
        "init_dead_fraction_max": 1.0,
        "dead_fraction_now": 1.0,
        "dead_fraction_now_on_baseline_samples": 1.0,
        "seeds": [0, 1, 2],
    }
    assert report.why["init_baseline"]["dead_fraction"]["d0"] == [1.0, 1.0, 1.0]
    # Every later layer reads only zeros: z = −0.1 on every sample, starved by the layer before.
    for k in range(1, 12):
        site = report.site(f"d{k}")
        assert site.dead_causes == ["starved"] * 3, site.path
        assert site.cause_evidence["starved"]["preact_value"] == pytest.approx(-0.1)
        assert site.cause_evidence["starved"]["upstream"] == [{"path": f"d{k - 1}", "dead": 3, "units": 3}]
    assert report.summary["causes"] == {"starved": 33, "born_dead": 3}


def margin_model():
    """One Dense(4, relu) site: unit 0 planted at margin −0.02 × spread, unit 1 at −0.5 × spread."""
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((6,)), L.Dense(4, activation="relu", name="h"), L.Dense(1, name="out")])
    x = random_x((6,), 400, seed=3)
    h = model.get_layer("h")
    z = x.astype(np.float64) @ to_numpy(h.kernel).astype(np.float64)  # z without the bias
    spread_ = float(np.sqrt(np.mean(z.std(axis=0) ** 2)))  # the pooled std: the bias does not change it
    bias = to_numpy(h.bias).copy()
    bias[0] = -z[:, 0].max() - 0.02 * spread_
    bias[1] = -z[:, 1].max() - 0.5 * spread_
    h.bias.assign(bias)
    return model, x, spread_


def test_data_dependent_and_killed_by_margin():
    model, x, expected_spread = margin_model()
    report = deadrelu.scan(model, x, why=True)
    site = report.site("h")
    assert causes_of(site) == {0: "data_dependent", 1: "killed_in_training"}
    assert spread(site) == pytest.approx(expected_spread, rel=1e-4)
    evidence = site.cause_evidence["data_dependent"]
    assert evidence["spread"] == pytest.approx(expected_spread, rel=1e-4)
    assert evidence["margin_in_spread"] == [pytest.approx(-0.02, abs=2e-3)]
    assert -KILLED_MARGIN < evidence["margin_in_spread"][0] <= 0
    killed = site.cause_evidence["killed_in_training"]
    kernel, bias = to_numpy(model.get_layer("h").kernel), to_numpy(model.get_layer("h").bias)
    assert killed["dead_bias_median"] == pytest.approx(float(bias[1]))
    assert killed["live_bias_median"] == pytest.approx(float(np.median(bias[2:])))
    assert killed["dead_weight_norm_median"] == pytest.approx(float(np.linalg.norm(kernel[:, 1])), rel=1e-5)
    assert killed["live_weight_norm_median"] == pytest.approx(
        float(np.median(np.linalg.norm(kernel[:, 2:], axis=0))), rel=1e-5
    )


def test_killed_in_training_by_adam_at_a_high_learning_rate(shared):
    with np.load(shared("data", "mnist.npz")) as f:
        x = f["x_train"][:2000].reshape(2000, -1).astype(np.float32) / 255
        y = f["y_train"][:2000]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((784,)),
            L.Dense(64, activation="relu", name="h1"),
            L.Dense(64, activation="relu", name="h2"),
            L.Dense(10, activation="softmax", name="out"),
        ]
    )
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    report = deadrelu.scan(model, x, why=True)
    h1 = report.site("h1")
    # Alive at initialisation (the baseline's h1 is almost all alive), dead now.
    init = report.why["init_baseline"]["dead_fraction"]["h1"]
    assert np.mean(init) < 0.5 * h1.dead_fraction
    assert len(h1.dead) >= 16
    causes = causes_of(h1)
    killed = [u for u, c in causes.items() if c == "killed_in_training"]
    assert len(killed) >= 0.8 * len(h1.dead)
    # The rule, unit by unit: killed exactly when the margin is below −0.1 × the site's spread.
    margin, limit = np.asarray(h1.margin), -KILLED_MARGIN * spread(h1)
    assert all((margin[u] < limit) == (c == "killed_in_training") for u, c in causes.items())
    evidence = h1.cause_evidence["killed_in_training"]
    assert evidence["dead_bias_median"] < evidence["live_bias_median"]
    assert evidence["dead_weight_norm_median"] < evidence["live_weight_norm_median"]
    training = report.why["training"]
    assert training["optimizer"] == "Adam"
    assert training["learning_rate"] == pytest.approx(0.05)
    assert training["learning_rate_ratio"] == pytest.approx(50.0)


# -- the plumbing ------------------------------------------------------------------------------


def test_without_why_the_cause_fields_are_none():
    report = deadrelu.scan(starved_model(), random_x((6,), 50, seed=0))
    assert report.why is None and "causes" not in report.summary
    for site in report.sites:
        assert site.dead_causes is None and site.causes is None and site.cause_evidence is None
        assert not {"dead_causes", "causes", "cause_evidence"} & set(site.to_dict())
    assert "why" not in report.to_dict()
    with pytest.raises(UsageError, match="`why`"):
        deadrelu.scan(starved_model(), random_x((6,), 50, seed=0), why="yes")


def test_json_round_trip_keeps_the_causes(tmp_path):
    report = deadrelu.scan(starved_model(), random_x((6,), 100, seed=0), why=True)
    path = tmp_path / "scan.json"
    report.to_json(str(path))
    document = json.loads(path.read_text())
    assert set(document["why"]) >= {"init_baseline", "training", "findings", "recommendations"}
    assert document["summary"]["causes"] == {"starved": 4, "killed_in_training": 8}
    back = deadrelu.Report.from_json(str(path))
    assert back.why == document["why"]
    assert back.summary["causes"] == report.summary["causes"]
    for before, after in zip(report.sites, back.sites):
        assert after.dead_causes == before.dead_causes
        assert after.causes == before.causes
        assert after.cause_evidence == json.loads(json.dumps(before.cause_evidence))
    assert back.to_dict() == document


def test_baseline_leaves_the_model_alone_and_is_deterministic():
    model = starved_model()
    x = random_x((6,), 120, seed=5)
    before = [w.tobytes() for w in model.get_weights()]
    first = deadrelu.scan(model, x, why=True)
    assert [w.tobytes() for w in model.get_weights()] == before
    second = deadrelu.scan(model, x, why=True)  # the cached copy, re-drawn
    twin = keras.models.clone_model(model)  # another model object: a new copy, the same draws
    twin.set_weights(model.get_weights())
    third = deadrelu.scan(twin, x, why=True)
    assert first.why["init_baseline"] == second.why["init_baseline"] == third.why["init_baseline"]
    assert [s.dead_causes for s in first.sites] == [s.dead_causes for s in second.sites]
    assert [s.cause_evidence for s in first.sites] == [s.cause_evidence for s in third.sites]
    assert [w.tobytes() for w in model.get_weights()] == before
    # The baseline differs from the trained model: a's bias of −100 is re-drawn as zeros.
    assert first.why["init_baseline"]["dead_fraction"]["a"] == [0.0, 0.0, 0.0]


def test_baseline_redraws_every_weight_from_its_own_initialiser():
    keras.utils.set_random_seed(6)
    norm = L.Normalization(name="norm")
    norm.adapt(random_x((4, 6), 32, seed=7))
    i = keras.Input((4, 6))
    x = norm(i)
    x = L.LSTM(5, return_sequences=True, name="lstm")(x)
    x = L.Conv1D(6, 2, activation="relu", name="conv")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.DepthwiseConv1D(2, name="dw")(x)
    x = L.SeparableConv1D(4, 1, name="sep")(x)
    x = L.PReLU(name="prelu")(x)
    x = L.LayerNormalization(name="ln")(x)
    e = keras.Input((3,), dtype="int32")
    emb = L.Flatten()(L.Embedding(10, 2, name="emb")(e))
    o = L.Dense(1, name="out")(L.Concatenate()([L.Flatten()(x), emb]))
    model = keras.Model([i, e], o)
    for variable in model.weights:  # trained-looking values everywhere
        variable.assign(np.full(variable.shape, 7.0, np.float32))
    draws, kept = draw_plan(model)
    assert sorted(kept) == ["norm/count", "norm/mean", "norm/variance"]  # adapted, no initialiser
    assert len(draws) + len(kept) == len(model.weights)
    redraw(draws, 0)
    values = {v.path: to_numpy(v) for v in model.weights}
    np.testing.assert_array_equal(values["bn/gamma"], 1.0)
    np.testing.assert_array_equal(values["bn/beta"], 0.0)
    np.testing.assert_array_equal(values["bn/moving_mean"], 0.0)
    np.testing.assert_array_equal(values["bn/moving_variance"], 1.0)
    np.testing.assert_array_equal(values["ln/gamma"], 1.0)
    np.testing.assert_array_equal(values["prelu/alpha"], 0.0)
    np.testing.assert_array_equal(values["norm/mean"], 7.0)  # kept
    bias = values["lstm/lstm_cell/bias"]
    np.testing.assert_array_equal(bias[5:10], 1.0)  # unit_forget_bias
    np.testing.assert_array_equal(np.delete(bias, range(5, 10)), 0.0)
    recurrent = values["lstm/lstm_cell/recurrent_kernel"]  # (5, 20), orthogonal as LSTM configures it
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(5), atol=1e-5)
    for path in ("conv/kernel", "dw/kernel", "sep/depthwise_kernel", "sep/pointwise_kernel", "emb/embeddings"):
        assert np.all(values[path] != 7.0) and np.std(values[path]) > 0, path
    # Seeded per seed and variable path: the same seed draws the same values, another seed others.
    redraw(draws, 0)
    np.testing.assert_array_equal(to_numpy(model.get_layer("conv").kernel), values["conv/kernel"])
    redraw(draws, 1)
    assert not np.array_equal(to_numpy(model.get_layer("conv").kernel), values["conv/kernel"])
    assert variable_seed(0, "conv/kernel") != variable_seed(0, "out/kernel") != variable_seed(1, "out/kernel")


def test_cause_kinds_are_the_contract():
    assert KINDS == ("starved", "output_relu", "born_dead", "killed_in_training", "data_dependent")


def test_cli_why_writes_the_causes(run_cli, tmp_path):
    model_path, data_path, out = tmp_path / "m.keras", tmp_path / "x.npy", tmp_path / "scan.json"
    starved_model().save(model_path)
    np.save(data_path, random_x((6,), 100, seed=0))
    code, _, err = run_cli(["scan", model_path, "--data", data_path, "--why", "--json", out, "--quiet"])
    assert code == 0, err
    document = json.loads(out.read_text())
    assert document["summary"]["causes"] == {"starved": 4, "killed_in_training": 8}
    assert {s["path"]: s.get("causes") for s in document["sites"]} == {
        "a": {"killed_in_training": 8},
        "b": {"starved": 4},
    }
    code, _, err = run_cli(["scan", model_path, "--data", data_path, "--json", out, "--quiet"])
    assert code == 0, err
    assert "why" not in json.loads(out.read_text())

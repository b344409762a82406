"""The evidence around the causes: input ranges, training configuration, model findings, recommendations.

- `report.data["inputs"]` equals numpy over the data as the model received it (adapted, rescaled),
  with a padding batch, several inputs, an offset that a naive E[x²] − E[x]² would lose, NaN left out.
- `training_config` reads a real saved `.keras` (Adam at 0.05 → 50× its default) and a legacy
  Keras 2 `.h5` written by tf_keras, and a learning-rate schedule's starting value.
- `model_findings`: raw 0–255 pixels into a CNN without rescaling (and not with a Rescaling layer,
  nor through a Lambda deadrelu cannot see into), NaN weights, a 100%-dead site, a dead ReLU head.
- `recommendations`: the text per cause, from a report whose cause fields are filled by hand.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

import deadrelu
from deadrelu.data import load_data
from deadrelu.data.ranges import InputRanges
from deadrelu.diagnosis.advice import recommendations
from deadrelu.diagnosis.findings import model_findings
from deadrelu.diagnosis.training import training_config
from models import plant_bias
from paths import SHARED


def numpy_range(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return {
        "min": finite.min(),
        "max": finite.max(),
        "mean": finite.mean(),
        "std": finite.std(),
        "values": finite.size,
        "non_finite": values.size - finite.size,
    }


def assert_range(entry: dict, values: np.ndarray, name: str) -> None:
    expected = numpy_range(values)
    assert entry["name"] == name
    for key in ("min", "max", "mean", "std"):
        # float32 data is summed pairwise in float32 per batch, batches in float64: ~1e-7 relative at worst
        assert entry[key] == pytest.approx(expected[key], rel=1e-7, abs=1e-12), key
    assert entry["values"] == expected["values"]
    assert entry["non_finite"] == expected["non_finite"]


# -- input ranges ---------------------------------------------------------------------------


def two_input_model() -> keras.Model:
    image = keras.Input((6, 6, 1), name="image")
    meta = keras.Input((3,), name="meta")
    a = keras.layers.Flatten()(keras.layers.Conv2D(2, 3, activation="relu", name="conv")(image))
    b = keras.layers.Dense(2, activation="relu", name="meta_dense")(meta)
    return keras.Model([image, meta], keras.layers.Dense(1, name="out")(keras.layers.Concatenate()([a, b])))


def test_input_ranges_equal_numpy_over_the_adapted_data():
    """uint8 images (channel axis added, ×1/255) and float64 features with a large offset, 37 samples
    in batches of 16: the last batch is padded by the probe, and the padding is not counted."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(37, 6, 6), dtype=np.uint8)
    meta = 1.0e4 + rng.normal(0.0, 0.01, size=(37, 3))  # std 1e-6 of the offset: E[x²] − E[x]² would lose it
    model = two_input_model()
    report = deadrelu.scan(model, {"meta": meta, "image": images}, batch_size=16, rescale=1 / 255, verbose=0)

    inputs = report.data["inputs"]
    assert [entry["name"] for entry in inputs] == ["image", "meta"]  # model order, not the dict's
    assert_range(inputs[0], images.astype(np.float32) * np.float32(1 / 255), "image")
    assert_range(inputs[1], (meta.astype(np.float32) * np.float32(1 / 255)), "meta")
    assert inputs[0]["integer_valued"] is False
    assert inputs[1]["std"] > 0 and math.isclose(inputs[1]["mean"], 1e4 / 255, rel_tol=1e-6)
    assert report.to_dict()["data"]["inputs"] == inputs  # in the JSON as they are


def test_input_ranges_of_integer_pixels_and_a_stream():
    """Raw uint8 pixels stay whole numbers 0–255; a generator's batches are measured like arrays."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(20, 6, 6, 1), dtype=np.uint8)
    images[0, 0, 0, 0], images[1, 0, 0, 0] = 0, 255
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3, activation="relu")])
    entry = deadrelu.scan(model, images, batch_size=8, verbose=0).data["inputs"][0]
    assert_range(entry, images, model.inputs[0].name)
    assert entry["integer_valued"] is True and (entry["min"], entry["max"]) == (0.0, 255.0)

    def batches():
        for start in range(0, 20, 6):
            yield images[start : start + 6]

    streamed = deadrelu.scan(model, batches(), verbose=0).data["inputs"][0]
    assert_range(streamed, images, model.inputs[0].name)


def test_the_monitor_reports_its_input_ranges_too():
    x = np.random.default_rng(8).uniform(0, 255, size=(24, 4)).astype(np.float32)
    monitor = deadrelu.DeadReluMonitor(x, batch_size=10, rescale=0.5, on_dead=None)
    monitor.check(model=small_mlp())
    entry = monitor.last_report.data["inputs"][0]
    assert_range(entry, x * np.float32(0.5), entry["name"])


def test_input_ranges_count_non_finite_values_and_restart_per_pass():
    ranges = InputRanges(["a", "b"])
    a = np.array([[1.0, np.nan], [np.inf, -2.5]], dtype=np.float32)
    ranges.add([a, np.array([[3], [4]], dtype=np.int64)])
    ranges.add([np.array([[0.5, 7.0]], dtype=np.float32), np.array([[5]], dtype=np.int64)])
    first, second = ranges.to_list()
    assert_range(first, np.concatenate([a.ravel(), [0.5, 7.0]]), "a")
    assert first["non_finite"] == 2 and first["integer_valued"] is False
    assert_range(second, np.array([3, 4, 5]), "b")
    assert second["integer_valued"] is True

    data = load_data(np.arange(12, dtype=np.float32).reshape(6, 2), small_mlp(inputs=2))
    assert data.input_ranges() == []  # nothing read yet
    list(data.batches(4))
    assert data.input_ranges()[0]["max"] == 11.0
    list(data.batches(4))
    assert data.input_ranges()[0]["values"] == 12  # a second pass is measured anew, not added


# -- input scale ----------------------------------------------------------------------------


def pixels(count: int = 64) -> np.ndarray:
    """MNIST test images as stored (uint8 0–255), or random uint8 images where ../shared is absent."""
    path = SHARED / "data" / "mnist.npz"
    if path.exists():
        with np.load(path) as f:
            return f["x_test"][:count, :, :, None]
    images = np.random.default_rng(2).integers(0, 256, size=(count, 28, 28, 1), dtype=np.uint8)
    images[0, 0, 0, 0], images[0, 0, 1, 0] = 0, 255
    return images


def cnn(*front) -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            *front,
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.MaxPooling2D(4),
            keras.layers.Flatten(),
            keras.layers.Dense(10, name="logits"),
        ]
    )


def test_raw_pixels_into_a_cnn_without_rescaling_is_an_input_scale_finding():
    x = pixels()
    model = cnn()
    report = deadrelu.scan(model, x, verbose=0)
    found = [f for f in model_findings(report, model) if f["kind"] == "input_scale"]
    assert len(found) == 1
    finding = found[0]
    assert (finding["min"], finding["max"]) == (0.0, 255.0)
    assert finding["integer_valued"] is True and finding["std"] > 10
    assert finding["layers"] == ["conv"] and finding["rescale"] == pytest.approx(1 / 255)
    assert "0–255" in finding["message"] and "`--rescale 1/255`" in finding["message"]
    assert "rescale=1/255" in finding["message"]

    # The same pixels scanned with rescale=1/255 reach the model at unit scale: nothing to say.
    rescaled = deadrelu.scan(model, x, rescale=1 / 255, verbose=0)
    assert rescaled.data["inputs"][0]["max"] == pytest.approx(1.0)
    assert not [f for f in model_findings(rescaled, model) if f["kind"] == "input_scale"]


@pytest.mark.parametrize(
    "front",
    [
        [keras.layers.Rescaling(1 / 255)],
        [keras.layers.RandomFlip(), keras.layers.Rescaling(1 / 255, offset=-0.5)],
        [keras.layers.Lambda(lambda t: t / 255.0)],  # deadrelu cannot see what a Lambda does: no claim
    ],
    ids=["rescaling", "flip-then-rescaling", "lambda"],
)
def test_raw_pixels_into_a_model_that_scales_them_is_no_finding(front):
    model = cnn(*front)
    report = deadrelu.scan(model, pixels(), verbose=0)
    assert report.data["inputs"][0]["max"] == 255.0
    assert not [f for f in model_findings(report, model) if f["kind"] == "input_scale"]


def test_token_ids_into_an_embedding_are_no_input_scale_finding():
    model = keras.Sequential(
        [keras.Input((5,), dtype="int32"), keras.layers.Embedding(1000, 4), keras.layers.Dense(3, activation="relu")]
    )
    ids = np.random.default_rng(3).integers(0, 1000, size=(16, 5))
    report = deadrelu.scan(model, ids, verbose=0)
    assert report.data["inputs"][0]["max"] > 10 and report.data["inputs"][0]["integer_valued"]
    assert model_findings(report, model) == []


# -- training configuration -----------------------------------------------------------------


def small_mlp(inputs: int = 4) -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((inputs,)), keras.layers.Dense(8, activation="relu", name="hidden"), keras.layers.Dense(3)]
    )


def test_training_config_from_a_saved_keras_file(tmp_path):
    model = small_mlp()
    assert training_config(model) is None  # not compiled
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.05), loss="categorical_crossentropy")
    path = tmp_path / "adam.keras"
    model.save(path)
    loaded = deadrelu.load_model(path)
    assert training_config(loaded) == {
        "optimizer": "Adam",
        "learning_rate": 0.05,
        "learning_rate_schedule": None,
        "default_learning_rate": 0.001,
        "learning_rate_ratio": 50.0,
        "loss": "categorical_crossentropy",
    }
    assert training_config(deadrelu.load_model(path, compile=False)) is None


def test_training_config_of_a_schedule_and_a_loss_object():
    model = small_mlp()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.2, decay_steps=10, decay_rate=0.5)
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss=keras.losses.MeanAbsoluteError())
    config = training_config(model)
    assert config["optimizer"] == "SGD" and config["learning_rate_schedule"] == "ExponentialDecay"
    assert config["learning_rate"] == 0.2 and config["default_learning_rate"] == 0.01
    assert config["learning_rate_ratio"] == 20.0 and config["loss"] == "mean_absolute_error"


def test_training_config_from_a_legacy_keras2_h5(tmp_path):
    tk = pytest.importorskip("tf_keras")
    model = tk.Sequential([tk.layers.Dense(8, activation="relu", input_shape=(4,)), tk.layers.Dense(3)])
    model.compile(optimizer=tk.optimizers.Adam(learning_rate=0.05), loss="mse")
    path = str(tmp_path / "legacy.h5")
    model.save(path, save_format="h5")
    config = training_config(deadrelu.load_model(path))
    assert config["optimizer"] == "Adam" and config["learning_rate"] == 0.05
    assert (
        config["learning_rate_ratio"] == 50.0 and config["loss"] == "mean_squared_error"
    )  # "mse", as Keras 3 compiled it


# -- findings on sites and weights ----------------------------------------------------------


def test_nan_weights_give_non_finite_first_then_non_finite_weights():
    model = small_mlp()
    hidden = model.get_layer("hidden")
    kernel = keras.ops.convert_to_numpy(hidden.kernel).copy()
    kernel[0, 2] = np.nan
    hidden.kernel.assign(kernel)
    x = np.random.default_rng(4).normal(size=(32, 4)).astype(np.float32)
    found = model_findings(deadrelu.scan(model, x, verbose=0), model)
    assert [f["kind"] for f in found[:2]] == ["non_finite", "non_finite_weights"]
    assert found[0]["units"] == 1 and found[0]["first_site"] == "hidden"
    assert found[1]["layers"] == 1 and found[1]["values"] == 1 and found[1]["first_layer"] == "hidden"
    assert "checkpoint" in found[1]["message"]


def test_a_fully_dead_site_and_a_dead_relu_head():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(6, activation="relu", name="hidden"),
            keras.layers.Dense(5, activation="relu", name="next"),
            keras.layers.Dense(1, activation="relu", name="price"),
        ]
    )
    plant_bias(model.get_layer("hidden"), dict.fromkeys(range(6), -100.0))  # every unit dead
    plant_bias(model.get_layer("next"), {0: 1.0})  # reads only zeros, but unit 0 fires on its bias
    plant_bias(model.get_layer("price"), {0: -100.0})  # the regression head dies
    x = np.random.default_rng(5).normal(size=(40, 4)).astype(np.float32)
    report = deadrelu.scan(model, x, verbose=0)
    # as the cause analysis would record it: 'next' starved by 'hidden'
    report.site("next").cause_evidence = {
        "starved": {"preact_value": 0.0, "upstream": [{"path": "hidden", "dead": 6, "units": 6}]}
    }
    found = model_findings(report, model)
    dead_sites = [f for f in found if f["kind"] == "dead_site"]
    assert [f["site"] for f in dead_sites] == ["hidden", "price"]  # 'next' has a live unit
    hidden = dead_sites[0]
    assert (hidden["units"], hidden["samples"], hidden["starves"]) == (6, 40, ["next"])
    assert "100% dead (6 of 6 units never fire on 40 samples)" in hidden["message"]
    assert "'next'" in hidden["message"]
    heads = [f for f in found if f["kind"] == "output_relu"]
    assert [(f["site"], f["dead"], f["units"]) for f in heads] == [("price", 1, 1)]
    assert heads[0]["output"] == "price" and "constant 0" in heads[0]["message"]
    assert [f["kind"] for f in found] == ["output_relu", "dead_site", "dead_site"]


def test_a_healthy_model_on_unit_scale_data_has_no_findings():
    model = small_mlp()
    x = np.random.default_rng(6).normal(size=(64, 4)).astype(np.float32)
    report = deadrelu.scan(model, x, verbose=0)
    assert not any(site.dead for site in report.sites)
    assert model_findings(report, model) == []
    assert model_findings(report, None) == []


# -- recommendations ------------------------------------------------------------------------


def report_with_causes(training: dict | None, findings: list | None = None):
    """A real scan of a 3-site MLP whose cause fields are then filled by hand."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu", name="a"),
            keras.layers.Dense(8, activation="relu", name="b"),
            keras.layers.Dense(1, activation="relu", name="head"),
        ]
    )
    report = deadrelu.scan(model, np.random.default_rng(7).normal(size=(16, 4)).astype(np.float32), verbose=0)
    a, b, head = report.sites
    a.dead, a.dead_causes = (
        [0, 1, 2, 3, 4],
        ["born_dead", "born_dead", "killed_in_training", "data_dependent", "data_dependent"],
    )
    a.causes = {"born_dead": 2, "killed_in_training": 1, "data_dependent": 2}
    a.cause_evidence = {
        "born_dead": {
            "init_dead_fraction_mean": 0.25,
            "init_dead_fraction_min": 0.125,
            "init_dead_fraction_max": 0.375,
            "dead_fraction_now": 0.625,
            "seeds": [0, 1, 2],
        },
        "killed_in_training": dict.fromkeys(
            ("dead_bias_median", "live_bias_median", "dead_weight_norm_median", "live_weight_norm_median")
        ),
        "data_dependent": {"margin_in_spread": [-0.02, -0.06], "spread": 1.5},
    }
    b.dead, b.dead_causes, b.causes = (
        [0, 1, 2],
        ["starved", "starved", "killed_in_training"],
        {
            "starved": 2,
            "killed_in_training": 1,
        },
    )
    b.cause_evidence = {
        "starved": {"preact_value": -0.3, "upstream": [{"path": "a", "dead": 5, "units": 8}]},
        "killed_in_training": {},
    }
    head.dead, head.dead_causes, head.causes = [0], ["output_relu"], {"output_relu": 1}
    head.cause_evidence = {"output_relu": {"output": "head"}}
    report.why = {"training": training, "findings": findings or []}
    return report


ADAM = {
    "optimizer": "Adam",
    "learning_rate": 0.05,
    "learning_rate_schedule": None,
    "default_learning_rate": 0.001,
    "learning_rate_ratio": 50.0,
    "loss": "mse",
}


def test_one_recommendation_per_cause_in_priority_order():
    advice = recommendations(report_with_causes(ADAM))
    assert [(r["cause"], r["units"]) for r in advice] == [
        ("starved", 2),
        ("output_relu", 1),
        ("born_dead", 2),
        ("killed_in_training", 2),
        ("data_dependent", 2),
    ]
    by = {r["cause"]: r for r in advice}
    assert by["starved"]["upstream"] == ["a"] and "'a' (5 of 8 dead) first" in by["starved"]["action"]
    assert "deadrelu patch --to leaky --site head" in by["output_relu"]["action"]
    assert "'head'" in by["output_relu"]["action"] and by["output_relu"]["outputs"] == ["head"]
    assert "initialiser" in by["born_dead"]["action"] and "patch --to leaky" in by["born_dead"]["action"]
    assert "25%" in by["born_dead"]["action"] and by["born_dead"]["init_dead_fraction"] == 0.25
    killed = by["killed_in_training"]
    assert killed["sites"] == ["a", "b"] and killed["learning_rate_ratio"] == 50.0
    assert "deadrelu revive" in killed["action"]
    assert "lower learning rate: Adam at 0.05 is 50× its default 0.001" in killed["action"]
    data = by["data_dependent"]
    assert "scan more data" in data["action"] and data["margin_in_spread_median"] == pytest.approx(-0.04)


def test_starved_units_without_a_dead_upstream_site():
    report = report_with_causes(ADAM)
    report.site("b").cause_evidence["starved"]["upstream"] = [{"path": "a", "dead": 0, "units": 8}]
    starved = recommendations(report)[0]
    assert starved["cause"] == "starved" and starved["upstream"] == []
    assert starved["action"].startswith("find what feeds them a constant")


def test_killed_in_training_without_a_training_configuration_or_with_a_low_rate():
    plain = {r["cause"]: r for r in recommendations(report_with_causes(None))}["killed_in_training"]
    assert plain["learning_rate_ratio"] is None and "no training configuration" in plain["action"]

    low = dict(ADAM, learning_rate=0.001, learning_rate_ratio=1.0)
    scale = [{"kind": "input_scale", "input": "x", "message": "..."}]
    calm = {r["cause"]: r for r in recommendations(report_with_causes(low, scale))}["killed_in_training"]
    assert "not above its default" in calm["action"] and "lower learning rate" not in calm["action"]
    assert "scale the input 'x'" in calm["action"]


def test_no_causes_no_recommendations():
    report = deadrelu.scan(small_mlp(), np.ones((4, 4), np.float32), verbose=0)
    assert recommendations(report) == []

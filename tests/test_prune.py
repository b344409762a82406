"""`deadrelu.prune`, `deadrelu.prune_model` and `deadrelu prune`: dead units go, the outputs stay.

Every model here has dead units planted by construction (a bias of -100, or a BatchNormalization
beta of -50, on chosen units; +1 on the others, so they surely fire). For each: exactly the planted
units are removed, the pruned model gives the same outputs (≤ 1e-6 where nothing is folded; float
rounding where BatchNormalization constants are folded into a bias), the weights have the expected
shapes and the model the expected parameter count, the layer names are kept, and the user's model
is left as it was. Units that cannot go exactly stay, each with its reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import deadrelu
from deadrelu.errors import OutputCheckError
from deadrelu.fixes.check import OutputCheck
from deadrelu.fixes.prune import PruneResult, prune, prune_model
from paths import SAMPLES

L = keras.layers
EXACT = 1e-6


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vectors():
    return np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(0, 1, (32, 9, 9, 3)).astype(np.float32)


def plant(model, name: str, units, value: float = -100.0, weight: int = -1, alive: float = 3.0) -> None:
    """Makes `units` dead with a large negative bias (BatchNormalization: beta, weight=1), and the
    layer's other units surely alive with `alive`."""
    layer = model.get_layer(name)
    weights = layer.get_weights()
    weights[weight][:] = alive
    weights[weight][list(units)] = value
    layer.set_weights(weights)


def leaf_names(model) -> list[str]:
    names = []
    for layer in model.layers:
        names.append(layer.name)
        if isinstance(layer, keras.Model):
            names.extend(leaf_names(layer))
    return names


def outputs(model, x) -> list[np.ndarray]:
    return [np.asarray(o) for o in keras.tree.flatten(model(x, training=False))]


def check(model, x, *, removed: dict, params: int, atol: float = EXACT, **options) -> PruneResult:
    """Prunes; checks what went, the outputs, the parameter count, the names, and that `model` is untouched."""
    before = [np.array(w) for w in model.get_weights()]
    result = prune_model(model, x, **options)
    assert result.removed == removed, (result.removed, result.skipped)
    assert result.model is not None and result.passed
    for a, b in zip(outputs(model, x), outputs(result.model, x)):
        assert np.max(np.abs(a - b)) <= atol
    assert result.params_after == result.model.count_params() == params
    assert result.params_before == model.count_params()
    assert leaf_names(result.model) == leaf_names(model)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    # A rescan finds no dead unit left at the pruned sites (but those kept, with a reason).
    after = deadrelu.scan(result.model, x)
    for path in removed:
        assert len(after.site(path).dead) == len(result.kept.get(path, [])), path
    return result


def shapes(model, name: str) -> list[tuple]:
    return [tuple(w.shape) for w in model.get_layer(name).weights]


# -- exact surgery --------------------------------------------------------------------------


def test_dense_dense(vectors):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(8, activation="relu", name="h1"),
            L.Dense(5, activation="relu", name="h2"),
            L.Dense(3, name="out"),
        ]
    )
    plant(model, "h1", [1, 4])
    plant(model, "h2", [0])
    h2 = model.get_layer("h2")
    h2.kernel.assign(np.abs(h2.kernel.numpy()))  # its live units read non-negative inputs: they fire
    result = check(model, vectors, removed={"h1": [1, 4], "h2": [0]}, params=42 + 28 + 15)
    pruned = result.model
    assert shapes(pruned, "h1") == [(6, 6), (6,)] and shapes(pruned, "h2") == [(6, 4), (4,)]
    assert shapes(pruned, "out") == [(4, 3), (3,)]
    # The remaining weights are the old ones, in order.
    keep = [0, 2, 3, 5, 6, 7]
    assert np.array_equal(pruned.get_layer("h1").kernel.numpy(), model.get_layer("h1").kernel.numpy()[:, keep])
    assert np.array_equal(pruned.get_layer("h2").kernel.numpy(), model.get_layer("h2").kernel.numpy()[keep][:, 1:])
    assert result.units_removed == 3 and result.kept == {} and result.skipped == {}
    assert "3 units removed" in repr(result)


def test_conv_flatten_dense_drops_the_strided_rows(images):
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((9, 9, 3)),
            L.Conv2D(6, 3, activation="relu", name="conv"),
            L.MaxPooling2D(2),
            L.Dropout(0.3),
            L.Flatten(),
            L.Dense(4, name="out"),
        ]
    )
    plant(model, "conv", [2, 5])
    result = check(model, images, removed={"conv": [2, 5]}, params=(3 * 3 * 3 * 4 + 4) + (3 * 3 * 4 * 4 + 4))
    # Flatten of (3, 3, 6): channel c is every row i with i % 6 == c.
    rows = [i for i in range(54) if i % 6 in (2, 5)]
    expected = np.delete(model.get_layer("out").kernel.numpy(), rows, axis=0)
    assert np.array_equal(result.model.get_layer("out").kernel.numpy(), expected)


def test_conv_batchnorm_relu_conv(images):
    keras.utils.set_random_seed(2)
    inputs = keras.Input((9, 9, 3))
    h = L.Conv2D(6, 3, name="c1")(inputs)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    model = keras.Model(inputs, L.Conv2D(4, 3, name="c2")(h))
    plant(model, "bn", [1, 3], value=-50.0, weight=1)  # beta
    result = check(model, images, removed={"relu": [1, 3]}, params=(3 * 3 * 3 * 4 + 4) + 4 * 4 + (3 * 3 * 4 * 4 + 4))
    assert shapes(result.model, "bn") == [(4,)] * 4
    assert shapes(result.model, "c2") == [(3, 3, 4, 4), (4,)]


@pytest.mark.parametrize("use_bias", [True, False])
def test_relu_batchnorm_dense_folds_the_constant_into_the_bias(vectors, use_bias):
    """A dead unit after BatchNormalization is `beta - mean * gamma / sqrt(var + eps)`: it goes, and
    its contribution moves into the next layer's bias (which it gets if it had none)."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6,))
    h = L.Dense(8, activation="relu", name="h")(inputs)
    h = L.BatchNormalization(name="bn")(h)
    model = keras.Model(inputs, L.Dense(3, use_bias=use_bias, name="out")(h))
    plant(model, "h", [2, 6])
    rng = np.random.default_rng(3)
    model.get_layer("bn").set_weights(
        [rng.uniform(0.5, 1.5, 8), rng.normal(size=8), rng.normal(size=8), rng.uniform(0.5, 1.5, 8)]
    )
    result = check(model, vectors, removed={"h": [2, 6]}, params=42 + 24 + 18 + 3, atol=2e-6)
    bn, out = model.get_layer("bn"), model.get_layer("out")
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
    constant = beta - mean * gamma / np.sqrt(var + bn.epsilon)
    bias = out.bias.numpy() if use_bias else 0.0
    expected = bias + constant[[2, 6]] @ out.kernel.numpy()[[2, 6]]
    assert np.allclose(result.model.get_layer("out").bias.numpy(), expected, atol=1e-6)
    change = {c.name: c for c in result.layers}["out"]
    assert change.folded and change.inputs == (8, 6)


def test_constant_seen_unequally_at_the_borders_is_kept(images):
    """A folded constant must be the same at every position: a 'same'-padded conv sees less of it at
    the borders, so the unit stays, and says why."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((9, 9, 3))
    h = L.Conv2D(4, 3, activation="relu", name="c1")(inputs)
    h = L.BatchNormalization(name="bn", beta_initializer="ones")(h)
    model = keras.Model(inputs, L.Conv2D(2, 3, padding="same", name="c2")(h))
    plant(model, "c1", [1])
    result = prune_model(model, images)
    assert result.removed == {} and result.model is None
    assert result.kept == {"c1": [1]} and "padding" in result.skipped["c1"]


def test_concatenate_of_two_branches_drops_the_offset_rows(vectors):
    keras.utils.set_random_seed(5)
    inputs = keras.Input((6,))
    a = L.Dense(4, activation="relu", name="a")(inputs)
    b = L.Dense(5, activation="relu", name="b")(inputs)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Concatenate()([a, b])))
    plant(model, "a", [1])
    plant(model, "b", [0, 3])
    result = check(model, vectors, removed={"a": [1], "b": [0, 3]}, params=21 + 21 + 14)
    expected = np.delete(model.get_layer("out").kernel.numpy(), [1, 4 + 0, 4 + 3], axis=0)
    assert np.array_equal(result.model.get_layer("out").kernel.numpy(), expected)


def test_nested_models_get_their_new_input_shapes(vectors):
    keras.utils.set_random_seed(6)
    enc_in = keras.Input((6,))
    encoder = keras.Model(enc_in, L.Dense(8, activation="relu", name="e1")(enc_in), name="encoder")
    decoder = keras.Sequential([keras.Input((8,)), L.Dense(3, name="d1")], name="decoder")
    inputs = keras.Input((6,))
    model = keras.Model(inputs, decoder(encoder(inputs)))
    plant(encoder, "e1", [2, 5])
    result = check(model, vectors, removed={"encoder/e1": [2, 5]}, params=42 + 21)
    assert tuple(result.model.get_layer("decoder").input.shape) == (None, 6)


def test_shared_layer_loses_its_units_in_every_call(vectors):
    keras.utils.set_random_seed(7)
    x1, x2 = keras.Input((6,)), keras.Input((6,))
    shared = L.Dense(4, activation="relu", name="shared")
    merged = L.Concatenate()([shared(x1), shared(x2)])
    model = keras.Model([x1, x2], L.Dense(2, name="out")(merged))
    plant(model, "shared", [1])
    result = check(model, [vectors, vectors[::-1]], removed={"shared": [1]}, params=21 + 14)
    expected = np.delete(model.get_layer("out").kernel.numpy(), [1, 5], axis=0)
    assert np.array_equal(result.model.get_layer("out").kernel.numpy(), expected)


def test_unit_dead_in_only_one_call_of_a_shared_layer_is_kept():
    """Unit 1 of the shared layer never fires on the first input but does on the second: not dead."""
    keras.utils.set_random_seed(8)
    x1, x2 = keras.Input((2,)), keras.Input((2,))
    shared = L.Dense(3, activation="relu", name="shared")
    model = keras.Model([x1, x2], L.Dense(2, name="out")(L.Concatenate()([shared(x1), shared(x2)])))
    model.get_layer("shared").set_weights([np.array([[1.0, 1.0, -1.0], [0.0, 0.0, 0.0]], np.float32), np.zeros(3)])
    rng = np.random.default_rng(8)
    first, second = -rng.uniform(0.1, 1, (32, 2)), rng.uniform(0.1, 1, (32, 2))
    report = deadrelu.scan(model, [first.astype(np.float32), second.astype(np.float32)])
    assert report.site("shared").dead == []
    result = prune_model(model, report, data=[first.astype(np.float32), second.astype(np.float32)])
    assert result.model is None and result.removed == {} and result.candidates == {}


def test_depthwise_carries_the_dead_channel_to_the_next_layer(images):
    """A DepthwiseConv channel reading only a dead channel outputs its bias: both go, the bias is folded."""
    keras.utils.set_random_seed(9)
    model = keras.Sequential(
        [
            keras.Input((9, 9, 3)),
            L.Conv2D(6, 3, activation="relu", name="conv"),
            L.DepthwiseConv2D(3, depth_multiplier=2, bias_initializer="ones", name="dw"),
            L.Conv2D(4, 1, name="pw"),
        ]
    )
    plant(model, "conv", [2])
    result = check(
        model, images, removed={"conv": [2]}, params=(3 * 3 * 3 * 5 + 5) + (3 * 3 * 5 * 2 + 10) + (10 * 4 + 4)
    )
    assert shapes(result.model, "dw") == [(3, 3, 5, 2), (10,)]
    assert {c.name: c for c in result.layers}["pw"].folded


def test_separable_conv_as_consumer_and_producer(images):
    keras.utils.set_random_seed(10)
    model = keras.Sequential(
        [
            keras.Input((9, 9, 3)),
            L.Conv2D(6, 3, activation="relu", name="conv"),
            L.SeparableConv2D(4, 3, activation="relu", name="sep"),
            L.Flatten(),
            L.Dense(2, name="out"),
        ]
    )
    plant(model, "conv", [1, 4])
    plant(model, "sep", [0])
    result = check(
        model,
        images,
        removed={"conv": [1, 4], "sep": [0]},
        params=(3 * 3 * 3 * 4 + 4) + (3 * 3 * 4 + 4 * 3 + 3) + (5 * 5 * 3 * 2 + 2),
    )
    assert shapes(result.model, "sep") == [(3, 3, 4, 1), (1, 1, 4, 3), (3,)]


def test_depthwise_units_of_their_own_are_kept_with_the_reason(images):
    keras.utils.set_random_seed(11)
    model = keras.Sequential(
        [keras.Input((9, 9, 3)), L.DepthwiseConv2D(3, activation="relu", name="dw"), L.Conv2D(2, 1, name="pw")]
    )
    plant(model, "dw", [1])
    result = prune_model(model, images)
    assert result.model is None and result.kept == {"dw": [1]}
    assert "follow its input channels" in result.skipped["dw"]


def test_conv_transpose_as_consumer_and_producer(images):
    keras.utils.set_random_seed(24)
    model = keras.Sequential(
        [
            keras.Input((9, 9, 3)),
            L.Conv2D(6, 3, activation="relu", name="conv"),
            L.Conv2DTranspose(5, 3, strides=2, activation="relu", name="up"),
            L.Conv2D(2, 1, name="out"),
        ]
    )
    plant(model, "conv", [1, 3])
    plant(model, "up", [4])
    result = check(
        model,
        images,
        removed={"conv": [1, 3], "up": [4]},
        params=(3 * 3 * 3 * 4 + 4) + (3 * 3 * 4 * 4 + 4) + (4 * 2 + 2),
    )
    assert shapes(result.model, "up") == [(3, 3, 4, 4), (4,)]  # (…, out, in)


def test_conv1d_pooling_global_pooling():
    keras.utils.set_random_seed(25)
    x = np.random.default_rng(25).normal(size=(16, 20, 4)).astype(np.float32)
    model = keras.Sequential(
        [
            keras.Input((20, 4)),
            L.Conv1D(6, 3, activation="relu", name="conv"),
            L.MaxPooling1D(2),
            L.ZeroPadding1D(1),
            L.Conv1D(3, 3, name="c2"),
            L.GlobalAveragePooling1D(),
            L.Dense(2, name="out"),
        ]
    )
    plant(model, "conv", [0, 5])
    check(model, x, removed={"conv": [0, 5]}, params=(3 * 4 * 4 + 4) + (3 * 4 * 3 + 3) + (3 * 2 + 2))


@pytest.mark.parametrize("flatten_format", ["channels_last", "channels_first"])
def test_channels_first(flatten_format):
    """Channels-first convolutions run on this CPU; spatial sizes differ from the channel count on
    purpose (Keras's eager channels-first Conv adds the bias on the wrong axis when they are equal)."""
    keras.utils.set_random_seed(12)
    x = np.random.default_rng(12).uniform(0, 1, (16, 3, 9, 9)).astype(np.float32)
    model = keras.Sequential(
        [
            keras.Input((3, 9, 9)),
            L.Conv2D(6, 3, activation="relu", data_format="channels_first", name="conv"),
            L.MaxPooling2D(2, data_format="channels_first"),
            L.Flatten(data_format=flatten_format),
            L.Dense(3, name="out"),
        ]
    )
    plant(model, "conv", [1, 4])
    result = check(model, x, removed={"conv": [1, 4]}, params=(3 * 3 * 3 * 4 + 4) + (4 * 3 * 3 * 3 + 3))
    if flatten_format == "channels_last":  # (6, 3, 3) flattened as it is: channel c is a block of 9 rows
        rows = [i for i in range(54) if i // 9 in (1, 4)]
    else:  # moved to (3, 3, 6) first: channel c is every 6th row
        rows = [i for i in range(54) if i % 6 in (1, 4)]
    expected = np.delete(model.get_layer("out").kernel.numpy(), rows, axis=0)
    assert np.array_equal(result.model.get_layer("out").kernel.numpy(), expected)


def test_channel_preserving_reshape_gets_its_new_target_shape(images):
    keras.utils.set_random_seed(21)
    model = keras.Sequential(
        [
            keras.Input((9, 9, 3)),
            L.Conv2D(6, 3, activation="relu", name="conv"),
            L.Reshape((49, 6), name="reshape"),
            L.Dense(2, name="per_position"),
            L.Flatten(),
            L.Dense(3, name="out"),
        ]
    )
    plant(model, "conv", [0, 3])
    result = check(model, images, removed={"conv": [0, 3]}, params=(3 * 3 * 3 * 4 + 4) + (4 * 2 + 2) + (98 * 3 + 3))
    assert tuple(result.model.get_layer("reshape").target_shape) == (49, 4)
    assert shapes(result.model, "per_position") == [(4, 2), (2,)]


def test_reshape_that_scatters_the_units_keeps_them(vectors):
    """Dense(12) → Reshape((3, 4)): unit 5 becomes entry (1, 1); no row or column goes whole."""
    keras.utils.set_random_seed(22)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(12, activation="relu", name="h"),
            L.Reshape((3, 4), name="reshape"),
            L.Flatten(),
            L.Dense(2, name="out"),
        ]
    )
    plant(model, "h", [5])
    result = prune_model(model, vectors)
    assert result.model is None and result.kept == {"h": [5]}
    assert "Reshape 'reshape'" in result.skipped["h"] and "rectangular" in result.skipped["h"]


# -- merges, outputs, nothing to do ---------------------------------------------------------


@pytest.mark.parametrize("merge", ["Add", "Multiply"])
def test_merge_drops_a_channel_only_when_it_is_dead_in_every_input(merge, vectors):
    keras.utils.set_random_seed(13)
    inputs = keras.Input((6,))
    a = L.Dense(4, activation="relu", name="a")(inputs)
    b = L.Dense(4, activation="relu", name="b")(inputs)
    model = keras.Model(inputs, L.Dense(2, name="out")(getattr(L, merge)(name="merge")([a, b])))
    plant(model, "a", [1])
    plant(model, "b", [])
    result = prune_model(model, vectors)
    assert result.model is None and result.kept == {"a": [1]}
    assert f"{merge} 'merge'" in result.skipped["a"] and "every input" in result.skipped["a"]
    plant(model, "b", [1])
    check(model, vectors, removed={"a": [1], "b": [1]}, params=21 + 21 + 8)


def test_model_output_units_are_never_pruned(vectors):
    keras.utils.set_random_seed(14)
    model = keras.Sequential(
        [keras.Input((6,)), L.Dense(8, activation="relu", name="h"), L.Dense(4, activation="relu", name="out")]
    )
    plant(model, "h", [])
    plant(model, "out", [1])
    out = model.get_layer("out")
    out.kernel.assign(np.abs(out.kernel.numpy()))
    result = prune_model(model, vectors)
    assert result.model is None and result.kept == {"out": [1]}
    assert "model output" in result.skipped["out"]


def test_nothing_dead(vectors):
    keras.utils.set_random_seed(15)
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu", name="h"), L.Dense(3, name="out")])
    plant(model, "h", [])
    result = prune_model(model, vectors)
    assert result.model is None and result.removed == {} and result.candidates == {}
    assert result.params_after == result.params_before == model.count_params()


def test_a_layer_keeps_at_least_one_unit(vectors):
    keras.utils.set_random_seed(16)
    model = keras.Sequential([keras.Input((6,)), L.Dense(4, activation="relu", name="h"), L.Dense(3, name="out")])
    plant(model, "h", [0, 1, 2, 3])
    result = check(model, vectors, removed={"h": [1, 2, 3]}, params=(6 + 1) + (1 * 3 + 3))
    assert result.kept == {"h": [0]} and result.skipped["h"] == "a layer keeps at least one unit"


# -- beyond dead, and the proof -------------------------------------------------------------


def test_dormant_units_go_with_their_mean_and_the_metrics_are_measured(vectors):
    keras.utils.set_random_seed(17)
    model = keras.Sequential(
        [keras.Input((6,)), L.Dense(16, activation="relu", name="h"), L.Dense(3, activation="softmax", name="out")]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    labels = np.random.default_rng(17).integers(0, 3, len(vectors))
    with pytest.raises(deadrelu.UsageError, match="labels"):
        prune(model, vectors, dormant=0.5)
    report = deadrelu.scan(model, vectors)
    dormant = {int(u) for u in np.flatnonzero(report.site("h").dormancy <= 0.5)}
    assert dormant - set(report.site("h").dead)  # some units that still fire are dormant
    result = prune_model(model, vectors, labels=labels, dormant=0.5)
    assert set(result.removed["h"]) == dormant and result.dormant == 0.5
    assert set(result.metrics_before) == set(result.metrics_after) == {"loss", "accuracy"}
    assert result.metrics_data == "data" and result.check.max_abs_diff > 0  # reported, not refused
    assert result.params_after == (6 + 1) * (16 - len(dormant)) + (16 - len(dormant)) * 3 + 3


def test_report_without_data_needs_data(vectors):
    keras.utils.set_random_seed(18)
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu", name="h"), L.Dense(3, name="out")])
    plant(model, "h", [3])
    report = deadrelu.scan(model, vectors)
    with pytest.raises(deadrelu.UsageError, match="data="):
        prune(model, report)
    result = prune_model(model, report, data=vectors, validation_data=vectors[:16] * 0.5)
    assert result.removed == {"h": [3]} and result.validation_check.samples == 16
    assert result.validation_check.max_abs_diff <= EXACT


def test_units_from_a_report_of_other_data_fail_the_check_with_cause_data(vectors):
    """Units dead on one set of data fire on another: the proof on that data fails, and says why."""
    keras.utils.set_random_seed(19)
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu", name="h"), L.Dense(3, name="out")])
    plant(model, "h", [3], value=-5.0)
    report = deadrelu.scan(model, vectors)
    assert report.site("h").dead == [3]
    assert deadrelu.scan(model, vectors * 100).site("h").dead == []  # unit 3 fires on the other data
    with pytest.raises(OutputCheckError, match="not all dead on this data") as raised:
        prune_model(model, report, data=vectors * 100)
    error = raised.value
    assert error.cause == "data" and error.exit_code == 4 and "nothing was written" in str(error)
    assert isinstance(error.check, OutputCheck) and error.check.max_abs_diff > error.check.limit
    assert error.result.check is error.check and not error.result.passed and error.result.model is not None
    with pytest.raises(OutputCheckError):
        prune(model, report, data=vectors * 100)  # the plain verb refuses alike


def test_report_sites_the_model_lacks_are_selected_alike_and_kept_with_the_reason(vectors):
    """A report of another model: its site "x" is not in this model; `sites`, `layers`, `only` select it
    like any other, and its units stay, with the reason."""
    keras.utils.set_random_seed(28)
    other = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(8, activation="relu", name="h"),
            L.Dense(4, activation="relu", name="x"),
            L.Dense(3, name="out"),
        ]
    )
    plant(other, "h", [3])
    plant(other, "x", [1])
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu", name="h"), L.Dense(3, name="out")])
    model.get_layer("h").set_weights(other.get_layer("h").get_weights())
    report = deadrelu.scan(other, vectors)
    assert report.site("h").dead == [3] and report.site("x").dead == [1]
    result = prune_model(model, report, data=vectors)
    assert result.removed == {"h": [3]} and result.kept == {"x": [1]}
    assert "not found in this model" in result.skipped["x"]
    assert prune_model(model, report, data=vectors, sites=["h"]).candidates == {"h": [3]}
    only_x = prune_model(model, report, data=vectors, layers="^x$")
    assert only_x.model is None and only_x.candidates == {"x": [1]} and only_x.removed == {}


def test_prune_returns_the_model_and_prune_model_the_result(vectors):
    keras.utils.set_random_seed(26)
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu", name="h"), L.Dense(3, name="out")])
    plant(model, "h", [2, 5])
    smaller, result = prune(model, vectors), prune_model(model, vectors)
    assert isinstance(smaller, keras.Model) and isinstance(result, PruneResult)
    assert smaller.count_params() == result.params_after == (6 + 1) * 6 + (6 + 1) * 3
    for a, b in zip(smaller.get_weights(), result.model.get_weights()):
        assert np.array_equal(a, b)
    assert result.removed == {"h": [2, 5]} and result.check.passed and result.check.samples == len(vectors)
    # Nothing to remove: `prune` gives an unchanged copy (never the model itself), `prune_model` no model.
    plant(model, "h", [])
    same = prune(model, vectors)
    assert same is not model and same.count_params() == model.count_params()
    assert np.array_equal(outputs(same, vectors)[0], outputs(model, vectors)[0])
    assert prune_model(model, vectors).model is None
    with pytest.raises(deadrelu.UsageError, match="`data` is the data to prove a report"):
        prune_model(model, vectors, data=vectors)


# -- command line ---------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_prunes_dying_mlp_to_a_plain_keras_file(run_cli, tmp_path):
    out, summary = tmp_path / "pruned.keras", tmp_path / "prune.json"
    code, stdout, stderr = run_cli(
        [
            "prune",
            SAMPLES / "dying_mlp.keras",
            "--data",
            SAMPLES / "probe.npz",
            "-o",
            out,
            "--json",
            summary,
            "--timing-rounds",
            "1",
            "--quiet",
        ]
    )
    assert code == 0, stderr
    assert "parameters: 25,418 → 6,419" in stdout and "outputs unchanged: max |Δ| = 0" in stdout
    assert "predict on 1,000 samples" in stdout and f"wrote {out}" in stdout
    data = json.loads(summary.read_text())
    assert data["schema"] == "deadrelu/prune@2" and data["params_before"] == 25418 and data["params_after"] == 6419
    assert data["check"]["max_abs_diff"] == 0 and data["check"]["passed"] and data["passed"]
    assert data["summary_after"]["dead"] == 0 and data["units_removed"] == 104
    assert [data["dead_after"][site["path"]] for site in data["sites"]] == [0, 0, 0]
    assert data["cost"]["params"] == [25418, 6419] and data["cost"]["predict_rounds"] == 1
    # Plain Keras opens it, without deadrelu, with the layer names and training config of the original.
    script = (
        "import os, sys, json; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'; import keras; "
        f"m = keras.models.load_model({str(out)!r}); "
        f"o = keras.models.load_model({str(SAMPLES / 'dying_mlp.keras')!r}); "
        "print(json.dumps({'names': [l.name for l in m.layers] == [l.name for l in o.layers], "
        "'compile': m.get_compile_config()['loss'] == o.get_compile_config()['loss'] and m.compiled, "
        "'params': m.count_params(), 'deadrelu': 'deadrelu' in sys.modules}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": ""},
        cwd=tmp_path,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "names": True,
        "compile": True,
        "params": 6419,
        "deadrelu": False,
    }
    # A rescan of the file: no dead unit at the pruned sites.
    rescan = deadrelu.scan(keras.models.load_model(out), str(SAMPLES / "probe.npz"))
    assert rescan.summary["dead"] == 0


def test_cli_json_is_prune_model_to_dict_plus_the_header(run_cli, tmp_path):
    model_path, data_path = SAMPLES / "dying_mlp.keras", str(SAMPLES / "probe.npz")
    out, summary = tmp_path / "pruned.keras", tmp_path / "prune.json"
    code, _, stderr = run_cli(
        ["prune", model_path, "--data", data_path, "-o", out, "--json", summary, "--no-timing", "--quiet"]
    )
    assert code == 0, stderr
    written = json.loads(summary.read_text())
    result = prune_model(deadrelu.load_model(model_path), data_path)
    header = {"schema", "tool", "model", "output"}
    rescan = {"summary_after", "units_after", "dead_after"}  # the command's rescan of OUT
    assert set(written) == header | rescan | set(result.to_dict())  # no cost: --no-timing
    assert {key: written[key] for key in result.to_dict()} == json.loads(json.dumps(result.to_dict()))
    assert written["schema"] == "deadrelu/prune@2" and written["output"] == {"path": str(out), "format": "keras"}
    assert written["model"]["path"] == str(model_path) and written["tool"]["name"] == "deadrelu"
    assert written["units_after"] == {"hidden_1": 16, "hidden_2": 43, "hidden_3": 29}
    assert keras.models.load_model(out).count_params() == written["params_after"] == 6419


def test_cli_check_failure_of_a_bug_exits_4_and_writes_nothing(run_cli, tmp_path, monkeypatch):
    from deadrelu.fixes import prune as pruner

    failed = OutputCheck(max_abs_diff=0.5, samples=1000, scale=1.0)
    monkeypatch.setattr(pruner, "_compare", lambda *args: failed)
    out, summary = tmp_path / "pruned.keras", tmp_path / "prune.json"
    code, _, stderr = run_cli(
        ["prune", SAMPLES / "dying_mlp.keras", "--data", SAMPLES / "probe.npz", "-o", out, "--json", summary]
    )
    # The units come from this run's scan of this data, where they output 0: a difference there is deadrelu's bug.
    assert code == 4 and "max |Δ| = 0.5" in stderr and "please report" in stderr and "nothing was written" in stderr
    assert not list(tmp_path.iterdir())


def test_cli_report_of_other_data_exits_4_and_writes_nothing(run_cli, tmp_path, vectors):
    """A real failed check: units dead on the scanned data fire on --data, so removing them changes the outputs."""
    keras.utils.set_random_seed(19)
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu", name="h"), L.Dense(3, name="out")])
    plant(model, "h", [3], value=-5.0)
    path, scanned, other = tmp_path / "m.keras", tmp_path / "a.npy", tmp_path / "b.npy"
    model.save(path)
    np.save(scanned, vectors)
    np.save(other, vectors * 100)
    scan_json, out, summary = tmp_path / "scan.json", tmp_path / "pruned.keras", tmp_path / "prune.json"
    code, _, stderr = run_cli(["scan", path, "--data", scanned, "--json", scan_json, "--quiet"])
    assert code == 0, stderr
    assert json.loads(scan_json.read_text())["summary"]["dead"] == 1
    code, _, stderr = run_cli(
        ["prune", path, "--report", scan_json, "--data", other, "-o", out, "--json", summary, "--no-timing"]
    )
    assert code == 4 and "not all dead on this data" in stderr and "nothing was written" in stderr, stderr
    assert not out.exists() and not summary.exists()


def test_cli_nothing_dead_writes_nothing(run_cli, tmp_path, vectors):
    keras.utils.set_random_seed(20)
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu", name="h"), L.Dense(3, name="out")])
    plant(model, "h", [])
    path, data, out = tmp_path / "healthy.keras", tmp_path / "x.npy", tmp_path / "pruned.keras"
    model.save(path)
    np.save(data, vectors)
    code, stdout, _ = run_cli(["prune", path, "--data", data, "-o", out])
    assert code == 0 and "no dead units: nothing to prune" in stdout and "nothing written" in stdout
    assert not out.exists()
    code, _, _ = run_cli(["prune", path, "--data", data, "-o", out, "--fail-if-nothing"])
    assert code == 1 and not out.exists()


def test_cli_dead_units_that_cannot_go_exit_2(run_cli, tmp_path, vectors):
    keras.utils.set_random_seed(23)
    model = keras.Sequential([keras.Input((6,)), L.Dense(4, activation="relu", name="out")])
    plant(model, "out", [2])
    model.get_layer("out").kernel.assign(np.abs(model.get_layer("out").kernel.numpy()))
    path, data, out = tmp_path / "m.keras", tmp_path / "x.npy", tmp_path / "pruned.keras"
    model.save(path)
    np.save(data, vectors)
    code, stdout, stderr = run_cli(["prune", path, "--data", data, "-o", out])
    assert code == 2 and "none of the 1 selected units can be removed" in stderr and "model output" in stderr
    assert "model output" in stdout.replace("\n", " ").replace("│", " ") and not out.exists()


def test_cli_needs_data_or_report(run_cli, tmp_path):
    code, _, stderr = run_cli(["prune", SAMPLES / "dying_mlp.keras", "-o", tmp_path / "p.keras"])
    assert code == 2 and "--data" in stderr


def test_cli_report_dormant_and_layers(run_cli, tmp_path):
    """--report takes the units from a scan and proves on the data file the report names; --dormant
    reports the loss and metrics before and after; --layers (a regular expression) limits the sites."""
    scan_json, out, summary = tmp_path / "scan.json", tmp_path / "pruned.h5", tmp_path / "prune.json"
    code, _, stderr = run_cli(
        ["scan", SAMPLES / "dying_mlp.keras", "--data", SAMPLES / "probe.npz", "--json", scan_json, "--quiet"]
    )
    assert code == 0, stderr
    code, stdout, stderr = run_cli(
        [
            "prune",
            SAMPLES / "dying_mlp.keras",
            "--report",
            scan_json,
            "-o",
            out,
            "--layers",
            "hidden_[12]",
            "--dormant",
            "0.2",
            "--no-timing",
            "--json",
            summary,
            "--quiet",
        ]
    )
    assert code == 0, stderr
    assert "loss and metrics on the data" in stdout and "outputs changed" in stdout and out.exists()
    data = json.loads(summary.read_text())
    assert [site["path"] for site in data["sites"]] == ["hidden_1", "hidden_2"]
    assert data["dormant"] == 0.2 and set(data["metrics_before"]) == set(data["metrics_after"]) == {"loss", "accuracy"}
    assert all(len(site["removed"]) >= site["dead"] for site in data["sites"])
    assert not data["passed"] and data["check"]["max_abs_diff"] > 0  # by design with --dormant: reported
    assert keras.models.load_model(out).count_params() == data["params_after"]


def test_cli_site_is_an_exact_path_and_only_selects_flagged_sites(run_cli, tmp_path, vectors):
    """h1 has 1 dead unit of 16 (under the 10% flag), h2 4 of 8 (flagged)."""
    keras.utils.set_random_seed(27)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(16, activation="relu", name="h1"),
            L.Dense(8, activation="relu", name="h2"),
            L.Dense(3, name="out"),
        ]
    )
    plant(model, "h1", [4])
    plant(model, "h2", [0, 1, 2, 3])
    model.get_layer("h2").kernel.assign(np.abs(model.get_layer("h2").kernel.numpy()))
    path, data = tmp_path / "m.keras", tmp_path / "x.npy"
    model.save(path)
    np.save(data, vectors)

    def pruned(*flags) -> dict:
        out, summary = tmp_path / "p.keras", tmp_path / "p.json"
        code, _, stderr = run_cli(
            ["prune", path, "--data", data, "-o", out, "--force", "--json", summary, "--no-timing", *flags]
        )
        assert code == 0, stderr
        return json.loads(summary.read_text())["sites"]

    assert [(s["path"], s["removed"]) for s in pruned()] == [("h1", [4]), ("h2", [0, 1, 2, 3])]
    assert [(s["path"], s["removed"]) for s in pruned("--only", "flagged")] == [("h2", [0, 1, 2, 3])]
    assert [s["path"] for s in pruned("--site", "h1")] == ["h1"]
    assert [s["path"] for s in pruned("--layers", "h[12]", "--site", "h2", "--site", "h1")] == ["h1", "h2"]
    # --site is a path, not a pattern: "h[12]" names no site (it was a regular expression before).
    code, _, stderr = run_cli(["prune", path, "--data", data, "-o", tmp_path / "q.keras", "--site", "h[12]"])
    assert code == 2 and "no site 'h[12]'" in stderr and not (tmp_path / "q.keras").exists()


@pytest.mark.slow
def test_cli_retrain_compares_the_pruned_model(run_cli, tmp_path):
    out = tmp_path / "pruned.keras"
    code, stdout, stderr = run_cli(
        [
            "prune",
            SAMPLES / "dying_mlp.keras",
            "--data",
            SAMPLES / "probe.npz",
            "-o",
            out,
            "--no-timing",
            "--retrain",
            "--validation-split",
            "0.3",
            "--epochs",
            "1",
            "--baseline",
            "--quiet",
        ]
    )
    assert code == 0, stderr
    assert "pruned" in stdout and "as is (baseline)" in stdout and out.exists()

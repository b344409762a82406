"""`deadrelu.revive` and `deadrelu revive`: dead units come back, the outputs do not move.

Every model here has dead units planted by construction (a bias of -100, or a BatchNormalization
beta of -50, on chosen units). For each: the revived copy gives the same outputs (≤ 1e-5), the
revived units fire on a rescan, every changed entry is in `reinitialized`, and the user's model
is left as it was (unless revived in place). The command line's own tests (its --json against
`revive_model`, exit 4 on a failed check, the selection flags) are in tests/test_cli.py.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import deadrelu
from deadrelu.cli import main
from deadrelu.errors import OutputCheckError
from deadrelu.fixes.check import compare_outputs
from deadrelu.fixes.revive import ReviveResult, revive, revive_model
from paths import SAMPLES

L = keras.layers
ATOL = 1e-5


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 1, (48, 8, 8, 3)).astype(np.float32)


def plant(model, name: str, units, value: float = -100.0, weight: int = -1) -> None:
    """Makes `units` dead with a large negative bias (BatchNormalization: beta, weight=1), and
    the layer's other units surely alive with a bias of +1."""
    layer = model.get_layer(name)
    weights = layer.get_weights()
    weights[weight][:] = 1.0
    weights[weight][list(units)] = value
    layer.set_weights(weights)


def largest_difference(model_a, model_b, x) -> tuple[float, int]:
    """Largest |Δ| between two models' outputs on `x`, and the samples compared (the library's check)."""
    check = compare_outputs(model_a, model_b, [x])
    return check.max_abs_diff, check.samples


def snapshot(model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.weights}


def short(mapping: dict) -> dict:
    """Keys cut to their last two parts ('sequential/h/kernel' → 'h/kernel'), for readable checks."""
    out = {"/".join(key.split("/")[-2:]): value for key, value in mapping.items()}
    assert len(out) == len(mapping)
    return out


def check(model, x, *, planted: dict, expect_skipped=()) -> tuple:
    """Revives a copy; checks outputs, firing, masks, and that `model` is untouched.

    Every planted unit must be revived, and so must every other dead unit (small random models
    have a few) except at the sites expected to be skipped.
    """
    before = snapshot(model)
    old_values = [np.array(v.numpy()) for v in model.weights]
    report = deadrelu.scan(model, x)
    result = revive_model(model, x, seed=0)
    revived = result.model
    assert [v.path for v in revived.weights] == [v.path for v in model.weights]
    for path, units in planted.items():
        assert set(units) <= set(result.revived.get(path, [])), (path, result.skipped)
    for site in report.sites:
        if site.dead and site.path not in expect_skipped:
            assert result.revived.get(site.path) == site.dead, (site.path, result.skipped)
    assert set(result.skipped) == set(expect_skipped), result.skipped
    # The user's model is left exactly as it was.
    assert all(np.array_equal(before[p], v.numpy()) for p, v in ((v.path, v) for v in model.weights))
    # Same outputs on the scan data.
    diff, samples = largest_difference(model, revived, x)
    assert diff <= ATOL and samples == len(x)
    assert result.check.passed and result.check.max_abs_diff == diff and result.check.samples == len(x)
    # The revived units fire; nothing else dies.
    after = deadrelu.scan(revived, x)
    for site in after.sites:
        assert not set(site.dead) & set(result.revived.get(site.path, [])), site.path
        assert set(site.dead) <= set(report.site(site.path).dead)
    # Every changed entry is in the mask.
    assert all(result.variables[key].path == key for key in result.reinitialized)
    for old, variable in zip(old_values, revived.weights):
        changed = variable.numpy() != old
        mask = result.reinitialized.get(variable.path, np.zeros(old.shape, bool))
        assert mask.shape == old.shape
        assert not (changed & ~mask).any(), f"{variable.path}: changed outside the mask"
    after_weights = snapshot(revived)
    result.reinitialized = short(result.reinitialized)
    return revived, result, short(before), short(after_weights)


# -- models ---------------------------------------------------------------------------------


def test_dense_dense_exact_masks_and_live_units_untouched():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((10,)), L.Dense(8, activation="relu", name="h"), L.Dense(3, name="out")])
    plant(model, "h", [2, 5])
    x = np.random.default_rng(1).uniform(0, 1, (64, 10)).astype(np.float32)
    _revived, result, before, after = check(model, x, planted={"h": [2, 5]})
    mask = result.reinitialized
    dead = np.zeros(8, bool)
    dead[[2, 5]] = True
    assert set(mask) == {"h/kernel", "h/bias", "out/kernel"}
    assert np.array_equal(mask["h/kernel"], np.broadcast_to(dead, (10, 8)))
    assert np.array_equal(mask["h/bias"], dead)
    assert np.array_equal(mask["out/kernel"], np.broadcast_to(dead[:, None], (8, 3)))
    # Live units' incoming weights and the rest of the outgoing weights are bit-identical.
    assert np.array_equal(after["h/kernel"][:, ~dead], before["h/kernel"][:, ~dead])
    assert np.array_equal(after["out/kernel"][~dead], before["out/kernel"][~dead])
    assert np.all(after["out/kernel"][dead] == 0) and np.all(after["h/bias"][dead] == 0)
    # Scaled by the initializer (glorot_uniform here), not copied: the new columns are fresh.
    assert not np.allclose(after["h/kernel"][:, dead], before["h/kernel"][:, dead])


def test_conv_flatten_dense_cuts_every_flattened_index(images):
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(4, 3, activation="relu", name="conv"),
            L.Flatten(),
            L.Dense(5, activation="relu", name="dense"),
            L.Dense(2, name="out"),
        ]
    )
    plant(model, "conv", [1, 3])
    plant(model, "dense", [0])
    _, result, _, after = check(model, images, planted={"conv": [1, 3], "dense": [0]})
    # Flatten of (6, 6, 4): channel c sits at every index i with i % 4 == c.
    mask = result.reinitialized["dense/kernel"]
    assert mask[:, 0].all()  # unit 0 of `dense` is revived: its whole column is new
    rows = np.flatnonzero(mask[:, 1:].any(axis=1))
    assert set(rows) == {i for i in range(144) if i % 4 in (1, 3)}
    assert np.all(after["dense/kernel"][rows][:, 1:] == 0)  # column 0 is the revived unit: fresh weights


def test_conv_maxpool_conv(images):
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(6, 3, padding="same", activation="relu", name="c1"),
            L.MaxPooling2D(),
            L.Dropout(0.5),
            L.Conv2D(4, 3, activation="relu", name="c2"),
            L.GlobalMaxPooling2D(),
            L.Dense(2, name="out"),
        ]
    )
    plant(model, "c1", [0, 4])
    plant(model, "c2", [2])
    _, result, _, after = check(model, images, planted={"c1": [0, 4], "c2": [2]})
    kernel_mask = result.reinitialized["c2/kernel"]
    assert kernel_mask[:, :, [0, 4], :][..., [0, 1, 3]].all()  # cut from the live units of c2
    assert np.all(after["c2/kernel"][:, :, [0, 4]][..., [0, 1, 3]] == 0)


def test_conv_batchnorm_relu_gap_dense(images):
    keras.utils.set_random_seed(4)
    inputs = keras.Input((8, 8, 3))
    h = L.Conv2D(6, 3, name="conv")(inputs)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    h = L.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, L.Dense(3, name="out")(h))
    model.get_layer("bn").set_weights(
        [np.full(6, 1.5, np.float32), np.zeros(6, np.float32), np.full(6, 0.1, np.float32), np.full(6, 2.0, np.float32)]
    )
    plant(model, "bn", [2, 5], value=-50.0, weight=1)  # beta
    _, result, _, after = check(model, images, planted={"relu": [2, 5]})
    # The BN channel is reset to a state in which it fires: live-like gamma, zero beta and mean.
    assert np.allclose(after["bn/gamma"][[2, 5]], 1.5) and np.all(after["bn/beta"][[2, 5]] == 0)
    assert np.all(after["bn/moving_mean"][[2, 5]] == 0) and np.allclose(after["bn/moving_variance"][[2, 5]], 2.0)
    assert result.reinitialized["conv/kernel"][..., [2, 5]].all()


@pytest.mark.parametrize("merge", ["add", "concatenate"])
def test_batchnorm_relu_after_add_or_concatenate_revives_through_the_batchnorm(merge, images):
    """Pre-activation ResNet (Add → BN → ReLU) and DenseNet (Concatenate → BN → ReLU): no Dense/Conv
    feeds the ReLU, so the dead units' BatchNormalization channels are reset; statistics kept."""
    keras.utils.set_random_seed(13)
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(4, 3, padding="same", name="b")(inputs)
    h = L.Add(name="merge")([a, b]) if merge == "add" else L.Concatenate(name="merge")([a, b])
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    h = L.Conv2D(3, 1, name="after")(h)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Flatten()(h)))
    channels = model.get_layer("bn").gamma.shape[0]
    stats = model.get_layer("bn").get_weights()[2:]
    model.get_layer("bn").set_weights([np.full(channels, 1.5, np.float32), np.zeros(channels, np.float32), *stats])
    plant(model, "bn", [1, 3], value=-50.0, weight=1)  # beta
    _revived, result, before, after = check(model, images, planted={"relu": [1, 3]})
    assert np.allclose(after["bn/gamma"][[1, 3]], 1.5) and np.all(after["bn/beta"][[1, 3]] == 0)
    for statistic in ("bn/moving_mean", "bn/moving_variance"):  # the input's statistics still hold
        assert np.array_equal(after[statistic], before[statistic])
    assert not any(key.startswith(("a/", "b/")) for key in result.reinitialized)
    assert result.reinitialized["after/kernel"][..., [1, 3], :].all()  # cut downstream


def test_batchnorm_only_unit_whose_input_never_exceeds_its_mean_gets_gamma_negated(images):
    keras.utils.set_random_seed(14)
    inputs = keras.Input((8, 8, 3))
    h = L.Add(name="merge")([L.Conv2D(4, 3, name="a")(inputs), L.Conv2D(4, 3, name="b")(inputs)])
    h = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(h))
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Flatten()(h)))
    mean = np.zeros(4, np.float32)
    mean[2] = 1e3  # the channel's input is always far below this "mean"
    model.get_layer("bn").set_weights([np.ones(4, np.float32), np.zeros(4, np.float32), mean, np.ones(4, np.float32)])
    _, result, _, after = check(model, images, planted={"relu": [2]})
    assert after["bn/gamma"][2] < 0 and any("negated" in note for note in result.notes)


def test_dense_then_batchnorm_cuts_through_gamma():
    """A site followed by BatchNormalization: gamma → 0, beta → the channel's old constant."""
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(5, activation="relu", name="h"),
            L.BatchNormalization(name="bn"),
            L.Dense(2, name="out"),
        ]
    )
    model.get_layer("bn").set_weights(
        [
            np.full(5, 0.7, np.float32),
            np.full(5, 0.2, np.float32),
            np.full(5, 0.4, np.float32),
            np.full(5, 0.5, np.float32),
        ]
    )
    plant(model, "h", [1])
    x = np.random.default_rng(5).uniform(0, 1, (40, 6)).astype(np.float32)
    _, result, _, after = check(model, x, planted={"h": [1]})
    assert after["bn/gamma"][1] == 0 and "out/kernel" not in result.reinitialized


def test_concatenate_offsets_the_channel(images):
    keras.utils.set_random_seed(6)
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(3, 3, activation="relu", name="a")(inputs)
    b = L.Conv2D(4, 3, activation="relu", name="b")(inputs)
    h = L.Concatenate()([a, b])
    h = L.Conv2D(2, 1, name="mix")(h)
    model = keras.Model(inputs, L.Flatten()(h))
    plant(model, "a", [1])
    plant(model, "b", [0, 3])
    _, result, _, _ = check(model, images, planted={"a": [1], "b": [0, 3]})
    rows = np.flatnonzero(result.reinitialized["mix/kernel"].any(axis=(0, 1, 3)))
    assert list(rows) == [1, 3 + 0, 3 + 3]


def test_add_branches_revive_where_both_dead_and_skip_where_live():
    keras.utils.set_random_seed(7)
    inputs = keras.Input((6,))
    a = L.Dense(5, activation="relu", name="a")(inputs)
    b = L.Dense(5, activation="relu", name="b")(inputs)
    h = L.Add()([a, b])
    h = L.Dense(4, activation="relu", name="after")(h)
    model = keras.Model(inputs, L.Dense(2, name="out")(h))
    plant(model, "a", [1, 3])
    plant(model, "b", [3])
    plant(model, "after", [0])
    x = np.random.default_rng(7).uniform(0, 1, (40, 6)).astype(np.float32)
    _, result, _, _ = check(model, x, planted={"a": [3], "b": [3], "after": [0]}, expect_skipped={"a"})
    # Unit 1 of `a` is summed with a live unit of `b`: cutting the sum would change the outputs.
    assert "1 unit [1]:" in result.skipped["a"] and "'after'" in result.skipped["a"]


def test_nested_submodel(images):
    keras.utils.set_random_seed(8)
    encoder = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(5, 3, activation="relu", name="conv"), L.MaxPooling2D(), L.Flatten()],
        name="encoder",
    )
    head = keras.Sequential(
        [keras.Input((45,)), L.Dense(6, activation="relu", name="hidden"), L.Dense(2, name="logits")], name="head"
    )
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, head(encoder(inputs)))
    plant(encoder, "conv", [0, 2])
    plant(head, "hidden", [4])
    _, result, _, _ = check(model, images, planted={"encoder/conv": [0, 2], "head/hidden": [4]})
    assert result.reinitialized["hidden/kernel"][[i for i in range(45) if i % 5 in (0, 2)]][:, [0, 1, 2, 3, 5]].all()


def test_shared_submodel_called_twice():
    """A siamese tower: one sub-model, two calls; the dead unit is cut after both calls."""
    keras.utils.set_random_seed(12)
    tower = keras.Sequential([keras.Input((6,)), L.Dense(5, activation="relu", name="t")], name="tower")
    left, right = keras.Input((6,)), keras.Input((6,))
    joined = L.Concatenate()([tower(left), tower(right)])
    model = keras.Model([left, right], L.Dense(2, name="out")(joined))
    plant(tower, "t", [3])
    rng = np.random.default_rng(12)
    x = [rng.uniform(0, 1, (30, 6)).astype(np.float32), rng.uniform(0, 1, (30, 6)).astype(np.float32)]
    result = revive_model(model, x, seed=0)
    assert result.revived == {"tower/t": [3]}
    assert largest_difference(model, result.model, x)[0] <= ATOL
    assert set(np.flatnonzero(short(result.reinitialized)["out/kernel"].any(axis=1))) == {3, 8}


def test_unfollowable_sites_are_skipped_with_a_reason(images):
    keras.utils.set_random_seed(9)
    inputs = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, name="conv")(inputs)
    skip = L.Conv2D(4, 3, name="skip")(inputs)
    total = L.Add(name="sum")([h, skip])
    h = L.Activation("relu", name="relu_after_add")(total)  # fed by an Add whose sum is read elsewhere too
    g = L.Dense(4, activation="relu", name="into_softmax")(L.Concatenate()([L.Flatten()(h), L.Flatten()(total)]))
    g = L.Softmax(name="mixer")(g)  # mixes units without weights
    out = L.Dense(2, activation="relu", name="at_output")(g)  # the model output itself
    model = keras.Model(inputs, out)
    plant(model, "skip", [1])
    plant(model, "conv", [1])
    plant(model, "into_softmax", [2])
    plant(model, "at_output", [0])
    report = deadrelu.scan(model, images)
    assert {s.path for s in report.sites if s.dead} == {"relu_after_add", "into_softmax", "at_output"}
    copy = revive(model, report, seed=0)
    result = revive_model(copy, report, seed=0, in_place=True)
    assert result.revived == {} and result.model is copy
    assert "Add 'sum'" in result.skipped["relu_after_add"]
    assert "Softmax 'mixer'" in result.skipped["into_softmax"]
    assert "model output" in result.skipped["at_output"]
    assert largest_difference(model, copy, images)[0] == 0.0


def test_user_model_unchanged_and_seed_is_reproducible():
    keras.utils.set_random_seed(10)
    model = keras.Sequential([keras.Input((5,)), L.Dense(6, activation="relu", name="h"), L.Dense(2, name="out")])
    model.compile(optimizer="adam", loss="mse")
    plant(model, "h", [0, 1, 2])
    x = np.random.default_rng(10).uniform(0, 1, (30, 5)).astype(np.float32)
    before = snapshot(model)
    one = revive(model, x, seed=3)
    two = revive(model, x, seed=3)
    assert one is not model and all(np.array_equal(before[v.path], v.numpy()) for v in model.weights)
    assert all(np.array_equal(a, b) for a, b in zip(one.get_weights(), two.get_weights()))
    assert one.compiled and one.loss == "mse"  # compiled like the original, fresh optimizer
    assert isinstance(revive_model(model, deadrelu.scan(model, x)), ReviveResult)


def test_sites_option_and_unknown_site():
    keras.utils.set_random_seed(11)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            L.Dense(6, activation="relu", name="h1"),
            L.Dense(6, activation="relu", name="h2"),
            L.Dense(2, name="out"),
        ]
    )
    plant(model, "h1", [0])
    plant(model, "h2", [1])
    x = np.random.default_rng(11).uniform(0, 1, (30, 5)).astype(np.float32)
    report = deadrelu.scan(model, x)
    result = revive_model(model, report, seed=0, sites=["h2"], in_place=True)
    assert result.revived == {"h2": [1]} and result.model is model
    with pytest.raises(deadrelu.UsageError, match="no site 'nope'"):
        revive_model(model, report, sites=["nope"], in_place=True)


# -- revive_model: the twin of patch_model --------------------------------------------------------


def two_sites():
    """h1: 3 of 6 units dead (flagged); h2: 1 of 32 dead (dead, under the 10 % flag threshold)."""
    keras.utils.set_random_seed(12)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            L.Dense(6, activation="relu", name="h1"),
            L.Dense(32, activation="relu", name="h2"),
            L.Dense(2, name="out"),
        ]
    )
    for name in ("h1", "h2"):  # non-negative inputs and kernels: every unmarked unit fires
        kernel, bias = model.get_layer(name).get_weights()
        model.get_layer(name).set_weights([np.abs(kernel), bias])
    plant(model, "h1", [0, 2, 4])
    plant(model, "h2", [7])
    x = np.random.default_rng(12).uniform(0, 1, (40, 5)).astype(np.float32)
    return model, x


def test_revive_model_result_carries_the_model_the_changes_and_the_check():
    model, x = two_sites()
    before = snapshot(model)
    result = deadrelu.revive_model(model, x, seed=0)
    assert isinstance(result, ReviveResult) and isinstance(result.model, keras.Model) and result.model is not model
    assert result.revived == {"h1": [0, 2, 4], "h2": [7]} and result.skipped == {}
    assert all(np.array_equal(before[v.path], v.numpy()) for v in model.weights)  # the input is left as it was
    # The check compares the outputs before and after on the data: the same number largest_difference finds.
    assert result.check.samples == len(x) and result.check.passed
    assert float(result.check) == largest_difference(model, result.model, x)[0] <= ATOL
    assert result.to_dict()["check"]["samples"] == len(x)
    assert result.report.site("h1").dead == [0, 2, 4] and result.to_dict()["summary_before"]["dead"] == 4
    after = deadrelu.scan(result.model, x)
    assert after.site("h1").dead == [] and after.site("h2").dead == []
    # `revive` is the same revival, returned as a bare model.
    plain = revive(model, x, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(plain.get_weights(), result.model.get_weights()))
    # From a report of in-memory data there is no data to compare on, unless `data` gives it.
    report = deadrelu.scan(model, x)
    from_report = deadrelu.revive_model(model, report, seed=0)
    assert from_report.check is None and from_report.revived == result.revived
    assert any("the outputs were not compared" in note for note in from_report.notes)
    checked = deadrelu.revive_model(model, report, data=x, seed=0)
    assert checked.check.passed and checked.check.samples == len(x) and checked.revived == result.revived
    with pytest.raises(deadrelu.UsageError, match="`data` is the data to check a report's units on"):
        deadrelu.revive_model(model, x, data=x)
    with pytest.raises(deadrelu.UsageError, match="`report_or_data` is None: revive needs the data"):
        deadrelu.revive_model(model, None)  # units dead on random inputs say nothing


def test_revive_model_skipped_site_reports_its_reason_and_the_outputs_keep():
    keras.utils.set_random_seed(13)
    model = keras.Sequential(
        [keras.Input((5,)), L.Dense(6, activation="relu", name="h"), L.Dense(4, activation="relu", name="at_output")]
    )
    plant(model, "h", [])  # every unit of h fires
    plant(model, "at_output", [1])
    x = np.random.default_rng(13).uniform(0, 1, (24, 5)).astype(np.float32)
    result = deadrelu.revive_model(model, x, seed=0)
    assert result.revived == {} and list(result.skipped) == ["at_output"]
    assert "model output" in result.skipped["at_output"]
    assert result.check.max_abs_diff == 0.0 and result.check.samples == 24


def test_revive_model_selects_sites_as_patch_model_does():
    from deadrelu.fixes.selection import select_sites

    model, x = two_sites()
    report = deadrelu.scan(model, x)
    assert [s.path for s in report.sites if s.dead] == ["h1", "h2"]
    assert [s.path for s in report.sites if s.flagged] == ["h1"]
    assert deadrelu.revive_model(model, report, seed=0, only="flagged").revived == {"h1": [0, 2, 4]}
    assert deadrelu.revive_model(model, report, seed=0, only="dead").revived == {"h1": [0, 2, 4], "h2": [7]}
    only_h2 = deadrelu.revive_model(model, x, seed=0, sites=["h2"])
    assert only_h2.revived == {"h2": [7]} and float(only_h2.check) <= ATOL
    after = deadrelu.scan(only_h2.model, x)
    assert after.site("h1").dead == [0, 2, 4] and after.site("h2").dead == []
    # One selection for both: the same sites are chosen for patch.
    selected, kept, _ = select_sites(deadrelu.find_sites(model), sites=["h2"], only="dead", report=report)
    assert [s.path for s in selected] == ["h2"] and kept == ["h1"]
    assert [r.path for r in deadrelu.patch_model(model, sites=["h2"], only="dead", report=report).rewrites] == ["h2"]
    revived = revive(model, report, seed=0, only="flagged")
    assert isinstance(revived, keras.Model) and deadrelu.scan(revived, x).site("h2").dead == [7]
    nothing = deadrelu.revive_model(model, report, sites=["h2"], only="flagged")
    assert nothing.revived == {} and "no site is flagged in the report: nothing to revive" in nothing.notes
    with pytest.raises(deadrelu.UsageError, match="no site 'nope' in the report"):
        deadrelu.revive_model(model, report, sites=["nope"])
    with pytest.raises(deadrelu.UsageError, match="`only` must be one of"):
        deadrelu.revive_model(model, report, only="some")


def test_in_place_changes_the_model_itself_and_resets_its_optimizer_slots():
    model, x = two_sites()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.fit(x, np.ones((len(x), 2), "float32"), epochs=1, batch_size=8, verbose=0)  # Adam's moments ≠ 0
    before = model.predict(x, verbose=0)
    kernel = model.get_layer("h1").kernel
    index = [id(v) for v in model.optimizer._trainable_variables].index(id(kernel))
    result = revive_model(model, x, seed=0, in_place=True)
    assert result.model is model and result.in_place and result.revived == {"h1": [0, 2, 4], "h2": [7]}
    assert model.get_layer("h1").kernel is kernel  # the same variables, new values
    assert result.check.passed and result.check.samples == len(x)
    np.testing.assert_allclose(model.predict(x, verbose=0), before, rtol=0, atol=1e-5)
    after = deadrelu.scan(model, x)
    assert after.site("h1").dead == [] and after.site("h2").dead == []
    # The moments of the re-initialised kernel columns start again from zero; the others are kept.
    mask = result.reinitialized[next(key for key, v in result.variables.items() if v is kernel)]
    for slots in (model.optimizer._momentums, model.optimizer._velocities):
        value = np.asarray(slots[index].numpy())
        assert not value[mask].any() and value[~mask].any()
    assert result.optimizer_entries_reset >= 2 * int(mask.sum())
    assert result.to_dict()["optimizer_entries_reset"] == result.optimizer_entries_reset
    other, x2 = two_sites()
    assert revive(other, x2, seed=0, in_place=True) is other


def test_units_from_a_report_of_other_data_fail_the_check_and_in_place_restores_the_model():
    model, x = two_sites()
    report = deadrelu.scan(model, x)
    other = x * 400  # beats the bias of -100: the units dead on x fire here
    assert deadrelu.scan(model, other).site("h1").dead == []
    with pytest.raises(OutputCheckError) as raised:
        revive_model(model, report, data=other, seed=0)
    error = raised.value
    assert error.cause == "data" and error.exit_code == 4 and "not all dead on this data" in str(error)
    assert not error.check.passed and error.check.max_abs_diff > error.check.limit
    assert error.result.units_revived == 4 and error.result.check is error.check
    before = snapshot(model)
    with pytest.raises(OutputCheckError):
        revive_model(model, report, data=other, seed=0, in_place=True)
    assert all(np.array_equal(before[v.path], v.numpy()) for v in model.weights)  # put back as it was


# Every weighted layer kind, as the revived layer (its units re-initialised) and as the layer after
# it (its rows for the dead units cut). Channel layouts differ per kind: a depthwise unit is
# (input channel, multiplier), a separable unit's incoming weights are its pointwise column and a
# transposed conv keeps its output channels on the kernel's second-to-last axis.
KINDS = {
    "Conv1D": (lambda name, act=None: L.Conv1D(4, 3, activation=act, name=name), (9, 3)),
    "Conv3D": (lambda name, act=None: L.Conv3D(4, 2, activation=act, name=name), (4, 4, 3, 2)),
    "Conv2DTranspose": (
        lambda name, act=None: L.Conv2DTranspose(4, 3, strides=2, activation=act, name=name),
        (5, 5, 3),
    ),
    "DepthwiseConv2D": (
        lambda name, act=None: L.DepthwiseConv2D(3, depth_multiplier=2, activation=act, name=name),
        (7, 7, 3),
    ),
    "SeparableConv2D": (lambda name, act=None: L.SeparableConv2D(4, 3, activation=act, name=name), (7, 7, 3)),
    "Conv2D-channels_first": (
        lambda name, act=None: L.Conv2D(4, 3, activation=act, name=name, data_format="channels_first"),
        (3, 7, 9),
    ),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_weighted_kind_revives_and_is_cut_downstream(kind):
    keras.utils.set_random_seed(20)
    factory, shape = KINDS[kind]
    inputs = keras.Input(shape)
    h = factory("first", "relu")(inputs)
    h = factory("second", "relu")(h)
    h = L.Flatten()(h)
    model = keras.Model(inputs, L.Dense(2, name="out")(h))
    plant(model, "first", [1, 2])
    plant(model, "second", [0])
    x = np.random.default_rng(20).uniform(0, 1, (32,) + shape).astype(np.float32)
    check(model, x, planted={"first": [1, 2], "second": [0]})


@pytest.mark.parametrize("kind", ["Conv2DTranspose", "DepthwiseConv2D", "SeparableConv2D"])
def test_every_weighted_kind_through_batchnorm_and_relu_layer(kind):
    keras.utils.set_random_seed(21)
    factory, shape = KINDS[kind]
    inputs = keras.Input(shape)
    h = factory("producer")(inputs)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    h = L.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, L.Dense(2, name="out")(h))
    channels = model.get_layer("bn").gamma.shape[0]
    model.get_layer("bn").set_weights(
        [
            np.full(channels, 1.5, np.float32),
            np.zeros(channels, np.float32),
            np.full(channels, 0.1, np.float32),
            np.full(channels, 2.0, np.float32),
        ]
    )
    plant(model, "bn", [1, 3], value=-50.0, weight=1)  # beta
    x = np.random.default_rng(21).uniform(0, 1, (32,) + shape).astype(np.float32)
    check(model, x, planted={"relu": [1, 3]})


@pytest.mark.slow
def test_keras_applications_mobilenetv2_patch_and_revive_are_exact():
    """An architecture people fine-tune: ReLU(max_value=6) layers after BatchNorm, depthwise
    convolutions and Add; every site rewritten exactly, every revivable dead unit revived exactly."""
    from deadrelu.fixes.patch import patch_model

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3), alpha=0.35, classes=5)
    x = np.random.default_rng(0).uniform(0, 1, (16, 64, 64, 3)).astype(np.float32)
    sites = deadrelu.find_sites(model).sites
    assert len(sites) == 35 and all(s.kind == "relu_layer" and s.max_value == 6.0 for s in sites)
    for to in ("leaky", "prelu"):
        check = patch_model(model, to, data=x).check
        assert check.passed and check.max_abs_diff == 0.0, check.describe()
    report = deadrelu.scan(model, x)
    assert report.summary["dead"] > 0  # random weights on noise: some units never fire
    result = revive_model(model, x, seed=0)
    revived = result.model
    assert largest_difference(model, revived, x)[0] <= ATOL
    skipped_dead = sum(len(report.site(path).dead) for path in result.skipped)
    assert result.units_revived + skipped_dead == report.summary["dead"]
    assert result.units_revived > 0 and result.revived  # the loop below checks something
    after = deadrelu.scan(revived, x)
    for path, units in result.revived.items():
        assert not set(after.site(path).dead) & set(units), path


# -- command line ---------------------------------------------------------------------------


def test_cli_revives_dying_mlp(tmp_path, capfd):
    model_path = tmp_path / "dying_mlp.keras"
    model_path.write_bytes((SAMPLES / "dying_mlp.keras").read_bytes())
    out, summary = tmp_path / "revived.keras", tmp_path / "revive.json"
    argv = ["revive", model_path, "--data", SAMPLES / "probe.npz", "-o", out, "--seed", "0", "--json", summary]
    code = main([str(a) for a in argv])
    stdout, stderr = capfd.readouterr()
    assert code == 0, stderr
    assert "outputs unchanged: max |Δ| = " in stdout and "on 1,000 samples" in stdout
    assert "→ 0 (0.0%)" in stdout and "hidden_1" in stdout
    data = json.loads(summary.read_text())
    assert data["summary_before"]["dead_fraction"] > 0.5 and data["summary_after"]["dead"] == 0
    assert data["check"]["max_abs_diff"] <= ATOL and data["check"]["passed"] and data["schema"] == "deadrelu/revive@2"
    # The file loads with plain Keras and computes what the input computes.
    x = np.load(SAMPLES / "probe.npz")["x"][:200]
    original = keras.models.load_model(model_path)
    assert largest_difference(original, keras.models.load_model(out), x)[0] <= ATOL
    # An existing OUT is refused without --force (one line, exit 2); the input never becomes OUT.
    assert main([str(a) for a in argv]) == 2
    assert "exists" in capfd.readouterr().err
    assert (
        main(["revive", str(model_path), "--data", str(SAMPLES / "probe.npz"), "-o", str(model_path), "--force"]) == 2
    )
    assert "is the input model" in capfd.readouterr().err


def test_cli_with_a_saved_report_checks_on_its_data_file_while_it_is_there(tmp_path, capfd):
    model_path, probe = tmp_path / "dying_mlp.keras", tmp_path / "probe.npz"
    model_path.write_bytes((SAMPLES / "dying_mlp.keras").read_bytes())
    probe.write_bytes((SAMPLES / "probe.npz").read_bytes())
    report_path = tmp_path / "scan.json"
    scan_argv = ["scan", model_path, "--data", probe, "--samples", "200", "--json", report_path, "--quiet"]
    assert main([str(a) for a in scan_argv]) == 0
    capfd.readouterr()
    # The report names its data file (and its 200-sample limit): the outputs are checked there.
    assert main(["revive", str(model_path), "--report", str(report_path), "--seed", "1"]) == 0
    out, _err = capfd.readouterr()
    assert "outputs unchanged: max |Δ| = 0 ≤ 1e-05 on 200 samples" in out
    x = np.load(probe)["x"][:200]
    revived = keras.models.load_model(tmp_path / "dying_mlp_revived.keras")
    assert largest_difference(keras.models.load_model(model_path), revived, x)[0] <= ATOL
    # Without the file, nothing to compare on: revived all the same, and said.
    probe.unlink()
    second = tmp_path / "second.keras"
    assert main(["revive", str(model_path), "--report", str(report_path), "-o", str(second), "--seed", "1"]) == 0
    out, err = capfd.readouterr()
    assert second.exists() and "the outputs were not compared: no data" in err and "pass --data" in err
    assert "outputs unchanged" not in out and "revived (ReDo) in 3 sites" in out


# -- a real model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_stuck_real_model_outputs_unchanged_and_units_fire(shared):
    stuck = shared("models", "dd_mnist_al22_trained_stuck.h5")
    mnist = np.load(shared("data", "mnist.npz"))
    x = (mnist["x_test"][:500] / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
    model = deadrelu.load_model(stuck)
    report = deadrelu.scan(model, x)
    assert report.summary["dead_fraction"] > 0.5
    result = revive_model(model, x, seed=0)
    revived = result.model
    assert result.units_revived == report.summary["dead"] and not result.skipped
    assert largest_difference(model, revived, x)[0] <= ATOL
    assert deadrelu.scan(revived, x).summary["dead"] <= 0.01 * report.summary["units"]

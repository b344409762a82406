"""ReLUs right after `Add` (ResNet v1): revive through one branch, prune from every branch, outputs kept.

Every block here is built so that unit k of `relu(a + b)` is dead by construction: a bias (Dense) or
a BatchNormalization beta (Conv) of -50 on channel k of both branches, or on the branch alone when
the other input is a dead unit already. Each test checks the revived or pruned model's outputs
against the original's (≤ 1e-5, and against a numpy recomputation of the block), that revived
units fire on a re-scan, which branch took the new weights, and what was left and why.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import deadrelu
from deadrelu.fixes.prune import prune_model
from deadrelu.fixes.revive import revive_model

L = keras.layers
ATOL = 1e-5


@pytest.fixture(scope="module")
def vectors():
    return np.random.default_rng(0).uniform(0, 1, (40, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(0, 1, (24, 8, 8, 3)).astype(np.float32)


def set_bias(model, name: str, units, value: float, *, weight: int = -1, rest: float = 0.5) -> None:
    """Sets the bias (or, with `weight=1`, a BatchNormalization's beta) of `units` to `value`, the rest to `rest`."""
    layer = model.get_layer(name)
    weights = layer.get_weights()
    weights[weight][:] = rest
    weights[weight][list(units)] = value
    layer.set_weights(weights)


def outputs_equal(a, b, x) -> float:
    delta = float(np.max(np.abs(np.asarray(a(x, training=False)) - np.asarray(b(x, training=False)))))
    assert delta <= ATOL
    return delta


def dead_units(model, x) -> dict[str, list[int]]:
    return {site.path: list(site.dead) for site in deadrelu.scan(model, x).sites}


def short(mapping: dict) -> dict:
    return {"/".join(key.split("/")[-2:]): value for key, value in mapping.items()}


# -- Dense blocks --------------------------------------------------------------------------------


def dense_block(seed: int = 1):
    """h0 = relu(Dense) → r = relu(h0 + Dense_a(h0)) → Dense out: an identity shortcut."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = L.Dense(8, activation="relu", name="h0")(inputs)
    total = L.Add(name="add")([h, L.Dense(8, name="a")(h)])
    out = L.Dense(3, name="out")(L.ReLU(name="r")(total))
    return keras.Model(inputs, out)


def test_dense_block_identity_shortcut_revives_through_the_dense_branch(vectors):
    model = dense_block()
    set_bias(model, "h0", [], 0.0)  # the shortcut stays alive
    set_bias(model, "a", [2, 5], -100.0)  # a + h0 ≤ 0 on channels 2 and 5
    # The block by hand: the units are dead because the branch is far below minus the shortcut.
    w0, b0 = model.get_layer("h0").get_weights()
    wa, ba = model.get_layer("a").get_weights()
    h0 = np.maximum(vectors @ w0 + b0, 0)
    assert np.all(h0 + h0 @ wa + ba <= 0, axis=0)[[2, 5]].all() and (h0[:, [2, 5]] > 0).any()
    assert dead_units(model, vectors)["r"] == [2, 5]
    before = [np.array(v.numpy()) for v in model.weights]

    result = revive_model(model, vectors, seed=0)
    assert result.revived == {"r": [2, 5]} and result.skipped == {}
    assert any("revived through input 2 of Add 'add': Dense 'a'" in note for note in result.notes)
    assert "revived through input 2 of Add 'add'" in " ".join(result.to_dict()["notes"])  # in --json too
    outputs_equal(model, result.model, vectors)
    masks = short(result.reinitialized)
    assert set(masks) == {"a/kernel", "a/bias", "out/kernel"}  # the shortcut h0 is left as it is
    assert masks["a/kernel"][:, [2, 5]].all() and not masks["a/kernel"][:, [0, 1, 3, 4, 6, 7]].any()
    assert np.all(result.model.get_layer("out").kernel.numpy()[[2, 5]] == 0)
    assert dead_units(result.model, vectors)["r"] == []  # the revived units fire
    assert all(np.array_equal(v.numpy(), old) for v, old in zip(model.weights, before))  # user's model kept

    pruned = prune_model(model, vectors)  # the shortcut keeps channels 2 and 5: they cannot leave the sum
    assert pruned.model is None and pruned.kept == {"r": [2, 5]}
    assert "Add 'add'" in pruned.skipped["r"] and "every input" in pruned.skipped["r"]


def test_dense_block_prunes_the_channel_from_the_shortcut_and_the_branch(vectors):
    model = dense_block()
    set_bias(model, "h0", [2, 5], -100.0)  # the shortcut's units are dead: they go with the block's
    set_bias(model, "a", [2, 5], -100.0)
    assert dead_units(model, vectors) == {"h0": [2, 5], "r": [2, 5]}
    result = prune_model(model, vectors)
    assert result.removed == {"h0": [2, 5], "r": [2, 5]} and result.kept == {}
    # h0: 6×6 + 6, a: 6×6 + 6, out: 6×3 + 3
    assert result.params_before == 56 + 72 + 27 and result.params_after == 42 + 42 + 21
    outputs_equal(model, result.model, vectors)
    sizes = {change.name: change.units for change in result.layers}
    assert sizes["h0"] == (8, 6) and sizes["a"] == (8, 6)

    revived = revive_model(model, vectors, seed=0)  # both: h0 reaches r's dead units through the shortcut
    assert revived.revived == {"h0": [2, 5], "r": [2, 5]}
    outputs_equal(model, revived.model, vectors)
    assert dead_units(revived.model, vectors) == {"h0": [], "r": []}


# -- Conv2D blocks -------------------------------------------------------------------------------


def conv_block(x, filters: int, name: str, *, projection: bool):
    """ResNet v1's block: conv → BN → ReLU → conv → BN, plus a (projection) shortcut, Add, ReLU."""
    shortcut = x
    if projection:
        shortcut = L.Conv2D(filters, 1, name=f"{name}_0_conv")(x)
        shortcut = L.BatchNormalization(name=f"{name}_0_bn")(shortcut)
    h = L.Conv2D(filters, 3, padding="same", name=f"{name}_1_conv")(x)
    h = L.ReLU(name=f"{name}_1_relu")(L.BatchNormalization(name=f"{name}_1_bn")(h))
    h = L.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(h)
    h = L.BatchNormalization(name=f"{name}_2_bn")(h)
    h = L.Add(name=f"{name}_add")([shortcut, h])
    return L.Activation("relu", name=f"{name}_out")(h)


def resnet(blocks: int = 1, seed: int = 2):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = inputs
    for i in range(blocks):
        h = conv_block(h, 4, f"b{i + 1}", projection=i == 0)
    out = L.Dense(2, name="out")(L.GlobalAveragePooling2D(name="pool")(h))
    return keras.Model(inputs, out)


def test_conv_block_with_projection_shortcut(images):
    model = resnet(1)
    set_bias(model, "b1_0_bn", [1, 3], -50.0, weight=1, rest=0.0)  # beta on both branches
    set_bias(model, "b1_2_bn", [1, 3], -1.0, weight=1, rest=0.0)
    set_bias(model, "b1_1_bn", [], 0.0, weight=1, rest=0.5)
    assert dead_units(model, images)["b1_out"] == [1, 3]

    result = revive_model(model, images, seed=0)
    assert result.revived["b1_out"] == [1, 3]
    assert any("input 1 of Add 'b1_add': Conv2D 'b1_0_conv' → BatchNormalization 'b1_0_bn'" in n for n in result.notes)
    outputs_equal(model, result.model, images)
    masks = short(result.reinitialized)
    assert masks["b1_0_conv/kernel"][..., [1, 3]].all() and not masks["b1_0_conv/kernel"][..., [0, 2]].any()
    assert not any(key.startswith("b1_2_") for key in masks)  # the other branch is left as it is
    new_bn = result.model.get_layer("b1_0_bn")
    assert np.all(new_bn.beta.numpy()[[1, 3]] == 0) and np.all(new_bn.moving_mean.numpy()[[1, 3]] == 0)
    assert np.all(result.model.get_layer("out").kernel.numpy()[[1, 3]] == 0)  # cut after the pooling
    assert dead_units(result.model, images)["b1_out"] == []

    # When the branch left as it is keeps the sum negative alone, the unit cannot fire: a note says so.
    set_bias(model, "b1_2_bn", [1, 3], -50.0, weight=1, rest=0.0)
    stuck = revive_model(model, images, seed=0)
    assert stuck.revived["b1_out"] == [1, 3]
    assert any(note.startswith("b1_out: 2 units [1, 3] revived but still not firing") for note in stuck.notes)
    outputs_equal(model, stuck.model, images)

    pruned = prune_model(model, images)
    assert pruned.removed == {"b1_out": [1, 3]}
    sizes = {change.name: change.units for change in pruned.layers}
    assert sizes["b1_0_conv"] == sizes["b1_2_conv"] == (4, 2) and sizes["b1_0_bn"] == sizes["b1_2_bn"] == (4, 2)
    assert pruned.model.get_layer("out").kernel.shape == (2, 2)
    outputs_equal(model, pruned.model, images)
    # By hand: the pruned block equals the original block's live channels.
    probe = keras.Model(model.input, model.get_layer("b1_out").output)
    small = keras.Model(pruned.model.input, pruned.model.get_layer("b1_out").output)
    full = np.asarray(probe(images))
    assert np.all(full[..., [1, 3]] == 0)
    np.testing.assert_allclose(np.asarray(small(images)), full[..., [0, 2]], atol=ATOL)


def test_chain_of_two_blocks_through_an_identity_shortcut(images):
    model = resnet(2)
    # b1's unit 2: both branches pushed down; b2's unit 2 = relu(0 + branch ≤ 0): dead too.
    for name, value in (("b1_0_bn", -50.0), ("b1_2_bn", -1.0), ("b2_2_bn", -50.0)):
        set_bias(model, name, [2], value, weight=1, rest=0.0)
    dead = dead_units(model, images)
    assert dead["b1_out"] == [2] and dead["b2_out"] == [2]

    result = revive_model(model, images, seed=0)
    assert result.revived["b1_out"] == [2] and result.revived["b2_out"] == [2]
    assert any("b2_out" in note and "input 2 of Add 'b2_add'" in note for note in result.notes)
    outputs_equal(model, result.model, images)
    # b1's unit is cut from b2's first convolution; both reach the Dense after the pooling, cut there.
    assert np.all(result.model.get_layer("b2_1_conv").kernel.numpy()[:, :, 2, :] == 0)
    assert np.all(result.model.get_layer("out").kernel.numpy()[2] == 0)
    rescan = dead_units(result.model, images)
    assert rescan["b1_out"] == [] and rescan["b2_out"] == []

    pruned = prune_model(model, images)
    assert pruned.removed["b1_out"] == [2] and pruned.removed["b2_out"] == [2]
    assert pruned.model.get_layer("b2_1_conv").kernel.shape[2] == 3
    outputs_equal(model, pruned.model, images)


def test_identity_shortcut_into_a_live_unit_is_refused_with_the_reason(images):
    model = resnet(2)
    for name in ("b1_0_bn", "b1_2_bn"):
        set_bias(model, name, [2], -50.0, weight=1, rest=0.0)
    set_bias(model, "b2_2_bn", [], 0.0, weight=1, rest=5.0)  # b2's units fire: b1's would change them
    dead = dead_units(model, images)
    assert dead["b1_out"] == [2] and dead["b2_out"] == []
    result = revive_model(model, images, seed=0)
    assert "b1_out" not in result.revived
    reason = result.skipped["b1_out"]
    assert "summed with live signal by Add 'b2_add'" in reason and "identity shortcut" in reason
    outputs_equal(model, result.model, images)

    pruned = prune_model(model, images)
    assert "b1_out" in pruned.kept and "Add 'b2_add'" in pruned.skipped["b1_out"]


def test_no_branch_to_revive_through(vectors):
    """Both inputs of the Add apply their own ReLU, and a sum read by two layers: skipped, with why."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6,))
    a = L.Dense(4, activation="relu", name="a")(inputs)
    b = L.Dense(4, activation="relu", name="b")(inputs)
    r = L.ReLU(name="r")(L.Add(name="add")([a, b]))
    c = L.Dense(4, name="c")(inputs)
    total = L.Add(name="shared")([c, L.Dense(4, name="d")(inputs)])
    s = L.ReLU(name="s")(total)
    out = L.Concatenate()([r, s, L.Dense(2, name="side")(total)])
    model = keras.Model(inputs, L.Dense(2, name="out")(out))
    for name in ("a", "b", "c", "d"):
        set_bias(model, name, [1], -100.0)
    result = revive_model(model, vectors, seed=0, sites=["r", "s"])
    assert result.revived == {}
    assert "Add 'add'" in result.skipped["r"] and "applies relu" in result.skipped["r"]
    assert "Add 'shared'" in result.skipped["s"] and "also read by Dense 'side'" in result.skipped["s"]
    outputs_equal(model, result.model, vectors)

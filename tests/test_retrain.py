"""Retrain and compare: same budget for every variant, scans before/after, fair seeds."""

from __future__ import annotations

import numpy as np
import pytest

import deadrelu
from deadrelu.errors import UsageError
from deadrelu.fixes.retrain import compile_like, retrain
from paths import SAMPLES


def _model(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(12, activation="relu", name="h"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _copy(model):
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1).astype(int)


@pytest.mark.slow
def test_identical_variants_train_identically_and_scans_match(xy, tmp_path):
    x, y = xy
    source = _model()
    planted = _copy(source)
    kernel, bias = planted.get_layer("h").get_weights()
    bias[:5] = -1e3
    planted.get_layer("h").set_weights([kernel, bias])
    comparison = retrain(
        {"a": _copy(source), "b": _copy(source), "planted": planted},
        source,
        x,
        y,
        epochs=2,
        batch_size=32,
        validation_split=0.25,
        seed=3,
    )
    a, b, p = comparison.variants
    # Same seed, same data, same start: the budget is fair, so the curves are identical.
    assert a.history == b.history and a.after == b.after
    assert p.dead_before >= 5 and p.dead_before > a.dead_before
    # The before-scan equals an independent scan of the validation data.
    assert a.dead_before == deadrelu.scan(source, x[225:]).summary["dead"]
    # Compiled like the source: the same metric, the same optimizer class with fresh state.
    assert set(a.after) == {"loss", "accuracy"}
    assert comparison.settings["train_samples"] == 225 and comparison.settings["validation_samples"] == 75
    comparison.to_json(tmp_path / "c.json")
    assert (tmp_path / "c.json").stat().st_size > 100


def test_compile_like_needs_a_loss_when_the_file_has_none():
    import keras

    bare = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(UsageError, match="`loss="):
        compile_like(_copy(bare), bare)
    target = _copy(bare)
    compile_like(target, bare, loss="mse", optimizer="sgd", learning_rate=0.5)
    assert type(target.optimizer).__name__ == "SGD"
    assert float(target.optimizer.learning_rate) == pytest.approx(0.5)


def test_validation_is_required(xy):
    x, y = xy
    with pytest.raises(UsageError, match="validation"):
        retrain({"a": _model()}, _model(), x, y, epochs=1)


def test_compile_like_restores_a_serialised_loss_from_a_legacy_file(tmp_path):
    """Keras 2 files store the loss as a function; its compile config holds it serialised."""
    import keras

    source = _model()
    source.compile(
        optimizer=keras.optimizers.RMSprop(0.003), loss=keras.losses.categorical_crossentropy, metrics=["accuracy"]
    )
    path = tmp_path / "fn_loss.h5"
    source.save(path)
    loaded = deadrelu.load_model(str(path))
    target = _copy(loaded)
    compile_like(target, loaded)
    assert type(target.optimizer).__name__ == "RMSprop"
    assert float(target.optimizer.learning_rate) == pytest.approx(0.003)
    x = np.zeros((4, 6), np.float32)
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    assert np.isfinite(target.evaluate(x, y, verbose=0, return_dict=True)["loss"])


# -- command line -------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_patch_retrain_writes_the_retrained_model_and_prints_cause_before_effect(tmp_path, capfd):
    import json

    import keras
    import matplotlib.image

    from deadrelu.cli import main

    out, summary, curves = tmp_path / "patched.keras", tmp_path / "patch.json", tmp_path / "curves.png"
    argv = [
        "patch",
        SAMPLES / "dying_mlp.keras",
        "--to",
        "leaky",
        "-o",
        out,
        "--retrain",
        "--data",
        SAMPLES / "probe.npz",
        "--samples",
        "400",
        "--validation-split",
        "0.25",
        "--epochs",
        "2",
        "--baseline",
        "--curves",
        curves,
        "--json",
        summary,
    ]
    code = main([str(a) for a in argv])
    stdout, stderr = capfd.readouterr()
    assert code == 0, stderr
    assert stdout.index("rewritten to LeakyReLU") < stdout.index("retrained 2 epochs")
    retrained = json.loads(summary.read_text())["retrain"]
    assert [v["name"] for v in retrained["variants"]] == ["as is (baseline)", "patched (leaky)"]
    assert all(len(v["history"]["loss"]) == 2 for v in retrained["variants"])
    # The verdict is printed under the table, computed from the numbers in the JSON.
    [verdict] = retrained["verdicts"]
    assert verdict.startswith("patched (leaky): ") and "than the baseline on val " in verdict
    assert verdict in " ".join(stdout.split())
    # OUT holds the retrained model: evaluating it on the held-out quarter gives the "after" numbers.
    data = np.load(SAMPLES / "probe.npz")
    x_val, y_val = data["x"][300:400], data["y"][300:400]
    model = keras.models.load_model(out)
    after = retrained["variants"][1]["after"]
    assert model.evaluate(x_val, y_val, verbose=0, return_dict=True)["loss"] == pytest.approx(after["loss"], rel=1e-4)
    picture = matplotlib.image.imread(curves)
    assert picture.shape[0] > 200 and picture.shape[1] > 300 and picture[..., :3].std() > 0.05


def test_cli_retrain_without_validation_is_one_line_exit_2(tmp_path, capfd):
    from deadrelu.cli import main

    code = main(
        [
            "revive",
            str(SAMPLES / "dying_mlp.keras"),
            "--data",
            str(SAMPLES / "probe.npz"),
            "-o",
            str(tmp_path / "r.keras"),
            "--retrain",
        ]
    )
    err = capfd.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--validation-split" in err
    assert not (tmp_path / "r.keras").exists()


def test_cli_retrain_of_a_two_output_model(tmp_path, capfd):
    """Several outputs: labels by output name, each output's loss, OUT evaluated equals the "after"."""
    import json

    import keras

    from deadrelu.cli import main

    keras.utils.set_random_seed(3)
    inp = keras.Input((6,), name="x")
    h = keras.layers.Dense(12, activation="relu", name="h")(inp)
    model = keras.Model(
        inp, [keras.layers.Dense(3, activation="softmax", name="cls")(h), keras.layers.Dense(1, name="reg")(h)]
    )
    model.compile(
        optimizer="adam", loss={"cls": "categorical_crossentropy", "reg": "mse"}, loss_weights={"cls": 1.0, "reg": 0.5}
    )
    model.save(tmp_path / "two.keras")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    cls, reg = (x[:, 0] > 0).astype(int) + (x[:, 1] > 1).astype(int), x[:, 2:3] * 2.0
    np.savez(tmp_path / "data.npz", x=x, cls=cls, reg=reg)  # integer classes for a categorical loss
    out, summary = tmp_path / "patched.keras", tmp_path / "patch.json"
    code = main(
        [
            "patch",
            str(tmp_path / "two.keras"),
            "--to",
            "leaky",
            "-o",
            str(out),
            "--retrain",
            "--data",
            str(tmp_path / "data.npz"),
            "--validation-split",
            "0.25",
            "--epochs",
            "2",
            "--json",
            str(summary),
            "--quiet",
        ]
    )
    assert code == 0, capfd.readouterr().err
    after = json.loads(summary.read_text())["retrain"]["variants"][0]["after"]
    retrained = keras.models.load_model(out)
    evaluated = retrained.evaluate(x[90:], {"cls": np.eye(3)[cls[90:]], "reg": reg[90:]}, verbose=0, return_dict=True)
    assert evaluated["loss"] == pytest.approx(after["loss"], rel=1e-4)


def test_before_after_loss_is_the_data_loss_with_the_penalty_beside_it(xy):
    """A revived model predicts what the original does, but its weights are others (fresh incoming,
    zeroed outgoing), so their L2 penalty is another: the data loss is the same before training, the
    penalty is not (what made a revived model's 'loss' look worse before it had changed an output)."""
    import keras

    from deadrelu.fixes.retrain import split_loss
    from deadrelu.fixes.revive import revive

    x, y = xy
    keras.utils.set_random_seed(5)
    l2 = keras.regularizers.L2(0.01)
    source = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(12, activation="relu", name="h", kernel_regularizer=l2),
            keras.layers.Dense(3, activation="softmax", name="out", kernel_regularizer=l2),
        ]
    )
    source.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    kernel, bias = source.get_layer("h").get_weights()
    bias[:6] = -1e3  # six dead units, whose revival draws fresh weights
    source.get_layer("h").set_weights([kernel, bias])
    revived = revive(source, deadrelu.scan(source, x), seed=0, data=x)
    comparison = retrain(
        {"baseline": _copy(source), "revived": revived}, source, x, y, epochs=1, validation_split=0.25, seed=0
    )
    base, rev = comparison.variants
    assert base.before["loss"] == pytest.approx(rev.before["loss"], rel=1e-6)  # the same predictions
    assert base.before["penalty"] > 0 and abs(rev.before["penalty"] - base.before["penalty"]) > 1e-3
    # Keras's own loss is their sum: the split takes out exactly the weights' penalties.
    keras_loss = source.evaluate(x[225:], y[225:], verbose=0, return_dict=True)["loss"]
    assert base.before["loss"] + base.before["penalty"] == pytest.approx(keras_loss, rel=1e-5)
    # Without regularisers nothing is split.
    plain = _model()
    assert set(split_loss(plain, {"loss": 1.0, "accuracy": 0.5})) == {"loss", "accuracy"}


def test_the_verdict_is_computed_against_the_baseline():
    from deadrelu.fixes.retrain import Comparison, VariantResult

    def variant(name, accuracy, loss, dead_before=10, dead_after=3):
        return VariantResult(
            name=name,
            units=64,
            dead_before=dead_before,
            dying_before=0,
            dead_after=dead_after,
            dying_after=0,
            before={},
            after={"loss": loss, "accuracy": accuracy},
            history={},
        )

    comparison = Comparison(
        [
            variant("as is (baseline)", 0.9000, 0.40, 10, 10),
            variant("revived", 0.9325, 0.31, 10, 3),
            variant("leaky", 0.9000, 0.40),
            variant("pruned", 0.8500, 0.52),
        ],
        settings={},
    )
    assert comparison.verdicts() == [
        "revived: better than the baseline on val accuracy (0.9325 vs 0.9000), +3.2 points; dead units 10 → 3",
        "leaky: no better than the baseline on val accuracy (0.9000 vs 0.9000); dead units 10 → 3",
        "pruned: worse than the baseline on val accuracy (0.8500 vs 0.9000), -5.0 points; dead units 10 → 3",
    ]
    # By the loss: lower is better.
    assert comparison.verdicts("loss")[0] == (
        "revived: better than the baseline on val loss (0.3100 vs 0.4000), -0.09; dead units 10 → 3"
    )
    assert comparison.to_dict()["verdicts"] == comparison.verdicts()
    assert Comparison(comparison.variants[1:], settings={}).verdicts() == []  # no baseline: nothing to say

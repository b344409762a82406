"""`deadrelu fix`: the repair tournament — fair training, exact candidates, the verdict, Ctrl-C, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

import deadrelu
from deadrelu.errors import UsageError
from deadrelu.fixes.fix_rules import CANDIDATES, default_candidates, parse_candidates, verdict
from deadrelu.fixes.tournament import Candidate, FixInterrupted, fix

PLANTED = 6  # units of "h" given a bias of -50: dead on every input of the data


def _model(seed=0, regularized=False):
    import keras

    keras.utils.set_random_seed(seed)
    reg = keras.regularizers.L2(0.01) if regularized else None
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu", name="h", kernel_regularizer=reg),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    kernel, bias = model.get_layer("h").get_weights()
    bias[:PLANTED] = -50.0
    model.get_layer("h").set_weights([kernel, bias])
    return model


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(240, 6)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1).astype(int)


@pytest.fixture(scope="module")
def tournament(xy):
    """One tournament of every kind (and baseline twice), 1 epoch, shared by the API tests."""
    x, y = xy
    model = _model()
    weights = [w.copy() for w in model.get_weights()]
    result = fix(
        model,
        x,
        y,
        candidates="baseline,control=baseline,leaky,prelu,revive,lr,prune",
        validation_split=0.25,
        epochs=1,
        seed=3,
        verbose=0,
    )
    return model, weights, result


def test_baseline_twice_trains_bit_for_bit_the_same(tournament):
    _, _, result = tournament
    a, b = result.candidate("baseline"), result.candidate("control")
    assert a.kind == b.kind == "baseline" and a.name != b.name
    assert a.history == b.history and a.before == b.before and a.after == b.after
    assert a.dead_fraction_after == b.dead_fraction_after
    for wa, wb in zip(a.model.get_weights(), b.model.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_candidates_are_built_exactly_and_the_input_model_is_untouched(tournament, xy):
    import keras

    model, weights, result = tournament
    for w, kept in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(w, kept)
    base = result.candidate("baseline")
    # Each repair's own output check ran on the probe data (and passed: a failure would skip it).
    for name in ("leaky", "prelu", "revive", "prune"):
        assert result.candidate(name).check.startswith("outputs unchanged"), result.candidate(name).check
    assert base.check is None
    # The planted units are dead on every input: reviving or removing them leaves every output, so the
    # loss before training is the baseline's (pruning: up to float rounding of the smaller sums).
    assert result.candidate("revive").before["loss"] == base.before["loss"]
    assert result.candidate("prune").before["loss"] == pytest.approx(base.before["loss"], rel=1e-6, abs=1e-7)
    assert result.candidate("prune").params == base.params - PLANTED * (6 + 1 + 3)
    assert result.candidate("prune").units_after == 16 - PLANTED
    # Leaky and PReLU carry every trained weight; leaky's small slope barely moves the loss.
    leaky = result.candidate("leaky")
    assert leaky.dead_fraction_after is None  # no zero-slope ReLU left to scan
    assert abs(leaky.before["loss"] - base.before["loss"]) < 0.2
    assert any(isinstance(layer, keras.layers.PReLU) for layer in result.candidate("prelu").model.layers)
    # The learning rate candidate: the same model, a tenth of the rate.
    assert result.candidate("lr").learning_rate == pytest.approx(base.learning_rate * 0.1, rel=1e-6)
    assert result.candidate("lr").before == base.before
    # Revived units fire again after training; the baseline's stay dead.
    assert base.dead_after >= PLANTED and result.candidate("revive").dead_after < PLANTED
    assert result.dead_fraction_before == pytest.approx(PLANTED / 16)


def test_the_verdict_picks_the_lowest_data_loss_and_to_dict_has_the_schema_fields(tournament):
    _, _, result = tournament
    trained = [c for c in result.candidates if c.trained]
    best = min(trained, key=lambda c: c.after["data_loss"])
    if result.best != best.name:  # only a tie with baseline overrides the minimum
        assert result.candidate(result.best).after["data_loss"] == best.after["data_loss"]
    assert result.model is result.candidate(result.best).model
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["best"] == result.best and doc["metric"] == "data_loss"
    names = [c["name"] for c in doc["candidates"]]
    assert names == ["baseline", "control", "leaky", "prelu", "revive", "lr", "prune"]
    for entry, candidate in zip(doc["candidates"], result.candidates):
        assert entry["val_loss"] == candidate.after["loss"] and entry["val_accuracy"] == candidate.after["accuracy"]
        assert entry["before"]["val_loss"] == candidate.before["loss"]
        assert entry["seconds"] >= entry["fit_seconds"] > 0 and entry["params"] > 0
        # The "after" values are the last epoch's validation values of fit.
        assert entry["val_loss"] == entry["history"]["val_loss"][-1]
    assert "<table" in result._repr_html_() and result.verdict in repr(result)


def _c(name, value, kind=None, metric="data_loss"):
    return Candidate(name=name, kind=kind or name, after={metric: value})


@pytest.mark.parametrize(
    "candidates, higher, best, ties, says",
    [
        ([_c("baseline", 0.5), _c("leaky", 0.4)], False, "leaky", [], "best: leaky"),
        ([_c("baseline", 0.4), _c("leaky", 0.5)], False, "baseline", [], "no candidate beats baseline"),
        ([_c("baseline", 0.4), _c("leaky", 0.4)], False, "baseline", ["baseline", "leaky"], "leaky tie with it"),
        ([_c("leaky", 0.3), _c("prelu", 0.3), _c("baseline", 0.5)], False, "leaky", ["leaky", "prelu"], "tie"),
        ([_c("baseline", float("nan")), _c("revive", 0.9)], False, "revive", [], "best: revive"),
    ],
)
def test_best_rule_ties_and_nothing_beats_baseline(candidates, higher, best, ties, says):
    name, tied, text = verdict(candidates, "data_loss", higher)
    assert (name, tied) == (best, ties) and says in text


def test_accuracy_is_ranked_higher_better_and_says_the_points():
    done = [_c("baseline", 0.11, metric="accuracy"), _c("revive", 0.95, metric="accuracy")]
    name, _, text = verdict(done, "accuracy", True)
    assert name == "revive" and "+84.0 points" in text


def test_default_candidates_follow_the_causes():
    class Fake:
        def __init__(self, causes):
            self.summary = {"causes": causes} if causes is not None else {}

    assert default_candidates(Fake(None))[0] == list(CANDIDATES)
    assert default_candidates(Fake({}))[0] == ["baseline", "leaky", "prelu", "lr"]
    killed = default_candidates(Fake({"killed_in_training": 5}))[0]
    assert killed == ["baseline", "leaky", "prelu", "revive", "revive+lr", "lr", "prune"]
    assert default_candidates(Fake({"data_dependent": 2}))[0] == ["baseline", "leaky", "prelu", "prune"]
    assert "revive" in default_candidates(Fake({"born_dead": 2}))[0]


def test_parse_candidates_labels_and_refusals():
    assert parse_candidates("baseline, control=baseline") == [("baseline", "baseline"), ("control", "baseline")]
    with pytest.raises(UsageError, match="revive\\+lr"):
        parse_candidates("baseline,bogus")
    with pytest.raises(UsageError, match="twice"):
        parse_candidates(["leaky", "leaky"])


def test_data_loss_leaves_out_the_weight_penalty(xy):
    """With an L2 kernel regulariser Keras adds its penalty to the loss; data_loss is the
    cross-entropy of the predictions alone (numpy reference)."""
    x, y = xy
    model = _model(regularized=True)
    result = fix(model, x, y, candidates="baseline", validation_split=0.25, epochs=1, verbose=0)
    base = result.candidate("baseline")
    probs = base.model.predict(x[180:], verbose=0).astype(np.float64)
    reference = -np.mean(np.log(np.clip(probs[np.arange(60), y[180:]], 1e-7, 1)))
    kernel = base.model.get_layer("h").kernel.numpy().astype(np.float64)
    assert base.after["loss"] - base.after["data_loss"] == pytest.approx(0.01 * np.sum(kernel**2), rel=1e-4)
    assert base.after["data_loss"] == pytest.approx(reference, rel=1e-4)


def test_ctrl_c_on_the_second_candidate_keeps_the_first(xy):
    x, y = xy

    def stop(name, epoch, logs):
        if name == "leaky":
            raise KeyboardInterrupt

    with pytest.raises(FixInterrupted) as caught:
        fix(_model(), x, y, candidates="baseline,leaky", validation_split=0.25, epochs=1, on_epoch=stop, verbose=0)
    result = caught.value.result
    assert isinstance(caught.value, KeyboardInterrupt)
    assert [c.name for c in result.candidates] == ["baseline"] and result.interrupted and result.best is None


# -- the command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory, xy):
    x, y = xy
    folder = tmp_path_factory.mktemp("fix")
    _model().save(folder / "m.keras")
    np.savez(folder / "train.npz", x=x, y=y)
    np.save(folder / "x_only.npy", x)
    import keras

    bare = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="relu")])
    bare.save(folder / "bare.keras")  # never compiled: no loss
    return folder


def test_cli_writes_the_best_model_which_loads_and_rescans_as_the_table_says(files, tmp_path, run_cli):
    import keras

    out, summary, curves, page = tmp_path / "best.keras", tmp_path / "fix.json", tmp_path / "c.png", tmp_path / "p.html"
    argv = ["fix", files / "m.keras", "--data", files / "train.npz", "--validation-split", "0.25", "--epochs", "1"]
    argv += ["--try", "baseline,revive", "--metric", "loss", "-o", out, "--json", summary, "--curves", curves]
    code, stdout, stderr = run_cli([*argv, "--html", page, "--quiet"])
    assert code == 0, stderr
    doc = json.loads(summary.read_text())
    assert doc["schema"] == "deadrelu/fix@1" and doc["output"]["path"] == str(out)
    best = next(c for c in doc["candidates"] if c["name"] == doc["best"])
    assert doc["best"] in stdout and "which fix works" in stdout
    model = keras.models.load_model(out)
    x_val = np.load(files / "train.npz")["x"][180:]
    assert deadrelu.scan(model, x_val, verbose=0).dead_fraction == best["dead_fraction_after"]
    assert curves.stat().st_size > 1000 and "<table" in page.read_text()


def test_cli_ctrl_c_keeps_the_finished_rows_and_writes_no_model(files, tmp_path, run_cli, monkeypatch):
    import deadrelu.fixes.retrain as retrain

    real, calls = retrain.fit_variant, []

    def interrupted_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(retrain, "fit_variant", interrupted_on_the_second)
    out, summary = tmp_path / "best.keras", tmp_path / "fix.json"
    argv = ["fix", files / "m.keras", "--data", files / "train.npz", "--epochs", "1", "--try", "baseline,lr"]
    code, stdout, stderr = run_cli([*argv, "-o", out, "--json", summary])
    assert code == 130 and "interrupted" in stderr
    doc = json.loads(summary.read_text())
    assert doc["interrupted"] is True and doc["best"] is None
    assert [c["name"] for c in doc["candidates"]] == ["baseline"]
    assert not out.exists() and "baseline" in stdout


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--data", "{x_only.npy}"], "needs labels"),
        (["--data", "{train.npz}", "--try", "baseline,bogus"], "baseline, leaky, prelu, revive, revive+lr, lr, prune"),
        (["--data", "{train.npz}", "-o", "{m.keras}"], "input"),
        ([], "--data"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(files, run_cli, extra, says):
    argv = ["fix", files / "m.keras", *[files / a[1:-1] if a.startswith("{") else a for a in extra]]
    code, _, stderr = run_cli(argv)
    assert code == 2 and says in stderr and len(stderr.strip().splitlines()) == 1


def test_cli_model_without_loss_asks_for_loss(files, run_cli):
    code, _, stderr = run_cli(["fix", files / "bare.keras", "--data", files / "train.npz"])
    assert code == 2 and "--loss" in stderr


def test_steps_budget_trains_exactly_that_many_batches(xy):
    x, y = xy
    result = fix(_model(), x, y, candidates="baseline", validation_split=0.25, steps=3, batch_size=16, verbose=0)
    base = result.candidate("baseline")
    assert result.settings["steps"] == 3 and result.settings["epochs"] is None
    assert base.model.optimizer.iterations.numpy() == 3 and len(base.history["loss"]) == 1
    with pytest.raises(UsageError, match="more than one pass"):
        fix(_model(), x, y, candidates="baseline", validation_split=0.25, steps=100, batch_size=16, verbose=0)

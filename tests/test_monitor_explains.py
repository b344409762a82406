"""The monitor explains itself (issue 29): revived units that die again are counted in the timeline,
History and TensorBoard and said once; a computed end-of-fit verdict; "recovered" vs "revived"; epochs
counted from 1 (TensorBoard steps from 0, as Keras's); short progress lines; the plot's threshold line
and fitted y axis."""

from __future__ import annotations

import math
import re

import keras
import numpy as np
import pytest

import deadrelu
from deadrelu.compare import judge
from deadrelu.timeline import Check, count, summarize_fit

L = keras.layers
SITES = ("a", "b")


def _model(learning_rate: float):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((20,)),
            L.Dense(32, activation="relu", name="a"),
            L.Dense(32, activation="relu", name="b"),
            L.Dense(2, activation="softmax", name="out"),
        ],
        name="relapse",
    )
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="sparse_categorical_crossentropy")
    return model


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 20)).astype("float32")
    return x, (x[:, 0] + x[:, 1] > 0).astype(int)


def _dead_now(model, x) -> dict[str, set[int]]:
    """Dead units per site from materialized activations (numpy): never positive on `x`."""
    outputs = [model.get_layer(name).output for name in SITES]
    acts = [np.asarray(a) for a in keras.Model(model.inputs, outputs)([x])]
    return {name: set(np.flatnonzero((a > 0).sum(0) == 0).tolist()) for name, a in zip(SITES, acts)}


def read_run(folder) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Every tensor summary of the event files in `folder`: tag → [(step, value)], in step order."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    return {
        tag: [(e.step, tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
        for tag in events.Tags()["tensors"]
    }


def test_revived_units_that_die_again_are_counted_said_once_and_judged(xy, tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorboard")
    import deadrelu.views.tensorboard as tensorboard

    # The unit map image (drawn per check, ~1 s each; test_tensorboard.py reads it back) is not tested here.
    monkeypatch.setattr(tensorboard, "unit_map_rgba", lambda report: np.zeros((2, 2, 4), np.uint8))
    x, y = xy
    # SGD at 5 (500× its default) kills about half the units in the first epoch, and kills again
    # the units revived at each check (the example: on_dead="revive", max_dead_fraction=0.2).
    model = _model(5.0)
    probe = x[:128]
    witness = []  # numpy's dead units at each epoch end, before the monitor checks (and revives)
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: witness.append(_dead_now(model, probe)))
    monitor = deadrelu.DeadReluMonitor(
        probe, on_dead="revive", max_dead_fraction=0.2, seed=0, verbose=1, tensorboard=tmp_path / "tb"
    )
    history = model.fit(
        x, y, epochs=3, batch_size=32, verbose=0, validation_data=(x[:128], y[:128]), callbacks=[record, monitor]
    )
    timeline = monitor.timeline
    assert [c.epoch for c in timeline] == [1, 2, 3]  # counted from 1
    assert [c.action for c in timeline] == ["revive"] * 3 and monitor.revivals == 3
    for check, dead in zip(timeline, witness):
        assert {p: set(u) for p, u in check.dead.items()} == dead
        # Every dead unit of a Dense site can be revived: "revived" is exactly what was dead.
        assert check.revived == {p: sorted(u) for p, u in dead.items() if u}

    # Recomputed from the checks' dead sets: of the units revived at a check, which are alive at the next.
    for before, after, dead in zip(timeline, timeline[1:], witness[1:]):
        alive = {p: sorted(set(u) - dead[p]) for p, u in before.revived.items()}
        assert after.revived_alive == alive
        assert after.revived_alive_fraction == pytest.approx(count(alive) / count(before.revived))
        # Recovered units came back by themselves: dead before, alive now, not revived by deadrelu.
        assert after.recovered == {
            p: sorted(set(before.dead[p]) - dead[p] - set(before.revived.get(p, []))) for p in SITES
        }
    assert timeline[0].revived_alive == {} and timeline[0].revived_alive_fraction is None
    shares = [c.revived_alive_fraction for c in timeline[1:]]
    assert max(shares) < 0.5  # most revived units die again: the case the monitor must say

    # History carries the numbers, one per epoch (NaN where the previous check revived nothing).
    logged = history.history
    assert logged["deadrelu/revived"] == [count(c.revived) for c in timeline]
    assert logged["deadrelu/revived_alive"] == [count(c.revived_alive) for c in timeline]
    assert math.isnan(logged["deadrelu/revived_alive_fraction"][0])
    assert logged["deadrelu/revived_alive_fraction"][1:] == pytest.approx(shares)
    assert "deadrelu/a/dead_fraction" not in logged and "deadrelu/dying_fraction" not in logged  # short logs

    # Said once, with the likely reason (this model's learning rate against its default) and what to try.
    out = capsys.readouterr().out.splitlines()
    relapse = [line for line in out if "dead again" in line]
    assert len(relapse) == 1
    first = timeline[1]
    again = count(timeline[0].revived) - count(first.revived_alive)
    assert relapse[0].startswith(
        f"deadrelu: epoch 2: {again} of the {count(timeline[0].revived)} units revived at epoch 1 are dead again"
    )
    assert "SGD at 5, 500× its default 0.01" in relapse[0]
    assert "lower learning rate" in relapse[0] and "patch --to leaky" in relapse[0] and "deadrelu fix" in relapse[0]

    # The end-of-fit verdict, computed from the checks and History's val_loss.
    summary = monitor.summary
    assert summary.share_first == timeline[0].dead_fraction and summary.share_last == timeline[-1].dead_fraction
    assert summary.verdict == judge(timeline[0].dead_fraction, timeline[-1].dead_fraction)
    assert summary.units_revived == sum(count(c.revived) for c in timeline)
    assert summary.revived_followed == sum(count(c.revived) for c in timeline[:-1])
    assert summary.revived_alive == sum(count(c.revived_alive) for c in timeline)
    val = history.history["val_loss"]
    assert (summary.val_loss_first, summary.val_loss_last) == (val[0], val[-1])
    assert summary.val_loss_verdict == ("better" if val[-1] < val[0] else "worse")
    assert summary.warning == relapse[0].removeprefix("deadrelu: ")
    assert out[-1] == f"deadrelu: {summary.line}" and out[-1].count("fit summary") == 1
    points = (summary.share_last - summary.share_first) * 100
    assert f"dead {summary.share_first:.1%} → {summary.share_last:.1%} ({summary.verdict}" in summary.line
    assert summary.verdict == "no better" or f"{points:+.1f}".replace("-", "−") in summary.line
    assert f"{summary.revived_alive} of the {summary.revived_followed} checked again" in summary.line
    assert summary.to_dict()["line"] == summary.line

    # TensorBoard: Keras's steps (epoch − 1), the revival scalars, and a description on every tag.
    run = read_run(tmp_path / "tb" / "deadrelu")
    assert [step for step, _ in run["deadrelu/revived"]] == [0, 1, 2]
    assert [int(v) for _, v in run["deadrelu/revived"]] == [count(c.revived) for c in timeline]
    assert [step for step, _ in run["deadrelu/revived_alive_fraction"]] == [1, 2]
    assert [float(v) for _, v in run["deadrelu/revived_alive_fraction"]] == pytest.approx(shares)
    assert [int(v) for _, v in run["deadrelu/revived_alive"]] == [count(c.revived_alive) for c in timeline[1:]]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb" / "deadrelu"))
    events.Reload()
    for tag in events.Tags()["tensors"]:
        assert events.SummaryMetadata(tag).summary_description, tag
    assert "dead units alone" in events.SummaryMetadata("deadrelu/a/active_rate").summary_description

    # The timeline table: the revived units alive at the next check, and how many each action revived.
    from deadrelu.views.notebook import timeline_table

    table = timeline_table(timeline)
    titles = [column.title for column in table.columns]
    assert titles == ["epoch", "step", "dead %", "dying %", "newly dead", "recovered", "revived alive", "action"]
    cells = [[cell.text if hasattr(cell, "text") else cell for cell in row.cells] for row in table.rows]
    assert [row[0] for row in cells] == ["1", "2", "3"]
    for row, before, after in zip(cells[1:], timeline, timeline[1:]):
        n, alive = count(before.revived), count(after.revived_alive)
        assert row[6] == f"{alive}/{n} ({alive / n:.0%})"
    assert [row[7] for row in cells] == [f"revive {count(c.revived)}" for c in timeline]


def test_fit_summary_without_action_and_short_progress_lines(xy, capsys):
    x, y = xy
    # A gentle fit: no action, two checks → a verdict; units come back by themselves.
    model = _model(0.05)
    monitor = deadrelu.DeadReluMonitor(x[:128], on_dead=None, verbose=1)
    model.fit(x, y, epochs=2, batch_size=64, verbose=2, callbacks=[monitor])
    text = capsys.readouterr().out
    first, last = monitor.timeline
    assert monitor.summary.verdict == judge(first.dead_fraction, last.dead_fraction)
    assert monitor.summary.revivals == 0 and "revived" not in monitor.summary.line
    assert monitor.summary.val_loss_verdict is None and "val loss" not in monitor.summary.line
    assert text.count("fit summary") == 1
    # Keras's progress line: the model's dead fraction only by default; the details on request.
    short = max(len(line) for line in text.splitlines() if "deadrelu/dead_fraction" in line)
    monitor = deadrelu.DeadReluMonitor(x[:128], on_dead=None, verbose=0, log_details=True)
    model.fit(x, y, epochs=1, batch_size=64, verbose=2, callbacks=[monitor])
    long = max(len(line) for line in capsys.readouterr().out.splitlines() if "deadrelu/dead_fraction" in line)
    assert long > short + 100  # dying, non-finite and two per-site keys
    assert monitor.summary is None  # one check, no action: nothing to judge

    with pytest.raises(deadrelu.UsageError, match="log_details"):
        deadrelu.DeadReluMonitor(x, log_details="yes")


def _check(epoch: int, dead: dict, revived: dict | None = None, previous: Check | None = None) -> Check:
    """A check from dead sets alone, as `make_check` builds it."""
    from deadrelu.timeline import make_check

    class Site:
        def __init__(self, path, units):
            self.path, self.dead, self.units = path, units, 8
            self.non_finite, self.dormant = [], None

    sites = [Site(path, units) for path, units in dead.items()]
    total = sum(len(units) for units in dead.values())
    report = type("R", (), {})()
    report.sites = sites
    report.summary = {"dead_fraction": total / (8 * len(sites)), "dying": 0, "units": 8 * len(sites)}
    report.summary |= {"non_finite": 0, "diverged": False}
    check = make_check(report, previous, epoch=epoch, step=epoch * 10)
    if revived:
        check.action, check.revived = "revive", revived
    return check


def test_make_check_and_summarize_fit_by_hand():
    first = _check(1, {"s": [0, 1, 2, 3]}, revived={"s": [0, 1, 2, 3]})
    # Units 0, 1 died again; 2, 3 stayed alive; 5 died; nothing recovered (all four were revived).
    second = _check(2, {"s": [0, 1, 5]}, previous=first)
    assert second.revived_alive == {"s": [2, 3]} and second.revived_alive_fraction == 0.5
    assert second.recovered == {"s": []} and second.newly_dead == {"s": [5]}
    # Without a revival, units that come back are recovered.
    third = _check(3, {"s": [5]}, previous=second)
    assert third.recovered == {"s": [0, 1]} and third.revived_alive == {} and third.revived_alive_fraction is None
    assert re.fullmatch(r"<Check epoch 3, step 30: 12\.5% dead, \+0 dead, 2 recovered>", repr(third))
    assert "2 revived still alive" in repr(second)

    summary = summarize_fit([first, second, third], val_losses=[1.0, 0.9, 0.95])
    assert (summary.share_first, summary.share_last, summary.verdict) == (0.5, 0.125, "better")
    assert (summary.revivals, summary.units_revived, summary.revived_followed, summary.revived_alive) == (1, 4, 4, 2)
    assert summary.val_loss_verdict == "better" and summary.line.endswith("val loss 1 → 0.95 (better, −0.05)")
    assert "dead 50.0% → 12.5% (better, −37.5 points) over 3 checks (epochs 1–3)" in summary.line
    assert "4 units revived at 1 check, 2 of the 4 checked again alive at the next check (50%)" in summary.line
    assert summarize_fit([first, _check(2, {"s": [0, 1, 2, 3]}, previous=first)]).verdict == "no better"
    assert summarize_fit([third, _check(4, {"s": [5, 6]}, previous=third)]).verdict == "worse"
    assert judge(1.0, float("nan")) == "not comparable" and judge(0.9, 0.8, lower_is_better=False) == "worse"


def test_monitor_plot_has_the_threshold_line_and_a_fitted_axis(xy, tmp_path):
    from deadrelu.views.plots.curves import timeline_figure

    checks = [_check(1, {"s": [0]}), None]
    checks[1] = _check(2, {"s": [0, 1]}, previous=checks[0])  # 12.5% → 25% of 8 units
    fig = timeline_figure(checks, threshold=0.2, threshold_label="max_dead_fraction")
    ax = fig.axes[0]
    bottom, top = ax.get_ylim()
    assert top == pytest.approx(0.25 * 1.15) and bottom == pytest.approx(-0.02 * top)  # fitted, not 0–1
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["max_dead_fraction (20%)"].get_ydata()) == [0.2, 0.2]
    assert list(lines["whole model"].get_xdata()) == [1, 2]  # epochs counted from 1
    # The monitor draws its own threshold: max_dead_fraction when it acts.
    x, y = xy
    model = _model(0.05)
    monitor = deadrelu.DeadReluMonitor(x[:64], on_dead="stop", max_dead_fraction=0.3, verbose=0)
    model.fit(x, y, epochs=2, batch_size=128, verbose=0, callbacks=[monitor])
    monitor.plot(tmp_path / "timeline.png")
    assert (tmp_path / "timeline.png").stat().st_size > 10_000

"""TensorBoard summaries read back with tensorboard's `EventAccumulator`: the monitor (TensorBoard
callback listed before or after it, or an explicit folder) and `deadrelu scan --tensorboard`
write histograms, the unit map and the dead fractions, with the monitor's steps and values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import deadrelu

pytest.importorskip("tensorboard")

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
KILLED = list(range(6))  # units of "hidden" planted dead at the start of epoch 1


def _model():
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(8, activation="relu", name="second"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ],
        name="watched",
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    return model


def _killer(model):
    """A callback that makes units 0..5 of 'hidden' dead at the start of epoch 1 (bias -1e4)."""
    import keras

    def kill(epoch, logs=None):
        if epoch == 1:
            layer = model.get_layer("hidden")
            kernel, bias = layer.get_weights()
            bias[KILLED] = -1e4
            layer.set_weights([kernel, bias])

    return keras.callbacks.LambdaCallback(on_epoch_begin=kill)


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 10)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(int)


def read_run(folder: Path) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Every tensor summary of the event files in `folder`: tag → [(step, value)], in step order."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    return {
        tag: [(e.step, tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
        for tag in events.Tags()["tensors"]
    }


def _assert_run_matches(run: dict, monitor, steps: list[int]) -> None:
    """The run holds, at each check's step, the monitor's numbers."""
    timeline, report = monitor.timeline, monitor.last_report
    scalar = lambda tag: [float(v) for _, v in run[tag]]  # noqa: E731
    assert [step for step, _ in run["deadrelu/dead_fraction"]] == steps
    assert scalar("deadrelu/dead_fraction") == pytest.approx([c.dead_fraction for c in timeline])
    assert scalar("deadrelu/dying_fraction") == pytest.approx([c.dying_fraction for c in timeline])
    for path in ("hidden", "second"):
        assert scalar(f"deadrelu/{path}/dead_fraction") == pytest.approx([c.site_dead_fraction(path) for c in timeline])
        histograms = run[f"deadrelu/{path}/active_rate"]
        assert [step for step, _ in histograms] == steps
        last = histograms[-1][1]  # buckets: (left edge, right edge, count)
        site = report.site(path)
        assert last[:, 2].sum() == site.units
        # The dead units alone in [0, 0]; (0, dying threshold) the dying ones; ten equal buckets to 1.
        rates, d = np.asarray(site.active_rate), monitor.thresholds.dying
        assert last[0].tolist() == [0.0, 0.0, len(site.dead)] == [0.0, 0.0, (rates == 0).sum()]
        assert last[1].tolist() == [0.0, d, ((rates > 0) & (rates < d)).sum()]
        np.testing.assert_allclose(last[2:, :2], np.stack([np.linspace(d, 1, 11)[:-1], np.linspace(d, 1, 11)[1:]], 1))
        assert last[2:, 2].tolist() == np.histogram(rates[rates >= d], bins=np.linspace(d, 1, 11))[0].tolist()
    # Planted dead units: at the last check their active rate is 0, in the dead bucket.
    assert set(KILLED) <= set(timeline[-1].dead["hidden"])
    assert run["deadrelu/hidden/active_rate"][-1][1][0, 2] >= len(KILLED)
    images = run["deadrelu/unit_map"]
    assert [step for step, _ in images] == steps
    width, height, png = images[-1][1]
    import tensorflow as tf

    assert tf.io.decode_png(png, channels=4).shape == (int(height), int(width), 4)


@pytest.mark.parametrize("order", ["tensorboard first", "monitor first"])
def test_monitor_finds_the_tensorboard_callback_in_any_order(order, xy, tmp_path):
    import keras

    x, y = xy
    model = _model()
    monitor = deadrelu.DeadReluMonitor(x[:64], on_dead=None, verbose=0)
    board = keras.callbacks.TensorBoard(str(tmp_path / "logs"), write_graph=False)
    callbacks = [board, monitor] if order == "tensorboard first" else [monitor, board]
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[_killer(model), *callbacks])

    run = read_run(tmp_path / "logs" / "deadrelu")
    _assert_run_matches(run, monitor, steps=[0, 1, 2])
    # The logs carry the keys either way (History); Keras's own run has them only when the
    # monitor came first — the deadrelu run has them in both orders.
    assert history.history["deadrelu/dead_fraction"] == pytest.approx([c.dead_fraction for c in monitor.timeline])
    train = read_run(tmp_path / "logs" / "train")
    assert ("epoch_deadrelu/dead_fraction" in train) == (order == "monitor first")


def test_monitor_with_a_folder_and_batch_checks(xy, tmp_path):
    x, y = xy
    model = _model()
    monitor = deadrelu.DeadReluMonitor(x[:64], check_freq=2, on_dead=None, verbose=0, tensorboard=tmp_path / "tb")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[_killer(model), monitor])

    # Four batches per epoch, a check every two: steps are the optimizer's iterations.
    steps = [c.step for c in monitor.timeline]
    assert steps == [2, 4, 6, 8]
    _assert_run_matches(read_run(tmp_path / "tb" / "deadrelu"), monitor, steps=steps)


def test_monitor_tensorboard_false_and_checked_argument(xy, tmp_path):
    import keras

    x, y = xy
    model = _model()
    monitor = deadrelu.DeadReluMonitor(x[:64], on_dead=None, verbose=0, tensorboard=False)
    model.fit(
        x, y, epochs=1, verbose=0, callbacks=[keras.callbacks.TensorBoard(str(tmp_path), write_graph=False), monitor]
    )
    assert len(monitor.timeline) == 1 and not (tmp_path / "deadrelu").exists()
    with pytest.raises(deadrelu.UsageError, match="`tensorboard` must be a log folder"):
        deadrelu.DeadReluMonitor(x, tensorboard=3)


def test_scan_command_writes_the_same_summaries(run_cli, tmp_path):
    code, _, err = run_cli(
        [
            "scan",
            SAMPLES / "dying_mlp.keras",
            "--data",
            SAMPLES / "probe.npz",
            "--json",
            tmp_path / "scan.json",
            "--tensorboard",
            tmp_path / "logs",
            "--tensorboard-step",
            "7",
        ]
    )
    assert code == 0 and "wrote TensorBoard summaries into" in err
    report = deadrelu.Report.from_json(tmp_path / "scan.json")
    run = read_run(tmp_path / "logs" / "deadrelu")
    assert run["deadrelu/dead_fraction"][0][0] == 7
    assert float(run["deadrelu/dead_fraction"][0][1]) == pytest.approx(report.dead_fraction)
    for site in report.sites:
        assert float(run[f"deadrelu/{site.path}/dead_fraction"][0][1]) == pytest.approx(site.dead_fraction)
        assert run[f"deadrelu/{site.path}/active_rate"][0][1][:, 2].sum() == site.units
    assert [step for step, _ in run["deadrelu/unit_map"]] == [7]

    # The log folder is an output: never an input, never a file.
    code, _, err = run_cli(["scan", SAMPLES / "dying_mlp.keras", "--tensorboard", SAMPLES / "dying_mlp.keras"])
    assert code == 2 and "--tensorboard" in err and "is the input model" in err
    code, _, err = run_cli(["scan", SAMPLES / "dying_mlp.keras", "--tensorboard", tmp_path / "scan.json"])
    assert code == 2 and "--tensorboard" in err and "not a folder" in err

"""DeadReluMonitor during a real `fit`: logs reach History, CSVLogger and TensorBoard; the timeline
records deaths planted mid-training; stop ends training; the probe is traced once; one monitor serves
several fits; its arguments are checked; `rescale` scales the probe data."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import deadrelu


def _model(seed=11):
    import keras

    keras.utils.set_random_seed(seed)
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


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 10)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(int) + (x[:, 1] > 1).astype(int)


KILL_AT_EPOCH = 1  # 0-based epoch at whose start units 0..5 of "hidden" are killed
KILLED = list(range(6))


def _killer():
    """A callback that plants 6 dead units in 'hidden' at the start of epoch 1 (bias -1e4)."""
    import keras

    def kill(epoch, logs=None):
        if epoch == KILL_AT_EPOCH:
            layer = kill.model.get_layer("hidden")
            kernel, bias = layer.get_weights()
            bias[KILLED] = -1e4
            layer.set_weights([kernel, bias])

    callback = keras.callbacks.LambdaCallback(on_epoch_begin=kill)
    return callback, kill


def _reference_dead(model, x):
    """Dead units per site from materialized activations (numpy)."""
    import keras

    outputs = [model.get_layer(name).output for name in ("hidden", "second")]
    acts = keras.Model(model.inputs, outputs).predict(x, verbose=0)
    return {name: np.flatnonzero((a != 0).sum(0) == 0).tolist() for name, a in zip(("hidden", "second"), acts)}


def test_logs_reach_history_csv_and_tensorboard(xy, tmp_path):
    import keras
    import tensorflow as tf

    x, y = xy
    model = _model()
    killer, kill = _killer()
    kill.model = model
    monitor = deadrelu.DeadReluMonitor(x[:100], on_dead="warn", verbose=0, log_details=True)
    logdir = tmp_path / "tb"
    csv_path = tmp_path / "log.csv"
    history = model.fit(
        x,
        y,
        epochs=3,
        batch_size=32,
        verbose=0,
        callbacks=[killer, monitor, keras.callbacks.CSVLogger(str(csv_path)), keras.callbacks.TensorBoard(str(logdir))],
    )

    # History: one value per epoch, equal to the timeline and to a numpy reference at the end.
    dead_fraction = history.history["deadrelu/dead_fraction"]
    assert len(dead_fraction) == 3
    assert dead_fraction == pytest.approx([c.dead_fraction for c in monitor.timeline])
    reference = _reference_dead(model, x[:100])
    assert monitor.timeline[-1].dead == reference
    assert dead_fraction[-1] == pytest.approx(sum(map(len, reference.values())) / 24)
    assert set(KILLED) <= set(monitor.timeline[1].dead["hidden"])
    # Every site has its own series from the first epoch on (a small model), flagged or not.
    hidden = history.history["deadrelu/hidden/dead_fraction"]
    assert hidden == pytest.approx([len(c.dead["hidden"]) / 16 for c in monitor.timeline])
    assert hidden[0] < 0.1 <= hidden[1]  # healthy in epoch 0, flagged once units are killed
    assert len(history.history["deadrelu/second/dead_fraction"]) == 3

    # CSVLogger: the same numbers in the file, the per-site column included although "hidden" was
    # healthy when CSVLogger fixed its columns.
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["deadrelu/dead_fraction"]) for r in rows] == pytest.approx(dead_fraction)
    assert [float(r["deadrelu/hidden/dead_fraction"]) for r in rows] == pytest.approx(hidden)

    # TensorBoard: read the event files back.
    scalars = {}
    for event_file in (logdir / "train").glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(event_file)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if not value.tag.startswith("epoch_"):
                    continue  # the model graph and other non-scalar summaries
                scalars.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    assert scalars["epoch_deadrelu/dead_fraction"] == pytest.approx(dead_fraction, rel=1e-6)

    # The probe was traced once and reused for every check.
    assert monitor._probe._step.traces == 1


def test_timeline_newly_dead_recovered_and_persistence(xy):
    x, y = xy
    model = _model()
    killer, kill = _killer()
    kill.model = model
    monitor = deadrelu.DeadReluMonitor(x[:100], on_dead=None, verbose=0)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[killer, monitor])
    first, second, third = monitor.timeline
    assert first.persistence is None and first.newly_dead == {}
    before = set(first.dead["hidden"])
    assert set(second.newly_dead["hidden"]) == set(second.dead["hidden"]) - before
    assert set(KILLED) - before <= set(second.newly_dead["hidden"])
    assert set(second.recovered["hidden"]) == before - set(second.dead["hidden"])
    assert second.revived == {} and second.revived_alive == {} and second.revived_alive_fraction is None
    dead_then = sum(len(v) for v in second.dead.values())
    still = sum(len(set(second.dead[p]) & set(third.dead[p])) for p in second.dead)
    assert third.persistence == pytest.approx(still / dead_then)
    assert third.persistence == 1.0  # a bias of -1e4 does not recover under SGD in one epoch


def test_warn_prints_one_line_per_newly_flagged_site(xy, capsys):
    x, y = xy
    model = _model()
    killer, kill = _killer()
    kill.model = model
    model.fit(
        x, y, epochs=3, batch_size=32, verbose=0, callbacks=[killer, deadrelu.DeadReluMonitor(x[:100], on_dead="warn")]
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("deadrelu:")]
    assert sum("hidden flagged" in line for line in lines) == 1


def test_stop_ends_training_like_early_stopping(xy):
    x, y = xy
    model = _model()
    killer, kill = _killer()
    kill.model = model
    monitor = deadrelu.DeadReluMonitor(x[:100], on_dead="stop", max_dead_fraction=0.2, patience=1, verbose=0)
    history = model.fit(x, y, epochs=10, batch_size=32, verbose=0, callbacks=[killer, monitor])
    # Over the limit from epoch 1 (6+ of 24 units dead), tolerated once (patience 1), stopped after epoch 2.
    assert len(history.history["loss"]) == 3
    assert monitor.timeline[-1].action == "stop"


def test_check_freq_batches_and_plot(xy, tmp_path):
    from PIL import Image

    x, y = xy
    model = _model()
    monitor = deadrelu.DeadReluMonitor(x[:64], check_freq=4, on_dead=None, verbose=0)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[monitor])
    assert [c.step for c in monitor.timeline] == [4, 8, 12, 16]
    monitor.plot(tmp_path / "timeline.png")
    with Image.open(tmp_path / "timeline.png") as image:
        assert image.format == "PNG" and len(set(image.convert("RGB").getdata())) > 10


def test_revive_in_training_keeps_outputs_revives_units_and_resets_moments(xy):
    import keras

    x, y = xy
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    killer, kill = _killer()
    kill.model = model
    watcher = deadrelu.DeadReluMonitor(x[:100], on_dead=None, verbose=0)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[killer, watcher])
    assert set(KILLED) <= set(watcher.timeline[-1].dead["hidden"])

    # Act now, as the monitor would at an epoch end: outputs unchanged at that moment.
    # The probe data stored ×4, scaled back by `rescale` (for the check and for the revival alike).
    monitor = deadrelu.DeadReluMonitor(
        x[:100] * 4, rescale=0.25, on_dead="revive", max_dead_fraction=0.05, seed=0, verbose=0
    )
    monitor.set_model(model)
    monitor.on_train_begin()
    before = model.predict(x, verbose=0)
    momentum = model.optimizer._momentums[model.optimizer._get_variable_index(model.get_layer("hidden").kernel)]
    assert np.abs(momentum.numpy()).sum() > 0
    check = monitor.check()
    assert check.action == "revive" and monitor.revivals == 1
    np.testing.assert_allclose(model.predict(x, verbose=0), before, atol=1e-6)
    # The revived units fire again on the probe data (numpy reference on materialized activations).
    assert not set(KILLED) & set(_reference_dead(model, x[:100])["hidden"])
    # Adam's moments of the re-initialised kernel columns were reset.
    kernel_moments = momentum.numpy()
    assert np.all(kernel_moments[:, KILLED] == 0)


def _flag_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("deadrelu:") and "flagged" in line]


def test_one_monitor_serves_two_fits(xy, capsys):
    x, y = xy
    model = _model()
    killer, kill = _killer()
    kill.model = model
    monitor = deadrelu.DeadReluMonitor(x[:100], on_dead="warn", verbose=1)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[killer, monitor])
    assert [c.epoch for c in monitor.timeline] == [1, 2, 3]  # counted from 1
    assert sum("hidden flagged" in line for line in _flag_lines(capsys)) == 1

    # The killed units stay dead: the second fit sees "hidden" flagged from its first check.
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[monitor])
    assert [c.epoch for c in monitor.timeline] == [1, 2]
    assert monitor.timeline[0].persistence is None and monitor.timeline[0].newly_dead == {}
    assert history.history["deadrelu/dead_fraction"] == pytest.approx([c.dead_fraction for c in monitor.timeline])
    assert monitor.last_report is not None and monitor.last_report.dead_fraction == monitor.timeline[-1].dead_fraction
    lines = _flag_lines(capsys)
    assert sum("hidden flagged" in line for line in lines) == 1  # warned again, once
    assert lines[0].startswith("deadrelu: epoch 1: hidden flagged")
    # The probe is per model, not per fit: still traced once.
    assert monitor._probe._step.traces == 1


def test_a_new_monitor_and_a_scan_reuse_the_models_traced_probe(xy):
    """The probe is the model's (`probe_for`): a second monitor, and a scan of the same model and
    data shape, run the step the first monitor traced — a new monitor does not trace (on JAX,
    compile) again in its first check — and the numbers stay each run's own."""
    x, y = xy
    model = _model()
    first = deadrelu.DeadReluMonitor(x[:100], verbose=0)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[first])
    second = deadrelu.DeadReluMonitor(x[:100], verbose=0)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[second])
    assert second._probe is first._probe and second._probe._step.traces == 1
    report = deadrelu.scan(model, x[:100])
    assert first._probe._step.traces == 1
    assert report.dead_fraction == pytest.approx(second.timeline[-1].dead_fraction)
    assert [c.epoch for c in first.timeline] == [1] and [c.epoch for c in second.timeline] == [1, 2]


def test_stop_and_patience_start_afresh_each_fit(xy):
    x, y = xy
    model = _model()
    killer, kill = _killer()
    kill.model = model
    monitor = deadrelu.DeadReluMonitor(x[:100], on_dead="stop", max_dead_fraction=0.2, patience=1, verbose=0)
    history = model.fit(x, y, epochs=10, batch_size=32, verbose=0, callbacks=[killer, monitor])
    assert len(history.history["loss"]) == 3 and monitor.timeline[-1].action == "stop"

    # One epoch over the limit (tolerated: patience 1), then the fit ends on its own.
    history = model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[monitor])
    assert len(history.history["loss"]) == 1 and monitor.timeline[-1].action is None

    # A new fit counts patience from zero again (a carried-over strike would stop it after one epoch),
    # and stop works again.
    history = model.fit(x, y, epochs=10, batch_size=32, verbose=0, callbacks=[monitor])
    assert len(history.history["loss"]) == 2
    assert [c.action for c in monitor.timeline] == [None, "stop"]


def test_check_freq_counts_batches_per_fit_and_with_steps_per_execution(xy):
    import keras

    x, y = xy  # 8 batches of 32 per epoch
    model = _model()
    monitor = deadrelu.DeadReluMonitor(x[:64], check_freq=3, on_dead=None, verbose=0)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[monitor])
    assert [c.step for c in monitor.timeline] == [3, 6]
    # The count restarts with the fit (the 2 batches left over do not carry); `step` is the optimizer's.
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[monitor])
    assert [c.step for c in monitor.timeline] == [11, 14]

    # With steps_per_execution=2 Keras calls the batch hook every other batch: the batches still count.
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy", steps_per_execution=2)
    monitor = deadrelu.DeadReluMonitor(x[:64], check_freq=4, on_dead=None, verbose=0)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[monitor])
    assert [c.step for c in monitor.timeline] == [4, 8, 12, 16]


def test_batch_hook_only_when_checking_by_batches(xy):
    import keras

    x, _ = xy
    default = keras.callbacks.Callback.on_train_batch_end
    by_epoch = deadrelu.DeadReluMonitor(x[:64])
    assert by_epoch.check_freq == "epoch" and by_epoch.on_train_batch_end.__func__ is default
    by_batches = deadrelu.DeadReluMonitor(x[:64], check_freq=10)
    assert by_batches.on_train_batch_end.__func__ is not default
    by_batches.check_freq = "epoch"  # the hook follows the attribute
    assert by_batches.on_train_batch_end.__func__ is default


@pytest.mark.parametrize("value", [0, -3, "batch", "epochs", True, 2.5, None])
def test_check_freq_is_validated(xy, value):
    with pytest.raises(
        deadrelu.UsageError, match=r'`check_freq` must be "epoch" or a positive int.*`check_freq="epoch"`'
    ):
        deadrelu.DeadReluMonitor(xy[0][:64], check_freq=value)


def test_verbose_is_an_int_and_accepts_bools(xy):
    x, _ = xy
    assert [deadrelu.DeadReluMonitor(x, verbose=v).verbose for v in (True, False, 1, 0)] == [1, 0, 1, 0]
    assert deadrelu.DeadReluMonitor(x).verbose == 1
    with pytest.raises(deadrelu.UsageError, match="`verbose` must be"):
        deadrelu.DeadReluMonitor(x, verbose="loud")


def test_rescale_scales_the_probe_data_as_scan_does(xy):
    x, y = xy
    model = _model()
    killer, kill = _killer()
    kill.model = model
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[killer])
    plain = deadrelu.DeadReluMonitor(x[:100], on_dead=None, verbose=0).check(model=model)
    scaled = deadrelu.DeadReluMonitor(x[:100] * 255, rescale=1 / 255, on_dead=None, verbose=0)
    assert scaled.check(model=model).dead == plain.dead == _reference_dead(model, x[:100])
    expected = deadrelu.scan(model, x[:100]).site("second").mean_abs
    np.testing.assert_allclose(scaled.last_report.site("second").mean_abs, expected, rtol=1e-5)
    # Unscaled, the same data measures other activations: the factor was applied.
    unscaled = deadrelu.DeadReluMonitor(x[:100] * 255, on_dead=None, verbose=0)
    unscaled.check(model=model)
    assert unscaled.last_report.site("second").mean_abs.sum() > 50 * expected.sum() > 0
    with pytest.raises(deadrelu.UsageError, match="`rescale`"):
        deadrelu.DeadReluMonitor(x[:100], rescale=0)


def test_check_repr_is_one_short_line(xy):
    x, y = xy
    model = _model()
    killer, kill = _killer()
    kill.model = model
    monitor = deadrelu.DeadReluMonitor(x[:100], on_dead=None, verbose=0)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[killer, monitor])
    first, second = map(repr, monitor.timeline)
    assert first.startswith("<Check epoch 1, step 8: ") and "recovered" not in first
    newly = sum(map(len, monitor.timeline[1].newly_dead.values()))
    assert second.startswith("<Check epoch 2, step 16: ") and f"+{newly} dead" in second
    assert all(len(text) < 200 and "\n" not in text for text in (first, second))

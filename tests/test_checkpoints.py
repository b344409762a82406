"""Scanning a run's checkpoints: the timeline equals the monitor's, unit for unit.

One real training run of the sample's recipe (samples/make_samples.py: the MLP of three
Dense(64, relu) under Adam at lr 0.05, on the bars data) saves a checkpoint every epoch with
`keras.callbacks.ModelCheckpoint` (`.keras` in one folder, `.h5` in another) while a
`DeadReluMonitor` on the same fit watches the same probe data. Scanning the folder afterwards must
give the monitor's checks exactly: epochs, steps, dead units, newly dead and recovered units.
Then: epoch order from names, explicit order, globs, a change of architecture, and refusals.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import deadrelu
from deadrelu.checkpoints import scan_checkpoints
from deadrelu.errors import ModelLoadError, UsageError
from deadrelu.io.checkpoints import CheckpointFile, checkpoint_files, epoch_from_name, is_checkpoint_set
from paths import SAMPLES

EPOCHS = 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(folder of .keras, folder of .h5, probe file, probe array, the monitor's timeline)."""
    import sys

    import keras

    sys.path.insert(0, str(SAMPLES))
    try:
        from make_samples import build_mlp, make_bars
    finally:
        sys.path.remove(str(SAMPLES))
    root = tmp_path_factory.mktemp("run")
    keras_dir, h5_dir = root / "ckpt", root / "h5"
    keras_dir.mkdir()
    h5_dir.mkdir()
    x, y = make_bars(640, seed=1)
    probe, _ = make_bars(200, seed=2)
    np.savez(root / "probe.npz", x=probe)
    keras.utils.set_random_seed(7)
    model = build_mlp()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    monitor = deadrelu.DeadReluMonitor(probe, on_dead=None, verbose=0)
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(keras_dir / "epoch_{epoch}.keras")),
        keras.callbacks.ModelCheckpoint(str(h5_dir / "weights.{epoch:02d}-{loss:.2f}.h5")),
        monitor,
    ]
    model.fit(x, y, epochs=EPOCHS, batch_size=64, verbose=0, callbacks=callbacks)
    return keras_dir, h5_dir, root / "probe.npz", probe, list(monitor.timeline)


def _same_checks(checks, monitor):
    assert [c.to_dict() for c in checks] == [c.to_dict() for c in monitor]


def test_the_folder_scan_is_the_monitors_timeline_unit_for_unit(run):
    keras_dir, _, _, probe, monitor = run
    # The run must have units dying and coming back, or the comparison proves little.
    assert sum(len(units) for check in monitor[1:] for units in check.newly_dead.values()) > 0
    assert sum(len(units) for check in monitor[1:] for units in check.recovered.values()) > 0
    result = scan_checkpoints(keras_dir, probe)
    assert [c.epoch for c in result] == list(range(1, EPOCHS + 1))
    assert [c.check.epoch for c in result] == list(range(1, EPOCHS + 1))  # both counted from 1
    assert [Path(c.file).name for c in result] == [f"epoch_{e}.keras" for e in range(1, EPOCHS + 1)]
    _same_checks(result.timeline, monitor)
    assert result.traces == 1  # one architecture: the weights were copied in, the step reused
    assert [c.check.step for c in result] == [10 * e for e in range(1, EPOCHS + 1)]  # 640 / 64 per epoch
    # Each checkpoint's report is the scan of that file alone.
    alone = deadrelu.scan(deadrelu.load_model(result[2].file), probe)
    assert [s.dead for s in result[2].report.sites] == [s.dead for s in alone.sites]
    assert result[2].report.model["path"] == result[2].file
    file, epoch, report = result[1]
    assert (Path(file).name, epoch, report) == ("epoch_2.keras", 2, result.reports[1])
    fragment = result._repr_html_()  # a notebook's view: the table with the files, and the figure
    assert fragment.count("<tr") == EPOCHS + 1 and "epoch_4.keras" in fragment and "data:image/png" in fragment


def test_h5_and_keras_mixed_in_the_order_given(run):
    keras_dir, h5_dir, _, probe, monitor = run
    h5 = sorted(h5_dir.iterdir())
    files = [keras_dir / "epoch_1.keras", h5[1], keras_dir / "epoch_3.keras", h5[3]]
    result = scan_checkpoints(files, probe)
    assert [c.file for c in result] == [str(f) for f in files]
    assert [c.report.model["format"] for c in result] == ["keras", "h5", "keras", "h5"]
    _same_checks(result.timeline, monitor)  # steps too: read from the .h5 optimizer weights


def test_order_and_epochs_from_names(tmp_path):
    names = ["epoch_10.keras", "epoch_2.keras", "best.keras", "ckpt-3.keras", "weights.05-0.43.h5", "epoch_1.hdf5"]
    for name in [*names, "notes.txt", ".hidden.keras", "history.csv"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "saved_7").mkdir()
    (tmp_path / "saved_7" / "saved_model.pb").write_bytes(b"")
    files = checkpoint_files(tmp_path)
    assert [Path(f.path).name for f in files] == [
        "epoch_1.hdf5",
        "epoch_2.keras",
        "ckpt-3.keras",
        "weights.05-0.43.h5",
        "saved_7",
        "epoch_10.keras",
        "best.keras",
        "saved",
    ]
    assert [f.epoch for f in files] == [1, 2, 3, 5, 7, 10, 7, 8]  # unnumbered: their position
    assert [f.numbered for f in files][-2:] == [False, False]
    # A pattern sorts the same way; a list keeps its order.
    pattern = checkpoint_files(str(tmp_path / "epoch_*"))
    assert [Path(f.path).name for f in pattern] == ["epoch_1.hdf5", "epoch_2.keras", "epoch_10.keras"]
    given = checkpoint_files([tmp_path / "epoch_10.keras", tmp_path / "epoch_2.keras", tmp_path / "best.keras"])
    assert [f.epoch for f in given] == [10, 2, 3]
    assert epoch_from_name("run2/model_v3_epoch-12_loss0.41.keras") == 12
    assert epoch_from_name("final.weights.h5") is None
    assert is_checkpoint_set([str(tmp_path)]) and is_checkpoint_set([str(tmp_path / "epoch_*.keras")])
    assert not is_checkpoint_set([str(tmp_path / "saved")]) and not is_checkpoint_set([str(tmp_path / "best.keras")])
    assert checkpoint_files(tmp_path / "saved_7") == [CheckpointFile(str(tmp_path / "saved_7"), 7)]  # one model
    empty = tmp_path / "logs"
    empty.mkdir()
    (empty / "history.csv").write_text("epoch\n")
    with pytest.raises(UsageError, match="holds no model file"):
        checkpoint_files(empty)


def test_a_change_of_architecture_is_said_and_sites_are_matched_by_path(run, tmp_path):
    import keras

    keras_dir, _, _, probe, _ = run
    for name in ("epoch_1.keras", "epoch_2.keras"):
        (tmp_path / name).write_bytes((keras_dir / name).read_bytes())
    keras.utils.set_random_seed(3)
    narrow = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu", name="hidden_1"),
            keras.layers.Dense(32, activation="relu", name="hidden_2"),
            keras.layers.Dense(64, activation="relu", name="hidden_3"),
            keras.layers.Dense(10, activation="softmax", name="output"),
        ],
        name="dying_mlp",
    )
    trained = deadrelu.load_model(keras_dir / "epoch_2.keras")
    narrow.get_layer("hidden_1").set_weights(trained.get_layer("hidden_1").get_weights())
    narrow.save(tmp_path / "epoch_3.keras")
    result = scan_checkpoints(tmp_path, probe)
    assert result[1].changes is None
    assert "hidden_2: Dense units 64 → 32" in result[2].changes
    assert any("weight shapes" in line and line.startswith("hidden_3") for line in result[2].changes)
    assert any("epoch_3.keras" in note and "epoch_2.keras" in note and "64 → 32" in note for note in result.notes)
    assert result.traces == 2
    check, before = result.timeline[2], result.timeline[1]
    assert set(check.newly_dead) == set(check.recovered) == {"hidden_1", "hidden_3"}  # same path, same units
    now = set(result[2].report.site("hidden_1").dead)
    assert check.newly_dead["hidden_1"] == sorted(now - set(before.dead["hidden_1"]))
    assert check.recovered["hidden_1"] == sorted(set(before.dead["hidden_1"]) - now)
    assert check.units["hidden_2"] == 32


def test_cli_folder_glob_json_html_and_plot(run, run_cli, tmp_path):
    keras_dir, _, probe_file, _, monitor = run
    out = tmp_path / "timeline.json"
    code, stdout, err = run_cli(
        [
            "scan",
            keras_dir,
            "--data",
            probe_file,
            "--json",
            out,
            "--html",
            tmp_path / "t.html",
            "--plot",
            tmp_path / "t.png",
        ]
    )
    assert code == 0, err
    assert "epoch_4.keras" in stdout and "newly dead" in stdout
    document = json.loads(out.read_text())
    assert document["schema"] == "deadrelu/checkpoints@2"
    assert [Path(c["file"]).name for c in document["checkpoints"]] == [f"epoch_{e}.keras" for e in range(1, 5)]
    assert document["timeline"] == json.loads(json.dumps([c.to_dict() for c in monitor]))
    # Each entry's report is what `deadrelu scan FILE --json` writes for that file.
    single = tmp_path / "single.json"
    assert run_cli(["scan", document["checkpoints"][1]["file"], "--data", probe_file, "--json", single])[0] == 0
    alone, entry = json.loads(single.read_text()), document["checkpoints"][1]["report"]
    assert alone == entry
    page = (tmp_path / "t.html").read_text()
    assert all(f"epoch_{e}.keras" in page for e in range(1, 5)) and "data:image/png;base64," in page
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    # A quoted pattern, expanded by deadrelu, in epoch order; --fail-on gates on the last checkpoint.
    last = document["checkpoints"][-1]["report"]["summary"]["dead_fraction"]
    argv = ["scan", keras_dir / "epoch_*.keras", "--data", probe_file, "--format", "json", "--fail-on", last - 1e-3]
    code, stdout, err = run_cli(argv)
    assert code == 1 and "at the last checkpoint exceeds --fail-on" in err
    assert [c["epoch"] for c in json.loads(stdout)["checkpoints"]] == [1, 2, 3, 4]


def test_cli_refusals(run, run_cli, tmp_path):
    keras_dir, _, probe_file, _, _ = run
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["scan", empty, "--data", probe_file])
    assert code == 2 and "holds no model file" in err
    # An output that is one of the files a pattern stands for.
    code, _, err = run_cli(["scan", keras_dir / "*.keras", "--data", probe_file, "--json", keras_dir / "epoch_2.keras"])
    assert code == 2 and "is the input" in err
    assert zipfile.is_zipfile(keras_dir / "epoch_2.keras")
    code, _, err = run_cli(["scan", keras_dir, "--data", probe_file, "--why"])
    assert code == 2 and "--why applies to one model" in err


def test_a_hostile_file_among_checkpoints_is_refused_and_nothing_is_written(run, run_cli, tmp_path):
    keras_dir, _, probe_file, probe, _ = run
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in ("epoch_1.keras", "epoch_2.keras"):
        (folder / name).write_bytes((keras_dir / name).read_bytes())
    with zipfile.ZipFile(keras_dir / "epoch_3.keras") as src, zipfile.ZipFile(folder / "epoch_3.keras", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "config.json":
                config = json.loads(data)
                config["config"]["layers"][2]["config"]["activation"] = {
                    "module": "os",
                    "class_name": "function",
                    "config": "system",
                    "registered_name": "system",
                }
                data = json.dumps(config).encode()
            dst.writestr(info, data)
    out = tmp_path / "out.json"
    code, _, err = run_cli(["scan", folder, "--data", probe_file, "--json", out, "--quiet"])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("deadrelu: error: "), err
    assert "epoch_3.keras" in lines[0]
    assert not out.exists()
    with pytest.raises(ModelLoadError, match=r"epoch_3\.keras"):
        scan_checkpoints(folder, probe)

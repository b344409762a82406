"""The promises of issue 12: inputs are never written, bad paths are exit 2 before any work, a kill
leaves no half file and no lasting temporary file, two writers of one OUT never replace each other.

The matrix runs the command line in-process: `check_paths` refuses before TensorFlow is imported.
Subprocesses only for signals and FIFOs, each bounded by a timeout and killed in `finally`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from deadrelu.cli import build_parser, main
from deadrelu.commands._common import PLOT_DIR_FIGURES, PathArg

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
TIMEOUT = 120


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(argv, capfd) -> tuple[int, str]:
    """The command line in-process: (exit code, standard error)."""
    code = main([str(a) for a in argv])
    return code, capfd.readouterr().err


def one_error_line(err: str) -> str:
    """The single line of a refusal; fails on a traceback or on more than one line."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("deadrelu: error: "), err
    return lines[0]


# -- the inputs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """One file of each input kind (their content matters only if a refusal fails to happen)."""
    folder = tmp_path_factory.mktemp("inputs")
    shutil.copy(SAMPLES / "dying_mlp.keras", folder / "m.keras")
    shutil.copy(SAMPLES / "probe.npz", folder / "probe.npz")
    shutil.copy(SAMPLES / "probe.npz", folder / "val.npz")
    (folder / "sm").mkdir()
    (folder / "sm" / "saved_model.pb").write_bytes(b"\x08\x01")  # a SavedModel folder, as far as paths go
    (folder / "images").mkdir()
    (folder / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (folder / "scan.json").write_text(json.dumps({"schema": "deadrelu/report@1", "sites": []}))
    (folder / "old.json").write_text(json.dumps({"schema": "deadrelu/report@1", "sites": []}))
    (folder / "layers.py").write_text("import keras\n\nclass Mine(keras.layers.Layer):\n    pass\n")
    (folder / "arch.json").write_text(json.dumps({"class_name": "Sequential", "config": {}}))
    return {path.name: path for path in folder.iterdir()}


# Input kind → (flags that give the input, given its folder; the file an output could destroy).
INPUT_KINDS = {
    "model": (lambda d: [d / "m.keras"], "m.keras"),
    "savedmodel": (lambda d: [d / "sm"], "sm/saved_model.pb"),
    "data": (lambda d: ["--data", f"{d / 'probe.npz'}:x"], "probe.npz"),
    "image folder": (lambda d: ["--data", d / "images"], "images/a.png"),
    "labels": (lambda d: ["--data", d / "val.npz", "--labels", f"{d / 'probe.npz'}:y"], "probe.npz"),
    "custom objects": (lambda d: ["--custom-objects", d / "layers.py"], "layers.py"),
    "architecture": (lambda d: ["--architecture", d / "arch.json"], "arch.json"),
    "report": (lambda d: ["--report", d / "scan.json"], "scan.json"),
    "validation data": (lambda d: ["--validation-data", f"{d / 'val.npz'}:x"], "val.npz"),
    "validation labels": (lambda d: ["--validation-labels", d / "val.npz"], "val.npz"),
    "report input": (lambda d: [d / "scan.json"], "scan.json"),
    "compare": (lambda d: ["--compare", d / "old.json"], "old.json"),
}
MODEL_INPUTS = ("model", "savedmodel", "data", "image folder", "labels", "custom objects", "architecture")
RETRAIN_INPUTS = ("report", "validation data", "validation labels")
# Command → (its output flags, the input kinds it takes).
COMMANDS = {
    "scan": (("--json", "--plot"), MODEL_INPUTS),
    "report": (("--json", "--plot", "--html"), ("report input", "compare")),
    "patch": (("-o", "-o --force", "--json", "--curves"), MODEL_INPUTS + RETRAIN_INPUTS),
    "revive": (("-o", "-o --force", "--json", "--curves"), MODEL_INPUTS + RETRAIN_INPUTS),
    "prune": (("-o", "-o --force", "--json", "--curves"), MODEL_INPUTS + RETRAIN_INPUTS),
}
SPELLINGS = ("same path", "./ path", "symlink", "hard link")


def _argv(command: str, kind: str, folder: Path) -> list:
    """A command line of `command` with the input `kind` (and the other inputs it needs)."""
    give = INPUT_KINDS[kind][0](folder)
    if command == "report":
        return ["report", *give] if kind == "report input" else ["report", folder / "scan.json", *give]
    model = [] if kind in ("model", "savedmodel") else [folder / "m.keras"]
    data = ["--data", folder / "val.npz"] if "--data" not in give else []
    extra = {"patch": ["--to", "leaky"], "revive": data, "prune": data}
    return [command, *model, *give, *extra.get(command, [])]


def _spell(victim: Path, spelling: str, scratch: Path) -> str:
    """The output path: `victim` itself, as `./…` from the working folder, a symlink or a hard link to it."""
    if spelling == "same path":
        return str(victim)
    if spelling == "./ path":
        return "./" + os.path.relpath(victim)
    link = scratch / f"link{victim.suffix}"
    (link.symlink_to if spelling == "symlink" else link.hardlink_to)(victim)
    return str(link)


MATRIX = [
    (command, flag, kind, spelling)
    for command, (flags, kinds) in COMMANDS.items()
    for flag in flags
    for kind in kinds
    for spelling in SPELLINGS
    if not (spelling == "hard link" and kind in ("savedmodel", "image folder"))
]  # a rename never reaches inside


@pytest.mark.parametrize("command, flag, kind, spelling", MATRIX)
def test_an_output_is_never_an_input(command, flag, kind, spelling, inputs, tmp_path, monkeypatch, capfd):
    folder = inputs["m.keras"].parent
    monkeypatch.chdir(folder)
    victim = folder / INPUT_KINDS[kind][1]
    before = {path: sha256(path) for path in folder.rglob("*") if path.is_file()}
    listing = sorted(folder.rglob("*"))
    out = _spell(victim, spelling, tmp_path)
    flag_words = flag.split()
    argv = [*_argv(command, kind, folder), flag_words[0], out, *flag_words[1:]]
    started = time.monotonic()
    code, err = run(argv, capfd)
    line = one_error_line(err)
    assert code == 2
    assert re.search(
        r"is the input (model|report|--[a-z-]+) .*; deadrelu never writes over its inputs|inside the input "
        "folder",
        line,
    ), line
    assert time.monotonic() - started < 5  # refused before any work
    assert {path: sha256(path) for path in folder.rglob("*") if path.is_file()} == before
    assert sorted(folder.rglob("*")) == listing  # no output, no temporary file


FOLDER_CASES = {
    "scan: --plot-dir is the image folder": ["scan", "{d}/m.keras", "--data", "{d}/images", "--plot-dir", "{d}/images"],
    "scan: --plot-dir inside the image folder": [
        "scan",
        "{d}/m.keras",
        "--data",
        "{d}/images",
        "--plot-dir",
        "{d}/images/figs",
    ],
    "scan: --plot-dir is the SavedModel": ["scan", "{d}/sm", "--plot-dir", "./sm"],
    "scan: --plot-dir would write overview.png over the data": [
        "scan",
        "{d}/m.keras",
        "--data",
        "{d}/figs/overview.png:x",
        "--plot-dir",
        "{d}/figs",
    ],
    "scan: --plot-dir would write a site figure over the model": [
        "scan",
        "{d}/figs/site-000-dense.png",
        "--plot-dir",
        "{d}/figs",
    ],
    "report: --plot-dir would write unit_map.png over the report": [
        "report",
        "{d}/figs/unit_map.png",
        "--plot-dir",
        "{d}/figs/.",
    ],
    "scan: --json is the SavedModel folder": ["scan", "{d}/sm", "--json", "{d}/sm"],
    "scan: --json inside the image folder": [
        "scan",
        "{d}/m.keras",
        "--data",
        "{d}/images",
        "--json",
        "{d}/images/new.json",
    ],
}


@pytest.mark.parametrize("case", sorted(FOLDER_CASES))
def test_no_output_replaces_or_enters_an_input_folder(case, tmp_path, monkeypatch, capfd):
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"pb")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"png")
    (tmp_path / "figs").mkdir()
    for name in ("overview.png", "site-000-dense.png", "unit_map.png"):
        (tmp_path / "figs" / name).write_bytes(b"input")
    shutil.copy(SAMPLES / "dying_mlp.keras", tmp_path / "m.keras")
    listing = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    monkeypatch.chdir(tmp_path)
    code, err = run([a.format(d=tmp_path) for a in FOLDER_CASES[case]], capfd)
    line = one_error_line(err)
    assert code == 2 and re.search(r"is the input|would overwrite the input|inside the input folder", line), line
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == listing
    assert not (tmp_path / "images" / "figs").exists()


# -- two outputs of one command --------------------------------------------------------------

OUTPUT_PAIRS = {
    "scan --json R --plot R": ["scan", "{m}", "--json", "{t}/R", "--plot", "{t}/R"],
    "scan --json R --plot ./R": ["scan", "{m}", "--json", "{t}/R", "--plot", "./R"],
    "scan --json R --plot link-to-R": ["scan", "{m}", "--json", "{t}/R", "--plot", "{t}/link"],
    "scan --plot-dir D --json D": ["scan", "{m}", "--plot-dir", "{t}/D", "--json", "{t}/D"],
    "scan --plot-dir D --plot D/overview.png": ["scan", "{m}", "--plot-dir", "{t}/D", "--plot", "{t}/D/overview.png"],
    "scan --json D/site-001-x.png --plot-dir D": [
        "scan",
        "{m}",
        "--json",
        "{t}/D/site-001-x.png",
        "--plot-dir",
        "{t}/D",
    ],
    "report --json X --html X": ["report", "{r}", "--json", "{t}/X", "--html", "{t}/X"],
    "report --plot X --html X": ["report", "{r}", "--plot", "{t}/X", "--html", "{t}/X"],
    "report --compare --json X --plot X": ["report", "{r}", "--compare", "{r}", "--json", "{t}/X", "--plot", "{t}/X"],
    "patch -o p.keras --json p.keras": ["patch", "{m}", "--to", "leaky", "-o", "{t}/p.keras", "--json", "{t}/p.keras"],
    "patch -o p.keras --curves p.keras": [
        "patch",
        "{m}",
        "--to",
        "prelu",
        "-o",
        "{t}/p.keras",
        "--curves",
        "{t}/p.keras",
    ],
    "patch --json X --curves X": [
        "patch",
        "{m}",
        "--to",
        "leaky",
        "-o",
        "{t}/p.keras",
        "--json",
        "{t}/X",
        "--curves",
        "{t}/X",
    ],
    "patch: the default OUT is --json": ["patch", "{m}", "--to", "leaky", "--json", "{d}/m_leaky.keras"],
    "revive -o p.keras --json p.keras": [
        "revive",
        "{m}",
        "--data",
        "{p}",
        "-o",
        "{t}/p.keras",
        "--json",
        "{t}/p.keras",
    ],
    "revive --json X --curves X": [
        "revive",
        "{m}",
        "--data",
        "{p}",
        "-o",
        "{t}/p.keras",
        "--json",
        "{t}/X",
        "--curves",
        "{t}/X",
    ],
    "revive: the default OUT is --curves": ["revive", "{m}", "--data", "{p}", "--curves", "{d}/m_revived.keras"],
}


@pytest.mark.parametrize("case", sorted(OUTPUT_PAIRS))
def test_two_outputs_are_never_the_same_file(case, inputs, tmp_path, monkeypatch, capfd):
    (tmp_path / "link").symlink_to(tmp_path / "R")
    (tmp_path / "D").mkdir()
    folder = inputs["m.keras"].parent
    listing = sorted(folder.rglob("*"))
    monkeypatch.chdir(tmp_path)
    argv = [
        a.format(m=inputs["m.keras"], p=inputs["probe.npz"], r=inputs["scan.json"], t=tmp_path, d=folder)
        for a in OUTPUT_PAIRS[case]
    ]
    code, err = run(argv, capfd)
    line = one_error_line(err)
    assert code == 2 and re.search(r"are the same file|with a figure of the same name", line), line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["D", "link"]
    assert sorted(folder.rglob("*")) == listing


# -- outputs that cannot be written: refused before any work --------------------------------

# Every output flag of every command (with what it needs), run on a model that does not exist:
# only a check made before loading can produce the expected line.
OUTPUT_FLAGS = {
    "scan --json": ["scan", "{t}/nope.keras", "--json"],
    "scan --plot": ["scan", "{t}/nope.keras", "--plot"],
    "report --json": ["report", "{t}/nope.json", "--json"],
    "report --plot": ["report", "{t}/nope.json", "--plot"],
    "report --html": ["report", "{t}/nope.json", "--html"],
    "patch --json": ["patch", "{t}/nope.keras", "--to", "leaky", "--json"],
    "patch --curves": ["patch", "{t}/nope.keras", "--to", "leaky", "--curves"],
    "patch -o": ["patch", "{t}/nope.keras", "--to", "leaky", "-o"],
    "revive --json": ["revive", "{t}/nope.keras", "--data", "{t}/nope.npz", "--json"],
    "revive --curves": ["revive", "{t}/nope.keras", "--data", "{t}/nope.npz", "--curves"],
    "revive -o": ["revive", "{t}/nope.keras", "--data", "{t}/nope.npz", "-o"],
}
BAD_PLACES = {
    "in /proc": ("/proc/deadrelu-x.keras", "/proc"),
    "an existing folder": ("{t}/folder", "is a folder"),
    "an existing folder, with a slash": ("{t}/folder/", "is a folder"),
    "under a file": ("{t}/file.txt/x.keras", "file.txt is a file"),
    "in a missing folder": ("{t}/missing/x.keras", "does not exist"),
    "/dev/stdout": ("/dev/stdout", "not a regular file"),
    "a FIFO": ("{t}/fifo.keras", "FIFO"),
}


@pytest.mark.parametrize("place", sorted(BAD_PLACES))
@pytest.mark.parametrize("flag", sorted(OUTPUT_FLAGS))
def test_an_unwritable_output_is_refused_before_any_work(flag, place, tmp_path, capfd):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("a file")
    os.mkfifo(tmp_path / "fifo.keras")
    path, expected = BAD_PLACES[place]
    argv = [a.format(t=tmp_path) for a in [*OUTPUT_FLAGS[flag], path]]
    started = time.monotonic()
    code, err = run(argv, capfd)
    line = one_error_line(err)
    assert code == 2 and expected in line and "not found" not in line, line
    assert time.monotonic() - started < 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.keras", "file.txt", "folder"]
    assert os.path.islink("/dev/stdout") or not os.path.exists("/dev/stdout")  # never replaced by a file


@pytest.mark.parametrize("command", ["scan", "report"])
@pytest.mark.parametrize(
    "place, expected",
    [
        ("{t}/file.txt", "not a folder"),
        ("{t}/missing/figs", "does not exist"),
        ("/proc/deadrelu-figs", "cannot create files in /proc"),
    ],
)
def test_an_unwritable_plot_dir_is_refused_before_any_work(command, place, expected, tmp_path, capfd):
    (tmp_path / "file.txt").write_text("a file")
    code, err = run([command, tmp_path / "nope.keras", "--plot-dir", place.format(t=tmp_path)], capfd)
    line = one_error_line(err)
    assert code == 2 and expected in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_a_folder_that_takes_no_files_is_refused(tmp_path, monkeypatch, capfd):
    """A read-only folder, as root cannot make one: the probe file is refused."""
    import tempfile

    mkstemp = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == tmp_path:
            raise PermissionError(13, "Permission denied")
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, err = run(["scan", tmp_path / "nope.keras", "--json", tmp_path / "r.json"], capfd)
    assert code == 2 and f"cannot create files in {tmp_path} (Permission denied)" in one_error_line(err)


def test_an_existing_out_needs_force_and_force_never_reaches_an_input(inputs, tmp_path, capfd):
    out = tmp_path / "p.keras"
    out.write_bytes(b"earlier")
    code, err = run(["patch", tmp_path / "nope.keras", "--to", "leaky", "-o", out], capfd)
    assert code == 2 and "p.keras exists" in one_error_line(err) and "--force" in err
    # With --force the check passes on to loading, which fails: the model does not exist.
    code, err = run(["patch", tmp_path / "nope.keras", "--to", "leaky", "-o", out, "--force"], capfd)
    assert code == 2 and "model file not found" in one_error_line(err)
    assert out.read_bytes() == b"earlier"


def test_every_flag_that_takes_a_path_is_declared():
    """A new path flag cannot skip `check_paths`: every flag taking free text is a PathArg or listed here."""
    free_text = {"loss", "optimizer", "layers", "sites"}
    parser = build_parser()
    commands = parser.parse_args(["scan", "m"]).commands
    undeclared = []
    for name in commands:
        command = parser.parse_args([name, "x", "--to", "leaky"] if name == "patch" else [name, "x"]).command_parser
        for action in command._actions:
            takes_text = action.nargs != 0 and action.type in (None, str) and not action.choices
            if takes_text and action.dest not in free_text and action.dest != "help":
                undeclared.append(f"{name} {action.dest}")
    assert not undeclared, f"declare these with a PathArg type (deadrelu.commands._common): {undeclared}"
    scan = parser.parse_args(["scan", "m"]).command_parser
    kinds = {action.dest: action.type for action in scan._actions if isinstance(action.type, PathArg)}
    assert not kinds["model"].output and kinds["json"].output and kinds["plot_dir"].kind == "folder"


def test_the_plot_dir_names_are_those_plot_site_dir_writes():
    from deadrelu.views.plots.units import site_file_name

    for name in (
        "overview.png",
        "unit_map.png",
        "active_rates.png",
        site_file_name(7, "decoder/conv2d 3"),
        site_file_name(1234, "x"),
    ):
        assert PLOT_DIR_FIGURES.fullmatch(name), name
    assert not PLOT_DIR_FIGURES.fullmatch("overview.png.bak")


# -- bad model files: exit 2, one line ------------------------------------------------------


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory) -> Path:
    import h5py
    import keras

    folder = tmp_path_factory.mktemp("bad_models")
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="relu", name="d"), keras.layers.Dense(2, name="o")]
    )
    model.save(folder / "m.keras")
    raw = bytearray((folder / "m.keras").read_bytes())
    with zipfile.ZipFile(folder / "m.keras") as archive:
        info = archive.getinfo("model.weights.h5")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + 200 : start + 260] = bytes(b ^ 0xFF for b in raw[start + 200 : start + 260])
    (folder / "crc.keras").write_bytes(bytes(raw))
    with zipfile.ZipFile(folder / "m.keras") as source, zipfile.ZipFile(folder / "mismatch.keras", "w") as target:
        for entry in source.infolist():
            content = source.read(entry)
            if entry.filename == "config.json":
                config = json.loads(content)
                config["config"]["layers"][1]["config"]["units"] = 5
                content = json.dumps(config).encode()
            target.writestr(entry.filename, content)
    with h5py.File(folder / "data.h5", "w") as f:
        f["x"] = np.zeros((5, 4), np.float32)
        f["y"] = np.zeros(5)
    model.save_weights(folder / "w.weights.h5")
    return folder


@pytest.mark.parametrize(
    "name, expected",
    [
        ("crc.keras", "damaged zip archive (entry model.weights.h5 fails its CRC check)"),
        ("mismatch.keras", "variable.shape=(4, 5), Received: value.shape=(4, 3)"),
        ("data.h5", "holds arrays (x, y), not a Keras model; to read them as the inputs pass the file as --data"),
        ("w.weights.h5", "holds only weights"),
    ],
)
def test_a_bad_model_file_is_one_line_exit_2(name, expected, bad_models, capfd):
    code, err = run(["scan", bad_models / name, "--quiet"], capfd)
    line = one_error_line(err)
    assert code == 2 and expected in line, line
    if name == "data.h5":
        assert "weights" not in line


def test_a_fifo_as_model_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "model.keras"
    os.mkfifo(fifo)
    cli = subprocess.run([sys.executable, "-m", "deadrelu", "scan", fifo], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and "FIFO" in one_error_line(cli.stderr)
    api = subprocess.run(
        [sys.executable, "-c", f"import deadrelu; deadrelu.load_model({str(fifo)!r})"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert "ModelLoadError" in api.stderr and "is a FIFO (named pipe), not a model file" in api.stderr


def test_no_command_is_one_line_exit_2(capfd):
    code, err = run([], capfd)
    assert code == 2 and "give a command (scan, inspect, report, patch, revive, prune, fix)" in one_error_line(err)


# -- kills and concurrent writers ------------------------------------------------------------

# Runs the command line with Keras's save slowed down: the temporary file exists for 60 s.
SLOW_SAVE = """
import sys, time, keras
save = keras.Model.save
def slow(self, path, *args, **kwargs):
    save(self, path, *args, **kwargs)
    print("saved", flush=True)
    time.sleep(60)
keras.Model.save = slow
from deadrelu.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _start_slow_patch(out: Path) -> subprocess.Popen:
    argv = ["patch", SAMPLES / "dying_mlp.keras", "--to", "leaky", "-o", out, "--quiet"]
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_SAVE, *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_temporary(process: subprocess.Popen, folder: Path) -> Path:
    assert process.stdout.readline().strip() == "saved", process.stderr.read()  # blocks until the save is done
    temporaries = list(folder.glob(".deadrelu-tmp-*"))
    assert len(temporaries) == 1, temporaries
    return temporaries[0]


def test_sigterm_removes_the_temporary_file(tmp_path):
    out = tmp_path / "out.keras"
    process = _start_slow_patch(out)
    try:
        temporary = _wait_for_temporary(process, tmp_path)
        assert re.fullmatch(rf"\.deadrelu-tmp-{process.pid}-\w+-out\.keras", temporary.name), temporary.name
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    assert process.returncode == 143 and "deadrelu: terminated" in err, err
    assert list(tmp_path.iterdir()) == []  # neither OUT nor a temporary file


def test_sigterm_during_a_scan_exits_143_and_writes_nothing(tmp_path):
    report = tmp_path / "r.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deadrelu",
            "scan",
            SAMPLES / "dying_mlp.keras",
            "--data",
            SAMPLES / "probe.npz",
            "--json",
            report,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)  # importing TensorFlow or scanning: either way not written yet
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    if process.returncode == 0:  # finished first on a fast machine: then the report is complete
        assert json.loads(report.read_text())["schema"].startswith("deadrelu/report")
    else:
        assert process.returncode in (143, -signal.SIGTERM), err  # -15: still importing, before main()
        assert list(tmp_path.iterdir()) == []


def test_after_sigkill_the_next_run_removes_the_stale_temporary(tmp_path, capfd):
    out = tmp_path / "out.keras"
    process = _start_slow_patch(out)
    try:
        temporary = _wait_for_temporary(process, tmp_path)
        process.kill()
        process.wait(timeout=TIMEOUT)
    finally:
        process.kill()
    assert temporary.exists() and not out.exists()  # SIGKILL cannot clean up: no OUT, one named temporary
    alive = tmp_path / f".deadrelu-tmp-{os.getppid()}-abc-other.json"  # a live process's: kept
    alive.write_text("{}")
    foreign = tmp_path / ".deadrelu-tmp-notes.txt"  # not deadrelu's pattern: kept
    foreign.write_text("mine")
    code, err = run(["report", _report(tmp_path / "in"), "--json", tmp_path / "again.json"], capfd)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, foreign.name, "again.json", "in"])


def _report(folder: Path) -> Path:
    folder.mkdir()
    path = folder / "scan.json"
    main(["scan", str(SAMPLES / "dying_mlp.keras"), "--samples", "8", "--json", str(path), "--quiet"])
    return path


def test_the_second_writer_of_out_is_refused_at_the_rename(tmp_path, monkeypatch, capfd):
    """Another run writes OUT while this one works: deciding at the rename (os.link) keeps the first."""
    import keras

    out = tmp_path / "out.keras"
    save = keras.Model.save

    def save_then_race(self, path, *args, **kwargs):
        save(self, path, *args, **kwargs)
        if not out.exists():
            out.write_bytes(b"the other run's model")

    monkeypatch.setattr(keras.Model, "save", save_then_race)
    code, err = run(["patch", SAMPLES / "dying_mlp.keras", "--to", "leaky", "-o", out, "--quiet"], capfd)
    line = one_error_line(err)
    assert code == 2 and "out.keras exists (written while this run worked)" in line and "--force" in line, line
    assert out.read_bytes() == b"the other run's model"
    assert [p.name for p in tmp_path.iterdir()] == ["out.keras"]


@pytest.mark.parametrize("force", [False, True])
def test_atomic_output_decides_at_the_rename(force, tmp_path):
    from deadrelu.errors import UsageError
    from deadrelu.io.files import atomic_output

    target = tmp_path / "r.json"
    refused = contextlib.nullcontext() if force else pytest.raises(UsageError, match="exists")
    with refused, atomic_output(target, force=force) as tmp:
        Path(tmp).write_text("mine")
        target.write_text("theirs")  # another process, between our write and our rename
    assert target.read_text() == ("mine" if force else "theirs")
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]

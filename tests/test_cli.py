"""The command line: outputs, exit codes, one-line errors, quiet TensorFlow, untouched inputs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from paths import ROOT, SAMPLES


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A small CNN with three conv units planted dead (bias -1e3) in a .keras file."""
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(6, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(12, activation="relu", name="dense"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ],
        name="planted",
    )
    conv = model.get_layer("conv")
    kernel, bias = conv.get_weights()
    bias[[1, 4]] = -1e3
    conv.set_weights([kernel, bias])
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    path = tmp_path_factory.mktemp("models") / "planted.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "probe.npz"
    np.savez(
        path,
        x=rng.uniform(0, 1, (50, 8, 8, 1)).astype(np.float32),
        y=rng.integers(0, 3, 50),
        other=rng.uniform(0, 1, (50, 5)).astype(np.float32),
    )
    return path


def test_scan_writes_json_equal_to_printed_json_and_finds_planted_units(model_file, data_file, tmp_path, run_cli):
    report_path = tmp_path / "scan.json"
    code, out, err = run_cli(
        [
            "scan",
            model_file,
            "--data",
            data_file,
            "--json",
            report_path,
            "--format",
            "json",
            "--batch-size",
            "7",
            "--quiet",
        ]
    )
    assert code == 0, err
    printed = json.loads(out)
    written = json.loads(report_path.read_text())
    assert printed == written
    conv = written["sites"][0]
    assert conv["path"] == "conv" and conv["dead"] == [1, 4]
    assert written["summary"]["dead"] >= 2
    assert written["model"]["sha256"] == sha256(model_file)
    assert written["data"]["samples"] == 50


def test_scan_json_is_the_library_reports_to_dict(model_file, data_file, tmp_path, run_cli):
    """The command's --json is `deadrelu.scan(...).to_dict()`: the same numbers, only provenance differs."""
    import deadrelu

    report_path = tmp_path / "scan.json"
    code, _, err = run_cli(["scan", model_file, "--data", data_file, "--json", report_path, "--batch-size", "7"])
    assert code == 0, err
    written = json.loads(report_path.read_text())
    library = deadrelu.scan(deadrelu.load_model(str(model_file)), str(data_file), batch_size=7, verbose=0)
    expected = json.loads(json.dumps(library.to_dict()))
    assert set(written) == set(expected)
    # The CLI records the file it loaded (path, sha256, repairs); the library an in-memory model.
    assert written["model"]["sha256"] == sha256(model_file) and expected["model"]["format"] == "in-memory"
    for key in set(expected) - {"model", "tool", "sites", "summary"}:
        assert written[key] == expected[key], key
    assert written["summary"] == pytest.approx(expected["summary"])
    for ours, theirs in zip(written["sites"], expected["sites"], strict=True):
        assert ours.keys() == theirs.keys()
        assert {k: v for k, v in ours.items() if not isinstance(v, (float, list))} == {
            k: v for k, v in theirs.items() if not isinstance(v, (float, list))
        }
        assert ours["dead"] == theirs["dead"] and ours["active_rate"] == pytest.approx(theirs["active_rate"])


def test_table_and_markdown_outputs(model_file, data_file, run_cli):
    code, out, _ = run_cli(["scan", model_file, "--data", data_file, "--quiet"])
    assert code == 0
    assert "conv" in out and "flagged" in out and "units dead" in out
    code, out, _ = run_cli(["scan", model_file, "--data", data_file, "--format", "markdown", "--quiet"])
    assert code == 0
    table_rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(table_rows) == 1 + 2  # header + two sites
    assert "**✗ flagged**" in out


def test_next_step_hint_is_a_command_that_works(tmp_path, run_cli):
    """Flagged sites on real data: one line names the revive and patch commands, and they run."""
    import re
    import shlex

    model = tmp_path / "dying.keras"
    model.write_bytes((SAMPLES / "dying_mlp.keras").read_bytes())
    data = str(SAMPLES / "probe.npz")
    code, _, err = run_cli(["scan", str(model), "--data", data])
    hints = [line for line in err.splitlines() if line.startswith("deadrelu: next:")]
    assert code == 0 and len(hints) == 1
    commands = [shlex.split(cmd) for cmd in re.findall(r"`([^`]+)`", hints[0])]
    assert [c[:2] for c in commands] == [["deadrelu", "revive"], ["deadrelu", "patch"]]
    for command in commands:
        assert run_cli(command[1:] + ["-o", str(tmp_path / f"{command[1]}.keras"), "--quiet"])[0] == 0
    # No hint for a healthy model, without real data, or in machine formats.
    for argv in (
        ["scan", str(SAMPLES / "healthy_cnn.keras"), "--data", data],
        ["scan", str(model)],
        ["scan", str(model), "--data", data, "--format", "markdown"],
    ):
        assert "next:" not in run_cli(argv)[2]


def test_the_suggested_revive_reads_the_data_as_the_scan_did(tmp_path, run_cli):
    """`--rescale` and `--samples` change which units are dead: the suggestion carries them, so the
    revive it names re-initialises exactly the units the scan found dead."""
    import json
    import re
    import shlex

    data = str(SAMPLES / "probe.npz")
    scan_json = tmp_path / "scan.json"
    argv = ["scan", str(SAMPLES / "dying_mlp.keras"), "--data", data, "--rescale", "1/2", "--samples", "300"]
    code, _, err = run_cli([*argv, "--json", str(scan_json)])
    [hint] = [line for line in err.splitlines() if line.startswith("deadrelu: next:")]
    [revive] = [shlex.split(c) for c in re.findall(r"`([^`]+)`", hint) if c.startswith("deadrelu revive")]
    assert (
        code == 0 and revive[revive.index("--rescale") + 1] == "1/2" and revive[revive.index("--samples") + 1] == "300"
    )
    revive_json = tmp_path / "revive.json"
    assert run_cli([*revive[1:], "-o", str(tmp_path / "r.keras"), "--json", str(revive_json), "--quiet"])[0] == 0
    dead = {site["path"]: site["dead"] for site in json.loads(scan_json.read_text())["sites"] if site["dead"]}
    assert json.loads(revive_json.read_text())["revived"] == dead
    # Without the flags the same data gives other dead units: the flags matter.
    plain = tmp_path / "plain.json"
    run_cli(["scan", str(SAMPLES / "dying_mlp.keras"), "--data", data, "--json", str(plain), "--quiet"])
    assert {site["path"]: site["dead"] for site in json.loads(plain.read_text())["sites"] if site["dead"]} != dead


def test_fail_on_gate_exit_codes(model_file, data_file, run_cli):
    assert run_cli(["scan", model_file, "--data", data_file, "--fail-on", "0.01", "--quiet"])[0] == 1
    assert run_cli(["scan", model_file, "--data", data_file, "--fail-on", "0.99", "--quiet"])[0] == 0


def test_plot_is_a_real_png(model_file, data_file, tmp_path, run_cli):
    from PIL import Image

    png = tmp_path / "overview.png"
    assert run_cli(["scan", model_file, "--data", data_file, "--plot", png, "--quiet"])[0] == 0
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 400 and image.size[1] > 200
        assert len(set(image.convert("RGB").getdata())) > 10  # not a blank canvas


def test_report_command_renders_saved_report(model_file, data_file, tmp_path, run_cli):
    report_path = tmp_path / "scan.json"
    run_cli(["scan", model_file, "--data", data_file, "--json", report_path, "--quiet"])
    code, out, _ = run_cli(["report", report_path, "--format", "markdown"])
    assert code == 0 and "`conv`" in out


def test_inspect_lists_sites_and_others(model_file, run_cli):
    code, out, _ = run_cli(["inspect", model_file])
    assert code == 0
    assert "conv" in out and "dense" in out and "softmax" in out and "2 ReLU sites" in out


def test_without_data_warns_synthetic(model_file, run_cli):
    code, out, err = run_cli(["scan", model_file, "--samples", "16"])
    assert code == 0
    assert "synthetic" in err.lower() and "SYNTHETIC" in out


def test_adapts_trailing_channel_and_uint8(model_file, tmp_path, run_cli):
    path = tmp_path / "mnist_like.npy"
    np.save(path, np.random.default_rng(1).integers(0, 255, (20, 8, 8), dtype=np.uint8))
    code, _, err = run_cli(["scan", model_file, "--data", path, "--rescale", "1/255"])
    assert code == 0, err
    assert "trailing channel axis" in err and "uint8" in err


BAD_INPUTS = {
    "missing model": (["scan", "{tmp}/nope.keras"], "not found"),
    "not a model": (["scan", "{tmp}/text.keras"], "{tmp}/text.keras"),
    "data missing": (["scan", "{model}", "--data", "{tmp}/none.npz"], "not found"),
    "wrong key": (["scan", "{model}", "--data", "{data}:nokey"], "no array named 'nokey'"),
    "wrong shape": (["scan", "{model}", "--data", "{data}:other"], "shape"),
    "empty data": (["scan", "{model}", "--data", "{tmp}/empty.npy"], "no samples"),
    "nan data": (["scan", "{model}", "--data", "{tmp}/nan.npy"], "NaN"),
    "samples 0": (["scan", "{model}", "--samples", "0"], "at least 1"),
    "json folder missing": (["scan", "{model}", "--data", "{data}", "--json", "{tmp}/no/dir/r.json"], "does not exist"),
    "plot folder missing": (["scan", "{model}", "--data", "{data}", "--plot", "{tmp}/no/dir/p.png"], "does not exist"),
    "gradients without labels": (["scan", "{model}", "--data", "{tmp}/nolabels.npy", "--gradients"], "labels"),
    "bad flag value": (["scan", "{model}", "--fail-on", "2"], "fraction"),
    "not a report": (["report", "{tmp}/text.keras"], "not a JSON report"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, model_file, data_file, tmp_path, run_cli):
    (tmp_path / "text.keras").write_text("hello")
    np.save(tmp_path / "empty.npy", np.zeros((0, 8, 8, 1), np.float32))
    nan = np.random.default_rng(2).uniform(size=(30, 8, 8, 1)).astype(np.float32)
    nan[17, 2, 3, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "nolabels.npy", nan[:5])
    argv, expected = BAD_INPUTS[case]
    argv = [a.format(tmp=tmp_path, model=model_file, data=data_file) for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    model_hash = sha256(model_file)
    code, _, err = run_cli(argv)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("deadrelu: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected.format(tmp=tmp_path) in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written
    assert sha256(model_file) == model_hash
    if case == "nan data":
        assert "sample 17" in lines[0]


def test_debug_shows_traceback(tmp_path, run_cli):
    code, _, err = run_cli(["scan", tmp_path / "missing.keras", "--debug"])
    assert code == 2 and "Traceback" in err


def _subprocess(args, **kwargs):
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-m", "deadrelu", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
        **kwargs,
    )


def test_help_does_not_import_tensorflow():
    """Nor numpy or the engine: `deadrelu --help` starts on the standard library alone."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "deadrelu", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "scan" in result.stdout
    imported = [
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
    ]
    assert "deadrelu.cli" in imported  # the import-time listing is what we think it is
    heavy = [name for name in imported if name.split(".")[0] in ("tensorflow", "keras", "jax", "torch", "numpy")]
    assert not heavy, heavy
    engine = {
        "deadrelu.engine.probe",
        "deadrelu.io.loading",
        "deadrelu.data",
        "deadrelu.fixes.patch",
        "deadrelu.fixes.revive",
    }
    assert not engine & set(imported), engine & set(imported)


def test_python_m_scan_sample_is_quiet_unless_verbose():
    """`python -m deadrelu` works; TensorFlow's start-up lines never reach the terminal."""
    model = SAMPLES / "dying_mlp.keras"
    before = sha256(model)
    quiet = _subprocess(["scan", model, "--data", SAMPLES / "probe.npz"])
    assert quiet.returncode == 0, quiet.stderr
    assert "dying_mlp" in quiet.stdout and "hidden_1" in quiet.stdout
    noise = ("oneDNN", "cudart", "absl::InitializeLog", "cpu_feature_guard", "cuInit")
    assert not any(word in quiet.stderr for word in noise), quiet.stderr
    verbose = _subprocess(["scan", model, "--data", SAMPLES / "probe.npz", "--samples", "10", "--verbose"])
    assert verbose.returncode == 0
    assert any(word in verbose.stderr for word in noise)  # proves the quiet run did hide something
    assert sha256(model) == before


def test_outputs_get_ordinary_permissions(model_file, data_file, tmp_path, run_cli):
    report_path = tmp_path / "scan.json"
    assert run_cli(["scan", model_file, "--data", data_file, "--json", report_path, "--quiet"])[0] == 0
    umask = os.umask(0)
    os.umask(umask)
    assert report_path.stat().st_mode & 0o777 == 0o666 & ~umask


# -- revive: the command is revive_model's shell ------------------------------------------------


@pytest.fixture(scope="module")
def revive_files(tmp_path_factory):
    """A Dense model with dead units planted at three sites, and its data.

    h1: 3 of 6 units dead (flagged), h2: 1 of 32 (dead, under the 10 % flag threshold), h3: 2 of 8
    (flagged). Non-negative inputs and kernels: every unit not planted fires.
    """
    import keras

    keras.utils.set_random_seed(12)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(6, activation="relu", name="h1"),
            keras.layers.Dense(32, activation="relu", name="h2"),
            keras.layers.Dense(8, activation="relu", name="h3"),
            keras.layers.Dense(2, name="out"),
        ],
        name="three_sites",
    )
    for name, dead in (("h1", [0, 2, 4]), ("h2", [7]), ("h3", [1, 5])):
        kernel, bias = model.get_layer(name).get_weights()
        bias[:] = 1.0
        bias[dead] = -100.0
        model.get_layer(name).set_weights([np.abs(kernel), bias])
    folder = tmp_path_factory.mktemp("revive")
    model.save(folder / "three.keras")
    x = np.random.default_rng(12).uniform(0, 1, (40, 5)).astype(np.float32)
    np.savez(folder / "x.npz", x=x)
    np.savez(folder / "x400.npz", x=x * 400)  # the planted units fire here
    return folder


def test_revive_json_is_revive_model_to_dict_under_the_header(revive_files, tmp_path, run_cli):
    import deadrelu

    model_path, data = revive_files / "three.keras", revive_files / "x.npz"
    out, summary = tmp_path / "revived.keras", tmp_path / "revive.json"
    code, stdout, err = run_cli(["revive", model_path, "--data", data, "--seed", "0", "-o", out, "--json", summary])
    assert code == 0, err
    document = json.loads(summary.read_text())
    expected = deadrelu.revive_model(deadrelu.load_model(str(model_path)), str(data), seed=0).to_dict()
    assert {key: document[key] for key in expected} == json.loads(json.dumps(expected))
    assert expected["revived"] == {"h1": [0, 2, 4], "h2": [7], "h3": [1, 5]} and expected["check"]["passed"]
    assert document["schema"] == "deadrelu/revive@2" and document["tool"]["name"] == "deadrelu"
    assert document["model"]["path"] == str(model_path) and document["output"] == {"path": str(out), "format": "keras"}
    # What only the command adds: the rescan of the revived model.
    assert set(document) == {"schema", "tool", "model", "output", *expected, "summary_after", "dead_after"}
    assert document["summary_after"]["dead"] == 0 and document["dead_after"] == {"h1": 0, "h2": 0, "h3": 0}
    # The terminal shows the library's view: the same table a notebook shows, with "dead after".
    assert "three_sites: 6 dead units revived (ReDo) in 3 sites, 0 sites skipped" in stdout
    assert "dead after" in stdout and "dead units: 6 of 46 (13.0%) → 0 (0.0%); 6 revived" in stdout


def test_revive_outputs_near_1e3_pass_the_scaled_check(tmp_path, run_cli):
    """BatchNormalization holds a revived channel at its old constant, to float rounding: 1 ulp of an
    output near 5e3 is 5e-4, which an absolute 1e-4 would fail; 1e-5 × the output scale does not."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu", name="h"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    kernel, bias = model.get_layer("h").get_weights()
    bias[:] = 1.0
    bias[[1, 4]] = -100.0
    model.get_layer("h").set_weights([np.abs(kernel), bias])
    rng = np.random.default_rng(0)
    model.get_layer("bn").set_weights(
        [rng.uniform(*bounds, 8).astype(np.float32) for bounds in ((0.5, 2), (-3, 3), (-3, 3), (0.1, 3))]
    )
    kernel, bias = model.get_layer("out").get_weights()
    model.get_layer("out").set_weights([kernel * 1000, bias])  # outputs in the thousands
    model.save(tmp_path / "big.keras")
    np.savez(tmp_path / "x.npz", x=rng.uniform(0, 1, (64, 6)).astype(np.float32))
    summary = tmp_path / "r.json"
    argv = ["revive", tmp_path / "big.keras", "--data", tmp_path / "x.npz", "--seed", "0", "--json", summary]
    code, _out, err = run_cli(argv)
    assert code == 0, err
    check = json.loads(summary.read_text())["check"]
    assert check["scale"] > 1e3 and check["passed"] and check["limit"] == pytest.approx(1e-5 * check["scale"])
    assert 1e-4 < check["max_abs_diff"] <= check["limit"]


def test_revive_failed_check_raises_output_check_error_and_exits_4_writing_nothing(
    revive_files, tmp_path, run_cli, monkeypatch
):
    import deadrelu
    import deadrelu.fixes.revive as revive_module
    from deadrelu.errors import OutputCheckError
    from deadrelu.fixes.check import OutputCheck

    model_path = revive_files / "three.keras"
    out, summary = tmp_path / "revived.keras", tmp_path / "revive.json"
    report = tmp_path / "scan.json"
    assert run_cli(["scan", model_path, "--data", revive_files / "x.npz", "--json", report, "--quiet"])[0] == 0
    # A real failure: the units of a report made on x fire on 400·x.
    argv = ["revive", model_path, "--report", report, "--data", revive_files / "x400.npz", "-o", out, "--json", summary]
    code, stdout, err = run_cli(argv)
    assert code == 4, err
    assert "not all dead on this data" in err and "nothing was written" in err
    assert not out.exists() and not summary.exists() and "wrote" not in stdout
    # An injected one, on the very data the units were found dead on: deadrelu's bug, said so.
    bad = OutputCheck(max_abs_diff=0.5, samples=40, scale=1.0)
    monkeypatch.setattr(revive_module, "compare_outputs", lambda *args, **kwargs: bad)
    with pytest.raises(OutputCheckError) as raised:
        deadrelu.revive_model(deadrelu.load_model(str(model_path)), revive_files / "x.npz", seed=0)
    assert raised.value.cause == "deadrelu" and raised.value.check is bad
    code, stdout, err = run_cli(["revive", model_path, "--data", revive_files / "x.npz", "-o", out, "--json", summary])
    assert code == 4 and "a bug in deadrelu" in err and "max |Δ| = 0.5 on 40 samples" in err
    assert not out.exists() and not summary.exists()


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--layers", "h[12]"], {"h1": [0, 2, 4], "h2": [7]}),
        (["--only", "flagged"], {"h1": [0, 2, 4], "h3": [1, 5]}),
        (["--site", "h2", "--site", "h3"], {"h2": [7], "h3": [1, 5]}),
        (["--site", "h3", "--only", "flagged", "--layers", "^h"], {"h3": [1, 5]}),
    ],
)
def test_revive_selection_flags_choose_exactly_these_sites(revive_files, tmp_path, run_cli, flags, expected):
    model_path, data = revive_files / "three.keras", revive_files / "x.npz"
    summary = tmp_path / "revive.json"
    argv = ["revive", model_path, "--data", data, "-o", tmp_path / "r.keras", "--json", summary, *flags]
    code, stdout, err = run_cli(argv)
    assert code == 0, err
    document = json.loads(summary.read_text())
    assert document["revived"] == expected and document["skipped"] == {}
    left = {"h1": 3, "h2": 1, "h3": 2}
    assert document["dead_after"] == {path: 0 if path in expected else dead for path, dead in left.items()}
    assert stdout.count("not selected") == 3 - len(expected)

"""Runs deadrelu's sample commands under older TensorFlow/Keras releases it declares support for.

    python tests/compat/run_compat.py                    # the floor and a middle release, every check
    python tests/compat/run_compat.py --quick            # the floor only: scan, patch, revive, prune (CI)
    python tests/compat/run_compat.py --combo all        # every combination listed in COMBOS

`pyproject.toml` declares `tensorflow>=2.16` and `keras>=3.3`, but the test suite runs on one (the
newest) release. Before each release, this script checks the others as a user would meet them:
each combination gets a virtual environment under `~/.cache/deadrelu-compat/<name>-py<X.Y>` (`--cache`;
built from PyPI on first use, then reused), this checkout is installed into it with the pinned
TensorFlow and Keras (`pip install -e`, dependencies resolved against the pins), and each check
runs as a new process there, from the checkout:

* `scan` of `samples/dying_mlp.keras` and `.h5` with `samples/probe.npz` (the README's first
  command; the report must say 104 of 192 units dead, as the README does), `inspect`, `patch`,
  `revive` and `prune` of the sample;
* `monitor`: `deadrelu.DeadReluMonitor` reviving units during a short `fit`;
* `newer .keras`: a `.keras` and an `.h5` written by the Keras running this script (when it is newer
  than the combination's) load there with the same outputs (`deadrelu.io.legacy.newer_keras`);
* `legacy .h5`: every whole-model `.h5` in `../shared/models` (Keras 2.2 to 3.1 files) loads and
  runs, when that folder exists.

Prints a Markdown table of pass / FAIL / skip per check and combination (the one in
docs/compatibility.md) and the reasons below it; exits 1 when a check failed. Needs the package
registry, a Python the TensorFlow releases have wheels for (3.10 to 3.12; `--python`), and about
2 GB of disk per combination.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED_MODELS = ROOT.parent / "shared" / "models"
SAMPLES = ROOT / "samples"


@dataclasses.dataclass(frozen=True)
class Combo:
    """One TensorFlow / Keras combination: its cache folder name and the pins pip installs."""

    name: str
    pins: tuple[str, ...]

    @property
    def label(self) -> str:
        tf, keras = (p.split("==")[1] for p in self.pins[:2])
        return f"TF {tf} / Keras {keras}"


COMBOS = {
    # The floor pyproject.toml declares. TensorFlow 2.16 is built against NumPy 1.x.
    "floor": Combo("tf2.16.2-keras3.3.3", ("tensorflow==2.16.2", "keras==3.3.3", "numpy<2")),
    "tf2.17": Combo("tf2.17.1-keras3.5.0", ("tensorflow==2.17.1", "keras==3.5.0")),
    "middle": Combo("tf2.18.1-keras3.8.0", ("tensorflow==2.18.1", "keras==3.8.0")),
    "tf2.19": Combo("tf2.19.1-keras3.10.0", ("tensorflow==2.19.1", "keras==3.10.0")),
}
DEFAULT = ("floor", "middle")
QUICK_CHECKS = ("scan .keras", "patch", "revive", "prune", "newer .keras", "untrusted files")


# ----------------------------------------------------------------------------------------------
# Environments


def environment(combo: Combo, cache: Path, python: str, log) -> Path:
    """The combination's virtual environment with this checkout installed; built when missing.

    Returns:
        Its folder.
    """
    version = _python_version(python)
    folder = cache / f"{combo.name}-py{'.'.join(version.split('.')[:2])}"
    marker = folder / "deadrelu-compat.json"
    wanted = {"pins": list(combo.pins), "python": version}
    if not (marker.exists() and json.loads(marker.read_text()) == wanted):
        shutil.rmtree(folder, ignore_errors=True)
        log(f"{combo.name}: building {folder} ({', '.join(combo.pins)})")
        _run([python, "-m", "venv", str(folder)])
    # Every run: the checkout (its path changes between CI clones) with the pins, so pip resolves
    # deadrelu's own requirements against them as a user's install would.
    try:
        tf_minor = ".".join(combo.pins[0].split("==")[1].split(".")[:2])
        # pytest and the matching tf_keras run tests/test_untrusted_files.py there ("untrusted files").
        extras = ["pytest", f"tf_keras~={tf_minor}.0"]
        _run([str(folder / "bin" / "python"), "-m", "pip", "install", "-q", *combo.pins, *extras, "-e", str(ROOT)])
    except subprocess.CalledProcessError:
        shutil.rmtree(folder, ignore_errors=True)  # half-built: build anew next time
        raise
    marker.write_text(json.dumps(wanted))
    return folder


def _python_version(python: str) -> str:
    return subprocess.run(
        [python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True, text=True, check=True
    ).stdout.strip()


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, env=_env(None))
    if result.returncode:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
        raise subprocess.CalledProcessError(result.returncode, argv)


def _env(venv: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg", KERAS_BACKEND="tensorflow", PIP_DISABLE_PIP_VERSION_CHECK="1"
    )
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(venv)
    return env


# ----------------------------------------------------------------------------------------------
# Checks: each returns (verdict "pass" / "FAIL" / "skip", reason)


@dataclasses.dataclass
class Context:
    venv: Path
    out: Path
    newer: Path | None  # folder of the files written by this script's Keras, or None
    newer_reason: str


def _cli(ctx: Context, args: list[str], expect: str, timeout: int = 600) -> tuple[str, str]:
    """Runs `deadrelu ARGS` in the environment; passes on exit 0 with `expect` in its output."""
    argv = [str(ctx.venv / "bin" / "deadrelu"), *args]
    return _process(ctx, argv, expect, timeout)


def _python(ctx: Context, code: str, expect: str, timeout: int = 600) -> tuple[str, str]:
    return _process(ctx, [str(ctx.venv / "bin" / "python"), "-c", code], expect, timeout)


def _process(ctx: Context, argv: list[str], expect: str, timeout: int) -> tuple[str, str]:
    try:
        env, stdin = _env(ctx.venv), subprocess.DEVNULL
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout, stdin=stdin)
    except subprocess.TimeoutExpired:
        return "FAIL", f"timed out after {timeout} s"
    output = result.stdout + result.stderr
    if result.returncode == 0 and expect in output:
        return "pass", ""
    lines = [line for line in result.stderr.splitlines() if line.strip()] or output.splitlines() or [""]
    why = f"exit {result.returncode}" if result.returncode else f"no {expect!r} in the output"
    return "FAIL", f"{why}: {lines[-1][:300]}"


def check_scan_keras(ctx):
    return _cli(ctx, ["scan", "samples/dying_mlp.keras", "--data", "samples/probe.npz"], "104 of 192 units dead")


def check_scan_h5(ctx):
    return _cli(ctx, ["scan", "samples/dying_mlp.h5", "--data", "samples/probe.npz"], "104 of 192 units dead")


def check_inspect(ctx):
    return _cli(ctx, ["inspect", "samples/healthy_cnn.keras"], "3 ReLU sites")


def check_patch(ctx):
    out = ctx.out / "patched.keras"
    return _cli(ctx, ["patch", "samples/dying_mlp.keras", "--to", "leaky", "-o", str(out)], f"wrote {out}")


def check_revive(ctx):
    args = ["revive", "samples/dying_mlp.keras", "--data", "samples/probe.npz", "-o", str(ctx.out / "revived.keras")]
    return _cli(ctx, args, "104 revived")


def check_prune(ctx):
    args = ["prune", "samples/dying_mlp.keras", "--data", "samples/probe.npz", "-o", str(ctx.out / "pruned.keras")]
    return _cli(ctx, args, "25,418 → 6,419")


_MONITOR = """
import numpy as np, keras, deadrelu
probe = np.load("samples/probe.npz")
x, y = probe["x"], probe["y"]
model = deadrelu.load_model("samples/dying_mlp.keras", compile=False)
model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
monitor = deadrelu.DeadReluMonitor(x[:256], on_dead="revive", max_dead_fraction=0.2, seed=0, verbose=0)
history = model.fit(x, y, epochs=2, batch_size=64, callbacks=[monitor], verbose=0)
fractions = history.history["deadrelu/dead_fraction"]
assert len(fractions) == 2 and len(monitor.timeline) == 2, (fractions, monitor.timeline)
print("monitor ok", fractions)
"""


def check_monitor(ctx):
    return _python(ctx, _MONITOR, "monitor ok")


_NEWER = """
import numpy as np
from deadrelu.io import loading
folder = {folder!r}
data = np.load(folder + "/expected.npz")
for name in ("functional.keras", "functional.h5", "dying_mlp.keras"):
    loaded = loading.load(folder + "/" + name)
    key = name.split(".")[0]
    np.testing.assert_allclose(np.asarray(loaded.model(data["x_" + key])), data["y_" + key], atol=1e-5, rtol=0)
    print(name, "same outputs;", "; ".join(loaded.repairs) or "no repairs")
print("newer ok")
"""


def check_newer(ctx):
    if ctx.newer is None:
        return "skip", ctx.newer_reason
    version = subprocess.run(
        [str(ctx.venv / "bin" / "python"), "-c", "import keras; print(keras.__version__)"],
        capture_output=True,
        text=True,
        env=_env(ctx.venv),
    ).stdout.strip()
    written = (ctx.newer / "keras_version").read_text()
    if _release(written) <= _release(version):
        return "skip", f"the files are from Keras {written}, not newer than {version}"
    return _python(ctx, _NEWER.format(folder=str(ctx.newer)), "newer ok")


_LEGACY = """
import glob, os, numpy as np, deadrelu
from deadrelu.errors import ModelLoadError
loaded = 0
for path in sorted(glob.glob({folder!r} + "/*.h5")):
    try:
        model = deadrelu.load_model(path, compile=False)
    except ModelLoadError as exc:
        if "holds only weights" in str(exc):
            continue  # a weights-only file needs its architecture: not a whole model
        raise
    inputs = [np.zeros((2, *t.shape[1:]), "float32") for t in model.inputs]
    model(inputs if len(inputs) > 1 else inputs[0])
    loaded += 1
print(f"legacy ok: {{loaded}} files")
"""


def check_legacy(ctx):
    if not SHARED_MODELS.is_dir():
        return "skip", f"{SHARED_MODELS} is absent"
    return _python(ctx, _LEGACY.format(folder=str(SHARED_MODELS)), "legacy ok")


def check_untrusted(ctx):
    """The malicious-file suite on this Keras: its own guards (older releases lack several) are not
    what keeps the payloads from running, deadrelu's are."""
    argv = [str(ctx.venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    return _process(ctx, [*argv, "tests/test_untrusted_files.py"], " passed", timeout=900)


CHECKS = {
    "scan .keras": check_scan_keras,
    "scan .h5": check_scan_h5,
    "inspect": check_inspect,
    "patch": check_patch,
    "revive": check_revive,
    "prune": check_prune,
    "monitor": check_monitor,
    "newer .keras": check_newer,
    "legacy .h5": check_legacy,
    "untrusted files": check_untrusted,
}
DESCRIPTIONS = {
    "scan .keras": "`deadrelu scan samples/dying_mlp.keras --data samples/probe.npz` (104 of 192 dead)",
    "scan .h5": "`deadrelu scan samples/dying_mlp.h5 --data samples/probe.npz` (104 of 192 dead)",
    "inspect": "`deadrelu inspect samples/healthy_cnn.keras`",
    "patch": "`deadrelu patch samples/dying_mlp.keras --to leaky -o …`",
    "revive": "`deadrelu revive samples/dying_mlp.keras --data samples/probe.npz -o …` (104 revived)",
    "prune": "`deadrelu prune samples/dying_mlp.keras --data samples/probe.npz -o …` (25,418 → 6,419)",
    "monitor": '`DeadReluMonitor(on_dead="revive")` during a 2-epoch `fit`',
    "newer .keras": "`.keras` and `.h5` saved by a newer Keras load, same outputs",
    "legacy .h5": "every whole-model `.h5` in `../shared/models` loads and runs",
    "untrusted files": "`pytest tests/test_untrusted_files.py`: no payload runs or leaks (docs/cli.md, Security)",
}


# ----------------------------------------------------------------------------------------------
# Files written by this script's (newer) Keras


def write_newer_files(folder: Path) -> str:
    """Saves a Functional model (nested Sequential, TimeDistributed) as `.keras` and `.h5`, and the
    sample MLP as `.keras`, with this process's Keras; returns its version."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    import deadrelu

    L = keras.layers
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((24,)), L.Dense(8, activation="relu", name="inner_dense")], name="inner")
    inputs = keras.Input((4, 6), name="x")
    h = L.TimeDistributed(L.Dense(6, activation="relu", name="td_dense"), name="td")(inputs)
    outputs = L.Dense(3, name="head")(inner(L.Flatten(name="flat")(h)))
    functional = keras.Model(inputs, outputs, name="functional")
    functional.compile(optimizer="adam", loss="mse")
    mlp = deadrelu.load_model(str(SAMPLES / "dying_mlp.keras"))
    rng = np.random.default_rng(0)
    arrays = {"x_functional": rng.normal(size=(8, 4, 6)).astype("float32")}
    arrays["x_dying_mlp"] = np.load(SAMPLES / "probe.npz")["x"][:64]
    arrays["y_functional"] = np.asarray(functional(arrays["x_functional"]))
    arrays["y_dying_mlp"] = np.asarray(mlp(arrays["x_dying_mlp"]))
    functional.save(folder / "functional.keras")
    functional.save(folder / "functional.h5")
    mlp.save(folder / "dying_mlp.keras")
    np.savez(folder / "expected.npz", **arrays)
    (folder / "keras_version").write_text(keras.__version__)
    return keras.__version__


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:3] if p.isdigit())


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--combo", action="append", help=f"one of {', '.join(COMBOS)}, or all (repeatable)")
    parser.add_argument("--check", action="append", choices=list(CHECKS), help="run only these checks (repeatable)")
    parser.add_argument("--quick", action="store_true", help=f"the floor only, checks: {', '.join(QUICK_CHECKS)}")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "deadrelu-compat"))
    parser.add_argument("--python", default=sys.executable, help="the Python the environments are built with")
    args = parser.parse_args(argv)
    names = ["floor"] if args.quick else args.combo or list(DEFAULT)
    names = list(COMBOS) if "all" in names else names
    unknown = [n for n in names if n not in COMBOS]
    if unknown:
        parser.error(f"unknown --combo {', '.join(unknown)}; choose from {', '.join(COMBOS)} or all")
    checks = args.check or (list(QUICK_CHECKS) if args.quick else list(CHECKS))
    cache = Path(args.cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {message}", flush=True)

    results: dict[tuple[str, str], tuple[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="deadrelu-compat-") as tmp:
        newer, newer_reason = None, ""
        if "newer .keras" in checks:
            try:
                folder = Path(tmp) / "newer"
                folder.mkdir()
                log(f"files saved by this Python's Keras {write_newer_files(folder)}: {folder}")
                newer = folder
            except ImportError as exc:
                newer_reason = f"this Python cannot save them ({exc})"
        for name in names:
            combo = COMBOS[name]
            try:
                venv = environment(combo, cache, args.python, log)
            except subprocess.CalledProcessError as exc:
                for check in checks:
                    results[check, name] = ("FAIL", f"environment not built: {' '.join(exc.cmd)[:200]}")
                continue
            log(f"{combo.name}: environment ready")
            out = Path(tmp) / name
            out.mkdir()
            ctx = Context(venv=venv, out=out, newer=newer, newer_reason=newer_reason)
            for check in checks:
                began = time.monotonic()
                results[check, name] = CHECKS[check](ctx)
                log(f"{combo.name}: {check}: {results[check, name][0]} ({time.monotonic() - began:.1f} s)")
    print()
    print(table(names, checks, results))
    failed = [(c, n, why) for (c, n), (verdict, why) in results.items() if verdict != "pass" and why]
    for check, name, why in failed:
        print(f"- {check} on {COMBOS[name].label}: {results[check, name][0]}: {why}")
    verdicts = [verdict for verdict, _ in results.values()]
    print(f"\n{len(names)} combination(s) in {time.monotonic() - start:.0f} s")
    # The closing line CI logs read: "compat: N passed, N failed, N skipped".
    print(f"compat: {verdicts.count('pass')} passed, {verdicts.count('FAIL')} failed, {verdicts.count('skip')} skipped")
    return 1 if "FAIL" in verdicts else 0


def table(names: list[str], checks: list[str], results: dict) -> str:
    """The Markdown table: one row per check, one column per combination."""
    head = ["check", *(COMBOS[n].label for n in names)]
    rows = [head, ["---"] * len(head)]
    for check in checks:
        rows.append([DESCRIPTIONS[check], *(results[check, n][0] for n in names)])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


if __name__ == "__main__":
    sys.exit(main())

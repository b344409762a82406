"""Every real model on TensorFlow, JAX and PyTorch: the same report? (a script, not a pytest test).

For each model file in `../shared/models` (skipped cleanly when the folder is absent; input shape,
kind of data and load options from `tests/test_loading.py`'s `REAL` table), one subprocess per
backend (`KERAS_BACKEND=tensorflow|jax|torch`, a timeout per run) runs

    deadrelu scan MODEL --data X [--labels Y --gradients] --json out.json --quiet

on the model's data: MNIST models on the first `--samples` MNIST test images (`mnist.npz:x_test`,
`--rescale 1/255`, labels `y_test`; the flattened MLP and the autoencoder on a temporary `.npz` of
the same images, the autoencoder's labels being its inputs), the others on a small `.npy` of
synthetic inputs written to a temporary folder (as test_loading does), with random labels where
the model's stored loss is a classification loss and its inputs as labels where it is an
autoencoder's. Each JAX and PyTorch report is then compared with TensorFlow's: site paths, units,
kinds, the dead/dying/saturated lists and `fires` exactly; activation statistics (`mean_abs`,
`active_rate`, `max_output`, ...) to 1e-5 relative, per-unit arrays relative to the array's
largest value; gradient statistics (`grad_*`, `layer_gradients`, `loss`) to 1e-4.

With `--fixes`, `deadrelu revive` and `deadrelu prune` also run on each backend on three models
(`-o out.keras`), and a child on the same backend loads input and output with `deadrelu.load_model`
and checks that their predictions agree on the data to 1e-5.

Prints markdown tables: model × backend → same / differs (what) / fails (exit code + the one-line
error), with the wall seconds of each run.

Usage (from the repository root):
    python tests/bench/sweep_backends.py                        # every model, every backend
    python tests/bench/sweep_backends.py --fixes                # and revive / prune on three models
    python tests/bench/sweep_backends.py --models tiny_ic_resnet8.h5 --backends tensorflow,jax
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported anywhere

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests"))
from paths import SHARED, synthetic_inputs  # noqa: E402

MODELS = SHARED / "models"
MNIST = SHARED / "data" / "mnist.npz"
BACKENDS = ("tensorflow", "jax", "torch")
RTOL = 1e-5
GRAD_RTOL = 1e-4
# Keys whose values may differ by backend: the backend named in `tool`.
IGNORED_TOP = {"tool"}
EXACT_KEYS = {"path", "layer", "kind", "units", "positions", "calls", "dead", "dying", "saturated", "fires"}

# file -> (samples, labels): "classes" = sparse labels of the model's classes, "inputs" = the
# inputs themselves (an autoencoder), None = no loss (no --gradients). Shapes/kinds: test_loading.
LABELS = {
    "moonflower_mnist_cnn_k311.keras": "classes",
    "moonflower_mnist_cnn_k311.h5": "classes",
    "dd_mnist_al22_trained_stuck.h5": "classes",
    "at_dyingrelu_mlp34.h5": "classes",
    "eriks_supervised_clf_tfkeras213.keras": "classes",
    "ml3arn_mnist_ae_nested.h5": "inputs",
    "tiny_ic_resnet8.h5": "classes",
    "st_mobilenetv2_035_128_flowers.h5": "classes",
    "st_yamnet256_esc10.h5": "classes",
    "lucie_ae_nested_k35.keras": "inputs",
    "koustav_ae_hdf5_misnamed.keras": "inputs",
    "dl_trafficsign_buggy.h5": None,  # weights only, no training configuration: no loss
}
CLASSES = {"tiny_ic_resnet8.h5": 10, "st_mobilenetv2_035_128_flowers.h5": 5, "st_yamnet256_esc10.h5": 10}
SYNTHETIC_SAMPLES = {
    "lucie_ae_nested_k35.keras": 4,
    "st_mobilenetv2_035_128_flowers.h5": 64,
    "st_yamnet256_esc10.h5": 64,
}
FIX_MODELS = ["moonflower_mnist_cnn_k311.keras", "dd_mnist_al22_trained_stuck.h5", "at_dyingrelu_mlp34.h5"]


def real_table() -> dict:
    """test_loading's REAL table: file -> (input shape, kind of inputs, load options)."""
    from test_loading import REAL  # imports deadrelu (and Keras on the default backend)

    return REAL


def model_files() -> list[str]:
    return sorted(p.name for p in MODELS.iterdir() if p.suffix in (".h5", ".keras", ".hdf5") or p.is_dir())


def mnist_images(shape: tuple, n: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(MNIST) as f:
        x, y = f["x_test"][:n], f["y_test"][:n]
    return (x.reshape((n, *shape)) / 255.0).astype("float32"), y.astype("int64")


def scan_arguments(name: str, real: dict, folder: Path, samples: int) -> list[str]:
    """The `deadrelu scan` arguments after MODEL for one file (data written into `folder`)."""
    shape, kind, options = real.get(name, (None, "normal", {}))
    labels = LABELS.get(name)
    args = []
    if options.get("architecture"):
        args += ["--architecture", str(options["architecture"])]
    if options.get("unsafe"):
        args.append("--unsafe")
    if kind == "mnist" and MNIST.exists():
        if shape in ((28, 28, 1), (28, 28)) and labels == "classes":
            source = f"{MNIST}:x_test"
            args += ["--data", source, "--labels", f"{MNIST}:y_test", "--samples", str(samples), "--rescale", "1/255"]
            return args + ["--gradients"]
        x, y = mnist_images(shape, samples)
        if labels == "inputs":
            y = x
        path = folder / f"{name}.npz"
        np.savez(path, x=x, y=y)
        args += ["--data", f"{path}:x"]
        return args + (["--labels", f"{path}:y", "--gradients"] if labels else [])
    if shape is None:
        raise SystemExit(f"{name}: not in test_loading's REAL table; add its input shape there")
    n = SYNTHETIC_SAMPLES.get(name, 256)
    x = synthetic_inputs(shape, kind, n)
    path = folder / f"{name}.npz"
    if labels == "classes":
        y = np.random.default_rng(1).integers(0, CLASSES[name], size=n)
    elif labels == "inputs":
        y = x
    else:
        y = None
    np.savez(path, **({"x": x} if y is None else {"x": x, "y": y}))
    args += ["--data", f"{path}:x"]
    return args + (["--labels", f"{path}:y", "--gradients"] if labels else [])


def run(backend: str, command: list[str], timeout: float) -> dict:
    """Runs one command with KERAS_BACKEND=backend: exit code, wall seconds, last error line."""
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    start = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"code": None, "seconds": time.perf_counter() - start, "error": f"timeout after {timeout:.0f} s"}
    seconds = time.perf_counter() - start
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("deadrelu: error")]
    error = errors[-1] if errors else (lines[-1] if lines else "")
    return {"code": done.returncode, "seconds": seconds, "error": error, "stderr": done.stderr, "stdout": done.stdout}


def deadrelu_command(*args) -> list[str]:
    return [sys.executable, "-m", "deadrelu", *[str(a) for a in args]]


# -- comparing reports ---------------------------------------------------------------------------


def differences(a, b, path: str = "", scale: float = 0.0) -> list[tuple[str, str, float | None]]:
    """(where, what kind, relative difference or None) for each disagreement of report b with a."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - (IGNORED_TOP if not path else set())
        return [d for k in sorted(keys) for d in differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [(path, "length", None)]
        numbers = [abs(v) for v in a + b if isinstance(v, float)]
        scale = max(numbers, default=0.0)  # per-unit numbers: relative to the array's largest
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]", scale)]
    key = _key(path)
    if (isinstance(a, float) or isinstance(b, float)) and key not in EXACT_KEYS:
        rtol = GRAD_RTOL if _is_gradient(path) else RTOL
        if a is None or b is None:
            return [(path, "missing", None)]
        reference = max(abs(a), abs(b), scale)
        if abs(a - b) > rtol * reference + 1e-12:
            return [(path, "float", abs(a - b) / reference if reference else float("inf"))]
        return []
    return [] if a == b else [(path, "exact", None)]


def _key(path: str) -> str:
    return path.rsplit("/", 1)[-1].split("[", 1)[0]


def _is_gradient(path: str) -> bool:
    return "grad" in path or path.startswith(("/loss", "/layer_gradients"))


def describe(found: list, reference: dict, other: dict) -> str:
    """One short phrase for a list of differences: which statistics at which sites, how far apart
    (`fires`: how many units, by how many entries at most)."""
    groups: dict[str, dict] = {}
    for where, _, rel in found:
        match = re.match(r"/sites\[(\d+)\]/(\w+)(?:\[(\d+)\])?", where)
        if match:
            site, stat = reference["sites"][int(match[1])]["path"], match[2]
        else:
            site, stat = "", "/".join(p.split("[")[0] for p in where.split("/")[1:3])
        group = groups.setdefault(stat, {"sites": [], "rel": 0.0, "count": 0, "delta": 0})
        group["count"] += 1
        if site and site not in group["sites"]:
            group["sites"].append(site)
        if rel is not None:
            group["rel"] = max(group["rel"], rel)
        if stat == "fires" and match and match[3] is not None:
            i, j = int(match[1]), int(match[3])
            group["delta"] = max(group["delta"], abs(reference["sites"][i]["fires"][j] - other["sites"][i]["fires"][j]))
    phrases = []
    groups.pop("layer_gradients/ratio", None)  # grad_norm / weight_norm: says what grad_norm says
    for stat, group in groups.items():
        where = ""
        if group["sites"]:
            more = len(group["sites"]) - 1
            where = f" at `{group['sites'][0]}`" + (f" +{more} sites" if more > 0 else "")
        if stat == "fires":
            phrases.append(f"fires ±{group['delta']} in {group['count']} units{where}")
        elif group["rel"]:
            phrases.append(f"{stat} rel {group['rel']:.1e}{where}")
        else:
            phrases.append(f"{stat}{where}")
    return "; ".join(phrases)


# -- the outputs check of revive / prune (a child on the backend under test) ---------------------


def check_outputs(model_in: str, model_out: str, data: str) -> None:
    import deadrelu

    x = np.load(data)
    before = deadrelu.load_model(model_in)
    after = deadrelu.load_model(model_out)
    a = np.asarray(before.predict(x, batch_size=256, verbose=0), np.float64)
    b = np.asarray(after.predict(x, batch_size=256, verbose=0), np.float64)
    difference = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf")
    params = (before.count_params(), after.count_params())
    print("@@check " + json.dumps({"max_diff": difference, "params": params}))


def fix_runs(args, real: dict, folder: Path, backends: list[str]) -> list[dict]:
    rows = []
    for name in FIX_MODELS:
        if not (MODELS / name).exists():
            continue
        shape = real[name][0]
        x, _ = mnist_images(shape, args.samples)
        data = folder / f"fix_{name}.npy"
        np.save(data, x)
        for backend in backends:
            for command in ("revive", "prune"):
                out = folder / f"{command}_{backend}_{Path(name).stem}.keras"
                result = run(
                    backend,
                    deadrelu_command(command, MODELS / name, "--data", data, "-o", out, "--quiet"),
                    args.timeout,
                )
                row = {"model": name, "backend": backend, "command": command, **result}
                if result["code"] == 0:
                    check = run(
                        backend,
                        [sys.executable, __file__, "--check", str(MODELS / name), str(out), str(data)],
                        args.timeout,
                    )
                    tagged = [line for line in check.get("stdout", "").splitlines() if line.startswith("@@check ")]
                    if tagged:
                        row["check"] = json.loads(tagged[-1][len("@@check ") :])
                    else:
                        row["check"] = {"error": check["error"]}
                rows.append(row)
                print(_fix_cell(row), f"— {name} {backend} {command}", file=sys.stderr, flush=True)
    return rows


def _fix_cell(row: dict) -> str:
    if row["code"] != 0:
        return f"fails (exit {row['code']}: {row['error']})"
    check = row.get("check", {})
    if "error" in check:
        return f"check fails: {check['error']}"
    difference = check["max_diff"]
    verdict = "ok" if difference <= 1e-5 else "**outputs differ**"
    params = check["params"]
    return f"{verdict}, max \\|Δ\\| {difference:.1e}, params {params[0]:,} → {params[1]:,}"


# -- main ------------------------------------------------------------------------------------------


def cell(result: dict, reference: dict | None, found: list | None) -> str:
    seconds = f"{result['seconds']:.1f} s"
    if result["code"] != 0:
        return f"fails (exit {result['code']}: {result['error']}) · {seconds}"
    if found is None:
        return f"ran · {seconds}"
    if not found:
        return f"same · {seconds}"
    return f"**differs** ({describe(found, reference, result['report'])}) · {seconds}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", help="model files (default: every file in ../shared/models)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default: all installed)")
    p.add_argument("--samples", type=int, default=500, help="MNIST test images per MNIST model (default 500)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per run (default 900)")
    p.add_argument("--fixes", action="store_true", help="also revive / prune three models on each backend")
    p.add_argument("--keep", help="keep the reports and data in this folder")
    p.add_argument("--check", nargs=3, metavar=("IN", "OUT", "DATA"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.check:
        check_outputs(*args.check)
        return
    if not MODELS.is_dir():
        print(f"skipped: {MODELS} is absent (the real models live beside the repository only)")
        return
    backends = [b for b in args.backends.split(",") if b == "tensorflow" or importlib.util.find_spec(b)]
    real = real_table()
    names = args.models or model_files()
    folder_context = tempfile.TemporaryDirectory(prefix="sweep_backends_") if not args.keep else None
    folder = Path(args.keep or folder_context.name)
    folder.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for name in names:
        extra = scan_arguments(name, real, folder, args.samples)
        results[name] = {}
        for backend in backends:
            out = folder / f"{Path(name).stem}.{backend}.json"
            out.unlink(missing_ok=True)
            command = deadrelu_command("scan", MODELS / name, *extra, "--json", out, "--quiet")
            result = run(backend, command, args.timeout)
            if result["code"] == 0:
                result["report"] = json.loads(out.read_text())
            results[name][backend] = result
            print(
                f"{name} {backend}: exit {result['code']} {result['seconds']:.1f}s {result['error'][:200]}",
                file=sys.stderr,
                flush=True,
            )

    print(f"\n`python tests/bench/sweep_backends.py` — {len(names)} models, backends {', '.join(backends)}\n")
    print("| model | gradients | " + " | ".join(backends) + " |")
    print("|---|:-:|" + "---|" * len(backends))
    for name in names:
        runs = results[name]
        reference = runs.get("tensorflow", {}).get("report")
        cells = []
        for backend in backends:
            result = runs[backend]
            found = None
            if backend != "tensorflow" and reference is not None and result.get("report") is not None:
                found = differences(reference, result["report"])
            cells.append(cell(result, reference, found))
        gradients = "✓" if LABELS.get(name) else "–"
        print(f"| `{name}` | {gradients} | " + " | ".join(cells) + " |")

    if args.fixes:
        rows = fix_runs(args, real, folder, backends)
        print("\n| model | command | " + " | ".join(backends) + " |")
        print("|---|---|" + "---|" * len(backends))
        for name in FIX_MODELS:
            for command in ("revive", "prune"):
                chosen = {r["backend"]: r for r in rows if r["model"] == name and r["command"] == command}
                if not chosen:
                    continue
                cells = [f"{_fix_cell(chosen[b])} · {chosen[b]['seconds']:.1f} s" for b in backends if b in chosen]
                print(f"| `{name}` | {command} | " + " | ".join(cells) + " |")
    if folder_context is not None:
        folder_context.cleanup()


if __name__ == "__main__":
    main()

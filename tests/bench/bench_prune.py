"""Benchmark of `deadrelu.prune_model` (a script, not a pytest test): what removing dead units saves.

In one run, for each model: scan it on its data, prune it (`deadrelu.prune_model(model, report,
data=x)`), and measure side by side

  - parameters before → after;
  - the size of both models saved as `.keras` files;
  - the largest output difference on the data (the check prune makes before it writes anything);
  - `predict` time, pruned / original: both warmed up once (untimed), then timed in interleaved
    rounds, back to back with alternating order; the paired median (median over rounds of the
    ratio within one round) is reported;
  - per site, why dead units were kept (a summary of the reasons).

Models:
  - `samples/dying_mlp.keras` on `samples/probe.npz` (54 % dead);
  - the 13 real model files in `../shared/models` (skipped cleanly when the folder is absent),
    loaded with `deadrelu.load_model`, on MNIST (`../shared/data/mnist.npz`, x/255) where the input
    fits, else on synthetic inputs in the range the file's manifest gives;
  - `keras.applications.VGG16(weights=None)` and `MobileNetV2(weights=None)` at random init, at a
    small input size, on synthetic images.

Usage (from the repository root):
    python tests/bench/bench_prune.py                  # everything
    python tests/bench/bench_prune.py --quick          # fewer samples and rounds
    python tests/bench/bench_prune.py dying_mlp vgg16  # only these (names as printed)
    python tests/bench/bench_prune.py --wait-idle 300  # on a shared machine: time at quiet moments

Timing small models measures Keras's per-call `predict` overhead more than their arithmetic, and on
a shared 2-core machine the ratio moves with the load (printed beside it): read it as "about the
same" unless it is far from 1.
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # before TensorFlow is imported anywhere

import argparse
import collections
import platform
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

MODELS = C.REPO.parent / "shared" / "models"
SAMPLE = C.REPO / "samples" / "dying_mlp.keras"
PROBE = C.REPO / "samples" / "probe.npz"

# file -> (input shape, inputs, samples, load options); inputs as in ../shared/models/MANIFEST.md.
REAL = {
    "moonflower_mnist_cnn_k311.keras": ((28, 28, 1), "mnist", 1000, {}),
    "moonflower_mnist_cnn_k311.h5": ((28, 28, 1), "mnist", 1000, {}),
    "dd_mnist_al22_trained_stuck.h5": ((28, 28, 1), "mnist", 1000, {}),
    "at_dyingrelu_mlp34.h5": ((784,), "mnist", 1000, {}),
    "tiny_ic_resnet8.h5": ((32, 32, 3), "pixels", 256, {}),
    "st_mobilenetv2_035_128_flowers.h5": ((128, 128, 3), "signed", 64, {}),
    "lucie_ae_nested_k35.keras": ((896, 896, 1), "unit", 4, {}),
    "ml3arn_mnist_ae_nested.h5": ((28, 28, 1), "mnist", 1000, {}),
    "st_yamnet256_esc10.h5": ((64, 96, 1), "normal", 128, {}),
    "eriks_supervised_clf_tfkeras213.keras": ((28, 28), "mnist", 1000, {}),
    "koustav_ae_hdf5_misnamed.keras": ((37,), "normal", 1000, {}),
    "dl_trafficsign_buggy.h5": (
        (32, 32, 3),
        "pixels",
        256,
        {"architecture": "dl_trafficsign_buggy.model.json", "unsafe": True},
    ),
}
APPLICATIONS = {
    "vgg16": ("VGG16", (64, 64, 3), "pixels", 32),
    "mobilenetv2": ("MobileNetV2", (96, 96, 3), "signed", 32),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("names", nargs="*", help="only these models (dying_mlp, a file name, vgg16, mobilenetv2)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved predict rounds (default 7; --quick 3)")
    p.add_argument("--quick", action="store_true", help="a quarter of the samples, 3 rounds")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each model's timing, wait up to this long for the machine's load to drop",
    )
    args = p.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 7)
    return args


def inputs(kind: str, shape: tuple, n: int, seed: int = C.SEED) -> tuple[np.ndarray, str]:
    """`n` inputs of `shape`: MNIST x/255 when asked and present, else synthetic in the kind's range."""
    rng = np.random.default_rng(seed)
    if kind == "mnist" and C.MNIST.exists():
        with np.load(C.MNIST) as archive:
            x = archive["x_test"][:n].astype(np.float32) / 255.0
        return x.reshape((n, *shape)), f"MNIST test x/255, {n}"
    if kind == "mnist":
        kind = "unit"
    low, high = {"pixels": (0, 255), "signed": (-1, 1), "unit": (0, 1)}.get(kind, (None, None))
    if low is None:
        return rng.normal(size=(n, *shape)).astype(np.float32), f"synthetic N(0, 1), {n}"
    return rng.uniform(low, high, (n, *shape)).astype(np.float32), f"synthetic U[{low}, {high}), {n}"


def cases(args) -> list[tuple[str, callable]]:
    """(name, loader) pairs; a loader returns (model, x, data description) or a reason to skip."""
    import deadrelu

    out = []

    def sample():
        with np.load(PROBE) as archive:
            x = archive["x"]
        return deadrelu.load_model(str(SAMPLE)), x, f"samples/probe.npz, {len(x)}"

    out.append(("dying_mlp", sample))
    for name, (shape, kind, n, options) in REAL.items():

        def real(name=name, shape=shape, kind=kind, n=n, options=options):
            path = MODELS / name
            if not path.exists():
                return f"{path} is absent"
            options = {k: str(MODELS / v) if k == "architecture" else v for k, v in options.items()}
            x, what = inputs(kind, shape, max(1, n // 4) if args.quick else n)
            return deadrelu.load_model(str(path), **options), x, what

        out.append((name, real))
    for name, (cls, shape, kind, n) in APPLICATIONS.items():

        def application(cls=cls, shape=shape, kind=kind, n=n):
            import keras

            keras.utils.set_random_seed(C.SEED)
            model = getattr(keras.applications, cls)(weights=None, input_shape=shape, classes=10)
            x, what = inputs(kind, shape, max(1, n // 4) if args.quick else n)
            return model, x, what

        out.append((name, application))
    if args.names:
        out = [case for case in out if case[0] in args.names]
    return out


def short_reason(text: str) -> str:
    """A reason without layer names and unit lists, so equal reasons count together."""
    text = re.sub(r"\d+ units? \[[^\]]*\]: ", "", text)
    text = re.sub(r"'[^']*'", "'…'", text)
    return text.split(";")[0][:110]


def run_case(name: str, loader, rounds: int, wait_idle: float = 0) -> dict:
    import deadrelu
    from deadrelu.errors import OutputCheckError
    from deadrelu.fixes.model_utils import compare_cost

    loaded = loader()
    if isinstance(loaded, str):
        return {"name": name, "skipped": loaded}
    model, x, what = loaded
    start = time.perf_counter()
    report = deadrelu.scan(model, x, batch_size=64)
    scan_seconds = time.perf_counter() - start
    start = time.perf_counter()
    row = {
        "name": name,
        "data": what,
        "units": report.summary["units"],
        "dead": report.summary["dead"],
        "sites": len(report.sites),
        "sites_dead": sum(1 for s in report.sites if s.dead),
    }
    try:
        result = deadrelu.prune_model(model, report, data=x, batch_size=64)
    except OutputCheckError as error:  # the proof failed: nothing would be written
        result = error.result
        row["refused"] = str(error)
    except deadrelu.DeadReluError as error:
        row["error"] = f"{type(error).__name__}: {str(error).split(' (')[0]}"
        return row
    row.update(
        scan_seconds=scan_seconds,
        prune_seconds=time.perf_counter() - start,
        params=(result.params_before, result.params_after),
        removed=result.units_removed,
        sites_pruned=len(result.removed),
        check=result.check,
        passed=result.passed,
        limit=result.check.limit if result.check is not None else None,
        reasons=collections.Counter(short_reason(r) for r in result.skipped.values()),
    )
    if result.model is not None:
        # The rescan: the pruned sites keep no dead unit but those kept there with a reason.
        after = deadrelu.scan(result.model, x, batch_size=64)
        row["dead_left"] = sum(len(after.site(path).dead) for path in result.removed)
        row["kept_at_pruned"] = sum(len(result.kept.get(path, [])) for path in result.removed)
        C.wait_for_idle(wait_idle, log=lambda line: None)
        row["load"] = os.getloadavg()[0]
        cost = compare_cost(model, result.model, x, batch_size=64, rounds=rounds)
        row.update(file_bytes=cost.file_bytes, predict=cost.predict_median, ratio=cost.predict_ratio)
    return row


def markdown(rows: list[dict]) -> str:
    head = (
        "model",
        "data",
        "dead / units",
        "removed",
        "params before → after",
        ".keras size before → after",
        "max \\|Δ\\| (limit)",
        "dead left at pruned sites (kept there)",
        "predict pruned / original",
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        if "skipped" in row or "error" in row:
            lines.append(
                f"| {row['name']} | "
                + " | ".join(["–"] * (len(head) - 2))
                + f" | {row.get('skipped') or row.get('error')} |"
            )
            continue
        a, b = row["params"]
        params = f"{a:,} → {b:,} ({100 * (b - a) / a:+.1f}%)" if b != a else f"{a:,} (unchanged)"
        size = ratio = "–"
        if "file_bytes" in row:
            fa, fb = row["file_bytes"]
            size = f"{fa / 1024:,.0f} → {fb / 1024:,.0f} KB ({100 * (fb - fa) / fa:+.1f}%)"
            ratio = f"{row['ratio']:.2f}× ({1000 * row['predict'][0]:.0f} → {1000 * row['predict'][1]:.0f} ms)"
            ratio += f", load {row['load']:.1f}"
        check = "–" if row["check"] is None else f"{row['check'].max_abs_diff:.2g} ({row['limit']:.2g})"
        if row.get("refused"):
            check += " **refused**"
        left = f"{row['dead_left']} ({row['kept_at_pruned']})" if "dead_left" in row else "–"
        lines.append(
            f"| {row['name']} | {row['data']} | {row['dead']:,} / {row['units']:,} | {row['removed']:,} "
            f"| {params} | {size} | {check} | {left} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    import keras
    import tensorflow as tf

    print(
        f"# prune benchmark: Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras "
        f"{keras.__version__}, {os.cpu_count()} CPUs, commit {_commit()}, load {os.getloadavg()[0]:.2f}"
    )
    rows = []
    for name, loader in cases(args):
        print(f"- {name} ...", flush=True)
        row = run_case(name, loader, args.rounds, args.wait_idle)
        rows.append(row)
        if "params" in row:
            print(
                f"  {row['dead']} of {row['units']} units dead, {row['removed']} removed; params "
                f"{row['params'][0]:,} → {row['params'][1]:,}; check "
                f"{'–' if row['check'] is None else format(row['check'].max_abs_diff, '.2g')}; "
                f"scan {row['scan_seconds']:.1f} s, prune {row['prune_seconds']:.1f} s",
                flush=True,
            )
        else:
            print(f"  {row.get('skipped') or row.get('error')}", flush=True)
    print()
    print(markdown(rows))
    print()
    print("Why dead units were kept (sites per reason):")
    for row in rows:
        reasons = row.get("reasons")
        if reasons:
            print(f"- {row['name']}: " + "; ".join(f"{n}× {text}" for text, n in reasons.most_common()))
    return 0


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=C.REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())

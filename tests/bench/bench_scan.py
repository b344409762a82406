"""Benchmark of `deadrelu.scan` on DESIGN.md's reference MNIST CNN (a script, not a pytest test).

In one run, on the same model and the same data, it measures:

  1. `model.predict(x, batch_size=B)`                       — the floor: one forward pass;
  2. `deadrelu.scan(model, x, batch_size=B)`                — target ≤ 1.25 × predict;
  3. the naive way: a multi-output `keras.Model(model.inputs, [ReLU outputs])` + `predict` + numpy
     per-unit stats on the materialised activations (time, and peak memory in a child process);
  4. peak RSS growth of scan at 5,000 vs 50,000 samples, each in a fresh child process
     (`--child`), data and model made before the measurement starts — target ≤ 50 MB more;
  5. `deadrelu.scan(..., labels=y, gradients=True, loss='categorical_crossentropy')` vs one pass of
     `train_on_batch` (Adam, same loss) over the same batches — target ≤ 1.3 ×.

The first call of predict and of scan is timed once (tracing included, as in a one-off CLI run).
Every contender is warmed up once, untimed (tracing/compilation not counted), then all are
timed `--repeats` times interleaved: the two members of each compared pair run back to back
(alternating which goes first) and the pairs rotate. The machine is noisy, so the verdicts use
the paired median — the median over rounds of the ratio measured within one round, when both
saw the same load; the ratio of medians, of best times and of CPU times are printed beside it.
Memory children are started before this process imports TensorFlow (a child can inherit its
parent's peak RSS in `ru_maxrss`) and reset the kernel's peak mark (/proc/self/clear_refs)
after warm-up. Prints a markdown table at the end.

Usage (from the repository root):
    python tests/bench/bench_scan.py                 # full run: 10,000 samples, 5 repeats
    python tests/bench/bench_scan.py --quick         # smoke run: 2,000 samples, 1 repeat
    python tests/bench/bench_scan.py --wait-idle 600 # on a shared machine: wait for a quiet moment
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # before TensorFlow is imported anywhere

import argparse
import gc
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SCAN_VS_PREDICT = 1.25
GRAD_VS_TRAIN = 1.3
RSS_GROWTH_MB = 50.0
RESULT_TAG = "@@bench-result "


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=None, help="samples timed (default 10,000; --quick 2,000)")
    p.add_argument("--batch-size", type=int, default=500, help="batch size for every contender (default 500)")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions per contender (default 5; --quick 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2,000 samples, 1 repeat, RSS at 1k vs 5k")
    p.add_argument("--rss-samples", default=None,
                   help="two sample counts for the RSS-growth check (default 5000,50000; --quick 1000,5000)")
    p.add_argument("--rss-runs", type=int, default=None,
                   help="fresh children per memory measurement, median reported (default 3; --quick 1)")
    p.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                   help="before timing, wait up to this long for the machine's load to drop (default 0)")
    p.add_argument("--no-memory", action="store_true", help="skip the child-process memory measurements")
    p.add_argument("--child", choices=["scan", "naive"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.samples = args.samples or (2000 if args.quick else 10000)
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.rss_runs = args.rss_runs or (1 if args.quick else 3)
    sizes = args.rss_samples or ("1000,5000" if args.quick else "5000,50000")
    args.rss_sizes = [int(v) for v in sizes.split(",")]
    if len(args.rss_sizes) != 2:
        p.error("--rss-samples takes two counts, e.g. 5000,50000")
    return args


# -- contenders ----------------------------------------------------------------------------

def naive_stats(model, x, batch_size: int) -> list[dict]:
    """What users write today: materialise every ReLU output, then reduce with numpy."""
    import keras
    import numpy as np

    probe = keras.Model(model.inputs, C.relu_outputs(model))
    activations = probe.predict(x, batch_size=batch_size, verbose=0)
    stats = []
    for a in activations:
        a = a.reshape(a.shape[0], -1, a.shape[-1])          # (N, positions, units)
        fires = np.count_nonzero(a, axis=(0, 1))
        stats.append({"fires": fires, "active_rate": fires / (a.shape[0] * a.shape[1]),
                      "dead": np.flatnonzero(fires == 0)})
    return stats


def train_pass(trainer, x, y, batch_size: int) -> None:
    for start in range(0, len(x), batch_size):
        trainer.train_on_batch(x[start:start + batch_size], y[start:start + batch_size])


# -- child: one memory measurement in a fresh process ----------------------------------------

def run_child(args) -> None:
    import deadrelu

    model = C.mnist_cnn()
    x, _, source = C.load_inputs(args.n)
    warm = x[:args.batch_size]
    if args.child == "scan":
        work = lambda data: deadrelu.scan(model, data, batch_size=args.batch_size)
    else:
        work = lambda data: naive_stats(model, data, args.batch_size)
    work(warm)                                    # warm-up: TF runtime, kernels, thread pools
    gc.collect()
    reset = C.reset_peak_rss()
    before, rss_before = C.peak_rss_mb(), C.current_rss_mb()
    start = time.perf_counter()
    work(x)
    seconds = time.perf_counter() - start
    after = C.peak_rss_mb()
    print(RESULT_TAG + json.dumps({
        "mode": args.child, "n": args.n, "source": source, "peak_before_mb": before, "peak_after_mb": after,
        "rss_before_mb": rss_before, "growth_mb": after - before, "peak_reset": reset, "seconds": seconds,
        "data_mb": x.nbytes / 2**20,
    }), flush=True)


def measure_child(mode: str, n: int, batch_size: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--n", str(n),
           "--batch-size", str(batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    raise RuntimeError(f"memory child {mode} n={n} failed (exit {proc.returncode}):\n{tail}")


def _revision() -> str:
    """The repository's commit, with '+dirty' when deadrelu/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=C.REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "deadrelu"], cwd=C.REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"


def _load() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg()) + f" (1/5/15 min, {os.cpu_count()} CPUs)"
    except OSError:
        return "unknown"


# -- main ----------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return 0

    n, batch, repeats = args.samples, args.batch_size, args.repeats
    print(f"# deadrelu scan benchmark{' (quick smoke run)' if args.quick else ''}")
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"samples {n}, batch {batch}, repeats {repeats}")

    # Memory first, in fresh children, before this process loads TensorFlow: a child started from
    # a big parent could inherit the parent's peak RSS in ru_maxrss.
    memory = {}
    if not args.no_memory:
        print("\n## Peak RSS growth (fresh child process each; measured after model build, warm-up and "
              "data creation, so the data array itself does not count)")
        print(f"  ({args.rss_runs} child run(s) each, median shown: the allocator sometimes keeps one extra "
              "block of tens of MB at a random batch, whatever the data size)")
        jobs = [("scan", args.rss_sizes[0]), ("scan", args.rss_sizes[1]), ("scan", n), ("naive", n)]
        for mode, count in dict.fromkeys(jobs):
            runs = [measure_child(mode, count, batch) for _ in range(args.rss_runs if mode == "scan" else 1)]
            r = dict(sorted(runs, key=lambda run: run["growth_mb"])[len(runs) // 2])
            memory[(mode, count)] = r
            growths = ", ".join(f"{run['growth_mb']:.1f}" for run in runs)
            each = f" (runs: {growths})" if len(runs) > 1 else ""
            print(f"  {mode:5s} n={count:>6}: peak RSS {r['peak_before_mb']:7.1f} → {r['peak_after_mb']:7.1f} MB, "
                  f"growth {r['growth_mb']:6.1f} MB{each}; data array {r['data_mb']:.0f} MB not counted; "
                  f"{r['seconds']:.2f} s; peak mark reset: {'yes' if r['peak_reset'] else 'no'}")

    import keras
    import numpy as np
    import tensorflow as tf

    import deadrelu

    tf.get_logger().setLevel("ERROR")  # TF's Python-side warnings too (e.g. retracing notices)
    print(f"\ntensorflow {tf.__version__}, keras {keras.__version__}, deadrelu {deadrelu.__version__} "
          f"(engine at {_revision()})")
    model = C.mnist_cnn()
    x, y, source = C.load_inputs(n)
    print(f"data: {source}; x {x.shape} float32 (x/255), y one-hot {y.shape}")
    print(f"model: {model.name}, {model.count_params():,} parameters, untrained (seed {C.SEED}); "
          f"ReLU sites: {', '.join(layer.name for layer in model.layers if getattr(layer, 'activation', None) is keras.activations.relu)}")

    trainer = C.mnist_cnn()  # a twin for train_on_batch, so training does not move `model`'s weights
    trainer.set_weights(model.get_weights())
    trainer.compile(optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy")

    contenders = {
        "predict": lambda: model.predict(x, batch_size=batch, verbose=0),
        "scan": lambda: deadrelu.scan(model, x, batch_size=batch),
        "naive": lambda: naive_stats(model, x, batch),
        "scan_grad": lambda: deadrelu.scan(model, x, labels=y, gradients=True, batch_size=batch,
                                           loss="categorical_crossentropy"),
        "train_on_batch": lambda: train_pass(trainer, x, y, batch),
    }

    # First calls, timed once: they include tracing (predict's function, scan's probe step), as a
    # one-off CLI scan does. Repeated scans of the same model object reuse the traced probe.
    cold = {}
    for name in ("predict", "scan"):
        start = time.perf_counter()
        result = contenders[name]()
        cold[name] = time.perf_counter() - start
    print(f"first calls (tracing included, run once): predict {cold['predict']:.2f} s, scan {cold['scan']:.2f} s")

    # Cross-check before timing: scan and the naive numpy way must agree on every unit's fires.
    report, naive = result, contenders["naive"]()
    agree = all(np.array_equal(np.asarray(s.fires), ref["fires"]) for s, ref in zip(report.sites, naive))
    print(f"scan's per-unit fires equal the naive numpy counts: {'yes' if agree else 'NO'} "
          f"({report.summary['dead']} dead of {report.summary['units']} units)")

    print(f"\n## Timing (each contender warmed up once untimed — tracing/compilation not counted — "
          f"then {repeats} interleaved round(s); "
          "pairs compared run back to back, alternating order)")
    C.wait_for_idle(args.wait_idle)
    print(f"  load average before: {_load()}")
    t = C.time_interleaved(contenders, repeats,
                           groups=[["predict", "scan"], ["scan_grad", "train_on_batch"], ["naive"]])
    print(f"  load average after: {_load()}")
    print("\n| contender | median wall s | best wall s | median CPU s | all wall s |\n|---|---|---|---|---|")
    for name, timing in t.items():
        print(f"| {name} | {timing.median:.3f} | {timing.best:.3f} | {timing.cpu_median:.3f} | {timing.spread()} |")

    # Headline ratios: median of per-round ratios (the two contenders ran next to each other, so
    # they saw the same load); the ratio of medians and of best times are shown beside them.
    def ratios(a: str, b: str) -> tuple[float, str]:
        paired = C.paired_ratio(t[a], t[b])
        return paired, (f"{paired:.2f}× paired median; {t[a].median / t[b].median:.2f}× of medians, "
                        f"{t[a].best / t[b].best:.2f}× of bests, {t[a].cpu_median / t[b].cpu_median:.2f}× CPU")
    scan_ratio, scan_text = ratios("scan", "predict")
    naive_ratio, naive_text = ratios("naive", "predict")
    grad_ratio, grad_text = ratios("scan_grad", "train_on_batch")
    print(f"\nscan / predict: {scan_text}")
    print(f"naive / predict: {naive_text}")
    print(f"scan_grad / train_on_batch: {grad_text}")

    rows = [
        (f"`model.predict`, {n} samples, batch {batch} (median of {repeats})", f"{t['predict'].median:.2f} s", "—", "—"),
        ("`deadrelu.scan`, same data", f"{t['scan'].median:.2f} s", "—", "—"),
        ("scan / predict (paired median)", f"{scan_ratio:.2f}×", f"≤ {SCAN_VS_PREDICT}×", C.verdict(scan_ratio <= SCAN_VS_PREDICT)),
        ("first call, tracing included (once): predict / scan",
         f"{cold['predict']:.2f} s / {cold['scan']:.2f} s", "—", "—"),
        ("naive sub-model `predict` + numpy stats",
         f"{t['naive'].median:.2f} s ({naive_ratio:.2f}× predict)", "—", "—"),
    ]
    if memory:
        small, large = (memory[("scan", k)] for k in args.rss_sizes)
        scan_n, naive_n = memory[("scan", n)], memory[("naive", n)]
        growth = large["growth_mb"] - small["growth_mb"]
        rows += [
            (f"peak RSS growth, naive, {n} samples", f"{naive_n['growth_mb']:.0f} MB", "—", "—"),
            (f"peak RSS growth, scan, {n} samples", f"{scan_n['growth_mb']:.0f} MB", "—", "—"),
            (f"peak RSS growth, scan, {args.rss_sizes[0]} → {args.rss_sizes[1]} samples",
             f"{small['growth_mb']:.0f} → {large['growth_mb']:.0f} MB ({growth:+.0f} MB)",
             f"≤ +{RSS_GROWTH_MB:.0f} MB", C.verdict(growth <= RSS_GROWTH_MB)),
        ]
    rows += [
        ("`scan(gradients=True)`", f"{t['scan_grad'].median:.2f} s", "—", "—"),
        ("one pass of `train_on_batch` (Adam)", f"{t['train_on_batch'].median:.2f} s", "—", "—"),
        ("scan(gradients) / train_on_batch (paired median)", f"{grad_ratio:.2f}×", f"≤ {GRAD_VS_TRAIN}×",
         C.verdict(grad_ratio <= GRAD_VS_TRAIN)),
    ]
    print(f"\n## Summary ({source.split(' (')[0]}; {os.cpu_count()} CPUs; warm, median of {repeats})\n")
    print(C.markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

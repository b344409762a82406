"""Benchmark of `deadrelu.scan` against the model's own forward pass (a script, not a pytest test).

In one run, side by side, on the same models and the same batches, it measures:

  1. the floor: a compiled forward loop — `f = tf.function(lambda b: model(b, training=False))`
     called on `tf.constant(x[i:i+B])` per batch (no data adapter, callbacks or output conversion);
  2. `model.predict(x, batch_size=B)`;
  3. `deadrelu.scan(model, x, batch_size=B)` — target ≤ 1.15 × the floor — with deadrelu's fused
     statistics kernel (`deadrelu.kernel`), and beside it the same scan on TensorFlow's own ops
     (`DEADRELU_KERNEL=off`, "scan_ops": the engine without the kernel);
  3a. the floor of observing ("materialise"): the same compiled loop over a multi-output model that
     also returns `tf.reduce_sum` of every ReLU site's output (one read of each activation; see
     `_common.materialise_loop`), so scan / materialise is what the statistics cost beyond reading;
  3b. the floor of observing pre-activations ("materialise_z", `_common.materialise_preact_loop`):
     the forward loop that also reads every site's input z and output once — what the per-unit
     margins and pre-activation statistics of every scan must at least cost (z then exists as a
     tensor of its own, which undoes TensorFlow's fusion of bias and ReLU into a convolution);
     and for the gradient scan the train step with z observed ("train_step_z");
  on the reference MNIST CNN of docs/benchmarks.md (10,000 MNIST images, batch 500) and on MobileNetV2 and
  DenseNet121 (`keras.applications`, weights=None, 512 uniform images of 96×96×3, batch 64);
  and on the CNN also
  4. `deadrelu.scan(..., labels=y, gradients=True)` against its floor, a compiled train step
     (`tf.function` forward + `GradientTape`, no optimizer) — target ≤ 1.15 × — and against one pass
     of `train_on_batch` (Adam, same loss); also with the kernel off ("scan_grad_ops");
  5. the naive way: a multi-output `keras.Model(model.inputs, [ReLU outputs])` + `predict` + numpy
     per-unit stats on the materialised activations (time, and peak memory in a child process);
  6. peak RSS growth of scan at 5,000 vs 50,000 samples, each in a fresh child process
     (`--child`), data and model made before the measurement starts — target ≤ 50 MB more.

The first call of predict and of scan is timed once (tracing included, as in a one-off CLI run).
Every contender is warmed up once, untimed (tracing/compilation not counted), then all are
timed `--repeats` times interleaved: the members of each compared group run back to back
(alternating their order) and the groups rotate. The machine is noisy, so the verdicts use the
paired median — the median over rounds of the ratio measured within one round, when both saw the
same load; the ratio of medians and of CPU times are printed beside it, and so is the load
average before and after. Memory children are started before this process imports TensorFlow (a
child can inherit its parent's peak RSS in `ru_maxrss`) and reset the kernel's peak mark
(/proc/self/clear_refs) after warm-up. Prints markdown tables at the end.

Usage (from the repository root):
    python tests/bench/bench_scan.py                      # full run: 9 rounds, every model
    python tests/bench/bench_scan.py --quick              # smoke run: 2,000 CNN samples, 1 round
    python tests/bench/bench_scan.py --models cnn         # the MNIST CNN only
    python tests/bench/bench_scan.py --wait-idle 900      # on a shared machine: wait for a quiet moment
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SCAN_VS_FORWARD = 1.15
GRAD_VS_TRAIN_STEP = 1.15
RSS_GROWTH_MB = 50.0
RESULT_TAG = "@@bench-result "
# Architectures timed beside the CNN: (keras.applications constructor, input shape).
APPLICATIONS = {"MobileNetV2": ("MobileNetV2", (96, 96, 3)), "DenseNet121": ("DenseNet121", (96, 96, 3))}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--samples", type=int, default=None, help="CNN samples timed (default 10,000; --quick 2,000)")
    p.add_argument("--batch-size", type=int, default=500, help="CNN batch size for every contender (default 500)")
    p.add_argument(
        "--models", default=None, help=f"comma-separated: cnn, {', '.join(APPLICATIONS)} (default all; --quick cnn)"
    )
    p.add_argument("--app-samples", type=int, default=512, help="images per application network (default 512)")
    p.add_argument("--app-batch-size", type=int, default=64, help="batch size for the applications (default 64)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per model (default 9; --quick 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2,000 samples, 1 round, RSS at 1k vs 5k")
    p.add_argument(
        "--rss-samples",
        default=None,
        help="two sample counts for the RSS-growth check (default 5000,50000; --quick 1000,5000)",
    )
    p.add_argument(
        "--rss-runs",
        type=int,
        default=None,
        help="fresh children per memory measurement, median reported (default 3; --quick 1)",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each model's timing, wait up to this long for the load to drop (default 0)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the child-process memory measurements")
    p.add_argument("--no-naive", action="store_true", help="skip the naive sub-model + numpy contender")
    p.add_argument("--child", choices=["scan", "naive"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.samples = args.samples or (2000 if args.quick else 10000)
    args.repeats = args.repeats or (1 if args.quick else 9)
    args.rss_runs = args.rss_runs or (1 if args.quick else 3)
    sizes = args.rss_samples or ("1000,5000" if args.quick else "5000,50000")
    args.rss_sizes = [int(v) for v in sizes.split(",")]
    if len(args.rss_sizes) != 2:
        p.error("--rss-samples takes two counts, e.g. 5000,50000")
    args.models = [
        m.strip()
        for m in (args.models or ("cnn" if args.quick else ",".join(["cnn", *APPLICATIONS]))).split(",")
        if m.strip()
    ]
    unknown = [m for m in args.models if m != "cnn" and m not in APPLICATIONS]
    if unknown:
        p.error(f"unknown model {unknown[0]!r}; choose from cnn, {', '.join(APPLICATIONS)}")
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
        a = a.reshape(a.shape[0], -1, a.shape[-1])  # (N, positions, units)
        fires = np.count_nonzero(a, axis=(0, 1))
        stats.append(
            {"fires": fires, "active_rate": fires / (a.shape[0] * a.shape[1]), "dead": np.flatnonzero(fires == 0)}
        )
    return stats


def train_pass(trainer, x, y, batch_size: int) -> None:
    for start in range(0, len(x), batch_size):
        trainer.train_on_batch(x[start : start + batch_size], y[start : start + batch_size])


# -- child: one memory measurement in a fresh process ----------------------------------------


def run_child(args) -> None:
    import deadrelu

    model = C.mnist_cnn()
    x, _, source = C.load_inputs(args.n)
    warm = x[: args.batch_size]

    def work(data):
        if args.child == "scan":
            return deadrelu.scan(model, data, batch_size=args.batch_size)
        return naive_stats(model, data, args.batch_size)

    work(warm)  # warm-up: TF runtime, kernels, thread pools
    gc.collect()
    reset = C.reset_peak_rss()
    before, rss_before = C.peak_rss_mb(), C.current_rss_mb()
    start = time.perf_counter()
    work(x)
    seconds = time.perf_counter() - start
    after = C.peak_rss_mb()
    print(
        RESULT_TAG
        + json.dumps(
            {
                "mode": args.child,
                "n": args.n,
                "source": source,
                "peak_before_mb": before,
                "peak_after_mb": after,
                "rss_before_mb": rss_before,
                "growth_mb": after - before,
                "peak_reset": reset,
                "seconds": seconds,
                "data_mb": x.nbytes / 2**20,
            }
        ),
        flush=True,
    )


def measure_child(mode: str, n: int, batch_size: int) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        mode,
        "--n",
        str(n),
        "--batch-size",
        str(batch_size),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    raise RuntimeError(f"memory child {mode} n={n} failed (exit {proc.returncode}):\n{tail}")


# -- timing one model ----------------------------------------------------------------------


# The ratios printed for every model: the scan (with and without the kernel) against its floors.
FORWARD_RATIOS = [
    ("scan", "forward"),
    ("scan", "predict"),
    ("predict", "forward"),
    ("materialise", "forward"),
    ("scan", "materialise"),
    ("materialise_z", "forward"),
    ("scan", "materialise_z"),
    ("scan_ops", "forward"),
]


def without_kernel(scan: Callable[[], object]) -> Callable[[], object]:
    """`scan` run on TensorFlow's own ops: deadrelu's fused kernel switched off for the call."""

    def run():
        before = os.environ.get("DEADRELU_KERNEL")
        os.environ["DEADRELU_KERNEL"] = "off"
        try:
            return scan()
        finally:
            if before is None:
                del os.environ["DEADRELU_KERNEL"]
            else:
                os.environ["DEADRELU_KERNEL"] = before

    return run


def time_model(label: str, contenders: dict, groups: list[list[str]], args) -> dict:
    """Warms up and times `contenders` in interleaved rounds; prints the per-contender table."""
    print(
        f"\n## {label}: timing (each contender warmed up once untimed — tracing/compilation not "
        f"counted — then {args.repeats} interleaved round(s); groups run back to back, alternating order)"
    )
    C.wait_for_idle(args.wait_idle)
    print(f"  load average before: {C.load_average()}")
    t = C.time_interleaved(contenders, args.repeats, groups=groups)
    print(f"  load average after: {C.load_average()}")
    print("\n| contender | median wall s | best wall s | median CPU s | all wall s |\n|---|---|---|---|---|")
    for name, timing in t.items():
        print(f"| {name} | {timing.median:.3f} | {timing.best:.3f} | {timing.cpu_median:.3f} | {timing.spread()} |")
    return t


def ratio_text(t: dict, a: str, b: str) -> tuple[float, str]:
    """The paired median of a/b, with the ratio of medians, of bests and of CPU times beside it."""
    paired = C.paired_ratio(t[a], t[b])
    return paired, (
        f"{paired:.2f}× paired median; {t[a].median / t[b].median:.2f}× of medians, "
        f"{t[a].best / t[b].best:.2f}× of bests, {t[a].cpu_median / t[b].cpu_median:.2f}× CPU"
    )


def bench_cnn(args, rows: list, grad_rows: list) -> None:
    import keras
    import numpy as np

    import deadrelu

    n, batch = args.samples, args.batch_size
    model = C.mnist_cnn()
    x, y, source = C.load_inputs(n)
    print(f"\ndata: {source}; x {x.shape} float32 (x/255), y one-hot {y.shape}")
    relu = [layer.name for layer in model.layers if getattr(layer, "activation", None) is keras.activations.relu]
    print(
        f"model: {model.name}, {model.count_params():,} parameters, untrained (seed {C.SEED}); "
        f"ReLU sites: {', '.join(relu)}"
    )

    trainer = C.mnist_cnn()  # a twin for train_on_batch, so training does not move `model`'s weights
    trainer.set_weights(model.get_weights())
    trainer.compile(optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy")

    contenders = {
        "forward": C.forward_loop(model, x, batch),
        "predict": lambda: model.predict(x, batch_size=batch, verbose=0),
        "scan": lambda: deadrelu.scan(model, x, batch_size=batch),
        "materialise": C.materialise_loop(model, x, batch),
        "materialise_z": C.materialise_preact_loop(model, x, batch),
        "train_step": C.train_step_loop(model, x, y, batch),
        "train_step_z": C.materialise_preact_loop(model, x, batch, y),
        "scan_grad": lambda: deadrelu.scan(
            model, x, labels=y, gradients=True, batch_size=batch, loss="categorical_crossentropy"
        ),
        "train_on_batch": lambda: train_pass(trainer, x, y, batch),
    }
    contenders["scan_ops"] = without_kernel(contenders["scan"])
    contenders["scan_grad_ops"] = without_kernel(contenders["scan_grad"])
    groups = [
        ["forward", "predict", "scan", "materialise", "materialise_z", "scan_ops"],
        ["train_step", "train_step_z", "scan_grad", "train_on_batch", "scan_grad_ops"],
    ]
    if not args.no_naive:
        contenders["naive"] = lambda: naive_stats(model, x, batch)
        groups.append(["naive"])

    # First calls, timed once: they include tracing (predict's function, scan's probe step), as a
    # one-off CLI scan does. Repeated scans of the same model object reuse the traced probe.
    cold = {}
    for name in ("predict", "scan"):
        start = time.perf_counter()
        result = contenders[name]()
        cold[name] = time.perf_counter() - start
    print(f"first calls (tracing included, run once): predict {cold['predict']:.2f} s, scan {cold['scan']:.2f} s")

    # Cross-check before timing: scan and the naive numpy way must agree on every unit's fires.
    report, naive = result, naive_stats(model, x, batch)
    agree = all(np.array_equal(np.asarray(s.fires), ref["fires"]) for s, ref in zip(report.sites, naive))
    print(
        f"scan's per-unit fires equal the naive numpy counts: {'yes' if agree else 'NO'} "
        f"({report.summary['dead']} dead of {report.summary['units']} units)"
    )

    t = time_model(f"MNIST CNN, {n:,} images, batch {batch}", contenders, groups, args)
    for a, b in [
        *FORWARD_RATIOS,
        ("scan_grad", "train_step"),
        ("train_step_z", "train_step"),
        ("scan_grad", "train_step_z"),
        ("scan_grad", "train_on_batch"),
        ("scan_grad_ops", "train_step"),
    ] + ([("naive", "predict")] if not args.no_naive else []):
        print(f"{a} / {b}: {ratio_text(t, a, b)[1]}")
    rows.append(model_row(f"reference MNIST CNN, {n:,} images, batch {batch}", t))
    grad_ratio = C.paired_ratio(t["scan_grad"], t["train_step"])
    grad_rows.append(
        (
            f"MNIST CNN, {n:,} images, batch {batch}",
            t["train_step"].median,
            t["train_on_batch"].median,
            t["scan_grad"].median,
            grad_ratio,
            C.paired_ratio(t["scan_grad"], t["train_on_batch"]),
            C.paired_ratio(t["scan_grad_ops"], t["train_step"]),
            C.paired_ratio(t["scan_grad"], t["train_step_z"]),
        )
    )
    args.cnn_extra = {
        "cold": cold,
        "naive": t.get("naive"),
        "predict": t["predict"],
        "naive_ratio": C.paired_ratio(t["naive"], t["predict"]) if "naive" in t else None,
    }


def bench_application(name: str, args, rows: list) -> None:
    import deadrelu

    constructor, shape = APPLICATIONS[name]
    n, batch = args.app_samples, args.app_batch_size
    model = C.application(constructor, shape)
    x = C.uniform_images(n, shape)
    print(
        f"\nmodel: {name} (weights=None, seed {C.SEED}), {model.count_params():,} parameters; "
        f"data: {n} uniform random images {shape}, batch {batch}"
    )
    contenders = {
        "forward": C.forward_loop(model, x, batch),
        "predict": lambda: model.predict(x, batch_size=batch, verbose=0),
        "scan": lambda: deadrelu.scan(model, x, batch_size=batch),
        "materialise": C.materialise_loop(model, x, batch),
        "materialise_z": C.materialise_preact_loop(model, x, batch),
    }
    contenders["scan_ops"] = without_kernel(contenders["scan"])
    t = time_model(
        f"{name}, {n} × {'×'.join(map(str, shape))}, batch {batch}",
        contenders,
        [["forward", "predict", "scan", "materialise", "materialise_z", "scan_ops"]],
        args,
    )
    for a, b in FORWARD_RATIOS:
        print(f"{a} / {b}: {ratio_text(t, a, b)[1]}")
    rows.append(model_row(f"{name} (weights=None), {n} × {'×'.join(map(str, shape))}, batch {batch}", t))


def model_row(label: str, t: dict) -> tuple:
    return (
        label,
        t["forward"].median,
        t["predict"].median,
        t["scan"].median,
        C.paired_ratio(t["scan"], t["forward"]),
        C.paired_ratio(t["scan"], t["predict"]),
        t["scan"].cpu_median / t["forward"].cpu_median,
        t["materialise"].median,
        C.paired_ratio(t["materialise"], t["forward"]),
        C.paired_ratio(t["scan"], t["materialise"]),
        C.paired_ratio(t["scan"], t["materialise_z"]),
        C.paired_ratio(t["scan_ops"], t["forward"]),
    )


# -- main ----------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return 0

    print(f"# deadrelu scan benchmark{' (quick smoke run)' if args.quick else ''}")
    print(
        f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"models {', '.join(args.models)}; {args.repeats} round(s); started at load {C.load_average()}"
    )

    # Memory first, in fresh children, before this process loads TensorFlow: a child started from
    # a big parent could inherit the parent's peak RSS in ru_maxrss.
    memory = {}
    if not args.no_memory:
        n, batch = args.samples, args.batch_size
        print(
            "\n## Peak RSS growth (fresh child process each; measured after model build, warm-up and "
            "data creation, so the data array itself does not count)"
        )
        print(
            f"  ({args.rss_runs} child run(s) each, median shown: the allocator sometimes keeps one extra "
            "block of tens of MB at a random batch, whatever the data size)"
        )
        jobs = [("scan", args.rss_sizes[0]), ("scan", args.rss_sizes[1]), ("scan", n)]
        jobs += [] if args.no_naive else [("naive", n)]
        for mode, count in dict.fromkeys(jobs):
            runs = [measure_child(mode, count, batch) for _ in range(args.rss_runs if mode == "scan" else 1)]
            r = dict(sorted(runs, key=lambda run: run["growth_mb"])[len(runs) // 2])
            memory[(mode, count)] = r
            growths = ", ".join(f"{run['growth_mb']:.1f}" for run in runs)
            each = f" (runs: {growths})" if len(runs) > 1 else ""
            print(
                f"  {mode:5s} n={count:>6}: peak RSS {r['peak_before_mb']:7.1f} → {r['peak_after_mb']:7.1f} MB, "
                f"growth {r['growth_mb']:6.1f} MB{each}; data array {r['data_mb']:.0f} MB not counted; "
                f"{r['seconds']:.2f} s; peak mark reset: {'yes' if r['peak_reset'] else 'no'}"
            )

    import keras
    import tensorflow as tf

    import deadrelu

    tf.get_logger().setLevel("ERROR")  # TF's Python-side warnings too (e.g. retracing notices)
    print(
        f"\ntensorflow {tf.__version__}, keras {keras.__version__}, deadrelu {deadrelu.__version__} "
        f"(engine at {C.revision()})"
    )

    from deadrelu import kernel

    print(f"\nstatistics kernel: {kernel.status()}")
    rows, grad_rows = [], []
    for name in args.models:
        if name == "cnn":
            bench_cnn(args, rows, grad_rows)
        else:
            bench_application(name, args, rows)

    print(
        f"\n## Summary ({os.cpu_count()} CPUs; warm, medians of {args.repeats} interleaved rounds; "
        f"ended at load {C.load_average()})\n"
    )
    print(
        "| model, data | compiled forward loop | `predict` | `deadrelu.scan` | materialise "
        "| scan / forward (paired) | target | met? | scan / predict (paired) | scan / forward, CPU "
        "| materialise / forward (paired) | scan / materialise (paired) | scan / materialise with z (paired) "
        "| without the kernel: scan / forward |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for label, forward, predict, scan, to_forward, to_predict, cpu, mat, mat_forward, scan_mat, scan_z, ops in rows:
        met = C.verdict(to_forward <= SCAN_VS_FORWARD)
        print(
            f"| {label} | {forward:.3f} s | {predict:.3f} s | {scan:.3f} s | {mat:.3f} s | {to_forward:.2f}× "
            f"| ≤ {SCAN_VS_FORWARD}× | {met} | {to_predict:.2f}× | {cpu:.2f}× | {mat_forward:.2f}× | {scan_mat:.2f}× "
            f"| {scan_z:.2f}× | {ops:.2f}× |"
        )
    if grad_rows:
        print(
            "\n| gradients: model, data | compiled train step | `train_on_batch` (Adam) | `scan(gradients=True)` "
            "| scan / train step (paired) | target | met? | scan / train_on_batch (paired) "
            "| without the kernel: scan / train step | scan / train step with z observed (paired) |\n"
            "|---|---:|---:|---:|---:|---|---|---:|---:|---:|"
        )
        for label, step, tob, scan, to_step, to_tob, ops, to_step_z in grad_rows:
            print(
                f"| {label} | {step:.3f} s | {tob:.3f} s | {scan:.3f} s | {to_step:.2f}× | ≤ {GRAD_VS_TRAIN_STEP}× "
                f"| {C.verdict(to_step <= GRAD_VS_TRAIN_STEP)} | {to_tob:.2f}× | {ops:.2f}× | {to_step_z:.2f}× |"
            )

    extra = getattr(args, "cnn_extra", None)
    other = []
    if extra:
        other.append(
            (
                "first call, tracing included (once): predict / scan",
                f"{extra['cold']['predict']:.2f} s / {extra['cold']['scan']:.2f} s",
                "—",
                "—",
            )
        )
        if extra["naive"] is not None:
            other.append(
                (
                    "naive sub-model `predict` + numpy stats",
                    f"{extra['naive'].median:.2f} s ({extra['naive_ratio']:.2f}× predict)",
                    "—",
                    "—",
                )
            )
    if memory:
        n = args.samples
        small, large = (memory[("scan", k)] for k in args.rss_sizes)
        scan_n = memory[("scan", n)]
        growth = large["growth_mb"] - small["growth_mb"]
        if ("naive", n) in memory:
            naive_growth = memory[("naive", n)]["growth_mb"]
            other.append((f"peak RSS growth, naive, {n} samples", f"{naive_growth:.0f} MB", "—", "—"))
        other += [
            (f"peak RSS growth, scan, {n} samples", f"{scan_n['growth_mb']:.0f} MB", "—", "—"),
            (
                f"peak RSS growth, scan, {args.rss_sizes[0]} → {args.rss_sizes[1]} samples",
                f"{small['growth_mb']:.0f} → {large['growth_mb']:.0f} MB ({growth:+.0f} MB)",
                f"≤ +{RSS_GROWTH_MB:.0f} MB",
                C.verdict(growth <= RSS_GROWTH_MB),
            ),
        ]
    if other:
        print()
        print(C.markdown_table(other))
    return 0


if __name__ == "__main__":
    sys.exit(main())

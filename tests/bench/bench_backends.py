"""Every backend against its own floor: scan, gradients and the monitor (a script, not a pytest test).

For each backend (TensorFlow, JAX, PyTorch; those installed), a child process with KERAS_BACKEND set
builds the reference MNIST CNN of docs/benchmarks.md and times, side by side in that one process, on
the same MNIST images and batches (each contender warmed up once, untimed: tracing and compilation
not counted; then `--repeats` rounds, interleaved, the members of a compared pair back to back):

- `predict`: `model.predict(x, batch_size=B)`.
- floor: the floor of observing, the model's forward pass plus one scalar sum of every ReLU site's
  output, compiled that backend's way — TensorFlow: one `tf.function` over a multi-output
  `keras.Model(model.inputs, [output, site outputs…])` (`_common.materialise_loop`); JAX: one
  `jax.jit` of that model's `stateless_call` returning the output and the sums; PyTorch: the same
  model called eagerly under `torch.no_grad()`, then `torch.sum` of each site output. A tool that
  reads every activation cannot go below it.
- scan: `deadrelu.scan(model, x, batch_size=B)`; target ≤ 1.10× the floor.
- JAX only: the floor compiled as deadrelu compiles its own step, with YNNPACK's elementwise fusions
  (`deadrelu.engine.steps_jax.COMPILER_OPTIONS`), which makes the forward pass itself faster; the
  `lax.scan` floor, the same jitted forward and sums with the full batches stacked into
  the groups deadrelu's JAX step forms, one `jax.lax.scan` each (`deadrelu.engine.steps_jax`); and the
  scan without those groups (`steps_jax.MAX_GROUP = 1`, on a copy of the model): before and after.
- train step: the floor of a gradient scan, one pass of the summed categorical cross-entropy's
  gradient with respect to every trainable weight, in inference mode, no optimizer — TensorFlow:
  `tf.function` + `GradientTape` (`_common.train_step_loop`); JAX: `jax.jit(jax.value_and_grad(loss))`
  of `stateless_call`; PyTorch: eager forward + `backward()`.
- gradients: `deadrelu.scan(model, x, y, batch_size=B, gradients=True)`; target ≤ 1.15× the train
  step on TensorFlow, ≤ 1.2× on JAX and PyTorch.
- fit: `fit(x, y, batch_size=B, epochs=3)` (Adam; `--fit-batch-size` for another B) of one copy
  of the model, and of a second copy with a new `DeadReluMonitor(x[:1000], check_freq="epoch",
  on_dead=None)` each time (its probe is built at the fit's start, as a user's would be); target: the
  monitor's fit ≤ 1.05× the plain fit.

Ratios are paired medians (the median over rounds of the ratio measured within one round), which
this shared 2-core machine needs; the CPU model (/proc/cpuinfo) and the load average are printed at
the top. With `--models cnn,MobileNetV2,DenseNet121`, each backend also times predict, floor and
scan of those `keras.applications` networks (weights=None, 10 classes, `--app-samples` uniform
96×96×3 images, batch `--app-batch`), kept cheap: scan / floor only.

Usage (from the repository root):
    python tests/bench/bench_backends.py                                   # the CNN, every backend
    python tests/bench/bench_backends.py --backends jax,torch --repeats 3
    python tests/bench/bench_backends.py --models cnn,MobileNetV2,DenseNet121
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported anywhere

import argparse
import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import _common as C

SCAN_VS_FLOOR = 1.10
GRADIENTS_VS_TRAIN_STEP = {"tensorflow": 1.15, "jax": 1.2, "torch": 1.2}
MONITOR_VS_FIT = 1.05
RESULT_TAG = "@@bench-result "
APPLICATIONS = ("MobileNetV2", "DenseNet121")


# -- each backend's floors ---------------------------------------------------------------------


def observed_model(model):
    """`keras.Model(model.inputs, [model outputs…, site outputs…])`: the same layers, each run once."""
    import keras

    return keras.Model(model.inputs, [*model.outputs, *C.site_outputs(model)])


def floor_loop(model, x, batch_size: int, compiler_options: dict | None = None) -> Callable[[], None]:
    """The floor of observing on the active backend (see the module docstring); on JAX, `compiler_options`
    compiles it as deadrelu compiles its own step (`steps_jax.COMPILER_OPTIONS`)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return C.materialise_loop(model, x, batch_size)
    observed = observed_model(model)
    outputs = len(model.outputs)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def forward(trainable, non_trainable, batch):
            values, _ = observed.stateless_call(trainable, non_trainable, batch, training=False)
            return values[:outputs], [jnp.sum(a) for a in values[outputs:]]

        step = jax.jit(forward, compiler_options=compiler_options)

        def run() -> None:
            trainable = [v.value for v in observed.trainable_variables]
            non_trainable = [v.value for v in observed.non_trainable_variables]
            results = [
                step(trainable, non_trainable, x[start : start + batch_size]) for start in range(0, len(x), batch_size)
            ]
            jax.block_until_ready(results)

        return run
    import torch

    def run() -> None:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                values = observed(torch.from_numpy(x[start : start + batch_size]), training=False)
                [torch.sum(a) for a in values[outputs:]]

    return run


def groups_of(full: int, largest: int) -> list[int]:
    """How many full batches each `lax.scan` of the JAX engine runs (`deadrelu.engine.steps_jax`): groups of
    `largest` while they fill up, then the rest as smaller powers of two, a single batch alone (0 here)."""
    sizes = [largest] * (full // largest)
    rest = full % largest
    while rest >= 2:
        sizes.append(1 << (rest.bit_length() - 1))
        rest -= sizes[-1]
    return sizes


def floor_scan_loop(model, x, batch_size: int) -> Callable[[], None]:
    """JAX: the floor in the engine's formulation — the same jitted forward and sums, full batches stacked
    into the groups the engine forms and run as one `jax.lax.scan` each, the other batches per batch."""
    import jax
    import jax.numpy as jnp

    observed = observed_model(model)
    outputs = len(model.outputs)

    def forward(trainable, non_trainable, batch):
        values, _ = observed.stateless_call(trainable, non_trainable, batch, training=False)
        return values[:outputs], [jnp.sum(a) for a in values[outputs:]]

    step = jax.jit(forward)

    @jax.jit
    def scan(trainable, non_trainable, xs):
        return jax.lax.scan(lambda carry, b: (carry, forward(trainable, non_trainable, b)), (), xs)[1]

    largest = _group_size(x[:batch_size])
    full = len(x) // batch_size
    sizes = groups_of(full, largest)

    def run() -> None:
        trainable = [v.value for v in observed.trainable_variables]
        non_trainable = [v.value for v in observed.non_trainable_variables]
        results, start = [], 0
        for g in sizes:
            stop = start + g * batch_size
            xs = np.stack([x[s : s + batch_size] for s in range(start, stop, batch_size)])
            results.append(scan(trainable, non_trainable, xs))
            start = stop
        for s in range(start, len(x), batch_size):
            results.append(step(trainable, non_trainable, x[s : s + batch_size]))
        jax.block_until_ready(results)

    return run


def _group_size(batch) -> int:
    """The largest group the engine forms for batches like `batch` (`steps_jax.BatchGroups`)."""
    from deadrelu.engine import steps_jax

    fits = max(1, min(steps_jax.MAX_GROUP, steps_jax.GROUP_BYTES // max(1, batch.nbytes)))
    return 1 << (fits.bit_length() - 1)


def per_batch_scan(model) -> Callable[[], None]:
    """JAX: `deadrelu.scan` with the `lax.scan` groups turned off (the engine before them), on a copy of
    the model (its own probe, built while `steps_jax.MAX_GROUP` is 1)."""
    import keras

    import deadrelu
    from deadrelu.engine import steps_jax

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())

    def run(x, batch_size: int) -> None:
        largest, steps_jax.MAX_GROUP = steps_jax.MAX_GROUP, 1
        try:
            deadrelu.scan(copy, x, batch_size=batch_size, verbose=0)
        finally:
            steps_jax.MAX_GROUP = largest

    return run


def train_step_loop(model, x, y, batch_size: int) -> Callable[[], None]:
    """The floor of a gradient scan on the active backend (see the module docstring)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return C.train_step_loop(model, x, y, batch_size)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def loss(trainable, non_trainable, xb, yb):
            y_pred, _ = model.stateless_call(trainable, non_trainable, xb, training=False)
            return jnp.sum(keras.losses.categorical_crossentropy(yb, y_pred))

        step = jax.jit(jax.value_and_grad(loss))

        def run() -> None:
            trainable = [v.value for v in model.trainable_variables]
            non_trainable = [v.value for v in model.non_trainable_variables]
            results = [
                step(trainable, non_trainable, x[s : s + batch_size], y[s : s + batch_size])
                for s in range(0, len(x), batch_size)
            ]
            jax.block_until_ready(results)

        return run
    import torch

    def run() -> None:
        for s in range(0, len(x), batch_size):
            y_pred = model(torch.from_numpy(x[s : s + batch_size]), training=False)
            total = torch.sum(keras.losses.categorical_crossentropy(torch.from_numpy(y[s : s + batch_size]), y_pred))
            total.backward()
        for v in model.trainable_variables:
            v.value.grad = None

    return run


def fit_pair(x, y, batch_size: int, epochs: int, probe: int) -> dict[str, Callable[[], None]]:
    """`fit` of two copies of the CNN from the same weights: one plain, one with a new monitor each time."""
    import keras

    import deadrelu

    models = []
    for _ in range(2):
        m = C.mnist_cnn()
        m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
        models.append(m)
    plain, watched = models

    def fit() -> None:
        plain.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)

    def fit_monitor() -> None:
        monitor = deadrelu.DeadReluMonitor(x[:probe], check_freq="epoch", on_dead=None, verbose=0)
        watched.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[monitor])

    return {"fit": fit, "fit_monitor": fit_monitor}


# -- the child: one backend -------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    import keras

    import deadrelu

    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    backend = keras.backend.backend()
    for name in args.models.split(","):
        if name == "cnn":
            model = C.mnist_cnn()
            model.compile(loss="categorical_crossentropy")
            x, y, source = C.load_inputs(args.samples)
            batch = args.batch_size
        else:
            model = C.application(name)
            x = C.uniform_images(args.app_samples, (96, 96, 3))
            y, source, batch = None, f"{args.app_samples} uniform 96×96×3 images", args.app_batch
        log(f"{backend} {name}: {source}")
        contenders = {
            "predict": lambda m=model, x=x, b=batch: m.predict(x, batch_size=b, verbose=0),
            "floor": floor_loop(model, x, batch),
            "scan": lambda m=model, x=x, b=batch: deadrelu.scan(m, x, batch_size=b, verbose=0),
        }
        groups = [["predict", "floor", "scan"]]
        if backend == "jax":  # the lax.scan groups: the floor in their formulation, and the scan without them
            from deadrelu.engine import steps_jax

            contenders["floor_scan"] = floor_scan_loop(model, x, batch)
            before = per_batch_scan(model)
            contenders["scan_per_batch"] = lambda x=x, b=batch, run=before: run(x, b)
            contenders["floor_fused"] = floor_loop(model, x, batch, steps_jax.COMPILER_OPTIONS)
            groups = [["predict", "floor", "floor_fused", "floor_scan", "scan", "scan_per_batch"]]
        if name == "cnn":
            contenders["train_step"] = train_step_loop(model, x, y, batch)
            contenders["gradients"] = lambda m=model, x=x, y=y, b=batch: deadrelu.scan(
                m, x, y, batch_size=b, gradients=True, verbose=0
            )
            groups.append(["train_step", "gradients"])
            if args.epochs > 0:
                contenders.update(fit_pair(x, y, args.fit_batch_size or batch, args.epochs, args.probe))
                groups.append(["fit", "fit_monitor"])
        t = C.time_interleaved(contenders, args.repeats, log=log, groups=groups)
        result = {
            "backend": backend,
            "model": name,
            "source": source,
            "batch": batch,
            "median": {k: v.median for k, v in t.items()},
            "floor/predict": C.paired_ratio(t["floor"], t["predict"]),
            "scan/floor": C.paired_ratio(t["scan"], t["floor"]),
        }
        if "floor_fused" in t:
            result["floor_fused/floor"] = C.paired_ratio(t["floor_fused"], t["floor"])
            result["scan/floor_fused"] = C.paired_ratio(t["scan"], t["floor_fused"])
        if "floor_scan" in t:
            result["floor_scan/floor"] = C.paired_ratio(t["floor_scan"], t["floor"])
            result["scan/floor_scan"] = C.paired_ratio(t["scan"], t["floor_scan"])
            result["scan_per_batch/floor"] = C.paired_ratio(t["scan_per_batch"], t["floor"])
            result["scan_per_batch/floor_scan"] = C.paired_ratio(t["scan_per_batch"], t["floor_scan"])
        if "gradients" in t:
            result["gradients/train_step"] = C.paired_ratio(t["gradients"], t["train_step"])
            result["gradients/predict"] = C.paired_ratio(t["gradients"], t["predict"])
        if "fit" in t:
            result["fit_monitor/fit"] = C.paired_ratio(t["fit_monitor"], t["fit"])
        print(RESULT_TAG + json.dumps(result), flush=True)


# -- the parent: one child per backend, tables --------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, with the number of CPUs this process may use."""
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} CPUs"


def table(backend: str, results: list[dict], args: argparse.Namespace) -> str:
    rows = []

    def row(what: str, seconds: str, ratio: float | None, target: float | None) -> None:
        shown = "—" if ratio is None else f"{ratio:.2f}×"
        aim = "—" if target is None else f"≤ {target:.2f}×"
        met = "—" if target is None or ratio is None else C.verdict(ratio <= target)
        rows.append(f"| {what} | {seconds} | {shown} | {aim} | {met} |")

    for r in results:
        m, label = r["median"], "MNIST CNN" if r["model"] == "cnn" else r["model"]
        row(f"{label}: floor / predict", f"{m['floor']:.3f} / {m['predict']:.3f}", r["floor/predict"], None)
        row(f"{label}: scan / floor", f"{m['scan']:.3f} / {m['floor']:.3f}", r["scan/floor"], SCAN_VS_FLOOR)
        if "floor_fused/floor" in r:  # JAX: the floor compiled with the options of deadrelu's step
            ff, fl = m["floor_fused"], m["floor"]
            row(f"{label}: floor, YNNPACK eltwise / floor", f"{ff:.3f} / {fl:.3f}", r["floor_fused/floor"], None)
            row(f"{label}: scan / floor, YNNPACK eltwise", f"{m['scan']:.3f} / {ff:.3f}", r["scan/floor_fused"], None)
        if "floor_scan/floor" in r:  # JAX: before (per batch) and after (lax.scan groups), against both floors
            fs, sp = m["floor_scan"], m["scan_per_batch"]
            row(f"{label}: lax.scan floor / floor", f"{fs:.3f} / {m['floor']:.3f}", r["floor_scan/floor"], None)
            row(f"{label}: scan / lax.scan floor", f"{m['scan']:.3f} / {fs:.3f}", r["scan/floor_scan"], SCAN_VS_FLOOR)
            row(
                f"{label}: per-batch scan (before) / floor",
                f"{sp:.3f} / {m['floor']:.3f}",
                r["scan_per_batch/floor"],
                None,
            )
            row(
                f"{label}: per-batch scan (before) / lax.scan floor",
                f"{sp:.3f} / {fs:.3f}",
                r["scan_per_batch/floor_scan"],
                None,
            )
        if "gradients/train_step" in r:
            row(
                f"{label}: scan(gradients) / train step",
                f"{m['gradients']:.3f} / {m['train_step']:.3f}",
                r["gradients/train_step"],
                GRADIENTS_VS_TRAIN_STEP[backend],
            )
        if "fit_monitor/fit" in r:
            row(
                f"{label}: fit with monitor / fit",
                f"{m['fit_monitor']:.3f} / {m['fit']:.3f}",
                r["fit_monitor/fit"],
                MONITOR_VS_FIT,
            )
    header = f"**{backend}** — medians of {args.repeats} interleaved rounds\n\n"
    header += "| measurement | seconds (median) | ratio (paired) | target | met? |\n|---|---:|---:|---|---|\n"
    return header + "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=5000, help="MNIST CNN images (default 5,000)")
    p.add_argument("--batch-size", type=int, default=500, help="MNIST CNN batch size, fit's too (default 500)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each fit; 0 skips the fit pair (default 3)")
    p.add_argument("--probe", type=int, default=1000, help="the monitor's probe images (default 1,000)")
    p.add_argument("--fit-batch-size", type=int, default=None, help="fit's batch size (default: --batch-size)")
    p.add_argument("--backends", default="tensorflow,jax,torch")
    p.add_argument("--models", default="cnn", help="cnn and/or MobileNetV2, DenseNet121 (comma-separated)")
    p.add_argument("--app-samples", type=int, default=128, help="images per application scan (default 128)")
    p.add_argument("--app-batch", type=int, default=32, help="application batch size (default 32)")
    p.add_argument("--rounds", action="store_true", help="also print every round's times")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    unknown = set(args.models.split(",")) - {"cnn", *APPLICATIONS}
    if unknown:
        p.error(f"--models: unknown {sorted(unknown)}; choose from cnn, {', '.join(APPLICATIONS)}")
    if args.child:
        child(args)
        return
    print(f"deadrelu {C.revision()}; CPU: {cpu_model()}")
    print(f"load average before: {C.load_average()}")
    print(
        f"MNIST CNN: {args.samples:,} images, batch {args.batch_size}; fit: {args.epochs} epochs, batch "
        f"{args.fit_batch_size or args.batch_size}, monitor on {args.probe:,} images (its batch 256)"
    )
    tables = []
    for backend in args.backends.split(","):
        if backend != "tensorflow" and importlib.util.find_spec(backend) is None:
            print(f"{backend}: not installed, skipped")
            continue
        env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
        command = [sys.executable, __file__, "--child", *sys.argv[1:]]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        results = [
            json.loads(line[len(RESULT_TAG) :]) for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)
        ]
        if done.returncode != 0 or not results:
            print(f"{backend}: failed (exit {done.returncode})\n{done.stderr[-3000:]}")
            continue
        if args.rounds:
            print(done.stderr.rstrip())
        tables.append(table(backend, results, args))
        print(f"{backend}: done; load average now {C.load_average()}", flush=True)
    print(f"\nload average after: {C.load_average()}\n")
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()

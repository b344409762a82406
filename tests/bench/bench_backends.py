"""Scan / predict on every Keras backend (a script, not a pytest test).

For each backend (TensorFlow, JAX, PyTorch; those installed), a child process with KERAS_BACKEND
set builds the reference MNIST CNN of docs/benchmarks.md and times, side by side in that one process,
`model.predict(x, batch_size=B)` and `deadrelu.scan(model, x, batch_size=B)` — and, with labels,
`deadrelu.scan(..., gradients=True)` — on the same MNIST images: each warmed up once (tracing and
compilation not counted), then timed `--repeats` times interleaved; the verdict uses the paired
median (the median over rounds of the ratio measured within one round). Targets: scan / predict
≤ 1.3× on JAX and PyTorch, and on TensorFlow no worse than before.

Beside them, the floor of observing ("materialise"): `predict` of a multi-output
`keras.Model(model.inputs, [model output, per-sample sum of each ReLU site output])` — the same
layers, each run once, with every activation read once by a sum over all axes but the batch (one
streaming pass, a [batch] result that `predict` concatenates like the model's own output; see
`_common.materialise_loop` for why a sum). materialise / predict is what merely observing the
activations costs on that backend; scan / materialise what the statistics cost beyond it.

Usage (from the repository root):
    python tests/bench/bench_backends.py                 # 5,000 images, batch 500, 5 rounds
    python tests/bench/bench_backends.py --samples 2000 --repeats 3 --backends jax,torch
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

TARGET = 1.3
RESULT_TAG = "@@bench-result "


def child(args: argparse.Namespace) -> None:
    import keras

    import deadrelu

    model = C.mnist_cnn()
    model.compile(loss="categorical_crossentropy")
    x, y, source = C.load_inputs(args.samples)
    batch = args.batch_size
    sites = C.site_outputs(model)
    observed = keras.Model(
        model.inputs,
        [*model.outputs, *[keras.ops.sum(a, axis=tuple(range(1, len(a.shape)))) for a in sites]],
    )
    contenders = {
        "predict": lambda: model.predict(x, batch_size=batch, verbose=0),
        "scan": lambda: deadrelu.scan(model, x, batch_size=batch, verbose=0),
        "materialise": lambda: observed.predict(x, batch_size=batch, verbose=0),
        "scan_gradients": lambda: deadrelu.scan(model, x, y, batch_size=batch, gradients=True, verbose=0),
    }
    timings = C.time_interleaved(contenders, args.repeats, log=lambda line: print(line, file=sys.stderr))
    result = {
        "backend": keras.backend.backend(),
        "source": source,
        "median": {name: t.median for name, t in timings.items()},
        "scan/predict": C.paired_ratio(timings["scan"], timings["predict"]),
        "gradients/predict": C.paired_ratio(timings["scan_gradients"], timings["predict"]),
        "materialise/predict": C.paired_ratio(timings["materialise"], timings["predict"]),
        "scan/materialise": C.paired_ratio(timings["scan"], timings["materialise"]),
    }
    print(RESULT_TAG + json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--backends", default="tensorflow,jax,torch")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    print(f"deadrelu {C.revision()}; load before: {C.load_average()}")
    rows = []
    for backend in args.backends.split(","):
        if backend != "tensorflow" and importlib.util.find_spec(backend) is None:
            print(f"{backend}: not installed, skipped")
            continue
        env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
        command = [sys.executable, __file__, "--child", "--samples", str(args.samples)]
        command += ["--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
        if done.returncode != 0 or not lines:
            print(f"{backend}: failed (exit {done.returncode})\n{done.stderr[-2000:]}")
            continue
        r = json.loads(lines[-1][len(RESULT_TAG) :])
        target = "—" if backend == "tensorflow" else f"≤ {TARGET}×"
        met = "—" if backend == "tensorflow" else C.verdict(r["scan/predict"] <= TARGET)
        rows.append(
            f"| {backend} | {r['median']['predict']:.3f} s | {r['median']['scan']:.3f} s | "
            f"{r['scan/predict']:.2f}× | {target} | {met} | {r['median']['scan_gradients']:.3f} s | "
            f"{r['gradients/predict']:.2f}× | {r['median']['materialise']:.3f} s | {r['materialise/predict']:.2f}× "
            f"| {r['scan/materialise']:.2f}× |"
        )
        print(f"{backend}: done ({r['source']})")
    print(f"\nload after: {C.load_average()}\n")
    print(f"MNIST CNN, {args.samples:,} images, batch {args.batch_size}, medians of {args.repeats} interleaved rounds")
    header = "| backend | `predict` | `scan` | scan / predict (paired) | target | met? "
    print(
        header + "| `scan(gradients=True)` | gradients / predict | materialise | materialise / predict "
        "| scan / materialise |"
    )
    print("|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

"""What a scan of recurrent ReLU sites costs against `predict` (a script, not a pytest test).

    python tests/bench/bench_recurrent.py [--samples 2000] [--steps 100] [--units 64] [--repeats 5]

The model: `LSTM(units, activation="relu")` over `--steps` time steps of 8 features, then a Dense
head (its two sites: the candidate and the cell state, each measured over samples × time steps),
and the same with a `GRU`. Side by side, on the same random data, batch 200:

- predict: `model.predict(x, batch_size=200)` (Keras's own loop over the time steps);
- scan: `deadrelu.scan(model, x, batch_size=200)` (the layer unrolled while it runs, so every
  step's activation is observed);
- first calls (tracing included) of both, once, as a one-off command-line scan pays them.

Warm timings are medians of interleaved rounds (`_common.time_interleaved`); the verdict uses the
paired ratio. The issue's target: scan ≤ 1.5 × predict on the LSTM(64) over 100 steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import numpy as np

TARGET = 1.5


def build(kind: str, steps: int, units: int):
    import keras

    keras.utils.set_random_seed(C.SEED)
    layer = {"LSTM": keras.layers.LSTM, "GRU": keras.layers.GRU}[kind]
    inputs = keras.Input((steps, 8))
    return keras.Model(inputs, keras.layers.Dense(10)(layer(units, activation="relu")(inputs)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--units", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    import deadrelu

    x = np.random.default_rng(C.SEED).normal(size=(args.samples, args.steps, 8)).astype("float32")
    batch = args.batch_size
    print(
        f"# recurrent scan benchmark: {args.samples} samples × {args.steps} steps × 8 features, batch {batch}; "
        f"{os.cpu_count()} CPUs; load {C.load_average()}"
    )
    rows = []
    for kind in ("LSTM", "GRU"):
        model = build(kind, args.steps, args.units)
        cold = {}
        for name, run in (
            ("predict", lambda m=model: m.predict(x, batch_size=batch, verbose=0)),
            ("scan", lambda m=model: deadrelu.scan(m, x, batch_size=batch)),
        ):
            start = time.perf_counter()
            run()
            cold[name] = time.perf_counter() - start
        contenders = {
            "predict": lambda m=model: m.predict(x, batch_size=batch, verbose=0),
            "scan": lambda m=model: deadrelu.scan(m, x, batch_size=batch),
        }
        print(f"\n{kind}({args.units}) over {args.steps} steps:")
        t = C.time_interleaved(contenders, args.repeats, groups=[["predict", "scan"]])
        ratio = C.paired_ratio(t["scan"], t["predict"])
        rows.append((kind, t["predict"].median, t["scan"].median, ratio, cold["predict"], cold["scan"]))

    print(f"\n## Summary (ended at load {C.load_average()})\n")
    print(
        "| model | `predict` | `deadrelu.scan` | scan / predict (paired) | target | met? "
        "| first call: predict / scan (tracing included) |"
    )
    print("|---|---:|---:|---:|---|---|---|")
    for kind, predict, scan, ratio, cold_predict, cold_scan in rows:
        print(
            f"| {kind}({args.units}), {args.steps} steps | {predict:.3f} s | {scan:.3f} s | {ratio:.2f}× "
            f"| ≤ {TARGET}× | {C.verdict(ratio <= TARGET)} | {cold_predict:.2f} s / {cold_scan:.2f} s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

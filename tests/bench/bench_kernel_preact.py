"""The fused kernel's pre-activation op against TensorFlow's own ops (a script, not a pytest test).

    python tests/bench/bench_kernel_preact.py [--repeats 7] [--calls 10]

Times `deadrelu_preact_stats(z, valid)` (deadrelu/kernel/site_stats.cc: per unit max, min, float64
sum and sum of squares of z, NaN/±inf read as 0, one pass) against the same numbers from
TensorFlow's ops, each in its own `tf.function`:

  tf          reduce_max, reduce_min, and reduce_sum of z and z² cast to float64 (finite z assumed)
  tf+finite   the same on `where(is_finite(z), z, 0)`: what the op computes, non-finite values included

on MNIST-CNN-sized pre-activations [samples, positions, units] (the CNN of docs/benchmarks.md at a
batch of 500: its two convolutions give [500, 676, 32] and [500, 121, 64]), random normal values,
1% of them NaN or ±inf. Before timing, the numbers are checked against each other (maxima and minima
equal, sums within 1e-12). Contenders are warmed up (traced) once, then timed in interleaved rounds;
each round runs `--calls` calls. Prints a markdown table with the median time per call and the
paired median ratio of TensorFlow's ops to the kernel.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C
import numpy as np

SHAPES = {"conv1 [500, 676, 32]": (500, 676, 32), "conv2 [500, 121, 64]": (500, 121, 64)}


def pre_activations(shape: tuple[int, int, int], seed: int = C.SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(0.1, 1.0, shape).astype(np.float32)
    spots = rng.random(shape) < 0.01
    z[spots] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), int(spots.sum()))
    return z


def contenders(z: np.ndarray, calls: int) -> tuple[dict, dict]:
    """The timed callables (each runs `calls` calls and waits for the results) and one result of each."""
    import tensorflow as tf

    import deadrelu.kernel as kernel

    ops = kernel.load().module
    z = tf.constant(z)
    valid = tf.zeros((0,), tf.float32)

    @tf.function
    def fused(z, valid):
        return ops.deadrelu_preact_stats(z, valid)

    def reductions(z):
        wide = tf.cast(z, tf.float64)
        return (
            tf.reduce_max(z, axis=(0, 1)),
            tf.reduce_min(z, axis=(0, 1)),
            tf.reduce_sum(wide, axis=(0, 1)),
            tf.reduce_sum(wide * wide, axis=(0, 1)),
        )

    @tf.function
    def plain(z):
        return reductions(z)

    @tf.function
    def finite(z):
        return reductions(tf.where(tf.math.is_finite(z), z, tf.zeros_like(z)))

    calls_of = {"kernel": lambda: fused(z, valid), "tf": lambda: plain(z), "tf+finite": lambda: finite(z)}

    def repeated(call):
        def run():
            for _ in range(calls):
                out = call()
            return [t.numpy() for t in out]

        return run

    return {name: repeated(call) for name, call in calls_of.items()}, {n: c() for n, c in calls_of.items()}


def check(z: np.ndarray, results: dict) -> None:
    """The kernel's numbers equal TensorFlow's with non-finite z read as 0: maxima and minima exactly,
    sums within 1e-12 (the sum of z relative to the sum of |z|, since it cancels)."""
    got = [t.numpy() for t in results["kernel"]]
    want = [t.numpy() for t in results["tf+finite"]]
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[3], want[3], rtol=1e-12)
    sum_abs = np.abs(np.where(np.isfinite(z), z, 0)).astype(np.float64).sum(axis=(0, 1))
    assert (np.abs(got[2] - want[2]) <= 1e-12 * sum_abs).all(), np.abs(got[2] - want[2]).max()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10, help="calls per contender and round")
    args = parser.parse_args()
    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {C.revision()}, load {C.load_average()}")
    print(f"intra-op threads: {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}")
    rows = []
    for label, shape in SHAPES.items():
        print(f"{label}:")
        z = pre_activations(shape)
        timed, results = contenders(z, args.calls)
        check(z, results)
        timings = C.time_interleaved(timed, args.repeats, groups=[list(timed)])
        per_call = {name: timing.median / args.calls * 1e3 for name, timing in timings.items()}
        rows.append(
            (
                label,
                f"{per_call['kernel']:.2f}",
                f"{per_call['tf']:.2f} ({C.paired_ratio(timings['tf'], timings['kernel']):.1f}×)",
                f"{per_call['tf+finite']:.2f} ({C.paired_ratio(timings['tf+finite'], timings['kernel']):.1f}×)",
            )
        )
    print()
    print("| z | kernel, ms/call | tf, ms/call (× kernel) | tf+finite, ms/call (× kernel) |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

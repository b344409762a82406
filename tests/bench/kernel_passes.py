"""Why a TensorFlow scan stays above its floor: the kernel's ReLU op against TensorFlow's (a script).

Issue 28. One site of the MNIST CNN's size (z of shape [500, 26, 26, 32], 43 MB), each variant one
`tf.function`, its results fetched, `--repeats` rounds interleaved, medians in milliseconds:

  relu + sum          `reduce_sum(relu(z))`: the floor's work on a site whose convolution has
                      already written relu(z) in its epilogue (one read of z here, one pass)
  relu(bias) + sum    `reduce_sum(relu(bias_add(z, b)))`: the same with TensorFlow adding the bias
  kernel              `deadrelu_relu_site_stats(z, valid, b)`: the bias added, relu(z) written, and
                      every statistic of a and z taken, in one pass (what a scan runs per site)
  site stats          `relu(z)` by TensorFlow, then the kernel's output statistics on it
  preact stats        the kernel's pre-activation statistics of z alone

Usage (from the repository root):
    python tests/bench/kernel_passes.py --repeats 15
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C
import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()

    import tensorflow as tf

    from deadrelu import kernel

    ops = kernel.ops()
    if ops is None:
        sys.exit(f"the kernel is not in use: {kernel.status()}")
    z = tf.constant(np.random.default_rng(0).normal(size=(500, 26, 26, 32)).astype("float32"))
    b = tf.constant(np.random.default_rng(1).normal(size=32).astype("float32"))
    every_row = tf.zeros([0])
    rows = [500, -1, 32]

    variants = {
        "relu + sum": tf.function(lambda: tf.reduce_sum(tf.nn.relu(z))),
        "relu(bias) + sum": tf.function(lambda: tf.reduce_sum(tf.nn.relu(tf.nn.bias_add(z, b)))),
        "kernel": tf.function(lambda: ops.deadrelu_relu_site_stats(z, every_row, b, threshold=0.0)[1:]),
        "site stats": tf.function(lambda: ops.deadrelu_site_stats(tf.reshape(tf.nn.relu(z), rows), every_row)),
        "preact stats": tf.function(lambda: ops.deadrelu_preact_stats(tf.reshape(z, rows), every_row)),
    }

    def fetched(fn):
        return lambda: tf.nest.map_structure(lambda v: v.numpy(), fn())

    contenders = {name: fetched(fn) for name, fn in variants.items()}
    times = C.time_interleaved(contenders, args.repeats, log=lambda line: None, groups=[list(contenders)])
    print(f"deadrelu {C.revision()}; TensorFlow {tf.__version__}; z {tuple(z.shape)}; load {C.load_average()}")
    print("| variant | ms (median) |\n|---|---:|")
    for name, timing in times.items():
        print(f"| {name} | {timing.median * 1e3:.2f} |")


if __name__ == "__main__":
    main()

"""A/B of the TensorFlow kernel's bias fold (issue 28; a script, not a pytest test).

In one process, on the same model and batches: the floor of observing ("materialise",
`_common.materialise_loop`; with `--gradients` the compiled train step), `deadrelu.scan` as it is
(a site's `BiasAdd` or BatchNormalization shift folded into `deadrelu_relu_site_stats`,
`deadrelu.engine.reductions._unbiased`), and the same scan with the fold turned off on a copy of
the model (the op reads the summed z). Each is
warmed up once, then `--repeats` rounds interleaved (order alternating); ratios are paired medians
against the floor. Before timing, both scans' reports are checked equal.

Usage (from the repository root):
    python tests/bench/ab_bias_fold.py --repeats 9
    python tests/bench/ab_bias_fold.py --models MobileNetV2 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import time

import _common as C
import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="cnn", help="cnn and/or MobileNetV2, DenseNet121 (comma-separated)")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--gradients", action="store_true", help="gradient scans against a compiled train step (CNN)")
    args = p.parse_args()

    import keras
    import tensorflow as tf

    import deadrelu
    import deadrelu.engine.reductions as R

    fold = R._unbiased

    def unfolded(z):
        return z, tf.zeros((0,), tf.float32)

    print(f"deadrelu {C.revision()}; load average {C.load_average()}")
    for name in args.models.split(","):
        y = None
        if name == "cnn":
            model, (x, y, source), batch = C.mnist_cnn(), C.load_inputs(10_000), 500
        else:
            model, batch = C.application(name), 64
            x, source = C.uniform_images(512, (96, 96, 3)), "512 uniform images"
        if args.gradients and y is None:
            p.error("--gradients: the CNN only (it has labels)")
        extra = {"labels": y, "gradients": True, "loss": "categorical_crossentropy"} if args.gradients else {}
        twin = keras.models.clone_model(model)
        twin.set_weights(model.get_weights())

        def scan_unfolded(twin=twin, x=x, batch=batch, extra=extra):
            R._unbiased = unfolded
            try:
                return deadrelu.scan(twin, x, batch_size=batch, **extra)
            finally:
                R._unbiased = fold

        folded_report = deadrelu.scan(model, x, batch_size=batch, **extra)
        plain_report = scan_unfolded()
        same = [
            list(a.dead) == list(b.dead) and np.array_equal(a.active_rate, b.active_rate)
            for a, b in zip(folded_report.sites, plain_report.sites)
        ]
        print(f"\n{name} ({source}, batch {batch}): reports equal with and without the fold: {all(same)}")
        floor = C.train_step_loop(model, x, y, batch) if args.gradients else C.materialise_loop(model, x, batch)
        contenders = {
            "floor": floor,
            "scan": lambda model=model, x=x, batch=batch, extra=extra: deadrelu.scan(
                model, x, batch_size=batch, **extra
            ),
            "scan, no fold": scan_unfolded,
        }
        times = {label: [] for label in contenders}
        for f in contenders.values():
            f()
        for round_ in range(args.repeats):
            order = list(contenders.items())
            for label, f in order if round_ % 2 else order[::-1]:
                start = time.perf_counter()
                f()
                times[label].append(time.perf_counter() - start)
        floor = np.array(times["floor"])
        for label, values in times.items():
            ratio = float(np.median(np.array(values) / floor))
            against = "train step" if args.gradients else "materialise"
            print(f"  {label}: {np.median(values):.3f} s median, {ratio:.3f}× {against} (paired)")
    print(f"\nload average after: {C.load_average()}")


if __name__ == "__main__":
    main()

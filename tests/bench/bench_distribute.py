"""Scan time on the plain path vs under a `MirroredStrategy` (issue 16). A script, not collected by pytest.

    python tests/bench/bench_distribute.py [--samples 4096] [--batch-size 256] [--repeats 7]

Splits the CPU into 2 logical devices first (before TensorFlow starts), then scans the
MNIST CNN on `--samples` images three ways, side by side in one process: the plain path (a model
built outside any strategy), the distributed path on 1 replica (`MirroredStrategy(["/cpu:0"])`)
and on 2 replicas (`MirroredStrategy(["/cpu:0", "/cpu:1"])`), every model holding the same
weights. Each contender is warmed up once (its trace not counted), then timed in interleaved
rounds; ratios are paired medians (each round's ratio, then the median). On a 2-core machine the
2 logical devices share the same cores, so only the overhead of the distributed path means
something here: target, distributed on 1 replica ≤ 1.05× plain. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deadrelu.engine.distribute import split_cpu

split_cpu(2)  # first: logical devices exist only if made before TensorFlow starts its devices

from _common import load_average, load_inputs, mnist_cnn, paired_ratio, revision, time_interleaved  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    import deadrelu

    x, _, source = load_inputs(args.samples)
    plain = mnist_cnn()
    weights = plain.get_weights()
    models = {"plain": (plain, None)}
    for name, devices in (("mirrored, 1 replica", ["/cpu:0"]), ("mirrored, 2 replicas", ["/cpu:0", "/cpu:1"])):
        strategy = tf.distribute.MirroredStrategy(devices)
        with strategy.scope():
            model = mnist_cnn()
            model.set_weights(weights)
        models[name] = (model, strategy)

    reports = {}

    def contender(name):
        model, strategy = models[name]

        def run():
            reports[name] = deadrelu.scan(model, x, batch_size=args.batch_size, strategy=strategy)

        return run

    print(f"deadrelu {revision()}; {source}; batch {args.batch_size}; load {load_average()}")
    timings = time_interleaved({name: contender(name) for name in models}, args.repeats, groups=[list(models)])
    base = reports["plain"]
    for name, report in reports.items():  # the numbers are the same on every path
        assert report.summary == base.summary, name
        for a, b in zip(base.sites, report.sites):
            assert np.array_equal(a.fires, b.fires), (name, a.path)

    print()
    print(f"| path ({args.samples:,} MNIST images, batch {args.batch_size}) | median s | × plain (paired) |")
    print("|---|---:|---:|")
    for name, timing in timings.items():
        ratio = "1.00" if name == "plain" else f"{paired_ratio(timing, timings['plain']):.2f}"
        print(f"| {name} | {timing.median:.3f} | {ratio} |")


if __name__ == "__main__":
    main()

"""Overhead of `DeadReluMonitor` during `fit` (issue 6). A script, not collected by pytest.

    python tests/bench/bench_monitor.py [--samples 20000] [--probe 1000] [--epochs 2] [--repeats 3]

Fits the MNIST CNN of docs/benchmarks.md (batch 250, Adam) for `--epochs` epochs on `--samples` images, with and
without a monitor probing `--probe` images per epoch, from the same start each time. Runs are
interleaved (without, with, without, with, ...) and the median of each is compared, because this
machine is noisy. Every run builds, compiles and traces afresh, so the monitor's one-time probe
trace is included in its cost. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_inputs, mnist_cnn


def fit_once(x, y, probe, epochs: int, with_monitor: bool) -> tuple[float, object]:
    import keras

    import deadrelu

    model = mnist_cnn()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    callbacks = []
    monitor = None
    if with_monitor:
        monitor = deadrelu.DeadReluMonitor(probe, batch_size=500, on_dead=None, verbose=0)
        monitor.seconds = 0.0
        check = monitor.check

        def timed_check():  # the monitor's own time, a steadier figure than a difference of fits
            start = time.perf_counter()
            result = check()
            monitor.seconds += time.perf_counter() - start
            return result

        monitor.check = timed_check
        callbacks.append(monitor)
    start = time.perf_counter()
    model.fit(x, y, batch_size=250, epochs=epochs, verbose=0, callbacks=callbacks)
    return time.perf_counter() - start, monitor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--probe", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2,000 samples, 1 repeat (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.repeats = 2000, 1

    x, y, source = load_inputs(args.samples + args.probe)
    x_train, y_train, probe = x[: args.samples], y[: args.samples], x[args.samples :]
    print(f"data: {source}; {args.samples} training samples, {args.probe} probe samples, {args.epochs} epochs")
    fit_once(x_train[:500], y_train[:500], probe[:100], 1, True)  # warm up TensorFlow itself (not timed)

    times = {False: [], True: []}
    inside = []
    for repeat in range(args.repeats):
        for with_monitor in (False, True):
            seconds, monitor = fit_once(x_train, y_train, probe, args.epochs, with_monitor)
            times[with_monitor].append(seconds)
            checks = ""
            if monitor:
                inside.append(monitor.seconds / seconds)
                checks = (
                    f", {len(monitor.timeline)} checks taking {monitor.seconds:.2f} s, "
                    f"dead {monitor.timeline[-1].dead_fraction:.1%}"
                )
            print(f"  run {repeat + 1}: {'with' if with_monitor else 'without'} monitor {seconds:.2f} s{checks}")

    base, monitored = statistics.median(times[False]), statistics.median(times[True])
    overhead = monitored / base - 1
    print()
    print("| measurement | value | target | met? |")
    print("|---|---:|---:|---|")
    print(f"| fit without monitor (median of {args.repeats}) | {base:.2f} s | | |")
    print(f"| fit with monitor, {args.probe} probe samples per epoch | {monitored:.2f} s | | |")
    share = statistics.median(inside)
    met = "yes" if overhead <= 0.05 else "NO"
    print(f"| monitor overhead, difference of fit times | {overhead:+.1%} | ≤ +5% | {met} |")
    print(f"| time inside the monitor's checks / fit time | {share:.1%} | ≤ 5% | {'yes' if share <= 0.05 else 'NO'} |")


if __name__ == "__main__":
    main()

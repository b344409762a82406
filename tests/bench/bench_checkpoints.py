"""A checkpoint folder's timeline against the monitor's, on the sample's training recipe (docs/monitor.md).

    python tests/bench/bench_checkpoints.py [--epochs 10] [--probe 1000]

Trains the sample MLP (samples/make_samples.py: three Dense(64, relu), Adam at lr 0.05, batch 64,
6,000 bars images, seed 7) for `--epochs` epochs with `keras.callbacks.ModelCheckpoint` saving a
`.keras` and an `.h5` file every epoch and a `DeadReluMonitor(probe, check_freq="epoch")` on the
same fit; then scans each folder with `deadrelu.scan_checkpoints` on the same probe data and
compares the two timelines check by check (epoch, step, dead units, newly dead and recovered units,
persistence: every field of `Check.to_dict()`). Prints one markdown row per epoch, then the times.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "samples"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--probe", type=int, default=1000, help="probe samples (held-out bars images)")
    args = parser.parse_args()
    import keras
    from make_samples import build_mlp, make_bars

    import deadrelu

    x, y = make_bars(6000, seed=1)
    probe, _ = make_bars(args.probe, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"keras": Path(tmp, "keras"), "h5": Path(tmp, "h5")}
        for folder in folders.values():
            folder.mkdir()
        keras.utils.set_random_seed(7)
        model = build_mlp()
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
        monitor = deadrelu.DeadReluMonitor(probe, check_freq="epoch", on_dead=None, verbose=0)
        callbacks = [
            keras.callbacks.ModelCheckpoint(str(folders["keras"] / "epoch_{epoch:02d}.keras")),
            keras.callbacks.ModelCheckpoint(str(folders["h5"] / "weights.{epoch:02d}-{loss:.2f}.h5")),
            monitor,
        ]
        start = time.perf_counter()
        model.fit(x, y, epochs=args.epochs, batch_size=64, verbose=0, callbacks=callbacks)
        fit_seconds = time.perf_counter() - start
        results, seconds = {}, {}
        for kind, folder in folders.items():
            start = time.perf_counter()
            results[kind] = deadrelu.scan_checkpoints(folder, probe)
            seconds[kind] = time.perf_counter() - start
    monitor_checks = [c.to_dict() for c in monitor.timeline]
    print(f"{args.epochs} epochs, probe {args.probe} samples, {sum(monitor.timeline[0].units.values())} units\n")
    print(
        "| epoch | step | dead (monitor) | newly dead | recovered "
        "| .keras folder: same check | .h5 folder: same check |"
    )
    print("|---:|---:|---:|---:|---:|---|---|")
    for index, check in enumerate(monitor.timeline):
        same = ["yes" if results[k].timeline[index].to_dict() == monitor_checks[index] else "NO" for k in folders]
        newly = sum(map(len, check.newly_dead.values()))
        recovered = sum(map(len, check.recovered.values()))
        print(
            f"| {check.epoch} | {check.step:,} | {check.dead_fraction:.1%} | "
            f"{f'+{newly}' if index else '–'} | {recovered if index else '–'} | {same[0]} | {same[1]} |"
        )
    for kind, result in results.items():
        equal = [c.to_dict() for c in result.timeline] == monitor_checks
        units_compared = sum(sum(c.units.values()) for c in result.timeline)
        print(
            f"\n{kind}: {len(result)} files, timeline equal to the monitor's: {equal} "
            f"({units_compared:,} unit verdicts), traces {result.traces}, scan {seconds[kind]:.2f} s "
            f"({seconds[kind] / len(result) * 1000:.0f} ms per checkpoint)"
        )
    print(f"fit with the monitor and two ModelCheckpoints: {fit_seconds:.2f} s")


if __name__ == "__main__":
    main()

"""Watch units die during training, then let the monitor revive them.

    python samples/monitor_example.py [--epochs 8] [--plot-dir .]

Trains the sample MLP (three Dense(64, relu)) on the synthetic bars data with Adam at lr 0.05 —
far too high, so hidden units die within the first epochs — twice from the same start and seed:
once with `DeadReluMonitor(on_dead="warn")`, once with `on_dead="revive"` (ReDo re-initialisation
of the dead units, outputs unchanged at that moment, optimizer moments reset). Prints dead units
and accuracy per epoch side by side and saves the two timelines as PNGs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--plot-dir", default=".")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from make_samples import build_mlp, make_bars

    import deadrelu

    x_train, y_train = make_bars(6000, seed=1)
    x_val, y_val = make_bars(1000, seed=2)
    rows = {}
    for mode in ("warn", "revive"):
        keras.utils.set_random_seed(args.seed)
        model = build_mlp()
        model.compile(
            optimizer=keras.optimizers.Adam(args.lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        monitor = deadrelu.DeadReluMonitor(x_val[:500], on_dead=mode, max_dead_fraction=0.2, seed=args.seed)
        print(f"--- on_dead={mode!r}")
        history = model.fit(
            x_train,
            y_train,
            epochs=args.epochs,
            batch_size=64,
            verbose=0,
            validation_data=(x_val, y_val),
            callbacks=[monitor],
        )
        monitor.plot(os.path.join(args.plot_dir, f"monitor_{mode}.png"))
        rows[mode] = (
            history.history["deadrelu/dead_fraction"],
            history.history["val_accuracy"],
            [c.action for c in monitor.timeline],
        )

    print("\nepoch | dead (warn) | val acc (warn) | dead (revive) | val acc (revive) | action")
    print("---:|---:|---:|---:|---:|---")
    for epoch in range(args.epochs):
        warn, revive = rows["warn"], rows["revive"]
        print(
            f"{epoch + 1} | {warn[0][epoch]:.1%} | {warn[1][epoch]:.3f} | {revive[0][epoch]:.1%} | "
            f"{revive[1][epoch]:.3f} | {revive[2][epoch] or ''}"
        )


if __name__ == "__main__":
    main()

"""Rescue a model stuck with dead units: retrain as is vs patch vs revive vs revive + patch.

    python samples/rescue_stuck.py MODEL.h5 --mnist ../shared/data/mnist.npz [--epochs 2] [--seeds 0 1 2]

Made for `../shared/models/dd_mnist_al22_trained_stuck.h5` (a Keras 2.3.1 MNIST model stuck at
~11% accuracy with most units dead), but works for any MNIST model with input (28, 28, 1).
Every variant gets the same budget: `--train-samples` training images, `--epochs` epochs, the
file's own loss and optimizer (fresh state; `--optimizer adam --lr 1e-3` to override), the same
seed. Dead units are scanned on 2,000 test images; accuracy is measured on the whole test set.
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--mnist", required=True, help="path to mnist.npz (keras.datasets layout)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--optimizer", help="optimizer class for every variant (default: the file's)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the file's)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import deadrelu
    from deadrelu.fixes.model_utils import copy_model
    from deadrelu.fixes.retrain import retrain

    with np.load(args.mnist) as f:
        x_train = (f["x_train"][: args.train_samples].astype(np.float32) / 255)[..., None]
        y_train = f["y_train"][: args.train_samples].astype(np.int64)
        x_test = (f["x_test"].astype(np.float32) / 255)[..., None]
        y_test = f["y_test"].astype(np.int64)
    source = deadrelu.load_model(args.model)
    report = deadrelu.scan(source, x_test[:2000], batch_size=500)
    print(
        f"{os.path.basename(args.model)}: {report.summary['dead']}/{report.summary['units']} units dead "
        f"on 2,000 test images",
        flush=True,
    )

    results = {}
    for seed in args.seeds:
        revived = deadrelu.revive(source, x_test[:2000], seed=seed, batch_size=500)  # scans, revives, checks firing
        variants = {
            "retrain as is": copy_model(source),
            "patch → PReLU": deadrelu.patch(source, to="prelu"),
            "patch → LeakyReLU": deadrelu.patch(source, to="leaky"),
            "revive": revived,
            "revive + patch → PReLU": deadrelu.patch(revived, to="prelu"),
        }
        comparison = retrain(
            variants,
            source,
            x_train,
            y_train,
            epochs=args.epochs,
            batch_size=args.batch_size,
            validation_data=(x_test, y_test),
            seed=seed,
            probe_samples=2000,
            optimizer=args.optimizer,
            learning_rate=args.lr,
        )
        for variant in comparison.variants:
            accuracy = next((v for k, v in variant.after.items() if "acc" in k), float("nan"))
            results.setdefault(variant.name, []).append((accuracy, variant.dead_after, variant.units))
            print(
                f"  seed {seed}: {variant.name}: test accuracy {accuracy:.4f}, dead after "
                f"{variant.dead_after}/{variant.units}",
                flush=True,
            )

    optimizer = (args.optimizer or "the file's optimizer") + (f", lr {args.lr:g}" if args.lr else "")
    print(
        f"\n{args.epochs} epochs on {args.train_samples} images, batch {args.batch_size}, {optimizer}, "
        f"seeds {args.seeds}\n"
    )
    print("| variant | test accuracy per seed | dead units after (ReLU sites left) |")
    print("|---|---|---|")
    for name, rows in results.items():
        accuracies = ", ".join(f"{a:.4f}" for a, _, _ in rows)
        dead = ", ".join(f"{d}/{u}" if u else "no ReLU left" for _, d, u in rows)
        print(f"| {name} | {accuracies} | {dead} |")


if __name__ == "__main__":
    main()

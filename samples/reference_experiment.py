"""The reference experiment: ReLU vs LeakyReLU vs PReLU on the MNIST CNN, dead units beside accuracy.

    python samples/reference_experiment.py --mnist ../shared/data/mnist.npz [--epochs 25]

The "MNIST CNN" of two widely read Keras tutorials — Conv2D(32, 3×3) → act → MaxPooling2D(2) →
Dropout(0.25) → Conv2D(64, 3×3) → act → MaxPooling2D(2) → Dropout(0.25) → Flatten → Dense(256) →
act → Dense(10, softmax); categorical cross-entropy, Adam, batch 250, validation split 0.2 — with
four variants of `act`: ReLU, LeakyReLU(0.1), PReLU(alpha 0.25), PReLU(alpha zeros). Each variant
starts from the same seed. After training, each is scanned on the test set with deadrelu. For the
LeakyReLU/PReLU variants no unit can die; the table shows the units that never output a positive
value instead (they would be dead under ReLU), measured by scanning a copy with ReLU in their place.

Without `--mnist`, `keras.datasets.mnist` is downloaded (needs the internet).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

# Test accuracies the two tutorials report after 25 epochs.
REPORTED = {"ReLU": "0.9919–0.9929", "LeakyReLU(0.1)": "0.9928", "PReLU(0.25)": "0.9930", "PReLU(zeros)": "0.9927"}


def activation(name: str):
    import keras

    return {
        "ReLU": lambda: keras.layers.ReLU(),
        "LeakyReLU(0.1)": lambda: keras.layers.LeakyReLU(negative_slope=0.1),
        "PReLU(0.25)": lambda: keras.layers.PReLU(
            alpha_initializer=keras.initializers.Constant(0.25), shared_axes=None
        ),
        "PReLU(zeros)": lambda: keras.layers.PReLU(alpha_initializer="zeros"),
    }[name]()


def build(name: str):
    import keras

    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(32, (3, 3), name="conv_1"),
            activation(name),
            L.MaxPooling2D(2),
            L.Dropout(0.25),
            L.Conv2D(64, (3, 3), name="conv_2"),
            activation(name),
            L.MaxPooling2D(2),
            L.Dropout(0.25),
            L.Flatten(),
            L.Dense(256, name="dense_1"),
            activation(name),
            L.Dense(10, activation="softmax", name="output"),
        ],
        name=name.lower().replace("(", "_").replace(")", "").replace(".", ""),
    )


def as_relu(model):
    """A copy with every LeakyReLU/PReLU replaced by ReLU: its dead units never go positive in `model`."""
    import keras

    def clone(layer):
        if isinstance(layer, (keras.layers.LeakyReLU, keras.layers.PReLU)):
            return keras.layers.ReLU(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in copy.layers:
        original = model.get_layer(layer.name)
        if not isinstance(original, (keras.layers.LeakyReLU, keras.layers.PReLU)):
            layer.set_weights(original.get_weights())
    return copy


def load_mnist(path: str | None):
    if path:
        with np.load(path) as f:
            data = (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])
    else:
        import keras

        data = keras.datasets.mnist.load_data()
    (x_train, y_train), (x_test, y_test) = data
    prep = lambda x: (x.astype(np.float32) / 255.0)[..., None]  # noqa: E731
    return prep(x_train), np.eye(10, dtype=np.float32)[y_train], prep(x_test), np.eye(10, dtype=np.float32)[y_test]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", help="path to mnist.npz (keras.datasets layout); default: download")
    parser.add_argument("--epochs", type=int, default=25, help="epochs per variant (the tutorials use 25)")
    parser.add_argument("--train-samples", type=int, help="use only the first N training images")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    import deadrelu

    x_train, y_train, x_test, y_test = load_mnist(args.mnist)
    if args.train_samples:
        x_train, y_train = x_train[: args.train_samples], y_train[: args.train_samples]
    rows = []
    for name in REPORTED:
        keras.utils.set_random_seed(args.seed)
        model = build(name)
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        start = time.perf_counter()
        model.fit(x_train, y_train, batch_size=250, epochs=args.epochs, validation_split=0.2, verbose=0)
        seconds = time.perf_counter() - start
        _, accuracy = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
        scanned = model if name == "ReLU" else as_relu(model)
        report = deadrelu.scan(scanned, x_test, batch_size=500)
        per_site = {s.path: f"{len(s.dead)}/{s.units}" for s in report.sites}
        rows.append(
            {
                "variant": name,
                "test_accuracy": float(accuracy),
                "reported": REPORTED[name],
                "dead_or_never_positive": report.summary["dead"],
                "units": report.summary["units"],
                "per_site": per_site,
                "train_seconds": seconds,
            }
        )
        print(
            f"{name}: test accuracy {accuracy:.4f}, {report.summary['dead']}/{report.summary['units']} units "
            f"{'dead' if name == 'ReLU' else 'never positive'} {per_site} ({seconds:.0f} s)",
            flush=True,
        )

    print(
        f"\nMNIST CNN, {args.epochs} epochs, {len(x_train)} training images (80% fit, 20% validation), "
        f"seed {args.seed}\n"
    )
    print(
        "| variant | test accuracy | reported (25 epochs) | dead units (ReLU) / never positive (others) "
        "| conv_1 · conv_2 · dense_1 |"
    )
    print("|---|---:|---:|---:|---|")
    for row in rows:
        print(
            f"| {row['variant']} | {row['test_accuracy']:.4f} | {row['reported']} | "
            f"{row['dead_or_never_positive']} / {row['units']} | {' · '.join(row['per_site'].values())} |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"epochs": args.epochs, "seed": args.seed, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

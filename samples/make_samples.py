"""Regenerates the sample models and probe data in this folder.

    python samples/make_samples.py

The data is synthetic, so the samples need no download: 16×16 grey images of a bar at one of ten
angles (the class), with random position, thickness and noise, values in [0, 1].

- `healthy_cnn.keras` / `.h5`: a small CNN trained with Adam at lr 1e-3. Few or no dead units.
- `dying_mlp.keras` / `.h5`: an MLP with three Dense(64, relu) layers trained with Adam at
  lr 0.05, far too high: most hidden units die in the first epochs and never come back.
- `probe.npz`: 1,000 held-out images `x` (float32, (N, 16, 16, 1)) and their labels `y` (int).

Training runs on the CPU with fixed seeds, in about a minute.

The shipped models are saved by the oldest Keras deadrelu supports (Keras 3.3.3, TensorFlow 2.16.2),
because every later Keras opens a file an earlier one wrote, not the other way round.
`--resave` re-saves the existing models with the Keras that runs it, keeping their weights and
optimizer state; run it in the floor environment that `tests/compat/run_compat.py` builds:

    ~/.cache/deadrelu-compat/tf2.16.2-keras3.3.3-py3.11/bin/python samples/make_samples.py --resave
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIZE = 16
CLASSES = 10


def make_bars(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images of oriented bars: class k is a bar at angle k·18°."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, size=count)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    images = np.empty((count, SIZE, SIZE, 1), np.float32)
    for i, label in enumerate(labels):
        angle = np.pi * label / CLASSES + rng.normal(0, 0.04)
        cx, cy = rng.uniform(5, SIZE - 5, size=2)
        width = rng.uniform(0.8, 1.8)
        # Distance of each pixel from the line through (cx, cy) at `angle`.
        distance = np.abs((xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle))
        bar = np.clip(1.0 - distance / width, 0.0, 1.0)
        noise = rng.normal(0, 0.08, size=bar.shape)
        images[i, ..., 0] = np.clip(bar + noise, 0.0, 1.0)
    return images, labels.astype(np.int64)


def build_cnn():
    import keras

    return keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv_1"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(16, 3, activation="relu", name="conv_2"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu", name="dense_1"),
            keras.layers.Dense(CLASSES, activation="softmax", name="output"),
        ],
        name="healthy_cnn",
    )


def build_mlp():
    import keras

    return keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu", name="hidden_1"),
            keras.layers.Dense(64, activation="relu", name="hidden_2"),
            keras.layers.Dense(64, activation="relu", name="hidden_3"),
            keras.layers.Dense(CLASSES, activation="softmax", name="output"),
        ],
        name="dying_mlp",
    )


def train(model, lr: float, x, y, epochs: int):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    return model


def resave(out: Path) -> None:
    """Re-saves the sample models with the installed Keras: same weights, same optimizer state.

    A file from a newer Keras is first fitted to the installed one (settings it lacks, at their
    default, are dropped: `deadrelu.io.legacy.newer_keras`); Keras then restores the optimizer too.
    """
    import keras

    from deadrelu.io.legacy import newer_keras

    for name in ("healthy_cnn", "dying_mlp"):
        path = out / f"{name}.keras"
        with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as tmp:
            config = json.loads(archive.read("config.json"))
            written_by = json.loads(archive.read("metadata.json")).get("keras_version")
            newer_keras.fit_to_installed(config, path=str(path), written_by=written_by, objects={})
            fitted = Path(tmp) / path.name
            with zipfile.ZipFile(fitted, "w") as copy:
                for info in archive.infolist():
                    data = json.dumps(config).encode() if info.filename == "config.json" else archive.read(info)
                    copy.writestr(info, data)
            model = keras.models.load_model(fitted)
        for ext in (".keras", ".h5"):
            model.save(out / f"{name}{ext}")
        print(f"{name}: re-saved with Keras {keras.__version__} (was {written_by})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE), help="folder to write to (default: this folder)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--resave", action="store_true", help="re-save the models with this Keras")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    out = Path(args.out)
    if args.resave:
        resave(out)
        return
    x_train, y_train = make_bars(6000, seed=1)
    x_probe, y_probe = make_bars(1000, seed=2)
    np.savez_compressed(out / "probe.npz", x=x_probe, y=y_probe)

    for build, lr in ((build_cnn, 1e-3), (build_mlp, 0.05)):
        keras.utils.set_random_seed(7)
        model = train(build(), lr, x_train, y_train, args.epochs)
        _, accuracy = model.evaluate(x_probe, y_probe, verbose=0)
        for ext in (".keras", ".h5"):
            model.save(out / f"{model.name}{ext}")
        print(f"{model.name}: probe accuracy {accuracy:.3f} (Adam lr {lr:g}, {args.epochs} epochs)")


if __name__ == "__main__":
    main()

"""The tables of docs/fixing.md#which-fix-works: `deadrelu fix` on three MNIST models.

1. The MNIST CNN of docs/benchmarks.md killed by a too-high learning rate (Adam 0.05, trained until
   at least 30% of its ReLU units are dead), every candidate (the default set of a why-scan).
2. `../shared/models/dd_mnist_al22_trained_stuck.h5` (a legacy Keras 2 file stuck at ~11%).
3. The seeds' experiment: the same CNN trained normally (Adam 0.001), `--try baseline,leaky,prelu`.

Each row comes from the command line itself (`python -m deadrelu fix ... --json`), so the command
printed above each table reproduces it. Data: the first `--train` images of MNIST's training set
and the first `--val` of its test set, pixels scaled to [0, 1] (x/255), integer labels. The best
model written by `-o` is re-scanned on the probe data (the first 2,000 validation images) and its
dead fraction compared with the table's.

Usage: python tests/bench/sweep_fix.py [--train 10000] [--val 2000] [--epochs 2] [--out DIR] [--only 1,2,3]
       python tests/bench/sweep_fix.py --tables DIR   (print the tables of a previous run's JSON files)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MNIST, REPO, mnist_cnn

STUCK = REPO.parent / "shared/models/dd_mnist_al22_trained_stuck.h5"


def write_data(out: Path, train: int, val: int) -> tuple[Path, Path]:
    data = np.load(MNIST)
    train_path, val_path = out / "mnist_train.npz", out / "mnist_val.npz"
    scale = lambda a: (a[..., None] / 255.0).astype(np.float32)  # noqa: E731
    np.savez(train_path, x=scale(data["x_train"][:train]), y=data["y_train"][:train].astype(np.int64))
    np.savez(val_path, x=scale(data["x_test"][:val]), y=data["y_test"][:val].astype(np.int64))
    return train_path, val_path


def train_cnn(out: Path, train_path: Path, val_path: Path, *, lr: float, kill: bool) -> Path:
    """The MNIST CNN trained with Adam at `lr`: until ≥ 30% of its units are dead (`kill`), else 2 epochs."""
    import keras

    import deadrelu

    train, val = np.load(train_path), np.load(val_path)
    model = mnist_cnn()
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    for epoch in range(1, 4):
        model.fit(train["x"], train["y"], batch_size=32, epochs=1, verbose=0)
        dead = deadrelu.scan(model, val["x"], verbose=0).dead_fraction
        accuracy = model.evaluate(val["x"], val["y"], verbose=0, return_dict=True)["accuracy"]
        print(f"  trained Adam {lr}: epoch {epoch}, dead {dead:.1%}, val accuracy {accuracy:.4f}", flush=True)
        if (kill and dead >= 0.30) or (not kill and epoch == 2):
            break
    path = out / ("cnn_killed_lr005.keras" if kill else "cnn_trained.keras")
    model.save(path)
    return path


def run_fix(name: str, model: Path, train_path: Path, val_path: Path, out: Path, extra: list[str], epochs: int):
    summary, best = out / f"{name}.json", out / f"{name}_best.keras"
    for path in (summary, best):
        path.unlink(missing_ok=True)
    argv = ["fix", str(model), "--data", str(train_path), "--validation-data", str(val_path)]
    argv += ["--epochs", str(epochs), "--metric", "accuracy", *extra, "-o", str(best), "--json", str(summary)]
    shown = " ".join(["deadrelu", *argv]).replace(str(out) + "/", "").replace(str(REPO.parent) + "/", "../")
    print(f"\n$ {shown}", flush=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "deadrelu", *argv, "--quiet"], capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout, done.stderr)
        raise SystemExit(f"{name}: exit {done.returncode}")
    doc = json.loads(summary.read_text())
    print(f"({time.perf_counter() - start:.0f} s) {doc['verdict']}; candidates: {doc['settings']['chosen']}")
    print_table(doc)
    if doc["best"] is not None and best.exists():
        import keras

        import deadrelu

        probe = np.load(val_path)["x"][: doc["settings"]["probe_samples"]]
        rescanned = deadrelu.scan(keras.models.load_model(best), probe, verbose=0).dead_fraction
        table = next(c for c in doc["candidates"] if c["name"] == doc["best"])["dead_fraction_after"]
        same = rescanned == table
        print(f"re-scan of the written {doc['best']}: dead {rescanned:.4%} (table {table:.4%}); equal: {same}")
    return doc


def print_table(doc: dict) -> None:
    print("\n| candidate | val accuracy | val loss (Keras) | val data loss | dead after | params | seconds |")
    print("|---|---|---|---|---|---:|---:|")
    for c in doc["candidates"]:
        if c["status"] != "trained":
            print(f"| {c['name']} | skipped: {c['reason']} | | | | | |")
            continue
        cells = [f"{c['before'][key]:.4f} → {c[key]:.4f}" for key in ("val_accuracy", "val_loss", "val_data_loss")]
        dead = "no ReLU" if c["dead_fraction_after"] is None else f"{c['dead_fraction_after']:.1%}"
        best = " **best**" if c["name"] == doc["best"] else ""
        print(f"| {c['name']}{best} | {' | '.join(cells)} | {dead} | {c['params']:,} | {c['seconds']:.0f} |")
    base = next((c for c in doc["candidates"] if c["name"] == "baseline" and c["status"] == "trained"), None)
    if base is not None and doc["best"] is not None:
        top = next(c for c in doc["candidates"] if c["name"] == doc["best"])
        print(f"\nbest − baseline: {100 * (top['val_accuracy'] - base['val_accuracy']):+.1f} points of val accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--val", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="/tmp/deadrelu_sweep_fix")
    parser.add_argument("--only", default="1,2,3")
    parser.add_argument("--tables", metavar="DIR", help="only print the tables of the JSON files in DIR")
    args = parser.parse_args()
    if args.tables:
        for path in sorted(Path(args.tables).glob("t[123]_*.json")):
            doc = json.loads(path.read_text())
            print(f"\n## {path.name}: {doc['verdict']}; candidates: {doc['settings']['chosen']}")
            print_table(doc)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(","))
    cpus = os.cpu_count()
    print(f"MNIST: first {args.train} training images, first {args.val} test images (validation); {cpus} CPUs")
    train_path, val_path = write_data(out, args.train, args.val)
    if "1" in only:
        print("\n## 1. MNIST CNN killed by Adam at lr 0.05")
        killed = train_cnn(out, train_path, val_path, lr=0.05, kill=True)
        run_fix("t1_killed", killed, train_path, val_path, out, [], args.epochs)
    if "2" in only:
        print("\n## 2. dd_mnist_al22_trained_stuck.h5")
        if not STUCK.exists():
            print(f"{STUCK} is absent: skipped")
        else:
            run_fix("t2_stuck", STUCK, train_path, val_path, out, [], args.epochs)
    if "3" in only:
        print("\n## 3. The seeds' experiment: a trained ReLU MNIST CNN, --try baseline,leaky,prelu")
        trained = train_cnn(out, train_path, val_path, lr=0.001, kill=False)
        run_fix("t3_seeds", trained, train_path, val_path, out, ["--try", "baseline,leaky,prelu"], args.epochs)


if __name__ == "__main__":
    main()

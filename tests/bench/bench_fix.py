"""The cost of `deadrelu.fix`'s machinery beyond the candidates' own training.

Runs `deadrelu.fix` on the MNIST CNN of docs/benchmarks.md (weights from a fixed seed, Adam 0.001,
64 of its Dense(256) units planted dead with a bias of -100) and compares the whole call's wall
time with the sum of the candidates' `model.fit` times (`Candidate.fit_seconds`: tracing, the
training steps and fit's own per-epoch validation). What is left is the machinery: the first scan
(with the why-analysis when the candidates are chosen from it), building each candidate (copy,
patch, revive, prune, with their output checks), compiling, the validation pass before training,
and the scan after it. The goal (issue 26) is ≤ 10%.

Data: the first `--train` images of MNIST's training set, the first `--val` of its test set, x/255.

Usage: python tests/bench/bench_fix.py [--train 6000] [--val 1000] [--epochs 1] [--repeats 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MNIST, mnist_cnn

EVERY = "baseline,leaky,prelu,revive,revive+lr,lr,prune"


def model_with_dead_units():
    import keras

    model = mnist_cnn()
    model.compile(optimizer=keras.optimizers.Adam(0.001), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    dense = model.layers[-2]
    kernel, bias = dense.get_weights()
    bias[:64] = -100.0
    dense.set_weights([kernel, bias])
    return model


def one_run(model, data, epochs: int, candidates: str | None) -> tuple[float, float, list]:
    import deadrelu

    x, y, xv, yv = data
    start = time.perf_counter()
    result = deadrelu.fix(model, x, y, validation_data=(xv, yv), candidates=candidates, epochs=epochs, verbose=0)
    total = time.perf_counter() - start
    fits = sum(c.fit_seconds for c in result.candidates)
    return total, fits, result.candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    raw = np.load(MNIST)
    scale = lambda a: (a[..., None] / 255.0).astype(np.float32)  # noqa: E731
    data = (
        scale(raw["x_train"][: args.train]),
        raw["y_train"][: args.train].astype(np.int64),
        scale(raw["x_test"][: args.val]),
        raw["y_test"][: args.val].astype(np.int64),
    )
    model = model_with_dead_units()
    print(f"MNIST CNN, {args.train} training / {args.val} validation images, {args.epochs} epoch(s) per candidate")
    for label, candidates in (("--try (all 7 named)", EVERY), ("default (why-scan chooses)", None)):
        for repeat in range(args.repeats):
            total, fits, rows = one_run(model, data, args.epochs, candidates)
            print(f"\n{label}, run {repeat + 1}: total {total:.1f} s, fits {fits:.1f} s")
            print("| candidate | seconds | fit seconds | machinery |")
            print("|---|---|---|---|")
            for c in rows:
                extra = c.seconds - c.fit_seconds
                print(f"| {c.name} | {c.seconds:.2f} | {c.fit_seconds:.2f} | {extra:.2f} |")
            print(f"machinery / fit time = {(total - fits) / fits:.3f} ({total - fits:.1f} s over {fits:.1f} s)")


if __name__ == "__main__":
    main()

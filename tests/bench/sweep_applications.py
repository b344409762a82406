"""Sweep over Keras Applications architectures: scan, patch and revive on each (a script, not a test).

The architectures users fine-tune most — VGG, ResNet (v1, v2), MobileNetV2, DenseNet, Inception,
Xception, NASNet — built by `keras.applications` with `weights=None` (nothing is downloaded; the
weights are Keras's random initialisation, seed 0) and small inputs. For each, in one run:

* `deadrelu.scan` on `--images` uniform random images (default 256): sites, units, dead units (of
  an untrained network on noise: a test of the machinery, not a verdict on the architecture);
* time of the compiled forward loop (the floor: `tf.function(lambda b: model(b, training=False))`
  per `tf.constant` batch), `model.predict` and `deadrelu.scan` on the same images, batch
  `--batch-size` (default 32), warm, medians of `--repeats` interleaved rounds, and the paired
  ratios scan / predict (target ≤ 1, from 256 images) and scan / forward;
* `patch_model(..., "leaky", alpha=0)`: rewritten sites and the largest output difference, which must be 0;
* `revive_model`: revived units, skipped sites, and the largest output difference on the scan data (its check).

Usage (from the repository root):
    python tests/bench/sweep_applications.py                # every architecture
    python tests/bench/sweep_applications.py VGG16 ResNet50 # some
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # before TensorFlow is imported anywhere

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

ARCHITECTURES = {
    # name: (constructor name in keras.applications, input shape, extra arguments)
    "VGG16": ("VGG16", (64, 64, 3), {}),
    "ResNet50": ("ResNet50", (64, 64, 3), {}),
    "ResNet50V2": ("ResNet50V2", (64, 64, 3), {}),
    "MobileNetV2": ("MobileNetV2", (96, 96, 3), {"alpha": 0.35}),
    "DenseNet121": ("DenseNet121", (64, 64, 3), {}),
    "InceptionV3": ("InceptionV3", (96, 96, 3), {}),
    "Xception": ("Xception", (96, 96, 3), {}),
    "NASNetMobile": ("NASNetMobile", (96, 96, 3), {}),
}


def build(name: str):
    import keras

    constructor, shape, extra = ARCHITECTURES[name]
    keras.utils.set_random_seed(0)
    return getattr(keras.applications, constructor)(weights=None, input_shape=shape, classes=10, **extra)


def max_difference(a, b) -> float:
    import numpy as np

    return float(max(np.max(np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64))) for p, q in zip(a, b)))


def sweep(name: str, repeats: int, images: int, batch_size: int) -> dict:
    import keras
    import numpy as np

    import deadrelu
    from deadrelu.errors import OutputCheckError
    from deadrelu.fixes.patch import patch_model
    from deadrelu.fixes.revive import revive_model

    model = build(name)
    x = np.random.default_rng(0).uniform(0, 1, (images, *model.input_shape[1:])).astype("float32")
    contenders = {
        "forward": C.forward_loop(model, x, batch_size),
        "predict": lambda: model.predict(x, batch_size=batch_size, verbose=0),
        "scan": lambda: deadrelu.scan(model, x, batch_size=batch_size),
    }
    report = contenders["scan"]()
    for which in ("forward", "predict"):  # warm-up (tracing not timed)
        contenders[which]()
    times = {which: [] for which in contenders}
    for round_ in range(repeats):
        order = list(contenders) if round_ % 2 == 0 else list(contenders)[::-1]
        for which in order:
            start = time.perf_counter()
            contenders[which]()
            times[which].append(time.perf_counter() - start)

    patched = patch_model(model, "leaky", alpha=0.0)
    patch_diff = max_difference(
        keras.tree.flatten(patched.model(x[:16], training=False)), keras.tree.flatten(model(x[:16], training=False))
    )
    try:
        result = revive_model(model, x, seed=0)
    except OutputCheckError as error:  # the sweep records the difference either way
        result = error.result
    revive_diff = result.check.max_abs_diff
    return {
        "model": name,
        "params": model.count_params(),
        "sites": len(report.sites),
        "units": report.summary["units"],
        "dead": report.summary["dead"],
        "forward": statistics.median(times["forward"]),
        "predict": statistics.median(times["predict"]),
        "scan": statistics.median(times["scan"]),
        "ratio": statistics.median(s / p for s, p in zip(times["scan"], times["predict"])),
        "to_forward": statistics.median(s / f for s, f in zip(times["scan"], times["forward"])),
        "rewrites": len(patched.rewrites),
        "patch_skipped": len(patched.skipped),
        "patch_diff": patch_diff,
        "revived": result.units_revived,
        "revive_skipped": len(result.skipped),
        "revive_diff": revive_diff,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"architectures (default: all of {', '.join(ARCHITECTURES)})"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per architecture (default 5)")
    parser.add_argument("--images", type=int, default=256, help="random images per architecture (default 256)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of every contender (default 32)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in ARCHITECTURES]
    if unknown:
        parser.error(f"unknown architecture {unknown[0]!r}; choose from {', '.join(ARCHITECTURES)}")

    import keras
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    print(
        f"# Keras Applications sweep (tensorflow {tf.__version__}, keras {keras.__version__}, {os.cpu_count()} CPUs; "
        f"{args.images} random images, batch {args.batch_size}, warm, median of {args.repeats}; "
        f"deadrelu at {C.revision()}; load {C.load_average()})\n"
    )
    print(
        "| model | params | sites | units | dead | forward s | predict s | scan s | scan / predict (paired) "
        "| scan / forward (paired) | patch: sites, max abs diff at slope 0 "
        "| revive: units, skipped sites, max abs diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for name in args.names or list(ARCHITECTURES):
        r = sweep(name, args.repeats, args.images, args.batch_size)
        print(
            f"| {r['model']} | {r['params']:,} | {r['sites']} | {r['units']:,} | {r['dead']:,} | {r['forward']:.2f} "
            f"| {r['predict']:.2f} | {r['scan']:.2f} | {r['ratio']:.2f}× | {r['to_forward']:.2f}× "
            f"| {r['rewrites']} (skipped {r['patch_skipped']}), {r['patch_diff']:.0e} "
            f"| {r['revived']:,}, {r['revive_skipped']}, {r['revive_diff']:.0e} |",
            flush=True,
        )
    print(f"\nload average at the end: {C.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

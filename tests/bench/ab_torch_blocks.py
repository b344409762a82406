"""A/B of the PyTorch statistics' block size, `reductions_torch._BLOCK_BYTES` (issue 28; a script).

In one PyTorch process, per model, `deadrelu.scan` with each block size, warmed up once, then
`--repeats` rounds interleaved (order alternating); times relative to the first size are paired
medians (with `--gradients`, gradient scans: the size is that of the blocks of z; the output and
its gradient keep `_GRADIENT_BLOCK_BYTES`). Models: the reference MNIST CNN (5,000 MNIST images,
batch 500) and `keras.applications` networks (weights=None, 128 uniform 96×96×3 images, batch 32).

Usage (from the repository root):
    python tests/bench/ab_torch_blocks.py --models cnn,MobileNetV2,DenseNet121 --sizes-mb 1,4,16
    python tests/bench/ab_torch_blocks.py --models cnn --gradients --sizes-mb 1,4
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C
import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="cnn,MobileNetV2,DenseNet121")
    p.add_argument("--sizes-mb", default="1,4,16", help="block sizes in MB, the first is the reference")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--gradients", action="store_true", help="gradient scans (the CNN only: it has labels)")
    args = p.parse_args()

    import deadrelu
    from deadrelu.engine import reductions_torch

    sizes = [int(float(mb) * (1 << 20)) for mb in args.sizes_mb.split(",")]
    print(f"deadrelu {C.revision()}; load average before: {C.load_average()}")
    for name in args.models.split(","):
        labels = None
        if name == "cnn":
            model, (x, labels, _), batch = C.mnist_cnn(), C.load_inputs(5000), 500
        else:
            model, x, batch = C.application(name), C.uniform_images(128, (96, 96, 3)), 32
        if args.gradients and labels is None:
            p.error("--gradients: the CNN only")
        extra = {"labels": labels, "gradients": True, "loss": "categorical_crossentropy"} if args.gradients else {}

        def scan(size: int, model=model, x=x, batch=batch, extra=extra) -> None:
            reductions_torch._BLOCK_BYTES = size
            deadrelu.scan(model, x, batch_size=batch, **extra)

        for size in sizes:
            scan(size)
        times = {size: [] for size in sizes}
        for round_ in range(args.repeats):
            for size in sizes if round_ % 2 else sizes[::-1]:
                start = time.perf_counter()
                scan(size)
                times[size].append(time.perf_counter() - start)
        reference = np.array(times[sizes[0]])
        for size, values in times.items():
            ratio = np.median(np.array(values) / reference)
            print(f"{name}: {size / (1 << 20):g} MB blocks {np.median(values):.3f} s, {ratio:.3f}× (paired)")
    print(f"load average after: {C.load_average()}")


if __name__ == "__main__":
    main()

"""What `scan(why=True)` costs over a plain scan, on the reference MNIST CNN of docs/benchmarks.md.

    python tests/bench/bench_why.py [--samples 10000] [--batch-size 500] [--repeats 5]

In one process, side by side (`_common.time_interleaved`: warmed up once, then interleaved rounds,
paired ratios), on `--samples` MNIST images x/255 (random images when ../shared is absent):

- forward: the model's compiled forward loop (the floor every scan is measured against);
- scan: `deadrelu.scan(model, x)` (with the per-unit pre-activation statistics every scan has);
- scan --why: `deadrelu.scan(model, x, why=True)` (the initialisation baseline and the causes).

Warm rows repeat scans of one model object (a notebook loop: traced steps reused). Cold rows scan
a new model object each time (a command-line run: every trace paid), `--repeats` times each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    import deadrelu

    x, _, source = C.load_inputs(args.samples)
    model = C.mnist_cnn()
    print(f"MNIST CNN, {source}, batch {args.batch_size}; load {C.load_average()}")
    warm = C.time_interleaved(
        {
            "forward": C.forward_loop(model, x, args.batch_size),
            "scan": lambda: deadrelu.scan(model, x, batch_size=args.batch_size, verbose=0),
            "scan --why": lambda: deadrelu.scan(model, x, batch_size=args.batch_size, verbose=0, why=True),
        },
        args.repeats,
        groups=[["forward", "scan", "scan --why"]],
    )
    cold = {"scan": [], "scan --why": []}
    for r in range(args.repeats):
        for name in ("scan", "scan --why") if r % 2 == 0 else ("scan --why", "scan"):
            fresh = C.mnist_cnn(seed=r + 1)
            start = time.perf_counter()
            deadrelu.scan(fresh, x, batch_size=args.batch_size, verbose=0, why=name == "scan --why")
            cold[name].append(time.perf_counter() - start)
    print()
    print("| | median s | ratio |")
    print("|---|---|---|")
    print(f"| forward loop | {warm['forward'].median:.3f} | 1.00× |")
    print(f"| scan (warm) | {warm['scan'].median:.3f} | {C.paired_ratio(warm['scan'], warm['forward']):.2f}× forward |")
    print(
        f"| scan --why (warm) | {warm['scan --why'].median:.3f} | "
        f"{C.paired_ratio(warm['scan --why'], warm['scan']):.2f}× scan |"
    )
    ratio = statistics.median(a / b for a, b in zip(cold["scan --why"], cold["scan"]))
    print(f"| scan (cold) | {statistics.median(cold['scan']):.3f} | |")
    print(f"| scan --why (cold) | {statistics.median(cold['scan --why']):.3f} | {ratio:.2f}× scan (cold) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

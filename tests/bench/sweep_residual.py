"""ReLUs after `Add` in ResNet50 (random init): how many are dead, revived, pruned (a script, not a test).

`keras.applications.ResNet50(weights=None)` (Keras's random initialisation, seed 0; nothing is
downloaded), small inputs, on uniform random images. ResNet v1 applies its ReLU after the block's
`Add` (`convN_blockM_out`), so these units have no weights of their own: revive gives a dead one
fresh weights on one branch of the sum (`deadrelu.fixes.residual`), prune removes its channel from
every branch. The script prints, for the `_out` sites:

* dead units (scan), and for revive: units revived, units left (with the first reasons), the
  largest output difference on the scan data relative to the output scale, how many revived
  units fire on a re-scan of the same images, and the time of `revive_model` (scan included);
* for prune: units removed, parameters before and after, the largest output difference, the time
  of `prune_model` (scan included).

Usage (from the repository root):
    python tests/bench/sweep_residual.py
    python tests/bench/sweep_residual.py --images 64 --size 64
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # before TensorFlow is imported anywhere

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import _common as C


def _cpu() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64, help="uniform random images (default 64)")
    parser.add_argument("--size", type=int, default=64, help="image height and width (default 64)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import numpy as np

    import deadrelu
    from deadrelu.fixes.prune import prune_model
    from deadrelu.fixes.revive import revive_model

    model = C.application("ResNet50", input_shape=(args.size, args.size, 3))
    x = np.random.default_rng(C.SEED).uniform(0, 1, (args.images, args.size, args.size, 3)).astype(np.float32)
    print(f"ResNet50(weights=None), {args.images} uniform images {args.size}x{args.size}, batch {args.batch_size}")
    print(f"CPU: {_cpu()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")

    report = deadrelu.scan(model, x, batch_size=args.batch_size)
    after_add = {site.path: site for site in report.sites if site.path.endswith("_out")}
    dead = {path: list(site.dead) for path, site in after_add.items() if site.dead}
    total_units = sum(site.units for site in after_add.values())
    print(
        f"\nscan: {len(after_add)} ReLUs after Add, {total_units} units, {sum(map(len, dead.values()))} dead "
        f"({len(dead)} sites); all ReLUs: {sum(len(s.dead) for s in report.sites)} dead of "
        f"{sum(s.units for s in report.sites)}"
    )

    start = time.perf_counter()
    result = revive_model(model, report, data=x, seed=0, batch_size=args.batch_size, sites=list(dead))
    seconds = time.perf_counter() - start
    revived = {path: units for path, units in result.revived.items() if path in dead}
    left = {path: sorted(set(dead[path]) - set(revived.get(path, []))) for path in dead}
    rescan = deadrelu.scan(result.model, x, batch_size=args.batch_size)
    still = {site.path: set(site.dead) for site in rescan.sites}
    firing = sum(len(set(units) - still[path]) for path, units in revived.items())
    check = result.check
    print("\nrevive (ReLUs after Add, seed 0):")
    print(
        f"  revived {sum(map(len, revived.values()))} units at {len(revived)} sites; "
        f"left {sum(map(len, left.values()))} units"
    )
    print(f"  max |Δ output| = {check.max_abs_diff:.3g}, output scale {check.scale:.3g}, passed: {check.passed}")
    print(f"  re-scan: {firing} of {sum(map(len, revived.values()))} revived units fire on the images")
    print(f"  time: {seconds:.1f} s (revive_model, second draws and check; the scan given)")
    for path in dead:
        reason = result.skipped.get(path, "")
        print(f"    {path:22s} dead {len(dead[path]):4d}  revived {len(revived.get(path, [])):4d}  {reason[:150]}")

    start = time.perf_counter()
    pruned = prune_model(model, report, data=x, batch_size=args.batch_size, sites=list(dead))
    seconds = time.perf_counter() - start
    removed = {path: units for path, units in pruned.removed.items() if path in dead}
    print("\nprune (ReLUs after Add):")
    print(
        f"  removed {sum(map(len, removed.values()))} units at {len(removed)} sites "
        f"(all sites: {pruned.units_removed}); params {pruned.params_before} → {pruned.params_after}"
    )
    if pruned.check is not None:
        print(
            f"  max |Δ output| = {pruned.check.max_abs_diff:.3g}, output scale {pruned.check.scale:.3g}, "
            f"passed: {pruned.check.passed}"
        )
    print(f"  time: {seconds:.1f} s (prune_model and check; the scan given)")
    for path in dead:
        reason = pruned.skipped.get(path, "")
        print(f"    {path:22s} dead {len(dead[path]):4d}  removed {len(removed.get(path, [])):4d}  {reason[:150]}")


if __name__ == "__main__":
    main()

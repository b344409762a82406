"""Where a warm `deadrelu.scan` spends its time (a script, not a pytest test).

Two views of one model, on the same batches as `bench_scan.py`:

1. A/B by substitution, CPU milliseconds per batch (median of `--repeats` interleaved rounds): the
   compiled forward loop (the floor), the whole scan, the probe as a scan runs it, the same probe
   without the kernel's fused ReLU op (TensorFlow applies the ReLU, the kernel's other ops reduce),
   the probe with every site's reduction replaced by a trivial one (what the engine costs besides
   reducing: hooks, accumulators, the Python loop, the data path), and the probe reducing one site
   only, for the `--sites` largest; the difference to the trivial probe is that site's reduction.
   The substituted probes run without the fused op, which reduces as it applies the ReLU.
2. `cProfile` of warm scans: the share spent executing the traced step (`TFE_Py_Execute`) and the
   Python functions around it that cost the most.

Usage (from the repository root):
    python tests/bench/profile_scan.py                        # the MNIST CNN, 10,000 images, batch 500
    python tests/bench/profile_scan.py --model NASNetMobile --samples 256 --batch-size 32
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # before TensorFlow is imported anywhere

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="cnn", help="cnn, or a keras.applications name (96×96×3, weights=None)")
    p.add_argument("--samples", type=int, default=None, help="images (default 10,000 for cnn, 512 otherwise)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default 500 for cnn, 64 otherwise)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--sites", type=int, default=3, help="the largest sites timed alone (default 3)")
    return p.parse_args(argv)


def trivial_stats(site, output, grad=None, *, positions=None, units=None, **_) -> dict:
    """Per-unit statistics of the right shapes and dtypes that read only the first row of the output
    (no pre-activation statistics: their totals keep their neutral values)."""
    import tensorflow as tf

    units = units or output.shape[site.channel_axis]
    first = tf.reduce_max(tf.reshape(tf.cast(output, tf.float32), [-1, units])[:1], axis=0)
    stats = {
        "fires": tf.cast(first, tf.int64),
        "sample_fires": tf.cast(first, tf.int64),
        "sum_abs": tf.cast(first, tf.float64),
        "max": first,
    }
    if site.capped:
        stats["saturated"] = tf.cast(first, tf.int64)
    return stats


def main(argv=None) -> int:
    args = parse_args(argv)
    import tensorflow as tf

    import deadrelu
    import deadrelu.engine.probe as probe_module

    tf.get_logger().setLevel("ERROR")
    if args.model == "cnn":
        n, batch = args.samples or 10000, args.batch_size or 500
        model = C.mnist_cnn()
        x = C.load_inputs(n)[0]
    else:
        n, batch = args.samples or 512, args.batch_size or 64
        model = C.application(args.model)
        x = C.uniform_images(n, (96, 96, 3))
    batches = [x[start : start + batch] for start in range(0, n, batch)]
    print(
        f"# profile of deadrelu.scan: {args.model}, {n} samples, batch {batch}; deadrelu at {C.revision()}; "
        f"load {C.load_average()}"
    )

    real, real_fused = probe_module.site_batch_stats, probe_module.fused_relu_stats

    def probe_with(stats_fn, fused: bool = False):
        """A fresh probe traced with `stats_fn` as its reduction; returns a pass over the batches. Unless
        `fused`, without the kernel's fused ReLU op: it measures as it applies the ReLU, so a probe
        with it would keep reducing whatever `stats_fn` is."""
        probe_module.site_batch_stats = stats_fn
        probe_module.fused_relu_stats = real_fused if fused else (lambda *args, **kwargs: None)
        try:
            probe = probe_module.Probe(model)
            result = probe.run(batches[:1])
        finally:
            probe_module.site_batch_stats, probe_module.fused_relu_stats = real, real_fused
        return (lambda: probe.run(batches)), result

    full, result = probe_with(real, fused=True)
    sizes = sorted(((s.positions * s.units, s.site.path) for s in result.sites), reverse=True)
    contenders = {
        "forward": C.forward_loop(model, x, batch),
        "scan": lambda: deadrelu.scan(model, x, batch_size=batch),
        "probe, every site": full,
        "probe, every site, no fused ReLU op": probe_with(real)[0],
        "probe, no reduction": probe_with(trivial_stats)[0],
    }
    for _, path in sizes[: args.sites]:

        def only(site, output, grad=None, *, path=path, **kwargs):
            return (real if site.path == path else trivial_stats)(site, output, grad, **kwargs)

        contenders[f"probe, {path} only"] = probe_with(only)[0]

    t = C.time_interleaved(contenders, args.repeats, log=lambda line: None)
    per_batch = {name: timing.cpu_median / len(batches) * 1e3 for name, timing in t.items()}
    base = per_batch["probe, no reduction"]
    print(f"\n## CPU ms per batch (median of {args.repeats} rounds; load after {C.load_average()})\n")
    print("| contender | CPU ms / batch | wall ms / batch | vs forward |\n|---|---:|---:|---:|")
    for name, ms in per_batch.items():
        extra = f" (reduction: +{ms - base:.1f} ms)" if name.endswith(" only") else ""
        wall = t[name].median / len(batches) * 1e3
        print(f"| {name}{extra} | {ms:.1f} | {wall:.1f} | {ms / per_batch['forward']:.2f}× |")
    largest = ", ".join(f"{path} ({size:,} values per sample)" for size, path in sizes[: args.sites])
    print(f"\nlargest sites: {largest}")

    profile = cProfile.Profile()
    deadrelu.scan(model, x, batch_size=batch)
    profile.enable()
    for _ in range(3):
        deadrelu.scan(model, x, batch_size=batch)
    profile.disable()
    stats = pstats.Stats(profile)
    total = sum(entry[3] for key, entry in stats.stats.items() if key[2] == "scan" and key[0].endswith("scanner.py"))
    graph = sum(entry[2] for key, entry in stats.stats.items() if "TFE_Py_Execute" in key[2])
    print(
        f"\n## cProfile of 3 warm scans: {total:.2f} s, of which executing the traced step {graph:.2f} s "
        f"({graph / max(total, 1e-9):.0%}); outside it, the costliest deadrelu functions (cumulative s):\n"
    )
    rows = sorted(
        (
            (entry[3], f"{Path(key[0]).name}:{key[1]}({key[2]})")
            for key, entry in stats.stats.items()
            if "deadrelu" in key[0] and key[2] not in ("scan", "run", "_run")
        ),
        reverse=True,
    )
    for seconds, name in rows[:8]:
        print(f"  {seconds:6.3f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

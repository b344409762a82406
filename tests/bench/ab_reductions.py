"""A/B of TensorFlow reduction variants against the engine's own (a script, not a pytest test).

Issue 15: per model, one process times the compiled forward loop, the probe with the engine's
`site_batch_stats`, and the probe with each variant below substituted (each traced once, warmed up,
then `--repeats` interleaved rounds; ratios are paired medians). Before timing, each variant's
per-unit numbers are checked against the engine's: counts and maxima equal, sums within 1e-6.
Variants (TensorFlow, channels-last sites with more than `_FEW_POSITIONS` positions; other sites
use the engine's code):
  concat         fires and sum_abs from ONE batched product over concat([sign(a), a], units axis)
  count_nonzero  fires per sample by `tf.math.count_nonzero` over positions
  bcast_ones     the products' row of ones [1, 1, P] broadcast over the batch, not [batch, 1, P]
  max_outer      the maximum by one `reduce_max` over [batch × positions, units] (no max-pool)
  max_outer_bcast  both of the last two

Usage (from the repository root):
    python tests/bench/ab_reductions.py --repeats 5
    python tests/bench/ab_reductions.py --models cnn --variants bcast_ones
"""

import argparse
import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C
import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--models", default="cnn,MobileNetV2,DenseNet121")
p.add_argument("--variants", default="concat,count_nonzero,bcast_ones,max_outer")
p.add_argument("--repeats", type=int, default=7)
args = p.parse_args()

import tensorflow as tf  # noqa: E402

import deadrelu.engine.probe as probe_module  # noqa: E402
import deadrelu.engine.reductions as R  # noqa: E402

real = probe_module.site_batch_stats


def generic(variant):
    def stats_fn(site, output, grad=None, *, positions=None, units=None, valid=None):
        a = output
        if grad is not None or units is not None or site.channel_axis != -1 or len(a.shape) < 3 or valid is not None:
            return real(site, output, grad, positions=positions, units=units, valid=valid)
        a = tf.cast(a, tf.float32)
        U = a.shape[-1]
        P = int(np.prod(a.shape[1:-1]))
        if P <= R._FEW_POSITIONS:
            return real(site, output, grad, positions=positions, units=units, valid=valid)
        flat = tf.reshape(a, (-1, P, U))
        fires = tf.sign(flat)
        if variant == "concat":
            both = tf.concat([fires, flat], axis=-1)
            s = tf.matmul(tf.ones((tf.shape(flat)[0], 1, P), tf.float32), both)[:, 0, :]
            pf, ps = s[:, :U], s[:, U:]
        elif variant == "count_nonzero":
            pf = tf.math.count_nonzero(flat, axis=1, dtype=tf.float32)
            ps = R._sum_positions(flat)
        elif variant == "bcast_ones":
            ones = tf.ones((1, 1, P), tf.float32)
            pf = tf.matmul(ones, fires)[:, 0, :]
            ps = tf.matmul(ones, flat)[:, 0, :]
        elif variant in ("max_outer", "max_outer_bcast"):
            ones = tf.ones((1, 1, P), tf.float32) if variant == "max_outer_bcast" else None
            pf = R._sum_positions(fires) if ones is None else tf.matmul(ones, fires)[:, 0, :]
            ps = R._sum_positions(flat) if ones is None else tf.matmul(ones, flat)[:, 0, :]
        elif variant == "pool4d":
            pf = R._sum_positions(fires)
            ps = R._sum_positions(flat)
        else:
            raise ValueError(variant)
        if variant == "pool4d" and len(a.shape) == 4:
            h, w = a.shape[1], a.shape[2]
            mx = tf.nn.max_pool2d(a, (h, w), (h, w), "VALID")[:, 0, 0, :]
        elif variant.startswith("max_outer"):
            mx = tf.reduce_max(tf.reshape(a, (-1, U)), 0, keepdims=True)
        else:
            mx = R._max_positions(flat)
        stats = {
            "fires": tf.reduce_sum(tf.cast(pf, tf.int64), 0),
            "sample_fires": tf.reduce_sum(tf.cast(tf.sign(pf), tf.int64), 0),
            "sum_abs": tf.reduce_sum(tf.cast(ps, tf.float64), 0),
            "max": tf.reduce_max(mx, 0),
        }
        if site.capped:
            reached = tf.reduce_max(stats["max"]) >= site.max_value
            stats["saturated"] = tf.cond(
                reached,
                lambda: tf.reduce_sum(
                    tf.cast(R._sum_positions(tf.cast(flat >= site.max_value, tf.float32)), tf.int64), 0
                ),
                lambda: tf.zeros_like(stats["fires"]),
            )
        return stats

    return stats_fn


def probe_with(model, batches, stats_fn):
    probe_module.site_batch_stats = stats_fn
    try:
        probe = probe_module.Probe(model)
        probe.run(batches[:1])
    finally:
        probe_module.site_batch_stats = real
    return probe


def result_arrays(probe, batches):
    r = probe.run(batches)
    return [
        {
            k: np.asarray(getattr(s, k))
            for k in ("fires", "sample_fires", "sum_abs", "max_output", "saturated")
            if getattr(s, k) is not None
        }
        for s in r.sites
    ]


for name in args.models.split(","):
    if name == "cnn":
        model = C.mnist_cnn()
        x = C.load_inputs(10000)[0]
        batch = 500
    else:
        model = C.application(name)
        x = C.uniform_images(512, (96, 96, 3))
        batch = 64
    batches = [x[i : i + batch] for i in range(0, len(x), batch)]
    contenders = {"forward": C.forward_loop(model, x, batch)}
    base = probe_with(model, batches, real)
    ref = result_arrays(base, batches)
    contenders["current"] = lambda base=base, batches=batches: base.run(batches)
    for v in args.variants.split(","):
        pr = probe_with(model, batches, generic(v))
        got = result_arrays(pr, batches)
        ok = all(np.array_equal(a[k], b[k]) for a, b in zip(ref, got) for k in a if k != "sum_abs") and all(
            np.allclose(a["sum_abs"], b["sum_abs"], rtol=1e-6, atol=0) for a, b in zip(ref, got)
        )
        print(f"{name} {v}: equal to current: {ok}", flush=True)
        contenders[v] = lambda pr=pr, batches=batches: pr.run(batches)
    t = C.time_interleaved(contenders, args.repeats, log=lambda line: None, groups=[list(contenders)])
    print(f"## {name} (load {C.load_average()})")
    for k in contenders:
        print(
            f"  {k:14s} median {t[k].median:.3f}s cpu {t[k].cpu_median:.3f}s  "
            f"/forward {C.paired_ratio(t[k], t['forward']):.3f}  /current {C.paired_ratio(t[k], t['current']):.3f}",
            flush=True,
        )

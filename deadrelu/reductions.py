"""Per-batch reductions of site outputs, traced into the probe's step, and the variables they add to.

A site output of shape [batch, ..., units] is reduced to per-unit numbers right where it is
produced (`site_batch_stats`), and those are added to `Accumulators`: variables of size
O(units) that live across batches. Nothing of size samples × units is ever kept.

Every accumulator is a plain sum or maximum, so runs over shards (or replicas) combine by adding
or taking the maximum. Counts are int64 and sums of magnitudes float64, so they stay exact (or
accurate) past 2**24 observations.

Importing this module is cheap: TensorFlow is imported inside the functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deadrelu.sites import Site


def site_batch_stats(site: Site, output: Any, grad: Any = None, *, positions: int | None = None,
                     units: int | None = None) -> dict:
    """Reduces one site output (and its gradient) to per-unit sums over batch and positions.

    Args:
        site: The site the output belongs to (its channel axis and cap).
        output: The site's output for one batch, [batch, ..., units] (units on `site.channel_axis`).
        grad: ∂(summed loss)/∂output, same shape, or None without gradients.
        positions, units: Given together for op-level sites: the output holds, per sample,
            `positions` × `units` values (units last once the channel axis is moved there), but
            not necessarily with the batch first (time steps folded into the batch); it is
            reshaped to [samples, positions, units]. By default the batch is the first axis.

    Returns:
        Tensors of shape [units], keyed as the site accumulators of `Accumulators` ("saturated"
        for capped sites only, "grad_abs" and "grad_zero" with a gradient only).
    """
    import tensorflow as tf

    a = tf.cast(output, tf.float32)
    rank = a.shape.rank
    if site.channel_axis != -1 and rank > 2:
        perm = [0] + [i for i in range(1, rank) if i != site.channel_axis % rank] + [site.channel_axis % rank]
        a = tf.transpose(a, perm)
        if grad is not None:
            grad = tf.transpose(grad, perm)
    if units is None:
        units = a.shape[-1]
        # Keep the position count static when it is known: the max-pool below needs it.
        positions = a.shape[1:-1].num_elements() if rank > 2 else 1
    flat = tf.reshape(a, [-1, positions if positions is not None else tf.reduce_prod(tf.shape(a)[1:-1]), units])
    # Site outputs are ≥ 0 (Keras rejects negative ReLU thresholds): "fires" is sign(a) and
    # |a| is a. Sums over positions are batched `ones @ x` products and maxima a global max-pool:
    # both run on oneDNN's fast kernels, where plain reductions over the middle axis take several
    # times as long. Per-sample counts (≤ positions) are exact in float32.
    per_sample_fires = _sum_positions(tf.sign(flat))  # [batch, units]
    stats = {
        "fires": _sum_batch(per_sample_fires, tf.int64),
        "sample_fires": _sum_batch(tf.sign(per_sample_fires), tf.int64),
        "sum_abs": _sum_batch(_sum_positions(flat), tf.float64),
        "max": tf.reduce_max(_max_positions(flat), axis=0),
    }
    at_cap = None
    if site.capped:
        at_cap = tf.cast(tf.greater_equal(flat, site.max_value), tf.float32)
        stats["saturated"] = _sum_batch(_sum_positions(at_cap), tf.int64)
    if grad is not None:
        # ∂ℓ/∂z = ∂ℓ/∂a · f'(z): the ReLU passes gradient where it fires and is below its cap.
        g = tf.reshape(tf.cast(grad, tf.float32), tf.shape(flat))
        passes = tf.sign(flat) if at_cap is None else tf.sign(flat) * (1.0 - at_cap)
        g = tf.abs(g * passes)
        nonzero = _sum_batch(_sum_positions(tf.sign(g)), tf.int64)
        stats["grad_abs"] = _sum_batch(_sum_positions(g), tf.float64)
        stats["grad_zero"] = tf.cast(tf.shape(flat)[0] * tf.shape(flat)[1], tf.int64) - nonzero
    return stats


def _sum_positions(x):
    """[batch, positions, units] → [batch, units], as one batched matrix product."""
    import tensorflow as tf

    ones = tf.ones([tf.shape(x)[0], 1, tf.shape(x)[1]], x.dtype)
    return tf.matmul(ones, x)[:, 0, :]


def _max_positions(x):
    """[batch, positions, units] → [batch, units] maxima, as a global max-pool when the size is known."""
    import tensorflow as tf

    positions = x.shape[1]
    if positions is None:
        return tf.reduce_max(x, axis=1)
    pooled = tf.nn.max_pool2d(x[:, :, None, :], ksize=(positions, 1), strides=(positions, 1), padding="VALID")
    return pooled[:, 0, 0, :]


def _sum_batch(x, dtype):
    """[batch, units] → [units]; widened before summing, so counts stay exact past 2**24."""
    import tensorflow as tf

    return tf.reduce_sum(tf.cast(x, dtype), axis=0)


class Accumulators:
    """The probe's running totals, as variables updated inside the traced step.

    Per site, one variable of shape [units] per statistic; per unit it holds:

        fires: (sample, position) pairs with a non-zero output (int64).
        sample_fires: Samples in which the unit fired at least once (int64).
        sum_abs: Sum of |output| (float64).
        max: The largest output (float32; -inf until reached, read as 0).
        saturated: Pairs at the cap (int64; capped sites such as relu6 only).
        grad_abs: Sum of |∂ℓₙ/∂z| (float64; with gradients only).
        grad_zero: Pairs whose ∂ℓₙ/∂z is exactly zero (int64; with gradients only).

    With gradients also, per weight group, the summed gradient of each of its variables (float32,
    created by `add_weight_accumulators`) and the summed per-sample loss (float64).

    Args:
        sites: The sites measured, in model order.
        layout: Per site `(calls, positions, units)`; only `units` is used here.
        gradients: Whether the gradient accumulators (and the loss) are kept.
    """

    def __init__(self, sites: list[Site], layout: list[tuple[int, int, int]], gradients: bool):
        import tensorflow as tf

        self._vars: list[dict] = []
        for site, (_, _, units) in zip(sites, layout):
            entry = {
                "fires": tf.Variable(tf.zeros([units], tf.int64), trainable=False),
                "sample_fires": tf.Variable(tf.zeros([units], tf.int64), trainable=False),
                "sum_abs": tf.Variable(tf.zeros([units], tf.float64), trainable=False),
                "max": tf.Variable(tf.zeros([units], tf.float32), trainable=False),
            }
            if site.capped:
                entry["saturated"] = tf.Variable(tf.zeros([units], tf.int64), trainable=False)
            if gradients:
                entry["grad_abs"] = tf.Variable(tf.zeros([units], tf.float64), trainable=False)
                entry["grad_zero"] = tf.Variable(tf.zeros([units], tf.int64), trainable=False)
            self._vars.append(entry)
        self._weights: list[list] = []
        self._loss = tf.Variable(0.0, dtype=tf.float64, trainable=False) if gradients else None

    def add_weight_accumulators(self, groups: list) -> None:
        """Adds one float32 gradient sum per variable of each group (objects with `.variables`)."""
        import tensorflow as tf

        self._weights = [[tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False) for v in group.variables]
                         for group in groups]

    def reset(self) -> None:
        """Zeroes every total (maxima start at -inf) before a new pass over the data."""
        for entry in self._vars:
            for name, var in entry.items():
                # ReLU outputs are ≥ 0 for threshold ≥ 0; -inf start keeps negative thresholds right.
                var.assign(np.full(var.shape, -np.inf, np.float32) if name == "max"
                           else np.zeros(var.shape, var.dtype.as_numpy_dtype))
        for group in self._weights:
            for var in group:
                var.assign(np.zeros(var.shape, np.float32))
        if self._loss is not None:
            self._loss.assign(0.0)

    def add_site(self, index: int, stats: dict) -> None:
        """Adds one batch's `site_batch_stats` of site `index` (maxima are combined by maximum)."""
        import tensorflow as tf

        entry = self._vars[index]
        for name, value in stats.items():
            if name == "max":
                entry[name].assign(tf.maximum(entry[name], value))
            else:
                entry[name].assign_add(value)

    def add_weight_grads(self, grads: list) -> None:
        """Adds one batch's weight gradients, in the order of the groups' variables."""
        import tensorflow as tf

        flat = [var for group in self._weights for var in group]
        for var, grad in zip(flat, grads):
            var.assign_add(tf.convert_to_tensor(grad))  # IndexedSlices (embeddings) → dense

    def add_loss(self, total: Any) -> None:
        """Adds one batch's summed per-sample loss."""
        import tensorflow as tf

        self._loss.assign_add(tf.cast(total, tf.float64))

    def read(self) -> dict:
        """The totals as numpy arrays.

        Returns:
            `{"sites": [per site {key: array}], "weights": [per group [float64 array per variable]]}`,
            plus `"loss"` (the summed loss) with gradients. A maximum never updated reads 0.
        """
        sites = [{name: var.numpy() for name, var in entry.items()} for entry in self._vars]
        for entry in sites:
            entry["max"] = np.where(np.isneginf(entry["max"]), 0.0, entry["max"]).astype(np.float32)
        values = {"sites": sites,
                  "weights": [[var.numpy().astype(np.float64) for var in group] for group in self._weights]}
        if self._loss is not None:
            values["loss"] = self._loss.numpy()
        return values

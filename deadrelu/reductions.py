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


def site_batch_stats(
    site: Site, output: Any, grad: Any = None, *, positions: int | None = None, units: int | None = None
) -> dict:
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
    # |a| is a. Per-sample counts (≤ positions) are exact in float32.
    fires = tf.sign(flat)
    per_sample_fires = _sum_positions(fires)  # [batch, units]
    stats = {
        "fires": _sum_batch(per_sample_fires, tf.int64),
        "sample_fires": _sum_batch(tf.sign(per_sample_fires), tf.int64),
        "sum_abs": _sum_batch(_sum_positions(flat), tf.float64),
        "max": tf.reduce_max(_max_positions(flat), axis=0),
    }
    passes = fires
    if site.capped:
        # Counting the entries at the cap takes three more passes over the output (compare, cast,
        # product); a batch whose maximum stays below the cap has none, and skips them.
        reached = tf.reduce_max(stats["max"]) >= site.max_value

        def at_cap():
            return tf.cast(tf.greater_equal(flat, site.max_value), tf.float32)

        stats["saturated"] = tf.cond(
            reached, lambda: _sum_batch(_sum_positions(at_cap()), tf.int64), lambda: tf.zeros_like(stats["fires"])
        )
        if grad is not None:
            passes = tf.cond(reached, lambda: fires * (1.0 - at_cap()), lambda: fires)
    if grad is not None:
        # ∂ℓ/∂z = ∂ℓ/∂a · f'(z): the ReLU passes gradient where it fires and is below its cap.
        g = tf.reshape(tf.cast(grad, tf.float32), tf.shape(flat))
        g = tf.abs(g * passes)
        nonzero = _sum_batch(_sum_positions(tf.sign(g)), tf.int64)
        stats["grad_abs"] = _sum_batch(_sum_positions(g), tf.float64)
        stats["grad_zero"] = tf.cast(tf.shape(flat)[0] * tf.shape(flat)[1], tf.int64) - nonzero
    return stats


# Up to this many positions per sample, plain reductions over the middle axis are as fast as the
# batched product and the max-pool below (which win by several times on large feature maps).
_FEW_POSITIONS = 16


def _sum_positions(x):
    """[batch, positions, units] → [batch, units], as one batched matrix product (on oneDNN's fast
    kernels) unless the positions are few."""
    import tensorflow as tf

    positions = x.shape[1]
    if positions == 1:  # Dense sites: nothing to reduce
        return x[:, 0, :]
    if positions is not None and positions <= _FEW_POSITIONS:
        return tf.reduce_sum(x, axis=1)
    ones = tf.ones([tf.shape(x)[0], 1, tf.shape(x)[1]], x.dtype)
    return tf.matmul(ones, x)[:, 0, :]


def _max_positions(x):
    """[batch, positions, units] → [batch, units] maxima, as a global max-pool when the size is known."""
    import tensorflow as tf

    positions = x.shape[1]
    if positions == 1:
        return x[:, 0, :]
    if positions is None or positions <= _FEW_POSITIONS:
        return tf.reduce_max(x, axis=1)
    pooled = tf.nn.max_pool2d(x[:, :, None, :], ksize=(positions, 1), strides=(positions, 1), padding="VALID")
    return pooled[:, 0, 0, :]


def _sum_batch(x, dtype):
    """[batch, units] → [units]; widened before summing, so counts stay exact past 2**24."""
    import tensorflow as tf

    return tf.reduce_sum(tf.cast(x, dtype), axis=0)


# Per statistic: the dtype of its total and the value a site without output this batch adds.
_TOTALS = {
    "fires": ("int64", 0),
    "sample_fires": ("int64", 0),
    "sum_abs": ("float64", 0.0),
    "max": ("float32", -np.inf),  # combined by maximum; -inf keeps negative thresholds right
    "saturated": ("int64", 0),
    "grad_abs": ("float64", 0.0),
    "grad_zero": ("int64", 0),
}


class Accumulators:
    """The probe's running totals, as variables updated inside the traced step.

    One variable per statistic holds every site's units back to back (site `i` owns the slice
    `offsets[i]:offsets[i + 1]`), so a step updates each statistic with one op whatever the number
    of sites, and a reset or a read is a handful of calls. Per unit the statistics are:

        fires: (sample, position) pairs with a non-zero output (int64).
        sample_fires: Samples in which the unit fired at least once (int64).
        sum_abs: Sum of |output| (float64).
        max: The largest output (float32; -inf until reached, read as 0).
        saturated: Pairs at the cap (int64; capped sites such as relu6 only, their units alone).
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

        self._units = [units for _, _, units in layout]
        self._capped = [site.capped for site in sites]
        names = ["fires", "sample_fires", "sum_abs", "max"] + (["grad_abs", "grad_zero"] if gradients else [])
        if any(self._capped):
            names.append("saturated")
        self._totals = {}
        for name in names:
            size = sum(u for u, capped in zip(self._units, self._capped) if capped or name != "saturated")
            self._totals[name] = tf.Variable(tf.zeros([size], _TOTALS[name][0]), trainable=False)
        self._weights: list[list] = []
        self._loss = tf.Variable(0.0, dtype=tf.float64, trainable=False) if gradients else None

    def add_weight_accumulators(self, groups: list) -> None:
        """Adds one float32 gradient sum per variable of each group (objects with `.variables`)."""
        import tensorflow as tf

        self._weights = [
            [tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False) for v in group.variables] for group in groups
        ]

    def reset(self) -> None:
        """Zeroes every total (maxima start at -inf) before a new pass over the data."""
        for name, var in self._totals.items():
            var.assign(np.full(var.shape, _TOTALS[name][1], var.dtype.as_numpy_dtype))
        for group in self._weights:
            for var in group:
                var.assign(np.zeros(var.shape, np.float32))
        if self._loss is not None:
            self._loss.assign(0.0)

    def add_sites(self, records: list[tuple[int, dict]]) -> None:
        """Adds one batch's `site_batch_stats`, one `(site index, stats)` per recorded output.

        A site recorded several times in one batch (a layer called twice) adds up its records
        (maxima by maximum); a site not recorded adds nothing.
        """
        import tensorflow as tf

        by_site: dict[int, list[dict]] = {}
        for index, stats in records:
            by_site.setdefault(index, []).append(stats)
        for name, var in self._totals.items():
            dtype, neutral = _TOTALS[name]
            parts = []
            for index, units in enumerate(self._units):
                if name == "saturated" and not self._capped[index]:
                    continue
                values = [stats[name] for stats in by_site.get(index, [])]
                if not values:
                    parts.append(tf.fill([units], tf.constant(neutral, dtype)))
                elif len(values) == 1:
                    parts.append(values[0])
                else:
                    parts.append(tf.reduce_max(tf.stack(values), 0) if name == "max" else tf.add_n(values))
            if not parts:
                continue  # no sites (or no capped ones)
            total = tf.concat(parts, 0) if len(parts) > 1 else parts[0]
            if name == "max":
                var.assign(tf.maximum(var, total))
            else:
                var.assign_add(total)

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
        totals = {name: var.numpy() for name, var in self._totals.items()}
        totals["max"] = np.where(np.isneginf(totals["max"]), 0.0, totals["max"]).astype(np.float32)
        sites = [{} for _ in self._units]
        for name, values in totals.items():
            owners = [i for i in range(len(self._units)) if name != "saturated" or self._capped[i]]
            bounds = np.cumsum([self._units[i] for i in owners])[:-1]
            for index, part in zip(owners, np.split(values, bounds)):
                sites[index][name] = part
        values = {
            "sites": sites,
            "weights": [[var.numpy().astype(np.float64) for var in group] for group in self._weights],
        }
        if self._loss is not None:
            values["loss"] = self._loss.numpy()
        return values

"""Per-batch reductions of site outputs, traced into the probe's step, and the totals they add to.

A site output of shape [batch, ..., units], and its pre-activation z (what the ReLU was applied
to, same shape), are reduced to per-unit numbers right where they are produced
(`site_batch_stats`, written with `keras.ops`, so the same code runs inside a `tf.function`, under
`jax.jit` and eagerly on PyTorch; on TensorFlow's CPU, deadrelu's fused kernel when it is built).
`Totals.pack` lays one batch's numbers of every site back to back, one vector per statistic, which
the step returns; `Totals.add` adds them on the host into numpy totals of size O(units). Nothing of
size samples × units is ever kept.

Every total is a plain sum, maximum or minimum, so batches, replicas and workers combine by adding
or taking the maximum or minimum, in any order. The totals are int64 counts and float64 sums, so
they stay exact (or accurate) past 2**24 observations; within a batch, counts are int32 and sums
float64 where the backend has it (JAX without `jax_enable_x64` sums a batch in float32).

Importing this module is cheap: Keras is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from deadrelu.engine.sites import Site


def wide_dtypes() -> tuple[str, str]:
    """(count dtype, sum dtype) of one batch's numbers on the active Keras backend."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            return "int32", "float32"
    return "int64", "float64"


def site_batch_stats(
    site: Site,
    output: Any,
    grad: Any = None,
    *,
    preact: Any = None,
    positions: int | None = None,
    units: int | None = None,
    valid: Any = None,
    kernel: Any = None,
    grad_passed: bool = False,
) -> dict:
    """Reduces one site output (and its gradient) to per-unit sums over batch and positions.

    Args:
        site: The site the output belongs to (its channel axis and cap).
        output: The site's output for one batch, [batch, ..., units] (units on `site.channel_axis`).
        grad: ∂(summed loss)/∂output, same shape, or None without gradients.
        preact: The pre-activation z the output was computed from, same shape, or None when it
            is not observed (then no "pre_*" statistic is returned).
        positions, units: Given together for op-level sites: the output holds, per sample,
            `positions` × `units` values (units last once the channel axis is moved there), but
            not necessarily with the batch first (time steps folded into the batch); it is
            reshaped to [samples, positions, units]. By default the batch is the first axis.
        valid: None, or a float32 [samples] vector of 1 (a real sample) and 0 (padding: a copy of
            a real sample that fills a batch to the compiled size, counted nowhere).
        kernel: TensorFlow only: the fused ops of `deadrelu.kernel.ops()`, which compute the same
            numbers in one pass over the output. Defaults to None (TensorFlow's own ops). On
            PyTorch the numbers come from `deadrelu.engine.reductions_torch` (blocks of samples).
        grad_passed: `grad` is ∂ℓ/∂z of a plain ReLU (autograd's own backward of it), already zero
            wherever the unit passes no gradient: PyTorch then skips applying that mask (elsewhere
            it is applied and changes nothing). Defaults to False.

    Returns:
        Tensors of shape [units], keyed as the statistics of `Totals` ("saturated" for capped
        sites only, "grad_abs" and "grad_zero" with a gradient only, "pre_max", "pre_min",
        "pre_sum", "pre_sumsq" with a pre-activation only). A NaN or ±inf output is counted in
        "non_finite" and read as zero by every other statistic; a NaN or ±inf gradient or
        pre-activation is read as zero.
    """
    from keras import ops

    if _backend() == "torch":  # eager: in blocks of samples, see the module
        from deadrelu.engine.reductions_torch import torch_site_stats

        return torch_site_stats(
            site, output, grad, preact=preact, positions=positions, units=units, valid=valid, grad_passed=grad_passed
        )
    count, wide = wide_dtypes()
    a = ops.cast(output, "float32")
    z = None if preact is None else ops.cast(preact, "float32")
    rank = len(a.shape)
    if units is None and rank > 2 and not _tensorflow() and all(d is not None for d in a.shape[1:]):
        # JAX and PyTorch: reduce over the position axes where they are, without moving the
        # units last (PyTorch's convolutions hand back channels-first memory behind a
        # channels-last view, which a reshape would copy).
        axis = site.channel_axis % rank
        position_axes = tuple(i for i in range(1, rank) if i != axis)
        positions = int(np.prod([a.shape[i] for i in position_axes], dtype=np.int64))
        flat = a

        def sum_positions(x):
            return ops.sum(x, axis=position_axes)

        def max_positions(x):
            return ops.max(x, axis=position_axes)

        def min_positions(x):
            return ops.min(x, axis=position_axes)

        def unit(v):  # [units] → units on the channel axis
            return ops.reshape(v, [-1 if i == axis else 1 for i in range(rank)])

        z_flat, per_sample_count = z, positions
    else:
        if site.channel_axis != -1 and rank > 2:
            axis = site.channel_axis % rank
            perm = [0] + [i for i in range(1, rank) if i != axis] + [axis]
            a = ops.transpose(a, perm)
            if grad is not None:
                grad = ops.transpose(grad, perm)
            if z is not None:
                z = ops.transpose(z, perm)
        if units is None:
            units = a.shape[-1]
            inner = a.shape[1:-1]
            # Keep the position count static when it is known: the fast reductions below need it.
            positions = int(np.prod(inner, dtype=np.int64)) if all(d is not None for d in inner) else None
        shape = (ops.shape(a)[0], -1, units) if positions is None else (-1, positions, units)
        flat = ops.reshape(a, shape)
        z_flat = None if z is None else ops.reshape(z, ops.shape(flat))
        if kernel is not None:
            return _fused_stats(kernel, site, flat, grad, valid, z_flat)
        sum_positions, max_positions, min_positions = _sum_positions, _max_positions, _min_positions
        per_sample_count = positions if positions is not None else ops.shape(flat)[1]

        def unit(v):
            return v

    def batch_total(per_sample, dtype):  # [batch, units] → [units], padding left out
        if valid is not None:
            per_sample = per_sample * valid[:, None]
        return ops.sum(ops.cast(per_sample, dtype), axis=0)

    def measure(values, g) -> dict:
        """The statistics of one batch of outputs `values` and their gradient `g` (or None)."""
        # Site outputs are ≥ 0 (Keras rejects negative ReLU thresholds): "fires" is sign(a) and
        # |a| is a. Per-sample counts (≤ positions) are exact in float32.
        fires = ops.sign(values)
        per_sample_fires = sum_positions(fires)  # [batch, units]
        stats = {
            "fires": batch_total(per_sample_fires, count),
            "sample_fires": batch_total(ops.sign(per_sample_fires), count),
            "sum_abs": batch_total(sum_positions(values), wide),
            # Padding repeats real samples, so it cannot raise a maximum.
            "max": ops.max(max_positions(values), axis=0),
        }
        passes = fires
        if site.capped:
            # Counting the entries at the cap takes three more passes over the output (compare,
            # cast, product); a batch whose maximum stays below the cap has none, and skips them.
            reached = ops.max(stats["max"]) >= site.max_value

            def at_cap():
                return ops.cast(ops.greater_equal(values, site.max_value), "float32")

            stats["saturated"] = ops.cond(
                reached,
                lambda: batch_total(sum_positions(at_cap()), count),
                lambda: ops.zeros_like(stats["fires"]),
            )
            if g is not None:
                passes = ops.cond(reached, lambda: fires * (1.0 - at_cap()), lambda: fires)
        if g is not None:
            # ∂ℓ/∂z = ∂ℓ/∂a · f'(z): the ReLU passes gradient where it fires and is below its cap.
            g = ops.abs(g * passes)
            nonzero = batch_total(sum_positions(ops.sign(g)), count)
            stats["grad_abs"] = batch_total(sum_positions(g), wide)
            samples = ops.shape(values)[0] if valid is None else ops.sum(valid)
            per_sample = positions if positions is not None else ops.shape(values)[1]
            observed = ops.cast(samples, count) * ops.cast(per_sample, count)
            stats["grad_zero"] = observed - nonzero
        return stats

    g = None if grad is None else ops.reshape(ops.cast(grad, "float32"), ops.shape(flat))
    stats = measure(flat, g)
    # A NaN or ±inf output (a diverged model) must not become a garbage count: it is counted in
    # "non_finite" and read as zero by every other statistic (a non-finite gradient as no
    # gradient), as the fused kernel does. NaN and inf carry into the sums, so a batch whose sums
    # are finite holds none and keeps the numbers above; only a batch that holds some is measured
    # again (a float32 sum of finite values that overflows is too, and counts none). One
    # conditional per site, not per batch: the site's output is released as soon as its own sums
    # are checked (one conditional over every site keeps all of a batch's outputs alive: the scan of
    # the benchmark's MNIST CNN took 8–11 % longer).
    finite = ops.all(ops.isfinite(stats["sum_abs"]))
    if g is not None:
        finite = ops.logical_and(finite, ops.all(ops.isfinite(stats["grad_abs"])))

    def as_measured() -> dict:
        return {**stats, "non_finite": ops.zeros_like(stats["fires"])}

    def with_non_finite_as_zero() -> dict:
        bad = ops.logical_not(ops.isfinite(flat))
        clean = measure(ops.where(bad, 0.0, flat), None if g is None else ops.where(ops.isfinite(g), g, 0.0))
        clean["non_finite"] = batch_total(sum_positions(ops.cast(bad, "float32")), count)
        return clean

    stats = ops.cond(finite, as_measured, with_non_finite_as_zero)
    if z_flat is not None:
        reducers = Positions(sum_positions, max_positions, min_positions, per_sample_count, unit)
        stats.update(preact_stats(z_flat, valid, reducers))
    return stats


class Positions(NamedTuple):
    """How a batch of values is reduced over the positions of each sample, for `preact_stats`.

    Attributes:
        sum, max, min: Values → [samples, units]: per sample, over its positions.
        count: Positions per sample (an int, or a scalar tensor when not static).
        unit: A [units] vector → a tensor that broadcasts against the values (units on their axis).
    """

    sum: Callable
    max: Callable
    min: Callable
    count: Any
    unit: Callable = lambda v: v  # units last: a [units] vector broadcasts as it is


def preact_stats(z, valid, positions: Positions) -> dict:
    """One batch's per-unit "pre_max", "pre_min", "pre_sum", "pre_sumsq" of the pre-activations `z`.

    The sums are taken of z − c, c each unit's midrange in the batch, and c added back in the wide
    float: per sample (over its positions) they are float32 sums, which keep the digits of a unit's
    spread, not of its offset (the float32 sum of z² of a unit at −100 ± 1 loses its variance).
    Like every other statistic, a NaN or ±inf z is read as zero: the sums of a batch that holds
    none are finite, and only a batch that holds some is measured again (its own conditional, so z
    is released as soon as its sums are checked).

    Args:
        z: One batch's pre-activations, float32.
        valid: None, or a float32 [samples] vector of 1 (a real sample) and 0 (padding, left out
            of the sums; a copy of a real sample, so it cannot change a maximum or minimum).
        positions: How `z` is reduced over the positions of each sample.

    Returns:
        The four statistics, [units] each: float32 extremes, sums in the backend's wide float.
    """
    from keras import ops

    _, wide = wide_dtypes()
    rows = ops.shape(z)[0] if valid is None else ops.sum(valid)
    pairs = ops.cast(rows, wide) * ops.cast(positions.count, wide)

    def batch_total(per_sample):  # [batch, units] → [units], padding left out
        if valid is not None:
            per_sample = per_sample * valid[:, None]
        return ops.sum(ops.cast(per_sample, wide), axis=0)

    def measure(values) -> dict:
        highest = ops.max(positions.max(values), axis=0)
        lowest = ops.min(positions.min(values), axis=0)
        shift = 0.5 * highest + 0.5 * lowest  # halves first: no overflow
        d = values - positions.unit(shift)
        s1, s2 = batch_total(positions.sum(d)), batch_total(positions.sum(d * d))
        c = ops.cast(shift, wide)
        return {
            "pre_max": highest,
            "pre_min": lowest,
            "pre_sum": s1 + pairs * c,
            "pre_sumsq": s2 + c * (2 * s1 + pairs * c),
        }

    stats = measure(z)
    finite = ops.logical_and(ops.all(ops.isfinite(stats["pre_sum"])), ops.all(ops.isfinite(stats["pre_sumsq"])))
    return ops.cond(finite, lambda: stats, lambda: measure(ops.where(ops.isfinite(z), z, 0.0)))


def _fused_stats(kernel, site: Site, flat, grad, valid, z=None) -> dict:
    """`site_batch_stats` of a [samples, positions, units] output (and pre-activation `z`) by deadrelu's
    fused kernel; z by its `deadrelu_preact_stats` op when the built library has it, else by TensorFlow's ops."""
    import tensorflow as tf

    if z is not None:
        fused = getattr(kernel, "deadrelu_preact_stats", None)  # None where the library has no such op
        if fused is None:
            pre = preact_stats(z, valid, _flat_positions(z))
    valid = tf.zeros((0,), tf.float32) if valid is None else valid
    if z is not None and fused is not None:
        pre = dict(zip(("pre_max", "pre_min", "pre_sum", "pre_sumsq"), fused(z, valid)))
    cap = {"cap": float(site.max_value), "capped": True} if site.capped else {}
    fires, sample_fires, sum_abs, maxima, saturated, non_finite = kernel.deadrelu_site_stats(flat, valid, **cap)
    stats = {"fires": fires, "sample_fires": sample_fires, "sum_abs": sum_abs, "max": maxima, "non_finite": non_finite}
    if site.capped:
        stats["saturated"] = saturated
    if grad is not None:
        stats.update(_kernel_grad_stats(kernel, flat, grad, valid, cap))
    if z is not None:
        stats.update(pre)
    return stats


def _kernel_grad_stats(kernel, flat, grad, valid, cap: dict) -> dict:
    """ "grad_abs" and "grad_zero" of a [samples, positions, units] output by the kernel (`valid`: a
    [samples] vector or an empty one)."""
    import tensorflow as tf

    grad = tf.reshape(tf.cast(grad, tf.float32), tf.shape(flat))
    grad_abs, nonzero = kernel.deadrelu_grad_stats(flat, grad, valid, **cap)
    samples = tf.shape(flat, out_type=tf.int64)[0] if valid.shape[0] == 0 else tf.reduce_sum(valid)
    observed = tf.cast(samples, tf.int64) * tf.shape(flat, out_type=tf.int64)[1]
    return {"grad_abs": grad_abs, "grad_zero": observed - nonzero}


def fused_grad_stats(kernel, site: Site, output, grad, valid=None) -> dict:
    """The gradient statistics of a site the kernel applied (`fused_relu_stats`): "grad_abs", "grad_zero".

    Args:
        kernel: The op module of `deadrelu.kernel.ops()`.
        site: The site.
        output: The op's output a, [samples, ..., units] (units last).
        grad: ∂loss/∂a, a's shape.
        valid: None, or the batch's float32 [samples] vector of real rows.

    Returns:
        The two statistics `site_batch_stats` gives for them.
    """
    import tensorflow as tf

    flat = tf.reshape(output, (tf.shape(output)[0], -1, output.shape[-1]))
    valid = tf.zeros((0,), tf.float32) if valid is None else valid
    cap = {"cap": float(site.max_value), "capped": True} if site.capped else {}
    return _kernel_grad_stats(kernel, flat, grad, valid, cap)


def fused_relu_stats(kernel, site: Site, z, valid=None) -> tuple | None:
    """A layer-level site's ReLU applied to `z` and its statistics, by the kernel's `deadrelu_relu_site_stats`.

    On TensorFlow's CPU the scan's forward step hands the model this op's output instead of running
    Keras's ReLU (see `deadrelu.engine.instrumentation.plain_relu`): z is read once, for the output
    and every statistic of `site_batch_stats` (output and pre-activation), where measuring z beside
    the output took two more passes and TensorFlow's fusion of the layer's bias and ReLU. When z is
    a per-unit sum (the layer's `BiasAdd`, a BatchNormalization's shift), the op reads what came before
    the sum and adds the bias itself (`_unbiased`).

    Args:
        kernel: The op module of `deadrelu.kernel.ops()`.
        site: The site (its threshold and cap).
        z: One batch's pre-activations, [samples, ..., units].
        valid: None, or a float32 [samples] vector of 1 (a real sample) and 0 (padding, given an
            output and counted nowhere).

    Returns:
        `(output, stats)`: the ReLU's output (z's shape, what Keras's relu computes, NaN and ±inf
        included) and the statistics `site_batch_stats` returns for it; or None where the op does
        not apply (no such op in the library, z not float32 or of unknown rank or units, the units
        not last, a threshold below the smallest normal float), and the site's ReLU runs as usual.
    """
    import tensorflow as tf

    op = getattr(kernel, "deadrelu_relu_site_stats", None)
    if op is None or not isinstance(z, tf.Tensor) or z.dtype != tf.float32:
        return None
    rank = z.shape.rank
    if rank is None or rank < 2 or z.shape[-1] is None or site.channel_axis % rank != rank - 1:
        return None  # channels-first sites keep the transposing path of `site_batch_stats`
    if 0.0 < site.threshold < float(np.finfo(np.float32).tiny):
        return None
    valid = tf.zeros((0,), tf.float32) if valid is None else valid
    cap = {"cap": float(site.max_value), "capped": True} if site.capped else {}
    z, bias = _unbiased(z)
    output, *values = op(z, valid, bias, threshold=float(site.threshold), **cap)
    names = ("fires", "sample_fires", "sum_abs", "max", "saturated", "non_finite", *_PREACT)
    stats = dict(zip(names, values))
    if not site.capped:
        del stats["saturated"]
    return output, stats


def _unbiased(z) -> tuple:
    """z as (what the layer had before adding its per-unit bias, that bias) when z is traced as such a sum.

    A channels-last `BiasAdd` (a Conv's or Dense's bias), or an `AddV2` of a [units] vector to a
    tensor of z's shape (the shift of an inference-mode BatchNormalization, `x * scale + shift`).
    The kernel then adds the bias itself (one float32 addition: the same z, bit for bit), and the
    sum, left without a reader, is not run: one write and one read of the activation fewer (and
    TensorFlow's fusion of a bias and ReLU into the convolution, which observing z undoes, costs
    less). Anything else — an eager tensor, another op, channels first — is (z, []).
    """
    import tensorflow as tf

    none = (z, tf.zeros((0,), tf.float32))
    op = getattr(z, "op", None)  # an eager tensor has none (and raises AttributeError)
    if op is None or op.type not in ("BiasAdd", "AddV2", "Add"):
        return none
    if op.type == "BiasAdd":
        if op.get_attr("data_format") not in (b"NHWC", "NHWC"):
            return none
        value, bias = op.inputs
    else:
        value, bias = op.inputs if op.inputs[1].shape.rank == 1 else reversed(op.inputs)
        if value.shape.rank != z.shape.rank or not value.shape.is_compatible_with(z.shape):
            return none
    if value.dtype != tf.float32 or bias.dtype != tf.float32 or bias.shape.rank != 1 or bias.shape[0] != z.shape[-1]:
        return none
    return value, bias


def _flat_positions(x) -> Positions:
    """How a [samples, positions, units] tensor is reduced over positions (TensorFlow's fast forms)."""
    from keras import ops

    count = x.shape[1] if x.shape[1] is not None else ops.shape(x)[1]
    return Positions(_sum_positions, _max_positions, _min_positions, count)


# Up to this many positions per sample, plain reductions over the middle axis are as fast as the
# batched product and the max-pool below (which win by several times on large feature maps).
_FEW_POSITIONS = 16


def _backend() -> str:
    import keras

    return keras.backend.backend()


def _tensorflow() -> bool:
    return _backend() == "tensorflow"


def _sum_positions(x):
    """[batch, positions, units] → [batch, units]; on TensorFlow as one batched matrix product
    (oneDNN's fast kernels) unless the positions are few."""
    from keras import ops

    positions = x.shape[1]
    if positions == 1:  # Dense sites: nothing to reduce
        return x[:, 0, :]
    if positions is None or positions <= _FEW_POSITIONS or not _tensorflow():
        return ops.sum(x, axis=1)
    # One row of ones broadcast over the batch (measured 1–5 % faster per scan than a [batch, 1,
    # positions] block of ones, which is filled for every batch).
    ones = ops.ones((1, 1, positions), x.dtype)
    return ops.matmul(ones, x)[:, 0, :]


def _max_positions(x):
    """[batch, positions, units] → [batch, units] maxima; on TensorFlow as a global max-pool."""
    from keras import ops

    positions = x.shape[1]
    if positions == 1:
        return x[:, 0, :]
    if positions is None or positions <= _FEW_POSITIONS or not _tensorflow():
        return ops.max(x, axis=1)
    pooled = ops.max_pool(x[:, :, None, :], pool_size=(positions, 1), strides=(positions, 1), padding="valid")
    return pooled[:, 0, 0, :]


def _min_positions(x):
    """[batch, positions, units] → [batch, units] minima (a plain reduction: on TensorFlow, faster than
    the max-pool of −x, whose negation is a pass of its own)."""
    from keras import ops

    if x.shape[1] == 1:
        return x[:, 0, :]
    return ops.min(x, axis=1)


# Per statistic: how totals combine, the dtype of the total and the value a site without output
# adds.
_TOTALS = {
    "fires": ("sum", np.int64, 0),
    "sample_fires": ("sum", np.int64, 0),
    "sum_abs": ("sum", np.float64, 0.0),
    "max": ("max", np.float32, -np.inf),  # -inf keeps negative thresholds right
    "non_finite": ("sum", np.int64, 0),
    "saturated": ("sum", np.int64, 0),
    "grad_abs": ("sum", np.float64, 0.0),
    "grad_zero": ("sum", np.int64, 0),
    "loss": ("sum", np.float64, 0.0),
    "pre_max": ("max", np.float32, -np.inf),
    "pre_min": ("min", np.float32, np.inf),
    "pre_sum": ("sum", np.float64, 0.0),
    "pre_sumsq": ("sum", np.float64, 0.0),
}
_PREACT = ("pre_max", "pre_min", "pre_sum", "pre_sumsq")


class Totals:
    """The probe's running totals: what the step returns per batch, and the host-side sums.

    One vector per statistic holds every site's units back to back (site `i` owns the slice
    `offsets[i]:offsets[i + 1]`), so a step returns a handful of tensors whatever the number of
    sites. Per unit the statistics are:

        fires: (sample, position) pairs with a finite non-zero output.
        sample_fires: Samples in which the unit fired at least once.
        sum_abs: Sum of the finite |output|.
        max: The largest finite output (-inf until reached, read as 0).
        non_finite: Pairs whose output is NaN or ±inf (read as zero by the other statistics).
        saturated: Pairs at the cap (capped sites such as relu6 only, their units alone).
        grad_abs: Sum of |∂ℓₙ/∂z| (with gradients only).
        grad_zero: Pairs whose ∂ℓₙ/∂z is exactly zero (with gradients only).
        pre_max, pre_min: The largest and smallest finite pre-activation z (±inf until reached).
        pre_sum, pre_sumsq: Sums of the finite z and z² (non-finite z read as zero by all four).

    With gradients also "loss", the summed per-sample loss (a scalar).

    Args:
        sites: The sites measured, in model order.
        layout: Per site `(calls, positions, units)`; only `units` is used here.
        gradients: Whether the gradient statistics (and the loss) are kept.
    """

    def __init__(self, sites: list[Site], layout: list[tuple[int, int, int]], gradients: bool):
        self._units = [units for _, _, units in layout]
        self._capped = [site.capped for site in sites]
        self.names = ["fires", "sample_fires", "sum_abs", "max", "non_finite", *_PREACT]
        if gradients:
            self.names += ["grad_abs", "grad_zero", "loss"]
        if any(self._capped):
            self.names.append("saturated")
        self._totals: dict[str, np.ndarray] = {}
        self.reset()

    def _size(self, name: str) -> int:
        if name == "loss":
            return 1
        return sum(u for u, capped in zip(self._units, self._capped) if capped or name != "saturated")

    def reset(self) -> None:
        """Zeroes every total (maxima start at -inf) before a new pass over the data."""
        self._totals = {name: np.full(self._size(name), _TOTALS[name][2], _TOTALS[name][1]) for name in self.names}

    def pack(self, records: list[tuple[int, dict]], loss: Any = None) -> dict:
        """One batch's `site_batch_stats`, laid back to back: traced into the step.

        Args:
            records: One `(site index, stats)` per recorded output. A site recorded several times
                in one batch (a layer called twice) adds up its records (maxima by maximum); a
                site not recorded adds nothing.
            loss: With gradients, the batch's summed per-sample loss.

        Returns:
            `{statistic: tensor}` for the step to return.
        """
        from keras import ops

        count, wide = wide_dtypes()
        dtypes = {"sum_abs": wide, "grad_abs": wide, "max": "float32", "pre_max": "float32", "pre_min": "float32"}
        dtypes.update(pre_sum=wide, pre_sumsq=wide)
        by_site: dict[int, list[dict]] = {}
        for index, stats in records:
            by_site.setdefault(index, []).append(stats)
        packed = {}
        for name in self.names:
            if name == "loss":
                packed[name] = ops.reshape(ops.cast(loss, wide), (1,))
                continue
            neutral = _TOTALS[name][2]
            parts = []
            for index, units in enumerate(self._units):
                if name == "saturated" and not self._capped[index]:
                    continue
                values = [stats[name] for stats in by_site.get(index, []) if name in stats]
                if not values:
                    parts.append(ops.full((units,), neutral, dtype=dtypes.get(name, count)))
                elif len(values) == 1:
                    parts.append(values[0])
                else:
                    stacked = ops.stack(values)
                    reduce = {"max": ops.max, "min": ops.min}.get(_TOTALS[name][0], ops.sum)
                    parts.append(reduce(stacked, axis=0))
            if parts:  # none: a model without sites
                packed[name] = ops.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        return packed

    def add(self, batch: dict) -> None:
        """Adds one batch's packed numbers (numpy arrays, as `pack` laid them out)."""
        for name, values in batch.items():
            total = self._totals[name]
            if _TOTALS[name][0] == "max":
                np.maximum(total, values, out=total)
            elif _TOTALS[name][0] == "min":
                np.minimum(total, values, out=total)
            else:
                total += np.asarray(values).astype(total.dtype, copy=False)

    def arrays(self) -> dict[str, np.ndarray]:
        """The raw totals (to combine across workers with `combine`)."""
        return self._totals

    @staticmethod
    def neutral(name: str):
        """What adds nothing to statistic `name`'s total: 0, -inf for a maximum, +inf for a minimum."""
        return _TOTALS[name][2]

    @staticmethod
    def combine(name: str, gathered: np.ndarray) -> np.ndarray:
        """Statistic `name`'s totals of several workers, [workers, n], combined into one: [n]."""
        how = _TOTALS[name][0]
        return gathered.max(0) if how == "max" else gathered.min(0) if how == "min" else gathered.sum(0)

    def read(self) -> dict:
        """The totals per site.

        Returns:
            `{"sites": [per site {statistic: array}]}`, plus `"loss"` (the summed loss) with
            gradients. A maximum of the outputs never reached reads 0; of the pre-activations, -inf
            (and their minimum +inf).
        """
        totals = dict(self._totals)
        # An empty replica's batch reduces to the lowest float, not -inf.
        never = totals["max"] <= np.finfo(np.float32).min
        totals["max"] = np.where(never, 0.0, totals["max"]).astype(np.float32)
        totals["pre_max"] = np.where(totals["pre_max"] <= np.finfo(np.float32).min, -np.inf, totals["pre_max"])
        totals["pre_min"] = np.where(totals["pre_min"] >= np.finfo(np.float32).max, np.inf, totals["pre_min"])
        loss = totals.pop("loss", None)
        sites: list[dict] = [{} for _ in self._units]
        for name, values in totals.items():
            owners = [i for i in range(len(self._units)) if name != "saturated" or self._capped[i]]
            bounds = np.cumsum([self._units[i] for i in owners])[:-1]
            for index, part in zip(owners, np.split(values, bounds)):
                sites[index][name] = part
        values: dict = {"sites": sites}
        if loss is not None:
            values["loss"] = float(loss[0])
        return values

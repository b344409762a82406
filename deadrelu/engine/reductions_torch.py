"""`site_batch_stats` on PyTorch: the same per-unit numbers, in blocks of samples that stay in cache.

PyTorch runs eagerly, one op at a time, so every statistic that `deadrelu.engine.reductions` writes
with `keras.ops` is a pass of its own over the whole batch's site output, and every elementwise op
(the sign whose sum counts the fires, z minus its midrange) allocates a tensor of the batch's size.
Allocations that large are mapped fresh from the kernel on every call (glibc's allocator maps
blocks over 32 MB itself and unmaps them when freed), and filling their pages cost more than the
arithmetic: on the MNIST CNN's first convolution (500 × 26 × 26 × 32 floats) the sign alone took
5× a sum of the same tensor. Here a batch is reduced a few samples at a time (`_BLOCK_BYTES` of
each tensor), so every temporary is small enough to be reused from the allocator's heap and every
pass after the first reads from the CPU's cache; the per-sample numbers of each block are added
across blocks as `site_batch_stats` adds them across samples.

The numbers are those of `site_batch_stats` (its docstring says what each is; the tests compare
both against numpy and across backends): counts exactly, sums up to float rounding. The
pre-activation sums are taken of z − c with c each unit's midrange in the block (not the batch):
either keeps the digits of a unit's spread, not of its offset.

Importing this module is cheap: PyTorch is imported inside the functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deadrelu.engine.sites import Site

_LARGEST_SUBNORMAL = float(np.nextafter(np.float32(np.finfo(np.float32).tiny), np.float32(0)))

# Bytes of one tensor (a site output, its z or its gradient) reduced at a time: temporaries this
# size stay in the allocator's heap and in the CPU's cache, and a large feature map takes few
# blocks (each costs a dozen eager ops). Against 1 MB, 4 MB took 0.86× on the MNIST CNN, 0.85× on
# MobileNetV2 and 0.73× on DenseNet121; 16 MB took the CNN 1.10× (tests/bench/ab_torch_blocks.py).
_BLOCK_BYTES = 4 << 20
# With a gradient beside the output (two tensors and their temporaries), 4 MB blocks took a
# gradient scan of the CNN 1.08× the time of 1 MB ones.
_GRADIENT_BLOCK_BYTES = 1 << 20


def torch_site_stats(
    site: Site,
    output: Any,
    grad: Any = None,
    *,
    preact: Any = None,
    positions: int | None = None,
    units: int | None = None,
    valid: Any = None,
    grad_passed: bool = False,
) -> dict:
    """`deadrelu.engine.reductions.site_batch_stats` of one PyTorch site output, block by block.

    Args:
        site: The site the output belongs to (its channel axis and cap).
        output: The site's output for one batch (a `torch.Tensor`), units on `site.channel_axis`;
            with `positions` and `units`, any shape of `samples × positions × units` values.
        grad: ∂(summed loss)/∂output, same shape, or None.
        preact: The pre-activation z, same shape, or None (then no "pre_*" statistic).
        positions, units: Given together for op-level sites (see `site_batch_stats`).
        valid: None, or a float32 [samples] vector of 1 (a real sample) and 0 (padding).
        grad_passed: `grad` is ∂ℓ/∂z of a plain ReLU (zero wherever the unit passes no gradient):
            the mask of where it passes is not applied again (a pass that reads the output and the
            gradient together, whose memory PyTorch lays out in opposite orders).

    Returns:
        `{statistic: tensor of shape [units]}`, as `site_batch_stats` returns them.
    """
    import torch

    a = _units_second(output.to(torch.float32), site, positions, units)
    g = None if grad is None else _units_second(grad.to(torch.float32), site, positions, units)
    z = None if preact is None else _units_second(preact.to(torch.float32), site, positions, units)
    weights = None if valid is None else valid.to(torch.float32)
    stats = _output_stats(site, a, g, weights, clean=False, grad_passed=grad_passed)
    finite = bool(torch.isfinite(stats["sum_abs"]).all())
    if g is not None:
        finite = finite and bool(torch.isfinite(stats["grad_abs"]).all())
    if not finite:  # a diverged model: NaN and ±inf are counted in "non_finite", read as zero elsewhere
        stats = _output_stats(site, a, g, weights, clean=True, grad_passed=grad_passed)
    if z is not None:
        stats.update(_preact_stats(z, weights))
    return stats


def _units_second(x, site: Site, positions: int | None, units: int | None):
    """[samples, units, positions…]: a view, the units moved to the second axis (PyTorch's
    convolutions hand back channels-first memory behind Keras's channels-last view: the view then
    is that memory as it lies; a gradient may lie the other way, and is read as it lies too)."""
    if units is not None:  # op-level: samples × positions × units values, units last
        return x.reshape(-1, positions, units).transpose(1, 2)
    rank = x.dim()
    if rank == 2:
        return x[:, :, None]
    axis = site.channel_axis % rank
    return x.permute(0, axis, *[i for i in range(1, rank) if i != axis])


def _positions(x) -> tuple[int, ...]:
    """The position axes of a `_units_second` view."""
    return tuple(range(2, x.dim()))


def _blocks(x, size: int | None = None):
    """Row ranges of `x` (a `_units_second` view) of about `size` bytes each (`_BLOCK_BYTES`)."""
    per_sample = max(1, x[0].numel() * x.element_size())
    rows = max(1, (size or _BLOCK_BYTES) // per_sample)
    return [(start, min(start + rows, x.shape[0])) for start in range(0, x.shape[0], rows)]


def _output_stats(site: Site, a, g, weights, *, clean: bool, grad_passed: bool = False) -> dict:
    """fires, sample_fires, sum_abs, max, non_finite (and saturated, grad_abs, grad_zero)."""
    import torch

    axes = _positions(a)
    positions = a[0, 0].numel()
    per_sample: dict[str, list] = {}  # statistic → its [block samples, units] tensors, block by block

    def keep(name: str, value) -> None:
        per_sample.setdefault(name, []).append(value)

    for start, stop in _blocks(a, _GRADIENT_BLOCK_BYTES if g is not None else None):
        block = a[start:stop]
        if clean:
            bad = ~torch.isfinite(block)
            keep("non_finite", bad.sum(axes, dtype=torch.float32))
            block = torch.where(bad, 0.0, block)
        # Site outputs are ≥ 0: the fires are the entries whose sign is 1.
        keep("fires", torch.sign(block).sum(axes))
        keep("sum_abs", block.sum(axes))
        highest = block.amax(axes)
        keep("max", highest)
        at_cap = None
        if site.capped:
            if bool(highest.max() >= site.max_value):  # else no entry of the block is at the cap
                at_cap = block >= site.max_value
                keep("saturated", at_cap.sum(axes, dtype=torch.float32))
            else:
                keep("saturated", torch.zeros_like(highest))
        if g is not None:
            gb = g[start:stop]
            if clean:
                gb = torch.where(torch.isfinite(gb), gb, 0.0)
            if grad_passed:
                gm = gb.abs()
            else:
                passes = block > 0 if at_cap is None else (block > 0) & ~at_cap
                gm = torch.where(passes, gb, 0.0).abs_()
            # A subnormal gradient (PyTorch flushes them to zero only on the thread that asks; XLA
            # and TensorFlow on every thread) is the zero it is on the other backends.
            torch.nn.functional.threshold(gm, _LARGEST_SUBNORMAL, 0.0, inplace=True)
            keep("grad_abs", gm.sum(axes))
            keep("grad_nonzero", torch.sign(gm).sum(axes))
    rows = {name: torch.cat(values) for name, values in per_sample.items()}
    units = a.shape[1]
    fires = rows["fires"]
    stats = {
        "fires": _batch_total(fires, weights, torch.int64),
        "sample_fires": _batch_total(torch.sign(fires), weights, torch.int64),
        "sum_abs": _batch_total(rows["sum_abs"], weights, torch.float64),
        "max": rows["max"].amax(0),
        "non_finite": _batch_total(rows["non_finite"], weights, torch.int64)
        if clean
        else torch.zeros(units, dtype=torch.int64),
    }
    if site.capped:
        stats["saturated"] = _batch_total(rows["saturated"], weights, torch.int64)
    if g is not None:
        samples = a.shape[0] if weights is None else round(float(weights.sum()))
        stats["grad_abs"] = _batch_total(rows["grad_abs"], weights, torch.float64)
        stats["grad_zero"] = samples * positions - _batch_total(rows["grad_nonzero"], weights, torch.int64)
    return stats


def _preact_stats(z, weights) -> dict:
    """pre_max, pre_min, pre_sum, pre_sumsq of z (see `deadrelu.engine.reductions.preact_stats`)."""
    import torch

    stats = _preact_pass(z, weights, clean=False)
    if not bool(torch.isfinite(stats["pre_sum"]).all() and torch.isfinite(stats["pre_sumsq"]).all()):
        stats = _preact_pass(z, weights, clean=True)
    return stats


def _preact_pass(z, weights, *, clean: bool) -> dict:
    """The four statistics of z. Each sample's sums over its positions are taken of d = z − c, c the
    sample's first value of each unit (a value of the data, so |d| is at most the unit's spread in
    the sample: float32 sums keep the digits of the spread, not of the offset), and c is added back
    in float64."""
    import torch

    axes = _positions(z)
    positions = z[0, 0].numel()
    highest, lowest, shifts, sums, squares = [], [], [], [], []
    for start, stop in _blocks(z):
        block = z[start:stop]
        if clean:
            block = torch.where(torch.isfinite(block), block, 0.0)
        highest.append(block.amax(axes))
        lowest.append(block.amin(axes))
        first = block[(slice(None), slice(None), *[0] * len(axes))]  # each sample's first value, [samples, units]
        shifts.append(first)
        if positions == 1:  # one value per sample: its float64 square is exact
            continue
        d = block - first[(..., *[None] * len(axes))]
        sums.append(d.sum(axes))
        squares.append(d.mul_(d).sum(axes))  # in place: d is this block's own temporary
    c = torch.cat(shifts).to(torch.float64)
    s1 = torch.zeros_like(c) if positions == 1 else torch.cat(sums).to(torch.float64)
    s2 = torch.zeros_like(c) if positions == 1 else torch.cat(squares).to(torch.float64)
    return {
        "pre_max": torch.cat(highest).amax(0),
        "pre_min": torch.cat(lowest).amin(0),
        "pre_sum": _batch_total(s1 + positions * c, weights, torch.float64),
        "pre_sumsq": _batch_total(s2 + c * (2 * s1 + positions * c), weights, torch.float64),
    }


def _batch_total(per_sample, weights, dtype):
    """[samples, units] → [units] in `dtype`, padding (a weight of 0) left out."""
    if weights is not None:
        per_sample = per_sample * weights[:, None]
    return per_sample.to(dtype).sum(0)

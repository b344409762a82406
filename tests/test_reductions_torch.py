"""PyTorch's block-by-block statistics (`deadrelu.engine.reductions_torch`) against the engine's own
`keras.ops` reductions (`site_batch_stats` on TensorFlow, the main suite's backend) on the same numbers.

The inputs are built to take every branch: blocks that split a batch (a small `_BLOCK_BYTES`),
channels-first memory behind a channels-last view (what PyTorch's convolutions hand back), a
gradient lying the other way, op-level layouts, a capped site with entries at the cap in some
blocks only, NaN and ±inf in outputs, gradients and pre-activations, subnormal gradients, padding
rows, and pre-activations far from zero (an offset a naive E[z²] − E[z]² would lose).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import deadrelu.engine.reductions_torch as R  # noqa: E402
from deadrelu.engine.reductions import site_batch_stats  # noqa: E402
from deadrelu.engine.sites import Site  # noqa: E402

COUNTS = ("fires", "sample_fires", "non_finite", "saturated", "grad_zero")


def _site(max_value=None, channel_axis=-1) -> Site:
    kind = "relu"
    return Site("s", None, kind, "relu", max_value, 0.0, channel_axis, 0)


def _reference(site, a, g=None, z=None, valid=None, **layout) -> dict:
    import tensorflow as tf

    t = lambda v: None if v is None else tf.constant(v)  # noqa: E731
    out = site_batch_stats(site, t(a), t(g), preact=t(z), valid=t(valid), **layout)
    return {name: value.numpy() for name, value in out.items()}


def _ours(site, a, g=None, z=None, valid=None, *, channels_first_memory=False, **layout) -> dict:
    def tensor(v, cf):
        if v is None:
            return None
        if cf:  # the same values, stored channels-first, seen channels-last
            return torch.from_numpy(np.ascontiguousarray(np.moveaxis(v, -1, 1))).permute(0, 2, 3, 1)
        return torch.from_numpy(v)

    out = R.torch_site_stats(
        site,
        tensor(a, channels_first_memory),
        tensor(g, False),
        preact=tensor(z, channels_first_memory),
        valid=None if valid is None else torch.from_numpy(valid),
        **layout,
    )
    return {name: value.numpy() for name, value in out.items()}


def _compare(ours: dict, want: dict) -> None:
    assert sorted(ours) == sorted(want)
    for name, expected in want.items():
        got = ours[name]
        assert got.shape == expected.shape, name
        if name in COUNTS:
            np.testing.assert_array_equal(got, expected, err_msg=name)
        elif name in ("max", "pre_max", "pre_min"):
            np.testing.assert_array_equal(got.astype(np.float32), expected.astype(np.float32), err_msg=name)
        else:
            # float32 sums per sample, in another order: to a float32 rounding of sums over ~200 values of size ~1
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5, err_msg=name)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(R, "_BLOCK_BYTES", 3 * 5 * 6 * 4 * 4)  # 3 samples of [5, 6, 4] per block: 9 rows, 3 blocks


def _conv_like(rng, n=9, shape=(5, 6, 4), offset=0.0):
    z = (rng.normal(size=(n, *shape)) + offset).astype(np.float32)
    return z, np.maximum(z, 0.0).astype(np.float32)


def test_conv_site_with_preact_far_from_zero_and_channels_first_memory():
    rng = np.random.default_rng(0)
    z, a = _conv_like(rng)
    z[..., 1] = z[..., 1] * 0.01 - 300.0  # a dead unit far from zero, spread 0.01
    a = np.maximum(z, 0.0)
    site = _site()
    for cf in (False, True):
        _compare(_ours(site, a, z=z, channels_first_memory=cf), _reference(site, a, z=z))
    ours = _ours(site, a, z=z)
    n = z[..., 1].size
    mean = ours["pre_sum"][1] / n
    var = ours["pre_sumsq"][1] / n - mean**2
    np.testing.assert_allclose(var, z[..., 1].astype(np.float64).var(), rtol=1e-4)


def test_gradients_capped_site_subnormals_and_padding():
    rng = np.random.default_rng(1)
    z, _ = _conv_like(rng, offset=2.0)
    a = np.clip(z, 0.0, 3.0).astype(np.float32)
    a[:3] = np.minimum(a[:3], 2.5)  # the first block has no entry at the cap
    g = rng.normal(size=a.shape).astype(np.float32)
    g[2, 0, 0, :] = 1e-40  # subnormal: the zero it is on the other backends
    g[4, 1, 1, :] = 0.0
    valid = np.ones(len(a), np.float32)
    valid[-2:] = 0.0
    a[-2:], g[-2:], z[-2:] = a[:2], g[:2], z[:2]  # padding repeats real samples
    site = _site(max_value=3.0)
    want = _reference(site, a, g, z, valid)
    assert want["saturated"].sum() > 0 and want["grad_zero"].sum() > 0
    _compare(_ours(site, a, g, z, valid), want)


def test_non_finite_outputs_gradients_and_preacts():
    rng = np.random.default_rng(2)
    z, a = _conv_like(rng)
    a[1, 2, 3, 0], a[5, 0, 0, 2], z[7, 4, 5, 3] = np.nan, np.inf, -np.inf
    g = rng.normal(size=a.shape).astype(np.float32)
    g[3, 1, 1, 1] = np.nan
    site = _site()
    want = _reference(site, a, g, z)
    assert want["non_finite"].sum() == 2
    _compare(_ours(site, a, g, z), want)


def test_dense_and_op_level_layouts():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(10, 7)).astype(np.float32) - 50.0
    z[:, 2] += 60.0
    a = np.maximum(z, 0.0)
    site = _site()
    _compare(_ours(site, a, z=z), _reference(site, a, z=z))
    # op-level: 4 time steps folded into the batch of 10, 3 units
    z = rng.normal(size=(40, 3)).astype(np.float32)
    a = np.maximum(z, 0.0)
    layout = {"positions": 4, "units": 3}
    _compare(_ours(site, a, z=z, **layout), _reference(site, a, z=z, **layout))


def test_channels_first_site():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(9, 4, 5, 6)).astype(np.float32)  # units on axis 1
    a = np.maximum(z, 0.0)
    site = _site(channel_axis=1)
    g = rng.normal(size=a.shape).astype(np.float32)
    _compare(_ours(site, a, g, z), _reference(site, a, g, z))

"""The pre-activation statistics of docs/report-format.md (margin, preact_mean, preact_std, preact_min), in numpy.

Shared by tests/test_preact.py, tests/backends/test_backend_preact.py and tests/distributed: the
pre-activations z are materialised with plain Keras (sub-models, direct layer calls, a linear copy
of a fused layer) and reduced here with numpy in float64; nothing here imports deadrelu.
"""

from __future__ import annotations

import numpy as np

# Margins and minima are single float32 values of z (exact up to how Keras computed z outside the
# scan); means are float64 sums; a standard deviation comes from E[z²] − E[z]², so it is compared
# to 1e-4 relative.
RTOL, ATOL = 1e-5, 1e-5
STD_RTOL = 1e-4
FIELDS = ("margin", "preact_mean", "preact_std", "preact_min")


def units_last(array, channel_axis: int = -1) -> np.ndarray:
    """(N, ..., C, ...) → (N, S, C): units on the last axis, every other non-batch axis a position."""
    a = np.moveaxis(np.asarray(array), channel_axis, -1)
    return a.reshape(a.shape[0], -1, a.shape[-1])


def reference_preact(calls, *, channel_axis: int = -1, threshold: float = 0.0) -> dict:
    """Per unit: margin = max(z) − threshold, and the mean, population std and minimum of z.

    Args:
        calls: The site's pre-activations, one array per call of the site in a forward pass (or one
            array). NaN and ±inf are read as 0, as by every statistic of a scan.
        channel_axis: The unit axis of each array.
        threshold: The site's threshold (0 for a plain ReLU).

    Returns:
        `{field: float64 array}` for the four fields of `FIELDS`.
    """
    if not isinstance(calls, (list, tuple)):
        calls = [calls]
    z = np.concatenate([units_last(c, channel_axis) for c in calls], axis=0).astype(np.float64)
    z = np.where(np.isfinite(z), z, 0.0)
    return {
        "margin": z.max(axis=(0, 1)) - threshold,
        "preact_mean": z.mean(axis=(0, 1)),
        "preact_std": z.std(axis=(0, 1)),
        "preact_min": z.min(axis=(0, 1)),
    }


def assert_preact_matches(site, expected: dict) -> None:
    """A `SiteReport`'s pre-activation fields against `reference_preact`'s numbers."""
    for name in FIELDS:
        actual = getattr(site, name)
        assert actual is not None, f"{site.path}: {name} is None"
        assert len(actual) == site.units, f"{site.path}: {name} has {len(actual)} entries for {site.units} units"
        rtol = STD_RTOL if name == "preact_std" else RTOL
        np.testing.assert_allclose(
            np.asarray(actual, np.float64), expected[name], rtol=rtol, atol=ATOL, err_msg=f"{site.path}: {name}"
        )

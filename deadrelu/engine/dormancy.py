"""ReDo's dormancy (Sokar et al. 2023): the score of each unit, and which units are τ-dormant.

One definition for every part of deadrelu that speaks of dormant units: the scan's per-unit
`dormancy` (`deadrelu.engine.statistics.SiteStatistics.dormancy`), the `dormant` lists of a scan
with `dormant=τ` (`deadrelu.report.site_report`), the monitor's `dormant=`, `revive(dormant=)` and
`prune(dormant=)`.

A unit's score is its mean |output| over samples and positions divided by the mean of that over
its site's units (0 for every unit when the whole site is silent); a unit is τ-dormant when its
score is at most τ. This matches the dormant sets of ReDo's reference code (google/dopamine,
`weight_recyclers.py`, which adds 1e-9 to the denominator) at τ = 0, 0.025 and 0.1.

Importing this module is cheap: numpy only.
"""

from __future__ import annotations

import numpy as np


def dormancy_scores(mean_abs: np.ndarray) -> np.ndarray:
    """ReDo's score of each unit of a site: its mean |output| relative to the site's average unit.

    Args:
        mean_abs: Per unit, the mean |output| over samples and positions.

    Returns:
        `mean_abs / mean(mean_abs)`; zeros when that mean is 0 (a silent site).

    Example:
        >>> dormancy_scores(np.array([0.0, 1.0, 3.0]))
        array([0.  , 0.75, 2.25])
    """
    mean_abs = np.asarray(mean_abs, np.float64)
    scale = mean_abs.mean() if mean_abs.size else 0.0
    return mean_abs / scale if scale > 0 else np.zeros_like(mean_abs)


def dormant_units(site, tau: float) -> list[int]:
    """The τ-dormant units of a site: score ≤ τ, dead units included, non-finite ones not.

    Dead units are included (their score is 0), as in ReDo; non-finite units are not (they have a
    verdict of their own), and an unreached site has none (it was not measured).

    Args:
        site: A `deadrelu.report.SiteReport` (its `dormancy`, `dead`, `non_finite`, `reached` and
            `units`).
        tau: The threshold τ ≥ 0 (ReDo uses 0 to 0.1).

    Returns:
        The unit indices, ascending.

    Example:
        >>> dormant_units(report.site("hidden"), 0.1)
        [0, 3, 17]
    """
    if not site.reached or not site.units:
        return []
    mask = np.asarray(site.dormancy, np.float64) <= tau
    mask[np.asarray(site.dead, np.int64)] = True
    mask[np.asarray(site.non_finite, np.int64)] = False
    return [int(u) for u in np.flatnonzero(mask)]

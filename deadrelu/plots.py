"""Report → pictures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import numpy as np

from deadrelu.report import Report
from deadrelu.render import shorten

COLORS = {"dead": "#c0392b", "dying": "#e67e22", "saturated": "#8e44ad", "healthy": "#27ae60"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _label_size(count: int) -> float:
    """Tick label font size that keeps `count` labels from overlapping."""
    return float(np.clip(220.0 / max(count, 1), 3.0, 9.0))


def plot_overview(report: Report, path: str) -> None:
    """Saves the overview figure: per site, stacked shares of dead / dying / saturated / healthy.

    With gradients, a second panel shows each site's mean |∂ℓ/∂z| on a log scale, so a layer where
    gradient vanishes stands out. Sites run top to bottom in model order.

    Args:
        report: The scan report.
        path: Where to write the PNG (written atomically).
    """
    from deadrelu.files import atomic_output

    plt = _pyplot()
    sites = report.sites
    count = max(len(sites), 1)
    gradients = report.has_gradients and any(s.grad_mean_abs is not None for s in sites)
    height = float(np.clip(0.9 + 0.22 * count, 3.0, 60.0))
    ncols = 2 if gradients else 1
    fig, axes = plt.subplots(1, ncols, figsize=(11 if gradients else 8.5, height), sharey=True, squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]} if gradients else None)
    ax = axes[0][0]
    y = np.arange(len(sites))
    left = np.zeros(len(sites))
    for name in ("dead", "dying", "saturated", "healthy"):
        shares = np.array([(_count(s, name) / s.units) if s.units else 0.0 for s in sites])
        ax.barh(y, shares, left=left, color=COLORS[name], label=name, height=0.8, edgecolor="none")
        left += shares
    flag = report.settings.get("flag_threshold", 0.1)
    ax.axvline(flag, color="black", lw=0.8, ls="--", label=f"flag at {flag:.0%} dead")
    labels = [shorten(s.path, 40) + (" ✗" if s.flagged else "") for s in sites]
    ax.set_yticks(y, labels, fontsize=_label_size(count))
    for tick, site in zip(ax.get_yticklabels(), sites):
        if site.flagged:
            tick.set_color(COLORS["dead"])
    ax.set_ylim(len(sites) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of units")
    summary = report.summary
    ax.set_title(f"{report.model.get('name') or 'model'}: {summary['dead']}/{summary['units']} units dead "
                 f"({summary['dead_fraction']:.1%}), {report.data.get('samples', '?')} samples"
                 + (" (synthetic)" if report.data.get("synthetic") else ""), fontsize=10, loc="left")
    ax.legend(loc="lower right", fontsize=7, framealpha=0.9)
    if gradients:
        gx = axes[0][1]
        means = np.array([float(s.grad_mean_abs.mean()) if s.grad_mean_abs is not None and s.units else 0.0
                          for s in sites])
        floor = means[means > 0].min() / 10 if (means > 0).any() else 1e-12
        gx.barh(y, np.where(means > 0, means, floor), color=["#7f8c8d" if m > 0 else COLORS["dead"] for m in means],
                height=0.8)
        gx.set_xscale("log")
        gx.set_xlabel("mean |∂ℓ/∂z| per unit (log)")
        gx.set_title("gradient flow (red: none)", fontsize=10, loc="left")
    if not sites:
        ax.text(0.5, 0.5, "no ReLU site", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _count(site, name: str) -> int:
    return site.healthy if name == "healthy" else len(getattr(site, name))

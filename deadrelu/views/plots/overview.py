"""The overview figure: one row per site with its status shares, gradient flow and weight-gradient norms."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from deadrelu.views.plots.layout import (
    COLORS,
    DARK,
    GREY,
    LABELS,
    STATUSES,
    RowLayout,
    draw_bars,
    draw_header,
    legend_handles,
    log_axis,
    new_figure,
    row_layout,
    row_ticks,
    save_figure,
    site_labels,
    summary_title,
)
from deadrelu.views.terminal import shorten

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from deadrelu.report import Report, SiteReport


def overview_figure(report: Report) -> Figure:
    """The overview: per site, stacked shares of dead / dying / saturated / healthy units.

    With per-unit gradients a second panel shows each site's mean |∂ℓ/∂z| (log scale) beside the
    shares, so a site where gradient vanishes lines up with its dead share; with per-layer weight
    gradients a third panel shows each layer's ‖∇W‖ (log scale). Rows run top to bottom in model
    order; flagged sites have a red label and a red mark left of their bar.

    Args:
        report: The scan report.

    Returns:
        The figure.
    """
    sites = report.sites
    layout = row_layout(len(sites))
    site_gradients = any(s.grad_mean_abs is not None for s in sites)
    layer_gradients = bool(report.layer_gradients)
    ratios = [3.0] + [2.0] * site_gradients + [2.0] * layer_gradients
    fig = new_figure(8.5 + 3.2 * (len(ratios) - 1), layout.height)
    grid = fig.add_gridspec(1, len(ratios), width_ratios=ratios)
    ax = fig.add_subplot(grid[0, 0])
    handles = _share_panel(ax, report, layout)
    if site_gradients:
        gx = fig.add_subplot(grid[0, 1], sharey=ax)
        handles += _site_gradient_panel(gx, sites)
    if layer_gradients:
        _layer_gradient_panel(fig.add_subplot(grid[0, len(ratios) - 1]), report.layer_gradients)
    draw_header(fig, *summary_title(report), handles)
    return fig


def plot_overview(report: Report, path: str) -> None:
    """Saves the overview figure (`overview_figure`) as a PNG at `path`, atomically.

    Args:
        report: The scan report.
        path: Where to write the PNG.
    """
    save_figure(overview_figure(report), path)


def _count(site: SiteReport, name: str) -> int:
    """How many of the site's units have the status `name` (one of `STATUSES`)."""
    return site.healthy if name == "healthy" else len(getattr(site, name))


def _top_labels(ax: Axes, count: int) -> None:
    """Repeats the x tick labels on top of tall panels, so the scale is readable at both ends.

    Args:
        ax: The panel.
        count: Its number of rows (labels on top from 41 rows on).
    """
    ax.xaxis.set_ticks_position("both")
    ax.tick_params(axis="x", labeltop=count > 40)


def _share_panel(ax: Axes, report: Report, layout: RowLayout) -> list:
    """Stacked status shares per site, the flag line and the flagged marks.

    Args:
        ax: The panel.
        report: The scan report.
        layout: The figure's row layout.

    Returns:
        The legend handles.
    """
    sites = report.sites
    rows = np.arange(len(sites))
    left = np.zeros(len(sites))
    entries = []
    totals = report.summary
    for name in STATUSES:
        shares = np.array([_count(s, name) / s.units if s.units else 0.0 for s in sites])
        if shares.any():
            draw_bars(ax, rows, left, left + shares, COLORS[name])
            entries.append((f"{LABELS.get(name, name)} ({totals[name]:,})", {"facecolor": COLORS[name]}))
        left += shares
    flag = float(report.settings.get("flag_threshold", 0.1))
    ax.axvline(flag, color="black", lw=0.8, ls="--")
    entries.append((f"flag line: {flag:.0%} dead", {"kind": "line", "color": "black", "lw": 0.8, "ls": "--"}))
    flagged = [i for i, s in enumerate(sites) if s.flagged]
    if flagged:
        from matplotlib.transforms import blended_transform_factory

        marks = blended_transform_factory(ax.transAxes, ax.transData)
        ax.scatter(
            [1.018] * len(flagged),
            flagged,
            marker="<",
            s=min(30.0, layout.fontsize**2),
            color=COLORS["dead"],
            transform=marks,
            clip_on=False,
            zorder=3,
            linewidths=0,
        )
        entries.append(
            ("flagged site (◀, red label)", {"kind": "line", "color": COLORS["dead"], "marker": "<", "ls": "none"})
        )
    labels = site_labels(sites)
    row_ticks(ax, labels, layout, colors=[COLORS["dead"] if s.flagged else "black" for s in sites])
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter("{x:.0%}")
    ax.set_xlabel("share of the site's units (label: dead / units)", fontsize=8)
    ax.set_title(
        "unit status per site, model order" + (f" (every {layout.step}th label)" if layout.step > 1 else ""),
        fontsize=9,
        loc="left",
    )
    ax.tick_params(axis="x", labelsize=8)
    _top_labels(ax, len(sites))
    if not sites:
        ax.text(
            0.5, 0.5, "no ReLU site: nothing here can die this way", ha="center", va="center", transform=ax.transAxes
        )
        ax.set_ylim(0.5, -0.5)
    return legend_handles(entries)


def _site_gradient_panel(ax: Axes, sites: list[SiteReport]) -> list:
    """Per site: mean |∂ℓ/∂z| over all units (bar) and over the units that fire (dot), log scale.

    Args:
        ax: The panel (sharing its rows with the share panel).
        sites: The sites, in model order.

    Returns:
        The legend handles.
    """
    rows = np.arange(len(sites))
    measured = np.array([s.grad_mean_abs is not None and s.units > 0 for s in sites])
    means = np.array([float(np.mean(s.grad_mean_abs)) if m else np.nan for s, m in zip(sites, measured)])
    live = np.array([_live_gradient(s) if m else np.nan for s, m in zip(sites, measured)])
    floor = log_axis(ax, "x", np.concatenate([means, live]))
    positive = measured & (means > 0)
    draw_bars(ax, rows[positive], ax.get_xlim()[0], np.maximum(means[positive], floor), GREY)
    ax.scatter(np.maximum(live[positive], floor), rows[positive], s=9, color=DARK, zorder=3, linewidths=0)
    zero = measured & ~(means > 0)
    entries = [
        ("mean |∂ℓ/∂z|, all units", {"facecolor": GREY}),
        ("… over units that fire", {"kind": "line", "color": DARK, "marker": "o", "ls": "none", "markersize": 4}),
    ]
    if zero.any():
        ax.scatter(np.full(zero.sum(), floor), rows[zero], marker="x", color=COLORS["dead"], s=25, zorder=3)
        entries.append(("no gradient at all", {"kind": "line", "color": COLORS["dead"], "marker": "x", "ls": "none"}))
    ax.tick_params(axis="y", labelleft=False)
    ax.tick_params(axis="x", labelsize=8)
    _top_labels(ax, len(sites))
    ax.set_xlabel("mean |∂ℓ/∂z| per unit (log)", fontsize=8)
    ax.set_title("gradient flow per site", fontsize=9, loc="left")
    ax.grid(axis="x", which="major", lw=0.4, alpha=0.5)
    return legend_handles(entries)


def _live_gradient(site: SiteReport) -> float:
    """The mean |∂ℓ/∂z| over the site's units that are not dead (0.0 when all are)."""
    mask = np.ones(site.units, dtype=bool)
    mask[site.dead] = False
    return float(np.mean(site.grad_mean_abs[mask])) if mask.any() else 0.0


def _layer_gradient_panel(ax: Axes, layer_gradients: list[dict]) -> None:
    """Per layer with weights: ‖∇W‖ on a log scale, labels on the right, model order.

    Args:
        ax: The panel.
        layer_gradients: The report's `layer_gradients` (dicts with "path" and "grad_norm").
    """
    norms = np.array([float(g.get("grad_norm") or 0.0) for g in layer_gradients])
    rows = np.arange(len(norms))
    floor = log_axis(ax, "x", norms)
    draw_bars(ax, rows[norms > 0], ax.get_xlim()[0], np.maximum(norms[norms > 0], floor), "#2980b9")
    if (norms <= 0).any():
        ax.scatter(
            np.full((norms <= 0).sum(), floor), rows[norms <= 0], marker="x", color=COLORS["dead"], s=25, zorder=3
        )
    layout = row_layout(len(norms))
    row_ticks(
        ax,
        [shorten(str(g.get("path", "?")), 32) for g in layer_gradients],
        layout,
        colors=[COLORS["dead"] if n <= 0 else "black" for n in norms],
        side="right",
    )
    ax.tick_params(axis="x", labelsize=8)
    _top_labels(ax, len(norms))
    ax.set_xlabel("‖∇W‖ per layer (log; red ×: zero)", fontsize=8)
    ax.set_title("weight-gradient norm per layer", fontsize=9, loc="left")
    ax.grid(axis="x", which="major", lw=0.4, alpha=0.5)

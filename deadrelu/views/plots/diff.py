"""The diff figure of two reports: per site, newly dead and recovered units and the dead share before → after."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from deadrelu.views.plots.layout import (
    COLORS,
    DARK,
    GREY,
    abs_formatter,
    draw_bars,
    draw_header,
    integer_ticks,
    legend_handles,
    new_figure,
    row_layout,
    row_ticks,
    save_figure,
)
from deadrelu.views.terminal import shorten

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from deadrelu.compare import ReportDiff


def diff_figure(diff: ReportDiff) -> Figure:
    """Per site: newly dead units (right, red) against recovered units (left, green), and the dead share before → after.

    Sites found in only one report get a grey label and no bar.

    Args:
        diff: The `ReportDiff` of two reports.

    Returns:
        The figure.
    """
    sites = diff.sites
    labels = [shorten(s.path, 40) + ("" if s.comparable else "  (units changed)") for s in sites]
    labels += [shorten(p, 40) + "  (only new)" for p in diff.only_new]
    labels += [shorten(p, 40) + "  (only old)" for p in diff.only_old]
    layout = row_layout(len(labels))
    fig = new_figure(12.0, layout.height)
    grid = fig.add_gridspec(1, 2, width_ratios=[3, 2])
    ax = fig.add_subplot(grid[0, 0])
    rows = np.arange(len(sites))
    died = np.array([len(s.newly_dead) for s in sites], dtype=float)
    recovered = np.array([len(s.recovered) for s in sites], dtype=float)
    if died.any():
        draw_bars(ax, rows, 0.0, died, COLORS["dead"])
    if recovered.any():
        draw_bars(ax, rows, 0.0, -recovered, COLORS["healthy"])
    ax.axvline(0, color="black", lw=0.8)
    reach = max(float(died.max()) if died.size else 0.0, float(recovered.max()) if recovered.size else 0.0, 1.0)
    ax.set_xlim(-reach * 1.15, reach * 1.15)
    ax.xaxis.set_major_formatter(abs_formatter())
    ax.xaxis.set_major_locator(integer_ticks())
    if len(labels) <= 60:
        for row, (d, r) in enumerate(zip(died, recovered)):
            if d:
                ax.text(
                    d + reach * 0.015,
                    row,
                    f"+{int(d):,}",
                    va="center",
                    ha="left",
                    fontsize=layout.fontsize - 1,
                    color=COLORS["dead"],
                )
            if r:
                ax.text(
                    -r - reach * 0.015,
                    row,
                    f"−{int(r):,}",
                    va="center",
                    ha="right",
                    fontsize=layout.fontsize - 1,
                    color=COLORS["healthy"],
                )
    colors = ["black"] * len(sites) + [GREY] * (len(diff.only_new) + len(diff.only_old))
    row_ticks(ax, labels, layout, colors=colors)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("units   ← recovered | newly dead →", fontsize=8)
    ax.set_title("units that changed, per site (model order of the new report)", fontsize=9, loc="left")
    share = fig.add_subplot(grid[0, 1], sharey=ax)
    before = np.array([s.dead_before / s.units_before if s.units_before else 0.0 for s in sites])
    after = np.array([s.dead_after / s.units if s.units else 0.0 for s in sites])
    share.hlines(rows, np.minimum(before, after), np.maximum(before, after), color=GREY, lw=1.2)
    share.scatter(before, rows, s=18, facecolors="white", edgecolors=DARK, zorder=3)
    share.scatter(
        after,
        rows,
        s=18,
        color=[COLORS["dead"] if a > b else (COLORS["healthy"] if a < b else DARK) for a, b in zip(after, before)],
        zorder=4,
    )
    share.set_xlim(-0.03, 1.03)
    share.xaxis.set_major_formatter("{x:.0%}")
    share.tick_params(axis="y", labelleft=False)
    share.tick_params(axis="x", labelsize=8)
    share.set_xlabel("dead share: ○ old → ● new", fontsize=8)
    share.set_title("dead share before → after", fontsize=9, loc="left")
    share.grid(axis="x", lw=0.4, alpha=0.5)
    s = diff.summary
    entries = [
        (f"newly dead ({s['newly_dead']:,})", {"facecolor": COLORS["dead"]}),
        (f"recovered ({s['recovered']:,})", {"facecolor": COLORS["healthy"]}),
    ]
    draw_header(
        fig,
        f"{diff.new.get('name') or 'new'} vs {diff.old.get('name') or 'old'}: dead units "
        f"{s['dead_before']:,} → {s['dead_after']:,}; {s['newly_dead']:,} newly dead, "
        f"{s['recovered']:,} recovered",
        f"new: {shorten(str(diff.new.get('model')), 60)}   old: {shorten(str(diff.old.get('model')), 60)}",
        legend_handles(entries),
    )
    if not labels:
        ax.text(0.5, 0.5, "no site in either report", ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_diff(diff: ReportDiff, path: str) -> None:
    """Saves the diff figure (`diff_figure`) as a PNG at `path`, atomically.

    Args:
        diff: The `ReportDiff` of two reports.
        path: Where to write the PNG.
    """
    save_figure(diff_figure(diff), path)

"""Report → pictures: the overview, the unit map, per-site unit figures, the rate histogram, the diff.

Figures are plain `matplotlib.figure.Figure` objects rendered by the Agg canvas: no pyplot, so no
global figure registry, no backend switch in the caller's session and no display needed.
matplotlib is imported inside the functions, so importing this module stays cheap.

Layout rules shared by the tall figures (one row per site): rows run top to bottom in model order,
the figure grows with the row count up to `MAX_HEIGHT` inches, the label font shrinks with the row
pitch, and when even the smallest font would overlap only every k-th row is labelled.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
from typing import TYPE_CHECKING

import numpy as np

from deadrelu.render import shorten
from deadrelu.report import Report, SiteReport

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from deadrelu.compare import ReportDiff

COLORS = {"dead": "#c0392b", "dying": "#e67e22", "saturated": "#8e44ad", "healthy": "#27ae60"}
GREY, DARK = "#7f8c8d", "#2c3e50"
STATUSES = ("dead", "dying", "saturated", "healthy")
DPI = 100
MAX_HEIGHT = 36.0
"""Tallest figure, in inches (3,600 pixels at `DPI`): 300 sites still get a readable row each."""
RATE_FLOOR = 1e-5
"""Smallest active rate the log scales show; lower non-zero rates are drawn at this floor."""


# -- layout ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RowLayout:
    """How a figure with one row per item is sized and labelled.

    Attributes:
        height: Figure height in inches.
        fontsize: Font size of the row labels, in points.
        step: Label every `step`-th row (1: all).
    """

    height: float
    fontsize: float
    step: int


def row_layout(count: int, *, header: float = 1.9, pitch: float = 0.24, min_height: float = 3.4,
               max_height: float = MAX_HEIGHT) -> RowLayout:
    """Sizes a figure of `count` rows so that its labels neither overlap nor shrink to dust.

    Args:
        count: Number of rows (sites).
        header: Inches kept for the titles, legend and x axis.
        pitch: Preferred height of one row, in inches.
        min_height: Smallest figure height.
        max_height: Largest figure height; past it rows get thinner.

    Returns:
        A `RowLayout`.
    """
    count = max(count, 1)
    height = float(np.clip(header + pitch * count, min_height, max_height))
    row_points = (height - header) * 72.0 / count
    fontsize = min(9.0, 0.72 * row_points)
    step = 1
    if fontsize < 5.0:
        step = math.ceil(5.0 / max(fontsize, 0.1))
        fontsize = 5.0
    return RowLayout(height=height, fontsize=fontsize, step=step)


def _figure(width: float, height: float) -> "Figure":
    """A figure laid out by constrained layout (`_header` later keeps a band at its top free)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


TITLE_BAND = 0.62
"""Inches kept for the two title lines; each legend row adds `LEGEND_ROW`."""
LEGEND_ROW = 0.22


def _legend_columns(labels: list[str], width: float) -> int:
    """The most legend columns whose estimated width (8 pt text) fits in `width` inches."""
    sizes = [0.45 + 0.068 * len(label) for label in labels]
    for ncol in range(len(sizes), 1, -1):
        rows = math.ceil(len(sizes) / ncol)
        columns = [max(sizes[c * rows:(c + 1) * rows], default=0.0) for c in range(ncol)]
        if sum(columns) <= width:
            return ncol
    return 1


def _header(fig: "Figure", first: str, second: str, handles: list | None = None) -> None:
    """Writes two title lines and a legend row (or more) in a band at the top, above all axes.

    The band's height is taken from the constrained layout (its `rect`), so the legend never
    covers a bar and the titles never collide with it.
    """
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    width, height = fig.get_size_inches()
    handles = handles or []
    ncol = _legend_columns([h.get_label() for h in handles], width - 0.2)
    rows = math.ceil(len(handles) / ncol) if handles else 0
    band = TITLE_BAND + LEGEND_ROW * rows + (0.06 if rows else 0.0)
    fig.set_layout_engine(ConstrainedLayoutEngine(rect=(0.0, 0.0, 1.0, 1.0 - band / height)))
    inch = 1.0 / height
    fig.text(0.006, 1.0 - 0.1 * inch, first, ha="left", va="top", fontsize=10, fontweight="bold")
    fig.text(0.006, 1.0 - 0.36 * inch, second, ha="left", va="top", fontsize=8.5, color="#333333")
    if handles:
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 1.0 - (TITLE_BAND - 0.02) * inch),
                   ncol=ncol, fontsize=8, frameon=False, handlelength=1.4, columnspacing=1.4, borderaxespad=0.0,
                   borderpad=0.2, labelspacing=0.25)


def _row_ticks(ax: "Axes", labels: list[str], layout: RowLayout, *, colors: list[str] | None = None,
               side: str = "left") -> None:
    """Labels every row (every `layout.step`-th) beside the axes, top row first.

    The labels are plain texts, not tick labels: with hundreds of rows matplotlib's tick machinery
    and constrained layout's repeated measuring of every label cost seconds. Only the widest few
    labels take part in the layout (as transparent stand-ins), the rest are drawn once.

    Args:
        ax: The axes whose rows are labelled.
        labels: One label per row.
        layout: Font size and label step.
        colors: One colour per row (default black).
        side: "left" or "right" of the axes.
    """
    from matplotlib.transforms import ScaledTranslation, blended_transform_factory

    ax.set_yticks([])
    if not labels:
        return
    ax.set_ylim(len(labels) - 0.5, -0.5)
    offset = ScaledTranslation((-3.0 if side == "left" else 3.0) / 72.0, 0.0, ax.figure.dpi_scale_trans)
    transform = blended_transform_factory(ax.transAxes, ax.transData) + offset
    x, align = (0.0, "right") if side == "left" else (1.0, "left")
    colors = colors or ["black"] * len(labels)
    shown = range(0, len(labels), layout.step)
    for i in shown:
        text = ax.text(x, i, labels[i], transform=transform, ha=align, va="center", fontsize=layout.fontsize,
                       color=colors[i], clip_on=False)
        text.set_in_layout(False)
    for i in sorted(shown, key=lambda i: -len(labels[i]))[:3]:
        ax.text(x, i, labels[i], transform=transform, ha=align, va="center", fontsize=layout.fontsize,
                color="none", clip_on=False)
    marks = np.arange(len(labels))[::layout.step]
    ax.plot(np.full(marks.size, x), marks, transform=blended_transform_factory(ax.transAxes, ax.transData),
            ls="none", marker=0 if side == "left" else 1, color="black", markersize=2.5, markeredgewidth=0.6,
            clip_on=False)


def _bars(ax: "Axes", at, start, end, color, *, thickness: float = 0.86, horizontal: bool = True):
    """Many bars as one PolyCollection (much faster than `barh` with hundreds of rows).

    Args:
        ax: Where to draw.
        at: Bar centres on the category axis (rows, or units).
        start: Where each bar starts on the value axis.
        end: Where each bar ends on the value axis.
        color: One colour, or one per bar.
        thickness: Bar thickness in category units.
        horizontal: Bars along x (rows on y) when True.

    Returns:
        The collection (axis limits are left to the caller).
    """
    from matplotlib.collections import PolyCollection

    at = np.asarray(at, dtype=float)
    start = np.broadcast_to(np.asarray(start, dtype=float), at.shape)
    end = np.broadcast_to(np.asarray(end, dtype=float), at.shape)
    lo, hi = at - thickness / 2, at + thickness / 2
    if horizontal:
        verts = np.stack([np.stack([start, lo], 1), np.stack([end, lo], 1), np.stack([end, hi], 1),
                          np.stack([start, hi], 1)], 1)
    else:
        verts = np.stack([np.stack([lo, start], 1), np.stack([lo, end], 1), np.stack([hi, end], 1),
                          np.stack([hi, start], 1)], 1)
    collection = PolyCollection(verts, facecolors=color, edgecolors="none", linewidths=0)
    ax.add_collection(collection, autolim=False)
    return collection


def _site_labels(sites: list[SiteReport], width: int = 40) -> list[str]:
    """Row labels "path  dead/units", prefixed with the model-order index when there are many rows."""
    numbered = len(sites) > 12
    return [(f"#{i} " if numbered else "") + f"{shorten(site.path, width)}  {len(site.dead)}/{site.units}"
            for i, site in enumerate(sites)]


def _top_labels(ax: "Axes", count: int) -> None:
    """Repeats the x tick labels on top of tall panels, so the scale is readable at both ends."""
    ax.xaxis.set_ticks_position("both")
    ax.tick_params(axis="x", labeltop=count > 40)


def _count(site: SiteReport, name: str) -> int:
    return site.healthy if name == "healthy" else len(getattr(site, name))


def _summary_title(report: Report) -> tuple[str, str]:
    """Two title lines: the verdict, then what it was measured on and with which thresholds."""
    s = report.summary
    name = shorten(str(report.model.get("name") or report.model.get("path") or "model"), 32)
    first = (f"{name}: {s['dead']:,}/{s['units']:,} units dead ({s['dead_fraction']:.1%}), {s['dying']:,} dying, "
             f"{s['saturated']:,} saturated; {s['flagged_sites']}/{s['sites']} sites flagged")
    samples = report.data.get("samples")
    samples = f"{samples:,}" if isinstance(samples, int) else "?"
    source = os.path.basename(str(report.data.get("source") or "")) or "?"
    settings = report.settings
    second = (f"{samples} samples from {source}" + (" (SYNTHETIC inputs: not a real verdict)" if report.data.get("synthetic") else "")
              + f"; dying: active < {settings.get('dying_threshold', 0.01):g}; "
              f"flagged: ≥ {settings.get('flag_threshold', 0.1):.0%} dead")
    return first, second


def _legend_handles(entries: list[tuple[str, dict]]):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    for label, style in entries:
        if style.get("kind") == "line":
            handles.append(Line2D([], [], label=label, **{k: v for k, v in style.items() if k != "kind"}))
        else:
            handles.append(Patch(label=label, **{k: v for k, v in style.items() if k != "kind"}))
    return handles


# -- the overview ---------------------------------------------------------------------------

def overview_figure(report: Report) -> "Figure":
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
    fig = _figure(8.5 + 3.2 * (len(ratios) - 1), layout.height)
    grid = fig.add_gridspec(1, len(ratios), width_ratios=ratios)
    ax = fig.add_subplot(grid[0, 0])
    handles = _share_panel(ax, report, layout)
    if site_gradients:
        gx = fig.add_subplot(grid[0, 1], sharey=ax)
        handles += _site_gradient_panel(gx, sites)
    if layer_gradients:
        _layer_gradient_panel(fig.add_subplot(grid[0, len(ratios) - 1]), report.layer_gradients)
    _header(fig, *_summary_title(report), handles)
    return fig


def _share_panel(ax: "Axes", report: Report, layout: RowLayout) -> list:
    """Stacked status shares per site; returns the legend handles."""
    sites = report.sites
    rows = np.arange(len(sites))
    left = np.zeros(len(sites))
    entries = []
    totals = report.summary
    for name in STATUSES:
        shares = np.array([_count(s, name) / s.units if s.units else 0.0 for s in sites])
        if shares.any():
            _bars(ax, rows, left, left + shares, COLORS[name])
            entries.append((f"{name} ({totals[name]:,})", {"facecolor": COLORS[name]}))
        left += shares
    flag = float(report.settings.get("flag_threshold", 0.1))
    ax.axvline(flag, color="black", lw=0.8, ls="--")
    entries.append((f"flag line: {flag:.0%} dead", {"kind": "line", "color": "black", "lw": 0.8, "ls": "--"}))
    flagged = [i for i, s in enumerate(sites) if s.flagged]
    if flagged:
        from matplotlib.transforms import blended_transform_factory

        marks = blended_transform_factory(ax.transAxes, ax.transData)
        ax.scatter([1.018] * len(flagged), flagged, marker="<", s=min(30.0, layout.fontsize ** 2), color=COLORS["dead"],
                   transform=marks, clip_on=False, zorder=3, linewidths=0)
        entries.append(("flagged site (◀, red label)", {"kind": "line", "color": COLORS["dead"], "marker": "<",
                                                        "ls": "none"}))
    labels = _site_labels(sites)
    _row_ticks(ax, labels, layout, colors=[COLORS["dead"] if s.flagged else "black" for s in sites])
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter("{x:.0%}")
    ax.set_xlabel("share of the site's units (label: dead / units)", fontsize=8)
    ax.set_title("unit status per site, model order" + (f" (every {layout.step}th label)" if layout.step > 1 else ""),
                 fontsize=9, loc="left")
    ax.tick_params(axis="x", labelsize=8)
    _top_labels(ax, len(sites))
    if not sites:
        ax.text(0.5, 0.5, "no ReLU site: nothing here can die this way", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_ylim(0.5, -0.5)
    return _legend_handles(entries)


def _log_floor(values: np.ndarray, span: float = 1e8) -> float:
    """Where zero is drawn on a log axis: a decade under the smallest positive value, but no more
    than `span` under the largest (tinier values are drawn at the floor too)."""
    positive = values[np.isfinite(values) & (values > 0)]
    if not positive.size:
        return 1e-12
    return max(float(positive.min()) / 10.0, float(positive.max()) / span)


def _log_axis(ax: "Axes", which: str, values: np.ndarray) -> float:
    """Puts `which` ("x" or "y") on a log scale spanning the values and their zero floor.

    The range spans at least two decades so there are labelled decade ticks, and minor ticks carry
    no labels (they would overlap). Returns the floor where zeros are drawn.
    """
    from matplotlib.ticker import LogLocator, NullFormatter

    floor = _log_floor(values)
    finite = values[np.isfinite(values)]
    high = max(float(finite.max()) * 2.0 if finite.size else 1.0, floor * 100.0)
    low = min(floor / 2.0, high / 100.0)
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    (ax.set_xlim if which == "x" else ax.set_ylim)(low, high)
    axis.set_major_locator(LogLocator(base=10.0, numticks=7))
    axis.set_minor_formatter(NullFormatter())
    return floor


def _site_gradient_panel(ax: "Axes", sites: list[SiteReport]) -> list:
    """Per site: mean |∂ℓ/∂z| over all units (bar) and over the units that fire (dot), log scale."""
    rows = np.arange(len(sites))
    measured = np.array([s.grad_mean_abs is not None and s.units > 0 for s in sites])
    means = np.array([float(np.mean(s.grad_mean_abs)) if m else np.nan for s, m in zip(sites, measured)])
    live = np.array([_live_gradient(s) if m else np.nan for s, m in zip(sites, measured)])
    floor = _log_axis(ax, "x", np.concatenate([means, live]))
    positive = measured & (means > 0)
    _bars(ax, rows[positive], ax.get_xlim()[0], np.maximum(means[positive], floor), GREY)
    ax.scatter(np.maximum(live[positive], floor), rows[positive], s=9, color=DARK, zorder=3, linewidths=0)
    zero = measured & ~(means > 0)
    entries = [("mean |∂ℓ/∂z|, all units", {"facecolor": GREY}),
               ("… over units that fire", {"kind": "line", "color": DARK, "marker": "o", "ls": "none", "markersize": 4})]
    if zero.any():
        ax.scatter(np.full(zero.sum(), floor), rows[zero], marker="x", color=COLORS["dead"], s=25, zorder=3)
        entries.append(("no gradient at all", {"kind": "line", "color": COLORS["dead"], "marker": "x", "ls": "none"}))
    ax.tick_params(axis="y", labelleft=False)
    ax.tick_params(axis="x", labelsize=8)
    _top_labels(ax, len(sites))
    ax.set_xlabel("mean |∂ℓ/∂z| per unit (log)", fontsize=8)
    ax.set_title("gradient flow per site", fontsize=9, loc="left")
    ax.grid(axis="x", which="major", lw=0.4, alpha=0.5)
    return _legend_handles(entries)


def _live_gradient(site: SiteReport) -> float:
    mask = np.ones(site.units, dtype=bool)
    mask[site.dead] = False
    return float(np.mean(site.grad_mean_abs[mask])) if mask.any() else 0.0


def _layer_gradient_panel(ax: "Axes", layer_gradients: list[dict]) -> None:
    """Per layer with weights: ‖∇W‖ on a log scale, labels on the right, model order."""
    norms = np.array([float(g.get("grad_norm") or 0.0) for g in layer_gradients])
    rows = np.arange(len(norms))
    floor = _log_axis(ax, "x", norms)
    _bars(ax, rows[norms > 0], ax.get_xlim()[0], np.maximum(norms[norms > 0], floor), "#2980b9")
    if (norms <= 0).any():
        ax.scatter(np.full((norms <= 0).sum(), floor), rows[norms <= 0], marker="x", color=COLORS["dead"], s=25,
                   zorder=3)
    layout = row_layout(len(norms))
    _row_ticks(ax, [shorten(str(g.get("path", "?")), 32) for g in layer_gradients], layout,
               colors=[COLORS["dead"] if n <= 0 else "black" for n in norms], side="right")
    ax.tick_params(axis="x", labelsize=8)
    _top_labels(ax, len(norms))
    ax.set_xlabel("‖∇W‖ per layer (log; red ×: zero)", fontsize=8)
    ax.set_title("weight-gradient norm per layer", fontsize=9, loc="left")
    ax.grid(axis="x", which="major", lw=0.4, alpha=0.5)


# -- unit-level figures ---------------------------------------------------------------------

def _rate_colors(rates: np.ndarray, dead: np.ndarray):
    """RGBA per unit: active rate on a log colour scale (viridis, no red in it); dead units red."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, to_rgba

    norm = LogNorm(vmin=RATE_FLOOR, vmax=1.0, clip=True)
    rgba = colormaps["viridis"](norm(np.clip(rates, RATE_FLOOR, 1.0)))
    rgba[dead] = to_rgba(COLORS["dead"])
    return rgba


def _rate_colorbar(fig: "Figure", ax: "Axes", *, location: str = "right",
                   label: str = "active rate (log); red: dead") -> None:
    """The colour key of `_rate_colors`, beside (`location="right"`) or above ("top") `ax`."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm

    options = {"fraction": 0.05, "pad": 0.02} if location == "right" else {
        "location": "top", "shrink": 0.45, "aspect": 45, "pad": 0.005, "anchor": (0.0, 0.0), "panchor": (0.0, 1.0)}
    bar = fig.colorbar(ScalarMappable(norm=LogNorm(vmin=RATE_FLOOR, vmax=1.0), cmap=colormaps["viridis"]), ax=ax,
                       **options)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _status_array(site: SiteReport) -> np.ndarray:
    """Each unit's verdict as a string array (dead wins over saturated over dying, as in the report)."""
    status = np.full(site.units, "healthy", dtype=object)
    for name in ("dying", "saturated", "dead"):
        members = np.asarray(getattr(site, name), dtype=int)
        status[members] = name
    return status


def _dead_mask(site: SiteReport) -> np.ndarray:
    mask = np.zeros(site.units, dtype=bool)
    mask[site.dead] = True
    return mask


def unit_map_figure(report: Report, *, columns: int = 240) -> "Figure":
    """Every unit of the model at once: one row per site, its units sorted by active rate.

    Each row is stretched to the same width, so the red run on the left is the site's dead share and
    the colours after it show how its living units are spread between rarely and always active.

    Args:
        report: The scan report.
        columns: Horizontal resolution of a row.

    Returns:
        The figure.
    """
    sites = report.sites
    layout = row_layout(len(sites), header=1.7)
    fig = _figure(10.0, layout.height)
    ax = fig.add_subplot()
    image = np.ones((max(len(sites), 1), columns, 4))
    quantiles = (np.arange(columns) + 0.5) / columns
    for row, site in enumerate(sites):
        if not site.units:
            continue
        order = np.argsort(site.active_rate, kind="stable")
        colors = _rate_colors(site.active_rate[order], _dead_mask(site)[order])
        image[row] = colors[np.minimum((quantiles * site.units).astype(int), site.units - 1)]
    ax.imshow(image, aspect="auto", interpolation="nearest", extent=(0.0, 1.0, len(sites) - 0.5, -0.5))
    if 1 < len(sites):
        row_points = (layout.height - 1.7) * 72.0 / len(sites)
        ax.hlines(np.arange(len(sites) - 1) + 0.5, 0.0, 1.0, color="white", lw=min(2.0, 0.15 * row_points))
    _row_ticks(ax, _site_labels(sites), layout,
               colors=[COLORS["dead"] if s.flagged else "black" for s in sites])
    ax.xaxis.set_major_formatter("{x:.0%}")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("units of each site, sorted by active rate (share of the site's units)", fontsize=8)
    _rate_colorbar(fig, ax, location="top")
    _header(fig, "unit map: every unit's active rate, one row per site (model order)",
              _summary_title(report)[0])
    return fig


def histogram_figure(report: Report, *, bins: int = 25) -> "Figure":
    """Histogram of the active rates of all units, on log bins, with dead units as their own bar.

    Args:
        report: The scan report.
        bins: Number of log-spaced bins between `RATE_FLOOR` and 1.

    Returns:
        The figure.
    """
    rates = np.concatenate([s.active_rate for s in report.sites]) if report.sites else np.zeros(0)
    dead = np.concatenate([_dead_mask(s) for s in report.sites]) if report.sites else np.zeros(0, dtype=bool)
    dying = float(report.settings.get("dying_threshold", 0.01))
    fig = _figure(8.0, 4.2)
    ax = fig.add_subplot()
    edges = np.geomspace(RATE_FLOOR, 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(rates[~dead], RATE_FLOOR, 1.0), bins=edges)
    centers = np.sqrt(edges[:-1] * edges[1:])
    colors = [COLORS["dying"] if c < dying else COLORS["healthy"] for c in centers]
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=colors, edgecolor="white", linewidth=0.5)
    zero_at = RATE_FLOOR / 10 ** 1.2
    zero_width = (RATE_FLOOR / 10 ** 0.7 - zero_at)
    if dead.any():
        ax.bar([zero_at], [dead.sum()], width=zero_width, align="edge", color=COLORS["dead"])
        ax.annotate(f"{dead.sum():,} dead", (zero_at + zero_width / 2, dead.sum()), xytext=(0, 3),
                    textcoords="offset points", ha="center", fontsize=8)
    ax.axvline(dying, color="black", lw=0.8, ls="--")
    ax.annotate(f"dying < {dying:g}", (dying, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                textcoords="offset points", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(zero_at / 2, 1.3)
    ticks = [zero_at + zero_width / 2] + [10.0 ** k for k in range(int(math.log10(RATE_FLOOR)), 1)]
    ax.set_xticks(ticks, ["0\n(dead)"] + [f"$10^{{{k}}}$" for k in range(int(math.log10(RATE_FLOOR)), 1)],
                  fontsize=8)
    ax.xaxis.set_minor_locator(_no_ticks())
    top = max(int(counts.max()) if counts.size else 0, int(dead.sum()), 1)
    if top > 50:
        ax.set_yscale("log")
        ax.set_ylim(0.7, top * 2.5)
    else:
        ax.set_ylim(0, top * 1.15 + 1)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("active rate (share of sample × position pairs where the unit fires; log bins)", fontsize=8)
    ax.set_ylabel("units", fontsize=8)
    _header(fig, f"active rates of all {rates.size:,} units", _summary_title(report)[0])
    return fig


def _no_ticks():
    from matplotlib.ticker import NullLocator

    return NullLocator()


def site_figure(site: SiteReport, settings: dict | None = None, *, index: int | None = None) -> "Figure":
    """One site's units: sorted active rates (with gradients below, if measured) and an index-order map.

    Args:
        site: The site.
        settings: The report's settings (for the dying threshold).
        index: The site's model-order index, shown in the title.

    Returns:
        The figure.
    """
    settings = settings or {}
    gradients = site.grad_mean_abs is not None
    fig = _figure(11.0, 5.6 if gradients else 4.4)
    grid = fig.add_gridspec(2 if gradients else 1, 2, width_ratios=[1.6, 1.0],
                            height_ratios=[2.0, 1.0] if gradients else None)
    rates_ax = fig.add_subplot(grid[0, 0])
    order = np.argsort(site.active_rate, kind="stable")
    _sorted_rates_panel(rates_ax, site, order, float(settings.get("dying_threshold", 0.01)))
    if gradients:
        grad_ax = fig.add_subplot(grid[1, 0], sharex=rates_ax)
        _sorted_gradient_panel(grad_ax, site, order)
        rates_ax.tick_params(axis="x", labelbottom=False)
        rates_ax.set_xlabel("")
    map_ax = fig.add_subplot(grid[:, 1])
    _index_map_panel(fig, map_ax, site)
    positions = f" × {site.positions:,} positions" if site.positions > 1 else ""
    first = f"{'#%d ' % index if index is not None else ''}{shorten(site.path, 90)}  ({site.layer}, {site.kind})"
    second = (f"{site.units:,} units{positions}: {len(site.dead):,} dead ({site.dead_fraction:.1%}), "
              f"{len(site.dying):,} dying, {len(site.saturated):,} saturated" + ("  — FLAGGED" if site.flagged else ""))
    _header(fig, first, second)
    return fig


def _sorted_rates_panel(ax: "Axes", site: SiteReport, order: np.ndarray, dying: float) -> None:
    """Bars of the units' active rates, lowest first, coloured by status; dead units as a red band."""
    rates = site.active_rate[order]
    status = _status_array(site)[order]
    x = np.arange(site.units)
    floor = RATE_FLOOR
    dead = int((status == "dead").sum())
    if dead:  # sorted first; no height on a log scale, so a red band, a red floor bar and a count
        ax.axvspan(-0.5, dead - 0.5, color=COLORS["dead"], alpha=0.3, linewidth=0)
        _bars(ax, x[:dead], floor, floor * 3.0, COLORS["dead"], thickness=1.0, horizontal=False).set_label(
            f"dead ({dead:,}): never fire")
        ax.text((dead - 1) / 2, 10 ** -3.5, f"{dead:,} dead\nunit{'s' if dead > 1 else ''}", ha="center",
                va="center", fontsize=9, color=COLORS["dead"], fontweight="bold", clip_on=True)
    for name in STATUSES[1:]:
        mask = status == name
        if mask.any():
            _bars(ax, x[mask], floor, np.clip(rates[mask], floor, 1.0), COLORS[name], thickness=1.0,
                  horizontal=False).set_label(f"{name} ({mask.sum():,})")
    ax.axhline(dying, color="black", lw=0.8, ls="--", label=f"dying threshold {dying:g}")
    ax.set_yscale("log")
    ax.set_ylim(floor, 1.5)
    ax.set_xlim(-0.5, max(site.units, 1) - 0.5)
    ax.set_ylabel("active rate (log)", fontsize=8)
    ax.set_xlabel("units, sorted by active rate", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.set_title("units sorted by active rate", fontsize=9, loc="left")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.08), ncol=5, fontsize=7, frameon=False, borderaxespad=0,
              handlelength=1.2, columnspacing=1.0)


def _sorted_gradient_panel(ax: "Axes", site: SiteReport, order: np.ndarray) -> None:
    """Each unit's mean |∂ℓ/∂z| in the same order as the rates above; zero gradient as red marks."""
    grads = site.grad_mean_abs[order]
    x = np.arange(site.units)
    floor = _log_axis(ax, "y", grads)
    positive = grads > 0
    ax.scatter(x[positive], np.maximum(grads[positive], floor), s=6, color=DARK, linewidths=0)
    if (~positive).any():
        ax.scatter(x[~positive], np.full((~positive).sum(), floor), s=10, marker="|", color=COLORS["dead"])
    ax.set_ylabel("mean |∂ℓ/∂z|", fontsize=8)
    ax.set_xlabel("units, sorted by active rate (red |: zero gradient)", fontsize=8)
    ax.tick_params(labelsize=8)


def _index_map_panel(fig: "Figure", ax: "Axes", site: SiteReport) -> None:
    """The units in index order as a grid (row-major), coloured by active rate, dead units red."""
    units = max(site.units, 1)
    cols = max(1, math.ceil(math.sqrt(units * 1.6)))
    rows = math.ceil(units / cols)
    image = np.ones((rows * cols, 4))
    image[:site.units] = _rate_colors(site.active_rate, _dead_mask(site))
    ax.imshow(image.reshape(rows, cols, 4), interpolation="nearest", aspect="auto")
    if site.units <= 256:
        dead = set(site.dead)
        size = 7 if cols <= 10 else (6 if cols <= 16 else 4.5)
        for unit in range(site.units):
            if site.units <= 64 or unit in dead:
                ax.text(unit % cols, unit // cols, str(unit), ha="center", va="center", fontsize=size,
                        color="white" if unit in dead or site.active_rate[unit] < 0.05 else "black")
    ax.set_xticks([])
    ax.set_yticks(range(rows), [str(r * cols) for r in range(rows)] if rows <= 40 else [""] * rows, fontsize=6)
    ax.tick_params(axis="y", length=0)
    ax.set_title(f"units by index (row-major, {cols} per row; row label = first index)", fontsize=9, loc="left")
    _rate_colorbar(fig, ax)


# -- the diff -------------------------------------------------------------------------------

def diff_figure(diff: "ReportDiff") -> "Figure":
    """Per site: newly dead units (right, red) against revived units (left, green), and the dead share before → after.

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
    fig = _figure(12.0, layout.height)
    grid = fig.add_gridspec(1, 2, width_ratios=[3, 2])
    ax = fig.add_subplot(grid[0, 0])
    rows = np.arange(len(sites))
    died = np.array([len(s.newly_dead) for s in sites], dtype=float)
    revived = np.array([len(s.revived) for s in sites], dtype=float)
    if died.any():
        _bars(ax, rows, 0.0, died, COLORS["dead"])
    if revived.any():
        _bars(ax, rows, 0.0, -revived, COLORS["healthy"])
    ax.axvline(0, color="black", lw=0.8)
    reach = max(float(died.max()) if died.size else 0.0, float(revived.max()) if revived.size else 0.0, 1.0)
    ax.set_xlim(-reach * 1.15, reach * 1.15)
    ax.xaxis.set_major_formatter(_abs_formatter())
    ax.xaxis.set_major_locator(_integer_ticks())
    if len(labels) <= 60:
        for row, (d, r) in enumerate(zip(died, revived)):
            if d:
                ax.text(d + reach * 0.015, row, f"+{int(d):,}", va="center", ha="left", fontsize=layout.fontsize - 1,
                        color=COLORS["dead"])
            if r:
                ax.text(-r - reach * 0.015, row, f"−{int(r):,}", va="center", ha="right", fontsize=layout.fontsize - 1,
                        color=COLORS["healthy"])
    colors = ["black"] * len(sites) + ["#7f8c8d"] * (len(diff.only_new) + len(diff.only_old))
    _row_ticks(ax, labels, layout, colors=colors)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("units   ← revived | newly dead →", fontsize=8)
    ax.set_title("units that changed, per site (model order of the new report)", fontsize=9, loc="left")
    share = fig.add_subplot(grid[0, 1], sharey=ax)
    before = np.array([s.dead_before / s.units_before if s.units_before else 0.0 for s in sites])
    after = np.array([s.dead_after / s.units if s.units else 0.0 for s in sites])
    share.hlines(rows, np.minimum(before, after), np.maximum(before, after), color=GREY, lw=1.2)
    share.scatter(before, rows, s=18, facecolors="white", edgecolors=DARK, zorder=3)
    share.scatter(after, rows, s=18, color=[COLORS["dead"] if a > b else (COLORS["healthy"] if a < b else DARK)
                                            for a, b in zip(after, before)], zorder=4)
    share.set_xlim(-0.03, 1.03)
    share.xaxis.set_major_formatter("{x:.0%}")
    share.tick_params(axis="y", labelleft=False)
    share.tick_params(axis="x", labelsize=8)
    share.set_xlabel("dead share: ○ old → ● new", fontsize=8)
    share.set_title("dead share before → after", fontsize=9, loc="left")
    share.grid(axis="x", lw=0.4, alpha=0.5)
    s = diff.summary
    entries = [(f"newly dead ({s['newly_dead']:,})", {"facecolor": COLORS["dead"]}),
               (f"revived ({s['revived']:,})", {"facecolor": COLORS["healthy"]})]
    _header(fig, f"{diff.new.get('name') or 'new'} vs {diff.old.get('name') or 'old'}: dead units "
                 f"{s['dead_before']:,} → {s['dead_after']:,}; {s['newly_dead']:,} newly dead, {s['revived']:,} revived",
            f"new: {shorten(str(diff.new.get('model')), 60)}   old: {shorten(str(diff.old.get('model')), 60)}",
            _legend_handles(entries))
    if not labels:
        ax.text(0.5, 0.5, "no site in either report", ha="center", va="center", transform=ax.transAxes)
    return fig


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(nbins=8, integer=True, symmetric=True)


def _abs_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: f"{abs(value):g}")


# -- files ----------------------------------------------------------------------------------

def save_figure(fig: "Figure", path: str, *, dpi: int = DPI) -> str:
    """Writes a figure as PNG, atomically; returns the path."""
    from deadrelu.files import atomic_output

    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


def figure_png(fig: "Figure", *, dpi: int = DPI) -> bytes:
    """The PNG bytes of a figure (for embedding)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    return buffer.getvalue()


def site_file_name(index: int, path: str) -> str:
    """A safe, unique file name for a site's figure, e.g. `site-003-decoder_conv2d_3.png`.

    The model-order index keeps names unique even when two paths sanitize alike.
    """
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", path).strip("._-")[:80] or "site"
    return f"site-{index:03d}-{slug}.png"


def plot_overview(report: Report, path: str) -> None:
    """Saves the overview figure (`overview_figure`) as a PNG at `path`, atomically.

    Args:
        report: The scan report.
        path: Where to write the PNG.
    """
    save_figure(overview_figure(report), path)


def plot_diff(diff: "ReportDiff", path: str) -> None:
    """Saves the diff figure (`diff_figure`) as a PNG at `path`, atomically."""
    save_figure(diff_figure(diff), path)


def prepare_folder(folder: str) -> str:
    """Checks (and creates, if its parent exists) the folder for `--plot-dir`; returns it.

    Raises:
        UsageError: The path is a file, or its parent folder does not exist.
    """
    from deadrelu.errors import UsageError

    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"--plot-dir {folder} is a file; give a folder")
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(parent):
        raise UsageError(f"the parent folder of --plot-dir does not exist: {parent}; create it or choose another path")
    os.makedirs(folder, exist_ok=True)
    return folder


def plot_site_dir(report: Report, folder: str) -> list[str]:
    """Writes every figure of a report into `folder`.

    Files: `overview.png`, `unit_map.png`, `active_rates.png` (the histogram) and one
    `site-NNN-<path>.png` per site (`site_file_name`).

    Args:
        report: The scan report.
        folder: The output folder (created if its parent exists).

    Returns:
        The paths written, overview first, then the sites in model order.
    """
    folder = prepare_folder(folder)
    written = [save_figure(overview_figure(report), os.path.join(folder, "overview.png")),
               save_figure(unit_map_figure(report), os.path.join(folder, "unit_map.png")),
               save_figure(histogram_figure(report), os.path.join(folder, "active_rates.png"))]
    for index, site in enumerate(report.sites):
        written.append(save_figure(site_figure(site, report.settings, index=index),
                                   os.path.join(folder, site_file_name(index, site.path))))
    return written

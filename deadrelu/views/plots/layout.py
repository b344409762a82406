"""The layout kit shared by every figure: colours, row sizing, titles and legends, bars, axes, files.

Layout rules of the tall figures (one row per site): rows run top to bottom in model order, the
figure grows with the row count up to `MAX_HEIGHT` inches, the label font shrinks with the row
pitch, and when even the smallest font would overlap only every k-th row is labelled.

matplotlib is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from typing import TYPE_CHECKING

import numpy as np

from deadrelu.views.terminal import shorten

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, Locator

    from deadrelu.report import Report, SiteReport

COLORS = {"dead": "#c0392b", "dying": "#e67e22", "saturated": "#8e44ad", "healthy": "#27ae60", "non_finite": "#17202a"}
GREY, DARK = "#7f8c8d", "#2c3e50"
STATUSES = ("dead", "dying", "saturated", "healthy", "non_finite")
LABELS = {"non_finite": "NaN/inf"}  # legend words where a status name is not one
DPI = 100
MAX_HEIGHT = 36.0
"""Tallest figure, in inches (3,600 pixels at `DPI`): 300 sites still get a readable row each."""
RATE_FLOOR = 1e-5
"""Smallest active rate the log scales show; lower non-zero rates are drawn at this floor."""
TITLE_BAND = 0.62
"""Inches kept for the two title lines; each legend row adds `LEGEND_ROW`."""
LEGEND_ROW = 0.22


# -- sizing ---------------------------------------------------------------------------------


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


def row_layout(
    count: int, *, header: float = 1.9, pitch: float = 0.24, min_height: float = 3.4, max_height: float = MAX_HEIGHT
) -> RowLayout:
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


def new_figure(width: float, height: float) -> Figure:
    """A figure laid out by constrained layout (`draw_header` later keeps a band at its top free).

    Args:
        width: Width in inches.
        height: Height in inches.

    Returns:
        A `matplotlib.figure.Figure` at `DPI`, not registered with pyplot.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


# -- titles and legends ---------------------------------------------------------------------


def _legend_columns(labels: list[str], width: float) -> int:
    """The most legend columns whose estimated width (8 pt text) fits in `width` inches.

    Args:
        labels: The legend's labels, in order.
        width: Inches available.

    Returns:
        The number of columns (at least 1).
    """
    sizes = [0.45 + 0.068 * len(label) for label in labels]
    for ncol in range(len(sizes), 1, -1):
        rows = math.ceil(len(sizes) / ncol)
        columns = [max(sizes[c * rows : (c + 1) * rows], default=0.0) for c in range(ncol)]
        if sum(columns) <= width:
            return ncol
    return 1


def draw_header(fig: Figure, first: str, second: str, handles: list | None = None) -> None:
    """Writes two title lines and a legend row (or more) in a band at the top, above all axes.

    The band's height is taken from the constrained layout (its `rect`), so the legend never
    covers a bar and the titles never collide with it.

    Args:
        fig: The figure (made by `new_figure`).
        first: The bold first title line.
        second: The smaller second line.
        handles: Legend handles (`legend_handles`); none: no legend row.
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
        fig.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(0.0, 1.0 - (TITLE_BAND - 0.02) * inch),
            ncol=ncol,
            fontsize=8,
            frameon=False,
            handlelength=1.4,
            columnspacing=1.4,
            borderaxespad=0.0,
            borderpad=0.2,
            labelspacing=0.25,
        )


def legend_handles(entries: list[tuple[str, dict]]) -> list:
    """Legend handles from (label, style) pairs.

    Args:
        entries: Per entry its label and its style: keyword arguments of `Patch` (a filled box),
            or of `Line2D` when the style has `"kind": "line"`.

    Returns:
        The handles, in order, for `draw_header`.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    for label, style in entries:
        if style.get("kind") == "line":
            handles.append(Line2D([], [], label=label, **{k: v for k, v in style.items() if k != "kind"}))
        else:
            handles.append(Patch(label=label, **{k: v for k, v in style.items() if k != "kind"}))
    return handles


def summary_title(report: Report) -> tuple[str, str]:
    """Two title lines: the verdict, then what it was measured on and with which thresholds.

    Args:
        report: The scan report.

    Returns:
        (first line, second line).
    """
    s = report.summary
    name = shorten(str(report.model.get("name") or report.model.get("path") or "model"), 32)
    first = (
        f"{name}: {s['dead']:,}/{s['units']:,} units dead ({s['dead_fraction']:.1%}), {s['dying']:,} dying, "
        f"{s['saturated']:,} saturated; {s['flagged_sites']}/{s['sites']} sites flagged"
    )
    if s.get("non_finite"):  # the one fact that overrides the rest (see report-format.md)
        first = f"DIVERGED ({s['non_finite']:,} NaN/inf units) — {first}"
    samples = report.data.get("samples")
    samples = f"{samples:,}" if isinstance(samples, int) else "?"
    source = os.path.basename(str(report.data.get("source") or "")) or "?"
    settings = report.settings
    synthetic = " (SYNTHETIC inputs: not a real verdict)" if report.data.get("synthetic") else ""
    second = (
        f"{samples} samples from {source}"
        + synthetic
        + f"; dying: active < {settings.get('dying_threshold', 0.01):g}; "
        f"flagged: ≥ {settings.get('flag_threshold', 0.1):.0%} dead"
    )
    return first, second


# -- rows and bars --------------------------------------------------------------------------


def site_labels(sites: list[SiteReport], width: int = 40) -> list[str]:
    """Row labels "path  dead/units", prefixed with the model-order index when there are many rows.

    Args:
        sites: The sites, one row each.
        width: Longest path shown (longer ones are shortened in the middle).

    Returns:
        One label per site.
    """
    numbered = len(sites) > 12
    return [
        (f"#{i} " if numbered else "") + f"{shorten(site.path, width)}  {len(site.dead)}/{site.units}"
        for i, site in enumerate(sites)
    ]


def row_ticks(
    ax: Axes, labels: list[str], layout: RowLayout, *, colors: list[str] | None = None, side: str = "left"
) -> None:
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
        text = ax.text(
            x,
            i,
            labels[i],
            transform=transform,
            ha=align,
            va="center",
            fontsize=layout.fontsize,
            color=colors[i],
            clip_on=False,
        )
        text.set_in_layout(False)
    for i in sorted(shown, key=lambda i: -len(labels[i]))[:3]:
        ax.text(
            x,
            i,
            labels[i],
            transform=transform,
            ha=align,
            va="center",
            fontsize=layout.fontsize,
            color="none",
            clip_on=False,
        )
    marks = np.arange(len(labels))[:: layout.step]
    ax.plot(
        np.full(marks.size, x),
        marks,
        transform=blended_transform_factory(ax.transAxes, ax.transData),
        ls="none",
        marker=0 if side == "left" else 1,
        color="black",
        markersize=2.5,
        markeredgewidth=0.6,
        clip_on=False,
    )


def draw_bars(ax: Axes, at, start, end, color, *, thickness: float = 0.86, horizontal: bool = True) -> PolyCollection:
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
        verts = np.stack(
            [np.stack([start, lo], 1), np.stack([end, lo], 1), np.stack([end, hi], 1), np.stack([start, hi], 1)], 1
        )
    else:
        verts = np.stack(
            [np.stack([lo, start], 1), np.stack([lo, end], 1), np.stack([hi, end], 1), np.stack([hi, start], 1)], 1
        )
    collection = PolyCollection(verts, facecolors=color, edgecolors="none", linewidths=0)
    ax.add_collection(collection, autolim=False)
    return collection


# -- log axes and tick formatters -----------------------------------------------------------


def _log_floor(values: np.ndarray, span: float = 1e8) -> float:
    """Where zero is drawn on a log axis.

    Args:
        values: The values to be drawn (NaN and infinities are ignored).
        span: Largest ratio between the largest value and the floor.

    Returns:
        A decade under the smallest positive value, but no more than `span` under the largest
        (tinier values are drawn at the floor too); 1e-12 when no value is positive.
    """
    positive = values[np.isfinite(values) & (values > 0)]
    if not positive.size:
        return 1e-12
    return max(float(positive.min()) / 10.0, float(positive.max()) / span)


def log_axis(ax: Axes, which: str, values: np.ndarray) -> float:
    """Puts `which` ("x" or "y") on a log scale spanning the values and their zero floor.

    The range spans at least two decades so there are labelled decade ticks, and minor ticks carry
    no labels (they would overlap).

    Args:
        ax: The axes.
        which: "x" or "y".
        values: The values to be drawn on that axis.

    Returns:
        The floor where zeros are drawn (`_log_floor`).
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


def no_ticks() -> Locator:
    """A locator that places no ticks (for minor ticks that would clutter an axis)."""
    from matplotlib.ticker import NullLocator

    return NullLocator()


def integer_ticks() -> Locator:
    """At most 8 whole-number ticks, symmetric around zero (for counts drawn both ways from zero)."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(nbins=8, integer=True, symmetric=True)


def abs_formatter() -> FuncFormatter:
    """Tick labels without a sign: a count drawn leftwards (negative) still reads as a count."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: f"{abs(value):g}")


# -- files ----------------------------------------------------------------------------------


def save_figure(fig: Figure, path: str, *, dpi: int = DPI) -> str:
    """Writes a figure as PNG, atomically.

    Args:
        fig: The figure.
        path: Where to write it (its folder must exist).
        dpi: Resolution.

    Returns:
        `path`.

    Raises:
        UsageError: The folder of `path` does not exist.
    """
    from deadrelu.io.files import atomic_output

    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


def figure_png(fig: Figure, *, dpi: int = DPI) -> bytes:
    """The PNG bytes of a figure (for embedding, e.g. in the HTML report).

    Args:
        fig: The figure.
        dpi: Resolution.

    Returns:
        The PNG file's bytes.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    return buffer.getvalue()

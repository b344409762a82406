"""Unit-level figures: the unit map, the active-rate histogram, one figure per site, and `--plot-dir`."""

from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING

import numpy as np

from deadrelu.views.plots.layout import (
    COLORS,
    DARK,
    LABELS,
    RATE_FLOOR,
    STATUSES,
    draw_bars,
    draw_header,
    log_axis,
    new_figure,
    no_ticks,
    row_layout,
    row_ticks,
    save_figure,
    site_labels,
    summary_title,
)
from deadrelu.views.plots.overview import overview_figure
from deadrelu.views.terminal import shorten

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from deadrelu.report import Report, SiteReport


# -- colour by active rate ------------------------------------------------------------------


def _rate_colors(rates: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """RGBA per unit: active rate on a log colour scale (viridis, no red in it); dead units red.

    Args:
        rates: Active rate per unit.
        dead: Boolean mask of the dead units.

    Returns:
        An array of shape (units, 4).
    """
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, to_rgba

    norm = LogNorm(vmin=RATE_FLOOR, vmax=1.0, clip=True)
    rgba = colormaps["viridis"](norm(np.clip(rates, RATE_FLOOR, 1.0)))
    rgba[dead] = to_rgba(COLORS["dead"])
    return rgba


def _rate_colorbar(
    fig: Figure, ax: Axes, *, location: str = "right", label: str = "active rate (log); red: dead"
) -> None:
    """The colour key of `_rate_colors`, beside (`location="right"`) or above ("top") `ax`.

    Args:
        fig: The figure.
        ax: The axes the key belongs to.
        location: "right" or "top".
        label: The key's label.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm

    options = (
        {"fraction": 0.05, "pad": 0.02}
        if location == "right"
        else {
            "location": "top",
            "shrink": 0.45,
            "aspect": 45,
            "pad": 0.005,
            "anchor": (0.0, 0.0),
            "panchor": (0.0, 1.0),
        }
    )
    bar = fig.colorbar(
        ScalarMappable(norm=LogNorm(vmin=RATE_FLOOR, vmax=1.0), cmap=colormaps["viridis"]), ax=ax, **options
    )
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _status_array(site: SiteReport) -> np.ndarray:
    """Each unit's verdict as a string array (non-finite wins over dead over saturated over dying, as in the report)."""
    status = np.full(site.units, "healthy", dtype=object)
    for name in ("dying", "saturated", "dead", "non_finite"):
        members = np.asarray(getattr(site, name), dtype=int)
        status[members] = name
    return status


def _dead_mask(site: SiteReport) -> np.ndarray:
    """A boolean mask of the site's dead units."""
    mask = np.zeros(site.units, dtype=bool)
    mask[site.dead] = True
    return mask


# -- the whole model ------------------------------------------------------------------------


def unit_map_figure(report: Report, *, columns: int = 240) -> Figure:
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
    fig = new_figure(10.0, layout.height)
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
    if len(sites) > 1:
        row_points = (layout.height - 1.7) * 72.0 / len(sites)
        ax.hlines(np.arange(len(sites) - 1) + 0.5, 0.0, 1.0, color="white", lw=min(2.0, 0.15 * row_points))
    row_ticks(ax, site_labels(sites), layout, colors=[COLORS["dead"] if s.flagged else "black" for s in sites])
    ax.xaxis.set_major_formatter("{x:.0%}")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("units of each site, sorted by active rate (share of the site's units)", fontsize=8)
    _rate_colorbar(fig, ax, location="top")
    draw_header(fig, "unit map: every unit's active rate, one row per site (model order)", summary_title(report)[0])
    return fig


def histogram_figure(report: Report, *, bins: int = 25) -> Figure:
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
    fig = new_figure(8.0, 4.2)
    ax = fig.add_subplot()
    edges = np.geomspace(RATE_FLOOR, 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(rates[~dead], RATE_FLOOR, 1.0), bins=edges)
    centers = np.sqrt(edges[:-1] * edges[1:])
    colors = [COLORS["dying"] if c < dying else COLORS["healthy"] for c in centers]
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=colors, edgecolor="white", linewidth=0.5)
    zero_at = RATE_FLOOR / 10**1.2
    zero_width = RATE_FLOOR / 10**0.7 - zero_at
    if dead.any():
        ax.bar([zero_at], [dead.sum()], width=zero_width, align="edge", color=COLORS["dead"])
        ax.annotate(
            f"{dead.sum():,} dead",
            (zero_at + zero_width / 2, dead.sum()),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    ax.axvline(dying, color="black", lw=0.8, ls="--")
    ax.annotate(
        f"dying < {dying:g}",
        (dying, 1.0),
        xycoords=("data", "axes fraction"),
        xytext=(3, -12),
        textcoords="offset points",
        fontsize=8,
    )
    ax.set_xscale("log")
    ax.set_xlim(zero_at / 2, 1.3)
    ticks = [zero_at + zero_width / 2] + [10.0**k for k in range(int(math.log10(RATE_FLOOR)), 1)]
    ax.set_xticks(ticks, ["0\n(dead)"] + [f"$10^{{{k}}}$" for k in range(int(math.log10(RATE_FLOOR)), 1)], fontsize=8)
    ax.xaxis.set_minor_locator(no_ticks())
    top = max(int(counts.max()) if counts.size else 0, int(dead.sum()), 1)
    if top > 50:
        ax.set_yscale("log")
        ax.set_ylim(0.7, top * 2.5)
    else:
        ax.set_ylim(0, top * 1.15 + 1)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("active rate (share of sample × position pairs where the unit fires; log bins)", fontsize=8)
    ax.set_ylabel("units", fontsize=8)
    draw_header(fig, f"active rates of all {rates.size:,} units", summary_title(report)[0])
    return fig


# -- one site -------------------------------------------------------------------------------


def site_figure(site: SiteReport, settings: dict | None = None, *, index: int | None = None) -> Figure:
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
    fig = new_figure(11.0, 5.6 if gradients else 4.4)
    grid = fig.add_gridspec(
        2 if gradients else 1, 2, width_ratios=[1.6, 1.0], height_ratios=[2.0, 1.0] if gradients else None
    )
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
    number = f"#{index} " if index is not None else ""
    first = f"{number}{shorten(site.path, 90)}  ({site.layer}, {site.kind})"
    second = (
        f"{site.units:,} units{positions}: {len(site.dead):,} dead ({site.dead_fraction:.1%}), "
        f"{len(site.dying):,} dying, {len(site.saturated):,} saturated" + ("  — FLAGGED" if site.flagged else "")
    )
    draw_header(fig, first, second)
    return fig


def _sorted_rates_panel(ax: Axes, site: SiteReport, order: np.ndarray, dying: float) -> None:
    """Bars of the units' active rates, lowest first, coloured by status; dead units as a red band.

    Args:
        ax: The panel.
        site: The site.
        order: Unit indices sorted by active rate.
        dying: The dying threshold (a dashed line).
    """
    rates = site.active_rate[order]
    status = _status_array(site)[order]
    x = np.arange(site.units)
    floor = RATE_FLOOR
    dead = int((status == "dead").sum())
    if dead:  # sorted first; no height on a log scale, so a red band, a red floor bar and a count
        ax.axvspan(-0.5, dead - 0.5, color=COLORS["dead"], alpha=0.3, linewidth=0)
        draw_bars(ax, x[:dead], floor, floor * 3.0, COLORS["dead"], thickness=1.0, horizontal=False).set_label(
            f"dead ({dead:,}): never fire"
        )
        ax.text(
            (dead - 1) / 2,
            10**-3.5,
            f"{dead:,} dead\nunit{'s' if dead > 1 else ''}",
            ha="center",
            va="center",
            fontsize=9,
            color=COLORS["dead"],
            fontweight="bold",
            clip_on=True,
        )
    for name in STATUSES[1:]:
        mask = status == name
        if mask.any():
            draw_bars(
                ax, x[mask], floor, np.clip(rates[mask], floor, 1.0), COLORS[name], thickness=1.0, horizontal=False
            ).set_label(f"{LABELS.get(name, name)} ({mask.sum():,})")
    ax.axhline(dying, color="black", lw=0.8, ls="--", label=f"dying threshold {dying:g}")
    ax.set_yscale("log")
    ax.set_ylim(floor, 1.5)
    ax.set_xlim(-0.5, max(site.units, 1) - 0.5)
    ax.set_ylabel("active rate (log)", fontsize=8)
    ax.set_xlabel("units, sorted by active rate", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.set_title("units sorted by active rate", fontsize=9, loc="left")
    ax.legend(
        loc="lower left",
        bbox_to_anchor=(0.0, 1.08),
        ncol=5,
        fontsize=7,
        frameon=False,
        borderaxespad=0,
        handlelength=1.2,
        columnspacing=1.0,
    )


def _sorted_gradient_panel(ax: Axes, site: SiteReport, order: np.ndarray) -> None:
    """Each unit's mean |∂ℓ/∂z| in the same order as the rates above; zero gradient as red marks.

    Args:
        ax: The panel (sharing x with the rates panel).
        site: The site (with `grad_mean_abs`).
        order: Unit indices sorted by active rate.
    """
    grads = site.grad_mean_abs[order]
    x = np.arange(site.units)
    floor = log_axis(ax, "y", grads)
    positive = grads > 0
    ax.scatter(x[positive], np.maximum(grads[positive], floor), s=6, color=DARK, linewidths=0)
    if (~positive).any():
        ax.scatter(x[~positive], np.full((~positive).sum(), floor), s=10, marker="|", color=COLORS["dead"])
    ax.set_ylabel("mean |∂ℓ/∂z|", fontsize=8)
    ax.set_xlabel("units, sorted by active rate (red |: zero gradient)", fontsize=8)
    ax.tick_params(labelsize=8)


def _index_map_panel(fig: Figure, ax: Axes, site: SiteReport) -> None:
    """The units in index order as a grid (row-major), coloured by active rate, dead units red.

    Args:
        fig: The figure (for the colour key).
        ax: The panel.
        site: The site.
    """
    units = max(site.units, 1)
    cols = max(1, math.ceil(math.sqrt(units * 1.6)))
    rows = math.ceil(units / cols)
    image = np.ones((rows * cols, 4))
    image[: site.units] = _rate_colors(site.active_rate, _dead_mask(site))
    ax.imshow(image.reshape(rows, cols, 4), interpolation="nearest", aspect="auto")
    if site.units <= 256:
        dead = set(site.dead)
        size = 7 if cols <= 10 else (6 if cols <= 16 else 4.5)
        for unit in range(site.units):
            if site.units <= 64 or unit in dead:
                ax.text(
                    unit % cols,
                    unit // cols,
                    str(unit),
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="white" if unit in dead or site.active_rate[unit] < 0.05 else "black",
                )
    ax.set_xticks([])
    ax.set_yticks(range(rows), [str(r * cols) for r in range(rows)] if rows <= 40 else [""] * rows, fontsize=6)
    ax.tick_params(axis="y", length=0)
    ax.set_title(f"units by index (row-major, {cols} per row; row label = first index)", fontsize=9, loc="left")
    _rate_colorbar(fig, ax)


# -- every figure into a folder -------------------------------------------------------------


def site_file_name(index: int, path: str) -> str:
    """A safe, unique file name for a site's figure, e.g. `site-003-decoder_conv2d_3.png`.

    The model-order index keeps names unique even when two paths sanitize alike.

    Args:
        index: The site's model-order index.
        path: The site's path.

    Returns:
        The file name (no folder).
    """
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", path).strip("._-")[:80] or "site"
    return f"site-{index:03d}-{slug}.png"


def plot_site_dir(report: Report, folder: str) -> list[str]:
    """Writes every figure of a report into `folder`.

    Files: `overview.png`, `unit_map.png`, `active_rates.png` (the histogram) and one
    `site-NNN-<path>.png` per site (`site_file_name`).

    Args:
        report: The scan report.
        folder: The output folder (created if its parent exists).

    Returns:
        The paths written, overview first, then the sites in model order.

    Raises:
        UsageError: `folder` is a file, or its parent folder does not exist
            (`deadrelu.io.files.check_output_folder`).
    """
    from deadrelu.io.files import check_output_folder

    folder = check_output_folder(folder, create=True)
    written = [
        save_figure(overview_figure(report), os.path.join(folder, "overview.png")),
        save_figure(unit_map_figure(report), os.path.join(folder, "unit_map.png")),
        save_figure(histogram_figure(report), os.path.join(folder, "active_rates.png")),
    ]
    for index, site in enumerate(report.sites):
        written.append(
            save_figure(
                site_figure(site, report.settings, index=index), os.path.join(folder, site_file_name(index, site.path))
            )
        )
    return written

"""Report → pictures: the overview, the unit map, per-site figures, the rate histogram, the diff, training curves.

Figures are plain `matplotlib.figure.Figure` objects rendered by the Agg canvas: no pyplot, so no
global figure registry, no backend switch in the caller's session and no display needed.
matplotlib is imported inside the functions, so importing this package stays cheap.

Modules:
    _layout: The kit every figure shares: colours, row sizing (`row_layout`), titles and
        legends, bars, log axes, `save_figure` and `figure_png`.
    overview: `overview_figure`, `plot_overview`.
    units: `unit_map_figure`, `histogram_figure`, `site_figure`, `plot_site_dir`, `site_file_name`.
    diff: `diff_figure`, `plot_diff`.
    curves: `timeline_figure`, `plot_timeline` (the training monitor), `plot_curves` (retraining).

Example:
    >>> from deadrelu.views.plots import plot_overview, plot_site_dir
    >>> plot_overview(report, "overview.png")
    >>> plot_site_dir(report, "figures")
"""

from __future__ import annotations

from deadrelu.views.plots.curves import plot_curves, plot_timeline, timeline_figure
from deadrelu.views.plots.diff import diff_figure, plot_diff
from deadrelu.views.plots.layout import (
    COLORS,
    DPI,
    MAX_HEIGHT,
    RATE_FLOOR,
    STATUSES,
    RowLayout,
    figure_png,
    row_layout,
    save_figure,
)
from deadrelu.views.plots.overview import overview_figure, plot_overview
from deadrelu.views.plots.units import histogram_figure, plot_site_dir, site_figure, site_file_name, unit_map_figure

__all__ = [
    "COLORS",
    "DPI",
    "MAX_HEIGHT",
    "RATE_FLOOR",
    "STATUSES",
    "RowLayout",
    "diff_figure",
    "figure_png",
    "histogram_figure",
    "overview_figure",
    "plot_curves",
    "plot_diff",
    "plot_overview",
    "plot_site_dir",
    "plot_timeline",
    "row_layout",
    "save_figure",
    "site_figure",
    "site_file_name",
    "timeline_figure",
    "unit_map_figure",
]

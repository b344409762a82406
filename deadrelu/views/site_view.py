"""One site in a notebook: what `report.site(...)` shows (`SiteReport._repr_html_`).

A summary line (red when the site is flagged or 100% dead), the per-unit numbers as one table —
every unit in index order, dead ones in red, in a box that scrolls past a few dozen rows — and the
site's unit figure (`deadrelu.views.plots.site_figure`) when matplotlib can draw it. The pieces are
the notebook's (`deadrelu.views.notebook`): inline styles, no script, every text escaped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import deadrelu.views.table as table_model
from deadrelu.views.report_tables import kind_label, percent
from deadrelu.views.table import GREEN, ORANGE, RED, to_html

if TYPE_CHECKING:  # pragma: no cover
    from deadrelu.report import SiteReport

MAX_UNITS = 1024
"""Most units the table lists (the rest are counted below it; the site's arrays have them all)."""

_STATUS_STYLE: dict[str, table_model.Style] = {"dead": "bad", "non_finite": "bad", "dying": "warn", "saturated": "warn"}


def site_summary(site: SiteReport) -> tuple[str, str]:
    """One line on the site — its layer and kind, dead / dying / saturated units, the flag — and its colour."""
    text = (
        f"{site.path} ({site.layer}, {kind_label(site)}): {len(site.dead):,} of {site.units:,} units dead "
        f"({percent(site.dead_fraction)}), {len(site.dying):,} dying, {len(site.saturated):,} saturated"
    )
    if site.non_finite:
        text += f", {len(site.non_finite):,} non-finite (NaN/inf)"
    if not site.reached:
        text += "; not reached by the data"
    elif site.units and len(site.dead) == site.units:
        text += "; collapsed: its output is 0 for every input"
    elif site.flagged:
        text += "; flagged"
    bad = site.flagged or bool(site.non_finite) or (site.units > 0 and len(site.dead) == site.units)
    return text, RED if bad else (ORANGE if site.dead else GREEN)


def unit_table(site: SiteReport, *, rows: int | None = MAX_UNITS) -> table_model.Table:
    """The per-unit numbers of a site, one row per unit in index order: its verdict, how often it fired,
    its output's size, and what the scan measured besides (pre-activation margin, gradient, time at the
    cap, cause).

    Args:
        site: The `SiteReport`.
        rows: Most units to list (None: all); the others are counted in the caption.

    Returns:
        A `deadrelu.views.table.Table` titled with the site's path.
    """
    Column = table_model.Column
    optional = [
        ("margin", "max z − threshold (≤ 0: never crosses)", site.margin, "{:.3g}"),
        ("mean |∂z|", "mean |∂ℓ/∂z|", site.grad_mean_abs, "{:.2e}"),
        ("at cap", "share of pairs at the cap", site.saturated_rate, "{:.1%}"),
    ]
    optional = [entry for entry in optional if entry[2] is not None]
    columns = [
        Column("unit", numeric=True),
        Column("status", nowrap=True),
        Column("fires", numeric=True, long_title="(sample, position) pairs it fired on"),
        Column("active rate", numeric=True, long_title="share of pairs it fired on"),
        Column("samples", numeric=True, long_title="share of samples it fired in at least once"),
        Column("mean |out|", numeric=True),
        Column("dormancy", numeric=True, long_title="mean |out| / the site's average (ReDo)"),
        Column("max out", numeric=True),
        *[Column(title, numeric=True, long_title=long) for title, long, _, _ in optional],
    ]
    causes = dict(zip(site.dead, site.dead_causes)) if site.dead_causes is not None else None
    columns += [Column("cause")] if causes is not None else []
    table = table_model.Table(f"units of {site.path}", columns)
    shown = range(site.units if rows is None else min(rows, site.units))
    for unit in shown:
        status = site.status(unit)
        cells = [
            str(unit),
            table_model.Cell(status.replace("_", "-"), _STATUS_STYLE.get(status, "good")),
            f"{int(site.fires[unit]):,}",
            f"{site.active_rate[unit]:.2%}",
            f"{site.sample_active_rate[unit]:.1%}",
            f"{site.mean_abs[unit]:.3g}",
            f"{site.dormancy[unit]:.3g}",
            f"{site.max_output[unit]:.3g}",
            *[fmt.format(float(values[unit])) for _, _, values, fmt in optional],
        ]
        cells += [causes.get(unit, "")] if causes is not None else []
        table.add_row(*cells, style="bad" if status in ("dead", "non_finite") else "")
    if len(shown) < site.units:
        table.caption = f"{site.units - len(shown):,} more units (site.active_rate and the other arrays have them all)"
    return table


def site_html(site: SiteReport, *, rows: int | None = MAX_UNITS, figure: bool = True) -> str:
    """The site as an HTML fragment: the summary line, the per-unit table (scrolling), the unit figure.

    Args:
        site: The `SiteReport` (e.g. `report.site("hidden_1")`).
        rows: Most units to list (None: all).
        figure: Add the site's unit figure (when matplotlib is installed).

    Returns:
        The HTML text.
    """
    import deadrelu.views.notebook as notebook

    text, color = site_summary(site)
    parts = [notebook._line(text, color)]
    if site.units:
        box = "max-height:26em;overflow:auto;display:inline-block;max-width:100%;margin:0 0 .4em"
        parts.append(f'<div style="{box}">{to_html(unit_table(site, rows=rows), inline=True)}</div>')
    if figure and site.units:
        parts.append(notebook._figure(lambda: _site_png(site), f"units of {site.path}"))
    return notebook._block(parts)


def _site_png(site: SiteReport) -> bytes:
    from deadrelu.views.plots import site_figure
    from deadrelu.views.plots.layout import figure_png

    return figure_png(site_figure(site), dpi=80)

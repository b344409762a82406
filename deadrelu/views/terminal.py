"""Report → terminal: the summary lines, the report's tables as rich tables, and markdown.

The tables are built once in `views.report_tables` (and here for `inspect` and `--retrain`) and
drawn by `views.table`; this module only picks them, sets their captions and renders them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text

import deadrelu.views.report_tables as tables
import deadrelu.views.why as why
from deadrelu.views.report_tables import percent
from deadrelu.views.table import RICH_STYLES, Cell, Column, Table, to_markdown, to_rich
from deadrelu.views.table import shorten as shorten

if TYPE_CHECKING:  # pragma: no cover - annotations only: the report's display methods import this module
    import rich.table
    from rich.console import Group

    from deadrelu.compare import ReportDiff
    from deadrelu.fixes.retrain import Comparison
    from deadrelu.report import Report

# `shorten` (owned by `views.table`) is imported from here by the plots and the commands.


def summary_text(report: Report) -> Text:
    """One line: how many sites and units, how many dead / dying / saturated / non-finite, what is
    flagged, and whether (and where) the model has diverged; with causes (`scan(..., why=True)`),
    the dominant cause and its recommendation."""
    from deadrelu.engine.non_finite import divergence_text

    s = report.summary
    name = report.model.get("name") or report.model.get("path") or "model"
    diverged = divergence_text(s)
    if not s["sites"]:
        if diverged:
            return Text(f"{name}: no ReLU site found; {diverged}", style="bold red")
        return Text(f"{name}: no ReLU site found — nothing here can die this way.", style="green")
    style = "bold red" if s["flagged_sites"] else ("yellow" if s["dead"] else "green")
    text = Text(f"{name}: ")
    text.append(f"{s['dead']:,} of {s['units']:,} units dead ({percent(s['dead_fraction'])})", style=style)
    text.append(f", {s['dying']:,} dying, {s['saturated']:,} saturated")
    if s["non_finite"]:
        text.append(f", {s['non_finite']:,} non-finite", style="bold red")
    text.append(f" across {s['sites']} sites")
    if s["flagged_sites"]:
        text.append(
            f"; {s['flagged_sites']} flagged (≥ {percent(report.settings.get('flag_threshold', 0.1))} dead)",
            style="bold red",
        )
    if diverged:
        text.append(f"; {diverged}", style="bold red")
    text.append(f" — measured on {report.data.get('samples', '?'):,} samples")
    if report.data.get("synthetic"):
        text.append(" (SYNTHETIC)", style="bold yellow")
    clause, clause_style = why.summary_clause(report)
    if clause:
        text.append(clause, style=RICH_STYLES.get(clause_style, ""))
    return text


def collapse_line(report: Report) -> str | None:
    """The headline of a collapsed model — one or more sites 100% dead — or None.

    Said before anything else in every view: such a site's output is 0 for every input, so what
    reads only it is constant and no gradient reaches the layers before it through it; that decides
    what a fix can do (revive then retrain, or patch so gradient flows), more than any count.
    """
    paths = report.collapsed
    if not paths:
        return None
    samples = report.data.get("samples")
    on = f" on {samples:,} samples" if isinstance(samples, int) else ""
    named = ", ".join(repr(p) for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    which = f"site {named} is" if len(paths) == 1 else f"{len(paths)} sites are"
    listed = "" if len(paths) == 1 else f" ({named})"
    return (
        f"collapsed: {which} 100% dead{listed}{on}: the output is 0 for every input, so whatever reads only "
        "it is constant and no gradient reaches the layers before it through it; training alone will not "
        "bring it back — revive re-initialises the units (outputs unchanged, then retrain), patch --to leaky "
        "lets gradient through"
    )


def finding_texts(report: Report) -> list[Text]:
    """The collapse headline (if any), then one coloured line per model-level finding of the cause
    analysis (none without it)."""
    headline = collapse_line(report)
    texts = [Text(headline, style="bold red")] if headline else []
    return texts + [Text(line, style=RICH_STYLES.get(style, "")) for line, style in why.finding_lines(report)]


def summary_block(report: Report) -> Group:
    """What follows the tables in a terminal: the collapse headline and one line per model-level
    finding, then the summary line."""
    from rich.console import Group

    return Group(*finding_texts(report), summary_text(report))


def site_table(report: Report, *, sort: str = "model", limit: int | None = None) -> rich.table.Table:
    """The main table for the terminal: one row per site, flagged sites in red.

    Args:
        report: The scan report.
        sort: "model" (model order) or "dead" (worst first).
        limit: Show at most this many rows (the rest are counted in the caption).

    Returns:
        A `rich.table.Table`.
    """
    table = tables.site_table(report, sort=sort, limit=limit)
    if len(table.rows) < len(report.sites):
        table.caption = f"{len(report.sites) - len(table.rows)} more sites not shown (--top)"
    return to_rich(table)


def layer_gradient_table(report: Report) -> rich.table.Table | None:
    """Per layer with weights: gradient norm, weight norm and their ratio (with gradients only)."""
    table = tables.layer_gradient_table(report)
    return None if table is None else to_rich(table)


def markdown_table(report: Report) -> str:
    """The site table as GitHub markdown, with the summary line above it; with causes, the
    findings table below it."""
    headline = collapse_line(report)
    text = (f"**{headline}**\n\n" if headline else "") + summary_text(report).plain
    text += "\n\n" + to_markdown(tables.site_table(report))
    found = why.findings_table(report)
    return text if found is None else text + "\n" + to_markdown(found)


def diff_summary(diff: ReportDiff) -> str:
    """One line: dead before → after, newly dead, recovered, unmatched sites."""
    s = diff.summary
    text = (
        f"{diff.new.get('name') or diff.new.get('model') or 'new'} vs "
        f"{diff.old.get('name') or diff.old.get('model') or 'old'}: dead {s['dead_before']:,} → {s['dead_after']:,} "
        f"over {s['matched_sites']} matched sites; {s['newly_dead']:,} newly dead, {s['recovered']:,} recovered"
    )
    if s["only_new"] or s["only_old"]:
        text += f"; {s['only_new']} site(s) only in the new report, {s['only_old']} only in the old"
    return text


def diff_table(diff: ReportDiff, *, limit: int | None = None) -> rich.table.Table:
    """The diff for the terminal: one row per matched site, then the unmatched sites.

    Args:
        diff: The `ReportDiff`.
        limit: Show at most this many matched sites, the most changed ones, kept in model order.

    Returns:
        A `rich.table.Table`.
    """
    return to_rich(tables.diff_table(diff, limit=limit))


def diff_markdown(diff: ReportDiff) -> str:
    """The diff as GitHub markdown: the summary line, then one row per site."""
    return diff_summary(diff) + "\n\n" + diff.verdict + "\n\n" + to_markdown(tables.diff_table(diff))


def inspect_table(site_map, repairs: list[str] | None = None) -> rich.table.Table:
    """The sites of a model and the activations that cannot die, without data.

    Args:
        site_map: The `SiteMap` of `find_sites`.
        repairs: What loading repaired, said in the caption.

    Returns:
        A `rich.table.Table`.
    """
    table = Table(
        "ReLU sites",
        [Column("#"), Column("path", code=True), Column("layer"), Column("kind"), Column("params"), Column("counted")],
    )
    for number, site in enumerate(site_map.sites):
        params = ", ".join(f"{k}={v}" for k, v in site.params.items())
        table.add_row(str(number), site.path, site.layer_class, site.kind, params, Cell("yes", "good"))
    for other in site_map.others:
        table.add_row(
            "–",
            other.path,
            other.layer_class,
            "other",
            f"activation={other.activation}",
            Cell(f"no: {other.reason}", "muted"),
        )
    if repairs:
        table.caption = "repairs applied while loading: " + "; ".join(repairs)
    return to_rich(table)


def comparison_table(comparison: Comparison) -> rich.table.Table:
    """Before → after per retrained variant: dead and dying units, validation loss and metrics.

    Args:
        comparison: The `Comparison` of `retrain`.

    Returns:
        A `rich.table.Table`; the best variant of each metric in bold green (with several variants).
    """
    metrics = list(comparison.variants[0].after) if comparison.variants else []
    columns = [Column("variant"), Column("dead units", numeric=True), Column("dying", numeric=True)]
    table = Table(
        f"retrained {comparison.settings.get('epochs')} epochs, same data and seed",
        columns + [Column(f"val {metric}", numeric=True) for metric in metrics],
    )
    best = {m: _best(comparison, m) for m in metrics if m != "penalty"}  # a penalty is no score
    if "penalty" in metrics:
        table.caption = (
            "val loss: the data loss; val penalty: the weights' regularisation penalty "
            "(Keras reports their sum as its loss)"
        )
    for v in comparison.variants:
        if v.units:
            cells = [Cell(v.name), Cell(f"{v.dead_before} → {v.dead_after}")]
            cells.append(Cell(f"{v.dying_before} → {v.dying_after}"))
        else:
            cells = [Cell(v.name), Cell("no ReLU left", "muted"), Cell("–", "muted")]
        for metric in metrics:
            text = f"{v.before.get(metric, float('nan')):.4f} → {v.after[metric]:.4f}"
            winner = len(comparison.variants) > 1 and v.name == best.get(metric)
            cells.append(Cell(text, "best" if winner else ""))
        table.add_row(*cells)
    return to_rich(table)


def _best(comparison: Comparison, metric: str) -> str:
    lower_is_better = "loss" in metric or "error" in metric
    pick = min if lower_is_better else max
    return pick(comparison.variants, key=lambda v: v.after[metric]).name

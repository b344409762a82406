"""Results in notebooks and rich consoles: what `_repr_html_` and `__rich__` show.

Covers the scan `Report`, the `PatchResult`, the `ReviveResult`, the `PruneResult` and the
monitor's `Timeline`. Each view is compact: a summary line, then a table of at most `MAX_ROWS`
rows (for a report, the worst sites first, flagged ones in red), then notes; a report and a
timeline also show their figure inline when matplotlib can draw it. `deadrelu report --html`
writes the full page.

The HTML is a fragment with inline styles and no script, so Jupyter, VS Code, Colab and static
notebook viewers all show it the same way. Every text taken from a result is escaped.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text

import deadrelu.views.prune_tables as prune_tables
import deadrelu.views.report_tables as report_tables
import deadrelu.views.table as table_model
import deadrelu.views.why as why
from deadrelu.views.table import CELL_CSS, GREEN, GREY, MONO_CSS, ORANGE, RED, to_html, to_rich

if TYPE_CHECKING:  # pragma: no cover
    from deadrelu.fixes.patch import PatchResult
    from deadrelu.fixes.prune import PruneResult
    from deadrelu.fixes.revive import ReviveResult
    from deadrelu.report import Report
    from deadrelu.timeline import Check

MAX_ROWS = 20
"""Most table rows a notebook or console view shows (the rest are counted below the table)."""

_FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;font-size:13px;line-height:1.4"
_MONO, _CELL = MONO_CSS, CELL_CSS


# -- the scan report -----------------------------------------------------------------------


def report_html(report: Report, *, rows: int = MAX_ROWS, figure: bool = True) -> str:
    """The report as an HTML fragment: summary line, worst sites first, flags in red, overview figure;
    with causes (`scan(..., why=True)`), the findings and a "why" section (causes per site, recommendations).

    Args:
        report: The scan report.
        rows: Most sites to list; the rest are counted.
        figure: Add the overview figure (when matplotlib is installed and there are sites).

    Returns:
        The HTML text.
    """
    from deadrelu.views.terminal import collapse_line, summary_text

    s = report.summary
    headline = collapse_line(report)
    parts = [_line(headline, RED)] if headline else []
    parts.append(_line(summary_text(report).plain, RED if s["diverged"] else _severity(s["flagged_sites"], s["dead"])))
    if report.data.get("synthetic"):
        parts.append(_line("Measured on synthetic inputs: not a real verdict; scan again with real data.", RED))
    if report.sites:
        parts.append(to_html(report_sites(report, rows=rows), inline=True))
    parts += [
        f'<p style="margin:0 0 .3em;color:{_COLORS.get(style, "inherit")}">{_e(line)}</p>'
        for line, style in why.finding_lines(report)
    ]
    parts.append(_why_section(report, rows))
    parts.append(_notes(report.notes))
    if figure and report.sites:
        parts.append(_figure(lambda: _overview_png(report), "overview: unit status per site"))
    return _block(parts)


def report_renderable(report: Report, *, rows: int = MAX_ROWS) -> Group:
    """The report for a rich console: the site table (worst first), the findings of the cause analysis
    and the summary line."""
    from deadrelu.views.terminal import finding_texts, summary_text

    parts: list = [to_rich(report_sites(report, rows=rows))] if report.sites else []
    parts += finding_texts(report)  # the collapse headline first
    parts.append(summary_text(report))
    parts += [Text(f"note: {note}", style="yellow") for note in report.notes]
    return Group(*parts)


def report_sites(report: Report, *, rows: int = MAX_ROWS) -> table_model.Table:
    """The site table both views show: the worst `rows` sites first, the others counted in the caption."""
    table = report_tables.site_table(report, sort="dead", limit=rows)
    more = len(report.sites) - len(table.rows)
    if more > 0:
        table.caption = f"{more:,} more sites with a smaller dead share (report.sites has them all)"
    return table


_COLORS = {"bad": RED, "warn": ORANGE, "good": GREEN, "muted": GREY}


def _why_section(report: Report, rows: int) -> str:
    """The cause analysis (its findings are lines above): causes per site with evidence, recommendations, training."""
    content = why.why_html(report, inline=True, rows=rows, with_findings=False)
    title = '<p style="margin:.6em 0 0;font-size:1.05em;font-weight:600">Why they died</p>'
    return f'<div style="margin:.3em 0 .5em">{title}{content}</div>' if content else ""


def _overview_png(report: Report) -> bytes:
    from deadrelu.views.plots.overview import overview_figure

    return _png(overview_figure(report), dpi=90)


# -- patch and revive ----------------------------------------------------------------------


def patch_summary(result: PatchResult) -> tuple[str, str]:
    """One line on what `patch_model` did, and its colour (red when the slope-0 check failed)."""
    name = getattr(result.model, "name", "model")
    rewritten = len(result.rewrites)
    text = (
        f"{name}: {rewritten} site{_s(rewritten)} rewritten to {_target(result)}, {len(result.kept)} kept, "
        f"{len(result.skipped)} skipped"
    )
    failed = result.check is not None and not result.check.passed
    return text, RED if failed else (ORANGE if result.skipped else GREEN)


def patch_table(result: PatchResult, *, rows: int | None = MAX_ROWS) -> table_model.Table:
    """The rewritten sites as one table for every view: kind, layer, units and dead (with a report), was → now.

    Args:
        result: The `PatchResult`.
        rows: Most rewrites to list (None: all); the others are counted in the caption.

    Returns:
        A `deadrelu.views.table.Table`, one row per rewritten site (model order), titled with the target.
    """
    with_report = any(r.units is not None for r in result.rewrites)
    columns = [
        table_model.Column("site path", code=True, fit=48),
        table_model.Column("kind"),
        table_model.Column("layer"),
    ]
    if with_report:
        columns += [table_model.Column("units", numeric=True), table_model.Column("dead", numeric=True)]
    columns += [table_model.Column("was", code=True), table_model.Column("now", code=True)]
    rewritten = len(result.rewrites)
    table = table_model.Table(f"{rewritten} site{_s(rewritten)} rewritten to {_target(result)}", columns)
    for rewrite in result.rewrites if rows is None else result.rewrites[:rows]:
        cells = [rewrite.path, rewrite.kind, rewrite.layer]
        if with_report:
            cells += [_count(rewrite.units), table_model.Cell(_count(rewrite.dead), "bad" if rewrite.dead else "")]
        table.add_row(*cells, rewrite.old, rewrite.new)
    if rows is not None and rewritten > rows:
        table.caption = f"{rewritten - rows:,} more rewritten sites (result.rewrites)"
    return table


def patch_skipped_table(result: PatchResult) -> table_model.Table:
    """The selected sites that could not be rewritten, each with the reason."""
    table = table_model.Table(
        "skipped sites", [table_model.Column("site path", code=True, fit=48), table_model.Column("why", style="warn")]
    )
    for path, reason in result.skipped.items():
        table.add_row(path, reason)
    return table


def patch_lines(result: PatchResult) -> list[tuple[str, str]]:
    """The lines beside the tables, each with its colour: the sites kept as they were, the slope-0 check."""
    lines = []
    if result.kept:
        shown = ", ".join(result.kept[:8]) + (", ..." if len(result.kept) > 8 else "")
        lines.append((f"kept as they were: {len(result.kept)} site{_s(len(result.kept))} ({shown})", GREY))
    if result.check is not None:
        lines.append((f"slope-0 check: {result.check.describe()}", GREEN if result.check.passed else RED))
    return lines


def patch_html(result: PatchResult, *, rows: int = MAX_ROWS) -> str:
    """The `PatchResult` as an HTML fragment: summary line, rewritten sites, kept and skipped sites, check, notes."""
    text, color = patch_summary(result)
    parts = [_line(text, color)]
    for table in (patch_table(result, rows=rows), patch_skipped_table(result)):
        if table.rows:
            parts.append(to_html(table, inline=True))
    parts += [_line(line, line_color) for line, line_color in patch_lines(result)]
    parts.append(_notes(result.notes))
    return _block(parts)


def patch_renderable(result: PatchResult, *, rows: int | None = MAX_ROWS, notes: bool = True) -> Group:
    """The `PatchResult` for a rich console: the rewritten sites, kept and skipped sites, summary, check, notes.

    Args:
        result: The `PatchResult`.
        rows: Most rewrites to list (None: all, as the command line shows them).
        notes: Show the notes too (the command line says them on stderr instead).
    """
    text, color = patch_summary(result)
    parts: list = [to_rich(t) for t in (patch_table(result, rows=rows), patch_skipped_table(result)) if t.rows]
    styles = {GREEN: "green", RED: "bold red", ORANGE: "yellow", GREY: ""}
    lines = [Text(line, style=styles.get(line_color, "")) for line, line_color in patch_lines(result)]
    parts += [Text(text, style=color), *lines]
    return Group(*parts, *(_rich_notes(result.notes) if notes else []))


def revive_summary(result: ReviveResult) -> tuple[str, str]:
    """One line on what `revive_model` did, and its colour (red when the output check failed)."""
    name = getattr(result.model, "name", None) or "model"
    sites = sum(1 for units in result.revived.values() if units)
    which = "dead" if result.dormant is None else f"dormant (≤ {result.dormant:g})"
    text = (
        f"{name}: {result.units_revived:,} {which} unit{_s(result.units_revived)} revived (ReDo) in {sites} "
        f"site{_s(sites)}, {len(result.skipped)} site{_s(len(result.skipped))} skipped"
    )
    failed = result.check is not None and not result.check.passed and result.check.enforced
    return text, RED if failed else (ORANGE if result.skipped else GREEN)


def revive_table(
    result: ReviveResult, *, rows: int | None = MAX_ROWS, after: Report | None = None
) -> table_model.Table:
    """The sites with dead units (with `dormant`: dormant units) as one table for every view: units,
    dead before (and dormant), revived, why not.

    Args:
        result: The `ReviveResult`.
        rows: Most sites to list (None: all); the others are counted in the caption.
        after: A scan of the revived model: adds a "dead after" column. Defaults to None.

    Returns:
        A `deadrelu.views.table.Table`, one row per site of the report with dead units (model order),
        or per revived and skipped site when the result has no report.
    """
    from deadrelu.compare import compress_indices
    from deadrelu.fixes.revive_plan import revived_units

    report, dormant = result.report, result.dormant
    if report is not None:
        chosen = [(site, revived_units(site, dormant)) for site in report.sites]
        sites = [(site.path, site.units, len(site.dead), len(units)) for site, units in chosen if units]
    else:
        sites = [(path, None, None, None) for path in dict.fromkeys([*result.revived, *result.skipped])]
    dead_after = {site.path: len(site.dead) for site in after.sites} if after is not None else None
    columns = [
        table_model.Column("site path", code=True, fit=48),
        table_model.Column("units", numeric=True),
        table_model.Column("dead before", numeric=True),
        *(
            []
            if dormant is None
            else [table_model.Column("dormant", numeric=True, long_title=f"dormant (≤ {dormant:g})")]
        ),
        table_model.Column("revived", numeric=True),
    ]
    columns += [table_model.Column("dead after", numeric=True)] if dead_after is not None else []
    shown_sites = sites if rows is None else sites[:rows]
    reasons = {
        path: result.skipped.get(path) or ("" if result.revived.get(path) else "not selected")
        for path, *_ in shown_sites
    }
    columns += [table_model.Column("revived units")]
    columns += [table_model.Column("skipped: why", style="warn")] if any(reasons.values()) else []
    table = table_model.Table("revived units (ReDo)", columns)
    for path, units, dead, selected in shown_sites:
        revived = result.revived.get(path, [])
        cells = [path, _count(units), table_model.Cell(_count(dead), "bad" if dead else "")]
        cells += [table_model.Cell(_count(selected), "warn" if selected else "")] if dormant is not None else []
        cells.append(table_model.Cell(f"{len(revived):,}", "good" if revived else "muted"))
        if dead_after is not None:
            now = dead_after.get(path)
            cells.append(table_model.Cell(_count(now), "warn" if now else "good"))
        shown = compress_indices(revived)
        cells.append(table_model.Cell(shown, full=compress_indices(revived, limit=10**9)))
        if any(reasons.values()):
            cells.append(table_model.Cell(reasons[path], "muted" if reasons[path] == "not selected" else ""))
        table.add_row(*cells)
    if rows is not None and len(sites) > rows:
        more = "dead" if dormant is None else "dormant"
        table.caption = f"{len(sites) - rows:,} more sites with {more} units (result.report.sites)"
    return table


def revive_lines(result: ReviveResult, *, after: Report | None = None) -> list[tuple[str, str]]:
    """The lines under the table, each with its colour: the output check, and the dead units before → after."""
    lines = []
    if result.check is not None:
        check = result.check
        lines.append((check.describe(), GREEN if check.passed else (RED if check.enforced else ORANGE)))
    if result.report is not None:
        s = result.report.summary
        line = f"dead units: {s['dead']:,} of {s['units']:,} ({s['dead_fraction']:.1%})"
        if after is not None:
            a = after.summary
            line += f" → {a['dead']:,} ({a['dead_fraction']:.1%})"
        lines.append((f"{line}; {result.units_revived:,} revived", GREY))
    return lines


def revive_html(result: ReviveResult, *, rows: int = MAX_ROWS, after: Report | None = None) -> str:
    """The `ReviveResult` as an HTML fragment: summary line, the sites with dead units, the check, notes."""
    text, color = revive_summary(result)
    parts = [_line(text, color)]
    table = revive_table(result, rows=rows, after=after)
    if table.rows:
        parts.append(to_html(table, inline=True))
    parts += [_line(line, line_color) for line, line_color in revive_lines(result, after=after)]
    parts.append(_notes(result.notes))
    return _block(parts)


def revive_renderable(
    result: ReviveResult, *, rows: int | None = MAX_ROWS, after: Report | None = None, notes: bool = True
) -> Group:
    """The `ReviveResult` for a rich console: the sites with dead units, summary, check, dead before → after.

    Args:
        result: The `ReviveResult`.
        rows: Most sites to list (None: all, as the command line shows them).
        after: A scan of the revived model (the command line's rescan): adds "dead after".
        notes: Show the notes too (the command line says them on stderr instead).
    """
    text, color = revive_summary(result)
    table = revive_table(result, rows=rows, after=after)
    parts: list = [to_rich(table)] if table.rows else []
    parts.append(Text(text, style=color))
    styles = {GREEN: "green", RED: "bold red"}
    parts += [Text(line, style=styles.get(color, "")) for line, color in revive_lines(result, after=after)]
    return Group(*parts, *(_rich_notes(result.notes) if notes else []))


def prune_summary(result: PruneResult) -> tuple[str, str]:
    """One line on what `prune_model` did, and its colour (red when the output check failed for dead units)."""
    name = getattr(result.model, "name", None) or "model"
    sites = sum(1 for units in result.removed.values() if units)
    before, after = result.params_before, result.params_after
    share = f" (−{1 - after / before:.1%})" if before else ""
    text = (
        f"{name}: {result.units_removed:,} unit{_s(result.units_removed)} removed at {sites} site{_s(sites)}, "
        f"params {before:,} → {after:,}{share}"
    )
    if result.skipped:
        text += f", {len(result.skipped)} site{_s(len(result.skipped))} kept units"
    failed = result.dormant is None and not result.passed
    return text, RED if failed else (ORANGE if result.skipped or result.model is None else GREEN)


def prune_html(result: PruneResult, *, rows: int = MAX_ROWS, after: Report | None = None, cost=None) -> str:
    """The `PruneResult` as an HTML fragment: summary line, the pruned sites, the layers changed, the
    metrics, the checks and what it saves, notes."""
    text, color = prune_summary(result)
    parts = [_line(text, color)]
    for table in _prune_tables(result, rows=rows, after=after):
        parts += [_muted(table.title), to_html(table, inline=True)]
        if table.title.startswith("pruned units"):  # its notes' references, said once
            parts += [_muted(line) for line in prune_tables.reason_legend(result)]
    parts += [
        _line(line, line_color or "inherit")
        for line, line_color in prune_tables.prune_lines(result, after=after, cost=cost)
    ]
    parts.append(_notes(result.notes))
    return _block(parts)


def prune_renderable(
    result: PruneResult,
    *,
    rows: int | None = MAX_ROWS,
    after: Report | None = None,
    cost=None,
    notes: bool = True,
) -> Group:
    """The `PruneResult` for a rich console: the pruned sites, the layers changed, the metrics, the checks.

    Args:
        result: The `PruneResult`.
        rows: Most sites and layers to list (None: all, as the command line shows them).
        after: A scan of the pruned model (the command line's rescan): adds "units after" and "dead after".
        cost: A `deadrelu.fixes.model_utils.CostComparison` of both models: adds file size and `predict` time.
        notes: Show the notes too (the command line says them on stderr instead).
    """
    parts: list = []
    for table in _prune_tables(result, rows=rows, after=after):
        parts.append(to_rich(table))
        if table.title.startswith("pruned units"):  # its notes' references, said once
            parts += [Text(line, style="dim") for line in prune_tables.reason_legend(result)]
    styles = {GREEN: "green", RED: "bold red", ORANGE: "yellow", GREY: "dim"}
    parts += [
        Text(line, style=styles.get(line_color, ""))
        for line, line_color in prune_tables.prune_lines(result, after=after, cost=cost)
    ]
    return Group(*parts, *(_rich_notes(result.notes) if notes else []))


def _prune_tables(result: PruneResult, *, rows: int | None, after: Report | None) -> list[table_model.Table]:
    tables = [prune_tables.prune_table(result, rows=rows, after=after)]
    if result.layers:
        tables.append(prune_tables.prune_layers_table(result, rows=rows))
    metrics = prune_tables.prune_metrics_table(result)
    tables += [metrics] if metrics is not None else []
    return [table for table in tables if table.rows]


# -- the monitor's timeline ----------------------------------------------------------------


def _units(units: dict[str, list[int]]) -> int:
    # timeline.count's twin: the views do not import the timeline at run time (it imports them).
    return sum(len(indices) for indices in units.values())


def timeline_summary(checks: Sequence[Check]) -> str:
    """One line: how many checks, the dead share at the first and the last, the actions taken, and
    how many revived units were alive at the next check."""
    if not checks:
        return "no checks yet: the monitor checks during fit"
    first, last = checks[0], checks[-1]
    text = (
        f"{len(checks)} check{_s(len(checks))} (epochs {first.epoch}–{last.epoch}): dead "
        f"{first.dead_fraction:.1%} → {last.dead_fraction:.1%}, dying {last.dying_fraction:.1%} at the last"
    )
    actions = [c.action for c in checks if c.action]
    if actions:
        text += "; " + ", ".join(f"{actions.count(a)} × {a}" for a in dict.fromkeys(actions))
    followed = [(_units(before.revived), _units(after.revived_alive)) for before, after in itertools.pairwise(checks)]
    revived = sum(n for n, _ in followed if n)
    if revived:
        alive = sum(a for n, a in followed if n)
        text += f"; {alive:,} of {revived:,} revived units alive at the next check ({alive / revived:.0%})"
    diverged = next((c for c in checks if c.diverged), None)
    if diverged is not None:
        text += (
            f"; DIVERGED (NaN/inf) from epoch {diverged.epoch}, {last.non_finite_fraction:.1%} non-finite at the last"
        )
    return text


def timeline_table(checks: Sequence[Check], *, rows: int = MAX_ROWS) -> table_model.Table:
    """The latest `rows` checks, one row each, the earlier ones counted in the caption; checks after
    which the monitor acted, or at which the model had diverged, in red. Units that came back by
    themselves are "recovered"; with revivals, "revived alive" counts the units revived at the
    previous check that are alive at this one, and the action says how many units were revived."""
    numeric = [table_model.Column(title, numeric=True) for title in ("epoch", "step", "dead %", "dying %")]
    numeric += [table_model.Column(title, numeric=True) for title in ("newly dead", "recovered")]
    revivals = any(c.revived for c in checks)
    if revivals:
        numeric.append(table_model.Column("revived alive", numeric=True))
    table = table_model.Table("deadrelu checks", [*numeric, table_model.Column("action")])
    checks = list(checks)
    for i in range(max(len(checks) - rows, 0), len(checks)):
        c = checks[i]
        newly = _units(c.newly_dead)
        recovered = _units(c.recovered)
        cells = [
            str(c.epoch),
            f"{c.step:,}",
            f"{c.dead_fraction:.1%}",
            f"{c.dying_fraction:.1%}",
            f"+{newly:,}" if c.persistence is not None or newly else "–",
            f"{recovered:,}" if c.persistence is not None or recovered else "–",
        ]
        if revivals:
            revived = _units(checks[i - 1].revived) if i and c.revived_alive_fraction is not None else 0
            alive = _units(c.revived_alive)
            cells.append(f"{alive:,}/{revived:,} ({alive / revived:.0%})" if revived else "–")
        action = f"{c.action} {_units(c.revived):,}" if c.revived else c.action
        cells.append(" ".join(part for part in (action, "diverged" if c.diverged else None) if part))
        table.add_row(*cells, style="bad" if c.action or c.diverged else "")
    if len(checks) > rows:
        table.caption = f"{len(checks) - rows:,} earlier checks not shown (monitor.timeline has them)"
    return table


def timeline_html(
    checks: Sequence[Check], *, rows: int = MAX_ROWS, figure: bool = True, title: str = "dead units during training"
) -> str:
    """The monitor's timeline as an HTML fragment: summary line, the latest checks, the figure."""
    parts = [_line(timeline_summary(checks), _trend(checks))]
    if checks:
        parts.append(to_html(timeline_table(checks, rows=rows), inline=True))
    if figure and checks:
        parts.append(_figure(lambda: _timeline_png(checks, title), "dead share per site over the checks"))
    return _block(parts)


def timeline_renderable(checks: Sequence[Check], *, rows: int = MAX_ROWS) -> Group:
    """The monitor's timeline for a rich console."""
    table = [to_rich(timeline_table(checks, rows=rows))] if checks else []
    return Group(*table, Text(timeline_summary(checks), style=_trend(checks)))


def _trend(checks: Sequence[Check]) -> str:
    if not checks:
        return GREY
    if checks[-1].diverged:
        return RED
    last = checks[-1].dead_fraction
    return RED if last > checks[0].dead_fraction else (ORANGE if last else GREEN)


def _timeline_png(checks: Sequence[Check], title: str) -> bytes:
    from deadrelu.views.plots.curves import timeline_figure

    return _png(timeline_figure(list(checks), title=title), dpi=80)


# -- HTML pieces ---------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _path(path: str) -> str:
    """A site path, escaped, free to break after each "/"."""
    return "/<wbr>".join(_e(part) for part in str(path).split("/"))


def _block(parts: Iterable[str]) -> str:
    return f'<div class="deadrelu" style="{_FONT}">' + "".join(p for p in parts if p) + "</div>"


def _line(text: str, color: str) -> str:
    return f'<p style="margin:0 0 .5em;color:{color};font-weight:600">{_e(text)}</p>'


def _muted(text: str) -> str:
    return f'<p style="margin:.2em 0 .5em;color:{GREY}">{_e(text)}</p>'


def _table(header: Sequence[tuple[str, bool]], rows: Sequence[str]) -> str:
    head = "".join(
        f'<th style="{_CELL};text-align:{"right" if right else "left"};background:#f4f5f7">{_e(label)}</th>'
        for label, right in header
    )
    return (
        f'<table style="border-collapse:collapse;margin:0 0 .5em;font-size:12.5px">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _row(cells: Sequence[tuple[str, bool, str]]) -> str:
    """A `<tr>` of (already escaped html, right-aligned, extra style) cells."""
    body = "".join(
        f'<td style="{_CELL};text-align:{"right" if right else "left"};{style}">{content}</td>'
        for content, right, style in cells
    )
    return f"<tr>{body}</tr>"


def _reasons(title: str, reasons: dict[str, str], rows: int) -> str:
    if not reasons:
        return ""
    body = [
        _row([(_path(path), False, _MONO), (_e(reason), False, f"color:{ORANGE}")])
        for path, reason in list(reasons.items())[:rows]
    ]
    more = _muted(f"{len(reasons) - rows:,} more") if len(reasons) > rows else ""
    return _table([(f"{title} site", False), ("why", False)], body) + more


def _notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{_e(note)}</li>" for note in notes)
    summary = f'<summary style="cursor:pointer;color:{ORANGE}">{len(notes)} note{_s(len(notes))}</summary>'
    return f'<details style="margin:0 0 .5em">{summary}<ul style="margin:.2em 0;color:#7d5b00">{items}</ul></details>'


def _figure(draw, alt: str) -> str:
    """An inline `<img>` of the PNG `draw()` returns; empty when matplotlib is not installed."""
    try:
        png = draw()
    except ImportError:
        return ""
    from deadrelu.views.html import png_data_uri

    return f'<img src="{png_data_uri(png)}" alt="{_e(alt)}" style="max-width:100%;height:auto;margin-top:.3em">'


def _png(fig, *, dpi: int = 72) -> bytes:
    from deadrelu.views.plots.layout import figure_png

    return figure_png(fig, dpi=dpi)


# -- rich pieces ---------------------------------------------------------------------------


def _rich_table(title: str, columns: Sequence[str], *, right: tuple[int, ...] = ()) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for i, name in enumerate(columns):
        table.add_column(name, justify="right" if i in right else "left", overflow="fold")
    return table


def _rich_reasons(title: str, reasons: dict[str, str]) -> list:
    if not reasons:
        return []
    table = _rich_table(f"{title} sites", ["site path", "why"])
    for path, reason in reasons.items():
        table.add_row(path, Text(reason, style="yellow"))
    return [table]


def _rich_notes(notes: Sequence[str]) -> list[Text]:
    return [Text(f"note: {note}", style="yellow") for note in notes]


# -- words ---------------------------------------------------------------------------------


def _severity(flagged: int, dead: int) -> str:
    return RED if flagged else (ORANGE if dead else GREEN)


def _target(result: PatchResult) -> str:
    settings = result.settings or {}
    if result.to == "leaky":
        return f"LeakyReLU({settings.get('alpha', 0.01):g})"
    if result.to == "prelu":
        return f"PReLU(init {settings.get('alpha_init', 0.25):g})"
    return str(result.to)


def _count(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _s(count: int) -> str:
    return "" if count == 1 else "s"

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
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # pragma: no cover
    from deadrelu.patcher import PatchResult
    from deadrelu.pruner import PruneResult
    from deadrelu.report import Report, SiteReport
    from deadrelu.reviver import ReviveResult
    from deadrelu.timeline import Check

MAX_ROWS = 20
"""Most table rows a notebook or console view shows (the rest are counted below the table)."""

RED, ORANGE, GREEN, GREY = "#c0392b", "#b9770e", "#1e8449", "#6c757d"
_FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;font-size:13px;line-height:1.4"
_MONO = "font-family:'DejaVu Sans Mono',Menlo,Consolas,monospace;font-size:12px"
_CELL = "padding:2px 8px;border-bottom:1px solid #e3e3e3;vertical-align:top"


# -- the scan report -----------------------------------------------------------------------


def report_html(report: Report, *, rows: int = MAX_ROWS, figure: bool = True) -> str:
    """The report as an HTML fragment: summary line, worst sites first, flags in red, overview figure.

    Args:
        report: The scan report.
        rows: Most sites to list; the rest are counted.
        figure: Add the overview figure (when matplotlib is installed and there are sites).

    Returns:
        The HTML text.
    """
    from deadrelu.render import order_sites, summary_text

    s = report.summary
    parts = [_line(summary_text(report).plain, RED if s["diverged"] else _severity(s["flagged_sites"], s["dead"]))]
    if report.data.get("synthetic"):
        parts.append(_line("Measured on synthetic inputs: not a real verdict; scan again with real data.", RED))
    ordered = order_sites(report, "dead")
    if ordered:
        header = _site_header(report, s["diverged"])
        parts.append(_table(header, [_site_row(i, site, report, s["diverged"]) for i, site in ordered[:rows]]))
    if len(ordered) > rows:
        parts.append(
            _muted(
                f"{len(ordered) - rows:,} more sites with a smaller dead share: report.sites has them "
                "all; deadrelu report --html writes every site and figure."
            )
        )
    parts.append(_notes(report.notes))
    if figure and report.sites:
        parts.append(_figure(lambda: _overview_png(report), "overview: unit status per site"))
    return _block(parts)


def report_renderable(report: Report, *, rows: int = MAX_ROWS) -> Group:
    """The report for a rich console: the site table (worst first) and the summary line."""
    from deadrelu.render import site_table, summary_text

    parts: list = []
    if report.sites:
        table = site_table(report, sort="dead", limit=rows)
        if len(report.sites) > rows:
            table.caption = f"{len(report.sites) - rows:,} more sites with a smaller dead share (report.sites)"
        parts.append(table)
    parts.append(summary_text(report))
    parts += [Text(f"note: {note}", style="yellow") for note in report.notes]
    return Group(*parts)


def _site_header(report: Report, diverged: bool) -> list[tuple[str, bool]]:
    header = [
        ("#", True),
        ("site path", False),
        ("layer", False),
        ("kind", False),
        ("units", True),
        ("dead", True),
        ("dying", True),
        ("sat.", True),
        ("dead %", True),
    ]
    if diverged:
        header.append(("NaN/inf", True))
    if report.has_gradients:
        header += [("mean |∂z|", True), ("zero ∂ %", True)]
    return [*header, ("flag", False)]


def _site_row(index: int, site: SiteReport, report: Report, diverged: bool) -> str:
    from deadrelu.render import _gradient_cells, _kind_label

    dead = f"color:{RED if site.flagged else ORANGE if site.dead else GREEN}"
    cells = [
        (str(index), True, f"color:{GREY}"),
        (_path(site.path), False, f"{_MONO};color:{RED};font-weight:600" if site.flagged else _MONO),
        (_e(site.layer), False, ""),
        (_e(_kind_label(site)), False, ""),
        (f"{site.units:,}", True, ""),
        (f"{len(site.dead):,}", True, dead),
        (f"{len(site.dying):,}", True, ""),
        (f"{len(site.saturated):,}", True, ""),
        (f"{site.dead_fraction:.1%}", True, dead),
    ]
    if diverged:
        cells.append((f"{len(site.non_finite):,}", True, f"color:{RED};font-weight:600" if site.non_finite else ""))
    if report.has_gradients:
        cells += [(_e(cell.plain if isinstance(cell, Text) else cell), True, "") for cell in _gradient_cells(site)]
    if site.non_finite:
        cells.append(("✗ non-finite", False, f"color:{RED};font-weight:600"))
    elif site.flagged:
        cells.append(("✗ flagged", False, f"color:{RED};font-weight:600"))
    else:
        cells.append(("ok", False, f"color:{GREEN}") if site.reached else ("not reached", False, f"color:{GREY}"))
    return _row(cells)


def _overview_png(report: Report) -> bytes:
    from deadrelu.plots.overview import overview_figure

    return _png(overview_figure(report), dpi=90)


# -- patch and revive ----------------------------------------------------------------------


def patch_summary(result: PatchResult) -> tuple[str, str]:
    """One line on what `patch_model` did, and its colour (red when the self-check failed)."""
    name = getattr(result.model, "name", "model")
    rewritten = len(result.rewrites)
    text = (
        f"{name}: {rewritten} site{_s(rewritten)} rewritten to {_target(result)}, {len(result.kept)} kept, "
        f"{len(result.skipped)} skipped"
    )
    if result.check is not None:
        text += f"; {result.check.describe()}"
    failed = result.check is not None and not result.check.passed
    return text, RED if failed else (ORANGE if result.skipped else GREEN)


def patch_html(result: PatchResult, *, rows: int = MAX_ROWS) -> str:
    """The `PatchResult` as an HTML fragment: summary line, rewritten sites, skipped sites, notes."""
    text, color = patch_summary(result)
    parts = [_line(text, color)]
    with_report = any(r.units is not None for r in result.rewrites)
    header = [("site path", False), ("layer", False), ("was", False), ("now", False)]
    header += [("units", True), ("dead", True)] if with_report else []
    body = []
    for rewrite in result.rewrites[:rows]:
        cells = [
            (_path(rewrite.path), False, _MONO),
            (_e(rewrite.layer), False, ""),
            (_e(rewrite.old), False, _MONO),
            (_e(rewrite.new), False, _MONO),
        ]
        if with_report:
            cells += [(_count(rewrite.units), True, ""), (_count(rewrite.dead), True, "")]
        body.append(_row(cells))
    if body:
        parts.append(_table(header, body))
    if len(result.rewrites) > rows:
        parts.append(_muted(f"{len(result.rewrites) - rows:,} more rewritten sites (result.rewrites)"))
    parts.append(_reasons("skipped", result.skipped, rows))
    parts.append(_notes(result.notes))
    return _block(parts)


def patch_renderable(result: PatchResult, *, rows: int = MAX_ROWS) -> Group:
    """The `PatchResult` for a rich console."""
    text, color = patch_summary(result)
    table = _rich_table("patched sites", ["site path", "layer", "was", "now"])
    for rewrite in result.rewrites[:rows]:
        table.add_row(rewrite.path, rewrite.layer, rewrite.old, rewrite.new)
    if len(result.rewrites) > rows:
        table.caption = f"{len(result.rewrites) - rows:,} more rewritten sites (result.rewrites)"
    parts = [table] if result.rewrites else []
    return Group(*parts, *_rich_reasons("skipped", result.skipped), Text(text, style=color), *_rich_notes(result.notes))


def revive_summary(result: ReviveResult) -> tuple[str, str]:
    """One line on what `revive_model` / `revive_in_place` did, and its colour."""
    name = getattr(result.model, "name", None) or "model"
    sites = sum(1 for units in result.revived.values() if units)
    text = (
        f"{name}: {result.units_revived:,} dead unit{_s(result.units_revived)} revived (ReDo) in {sites} "
        f"site{_s(sites)}, {len(result.skipped)} site{_s(len(result.skipped))} skipped"
    )
    if result.check is not None:
        text += f"; {result.check.describe()}"
    return text, ORANGE if result.skipped else GREEN


def revive_html(result: ReviveResult, *, rows: int = MAX_ROWS) -> str:
    """The `ReviveResult` as an HTML fragment: summary line, revived units per site, skipped sites, notes."""
    from deadrelu.compare import compress_indices

    text, color = revive_summary(result)
    parts = [_line(text, color)]
    revived = [(path, units) for path, units in result.revived.items() if units]
    body = [
        _row([(_path(path), False, _MONO), (f"{len(units):,}", True, ""), (_e(compress_indices(units)), False, _MONO)])
        for path, units in revived[:rows]
    ]
    if body:
        parts.append(_table([("site path", False), ("revived", True), ("units", False)], body))
    if len(revived) > rows:
        parts.append(_muted(f"{len(revived) - rows:,} more sites (result.revived)"))
    parts.append(_reasons("skipped", result.skipped, rows))
    parts.append(_notes(result.notes))
    return _block(parts)


def revive_renderable(result: ReviveResult, *, rows: int = MAX_ROWS) -> Group:
    """The `ReviveResult` for a rich console."""
    from deadrelu.compare import compress_indices

    text, color = revive_summary(result)
    table = _rich_table("revived units", ["site path", "revived", "units"], right=(1,))
    revived = [(path, units) for path, units in result.revived.items() if units]
    for path, units in revived[:rows]:
        table.add_row(path, f"{len(units):,}", compress_indices(units))
    if len(revived) > rows:
        table.caption = f"{len(revived) - rows:,} more sites (result.revived)"
    parts = [table] if revived else []
    return Group(*parts, *_rich_reasons("skipped", result.skipped), Text(text, style=color), *_rich_notes(result.notes))


def prune_summary(result: PruneResult) -> tuple[str, str]:
    """One line on what `prune` did, and its colour (red when the outputs moved past the tolerance)."""
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
    if result.check is not None:
        text += f"; {result.check.describe()}"
    return text, RED if not result.passed else (ORANGE if result.skipped else GREEN)


def _prune_rows(result: PruneResult) -> list[tuple[str, list[int], list[int]]]:
    paths = list(dict.fromkeys([*result.removed, *result.kept]))
    return [
        (p, result.removed.get(p, []), result.kept.get(p, []))
        for p in paths
        if result.removed.get(p) or result.kept.get(p)
    ]


def _metric_rows(result: PruneResult) -> list[tuple[str, str]]:
    before, after = result.metrics_before or {}, result.metrics_after or {}
    return [(name, f"{before[name]:.4f} → {after[name]:.4f}") for name in before if name in after]


def prune_html(result: PruneResult, *, rows: int = MAX_ROWS) -> str:
    """The `PruneResult` as an HTML fragment: summary line, removed and kept units per site, metrics, notes."""
    from deadrelu.compare import compress_indices

    text, color = prune_summary(result)
    parts = [_line(text, color)]
    sites = _prune_rows(result)
    body = [
        _row(
            [
                (_path(path), False, _MONO),
                (f"{len(removed):,}", True, ""),
                (f"{len(kept):,}", True, ""),
                (_e(compress_indices(removed)), False, _MONO),
            ]
        )
        for path, removed, kept in sites[:rows]
    ]
    if body:
        parts.append(_table([("site path", False), ("removed", True), ("kept", True), ("units removed", False)], body))
    if len(sites) > rows:
        parts.append(_muted(f"{len(sites) - rows:,} more sites (result.removed)"))
    metrics = _metric_rows(result)
    if metrics:
        header = [(f"metric on {result.metrics_data or 'data'}", False), ("before → after", True)]
        parts.append(_table(header, [_row([(_e(n), False, ""), (_e(v), True, "")]) for n, v in metrics]))
    parts.append(_reasons("kept units at", result.skipped, rows))
    parts.append(_notes(result.notes))
    return _block(parts)


def prune_renderable(result: PruneResult, *, rows: int = MAX_ROWS) -> Group:
    """The `PruneResult` for a rich console."""
    from deadrelu.compare import compress_indices

    text, color = prune_summary(result)
    table = _rich_table("pruned units", ["site path", "removed", "kept", "units removed"], right=(1, 2))
    sites = _prune_rows(result)
    for path, removed, kept in sites[:rows]:
        table.add_row(path, f"{len(removed):,}", f"{len(kept):,}", compress_indices(removed))
    if len(sites) > rows:
        table.caption = f"{len(sites) - rows:,} more sites (result.removed)"
    parts: list = [table] if sites else []
    metrics = _metric_rows(result)
    if metrics:
        metric_table = _rich_table(
            f"metrics on {result.metrics_data or 'data'}", ["metric", "before → after"], right=(1,)
        )
        for name, value in metrics:
            metric_table.add_row(name, value)
        parts.append(metric_table)
    return Group(
        *parts, *_rich_reasons("kept units at", result.skipped), Text(text, style=color), *_rich_notes(result.notes)
    )


# -- the monitor's timeline ----------------------------------------------------------------


def timeline_summary(checks: Sequence[Check]) -> str:
    """One line: how many checks, the dead share at the first and the last, the actions taken."""
    if not checks:
        return "no checks yet: the monitor checks during fit"
    first, last = checks[0], checks[-1]
    text = (
        f"{len(checks)} check{_s(len(checks))} (epochs {first.epoch + 1}–{last.epoch + 1}): dead "
        f"{first.dead_fraction:.1%} → {last.dead_fraction:.1%}, dying {last.dying_fraction:.1%} at the last"
    )
    actions = [c.action for c in checks if c.action]
    if actions:
        text += "; " + ", ".join(f"{actions.count(a)} × {a}" for a in dict.fromkeys(actions))
    diverged = next((c for c in checks if c.diverged), None)
    if diverged is not None:
        text += (
            f"; DIVERGED (NaN/inf) from epoch {diverged.epoch + 1}, {last.non_finite_fraction:.1%} non-finite "
            "at the last"
        )
    return text


def _timeline_rows(checks: Sequence[Check]) -> list[list[str]]:
    rows = []
    for c in checks:
        newly = sum(map(len, c.newly_dead.values()))
        revived = sum(map(len, c.revived.values()))
        rows.append(
            [
                str(c.epoch + 1),
                f"{c.step:,}",
                f"{c.dead_fraction:.1%}",
                f"{c.dying_fraction:.1%}",
                f"+{newly:,}" if c.persistence is not None or newly else "–",
                f"{revived:,}" if c.persistence is not None or revived else "–",
                " ".join(part for part in (c.action, "diverged" if c.diverged else None) if part),
            ]
        )
    return rows


_TIMELINE_HEADER = [
    ("epoch", True),
    ("step", True),
    ("dead %", True),
    ("dying %", True),
    ("newly dead", True),
    ("revived", True),
    ("action", False),
]


def timeline_html(
    checks: Sequence[Check], *, rows: int = MAX_ROWS, figure: bool = True, title: str = "dead units during training"
) -> str:
    """The monitor's timeline as an HTML fragment: summary line, the latest checks, the figure."""
    parts = [_line(timeline_summary(checks), _trend(checks))]
    shown = list(checks)[-rows:]
    body = []
    for check, cells in zip(shown, _timeline_rows(shown)):
        style = f"color:{RED}" if check.action or check.diverged else ""
        body.append(_row([(_e(cell), right, style) for cell, (_, right) in zip(cells, _TIMELINE_HEADER)]))
    if body:
        parts.append(_table(_TIMELINE_HEADER, body))
    if len(checks) > rows:
        parts.append(_muted(f"{len(checks) - rows:,} earlier checks not shown (monitor.timeline has them)"))
    if figure and checks:
        parts.append(_figure(lambda: _timeline_png(checks, title), "dead share per site over the checks"))
    return _block(parts)


def timeline_renderable(checks: Sequence[Check], *, rows: int = MAX_ROWS) -> Group:
    """The monitor's timeline for a rich console."""
    table = _rich_table(
        "deadrelu checks",
        [label for label, _ in _TIMELINE_HEADER],
        right=tuple(i for i, (_, right) in enumerate(_TIMELINE_HEADER) if right),
    )
    shown = list(checks)[-rows:]
    for check, cells in zip(shown, _timeline_rows(shown)):
        table.add_row(*cells, style="red" if check.action or check.diverged else None)
    if len(checks) > rows:
        table.caption = f"{len(checks) - rows:,} earlier checks not shown"
    return Group(*([table] if checks else []), Text(timeline_summary(checks), style=_trend(checks)))


def _trend(checks: Sequence[Check]) -> str:
    if not checks:
        return GREY
    if checks[-1].diverged:
        return RED
    last = checks[-1].dead_fraction
    return RED if last > checks[0].dead_fraction else (ORANGE if last else GREEN)


def _timeline_png(checks: Sequence[Check], title: str) -> bytes:
    from deadrelu.plots.curves import timeline_figure

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
    from deadrelu.html import png_data_uri

    return f'<img src="{png_data_uri(png)}" alt="{_e(alt)}" style="max-width:100%;height:auto;margin-top:.3em">'


def _png(fig, *, dpi: int = 72) -> bytes:
    from deadrelu.plots._layout import figure_png

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

"""The views of a `FixResult`, built once: one row per candidate, the verdict line, a page.

The terminal (`fix_renderable`, which `deadrelu fix` prints), a notebook (`fix_html`) and the
`--html` page (`fix_page`) render the same table (`deadrelu.views.table`), so they cannot drift apart.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

from deadrelu.views.table import GREEN, GREY, ORANGE, Cell, Column, Table, to_html, to_rich

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from rich.console import Group

    from deadrelu.fixes.tournament import FixResult


def fix_table(result: FixResult) -> Table:
    """Every candidate as one row: validation loss and metrics before → after, dead after, params, time.

    Args:
        result: The `FixResult`.

    Returns:
        A `deadrelu.views.table.Table`; the best candidate's row in bold green, skipped ones muted
        with their reason.
    """
    trained = [c for c in result.candidates if c.trained]
    metrics = [key for key in (trained[0].after if trained else {}) if key not in ("loss", "data_loss")]
    regularised = any(
        c.after.get("data_loss") is not None and c.after["data_loss"] != c.after.get("loss") for c in trained
    )
    losses = ["loss", "data_loss"] if regularised else ["loss"]
    columns = [Column("candidate")]
    columns += [Column(f"val {key.replace('_', ' ')}", numeric=True) for key in losses + metrics]
    columns += [
        Column("dead after", numeric=True, long_title="dead fraction after training (probe data)"),
        Column("params", numeric=True),
        Column("seconds", numeric=True, long_title="wall time: build, checks, scans, training"),
    ]
    budget = result.settings.get("epochs")
    budget_text = f"{budget} epoch{'s' if budget != 1 else ''}" if budget else f"{result.settings.get('steps')} steps"
    table = Table(f"which fix works: {budget_text} each, same data, batches and seed", columns)
    for c in result.candidates:
        if not c.trained:
            cells = [Cell(c.name, "muted")] + [Cell("–", "muted")] * (len(columns) - 2)
            table.add_row(*cells, Cell(f"skipped: {c.skipped}", "muted"))
            continue
        cells = [Cell(f"{c.name} (best)" if c.name == result.best else c.name)]
        for key in losses + metrics:
            cells.append(Cell(f"{_number(c.before.get(key))} → {_number(c.after.get(key))}"))
        dead = "no ReLU" if c.dead_fraction_after is None else f"{c.dead_fraction_after:.1%}"
        cells += [Cell(dead), Cell(f"{c.params:,}"), Cell(f"{c.seconds:.1f}")]
        table.add_row(*cells, style="best" if c.name == result.best else "")
    table.caption = result.verdict
    return table


def fix_lines(result: FixResult) -> list[tuple[str, str]]:
    """The lines under the table, each with its colour: the verdict, how the candidates were chosen."""
    color = GREEN if result.best is not None and not result.interrupted else ORANGE
    lines = [(result.verdict, color)]
    metric = result.metric.replace("_", " ")
    lines.append((f"ranked by val {metric} ({'higher' if result.higher_is_better else 'lower'} is better)", GREY))
    lines.append((f"candidates: {result.settings.get('chosen')}", GREY))
    return lines


def fix_renderable(result: FixResult) -> Group:
    """The `FixResult` for a rich console: the table, the verdict, the notes."""
    from rich.console import Group
    from rich.text import Text

    table = fix_table(result)
    table.caption = ""
    styles = {GREEN: "bold green", ORANGE: "yellow", GREY: "dim"}
    lines = [Text(text, style=styles.get(color, "")) for text, color in fix_lines(result)]
    return Group(to_rich(table), *lines, *(Text(f"note: {n}", style="yellow") for n in result.notes))


def fix_html(result: FixResult) -> str:
    """The `FixResult` as an HTML fragment (a notebook's `_repr_html_`)."""
    table = fix_table(result)
    table.caption = ""
    parts = [to_html(table, inline=True)]
    parts += [f'<p style="margin:.2em 0;color:{color}">{html.escape(text)}</p>' for text, color in fix_lines(result)]
    parts += [f'<p style="margin:.2em 0;color:{ORANGE}">note: {html.escape(n)}</p>' for n in result.notes]
    return '<div class="deadrelu">' + "".join(parts) + "</div>"


def fix_page(result: FixResult, *, curves_png: bytes | None = None) -> str:
    """A standalone HTML page of the `FixResult` (`deadrelu fix --html`), with the curves when given."""
    figure = ""
    if curves_png is not None:
        from deadrelu.views.html import png_data_uri

        figure = f'<img src="{png_data_uri(curves_png)}" alt="training curves" style="max-width:100%">'
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>deadrelu fix</title></head>'
        '<body style="font-family:system-ui,sans-serif;font-size:14px;margin:1.5em">'
        f"<h2>Which fix works</h2>{fix_html(result)}{figure}</body></html>\n"
    )


def _number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–" if value is None else str(value)
    return f"{value:.4f}"

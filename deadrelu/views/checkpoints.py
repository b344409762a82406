"""A `CheckpointScan` shown: the monitor's timeline table with a column naming each file, and one page.

The table is `deadrelu.views.notebook.timeline_table` — the monitor's — with the checkpoint's file in
front; the figure is the monitor's timeline figure. The HTML page (`render_checkpoints_html`) holds
the summary line, the table, the figure, each architecture change, and every checkpoint's own site
table behind a `<details>`; like the report page it needs nothing but itself.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from deadrelu.views import table as table_model

if TYPE_CHECKING:  # pragma: no cover
    from deadrelu.checkpoints import CheckpointScan


def checkpoint_table(result: CheckpointScan) -> table_model.Table:
    """The monitor's timeline table of every checkpoint, with the file's name in the first column.

    Args:
        result: A `CheckpointScan`.

    Returns:
        A `deadrelu.views.table.Table`: file, epoch, step, dead %, dying %, newly dead, recovered,
        action (checks after an architecture change say "new architecture" there).
    """
    from deadrelu.views.notebook import timeline_table

    table = timeline_table(result.timeline, rows=max(len(result.timeline), 1))
    table.title = "deadrelu checkpoints"
    table.columns.insert(0, table_model.Column("checkpoint", code=True, fit=40))
    for row, checkpoint in zip(table.rows, result.checkpoints):
        row.cells.insert(0, table_model.Cell(os.path.basename(os.path.normpath(checkpoint.file))))
        if checkpoint.changes:
            action = row.cells[-1]
            text = " ".join(part for part in (action.text, "new architecture") if part)
            row.cells[-1] = table_model.Cell(text, "warn")
    return table


def summary_line(result: CheckpointScan) -> str:
    """One line: the files, the epochs, the dead share at the first and the last, the worst epoch."""
    from deadrelu.views.notebook import timeline_summary

    text = timeline_summary(result.timeline).replace("check", "checkpoint", 1)
    died = [(sum(map(len, c.newly_dead.values())), c) for c in result.timeline[1:]]
    if died and max(died, key=lambda pair: pair[0])[0] > 0:
        count, check = max(died, key=lambda pair: pair[0])
        text += f"; most units died by epoch {check.epoch} (+{count:,})"
    return text


def checkpoints_fragment(result: CheckpointScan) -> str:
    """An HTML fragment for a notebook: the summary line, the table and the timeline figure."""
    from deadrelu.views.html import png_data_uri
    from deadrelu.views.plots import figure_png
    from deadrelu.views.plots.curves import timeline_figure
    from deadrelu.views.table import escape_html as e

    parts = [f'<p style="margin:0 0 .5em;font-weight:600">{e(summary_line(result))}</p>']
    if result.checkpoints:
        parts.append(table_model.to_html(checkpoint_table(result), inline=True))
        png = figure_png(timeline_figure(list(result.timeline), title="dead units per checkpoint"), dpi=80)
        parts.append(f'<img src="{png_data_uri(png)}" alt="timeline" style="max-width:100%;height:auto">')
    return '<div class="deadrelu">' + "".join(parts) + "</div>"


def render_checkpoints_html(result: CheckpointScan) -> str:
    """The whole `CheckpointScan` as one self-contained HTML page.

    Args:
        result: A `CheckpointScan`.

    Returns:
        The HTML text: summary, timeline table and figure, architecture changes, notes, then one
        collapsed section per checkpoint (its summary and site table), then provenance.
    """
    from deadrelu.views.html import STYLE, png_data_uri
    from deadrelu.views.plots import figure_png
    from deadrelu.views.plots.curves import timeline_figure
    from deadrelu.views.report_tables import site_table
    from deadrelu.views.table import escape_html as e
    from deadrelu.views.terminal import summary_text

    first = result.checkpoints[0].report if result.checkpoints else None
    name = (first.model.get("name") if first else None) or "model"
    body = [
        f"<h1>deadrelu checkpoints: {e(name)}</h1>",
        f'<p class="muted">{len(result.checkpoints)} checkpoints · {e(first.data.get("source") if first else "")}'
        f" · {e(first.tool.get('name', 'deadrelu') if first else 'deadrelu')} "
        f"{e(first.tool.get('version', '') if first else '')}</p>",
        f'<p class="summary">{e(summary_line(result))}</p>',
    ]
    if result.notes:
        body.append('<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in result.notes) + "</ul>")
    if result.checkpoints:
        png = figure_png(timeline_figure(list(result.timeline), title=f"{name}: dead units per checkpoint"))
        body += [
            "<h2>Timeline</h2>",
            '<p class="muted">One row per checkpoint, in the order scanned; newly dead and recovered units '
            "(came back by themselves) against the previous checkpoint, as DeadReluMonitor records them.</p>",
            table_model.to_html(checkpoint_table(result)),
            f'<figure><img src="{png_data_uri(png)}" alt="timeline"><figcaption>Dead share per site (and '
            "the whole model, black) at each checkpoint.</figcaption></figure>",
            "<h2>Checkpoints</h2>",
        ]
    for checkpoint in result.checkpoints:
        report = checkpoint.report
        changed = (
            f'<p class="warn">Architecture changed: {e("; ".join(checkpoint.changes))}</p>'
            if checkpoint.changes
            else ""
        )
        body.append(
            f"<details><summary><code>{e(checkpoint.file)}</code> · epoch {checkpoint.epoch} · "
            f"{report.dead_fraction:.1%} dead</summary>{changed}<p>{e(summary_text(report).plain)}</p>"
            + table_model.to_html(site_table(report, detail=True))
            + "</details>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>deadrelu checkpoints: {e(name)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_checkpoints_html(result: CheckpointScan, path: str) -> None:
    """Writes `render_checkpoints_html(result)` to `path`, atomically (UTF-8)."""
    from deadrelu.io.files import atomic_output

    text = render_checkpoints_html(result)
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)

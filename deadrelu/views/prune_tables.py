"""The views of a `PruneResult`, built once: the pruned sites, the layers changed, the metrics, the lines.

The notebook and the terminal (`deadrelu.views.notebook.prune_html` / `prune_renderable`, which the
command line prints) render these same tables (`deadrelu.views.table`) and lines, so what
`deadrelu prune` shows and what a notebook shows cannot drift apart.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from deadrelu.views.table import GREEN, GREY, ORANGE, RED, Cell, Column, Table

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from deadrelu.fixes.model_utils import CostComparison
    from deadrelu.fixes.prune import PruneResult
    from deadrelu.report import Report


def prune_table(result: PruneResult, *, rows: int | None = None, after: Report | None = None) -> Table:
    """The sites with selected units as one table for every view: units, dead, removed, and notes: live
    units removed with their channel, selected units that stayed and why (`site_notes`; the reasons
    several sites share are said once, in `reason_legend`).

    Args:
        result: The `PruneResult`.
        rows: Most sites to list (None: all); the others are counted in the caption.
        after: A scan of the pruned model: adds "units after" and "dead after". Defaults to None.

    Returns:
        A `deadrelu.views.table.Table`, one row per site with selected or removed units (`result.site_rows()`).
    """
    from deadrelu.compare import compress_indices

    sites = result.site_rows()
    now = {site.path: site for site in after.sites} if after is not None else None
    dormant = result.dormant is not None
    columns = [
        Column("site path", code=True, fit=48),
        Column("units", numeric=True),
        Column("dead", numeric=True),
    ]
    columns += [Column("selected", numeric=True, long_title="dead and dormant")] if dormant else []
    columns += [Column("removed", numeric=True)]
    if now is not None:
        columns += [Column("units after", numeric=True), Column("dead after", numeric=True)]
    shown = sites if rows is None else sites[:rows]
    notes = site_notes(result)
    with_notes = any(notes.get(site["path"]) for site in shown)  # the column only where it says something
    columns += [Column("removed units")] + ([Column("notes", style="warn")] if with_notes else [])
    title = "pruned units" + (f" (dead, and dormant ≤ {result.dormant:g})" if dormant else "")
    table = Table(title, columns)
    for site in shown:
        removed = site["removed"]
        cells = [
            site["path"],
            _count(site["units"]),
            Cell(_count(site["dead"]), "bad" if site["dead"] else ""),
        ]
        cells += [f"{len(site['candidates']):,}"] if dormant else []
        cells.append(Cell(f"{len(removed):,}", "good" if removed else "muted"))
        if now is not None:
            scanned = now.get(site["path"])
            dead = None if scanned is None else len(scanned.dead)
            cells += [
                _count(None if scanned is None else scanned.units),
                Cell(_count(dead), "warn" if dead else "good"),
            ]
        cells.append(Cell(compress_indices(removed), full=compress_indices(removed, limit=10**9)))
        cells += [notes.get(site["path"], "")] if with_notes else []
        table.add_row(*cells)
    if rows is not None and len(sites) > rows:
        table.caption = f"{len(sites) - rows:,} more sites (result.site_rows())"
    return table


LIVE_REMOVED = (
    "live units removed with their channel: such a channel reads only one channel before it (each output "
    "channel of a DepthwiseConv reads only its own input channel; BatchNormalization and pooling keep channels "
    "apart), and that channel was removed, so here it holds a constant (the depthwise bias, through "
    "BatchNormalization and the ReLU): the channel goes as a whole, its constant folded into the bias of the "
    "layer that reads it next (the output check covers it)"
)
"""The legend of the units a site loses without being selected (`prune_plan.removed_per_site`)."""

_NAMED = re.compile(r"'[^']*'")


def site_notes(result: PruneResult) -> dict[str, str]:
    """Per site path, its "notes" cell: how many live units went with their channel, how many selected
    units stayed, and why — a reason that several sites share by a reference to `reason_legend`.

    Returns:
        `{path: text}`, for the sites with something to say.
    """
    refs = _shared_reasons(result)
    notes = {}
    for site in result.site_rows():
        parts = []
        live = len(set(site["removed"]) - set(site["candidates"]))
        if live:
            parts.append(f"{live:,} live removed [a]")
        reason = site["reason"]
        if reason:
            kept = f"{len(site['kept']):,} kept"
            ref = refs.get(_NAMED.sub("'…'", reason))
            if ref is None:
                parts.append(f"{kept}: {reason}")
            else:
                names = ", ".join(name.strip("'") for name in dict.fromkeys(_NAMED.findall(reason)))
                parts.append(f"{kept} [{ref}]" + (f" {names}" if names else ""))
        if parts:
            notes[site["path"]] = "; ".join(parts)
    return notes


def reason_legend(result: PruneResult) -> list[str]:
    """The notes' references, said once each under the pruned-units table: "[a]" (live units removed
    with their channel) when a site lost some, and "[1]", "[2]", ... for the reasons several sites share
    (with the layer names they differ in as "'…'")."""
    lines = []
    if any(set(site["removed"]) - set(site["candidates"]) for site in result.site_rows()):
        lines.append(f"[a] {LIVE_REMOVED}")
    lines += [
        f"[{ref}] {reason.replace(chr(39) + '…' + chr(39), '…')}" for reason, ref in _shared_reasons(result).items()
    ]
    return lines


def _shared_reasons(result: PruneResult) -> dict[str, int]:
    """The reasons (layer names replaced by "'…'") given for more than one site, numbered from 1 in order."""
    counts: dict[str, int] = {}
    for site in result.site_rows():
        if site["reason"]:
            key = _NAMED.sub("'…'", site["reason"])
            counts[key] = counts.get(key, 0) + 1
    shared = [reason for reason, count in counts.items() if count > 1]
    return {reason: i for i, reason in enumerate(shared, 1)}


def prune_layers_table(result: PruneResult, *, rows: int | None = None) -> Table:
    """Every layer that changed (`result.layers`): its units and inputs before → after, a folded bias."""
    changes = result.layers if rows is None else result.layers[:rows]
    folded = any(change.folded for change in changes)  # the column only where a bias took constants
    columns = [
        Column("layer", code=True, fit=40),
        Column("class"),
        Column("units", numeric=True),
        Column("inputs", numeric=True),
    ]
    columns += [Column("bias", long_title="constants of removed units folded into the bias")] if folded else []
    table = Table("layers changed", columns)
    arrow = lambda pair: "–" if pair is None else f"{pair[0]:,} → {pair[1]:,}"  # noqa: E731
    for change in changes:
        cells = [change.name, change.layer, arrow(change.units), arrow(change.inputs)]
        table.add_row(*cells, *(["folded" if change.folded else ""] if folded else []))
    if rows is not None and len(result.layers) > rows:
        table.caption = f"{len(result.layers) - rows:,} more layers (result.layers)"
    return table


def prune_metrics_table(result: PruneResult) -> Table | None:
    """The loss and compiled metrics of both models (with `dormant`, or labelled validation data), or None."""
    if result.metrics_before is None:
        return None
    table = Table(
        f"loss and metrics on the {result.metrics_data or 'data'}",
        [
            Column("metric"),
            Column("original", numeric=True),
            Column("pruned", numeric=True),
        ],
    )
    after = result.metrics_after or {}
    for name, value in result.metrics_before.items():
        table.add_row(name, f"{value:.4f}", f"{after.get(name, float('nan')):.4f}")
    return table


def prune_lines(
    result: PruneResult, *, after: Report | None = None, cost: CostComparison | None = None
) -> list[tuple[str, str]]:
    """The lines under the tables, each with its colour: the checks, the parameters (and with `cost`, the
    file size and `predict` time: a `deadrelu.fixes.model_utils.CostComparison`), the dead units before → after."""
    lines = []
    check, exact = result.check, result.dormant is None
    if result.model is None:
        if result.candidates:
            units = sum(len(units) for units in result.candidates.values())
            lines.append((f"nothing pruned: none of the {units:,} selected units can be removed exactly", ORANGE))
        else:
            what = f"no dead or dormant (≤ {result.dormant:g}) units" if not exact else "no dead units"
            lines.append((f"{what}: nothing to prune", GREY))
        return lines
    if check is not None and exact:
        lines.append((check.describe(), GREEN if check.passed else RED))
    elif check is not None:
        lines.append(
            (
                f"outputs changed (dormant units are replaced by their mean): max |Δ| = {check.max_abs_diff:.3g} "
                f"on {check.samples:,} samples (not enforced with dormant units)",
                ORANGE,
            )
        )
    held_out = result.validation_check
    if held_out is not None:
        text = f"on the validation data: max |Δ| = {held_out.max_abs_diff:.3g} on {held_out.samples:,} samples"
        if not held_out.passed and exact:
            text += " — units dead on the data fire on this data, and the pruned model differs there"
        lines.append((text, GREEN if held_out.passed else ORANGE))
    before, now = result.params_before, result.params_after
    line = f"parameters: {before:,} → {now:,} ({percent_change(before, now)})"
    if cost is not None and cost.file_bytes is not None:
        a, b = cost.file_bytes
        line += f"; file size (without optimizer state): {file_size(a)} → {file_size(b)} ({percent_change(a, b)})"
    lines.append((line, ""))
    if cost is not None:
        a, b = cost.predict_median
        lines.append(
            (
                f"predict on {cost.samples:,} samples: {1000 * a:.1f} ms → {1000 * b:.1f} ms "
                f"(×{cost.predict_ratio:.2f}, paired median of {len(cost.predict_seconds[0])} interleaved rounds)",
                "",
            )
        )
    if result.report is not None:
        s = result.report.summary
        line = f"dead units: {s['dead']:,} of {s['units']:,}"
        if after is not None:
            line += f" → {after.summary['dead']:,} of {after.summary['units']:,}"
        lines.append((f"{line}; {result.units_removed:,} units removed", GREY))
    return lines


def percent_change(before: float, after: float) -> str:
    """The change from `before` to `after` in percent, e.g. "-74.7%" ("–" when `before` is 0)."""
    return f"{100 * (after - before) / before:+.1f}%" if before else "–"


def file_size(count: float) -> str:
    """A byte count in B, KB, MB or GB, e.g. "48.6 KB"."""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


def _count(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"

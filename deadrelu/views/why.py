"""The views of the cause analysis (`deadrelu.scan(..., why=True)`, `deadrelu scan --why`): why units died.

Built once here, as words and `Table`s, for every view: the scan table's "cause" column
(`causes_cell`), the summary line's dominant cause and its recommendation (`summary_clause`), one
line per model-level finding (`finding_lines`), and the "why" section of the HTML page and the
notebook (`why_html`: the findings, the causes per site with their evidence, the recommendations
and the training configuration). A report without the analysis (`report.why is None`, no site
`causes`) shows none of it, so its views are those of a plain scan, unchanged.

The report's fields are those of docs/report-format.md: per site `dead_causes`, `causes` and
`cause_evidence`; per report `why` (`init_baseline`, `training`, `findings`, `recommendations`)
and `summary["causes"]`. They are read with `getattr(..., None)`, so reports written before the
analysis existed render too.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from deadrelu.views.table import GREY, Cell, Column, Style, Table, escape_html, to_html

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from deadrelu.report import Report, SiteReport

KINDS = ("starved", "output_relu", "born_dead", "killed_in_training", "data_dependent")
"""The causes of a dead unit, in the analysis's priority order (the first that matches wins)."""

LABELS = {
    "starved": "starved",
    "output_relu": "output ReLU",
    "born_dead": "born dead",
    "killed_in_training": "killed in training",
    "data_dependent": "data-dependent",
}
"""How each cause reads in a table or a sentence."""

STYLES: dict[str, Style] = {
    "starved": "muted",  # follows from another site: fix that one first
    "output_relu": "bad",
    "born_dead": "bad",
    "killed_in_training": "bad",
    "data_dependent": "warn",  # may fire on data the scan did not see
}
"""The colour of each cause: red for a cause to act on, yellow for "scan more data", dim for starved."""

FINDING_LABELS = {
    "non_finite": "non-finite",
    "non_finite_weights": "non-finite weights",
    "input_scale": "input scale",
    "output_relu": "output ReLU",
    "dead_site": "dead site",
}
"""How each model-level finding reads in a table."""

FINDING_STYLES: dict[str, Style] = {
    "non_finite": "bad",
    "non_finite_weights": "bad",
    "input_scale": "warn",
    "output_relu": "bad",
    "dead_site": "bad",
}
"""The colour of each model-level finding (an unknown kind is yellow)."""


# -- reading the report ---------------------------------------------------------------------


def why_of(report: Report) -> dict | None:
    """The report's cause analysis (`report.why`), or None for a scan without it."""
    why = getattr(report, "why", None)
    return why if isinstance(why, dict) else None


def has_causes(report: Report) -> bool:
    """Whether the report holds the cause analysis: its views then show the "cause" column and the why section."""
    return why_of(report) is not None or any(getattr(site, "causes", None) is not None for site in report.sites)


def label(kind: str) -> str:
    """A cause as it reads, e.g. "killed_in_training" → "killed in training"."""
    return LABELS.get(kind, kind.replace("_", " "))


def _rank(kind: str) -> int:
    return KINDS.index(kind) if kind in KINDS else len(KINDS)


def _ordered(counts: dict) -> dict[str, int]:
    """{kind: count} without zero counts, in the priority order (unknown kinds last, by name)."""
    kept = {str(kind): int(count) for kind, count in counts.items() if count}
    return dict(sorted(kept.items(), key=lambda item: (_rank(item[0]), item[0])))


def site_causes(site: SiteReport) -> dict[str, int]:
    """A site's dead units by cause, in the priority order: its `causes`, else counted from `dead_causes`."""
    causes = getattr(site, "causes", None)
    if causes is None:
        causes = Counter(getattr(site, "dead_causes", None) or [])
    return _ordered(causes)


def cause_counts(report: Report) -> dict[str, int]:
    """The model's dead units by cause: `summary["causes"]`, else the sum over the sites."""
    counts = report.summary.get("causes")
    if counts is None:
        counts = Counter()
        for site in report.sites:
            counts.update(site_causes(site))
    return _ordered(counts)


def dominant_cause(report: Report) -> tuple[str, int] | None:
    """The cause of the most dead units and their number (a tie goes to the earlier kind); None without causes."""
    counts = cause_counts(report)
    if not counts:
        return None
    kind = min(counts, key=lambda k: (-counts[k], _rank(k)))
    return kind, counts[kind]


def recommendation(report: Report, kind: str) -> dict | None:
    """The recommendation of one cause (`report.why["recommendations"]`), or None."""
    for entry in (why_of(report) or {}).get("recommendations") or []:
        if entry.get("cause") == kind:
            return entry
    return None


def findings(report: Report) -> list[dict]:
    """The model-level findings (`report.why["findings"]`), in the analysis's order."""
    return list((why_of(report) or {}).get("findings") or [])


# -- words ----------------------------------------------------------------------------------


def is_number(value: object) -> bool:
    """Whether a value is a real number (numpy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def number(value: object, digits: int = 3) -> str:
    """A number in `digits` significant digits ("–" for None or a non-number, "nan"/"inf" as such)."""
    if not is_number(value):
        return "–"
    return f"{float(value):.{digits}g}"


def causes_text(counts: dict[str, int]) -> str:
    """Dead units by cause, compact: "48 killed in training", "3 starved · 5 born dead"."""
    return " · ".join(f"{count:,} {label(kind)}" for kind, count in _ordered(counts).items())


def causes_cell(site: SiteReport) -> Cell:
    """The scan table's "cause" cell of a site, coloured by the cause of most of its dead units."""
    counts = site_causes(site)
    if not counts:
        return Cell("–", "muted")
    top = min(counts, key=lambda k: (-counts[k], _rank(k)))
    return Cell(causes_text(counts), STYLES.get(top, "warn"))


def summary_clause(report: Report) -> tuple[str, Style]:
    """The end of the summary line with causes: the dominant cause, its share and its recommendation.

    Returns:
        (text, style), e.g. ("; dominant cause: killed in training (96 of 104 dead) — revive …", "bad");
        ("", "") without causes.
    """
    top = dominant_cause(report)
    if top is None:
        return "", ""
    kind, count = top
    dead = sum(cause_counts(report).values())
    text = f"; dominant cause: {label(kind)} ({count:,} of {dead:,} dead)"
    action = (recommendation(report, kind) or {}).get("action")
    if action:
        text += f" — {action}"
    return text, STYLES.get(kind, "warn")


def finding_lines(report: Report) -> list[tuple[str, Style]]:
    """One line per model-level finding, with its colour: ("finding: <message>", style)."""
    return [
        (f"finding: {finding.get('message') or label(str(finding.get('kind', '')))}", _finding_style(finding))
        for finding in findings(report)
    ]


def _finding_style(finding: dict) -> Style:
    return FINDING_STYLES.get(str(finding.get("kind")), "warn")


def _units_margin(site: SiteReport, kind: str) -> list[float]:
    """The finite margins of the site's dead units of one cause."""
    margins = getattr(site, "margin", None)
    kinds = getattr(site, "dead_causes", None)
    if margins is None or kinds is None:
        return []
    values = []
    for unit, unit_kind in zip(site.dead, kinds):
        value = margins[unit] if 0 <= unit < len(margins) else None
        if unit_kind == kind and value is not None and math.isfinite(float(value)):
            values.append(float(value))
    return values


def span(values: Iterable[float]) -> str:
    """The range of some numbers, "-3.2 … -0.81" (one number when they are equal, "–" for none)."""
    values = list(values)
    if not values:
        return "–"
    low, high = min(values), max(values)
    return number(low) if low == high else f"{number(low)} … {number(high)}"


def evidence_text(kind: str, evidence: dict | None) -> str:
    """The evidence of one cause at one site, in words with its numbers (docs/report-format.md names them)."""
    ev = evidence or {}
    if kind == "starved":
        upstream = ev.get("upstream") or []
        where = ", ".join(
            f"{u.get('path')} ({u.get('dead', 0):,} of {u.get('units', 0):,} dead)" for u in upstream if u.get("path")
        )
        text = f"pre-activation constant at {number(ev.get('preact_value'))} over the data"
        return text + (f"; starved by {where}" if where else "; no upstream site with dead units")
    if kind == "output_relu":
        return f"the site's output is the model output {ev.get('output', '?')}"
    if kind == "born_dead":
        text = f"dead at initialisation: {_percent(ev.get('init_dead_fraction_mean'))} of units"
        low, high = ev.get("init_dead_fraction_min"), ev.get("init_dead_fraction_max")
        if low is not None and high is not None:
            text += f" (seeds: {_percent(low)}–{_percent(high)})"
        text += f", {_percent(ev.get('dead_fraction_now'))} now"
        seeds = ev.get("seeds")
        return text + (f"; seeds {', '.join(str(s) for s in seeds)}" if seeds else "")
    if kind == "killed_in_training":
        parts = [
            f"bias median {number(ev.get('dead_bias_median'))} dead vs {number(ev.get('live_bias_median'))} live",
            f"incoming weight norm median {number(ev.get('dead_weight_norm_median'))} dead vs "
            f"{number(ev.get('live_weight_norm_median'))} live",
        ]
        return "; ".join(parts)
    if kind == "data_dependent":
        return (
            f"margin {span(ev.get('margin_in_spread') or [])} × the pre-activation spread "
            f"({number(ev.get('spread'))}): may fire on data the scan did not see"
        )
    return ", ".join(f"{key}={value}" for key, value in ev.items()) or "–"


def _percent(value: object) -> str:
    return f"{100 * float(value):.1f}%" if is_number(value) else "–"


# -- tables ---------------------------------------------------------------------------------


def findings_table(report: Report) -> Table | None:
    """The model-level findings, one row each, coloured by kind; None when there are none."""
    found = findings(report)
    if not found:
        return None
    table = Table("findings", [Column("finding", nowrap=True), Column("what the numbers say")])
    for finding in found:
        kind = str(finding.get("kind", ""))
        table.add_row(Cell(FINDING_LABELS.get(kind, label(kind)), _finding_style(finding)), str(finding.get("message")))
    return table


def causes_table(report: Report, *, limit: int | None = None) -> Table | None:
    """Per site and cause: the dead units, their margin range and the evidence; None without dead causes.

    Args:
        report: The scan report with causes.
        limit: Most rows (model order); the caption counts the others.

    Returns:
        The `Table`, titled "causes per site".
    """
    rows = [(site, kind, count) for site in report.sites for kind, count in site_causes(site).items()]
    if not rows:
        return None
    table = Table(
        "causes per site",
        [
            Column("site path", code=True, fit=48),
            Column("cause", nowrap=True),
            Column("dead", numeric=True),
            Column("margin", numeric=True, long_title="margin of these units: max pre-activation − threshold"),
            Column("evidence"),
        ],
    )
    for site, kind, count in rows if limit is None else rows[:limit]:
        evidence = (getattr(site, "cause_evidence", None) or {}).get(kind)
        table.add_row(
            site.path,
            Cell(label(kind), STYLES.get(kind, "warn")),
            f"{count:,}",
            span(_units_margin(site, kind)),
            evidence_text(kind, evidence),
        )
    if limit is not None and len(rows) > limit:
        table.caption = f"{len(rows) - limit:,} more rows (report.sites[i].cause_evidence has them all)"
    return table


def recommendations_table(report: Report) -> Table | None:
    """What to do per cause (`report.why["recommendations"]`), most dead units first; None without any."""
    entries = list((why_of(report) or {}).get("recommendations") or [])
    if not entries:
        return None
    table = Table("recommendations", [Column("cause", nowrap=True), Column("dead", numeric=True), Column("what to do")])
    for entry in sorted(entries, key=lambda e: (-int(e.get("units") or 0), _rank(str(e.get("cause"))))):
        kind = str(entry.get("cause", ""))
        table.add_row(
            Cell(label(kind), STYLES.get(kind, "warn")), f"{int(entry.get('units') or 0):,}", str(entry.get("action"))
        )
    return table


def training_table(report: Report) -> Table | None:
    """The training configuration stored in the model file (optimizer, learning rate, loss); None without why."""
    why = why_of(report)
    if why is None:
        return None
    table = Table("training configuration", [Column("setting"), Column("value", code=True)])
    training = why.get("training")
    if not training:
        table.add_row("stored in the file", Cell("none: the file holds no training configuration", "muted"))
        return table
    names = {
        "optimizer": "optimizer",
        "learning_rate": "learning rate",
        "learning_rate_schedule": "learning-rate schedule",
        "default_learning_rate": "the optimizer's Keras default",
        "learning_rate_ratio": "ratio to the default",
        "loss": "loss",
    }
    for key, value in training.items():
        if value is None:
            shown = Cell("none", "muted")
        elif is_number(value):
            shown = Cell(number(value, 4) + ("×" if key == "learning_rate_ratio" else ""))
        else:
            shown = Cell(str(value))
        table.add_row(names.get(key, key.replace("_", " ")), shown)
    return table


def baseline_text(report: Report) -> str:
    """One sentence on the initialisation baseline the born-dead rule compares with."""
    base = (why_of(report) or {}).get("init_baseline") or {}
    seeds = base.get("seeds") or []
    if not seeds:
        return ""
    samples = base.get("samples")
    on = f" on {samples:,} samples" if isinstance(samples, int) else ""
    return (
        f"Initialisation baseline: the model re-initialised with each layer's own initialisers (seeds "
        f"{', '.join(str(s) for s in seeds)}) and scanned{on}; a site whose dead fraction there is at least half "
        "of today's is born dead."
    )


# -- HTML -----------------------------------------------------------------------------------


def why_html(report: Report, *, inline: bool = False, rows: int | None = None, with_findings: bool = True) -> str:
    """The "why" section's content as HTML: findings, causes per site, recommendations, training.

    Args:
        report: The scan report.
        inline: For a notebook fragment (inline styles, small titles); else for the report page's style sheet.
        rows: Most rows of the causes table (None: all).
        with_findings: Include the findings table (the notebook shows them as lines instead).

    Returns:
        The HTML text, every text escaped; empty for a report without the cause analysis.
    """
    if not has_causes(report):
        return ""
    sections = [
        *([("Findings", findings_table(report), "no model-level finding")] if with_findings else []),
        ("Causes per site", causes_table(report, limit=rows), "no dead unit"),
        ("Recommendations", recommendations_table(report), "nothing to recommend"),
        ("Training configuration", training_table(report), ""),
    ]
    parts = []
    baseline = baseline_text(report)
    for title, table, empty in sections:
        if table is None and not empty:
            continue
        parts.append(_title(title, inline))
        parts.append(to_html(table, inline=inline) if table is not None else _muted(empty, inline))
    if baseline:
        parts.append(_muted(baseline, inline))
    return "".join(parts)


def _title(text: str, inline: bool) -> str:
    if inline:
        return f'<p style="margin:.6em 0 .2em;font-weight:600">{escape_html(text)}</p>'
    return f"<h3>{escape_html(text)}</h3>"


def _muted(text: str, inline: bool) -> str:
    if inline:
        return f'<p style="margin:.2em 0 .5em;color:{GREY}">{escape_html(text)}</p>'
    return f'<p class="muted">{escape_html(text)}</p>'

"""The tables of a scan report and of a report diff, built once as `Table`s.

The terminal (`views.terminal`), the notebook (`views.notebook`), the HTML page (`views.html`) and
markdown all render these same tables (`views.table`), so a column changes in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import deadrelu.views.why as why
from deadrelu.views.table import Cell, Column, Style, Table

if TYPE_CHECKING:  # pragma: no cover - annotations only: the report's display methods import the views
    from deadrelu.compare import ReportDiff
    from deadrelu.report import Report, SiteReport

PATH_WIDTH = 48
"""Longest site path a terminal table shows; longer ones are shortened from the middle."""


def percent(value: float) -> str:
    """A share as a percentage with one decimal, e.g. 0.5417 → "54.2%"."""
    return f"{100 * value:.1f}%"


def order_sites(report: Report, sort: str = "model") -> list[tuple[int, SiteReport]]:
    """Sites with their model-order index, in model order or worst first.

    Args:
        report: The scan report.
        sort: "model", or "dead": sites with non-finite units first, then by dead share, then by
            dying units.

    Returns:
        (index in model order, site) pairs.
    """
    indexed = list(enumerate(report.sites))
    if sort == "dead":
        indexed.sort(key=lambda item: (not item[1].non_finite, -item[1].dead_fraction, -len(item[1].dying), item[0]))
    return indexed


def kind_label(site: SiteReport) -> str:
    """How a site applies its ReLU, in a few words, e.g. "fused:relu", "layer:ReLU (thr 0.5)", "op:relu6"."""
    if site.kind.startswith("op:"):
        return site.kind  # "op:relu", "op:relu6", "op:relu(threshold=0.5)": parameters included
    label = site.params.get("activation", "relu") if site.kind != "relu_layer" else "ReLU"
    extras = []
    if "max_value" in site.params:
        extras.append(f"max {site.params['max_value']:g}")
    if site.params.get("threshold"):
        extras.append(f"thr {site.params['threshold']:g}")
    if site.params.get("time_steps"):
        extras.append(f"{site.params['time_steps']} steps")
    kind = {"fused": "fused", "activation": "Activation", "relu_layer": "layer"}.get(site.kind, site.kind)
    return f"{kind}:{label}" + (f" ({', '.join(extras)})" if extras else "")


def indices_cell(indices: list[int], style: Style = "") -> Cell:
    """Unit indices as compact ranges; the whole list kept in `full` when the compact text elides some."""
    from deadrelu.compare import compress_indices

    short = compress_indices(indices)
    return Cell(short, style, full=compress_indices(indices, limit=10**9) if "…" in short else "")


# -- the scan report ------------------------------------------------------------------------


def site_table(report: Report, *, sort: str = "model", limit: int | None = None, detail: bool = False) -> Table:
    """The main table: one row per site; flagged and non-finite sites in red; with causes, a "cause" column;
    with `dormant` (`scan(..., dormant=τ)`), a "dormant" column (yellow where units that fire are dormant).

    Args:
        report: The scan report.
        sort: "model" (model order) or "dead" (worst first, `order_sites`).
        limit: Most rows; the caller says in the caption how many more there are.
        detail: Add the columns a page has room for: the site's parameters, positions per sample,
            and its dead (and non-finite, and dormant) unit indices.

    Returns:
        The `Table`, titled "dead ReLU scan".
    """
    gradients = report.has_gradients
    diverged = report.summary["diverged"]
    columns = [
        Column("#", numeric=True, style="muted"),
        Column("site path", code=True, fit=PATH_WIDTH),
        Column("layer"),
        Column("kind"),
        *([Column("params")] if detail else []),
        Column("units", numeric=True),
        *([Column("positions", numeric=True)] if detail else []),
        Column("dead", numeric=True),
        Column("dying", numeric=True),
        Column("sat.", numeric=True, long_title="saturated"),
        Column("dead %", numeric=True),
    ]
    tau = report.settings.get("dormant_threshold")
    dormant = any(site.dormant is not None for site in report.sites)
    if dormant:  # `scan(..., dormant=τ)`: ReDo's τ-dormant units, dead ones included
        title = f"dormant (≤ {tau:g})" if isinstance(tau, (int, float)) else "dormant"
        columns.append(Column("dormant", numeric=True, long_title=title))
    causes = why.has_causes(report)
    if causes:  # `scan(..., why=True)`: the dead units by cause
        columns.append(Column("cause", long_title="dead units by cause", nowrap=True))
    if diverged:
        columns.append(Column("NaN/inf", numeric=True, long_title="non-finite"))
    if gradients:
        columns += [
            Column("mean |∂z|", numeric=True, long_title="mean |∂ℓ/∂z|"),
            Column("zero ∂ %", numeric=True, long_title="zero ∂ℓ/∂z %"),
        ]
    if detail:
        columns += [Column("dead units")] + ([Column("non-finite units")] if diverged else [])
        columns += [Column("dormant units")] if dormant else []
    table = Table("dead ReLU scan", [*columns, Column("flag", nowrap=True)])
    rows = order_sites(report, sort)
    for index, site in rows if limit is None else rows[:limit]:
        dead: Style = "bad" if site.flagged else ("warn" if site.dead_fraction > 0 else "good")
        cells = [Cell(str(index)), Cell(site.path), Cell(site.layer), Cell(kind_label(site))]
        if detail:
            cells.append(Cell(", ".join(f"{k}={v}" for k, v in site.params.items())))
        cells.append(Cell(f"{site.units:,}"))
        if detail:
            cells.append(Cell(f"{site.positions:,}"))
        cells += [
            Cell(f"{len(site.dead):,}", dead),
            Cell(f"{len(site.dying):,}"),
            Cell(f"{len(site.saturated):,}"),
            Cell(percent(site.dead_fraction), dead),
        ]
        if dormant:
            count = len(site.dormant or ())
            cells.append(Cell(f"{count:,}", "warn" if count > len(site.dead) else ""))
        if causes:
            cells.append(why.causes_cell(site))
        if diverged:
            cells.append(Cell(f"{len(site.non_finite):,}", "bad" if site.non_finite else ""))
        if gradients:
            cells += _gradient_cells(site)
        if detail:
            cells.append(indices_cell(site.dead))
            if diverged:
                cells.append(indices_cell(site.non_finite, "bad" if site.non_finite else ""))
            if dormant:
                cells.append(indices_cell(site.dormant or []))
        table.add_row(*cells, _flag_cell(site))
    return table


def _flag_cell(site: SiteReport) -> Cell:
    if site.non_finite:
        return Cell("✗ non-finite", "bad")
    if site.flagged:
        return Cell("✗ flagged", "bad")
    return Cell("ok", "good") if site.reached else Cell("not reached", "muted")


def _gradient_cells(site: SiteReport) -> list[Cell]:
    """Mean |∂ℓ/∂z| over the site's units and its share of zero gradients; red when no gradient arrives."""
    if site.grad_mean_abs is None:
        return [Cell("–"), Cell("–")]
    mean = float(site.grad_mean_abs.mean()) if site.units else 0.0
    zero = float(site.grad_zero_rate.mean()) if site.units and site.grad_zero_rate is not None else 1.0
    style: Style = "bad" if mean == 0 else ("warn" if zero > 0.9 else "")
    return [Cell(f"{mean:.2e}", style), Cell(percent(zero), style)]


def layer_gradient_table(report: Report) -> Table | None:
    """Per layer with weights: gradient norm, weight norm and their ratio; None without gradients.

    A layer no gradient reaches is red, one whose ratio is below 1e-6 yellow.
    """
    if not report.layer_gradients:
        return None
    table = Table(
        "weight gradients (mean per-sample loss)",
        [
            Column("layer path", code=True, fit=PATH_WIDTH),
            Column("layer"),
            Column("params", numeric=True),
            Column("‖∇W‖", numeric=True),
            Column("‖W‖", numeric=True),
            Column("ratio", numeric=True),
        ],
    )
    for g in report.layer_gradients:
        ratio, grad_norm = g.get("ratio"), g.get("grad_norm", 0.0)
        style: Style = "bad" if grad_norm == 0 else ("warn" if ratio is not None and ratio < 1e-6 else "")
        table.add_row(
            str(g.get("path", "")),
            str(g.get("layer", "")),
            f"{g.get('params', 0):,}",
            Cell(f"{grad_norm:.3e}", style),
            f"{g.get('weight_norm', 0.0):.3e}",
            Cell("–" if ratio is None else f"{ratio:.2e}", style),
        )
    return table


def non_finite_table(report: Report) -> Table | None:
    """The layers whose weights hold NaN or ±inf, in model order; None when there are none."""
    if not report.non_finite_layers:
        return None
    table = Table(
        "non-finite weights",
        [
            Column("layer path", code=True, fit=PATH_WIDTH),
            Column("layer"),
            Column("NaN/inf values", numeric=True),
            Column("weights", numeric=True),
        ],
    )
    for layer in report.non_finite_layers:
        table.add_row(
            str(layer.get("path", "")),
            str(layer.get("layer", "")),
            Cell(f"{layer.get('values', 0):,}", "bad"),
            f"{layer.get('size', 0):,}",
        )
    return table


def others_table(report: Report) -> Table | None:
    """The activations that are listed but not counted (they cannot die this way); None when there are none."""
    if not report.others:
        return None
    table = Table(
        "other activations",
        [Column("path", code=True), Column("layer"), Column("activation"), Column("why not counted")],
    )
    for other in report.others:
        table.add_row(
            str(other.get("path", "")),
            str(other.get("layer_class", other.get("layer", ""))),
            str(other.get("activation", "")),
            Cell(str(other.get("reason", "")), "muted"),
        )
    return table


# -- two reports ----------------------------------------------------------------------------


def diff_table(diff: ReportDiff, *, limit: int | None = None) -> Table:
    """One row per matched site (newly dead in red, recovered in green), then the unmatched sites.

    Args:
        diff: The `ReportDiff`.
        limit: Most matched sites: the most changed ones, kept in model order; the caption counts
            the others.

    Returns:
        The `Table`, titled "dead units: old → new".
    """
    table = Table(
        "dead units: old → new",
        [
            Column("site path", code=True, fit=PATH_WIDTH),
            Column("units", numeric=True),
            Column("dead before", numeric=True),
            Column("dead after", numeric=True),
            Column("Δ", numeric=True),
            Column("newly dead"),
            Column("recovered"),
        ],
    )
    sites = diff.sites
    if limit is not None and len(sites) > limit:
        keep = {id(s) for s in sorted(sites, key=lambda s: -(len(s.newly_dead) + len(s.recovered)))[:limit]}
        sites = [s for s in sites if id(s) in keep]
    for site in sites:
        delta = site.dead_after - site.dead_before
        table.add_row(
            site.path,
            f"{site.units:,}" if site.comparable else f"{site.units_before:,} → {site.units:,}",
            f"{site.dead_before:,}",
            f"{site.dead_after:,}",
            Cell(f"{delta:+,}", "bad" if delta > 0 else ("good" if delta < 0 else "muted")),
            indices_cell(site.newly_dead, "bad" if site.newly_dead else "muted"),
            indices_cell(site.recovered, "good" if site.recovered else "muted"),
        )
    for paths, where in ((diff.only_new, "new"), (diff.only_old, "old")):
        for path in paths:
            table.add_row(path, "", "", "", "", Cell(f"only in the {where} report", "warn"), "")
    if len(sites) < len(diff.sites):
        table.caption = f"{len(diff.sites) - len(sites)} unchanged or less changed sites not shown (--top)"
    return table

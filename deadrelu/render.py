"""Report → terminal: small rich renderables (a summary line, the site table) and markdown."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # pragma: no cover - annotations only: the report's display methods import this module
    from deadrelu.report import Report, SiteReport


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _dead_style(fraction: float, flagged: bool) -> str:
    if flagged:
        return "bold red"
    return "yellow" if fraction > 0 else "green"


def shorten(path: str, width: int = 48) -> str:
    """Shortens a long site path from the middle, keeping its first and last parts."""
    if len(path) <= width:
        return path
    keep = width - 1
    head = keep // 3
    return f"{path[:head]}…{path[-(keep - head) :]}"


def order_sites(report: Report, sort: str = "model") -> list[tuple[int, SiteReport]]:
    """Sites with their model-order index, in model order or worst first (`sort="dead"`: sites
    with non-finite units first, then by dead share)."""
    indexed = list(enumerate(report.sites))
    if sort == "dead":
        indexed.sort(key=lambda item: (not item[1].non_finite, -item[1].dead_fraction, -len(item[1].dying), item[0]))
    return indexed


def summary_text(report: Report) -> Text:
    """One line: how many sites and units, how many dead / dying / saturated / non-finite, what is
    flagged, and whether (and where) the model has diverged."""
    from deadrelu.non_finite import divergence_text

    s = report.summary
    name = report.model.get("name") or report.model.get("path") or "model"
    diverged = divergence_text(s)
    if not s["sites"]:
        if diverged:
            return Text(f"{name}: no ReLU site found; {diverged}", style="bold red")
        return Text(f"{name}: no ReLU site found — nothing here can die this way.", style="green")
    style = "bold red" if s["flagged_sites"] else ("yellow" if s["dead"] else "green")
    text = Text(f"{name}: ")
    text.append(f"{s['dead']:,} of {s['units']:,} units dead ({_percent(s['dead_fraction'])})", style=style)
    text.append(f", {s['dying']:,} dying, {s['saturated']:,} saturated")
    if s["non_finite"]:
        text.append(f", {s['non_finite']:,} non-finite", style="bold red")
    text.append(f" across {s['sites']} sites")
    if s["flagged_sites"]:
        text.append(
            f"; {s['flagged_sites']} flagged (≥ {_percent(report.settings.get('flag_threshold', 0.1))} dead)",
            style="bold red",
        )
    if diverged:
        text.append(f"; {diverged}", style="bold red")
    text.append(f" — measured on {report.data.get('samples', '?'):,} samples")
    if report.data.get("synthetic"):
        text.append(" (SYNTHETIC)", style="bold yellow")
    return text


def _non_finite_cell(site: SiteReport) -> Text:
    """The site's non-finite unit count, red when there are any."""
    count = len(site.non_finite)
    return Text(f"{count:,}", style="bold red" if count else "")


def _flag_cell(site: SiteReport) -> Text:
    if site.non_finite:
        return Text("✗ non-finite", style="bold red")
    return Text("✗ flagged", style="bold red") if site.flagged else Text("ok", style="green")


def site_table(report: Report, *, sort: str = "model", limit: int | None = None) -> Table:
    """The main table: one row per site, flagged sites in red.

    Args:
        report: The scan report.
        sort: "model" (model order) or "dead" (worst first).
        limit: Show at most this many rows (the rest are counted in the caption).
    """
    gradients = report.has_gradients
    diverged = report.summary["diverged"]
    table = Table(title="dead ReLU scan", title_justify="left", header_style="bold", show_lines=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("site path", overflow="fold")
    table.add_column("layer")
    table.add_column("kind")
    table.add_column("units", justify="right")
    table.add_column("dead", justify="right")
    table.add_column("dying", justify="right")
    table.add_column("sat.", justify="right")
    table.add_column("dead %", justify="right")
    if diverged:
        table.add_column("NaN/inf", justify="right")
    if gradients:
        table.add_column("mean |∂z|", justify="right")
        table.add_column("zero ∂ %", justify="right")
    table.add_column("flag")
    rows = order_sites(report, sort)
    shown = rows if limit is None else rows[:limit]
    for index, site in shown:
        style = _dead_style(site.dead_fraction, site.flagged)
        cells = [
            str(index),
            shorten(site.path),
            site.layer,
            _kind_label(site),
            f"{site.units:,}",
            Text(f"{len(site.dead):,}", style=style),
            f"{len(site.dying):,}",
            f"{len(site.saturated):,}",
            Text(_percent(site.dead_fraction), style=style),
        ]
        if diverged:
            cells.append(_non_finite_cell(site))
        if gradients:
            cells += _gradient_cells(site)
        cells.append(_flag_cell(site))
        table.add_row(*cells)
    if len(shown) < len(rows):
        table.caption = f"{len(rows) - len(shown)} more sites not shown (--top)"
    return table


def _kind_label(site: SiteReport) -> str:
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


def _gradient_cells(site: SiteReport) -> list:
    if site.grad_mean_abs is None:
        return ["–", "–"]
    mean = float(site.grad_mean_abs.mean()) if site.units else 0.0
    zero = float(site.grad_zero_rate.mean()) if site.units else 1.0
    style = "bold red" if mean == 0 else ("yellow" if zero > 0.9 else "")
    return [Text(f"{mean:.2e}", style=style), Text(_percent(zero), style=style)]


def layer_gradient_table(report: Report) -> Table | None:
    """Per layer with weights: gradient norm, weight norm and their ratio (with gradients only)."""
    if not report.layer_gradients:
        return None
    table = Table(title="weight gradients (mean per-sample loss)", title_justify="left", header_style="bold")
    for name, justify in (
        ("layer path", "left"),
        ("layer", "left"),
        ("params", "right"),
        ("‖∇W‖", "right"),
        ("‖W‖", "right"),
        ("ratio", "right"),
    ):
        table.add_column(name, justify=justify)
    for g in report.layer_gradients:
        ratio = g["ratio"]
        style = "bold red" if g["grad_norm"] == 0 else ("yellow" if ratio is not None and ratio < 1e-6 else "")
        table.add_row(
            shorten(g["path"]),
            g["layer"],
            f"{g['params']:,}",
            Text(f"{g['grad_norm']:.3e}", style=style),
            f"{g['weight_norm']:.3e}",
            Text("–" if ratio is None else f"{ratio:.2e}", style=style),
        )
    return table


def markdown_table(report: Report) -> str:
    """The site table as GitHub markdown, with the summary line above it."""
    gradients = report.has_gradients
    diverged = report.summary["diverged"]
    header = ["#", "site", "layer", "kind", "units", "dead", "dying", "saturated", "dead %"]
    if diverged:
        header.append("non-finite")
    if gradients:
        header += ["mean abs grad", "zero grad %"]
    header.append("flag")
    numeric = ("#", "units", "dead", "dying", "saturated", "dead %", "non-finite")
    lines = [
        summary_text(report).plain,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if h in numeric else "---" for h in header) + "|",
    ]
    for index, site in order_sites(report):
        row = [
            str(index),
            f"`{site.path}`",
            site.layer,
            _kind_label(site),
            str(site.units),
            str(len(site.dead)),
            str(len(site.dying)),
            str(len(site.saturated)),
            _percent(site.dead_fraction),
        ]
        if diverged:
            row.append(str(len(site.non_finite)))
        if gradients:
            row += [cell.plain if isinstance(cell, Text) else cell for cell in _gradient_cells(site)]
        row.append("**non-finite**" if site.non_finite else "**flagged**" if site.flagged else "ok")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def inspect_table(site_map, repairs: list[str] | None = None) -> Table:
    """The sites of a model and the activations that cannot die, without data."""
    table = Table(title="ReLU sites", title_justify="left", header_style="bold")
    for name in ("#", "path", "layer", "kind", "params", "counted"):
        table.add_column(name)
    for number, site in enumerate(site_map.sites):
        params = ", ".join(f"{k}={v}" for k, v in site.params.items())
        table.add_row(str(number), site.path, site.layer_class, site.kind, params, Text("yes", style="green"))
    for other in site_map.others:
        table.add_row(
            "–",
            other.path,
            other.layer_class,
            "other",
            f"activation={other.activation}",
            Text(f"no: {other.reason}", style="dim"),
        )
    if repairs:
        table.caption = "repairs applied while loading: " + "; ".join(repairs)
    return table


def comparison_table(comparison) -> Table:
    """Before → after per retrained variant: dead and dying units, validation loss and metrics."""
    metrics = list(comparison.variants[0].after) if comparison.variants else []
    table = Table(
        title=f"retrained {comparison.settings.get('epochs')} epochs, same data and seed",
        title_justify="left",
        header_style="bold",
    )
    table.add_column("variant")
    table.add_column("dead units", justify="right")
    table.add_column("dying", justify="right")
    for metric in metrics:
        table.add_column(f"val {metric}", justify="right")
    best = {m: _best(comparison, m) for m in metrics}
    for v in comparison.variants:
        if v.units:
            cells = [v.name, f"{v.dead_before} → {v.dead_after}", f"{v.dying_before} → {v.dying_after}"]
        else:
            cells = [v.name, Text("no ReLU left", style="dim"), Text("–", style="dim")]
        for metric in metrics:
            text = Text(f"{v.before.get(metric, float('nan')):.4f} → {v.after[metric]:.4f}")
            if len(comparison.variants) > 1 and v.name == best[metric]:
                text.stylize("bold green")
            cells.append(text)
        table.add_row(*cells)
    return table


def _best(comparison, metric: str) -> str:
    lower_is_better = "loss" in metric or "error" in metric
    pick = min if lower_is_better else max
    return pick(comparison.variants, key=lambda v: v.after[metric]).name

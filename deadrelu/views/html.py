"""Report → one self-contained HTML file: summary, figures (embedded PNG), tables, settings, provenance.

The page needs nothing but itself: figures are base64 `data:` URIs, the style sheet is inline, and
there is no script and no link to any other file or server, so it can be mailed, attached to an issue
or archived as is. Every piece of text taken from a report is escaped.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import deadrelu.views.report_tables as tables
import deadrelu.views.why as why
from deadrelu.views.report_tables import percent
from deadrelu.views.table import escape_html as _e
from deadrelu.views.table import to_html

if TYPE_CHECKING:  # pragma: no cover
    from deadrelu.compare import ReportDiff
    from deadrelu.report import Report

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2329;
       margin: 0 auto; padding: 1.5em 2em 4em; max-width: 1500px; }
h1 { font-size: 1.5em; margin: 0 0 .3em; } h2 { font-size: 1.2em; margin: 2em 0 .5em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1em; margin: 1.2em 0 .3em; }
.summary { font-size: 1.1em; } .bad { color: #c0392b; font-weight: 600; }
.warn { color: #b9770e; } .ok { color: #1e8449; }
.counts span { display: inline-block; margin: 0 1.2em .4em 0; } .counts b { font-size: 1.25em; }
.notes li { color: #7d5b00; }
table { border-collapse: collapse; font-size: 12.5px; margin: .4em 0 1em; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f5f7; position: sticky; top: 0; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.nowrap { white-space: nowrap; } caption { caption-side: bottom; text-align: left; padding: .2em 0; }
.best { color: #1e8449; font-weight: 600; }
td details summary { color: inherit; }
code, td.path { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; overflow-wrap: anywhere; }
td.path { min-width: 14ch; }
figure { margin: .5em 0 1.5em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
details summary { cursor: pointer; color: #2c3e50; }
.kv th { width: 14em; background: none; position: static; } .muted { color: #777; }
.meta { color: #555; font-size: .92em; margin: 0 0 1em; } .meta span { margin-right: 1.2em; white-space: nowrap; }
.next li { margin: .2em 0 .4em; } .next code { background: #f4f5f7; padding: 1px 4px; border-radius: 3px; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 0 1.5em; }
.units details { margin: .15em 0; } .units summary code { font-size: 12.5px; }
.units figure { margin: .3em 0 1em; }
"""


def png_data_uri(png: bytes) -> str:
    """A `data:` URI holding PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure_html(png: bytes, alt: str, caption: str) -> str:
    return f'<figure><img src="{png_data_uri(png)}" alt="{_e(alt)}"><figcaption>{_e(caption)}</figcaption></figure>'


def _key_values(mapping: dict) -> str:
    """A two-column table of a dict; lists are joined, empty values shown as –."""
    rows = []
    for key, value in mapping.items():
        if isinstance(value, (list, tuple)):
            value = "; ".join(_flat(v) for v in value) if value else "none"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "–"
        rows.append(f"<tr><th>{_e(key)}</th><td><code>{_e('–' if value is None else value)}</code></td></tr>")
    return f'<table class="kv"><tbody>{"".join(rows)}</tbody></table>'


def _flat(value: object) -> str:
    """One entry of a listed value: a dict as "key=value, ..." (e.g. one input's data range)."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
    return str(value)


# -- sections -------------------------------------------------------------------------------


def _summary_section(report: Report) -> str:
    from deadrelu.engine.non_finite import divergence_text
    from deadrelu.views.terminal import collapse_line, summary_text

    s = report.summary
    css = "bad" if s["flagged_sites"] or s["diverged"] else ("warn" if s["dead"] else "ok")
    counts = [
        ("sites", s["sites"]),
        ("units", s["units"]),
        ("dead", s["dead"]),
        ("dying", s["dying"]),
        ("saturated", s["saturated"]),
        ("non-finite", s["non_finite"]),
        ("flagged sites", s["flagged_sites"]),
    ]
    if "dormant" in s:  # `scan(..., dormant=τ)`
        counts.insert(5, (f"dormant (≤ {report.settings.get('dormant_threshold', 0):g})", s["dormant"]))
    spans = "".join(f"<span><b>{v:,}</b> {_e(k)}</span>" for k, v in counts)
    headline = collapse_line(report)
    parts = [f'<p class="bad"><b>{_e(headline)}</b></p>'] if headline else []
    parts += [
        f'<p class="summary {css}">{_e(summary_text(report).plain)}</p>',
        f'<div class="counts">{spans}<span><b>{percent(s["dead_fraction"])}</b> of units dead</span></div>',
    ]
    diverged = divergence_text(s)
    if diverged:
        parts.append(
            f'<p class="bad">{_e(diverged[0].upper() + diverged[1:])}. Non-finite units are neither dead nor '
            "alive: retrain from a checkpoint before the divergence, with a lower learning rate or gradient "
            "clipping.</p>"
        )
    if report.data.get("synthetic"):
        parts.append('<p class="bad">Measured on synthetic inputs: not a real verdict. Scan again with real data.</p>')
    if report.notes:
        parts.append('<h3>Notes</h3><ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in report.notes) + "</ul>")
    return "\n".join(parts)


def _sites_section(report: Report) -> str:
    if not report.sites:
        return "<h2>Sites</h2><p>No ReLU site: nothing in this model can die this way.</p>"
    flag = report.settings.get("flag_threshold", 0.1)
    return (
        f'<h2>Sites</h2><p class="muted">All {len(report.sites):,} sites in model order; flagged sites '
        f"(≥ {percent(flag)} dead) and sites with non-finite (NaN/inf) units in red.</p>"
        + to_html(tables.site_table(report, detail=True))
    )


def _why_section(report: Report) -> str:
    """The cause analysis (`scan(..., why=True)`): findings, causes per site with their evidence,
    recommendations, training configuration; nothing for a scan without it."""
    content = why.why_html(report)
    if not content:
        return ""
    return (
        '<h2 id="why">Why they died</h2><p class="muted">Each dead unit\'s cause, first match wins: starved, '
        'output ReLU, born dead, killed in training, data-dependent (docs/fixing.md, "Why units die").</p>' + content
    )


def _non_finite_section(report: Report) -> str:
    """The layers whose weights hold NaN or ±inf, in model order (a diverged model only)."""
    table = tables.non_finite_table(report)
    if table is None:
        return ""
    return (
        '<h2>Non-finite weights</h2><p class="muted">Layers whose weights hold NaN or ±inf, in model order: '
        "the first is where the divergence shows first.</p>" + to_html(table)
    )


def _layer_gradient_section(report: Report) -> str:
    table = tables.layer_gradient_table(report)
    return "" if table is None else "<h2>Weight gradients</h2>" + to_html(table)


def _others_section(report: Report) -> str:
    table = tables.others_table(report)
    if table is None:
        return ""
    return '<h2>Other activations</h2><p class="muted">Listed, never counted: they cannot die this way.</p>' + to_html(
        table
    )


def _provenance_section(report: Report) -> str:
    """The settings, then the model, data and tool provenance, behind one closed `<details>`."""
    parts = [
        "<h2>Settings and provenance</h2>",
        "<details><summary>The scan's settings; the model, data and tool it measured with</summary>",
        "<h3>Settings</h3>",
        _key_values(report.settings),
        "<h3>Model</h3>",
        _key_values(report.model),
        "<h3>Data</h3>",
        _key_values(report.data),
    ]
    extra = dict(report.tool)
    if report.loss is not None:
        extra["mean loss"] = f"{report.loss:.6g}"
    parts += ["<h3>Tool</h3>", _key_values(extra), "</details>"]
    return "\n".join(parts)


def _figures_section(report: Report) -> str:
    from deadrelu.views.plots import figure_png, histogram_figure, overview_figure, unit_map_figure

    return "\n".join(
        [
            '<h2>Figures</h2><div class="figures">',
            _figure_html(
                figure_png(overview_figure(report)),
                "overview",
                "Unit status per site in model order"
                + (", with gradient flow" if report.has_gradients else "")
                + "; flagged sites marked in red.",
            ),
            _figure_html(
                figure_png(unit_map_figure(report)),
                "unit map",
                "Every unit, one row per site, sorted by active rate; red: dead.",
            ),
            _figure_html(
                figure_png(histogram_figure(report)),
                "active rate histogram",
                "Active rates of all units on log bins; dead units in their own bar.",
            ),
            "</div>",
        ]
    )


def _choose_site_figures(report: Report, limit: int) -> list[int]:
    """Indices of the sites that get a figure: all, or the `limit` worst (by dead share) in model order."""
    indices = list(range(len(report.sites)))
    if len(indices) <= limit:
        return indices
    worst = sorted(indices, key=lambda i: (-report.sites[i].dead_fraction, -len(report.sites[i].dying), i))
    return sorted(worst[:limit])


def _site_figures_section(report: Report, limit: int) -> str:
    """One closed `<details>` per chosen site (its line says how many units are dead), holding its unit figure."""
    from deadrelu.views.plots import figure_png, site_figure

    if not report.sites or limit <= 0:
        return ""
    chosen = _choose_site_figures(report, limit)
    parts = [
        "<h2>Units per site</h2>",
        '<p class="muted">Open a site to see its units: sorted active rates and an index-order map.'
        + (
            f" The {len(chosen)} sites with the largest dead share of {len(report.sites):,}; write them all "
            "with <code>--plot-dir</code>."
            if len(chosen) < len(report.sites)
            else ""
        )
        + '</p><div class="units">',
    ]
    for i in chosen:
        site = report.sites[i]
        css = "bad" if site.flagged or site.non_finite else ("warn" if site.dead else "ok")
        parts.append(
            f'<details id="site-{i}"><summary>#{i} <code>{_e(site.path)}</code> '
            f'<span class="{css}">{len(site.dead):,} of {site.units:,} units dead '
            f"({percent(site.dead_fraction)})</span></summary>"
            + _figure_html(
                figure_png(site_figure(site, report.settings, index=i)),
                f"units of {site.path}",
                f"{site.path}: {len(site.dead)} of {site.units} units dead.",
            )
            + "</details>"
        )
    parts.append("</div>")
    return "\n".join(parts)


def _diff_section(diff: ReportDiff) -> str:
    from deadrelu.views.plots import diff_figure, figure_png
    from deadrelu.views.terminal import diff_summary

    s = diff.summary
    css = "bad" if s["newly_dead"] > s["recovered"] else ("ok" if s["recovered"] else "")
    parts = [
        "<h2>Compared with an earlier report</h2>",
        f'<p class="summary {css}">{_e(diff_summary(diff))}</p>',
        f"<p><b>{_e(diff.verdict)}</b></p>",
    ]
    if diff.notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in diff.notes) + "</ul>")
    parts.append(
        _figure_html(
            figure_png(diff_figure(diff)),
            "diff",
            "Per site: newly dead units (red, right) and recovered units (green, left).",
        )
    )
    parts.append(to_html(tables.diff_table(diff)))
    parts += ["<h3>Earlier report</h3>", _key_values(diff.old)]
    return "\n".join(parts)


# -- the header and what to do next --------------------------------------------------------


def page_info(report: Report) -> dict[str, str]:
    """What the page's header says about how it was made: when (UTC, ISO 8601) and on which host it
    was written, by which deadrelu and Keras versions, and the Keras backend the scan ran on.

    Args:
        report: The scan report (its `tool` names the backend, and the deadrelu version that measured it).

    Returns:
        `{"written", "host", "deadrelu", "keras", "backend"}`; "–" for what is not known (the backend of a
        report written before it was recorded). `deadrelu` adds the measuring version when it differs.
    """
    import datetime
    import importlib.metadata
    import socket

    from deadrelu._version import __version__

    try:
        keras_version = importlib.metadata.version("keras")
    except importlib.metadata.PackageNotFoundError:
        keras_version = "–"
    measured = report.tool.get("version")
    version = __version__ if not measured or measured == __version__ else f"{__version__} (measured with {measured})"
    return {
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "host": socket.gethostname() or "–",
        "deadrelu": version,
        "keras": keras_version,
        "backend": str(report.tool.get("backend") or "–"),
    }


def _header(report: Report, title: str) -> str:
    info = page_info(report)
    samples = report.data.get("samples")
    source = [report.model.get("path"), report.data.get("source")]
    source += [f"{samples:,} samples"] if isinstance(samples, int) else []
    meta = (
        f"<span>written {_e(info['written'])} on {_e(info['host'])}</span>"
        f"<span>deadrelu {_e(info['deadrelu'])}</span><span>Keras {_e(info['keras'])}</span>"
        f"<span>backend {_e(info['backend'])}</span>"
    )
    return (
        f"<h1>deadrelu report: {_e(title)}</h1>"
        f'<p class="muted">{" · ".join(_e(part) for part in source if part)}</p>'
        f'<p class="meta">{meta}</p>'
    )


def _code_spans(line: str) -> str:
    """A line of the terminal, escaped, its `backquoted` commands as `<code>`."""
    parts = line.split("`")
    if len(parts) % 2 == 0:  # an odd number of backquotes: show the line as it is
        return _e(line)
    return "".join(f"<code>{_e(part)}</code>" if i % 2 else _e(part) for i, part in enumerate(parts))


def _next_section(next_steps) -> str:
    """The `next:` lines the terminal prints after the scan, the same words, the commands as code."""
    lines = [line.strip() for line in next_steps or () if line and line.strip()]
    if not lines:
        return ""
    items = "".join(f"<li>{_code_spans(line.removeprefix('next: '))}</li>" for line in lines)
    return f'<h2 id="next">What to do next</h2><ul class="next">{items}</ul>'


# -- the page -------------------------------------------------------------------------------


def render_html(
    report: Report,
    *,
    diff: ReportDiff | None = None,
    site_figures: int = 40,
    title: str | None = None,
    next_steps: Sequence[str] | None = None,
) -> str:
    """The whole report as one self-contained HTML page.

    The page opens with a header (when and where it was written, the deadrelu and Keras versions, the
    backend), the summary, what to do next, then the site table; the figures follow side by side,
    each site's unit figure behind a line that opens it, and the settings and provenance last.

    Args:
        report: The scan report.
        diff: A `ReportDiff` against an earlier report, shown in its own section.
        site_figures: Most per-site unit figures to embed (the worst sites first when there are
            more); 0 for none.
        title: What the page is titled after "deadrelu report:". Defaults to the model's name; with
            `diff`, the two model files ("new.keras vs old.keras").
        next_steps: The `next:` lines the command line printed after the scan (`deadrelu scan`'s
            hint), shown as "What to do next"; None or empty for no such section.

    Returns:
        The HTML text.
    """
    name = report.model.get("name") or os.path.basename(str(report.model.get("path") or "")) or "model"
    if title is None and diff is not None:
        files = [os.path.basename(str(p or "")) for p in (report.model.get("path"), diff.old.get("model"))]
        title = " vs ".join(files) if all(files) else None
    title = title or name
    body = [_header(report, title), _summary_section(report), _next_section(next_steps)]
    if diff is not None:
        body.append(_diff_section(diff))
    body += [
        _sites_section(report),
        _why_section(report),
        _non_finite_section(report),
        _layer_gradient_section(report),
        _figures_section(report),
        _site_figures_section(report, site_figures),
        _others_section(report),
        _provenance_section(report),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>deadrelu report: {_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body>\n</html>\n"
    )


def write_html(
    report: Report,
    path: str,
    *,
    diff: ReportDiff | None = None,
    site_figures: int = 40,
    title: str | None = None,
    next_steps: Sequence[str] | None = None,
) -> None:
    """Writes `render_html(report, ...)` to `path`, atomically (UTF-8).

    Args:
        report: The scan report.
        path: The output file.
        diff: Optional `ReportDiff` to include.
        site_figures: Most per-site unit figures to embed.
        title: The page's title (`render_html`).
        next_steps: The command line's `next:` lines (`render_html`).
    """
    from deadrelu.io.files import atomic_output

    text = render_html(report, diff=diff, site_figures=site_figures, title=title, next_steps=next_steps)
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)

"""The views of the cause analysis (`scan --why`): the scan table's "cause" column, the findings lines,
the summary's dominant cause, the HTML page's and the notebook's "why" section, markdown, and the
`next:` hint, whose command must run. A report without the analysis renders exactly as before."""

from __future__ import annotations

import io
import re
import shlex
import shutil

import numpy as np
import pytest
from rich.console import Console

from deadrelu.report import Report
from deadrelu.views import notebook, terminal
from deadrelu.views import why as why_view
from deadrelu.views.html import render_html
from paths import ROOT, SAMPLES
from test_html import Page
from test_plots import make_site
from test_table import markdown_rows, rich_rows

SCRIPT_PATH = "enc/<script>alert(1)</script>/relu"

# Per site: (path, units, {cause: number of dead units}, evidence per cause).
PLANTED = [
    (
        "hidden_1",
        64,
        {"killed_in_training": 48},
        {
            "killed_in_training": {
                "dead_bias_median": -1.84,
                "live_bias_median": 0.125,
                "dead_weight_norm_median": 0.912,
                "live_weight_norm_median": 1.37,
            }
        },
    ),
    (
        "hidden_2",
        16,
        {"starved": 3, "born_dead": 5},
        {
            "starved": {"preact_value": -0.25, "upstream": [{"path": "hidden_1", "dead": 48, "units": 64}]},
            "born_dead": {
                "init_dead_fraction_mean": 0.4167,
                "init_dead_fraction_min": 0.375,
                "init_dead_fraction_max": 0.4375,
                "dead_fraction_now": 0.5,
                "seeds": [0, 1, 2],
            },
        },
    ),
    (SCRIPT_PATH, 8, {"data_dependent": 2}, {"data_dependent": {"margin_in_spread": [-0.04, -0.01], "spread": 2.5}}),
    ("head", 1, {"output_relu": 1}, {"output_relu": {"output": "head<b>"}}),
    ("healthy", 16, {}, {}),
]

FINDINGS = [
    {"kind": "non_finite", "message": "3 units output NaN/inf: they are neither dead nor alive", "units": 3},
    {"kind": "non_finite_weights", "message": "layer dense_9 holds 2 NaN weights: retrain from a checkpoint"},
    {
        "kind": "input_scale",
        "message": "input 'x' ranges 0–255 (mean 33.3) without a Rescaling layer: scan with --rescale 1/255",
        "min": 0.0,
        "max": 255.0,
    },
    {"kind": "output_relu", "message": "a ReLU on the model output head: it predicts 0 for 100% of samples"},
    {"kind": "dead_site", "message": "head is 100% dead <i>: every layer after it sees a constant"},
]

RECOMMENDATIONS = [
    {"cause": "killed_in_training", "units": 48, "action": "revive them and lower the learning rate (50× Adam's)"},
    {"cause": "born_dead", "units": 5, "action": "change the initialiser or patch to LeakyReLU"},
    {"cause": "starved", "units": 3, "action": "fix hidden_1 first"},
    {"cause": "data_dependent", "units": 2, "action": "scan more data before acting"},
    {"cause": "output_relu", "units": 1, "action": "remove the ReLU on the output"},
]

TRAINING = {
    "optimizer": "Adam",
    "learning_rate": 0.05,
    "default_learning_rate": 0.001,
    "learning_rate_ratio": 50.0,
    "loss": "mean_squared_error",
}


def plain_report() -> Report:
    """The planted sites without the cause analysis: what a scan without --why returns."""
    rng = np.random.default_rng(5)
    sites = [make_site(rng, path, units, dead=sum(causes.values())) for path, units, causes, _ in PLANTED]
    return Report(
        model={"path": "models/net.keras", "name": "net", "sha256": "ab" * 32, "format": "keras"},
        data={"source": "data/x.npz", "samples": 200, "synthetic": False},
        settings={"batch_size": 32, "dying_threshold": 0.01, "flag_threshold": 0.1},
        sites=sites,
    )


def why_report() -> Report:
    """The same report with every cause kind, its evidence, every finding, the recommendations and the
    training configuration, set as `scan(..., why=True)` sets them (docs/report-format.md)."""
    report = plain_report()
    for site, (_, _, causes, evidence) in zip(report.sites, PLANTED):
        kinds = [kind for kind, count in causes.items() for _ in range(count)]
        site.dead_causes = kinds
        site.causes = dict(causes)
        site.cause_evidence = evidence
        # Live units reach z > 0; each dead unit its own negative margin: -1, -2, ... in dead order.
        margin = np.linspace(0.5, 2.0, site.units)
        margin[site.dead] = -(np.arange(len(site.dead)) + 1.0)
        site.margin = [float(m) for m in margin]
    report.why = {
        "init_baseline": {"seeds": [0, 1, 2], "samples": 200, "dead_fraction": {"hidden_2": [0.375, 0.4375, 0.4375]}},
        "training": dict(TRAINING),
        "findings": [dict(f) for f in FINDINGS],
        "recommendations": [dict(r) for r in RECOMMENDATIONS],
    }
    return report


def printed(*renderables, width: int = 250) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    for renderable in renderables:
        console.print(renderable)
    return console.file.getvalue()


def test_terminal_table_has_the_cause_column_with_the_counts():
    report = why_report()
    rows = rich_rows(terminal.site_table(report))
    header, body = rows[0], rows[1:]
    assert header[header.index("dead %") + 1] == "cause"
    causes = {row[1]: row[header.index("cause")] for row in body}
    assert causes == {
        "hidden_1": "48 killed in training",
        "hidden_2": "3 starved · 5 born dead",  # priority order, not count order
        SCRIPT_PATH: "2 data-dependent",
        "head": "1 output ReLU",
        "healthy": "–",
    }
    # The counts in the column add up to each site's dead units.
    for row in body:
        counts = [int(n) for n in re.findall(r"(\d+) ", row[header.index("cause")])]
        assert sum(counts) == int(row[header.index("dead")])


def test_cause_cells_are_coloured_by_the_dominant_kind():
    cells = {site.path: why_view.causes_cell(site) for site in why_report().sites}
    assert cells["hidden_1"].style == "bad" and cells["head"].style == "bad"
    assert cells["hidden_2"].style == "bad"  # 5 born dead outnumber 3 starved
    assert cells[SCRIPT_PATH].style == "warn" and cells["healthy"].style == "muted"


def test_terminal_findings_lines_then_summary_with_the_dominant_cause():
    report = why_report()
    lines = printed(terminal.summary_block(report), width=400).splitlines()
    assert lines[0] == terminal.collapse_line(report)  # 'head' is 100% dead: the headline comes first
    assert lines[1 : 1 + len(FINDINGS)] == [f"finding: {f['message']}" for f in FINDINGS]
    summary = lines[1 + len(FINDINGS)]
    assert summary.startswith("net: 59 of ")
    assert summary.endswith(
        "; dominant cause: killed in training (48 of 59 dead) — revive them and lower the learning rate (50× Adam's)"
    )
    # Colours: non-finite and dead-site findings red, the input scale yellow.
    styles = [text.style for text in terminal.finding_texts(report)]
    assert styles == ["bold red", "bold red", "bold red", "yellow", "bold red", "bold red"]


def test_markdown_has_the_cause_column_and_the_findings():
    report = why_report()
    text = terminal.markdown_table(report)
    assert text.startswith(f"**{terminal.collapse_line(report)}**\n\n")
    tables = text.split("\n\n")[1:]  # after the collapse headline
    sites = markdown_rows(tables[1])
    header = sites[0]
    assert "dead units by cause" in header
    column = header.index("dead units by cause")
    assert [row[column] for row in sites[1:]] == [
        "48 killed in training",
        "3 starved · 5 born dead",
        "2 data-dependent",
        "1 output ReLU",
        "–",
    ]
    assert "| `enc/<script>alert(1)</script>/relu` |" in text  # a code span: shown as text, not HTML
    findings = markdown_rows(tables[2])
    assert findings[0] == ["finding", "what the numbers say"]
    assert [row[1] for row in findings[1:]] == [f["message"] for f in FINDINGS]
    assert "\\<i\\>" in tables[2]  # markdown-escaped, not an HTML tag


def test_html_page_why_section_lists_causes_and_evidence():
    report = why_report()
    text = render_html(report, site_figures=0)
    page = Page(text)
    assert "<script>" not in text and "&lt;script&gt;" in text and "head<b>" not in text and "<i>" not in text
    assert "script" not in page.tags and "i" not in page.tags
    headers = [table[0] for table in page.tables]
    causes = page.tables[headers.index(next(h for h in headers if [c.text for c in h][:2] == ["site path", "cause"]))]
    titles = [c.text for c in causes[0]]
    assert titles == ["site path", "cause", "dead", "margin", "evidence"]
    rows = {(r[0].text, r[1].text): r for r in causes[1:]}
    assert set(rows) == {
        ("hidden_1", "killed in training"),
        ("hidden_2", "starved"),
        ("hidden_2", "born dead"),
        (SCRIPT_PATH, "data-dependent"),
        ("head", "output ReLU"),
    }
    killed = rows["hidden_1", "killed in training"]
    assert killed[2].text == "48" and killed[3].text == "-48 … -1"  # the dead units' margins
    assert killed[4].text == "bias median -1.84 dead vs 0.125 live; incoming weight norm median 0.912 dead vs 1.37 live"
    assert "bad" in killed[1].classes
    starved, born = rows["hidden_2", "starved"], rows["hidden_2", "born dead"]
    assert starved[2].text == "3" and born[2].text == "5"
    assert starved[4].text == "pre-activation constant at -0.25 over the data; starved by hidden_1 (48 of 64 dead)"
    assert born[4].text == "dead at initialisation: 41.7% of units (seeds: 37.5%–43.8%), 50.0% now; seeds 0, 1, 2"
    # Margins per cause: the dead units of hidden_2 are -1 … -8 in dead order, 3 starved then 5 born dead.
    assert starved[3].text == "-3 … -1" and born[3].text == "-8 … -4"
    dependent = rows[SCRIPT_PATH, "data-dependent"]
    assert dependent[4].text.startswith("margin -0.04 … -0.01 × the pre-activation spread (2.5)")
    assert "warn" in dependent[1].classes
    assert rows["head", "output ReLU"][4].text == "the site's output is the model output head<b>"
    # Findings, recommendations, training configuration.
    by_title = {tuple(c.text for c in t[0]): t for t in page.tables}
    findings = by_title["finding", "what the numbers say"]
    assert [r[1].text for r in findings[1:]] == [f["message"] for f in FINDINGS]
    recommendations = by_title["cause", "dead", "what to do"]
    assert [(r[0].text, r[1].text) for r in recommendations[1:]] == [
        ("killed in training", "48"),
        ("born dead", "5"),
        ("starved", "3"),
        ("data-dependent", "2"),
        ("output ReLU", "1"),
    ]
    training = {r[0].text: r[1].text for r in by_title["setting", "value"][1:]}
    assert training == {
        "optimizer": "Adam",
        "learning rate": "0.05",
        "the optimizer's Keras default": "0.001",
        "ratio to the default": "50×",
        "loss": "mean_squared_error",
    }
    assert 'id="why"' in text and "seeds 0, 1, 2) and scanned on 200 samples" in text
    # The sites table has the cause column too.
    sites = by_title[next(k for k in by_title if k and k[0] == "#")]
    assert "cause" in [c.text for c in sites[0]]


def test_html_page_without_causes_has_no_why_section():
    text = render_html(plain_report(), site_figures=0)
    assert 'id="why"' not in text and "Why they died" not in text and ">cause<" not in text


def test_notebook_view_has_the_why_section():
    report = why_report()
    text = notebook.report_html(report, figure=False)
    page = Page(text)
    assert "<script>" not in text and "head<b>" not in text and "<i>" not in text
    assert "Why they died" in page.text
    for finding in FINDINGS:
        assert f"finding: {finding['message']}" in page.text
    titles = [[c.text for c in table[0]] for table in page.tables]
    assert ["site path", "cause", "dead", "margin", "evidence"] in titles
    assert ["cause", "dead", "what to do"] in titles and ["setting", "value"] in titles
    assert "cause" in titles[0]  # the site table
    # The rich view: the table with the column, the findings, the summary with the dominant cause.
    shown = printed(report.__rich__())
    assert "48 killed in training" in shown and "finding: 3 units output NaN/inf" in shown
    assert "dominant cause: killed in training" in shown
    plain = notebook.report_html(plain_report(), figure=False)
    assert "Why they died" not in plain and "finding:" not in plain


# The markdown of `plain_report()` as the views printed it before the cause analysis existed.
PLAIN_MARKDOWN = (
    (
        "net: 59 of 105 units dead (56.2%), 0 dying, 0 saturated across 5 sites; 4 flagged (≥ 10.0% dead) — "
        "measured on 200 samples\n"
    )
    + """
| # | site path | layer | kind | units | dead | dying | saturated | dead % | flag |
|---:|---|---|---|---:|---:|---:|---:|---:|---|
| 0 | `hidden_1` | Dense | fused:relu | 64 | **48** | 0 | 0 | **75.0%** | **✗ flagged** |
| 1 | `hidden_2` | Dense | fused:relu | 16 | **8** | 0 | 0 | **50.0%** | **✗ flagged** |
| 2 | `enc/<script>alert(1)</script>/relu` | Dense | fused:relu | 8 | **2** | 0 | 0 | **25.0%** | **✗ flagged** |
| 3 | `head` | Dense | fused:relu | 1 | **1** | 0 | 0 | **100.0%** | **✗ flagged** |
| 4 | `healthy` | Dense | fused:relu | 16 | 0 | 0 | 0 | 0.0% | ok |
"""
)


def test_without_why_the_views_are_unchanged():
    report = plain_report()
    assert not why_view.has_causes(report)
    headline = terminal.collapse_line(report)  # 'head' is 100% dead, with or without causes
    assert terminal.markdown_table(report) == f"**{headline}**\n\n" + PLAIN_MARKDOWN
    assert printed(terminal.summary_block(report), width=400) == headline + "\n" + printed(
        terminal.summary_text(report), width=400
    )
    assert "cause" not in rich_rows(terminal.site_table(report))[0]


def test_readme_example_is_unchanged_without_why(run_cli):
    """The README's example block, printed by today's code: the table and the summary, byte for byte."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = readme.index("$ deadrelu scan samples/dying_mlp.keras --data samples/probe.npz")
    block = readme[start + 1 : readme.index("```", start)]
    model, data = str(SAMPLES / "dying_mlp.keras"), str(SAMPLES / "probe.npz")
    code, out, err = run_cli(["scan", model, "--data", data])
    assert code == 0, err
    assert [line.rstrip() for line in out.splitlines()] == block[:-1]
    hint = err.splitlines()[-1].replace(model, "samples/dying_mlp.keras").replace(data, "samples/probe.npz")
    assert hint == block[-1]
    assert hint.endswith("; add --retrain to compare; add --why to see why they died")


# -- the next: hint -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """A real scan of the dying MLP (first 200 samples, rescaled), a data path with a space, the model in
    a temporary folder, and a custom-objects file: the flags the hint must carry."""
    import deadrelu

    folder = tmp_path_factory.mktemp("hint")
    model = folder / "dying.keras"
    shutil.copy(SAMPLES / "dying_mlp.keras", model)
    data = folder / "probe data.npz"
    shutil.copy(SAMPLES / "probe.npz", data)
    custom = folder / "custom.py"
    custom.write_text("def unused_activation(x):\n    return x\n")
    report = deadrelu.scan(deadrelu.load_model(str(model)), str(data), samples=200, rescale=1 / 255, batch_size=64)
    return report, model, data, custom


def scan_args(model, data, custom, *extra: str):
    from deadrelu.cli import build_parser

    argv = ["scan", str(model), "--data", str(data), "--samples", "200", "--batch-size", "64", "--rescale", "1/255"]
    return build_parser().parse_args([*argv, "--custom-objects", str(custom), "--unsafe", *extra])


def with_cause(report: Report, kind: str, evidence: dict | None = None) -> Report:
    """The report with every dead unit given one cause (and its evidence), as `--why` would."""
    report = Report.from_dict(report.to_dict())
    for site in report.sites:
        site.dead_causes = [kind] * len(site.dead)
        site.causes = {kind: len(site.dead)} if site.dead else {}
        site.cause_evidence = {kind: evidence or {}} if site.dead else {}
    report.why = {
        "init_baseline": {"seeds": [0, 1, 2], "samples": 200, "dead_fraction": {}},
        "training": dict(TRAINING),
        "findings": [],
        "recommendations": [{"cause": kind, "units": report.summary["dead"], "action": "…"}],
    }
    return report


HINTS = {
    "killed_in_training": ("revive", "were killed in training", "(it was 0.05, 50× Adam's default 0.001)"),
    "born_dead": ("patch", "were born dead", "or change the initialiser or the architecture"),
    "starved": ("revive", "are starved by dead units upstream: fix hidden_1 first", "--site hidden_1"),
    "output_relu": ("patch", "sit behind a ReLU on a model output", "--site hidden_1 --site hidden_2 --site hidden_3"),
    "data_dependent": ("scan", "may fire on data the scan did not see: scan more data", "reads all of it"),
}


@pytest.mark.parametrize("kind", list(HINTS))
def test_hint_follows_the_dominant_cause_and_its_command_runs(kind, scanned, tmp_path, run_cli):
    from deadrelu.commands.scan import next_step

    report, model, data, custom = scanned
    evidence = {"preact_value": 0.0, "upstream": [{"path": "hidden_1", "dead": 5, "units": 64}]}
    report = with_cause(report, kind, evidence if kind == "starved" else None)
    hint = next_step(report, scan_args(model, data, custom))
    verb, words, detail = HINTS[kind]
    assert hint.startswith(f"next: the {report.summary['dead']:,} dead units {words}") and detail in hint, hint
    commands = [shlex.split(c) for c in re.findall(r"`([^`]+)`", hint)]
    assert len(commands) == 1
    command = commands[0]
    assert command[:3] == ["deadrelu", verb, str(model)]
    # The model is read as the scan read it; revive and scan read the data the same way too.
    assert command[command.index("--custom-objects") + 1] == str(custom) and "--unsafe" in command
    if verb != "patch":
        assert command[command.index("--data") + 1] == str(data)  # a path with a space, quoted
        assert command[command.index("--rescale") + 1] == "1/255" and "--batch-size" in command
        assert ("--samples" in command) == (verb == "revive")  # scanning more data: all of it
    out = ["-o", str(tmp_path / "out.keras")] if verb != "scan" else []
    code, _, err = run_cli([*command[1:], *out, "--quiet"])
    assert code == 0, err


def test_hint_without_why_says_add_why(scanned):
    from deadrelu.commands.scan import next_step

    report, model, data, custom = scanned
    hint = next_step(report, scan_args(model, data, custom))
    assert hint.endswith("; add --retrain to compare; add --why to see why they died")
    assert "--rescale 1/255" in hint and "--samples 200" in hint
    # No flagged site (a few dead units in a healthy model): no hint, as before.
    quiet = Report.from_dict(report.to_dict())
    for site in quiet.sites:
        site.flagged = False
    assert report.summary["dead"] and next_step(quiet, scan_args(model, data, custom)) is None


def test_data_dependent_hint_without_samples_names_more_data(scanned):
    from deadrelu.cli import build_parser
    from deadrelu.commands.scan import next_step

    report, model, data, _ = scanned
    args = build_parser().parse_args(["scan", str(model), "--data", str(data)])
    hint = next_step(with_cause(report, "data_dependent"), args)
    assert f"`deadrelu scan {model} --data MORE_DATA --why`" in hint
    assert "(MORE_DATA: more than the 200 samples scanned)" in hint


def test_starved_hint_names_the_site_where_the_chain_of_starved_sites_begins():
    """hidden_1's units are starved by hidden_2's, and SCRIPT_PATH's by hidden_1's: fix hidden_2 (whose
    own dead units were killed in training), not hidden_1, though it comes first and starves more."""
    from deadrelu.cli import build_parser
    from deadrelu.commands.scan import next_step

    report = plain_report()
    plan = {
        "hidden_1": ("starved", [{"path": "hidden_2", "dead": 8, "units": 16}]),
        "hidden_2": ("killed_in_training", None),
        SCRIPT_PATH: ("starved", [{"path": "hidden_1", "dead": 48, "units": 64}]),
        "head": ("killed_in_training", None),
    }
    for site in report.sites:
        kind, upstream = plan.get(site.path, ("killed_in_training", None))
        site.dead_causes = [kind] * len(site.dead)
        site.causes = {kind: len(site.dead)} if site.dead else {}
        site.cause_evidence = {kind: {"preact_value": 0.0, "upstream": upstream} if upstream else {}}
    report.why = {"findings": [], "recommendations": [], "training": None}
    args = build_parser().parse_args(["scan", "models/net.keras", "--data", "x.npz"])
    assert next_step(report, args) == (
        "next: 50 of the 59 dead units are starved by dead units upstream: fix hidden_2 first, "
        "`deadrelu revive models/net.keras --data x.npz --site hidden_2`; then scan again"
    )

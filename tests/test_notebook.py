"""A real notebook run by nbclient on an ipykernel kernel: the report, the patch result and the
monitor's timeline display as HTML tables; progress from `scan(verbose=1/2)` and from `!deadrelu scan`
contains no raw escape codes. Without a kernel: the HTML and rich views of each result, one-line
reprs, the progress views and the command line's progress in a pipe."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest

import deadrelu

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
MODEL, PROBE = SAMPLES / "dying_mlp.keras", SAMPLES / "probe.npz"
# Any escape sequence but colours (SGR, "ESC [ ... m", which notebooks render): cursor moves, line
# erases, hidden cursor, ...
CURSOR_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-ln-z]|\x1b[^\[]|\r(?!\n)")

CELLS = {
    "report": f"""
import deadrelu
report = deadrelu.scan({str(MODEL)!r}, {str(PROBE)!r}, verbose=1, batch_size=100)
report""",
    "lines": f"_ = deadrelu.scan({str(MODEL)!r}, {str(PROBE)!r}, verbose=2, batch_size=400)",
    "patch": f"deadrelu.patch_model(deadrelu.load_model({str(MODEL)!r}), 'leaky', report=report)",
    "timeline": f"""
import keras, numpy as np
model = deadrelu.load_model({str(MODEL)!r})
x, y = np.load({str(PROBE)!r})['x'][:200], np.load({str(PROBE)!r})['y'][:200]
monitor = deadrelu.DeadReluMonitor(x, verbose=0)
model.fit(x, y, epochs=2, batch_size=100, verbose=0, callbacks=[monitor])
monitor.timeline""",
    "shell": f"!{sys.executable} -m deadrelu scan {MODEL} --data {PROBE} --batch-size 100",
}


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict[str, list]:
    """Cell name → its outputs, from a notebook executed on a fresh kernel."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source.strip()) for source in CELLS.values()]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder = tmp_path_factory.mktemp("notebook")
    client = nbclient.NotebookClient(
        notebook, timeout=120, startup_timeout=60, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"a notebook cell failed: {error}")
    nbformat.write(notebook, folder / "executed.ipynb")
    return {name: cell.outputs for name, cell in zip(CELLS, notebook.cells)}


def _texts(outputs: list) -> list[str]:
    """Every text an output list holds: streams, and each mime type of displays and results."""
    texts = []
    for output in outputs:
        if output.output_type == "stream":
            texts.append(output.text)
        elif output.output_type in ("display_data", "execute_result"):
            texts += [value for value in output.data.values() if isinstance(value, str)]
        elif output.output_type == "error":
            texts.append("\n".join(output.traceback))
    return texts


def _html(outputs: list) -> list[str]:
    return [
        o.data["text/html"]
        for o in outputs
        if o.output_type in ("display_data", "execute_result") and "text/html" in o.data
    ]


def test_report_displays_as_an_html_table(executed):
    result = [o for o in executed["report"] if o.output_type == "execute_result"]
    assert len(result) == 1
    html, plain = result[0].data["text/html"], result[0].data["text/plain"]
    assert plain == "<Report dying_mlp: 104/192 units dead (54.2%) in 3 sites, 1,000 samples>"
    assert "<table" in html and "dying_mlp: 104 of 192 units dead (54.2%)" in html
    # Worst sites first, every one flagged in red; the overview figure inline.
    rows = re.findall(r"<tr>.*?</tr>", html.split("<tbody>", 1)[1])
    assert [re.search(r"hidden_\d", row)[0] for row in rows] == ["hidden_1", "hidden_3", "hidden_2"]
    assert all("✗ flagged" in row and "color:#c0392b" in row for row in rows)
    assert '<img src="data:image/png;base64,' in html


def test_progress_shows_without_escape_codes(executed):
    outputs = executed["report"]
    bars = [html for html in _html(outputs) if "<progress" in html]
    assert bars and 'value="1000" max="1000"' in bars[-1]  # the last update: done
    finished = [o.data["text/plain"] for o in outputs if o.output_type == "display_data"]
    assert finished == ["scanning: done, 1,000 samples in " + finished[0].rsplit(" in ", 1)[1]]
    lines = "".join(o.text for o in executed["lines"] if o.output_type == "stream").splitlines()
    assert lines[:3] == [
        f"scanning: {n:,}/1,000 samples ({n // 10}%), " + lines[i].rsplit(", ", 1)[1]
        for i, n in enumerate((400, 800, 1000))
    ]
    assert lines[3].startswith("scanning: done, 1,000 samples in ")
    for name in ("report", "lines", "shell"):
        for text in _texts(executed[name]):
            assert not CURSOR_CODES.search(text), f"{name}: escape codes in {text!r}"
        assert not any("ipywidgets" in text for text in _texts(executed[name]))


def test_command_line_in_a_cell_prints_plain_progress(executed):
    text = "".join(_texts(executed["shell"]))
    assert "deadrelu: scanning: done, 1,000 samples in " in text
    assert "hidden_1" in text and "104 of 192 units dead" in text  # the table, unfolded


def test_patch_result_and_timeline_display_as_tables(executed):
    (patch,) = _html(executed["patch"])
    assert "3 sites rewritten to LeakyReLU(0.01)" in patch and patch.count("<tr>") == 4
    (timeline,) = _html(executed["timeline"])
    assert "2 checks (epochs 1–2)" in timeline and timeline.count("<tr>") == 3
    assert '<img src="data:image/png;base64,' in timeline
    plain = [o.data["text/plain"] for o in executed["timeline"] if o.output_type == "execute_result"]
    assert plain[0].startswith("<Timeline 2 checks") and "\n" not in plain[0]


# -- without a kernel ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report():
    return deadrelu.scan(MODEL, PROBE, verbose=0)


def _rich_text(renderable) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def test_report_views_worst_first_limited_and_escaped(report):
    text = _rich_text(report)
    order = [line.split("│")[2].strip() for line in text.splitlines() if "│ hidden_" in line]
    assert order == ["hidden_1", "hidden_3", "hidden_2"] and "104 of 192 units dead" in text
    # Many sites: 20 rows and a count of the others; text from the report is escaped.
    many = deadrelu.Report.from_dict(report.to_dict())
    many.sites = [deadrelu.SiteReport.from_dict(s.to_dict()) for s in report.sites * 9]
    many.sites[0].path = "<script>x"
    html = many._repr_html_()
    assert html.split("<tbody>", 1)[1].count("<tr>") == 20 and "7 more sites" in html
    assert "&lt;script&gt;x" in html and "<script" not in html
    assert "7 more sites" in _rich_text(many)


def test_patch_revive_and_timeline_views(report):
    from deadrelu.timeline import Timeline, make_check

    patched = deadrelu.patch_model(deadrelu.load_model(MODEL), "leaky", report=report)
    assert repr(patched) == "<PatchResult dying_mlp: 3 sites rewritten to LeakyReLU(0.01), 0 kept, 0 skipped>"
    assert "Dense(activation='relu')" in _rich_text(patched) and patched._repr_html_().count("<tr>") == 4
    revived = deadrelu.revive_model(deadrelu.load_model(MODEL), report, seed=0)
    assert repr(revived) == "<ReviveResult dying_mlp: 104 dead units revived (ReDo) in 3 sites, 0 sites skipped>"
    assert "1–6, 9, 11–14" in revived._repr_html_() and "hidden_3" in _rich_text(revived)

    first = make_check(report, None, epoch=1, step=10)
    timeline = Timeline([first, make_check(report, first, epoch=2, step=20)])
    assert repr(timeline) == "<Timeline 2 checks (epochs 1–2): dead 54.2% → 54.2%, dying 1.6% at the last>"
    assert timeline._repr_html_().count("<tr>") == 3 and "│     2 │   20 │" in _rich_text(timeline)
    assert repr(Timeline()) == "<Timeline no checks yet: the monitor checks during fit>"


def test_prune_views(report):
    from deadrelu.fixes.prune import prune_model
    from deadrelu.views.notebook import prune_html, prune_renderable, prune_summary

    result = prune_model(deadrelu.load_model(MODEL), report)
    text, _ = prune_summary(result)
    assert text.startswith("dying_mlp: 104 units removed at 3 sites, params 25,418 → ")
    html = prune_html(result)
    assert html.count("<tr>") == 4 + 5 and "1–6, 9, 11–14" in html  # 3 sites, 4 layers changed, 2 headers
    assert "64 → 16" in html and "outputs unchanged: max |Δ| = 0" in html
    shown = _rich_text(prune_renderable(result))
    assert "hidden_2" in shown and "parameters: 25,418 → 6,419" in shown and "outputs unchanged" in shown


def test_progress_views_without_a_terminal(monkeypatch):
    from deadrelu.progress import Progress, notebook_shell, resolve_verbose

    out = io.StringIO()
    with Progress("scanning", verbose=2, unit="samples", file=out) as progress:
        progress.start(1000)
        progress.advance(600)
        progress.advance(400)
    lines = out.getvalue().splitlines()
    assert [line.rsplit(", ", 1)[0] for line in lines[:2]] == [
        "scanning: 600/1,000 samples (60%)",
        "scanning: 1,000/1,000 samples (100%)",
    ]
    assert len(lines) == 3 and lines[2].startswith("scanning: done, 1,000 samples in ")
    # verbose=1 where no bar can be drawn: a line per `interval` seconds (none here), and the end.
    out = io.StringIO()
    with Progress("reviving", verbose=1, file=out, interval=3600, prefix="deadrelu: ") as progress:
        progress.start(None)
        progress.advance(5)
    assert re.fullmatch(r"deadrelu: reviving: done, 5 in \d+\.\d s\n", out.getvalue())
    assert resolve_verbose("auto") == 0  # not a notebook, not an interactive prompt
    with pytest.raises(deadrelu.UsageError, match="`verbose` must be"):
        resolve_verbose(3)
    monkeypatch.delenv("JPY_PARENT_PID", raising=False)
    monkeypatch.setenv("PAGER", "less")
    assert not notebook_shell()
    monkeypatch.setenv("JPY_PARENT_PID", "1")
    assert notebook_shell()


def test_command_line_progress_in_a_pipe(run_cli):
    code, _, err = run_cli(["scan", MODEL, "--data", PROBE])
    assert code == 0 and re.search(r"^deadrelu: scanning: done, 1,000 samples in \d+\.\d s$", err, re.M)
    assert "\x1b" not in err
    code, _, err = run_cli(["scan", MODEL, "--data", PROBE, "--quiet"])
    assert code == 0 and "scanning" not in err

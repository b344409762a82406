"""A real notebook run by nbclient on an ipykernel kernel: the report, the patch result and the
monitor's timeline display as HTML tables; progress from `scan(verbose=1/2)` and from `!deadrelu scan`
contains no raw escape codes."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

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
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source.strip()) for source in CELLS.values()]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder = tmp_path_factory.mktemp("notebook")
    client = nbclient.NotebookClient(notebook, timeout=120, startup_timeout=60, kernel_name="python3",
                                     resources={"metadata": {"path": str(folder)}})
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
    return [o.data["text/html"] for o in outputs
            if o.output_type in ("display_data", "execute_result") and "text/html" in o.data]


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
    assert lines[:3] == [f"scanning: {n:,}/1,000 samples ({n // 10}%), " + lines[i].rsplit(", ", 1)[1]
                         for i, n in enumerate((400, 800, 1000))]
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

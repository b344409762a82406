"""Issue 29, the smaller items: files that plain Keras loads silently, a site's HTML view, the HTML
page's header / next steps / compact layout / compare title, the prune table's notes and legend, and
the prune timing switch. (The backend named first on stderr: tests/backends/test_backend_selection.py,
which tests/test_backends.py runs in a KERAS_BACKEND=jax and a KERAS_BACKEND=torch process.)"""

from __future__ import annotations

import datetime
import io
import logging
import re
import socket
import warnings

import keras
import numpy as np
import pytest
from rich.console import Console

import deadrelu
from deadrelu.cli import main
from deadrelu.compare import compare_reports
from deadrelu.io.saving import save_model
from deadrelu.views.html import render_html
from deadrelu.views.notebook import prune_html, prune_renderable
from deadrelu.views.prune_tables import LIVE_REMOVED, reason_legend
from paths import SAMPLES
from test_html import Page
from test_plots import make_report

MODEL, PROBE = str(SAMPLES / "dying_mlp.keras"), str(SAMPLES / "probe.npz")


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def probe():
    with np.load(PROBE) as f:
        return f["x"][:300].astype("float32"), f["y"][:300]


@pytest.fixture(scope="module")
def mlp_report(probe):
    return deadrelu.scan(deadrelu.load_model(MODEL), probe[0], verbose=0)


# -- (1) a fixed file loads with plain Keras: compiled, no optimizer warning, fit runs ------------


def _load_quietly_or_not(path) -> tuple[keras.Model, str]:
    """Plain `keras.saving.load_model`, with every Python warning and every log record it emits."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    loggers = [logging.getLogger(), logging.getLogger("absl"), logging.getLogger("keras")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = keras.saving.load_model(path)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    return model, "\n".join(str(w.message) for w in caught) + stream.getvalue()


@pytest.fixture(scope="module")
def fixed(probe, mlp_report):
    """The sample's pruned and revived models, as the commands save them (fresh optimizers)."""
    x = probe[0][:100]
    original = deadrelu.load_model(MODEL)
    pruned = deadrelu.prune_model(original, mlp_report, data=x).model
    revived = deadrelu.revive_model(original, mlp_report, data=x, seed=0).model
    return original, {"pruned": pruned, "revived": revived}


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_pruned_and_revived_files_load_silently_and_train(tmp_path, probe, fixed, ext):
    x, y = probe
    original, models = fixed
    for name, model in models.items():
        path = tmp_path / f"{name}{ext}"
        save_model(model, path)
        loaded, said = _load_quietly_or_not(path)
        assert "Skipping variable loading for optimizer" not in said, (name, said)
        assert "optimizer" not in said.lower(), (name, said)
        # Compiled like the original: loss, optimizer class and learning rate.
        assert loaded.compiled
        assert type(loaded.optimizer) is type(original.optimizer)
        assert float(loaded.optimizer.learning_rate) == pytest.approx(float(original.optimizer.learning_rate))
        assert "accuracy" in str(loaded.get_compile_config()["metrics"])
        if name == "pruned":  # fit right after loading (the .h5 optimizer Keras restores could not)
            history = loaded.fit(x[:64], y[:64], epochs=1, batch_size=32, verbose=0)
            assert np.isfinite(history.history["loss"][0]) and "accuracy" in history.history
            assert int(loaded.optimizer.iterations) == 2  # two steps from a fresh optimizer


# -- (2) report.site(...) in a notebook ---------------------------------------------------------


def test_site_html_shows_every_units_numbers(mlp_report):
    site = mlp_report.site(0)
    page = Page(site._repr_html_())
    assert f"{len(site.dead)} of {site.units} units dead" in page.text
    table = page.table("unit")
    header = [cell.text for cell in table[0]]
    assert header[:8] == ["unit", "status", "fires", "active rate", "samples", "mean |out|", "dormancy", "max out"]
    rows = table[1:]
    assert [int(row[0].text) for row in rows] == list(range(site.units))
    for unit, row in enumerate(rows):
        assert row[1].text == site.status(unit)
        assert row[2].text == f"{int(site.fires[unit]):,}"
        assert row[3].text == f"{site.active_rate[unit]:.2%}"
        assert float(row[5].text) == pytest.approx(site.mean_abs[unit], rel=1e-2, abs=1e-3)
        assert ("c0392b" in row[1].style) == (unit in site.dead)  # dead units in red
    assert sum(row[1].text == "dead" for row in rows) == len(site.dead) > 0
    assert page.images  # the site's unit figure


# -- (3) the HTML page: header, what to do next, compact, compare title ---------------------------


def test_html_header_next_steps_and_closed_site_figures(tmp_path, capfd):
    page_path = tmp_path / "scan.html"
    code = cli("scan", MODEL, "--data", PROBE, "--samples", "120", "--html", page_path, "--json", tmp_path / "s.json")
    _, err = capfd.readouterr()
    assert code == 0, err
    terminal = next(line for line in err.splitlines() if line.startswith("deadrelu: next: "))
    text = page_path.read_text(encoding="utf-8")
    page = Page(text)
    # The header: when (UTC, ISO 8601), where, which versions, which backend.
    written = re.search(r"written (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) on (\S+)", page.text)
    assert written, page.text[:500]
    when = datetime.datetime.strptime(written[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) < 600
    assert written[2] == socket.gethostname()
    for needle in (f"deadrelu {deadrelu.__version__}", f"Keras {keras.__version__}", "backend tensorflow"):
        assert needle in page.text, needle
    # "What to do next": the terminal's line, word for word, its commands as code.
    assert "What to do next" in page.text
    item = re.search(r'<ul class="next"><li>(.*?)</li>', text)[1]
    assert re.sub(r"</?code>", "`", item).replace("&#x27;", "'") == terminal.removeprefix("deadrelu: next: ")
    commands = re.findall(r"<code>(.*?)</code>", item)
    assert commands and all(c.startswith("deadrelu ") and "--samples 120" in c for c in commands if "--data" in c)
    # Compact: the summary and the site table before the figures; each site's figure behind a closed line.
    assert text.index("What to do next") < text.index("<h2>Sites</h2>") < text.index("<h2>Figures</h2>")
    report = deadrelu.Report.from_json(str(tmp_path / "s.json"))
    closed = re.findall(r'<details id="site-(\d+)"><summary>(.*?)</summary>\s*<figure>', text)
    assert [int(i) for i, _ in closed] == list(range(len(report.sites)))
    for (_, line), site in zip(closed, report.sites):
        assert f"{len(site.dead):,} of {site.units:,} units dead" in line
    assert "<details open" not in text


def test_compare_page_is_titled_by_the_files(tmp_path, capfd):
    report = make_report(1, seed=3)  # one small site: few figures to draw
    new, old = tmp_path / "epoch_9.json", tmp_path / "epoch_1.json"
    report.to_json(str(new))
    report.to_json(str(old))
    code = cli("report", new, "--compare", old, "--html", tmp_path / "diff.html", "--quiet")
    assert code == 0, capfd.readouterr()
    text = (tmp_path / "diff.html").read_text(encoding="utf-8")
    assert "<title>deadrelu report: epoch_9.json vs epoch_1.json</title>" in text
    assert "<h1>deadrelu report: epoch_9.json vs epoch_1.json</h1>" in text
    # The library's default with a diff: the two model files, not the model's name twice.
    diff = compare_reports(report, report)
    assert "<h1>deadrelu report: net.keras vs net.keras</h1>" in render_html(report, diff=diff, site_figures=0)


# -- (4) the prune table: live units removed with a depthwise channel; a shared reason said once --


def _depthwise_model() -> tuple[keras.Model, np.ndarray]:
    """Two blocks of 1×1 conv (ReLU) → DepthwiseConv (ReLU), with planted units:

    - conv `c1` channel 1 dead (zero kernel, bias −1): depthwise `d1` channel 1 then reads only
      zeros and outputs its bias +0.5, a constant that its ReLU passes (alive, constant);
    - depthwise `d1` and `d2` channel 2 dead (zero kernel, bias −1) while the channel they read is
      alive: those dead units cannot go (a depthwise channel goes only with its input channel).
    """
    layers = keras.layers
    rng = np.random.default_rng(0)
    inputs = keras.Input((6, 6, 2))
    h = inputs
    for block in (1, 2):
        h = layers.Conv2D(4, 1, activation="relu", name=f"c{block}")(h)
        h = layers.DepthwiseConv2D(3, padding="same", activation="relu", name=f"d{block}")(h)
    outputs = layers.Dense(2, name="out")(layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, outputs)
    for block in (1, 2):
        conv, depthwise = model.get_layer(f"c{block}"), model.get_layer(f"d{block}")
        kernel = np.abs(rng.normal(size=conv.kernel.shape)).astype("float32")
        bias = np.full(4, 0.1, "float32")
        if block == 1:
            kernel[..., 1], bias[1] = 0.0, -1.0
        conv.set_weights([kernel, bias])
        kernel = np.abs(rng.normal(size=depthwise.kernel.shape)).astype("float32")
        bias = np.full(4, 0.1, "float32")
        kernel[..., 2, :], bias[2] = 0.0, -1.0
        bias[1] = 0.5
        depthwise.set_weights([kernel, bias])
    x = rng.uniform(0, 1, size=(64, 6, 6, 2)).astype("float32")
    return model, x


def test_prune_table_says_why_live_units_go_and_shared_reasons_once():
    model, x = _depthwise_model()
    report = deadrelu.scan(model, x, verbose=0)
    dead = {site.path: site.dead for site in report.sites}
    assert dead == {"c1": [1], "d1": [2], "c2": [], "d2": [2]}  # as planted
    result = deadrelu.prune_model(model, report, data=x)
    assert result.passed
    rows = {row["path"]: row for row in result.site_rows()}
    # d1's channel 1 was alive (a constant 0.5) and goes with c1's channel 1: removed, not selected.
    assert rows["d1"]["removed"] == [1] and rows["d1"]["candidates"] == [2] and rows["d1"]["kept"] == [2]
    assert rows["d2"]["kept"] == [2]
    console = Console(width=240, record=True, file=io.StringIO())
    console.print(prune_renderable(result, rows=None))
    shown = console.export_text()
    table = shown[: shown.index("layers changed")].splitlines()
    notes = {line.split("│")[1].strip(): line.split("│")[-2].strip() for line in table if "│ d" in line}
    assert notes["d1"] == "1 live removed [a]; 1 kept [1] d1"
    assert notes["d2"] == "1 kept [1] d2"
    # Each reason once, in the legend under the table, not on every row.
    legend = reason_legend(result)
    assert legend[0] == f"[a] {LIVE_REMOVED}" and "DepthwiseConv" in legend[0]
    assert legend[1].startswith("[1] the units of DepthwiseConv … follow its input channels")
    assert shown.count("follow its input channels") == 1
    assert shown.count("live units removed with their channel") == 1
    assert shown.index("[1] d2") < shown.index("[a] live units") < shown.index("layers changed")
    html = Page(prune_html(result))
    assert html.text.count("follow its input channels") == 1


# -- (5) prune's predict timing can be turned off ------------------------------------------------


def test_no_timing_times_nothing(tmp_path, monkeypatch, capfd):
    import deadrelu.fixes.model_utils as model_utils

    calls = []
    real = model_utils.compare_cost
    monkeypatch.setattr(model_utils, "compare_cost", lambda *a, **k: calls.append(1) or real(*a, **k))
    base = ["prune", MODEL, "--data", PROBE, "--samples", "200", "--force"]
    assert cli(*base, "-o", tmp_path / "a.keras", "--no-timing") == 0
    out, err = capfd.readouterr()
    assert calls == [] and "predict on" not in out and "timing predict" not in err
    assert "parameters: 25,418 →" in out  # the rest of the view is there (test_prune times with the flag off)

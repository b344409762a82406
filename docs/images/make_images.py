"""Regenerates the pictures of docs/notebooks.md and docs/monitor.md from a real notebook run.

Runs a notebook on an ipykernel kernel (nbclient), renders it as HTML (nbconvert) and takes
screenshots with headless Chromium (`--views`: only the two pictures of docs/notebooks.md's HTML
views, report_html.png and notebook_site.png); the notebook trains the sample with the monitor and a
TensorBoard callback, whose event files are then read back (the unit map) and shown by a local
TensorBoard server (127.0.0.1 only). Needs `pip install -e ".[test]" nbconvert` and
`apt-get install chromium`. Run from anywhere: `python docs/images/make_images.py`.

Writes, in this folder: report_html.png (the top of the page `deadrelu scan --html` writes),
notebook_site.png (`report.site("hidden_1")` in a notebook: every unit's numbers and its figure),
notebook_report.png (a scan in a notebook: progress bar and report),
notebook_timeline.png (the monitor's timeline), tensorboard_unit_map.png (the image TensorBoard
shows under deadrelu/unit_map), tensorboard_histograms.png (TensorBoard's histograms tab).
"""

from __future__ import annotations

import io
import os
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parents[1] / "samples"

CELLS = [
    'import deadrelu\nreport = deadrelu.scan("samples/dying_mlp.keras", "samples/probe.npz", verbose=1)',
    "report",
    """import keras, numpy as np
probe = np.load("samples/probe.npz")
x, y = probe["x"], probe["y"]
model = deadrelu.load_model("samples/dying_mlp.keras")
monitor = deadrelu.DeadReluMonitor(x[:500], on_dead="revive", max_dead_fraction=0.5, seed=0, verbose=0)
model.fit(x[500:], y[500:], epochs=6, batch_size=50, verbose=0,
          callbacks=[keras.callbacks.TensorBoard("logs"), monitor])  # any order
monitor.timeline""",
]


VIEW_CELLS = [
    'import deadrelu\nreport = deadrelu.scan("samples/dying_mlp.keras", "samples/probe.npz", verbose=0)\n'
    'report.site("hidden_1")  # one site: every unit\'s numbers and its unit figure',
]


def views() -> None:
    """report_html.png (the top of `deadrelu scan --html`'s page) and notebook_site.png (`report.site(...)`
    in a notebook run on a kernel)."""
    import sys

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "samples").symlink_to(SAMPLES)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        scan = [sys.executable, "-m", "deadrelu", "scan", "samples/dying_mlp.keras", "--data", "samples/probe.npz"]
        subprocess.run([*scan, "--html", "report.html", "--quiet"], cwd=work, env=env, check=True, capture_output=True)
        # --quiet leaves the next: line out of stderr, not out of the page.
        screenshot(work / "report.html", HERE / "report_html.png", width=1280, height=1900)
        notebook = _run_notebook(VIEW_CELLS, work)
        _notebook_screenshot(notebook, work, "notebook_site", height=1000)


def _run_notebook(cells: list[str], work: Path):
    import nbclient
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    ).execute()
    for cell in notebook.cells:  # TensorFlow's start-up chatter on stderr is not what the pictures are about
        cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
    return notebook


def _notebook_screenshot(notebook, work: Path, name: str, *, height: int) -> None:
    from nbconvert import HTMLExporter

    html, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    (work / f"{name}.html").write_text(html, encoding="utf-8")
    screenshot(work / f"{name}.html", HERE / f"{name}.png", width=1100, height=height)


def main() -> None:
    import nbformat

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "samples").symlink_to(SAMPLES)
        notebook = _run_notebook(CELLS, work)
        first = nbformat.from_dict({**notebook, "cells": notebook.cells[:2]})
        last = nbformat.from_dict({**notebook, "cells": notebook.cells[2:]})
        _notebook_screenshot(first, work, "notebook_report", height=900)
        _notebook_screenshot(last, work, "notebook_timeline", height=1000)
        save_unit_map(work / "logs" / "deadrelu", HERE / "tensorboard_unit_map.png")
        tensorboard_screenshot(work, HERE / "tensorboard_histograms.png")


def tensorboard_screenshot(work: Path, out: Path) -> None:
    """TensorBoard's histograms tab for the notebook's log folder, served on 127.0.0.1 for the screenshot."""
    import socket
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(work / "logs"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        screenshot(
            f"http://127.0.0.1:{port}/?darkMode=false#histograms",
            out,
            width=1300,
            height=720,
            folder=work,
            wait_ms=20000,
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


def screenshot(
    page: Path | str, out: Path, *, width: int, height: int, folder: Path | None = None, wait_ms: int = 0
) -> None:
    """A headless Chromium screenshot of `page` (a file or a URL), cropped to its content and saved
    with a 256-colour palette."""
    from PIL import Image, ImageChops

    folder = folder or page.parent
    raw = folder / f"{out.stem}.raw.png"
    wait = [f"--virtual-time-budget={wait_ms}"] if wait_ms else []
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={folder / 'chromium'}",
            f"--screenshot={raw}",
            f"--window-size={width},{height}",
            *wait,
            page if isinstance(page, str) else page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    image = Image.open(raw).convert("RGB")
    box = ImageChops.difference(image, Image.new("RGB", image.size, "white")).getbbox()
    if box:
        image = image.crop((0, 0, width, min(height, box[3] + 16)))
    image.quantize(colors=256).save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")


def save_unit_map(run: Path, out: Path) -> None:
    """The last `deadrelu/unit_map` image of the event files in `run`, as TensorBoard stores it (PNG)."""
    import tensorflow as tf
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"tensors": 0})
    events.Reload()
    last = events.Tensors("deadrelu/unit_map")[-1]
    width, height, png = tf.make_ndarray(last.tensor_proto)
    image = Image.open(io.BytesIO(png))
    assert image.size == (int(width), int(height))
    image.convert("RGB").quantize(colors=256).save(out, optimize=True)
    print(f"wrote {out} (step {last.step}, {image.size[0]}×{image.size[1]}, {out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    import sys

    if "--views" in sys.argv[1:]:  # only report_html.png and notebook_site.png
        views()
    else:
        main()
        views()

"""The same file scanned on TensorFlow, JAX and PyTorch gives the same report.

Each backend runs `deadrelu scan ... --gradients --json` in its own process (KERAS_BACKEND set; the
three at once), on the sample model and on a real CNN from ../shared/models. The reports must agree: counts and
verdicts exactly, activation statistics to 1e-5 relative and gradient statistics to 1e-4 (per-unit
numbers relative to the site's largest: a near-dead unit's gradient of 1e-8 is a difference of
float32 rounding, not of meaning). A backend that is not installed is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

from paths import ROOT, SAMPLES
from processes import run_at_once

OTHER_BACKENDS = [b for b in ("jax", "torch") if importlib.util.find_spec(b) is not None]
# Where the backends may differ without being wrong: the backend named, where the run happened.
IGNORED = {"tool", "settings"}
RTOL = 1e-5
# Gradients go back through each backend's own float32 kernels (convolutions above all), whose
# rounding differs by a few 1e-6 per layer.
GRAD_RTOL = 1e-4


def _scan_all(backends: list[str], args: list[str], tmp_path) -> dict[str, dict]:
    """Runs the scan on every backend at once (each process mostly imports and compiles on one core)."""
    outs = [tmp_path / f"{backend}.json" for backend in backends]
    scan = [sys.executable, "-m", "deadrelu", "scan", *args, "--gradients", "--quiet", "--json"]
    argvs = [[*scan, str(out)] for out in outs]
    envs = [dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="") for backend in backends]
    reports = {}
    for backend, out, done in zip(backends, outs, run_at_once(argvs, envs=envs, cwd=ROOT, timeout=240)):
        assert done.returncode == 0, f"{backend}: exit {done.returncode}\n{done.stderr[-3000:]}"
        reports[backend] = json.loads(out.read_text())
    return reports


def _differences(a, b, path: str = "", scale: float = 0.0) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - (IGNORED if not path else set())
        return [d for k in sorted(keys) for d in _differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} entries"]
        numbers = [abs(v) for v in a + b if isinstance(v, float)]
        scale = max(numbers, default=0.0)  # per-unit numbers: relative to the site's largest
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]", scale)]
    if isinstance(a, float) or isinstance(b, float):
        rtol = GRAD_RTOL if "grad" in path or "loss" in path else RTOL
        if a is None or b is None or abs(a - b) > rtol * max(abs(a), abs(b), scale) + 1e-12:
            return [f"{path}: {a} vs {b}"]
        return []
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


CASES = {
    "sample": lambda shared: [SAMPLES / "dying_mlp.keras", "--data", SAMPLES / "probe.npz"],
    "real_cnn": lambda shared: [
        shared("models", "moonflower_mnist_cnn_k311.keras"),
        "--data",
        f"{shared('data', 'mnist.npz')}:x_test",
        "--labels",
        f"{shared('data', 'mnist.npz')}:y_test",
        "--samples",
        "500",
    ],
}


@pytest.mark.skipif(not OTHER_BACKENDS, reason="neither jax nor torch is installed")
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_backend_gives_the_same_report(case, shared, tmp_path):
    args = [str(a) for a in CASES[case](shared)]
    reports = _scan_all(["tensorflow", *OTHER_BACKENDS], args, tmp_path)
    reference = reports.pop("tensorflow")
    assert reference["sites"] and any(site["grad_zero_rate"] for site in reference["sites"])
    for backend, report in reports.items():
        differences = _differences(reference, report)
        assert not differences, f"{backend} differs from tensorflow:\n" + "\n".join(differences[:20])

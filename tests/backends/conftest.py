"""Tests that run on whichever Keras backend this process has: TensorFlow, JAX or PyTorch.

The normal suite runs this folder on TensorFlow; tests/test_backends.py runs it again in one
subprocess per other backend (`KERAS_BACKEND=jax`, `KERAS_BACKEND=torch`). So a test here must
work on all three, read the backend from `keras.backend.backend()` (the `backend` fixture) when
it matters, and stay quick: each backend pays for its own process.

Adding tests:

- Write them as for the rest of the suite (the fixtures of tests/conftest.py, `run_cli` and
  `shared`, work here too). Name files `test_backend_*.py`: test files share one namespace with
  those in tests/.
- Numbers are checked against plain Keras outputs reduced with numpy, never against the same code
  path: `measured_report` makes a scan report from a plain forward pass (no engine), so the
  fixing commands are tested on real dead units even where the engine were wrong, and
  test_backend_fixing.py checks the engine against it.
- A helper shared with tests/ (`models`, `paths`) imports directly, as in tests/.
"""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import keras
import numpy as np
import pytest

from paths import SAMPLES


@pytest.fixture(scope="session")
def backend() -> str:
    """The Keras backend of this process: "tensorflow", "jax" or "torch"."""
    return keras.backend.backend()


@pytest.fixture(scope="session")
def dying_mlp() -> Path:
    """samples/dying_mlp.keras: three Dense(64, relu) layers, 104 of 192 units dead on probe.npz."""
    return SAMPLES / "dying_mlp.keras"


@pytest.fixture(scope="session")
def probe_npz() -> Path:
    """samples/probe.npz: the 1,000 samples (`x`, labels `y`) the sample's verdicts are measured on."""
    return SAMPLES / "probe.npz"


@pytest.fixture(scope="session")
def probe_x(probe_npz) -> np.ndarray:
    with np.load(probe_npz) as f:
        return f["x"].astype("float32")


def measured_report(model, x: np.ndarray, source: str = "in-memory"):
    """A scan `Report` of `model` on `x`, measured with a plain forward pass instead of the engine.

    Only layer-level sites of the top model whose layer output is the ReLU's output (a fused
    activation, an `Activation` or `ReLU` layer); the verdicts are drawn by the library's own
    `deadrelu.report.site_report`.

    Args:
        model: A Functional or Sequential `keras.Model`.
        x: The inputs (all of them in one array).
        source: What `report.data["source"]` says (prune reads its data from there).

    Returns:
        A `deadrelu.report.Report`.
    """
    from deadrelu.engine.sites import find_sites
    from deadrelu.report import Report, Thresholds, site_report

    sites = [site for site in find_sites(model).sites if not site.op_level and "/" not in site.path]
    probe = keras.Model(model.inputs, [site.layer.output for site in sites])
    outputs = probe.predict(x, verbose=0, batch_size=500)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    reports = []
    for site, out in zip(sites, outputs):
        out = np.moveaxis(np.asarray(out, np.float64), site.channel_axis, -1)
        units = out.shape[-1]
        per_unit = out.reshape(len(x), -1, units)  # (sample, position, unit)
        positions = per_unit.shape[1]
        firing = per_unit != 0
        mean_abs = np.abs(per_unit).mean(axis=(0, 1))
        stats = types.SimpleNamespace(
            site=site,
            units=units,
            positions=positions,
            calls=1,
            fires=firing.sum(axis=(0, 1)),
            active_rate=firing.mean(axis=(0, 1)),
            sample_active_rate=firing.any(axis=1).mean(axis=0),
            mean_abs=mean_abs,
            dormancy=mean_abs / max(mean_abs.mean(), 1e-12),
            max_output=per_unit.max(axis=(0, 1)),
            saturated_rate=None,
            grad_mean_abs=None,
            grad_zero_rate=None,
        )
        reports.append(site_report(stats, Thresholds()))
    thresholds = dataclasses.asdict(Thresholds())
    return Report(
        model={"path": None, "name": model.name, "sha256": None, "format": "in-memory"},
        data={"source": source, "samples": len(x)},
        settings={"batch_size": 500, **{f"{k}_threshold": v for k, v in thresholds.items()}},
        sites=reports,
    )


@pytest.fixture(scope="session")
def mlp_report(dying_mlp, probe_npz, probe_x):
    """The sample's report, measured on this backend without the engine (data: probe.npz)."""
    import deadrelu

    return measured_report(deadrelu.load_model(dying_mlp), probe_x, source=str(probe_npz))


@pytest.fixture
def mlp_report_file(mlp_report, tmp_path) -> Path:
    """`mlp_report` as a JSON file, for the commands' --report."""
    path = tmp_path / "scan.json"
    path.write_text(json.dumps(mlp_report.to_dict()))
    return path

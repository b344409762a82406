"""`keras.distribution` on JAX (issue 28): a scan under `DataParallel` or `ModelParallel` runs on the
mesh — each batch split over the devices of its batch axis, the compiled step spanning them (XLA's
collectives sum the statistics) — and measures what a scan on one device measures.

Each case runs tests/jax_distribution/check_mesh.py in a process of its own (JAX with 2 host CPU
devices, which must be set before JAX starts), bounded in time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")

SCRIPT = Path(__file__).parent / "jax_distribution" / "check_mesh.py"
TIMEOUT = 240


@pytest.mark.parametrize("mode", ["data", "model"])
def test_a_scan_under_keras_distribution_runs_on_the_mesh_and_measures_the_same(mode):
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        done = subprocess.run(
            [sys.executable, str(SCRIPT), mode], capture_output=True, text=True, timeout=TIMEOUT, env=env
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the {mode}-parallel check took over {TIMEOUT} s and was killed:\n{exc.stderr}")
    assert done.returncode == 0, done.stderr[-6000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["devices"] == 2
    batch = 2 if mode == "data" else 1
    assert found["settings"]["devices"] == 2 and found["settings"]["mesh"]["batch"] == batch
    assert found["x_devices"] == [0, 1]  # the batch is on both devices (split, or replicated over "model")
    assert found["collective"]  # the compiled step combines the devices' work
    assert found["fires_equal"] and found["dead"][0] == found["dead"][1] and {2, 9} <= set(found["dead"][1])
    assert found["samples"] == [101, 101]  # the fill-up rows to a whole slice per device count nowhere
    assert found["max_rel"] < 1e-5

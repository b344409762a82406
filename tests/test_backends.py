"""tests/backends again on JAX and on PyTorch, each in a process of its own.

Keras picks its backend once per process, so the suite (which runs on TensorFlow) cannot switch:
each other backend gets a subprocess, `KERAS_BACKEND=<name> python -m pytest tests/backends`,
bounded in time (killed on timeout). A backend whose package is not installed is skipped:
`pip install -e ".[test]"` installs both (`'deadrelu[jax]'`, `'deadrelu[torch]'` for users).
On failure the inner pytest output is shown.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from paths import ROOT
from processes import run_at_once

# Seconds one backend's run may take (about 30 s on 2 cores today) before it is killed.
TIMEOUT = 300


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_suite(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install 'deadrelu[{backend}]')")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if backend == "jax":
        # Compiling dominates these small tests: without LLVM's optimisation of the compiled code
        # (XLA's HLO passes still run) the run takes 63 s instead of 94 s. Users and benchmarks keep it.
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
    command = [sys.executable, "-m", "pytest", "tests/backends", "-q", "-p", "no:cacheprovider", "-W", "ignore"]
    (done,) = run_at_once([command], envs=[env], cwd=ROOT, timeout=TIMEOUT, merge_stderr=True)
    output = done.stdout
    if done.returncode is None:  # killed, with pytest and anything it started
        pytest.fail(f"tests/backends on {backend} took over {TIMEOUT} s and was killed:\n{output[-6000:]}")
    assert done.returncode == 0, f"tests/backends on {backend} failed (exit {done.returncode}):\n{output[-12000:]}"
    assert " passed" in output.splitlines()[-1], output[-2000:]

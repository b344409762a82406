"""The command line's backend: KERAS_BACKEND when set and installed, else TensorFlow; one line says which."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from deadrelu.backends import SUPPORTED, requested, select
from deadrelu.errors import UsageError
from paths import ROOT


def test_a_non_default_backend_is_named_in_one_line(run_cli, dying_mlp, backend):
    code, out, err = run_cli(["inspect", dying_mlp])
    assert code == 0, err
    assert "dying_mlp: 3 ReLU sites" in out
    notes = [line for line in err.splitlines() if "backend" in line]
    if backend == "tensorflow":
        assert notes == []  # the default: the output is as it always was
    else:
        assert notes == [f"deadrelu: backend: {backend} (KERAS_BACKEND)"]


def test_the_backend_is_the_first_line_on_stderr(run_cli, dying_mlp, probe_npz, backend):
    # Run by tests/test_backends.py in a KERAS_BACKEND=jax (and =torch) process: docs/backends.md.
    code, _out, err = run_cli(["scan", dying_mlp, "--data", probe_npz, "--samples", "100"])
    assert code == 0, err
    lines = err.splitlines()
    assert len(lines) > 1 and lines[-1].startswith("deadrelu: next: ")  # the progress line, the next: line
    if backend == "tensorflow":
        assert not any("backend" in line for line in lines)
    else:
        assert lines[0] == f"deadrelu: backend: {backend} (KERAS_BACKEND)"
        assert lines.count(lines[0]) == 1


def test_bad_input_is_one_line_on_every_backend(run_cli, dying_mlp, tmp_path):
    # The backend is named with the first note or progress line: an error before any stays one line.
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 3), np.float32))
    code, out, err = run_cli(["scan", dying_mlp, "--data", wrong, "--quiet"])
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("deadrelu: error: "), err


@pytest.mark.parametrize("name", ["numpy", "JAX", "tensorflow2"])
def test_an_unknown_backend_is_refused_in_one_line(run_cli, dying_mlp, monkeypatch, name):
    monkeypatch.setenv("KERAS_BACKEND", name)
    code, out, err = run_cli(["inspect", dying_mlp])
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(f"deadrelu: error: KERAS_BACKEND={name} is not a backend deadrelu supports")
    assert "tensorflow, jax, torch" in err


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_a_backend_that_is_not_installed_names_the_pip_command(run_cli, dying_mlp, monkeypatch, name):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: None if module == name else real(module, *a))
    monkeypatch.setenv("KERAS_BACKEND", name)
    code, out, err = run_cli(["inspect", dying_mlp])
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1, err
    assert f"{name} is not installed; run `pip install 'deadrelu[{name}]'`" in err


def test_help_works_whatever_keras_backend_says(run_cli, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "no-such-backend")
    code, out, _ = run_cli(["--help"])
    assert code == 0
    assert "inspect" in out


def test_requested_reads_the_variable():
    assert requested({}) is None
    assert requested({"KERAS_BACKEND": " "}) is None
    installed = [name for name in SUPPORTED if importlib.util.find_spec(name)]
    for name in installed:
        assert requested({"KERAS_BACKEND": name}) == name
    with pytest.raises(UsageError, match="KERAS_BACKEND=openvino is not a backend deadrelu supports"):
        requested({"KERAS_BACKEND": "openvino"})


def test_select_keeps_the_backend_keras_already_runs(backend):
    env = {}
    assert select(env) == backend  # Keras is imported in this process: its backend stays
    assert env == {}


def _fresh(code: str, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    return subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_select_sets_keras_backend_before_keras_is_imported(tmp_path):
    code = (
        "import os, sys\n"
        "from deadrelu.backends import select\n"
        "print(select(), os.environ['KERAS_BACKEND'], 'keras' in sys.modules, 'tensorflow' in sys.modules)"
    )
    # ~/.keras/keras.json asking for another backend is not read: unset means TensorFlow.
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    done = _fresh(code, KERAS_HOME=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["tensorflow", "tensorflow", "False", "False"]
    if importlib.util.find_spec("jax"):
        done = _fresh(code, KERAS_BACKEND="jax")
        assert done.stdout.split() == ["jax", "jax", "False", "False"], done.stderr

"""Fixtures shared by several test files.

- `run_cli`: runs the command line in-process and returns (exit code, stdout, stderr).
- `shared`: a path inside `../shared`, or a clean skip when it is absent (a user's clone).
- `statistics_kernel` (automatic): deadrelu's fused kernel is built before the first test (also
  where TensorFlow sees a GPU and scans do not use it: the tests of its ops run there too).

Helper modules (`models`, `keras2_files`, `paths`) import directly: pyproject.toml puts tests/ on
sys.path (`pythonpath = ["tests"]`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from deadrelu.cli import main
from paths import SHARED


@pytest.fixture(scope="session", autouse=True)
def statistics_kernel() -> str:
    """Builds (or loads) deadrelu's fused statistics kernel once, before any test runs: its one-time
    "building" line on stderr then lands in no test's captured output."""
    import deadrelu.kernel as kernel

    if kernel.enabled() and kernel.gpu_visible():  # scans do not build it there; the ops' tests do
        with contextlib.suppress(kernel.BuildError):  # they skip, saying why
            kernel.load()
    return kernel.status()


@pytest.fixture
def run_cli(capfd) -> Callable[[Sequence[object]], tuple[int, str, str]]:
    """`run_cli(["scan", path, "--quiet"])` -> (exit code, stdout, stderr); arguments may be paths."""

    def run(argv: Sequence[object]) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out, err = capfd.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def shared() -> Callable[..., Path]:
    """`shared("models", "x.h5")` -> the path under `../shared`; skips the test when it does not exist."""

    def get(*parts: str) -> Path:
        path = SHARED.joinpath(*parts)
        if not path.exists():
            pytest.skip(f"{path} is absent (../shared sits beside the repository on the maintainers' machines only)")
        return path

    return get

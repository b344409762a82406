"""Where the tests find their files: the repository, its samples, and the optional `../shared` folder.

`../shared` (real models written by other people, MNIST; see `../shared/models/MANIFEST.md`) sits
beside the repository on the maintainers' machines only: a user's clone has none. Tests that need
it take the `shared` fixture of conftest.py, which skips them cleanly when the file is absent.
Plain constants (not fixtures) so that parametrisations can use them at collection time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
SHARED = ROOT.parent / "shared"


def synthetic_inputs(shape: tuple, kind: str, n: int) -> np.ndarray:
    """`n` float32 inputs of `shape` in the range a model of the ../shared MANIFEST expects.

    Args:
        kind: "pixels" (0–255), "signed" (−1–1), "unit" or "mnist" (0–1), else standard normal.
    """
    rng = np.random.default_rng(0)
    if kind == "pixels":
        return rng.uniform(0, 255, size=(n, *shape)).astype("float32")
    if kind == "signed":
        return rng.uniform(-1, 1, size=(n, *shape)).astype("float32")
    if kind in ("unit", "mnist"):
        return rng.uniform(0, 1, size=(n, *shape)).astype("float32")
    return rng.normal(size=(n, *shape)).astype("float32")

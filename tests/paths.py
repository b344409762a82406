"""Where the tests find their files: the repository, its samples, and the optional `../shared` folder.

`../shared` (real models written by other people, MNIST; see `../shared/models/MANIFEST.md`) sits
beside the repository on the maintainers' machines only: a user's clone has none. Tests that need
it take the `shared` fixture of conftest.py, which skips them cleanly when the file is absent.
Plain constants (not fixtures) so that parametrisations can use them at collection time.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
SHARED = ROOT.parent / "shared"

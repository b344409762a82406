"""deadrelu: find, measure and fix dead ReLU units in existing Keras models.

Importing the package is cheap: the public names are imported from their modules on first use,
so neither TensorFlow nor numpy loads until a function that needs them runs (the command line's
`deadrelu --help` imports the standard library only).

Example:
    >>> import deadrelu
    >>> model = deadrelu.load_model("model.h5")
    >>> report = deadrelu.scan(model, "x.npz")
    >>> report.summary
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deadrelu._version import __version__
from deadrelu.errors import (
    DataError,
    DeadReluError,
    ModelLoadError,
    OutputCheckError,
    UnsupportedModelError,
    UsageError,
)

if TYPE_CHECKING:
    from deadrelu.callbacks import DeadReluMonitor
    from deadrelu.checkpoints import Checkpoint, CheckpointScan, scan_checkpoints
    from deadrelu.engine.scanner import scan
    from deadrelu.engine.sites import Site, find_sites
    from deadrelu.fixes.check import OutputCheck
    from deadrelu.fixes.patch import PatchResult, patch, patch_model
    from deadrelu.fixes.prune import PruneResult, prune, prune_model
    from deadrelu.fixes.revive import ReviveResult, revive, revive_model
    from deadrelu.fixes.tournament import FixResult, fix
    from deadrelu.io.loading import load_model
    from deadrelu.report import Report, SiteReport, Thresholds

# Public name → the module that defines it, imported on first access (PEP 562).
_LAZY = {
    "DeadReluMonitor": "deadrelu.callbacks",
    **dict.fromkeys(["Checkpoint", "CheckpointScan", "scan_checkpoints"], "deadrelu.checkpoints"),
    "load_model": "deadrelu.io.loading",
    "OutputCheck": "deadrelu.fixes.check",
    **dict.fromkeys(["PatchResult", "patch", "patch_model"], "deadrelu.fixes.patch"),
    **dict.fromkeys(["PruneResult", "prune", "prune_model"], "deadrelu.fixes.prune"),
    **dict.fromkeys(["Report", "SiteReport", "Thresholds"], "deadrelu.report"),
    **dict.fromkeys(["ReviveResult", "revive", "revive_model"], "deadrelu.fixes.revive"),
    **dict.fromkeys(["FixResult", "fix"], "deadrelu.fixes.tournament"),
    "scan": "deadrelu.engine.scanner",
    **dict.fromkeys(["Site", "find_sites"], "deadrelu.engine.sites"),
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'deadrelu' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Checkpoint",
    "CheckpointScan",
    "DataError",
    "DeadReluError",
    "DeadReluMonitor",
    "FixResult",
    "ModelLoadError",
    "OutputCheck",
    "OutputCheckError",
    "PatchResult",
    "PruneResult",
    "Report",
    "ReviveResult",
    "Site",
    "SiteReport",
    "Thresholds",
    "UnsupportedModelError",
    "UsageError",
    "__version__",
    "find_sites",
    "fix",
    "load_model",
    "patch",
    "patch_model",
    "prune",
    "prune_model",
    "revive",
    "revive_model",
    "scan",
    "scan_checkpoints",
]

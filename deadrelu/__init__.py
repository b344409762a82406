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
from deadrelu.errors import DataError, DeadReluError, ModelLoadError, UnsupportedModelError, UsageError

if TYPE_CHECKING:
    from deadrelu.callbacks import DeadReluMonitor
    from deadrelu.loading import load_model
    from deadrelu.patcher import PatchResult, SelfCheckError, patch, patch_model, patch_self_check
    from deadrelu.pruner import PruneCheckError, PruneResult, prune
    from deadrelu.report import Report, SiteReport, Thresholds
    from deadrelu.reviver import ReviveResult, revive, revive_in_place, revive_model, revive_with_result
    from deadrelu.scanner import scan
    from deadrelu.sites import Site, find_sites

# Public name → the module that defines it, imported on first access (PEP 562).
_LAZY = {
    "DeadReluMonitor": "deadrelu.callbacks",
    "load_model": "deadrelu.loading",
    **dict.fromkeys(["PatchResult", "SelfCheckError", "patch", "patch_model", "patch_self_check"], "deadrelu.patcher"),
    **dict.fromkeys(["PruneCheckError", "PruneResult", "prune"], "deadrelu.pruner"),
    **dict.fromkeys(["Report", "SiteReport", "Thresholds"], "deadrelu.report"),
    **dict.fromkeys(
        ["ReviveResult", "revive", "revive_in_place", "revive_model", "revive_with_result"], "deadrelu.reviver"
    ),
    "scan": "deadrelu.scanner",
    **dict.fromkeys(["Site", "find_sites"], "deadrelu.sites"),
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
    "DataError",
    "DeadReluError",
    "DeadReluMonitor",
    "ModelLoadError",
    "PatchResult",
    "PruneCheckError",
    "PruneResult",
    "Report",
    "ReviveResult",
    "SelfCheckError",
    "Site",
    "SiteReport",
    "Thresholds",
    "UnsupportedModelError",
    "UsageError",
    "__version__",
    "find_sites",
    "load_model",
    "patch",
    "patch_model",
    "patch_self_check",
    "prune",
    "revive",
    "revive_in_place",
    "revive_model",
    "revive_with_result",
    "scan",
]

"""deadrelu: find, measure and fix dead ReLU units in existing Keras models.

Importing the package is cheap: TensorFlow loads only when a function that needs it runs.

Example:
    >>> import deadrelu
    >>> model = deadrelu.load_model("model.h5")
    >>> report = deadrelu.scan(model, "x.npz")
    >>> report.summary
"""

from __future__ import annotations

from deadrelu._version import __version__
from deadrelu.errors import DataError, DeadReluError, ModelLoadError, UnsupportedModelError, UsageError
from deadrelu.loading import load_model
from deadrelu.patcher import PatchResult, SelfCheckError, patch, patch_model, patch_self_check
from deadrelu.pruner import PruneCheckError, PruneResult, prune
from deadrelu.report import Report, SiteReport, Thresholds
from deadrelu.reviver import ReviveResult, revive, revive_in_place, revive_model, revive_with_result
from deadrelu.scanner import scan
from deadrelu.sites import Site, find_sites


def __getattr__(name: str):
    # The callback subclasses keras.callbacks.Callback: importing it loads TensorFlow, so it is
    # imported on first use rather than with the package.
    if name == "DeadReluMonitor":
        from deadrelu.callbacks import DeadReluMonitor

        return DeadReluMonitor
    raise AttributeError(f"module 'deadrelu' has no attribute {name!r}")


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

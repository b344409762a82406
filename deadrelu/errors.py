"""User-facing errors.

Every error a user can fix by changing their input derives from `DeadReluError`. The command
line prints such an error as one line (`deadrelu: error: ...`) and exits with its `exit_code`: 2,
or 4 for an `OutputCheckError` (a fix failed its output check). Anything else is an internal
error (exit code 3), `InternalError` among them: one of deadrelu's own checks failed where the
input cannot be the cause.
"""

from __future__ import annotations


class DeadReluError(Exception):
    """Base class of the errors caused by the user's input.

    The message must say what is wrong and how to fix it, in one sentence or two.

    Attributes:
        exit_code: The command line's exit status for the error: 2 (bad input), 4 for an
            `OutputCheckError`.
    """

    exit_code = 2


class ModelLoadError(DeadReluError):
    """The model file cannot be found, read or rebuilt."""


class DataError(DeadReluError, ValueError):
    """The data cannot be read or does not fit the model.

    Also a `ValueError`, as Keras raises for data that does not fit a model.
    """


class UsageError(DeadReluError, ValueError):
    """An argument (or its command-line flag) is wrong or missing.

    Also a `ValueError`, as Keras raises for a wrong argument value.
    """


class UnsupportedModelError(DeadReluError):
    """The model is valid but the requested transformation is not defined for it."""


class InternalError(RuntimeError):
    """One of deadrelu's own checks failed where the input cannot be the cause: a bug in deadrelu.

    For instance the outputs of a pruned or revived model differ on the very data its dead units
    were measured on. The command line exits with code 3 and asks for a report; the message says
    what was compared and that nothing was written.
    """


class OutputCheckError(DeadReluError):
    """A fixed model's outputs differ from the original's where the fix promised they would not.

    `patch` (its slope-0 twin), `revive` and `prune` (of dead units) each promise a model that
    computes what the original computed on the data its units were measured on; every one checks
    that promise with the same policy (`deadrelu.fixes.check`) and raises this error when it
    fails. Nothing is written; the command line exits with code 4.

    Attributes:
        check: The failed `OutputCheck` (max |Δ|, samples, tolerance).
        cause: Why the outputs moved: "data" (the units came from a report of other data, where
            they may fire), "keras" (Keras computes a layer of the model wrongly, see
            `deadrelu.fixes.bias_axis`), or "deadrelu" (on the very data its units were found dead
            on: a bug in deadrelu, please report it).
        result: The fix's result (`PatchResult`, `ReviveResult`, `PruneResult`), or None.
    """

    exit_code = 4

    def __init__(self, message: str, *, check, cause: str, result=None):
        super().__init__(message)
        self.check = check
        self.cause = cause
        self.result = result

"""User-facing errors.

Every error a user can fix by changing their input derives from `DeadReluError`. The command
line prints such an error as one line (`deadrelu: error: ...`) and exits with code 2; anything
else is an internal error (exit code 3), `InternalError` among them: one of deadrelu's own
checks failed where the input cannot be the cause.
"""

from __future__ import annotations


class DeadReluError(Exception):
    """Base class of the errors caused by the user's input.

    The message must say what is wrong and how to fix it, in one sentence or two.
    """


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

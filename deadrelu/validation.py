"""Checks of the public functions' keyword arguments: one rule per kind of argument.

The command line applies the same rules to its flags, so `scan(model, x, samples=0)` and
`deadrelu scan M --samples 0` fail alike. Every message names the Python keyword in backticks
(`samples`); the command line shows it as the command's flag (`--samples`, see
`deadrelu.cli.flag_names`). Each check returns the value, normalised (`numpy.int64(3)` → `3`), or
raises `UsageError`. Standard library only.

Example:
    >>> batch_size = positive_int(batch_size, "batch_size")
    >>> samples = positive_int(samples, "samples", optional=True)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

from deadrelu.errors import UsageError


def positive_int(value: Any, name: str, *, optional: bool = False) -> int | None:
    """A whole number ≥ 1 (`batch_size`, `samples`); None passes when `optional`. Bools are refused."""
    return _int(value, name, minimum=1, optional=optional)


def non_negative_int(value: Any, name: str, *, optional: bool = False) -> int | None:
    """A whole number ≥ 0 (`patience`)."""
    return _int(value, name, minimum=0, optional=optional)


def seed(value: Any, name: str = "seed") -> int | None:
    """A random seed: None (a fresh draw) or a whole number ≥ 0, as numpy and Keras accept."""
    return _int(value, name, minimum=0, optional=True, what="a seed: a whole number of at least 0, or None")


def fraction(value: Any, name: str, *, optional: bool = False) -> float | None:
    """A number in [0, 1] (thresholds, `max_dead_fraction`)."""
    if value is None and optional:
        return None
    number = _real(value)
    if number is None or not 0.0 <= number <= 1.0:
        raise UsageError(f"`{name}` must be a fraction between 0 and 1 (got {value!r})")
    return number


def positive_number(value: Any, name: str, *, optional: bool = False, example: str = "") -> float | None:
    """A finite number > 0 (`rescale`)."""
    if value is None and optional:
        return None
    number = _real(value)
    if number is None or not number > 0.0:
        hint = f", e.g. {example}" if example else ""
        raise UsageError(f"`{name}` must be a finite number above 0{hint} (got {value!r})")
    return number


def finite_number(value: Any, name: str, *, minimum: float | None = None, example: str = "") -> float:
    """A finite number, optionally ≥ `minimum` (patch's `alpha`, `alpha_init`)."""
    number = _real(value)
    if number is None or (minimum is not None and number < minimum):
        bound = f" of at least {minimum:g}" if minimum is not None else ""
        hint = f"; {example} is the usual choice" if example else ""
        raise UsageError(f"`{name}` must be a finite number{bound} (got {value!r}){hint}")
    return number


def one_of(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """One of `choices` (compared with ==; strings exactly)."""
    choices = tuple(choices)
    if not any(value is choice or (type(value) is type(choice) and value == choice) for choice in choices):
        shown = ", ".join(repr(choice) for choice in choices)
        raise UsageError(f"`{name}` must be one of {shown} (got {value!r})")
    return value


def boolean(value: Any, name: str) -> bool:
    """True or False (numpy bools too)."""
    if type(value).__name__ not in ("bool", "bool_"):
        raise UsageError(f"`{name}` must be True or False (got {value!r})")
    return bool(value)


def model(value: Any, name: str = "model") -> Any:
    """A Keras model (anything with `layers` and a `__call__`); paths are loaded before this check."""
    if not (hasattr(value, "layers") and callable(value)):
        raise UsageError(f"`{name}` must be a keras.Model or the path of a model file (got {type(value).__name__})")
    return value


# -- helpers -------------------------------------------------------------------------------


def _int(value: Any, name: str, *, minimum: int, optional: bool, what: str = "") -> int | None:
    if value is None and optional:
        return None
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if whole and value >= minimum:
        return int(value)
    if whole and not what:
        raise UsageError(f"`{name}` must be at least {minimum} (got {value})")
    what = what or f"a whole number of at least {minimum}"
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        what += ", not a bool"
    raise UsageError(f"`{name}` must be {what} (got {value!r})")


def _real(value: Any) -> float | None:
    """`value` as a finite float, or None when it is no finite real number (bools are not numbers here)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_" or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None

"""Structures of arrays: one array, or a list or dict of them (one per model input or output).

The helpers every other data module uses to walk such a structure: apply a function to each array,
count its samples, name its arrays in messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def map_arrays(fn: Callable, x: Any) -> Any:
    """`fn` applied to an array, or to each array of a list or dict (several inputs or outputs).

    Args:
        fn: Function of one array.
        x: An array, or a list, tuple or dict of arrays.

    Returns:
        `fn(x)`, or a list (dict) of `fn` of each array.

    Example:
        >>> map_arrays(lambda a: a[:2], {"image": images, "meta": meta})
    """
    if isinstance(x, dict):
        return {k: fn(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [fn(v) for v in x]
    return fn(x)


def count_samples(x: Any) -> int:
    """Samples in an array, or in the first array of a list or dict; for a `PerReplica` batch (from
    a distributed dataset), in its local replicas together.

    Args:
        x: An array (anything with a `shape`, or convertible by `np.asarray`), a list or dict of
            them, or a `PerReplica` batch.

    Returns:
        The length of the first axis (0 for a 0-d array).

    Example:
        >>> count_samples([np.zeros((4, 3)), np.zeros((4, 2))])
        4
    """
    if hasattr(x, "values") and type(x).__name__ == "PerReplica":
        return sum(count_samples(part) for part in x.values)
    if isinstance(x, dict):
        x = next(iter(x.values()))
    if isinstance(x, (list, tuple)):
        x = x[0]
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    return int(x.shape[0]) if len(x.shape) else 0


def is_array(value: Any) -> bool:
    """Whether `value` is array-like enough to keep as it is (it has a `shape` and a `dtype`)."""
    return hasattr(value, "shape") and hasattr(value, "dtype")


def named_leaves(x: Any) -> list[tuple[str, Any]]:
    """(" 'name'" or "", array) per array of a structure, for messages.

    A dict's arrays are named by key, a list's by position (" [1]") when it holds several; a
    single array gets "".
    """
    if isinstance(x, dict):
        return [(f" '{key}'", value) for key, value in x.items()]
    if isinstance(x, (list, tuple)):
        return [(f" [{i}]" if len(x) > 1 else "", value) for i, value in enumerate(x)]
    return [("", x)]


def leaves(x: Any) -> list:
    """The arrays of a structure, in order."""
    return [value for _, value in named_leaves(x)]

"""Checks on data and their messages: sample counts that agree, real numbers, no NaN or inf.

Every check raises a `DataError` that names the array at fault (`the data 'image'`, `the labels [1]`)
and says how to fix it. The wording helpers (`verb`, `first_sentence`) serve every data module's
messages.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deadrelu.data.arrays import named_leaves
from deadrelu.errors import DataError

ACCEPTED = (
    "a numpy array, a list or dict of arrays, a tf.data.Dataset, a keras.utils.PyDataset, a generator, "
    "or a path (.npy, .npz, .h5, .csv, a folder of images)"
)

_KINDS = {
    "U": "text",
    "S": "text",
    "O": "Python objects",
    "c": "complex numbers",
    "M": "dates",
    "m": "time spans",
    "V": "records of a structured array",
}


def checked_count(x: Any, what: str) -> int:
    """Samples in the data: the length of the first axis of each array, which must agree.

    Args:
        x: An array, or a list or dict of arrays.
        what: The data's name in messages ("the data", "the data in x.npz", "the labels").

    Returns:
        The number of samples (0 for an empty structure).

    Raises:
        DataError: An entry is not an array, is 0-d, or the arrays hold different numbers of samples.
    """
    counts = []
    for key, array in named_leaves(x):
        shape = getattr(array, "shape", None)
        if shape is None:
            raise DataError(f"{what} {verb(what, 'is')} a {type(array).__name__}; pass {ACCEPTED}")
        if len(shape) == 0:
            raise DataError(
                f"{what}{key} {verb(what, 'is')} a single value (a 0-d array), not samples; pass an "
                "array whose first axis runs over the samples"
            )
        counts.append(int(shape[0]))
    if len(set(counts)) > 1:
        raise DataError(
            f"the arrays of {what} hold different numbers of samples ({', '.join(map(str, counts))}); "
            f"pass the same samples for every {'output' if 'labels' in what else 'input'}"
        )
    return counts[0] if counts else 0


def check_kind(x: Any, what: str) -> None:
    """Refuses arrays that are not real numbers: text, objects, complex numbers, dates, records.

    Args:
        x: An array (or a TensorFlow spec with a `dtype`), or a list or dict of them.
        what: "data" or "labels" (the fix suggested differs), possibly followed by a key.

    Raises:
        DataError: An array's dtype is not a real number type; the message says how to convert it.
    """
    for key, array in named_leaves(x):
        dtype = getattr(array, "dtype", None)
        if dtype is None:
            continue
        dtype = np.dtype(dtype) if not hasattr(dtype, "as_numpy_dtype") else np.dtype(dtype.as_numpy_dtype)
        kind = _KINDS.get(dtype.kind)
        if kind is None:
            continue
        label = f"the {what}{key}"
        if dtype.kind in "US" and what == "labels":
            fix = "encode them as class ids, e.g. `classes, y = np.unique(y, return_inverse=True)`"
        elif dtype.kind in "USO":
            fix = (
                "convert it to numbers first (an array of numbers of dtype object: `x.astype('float32')`; "
                "ragged rows: pad them to one length)"
                if dtype.kind == "O"
                else "convert it to numbers first (e.g. encode categories as integers)"
            )
        elif dtype.kind == "c":
            fix = (
                "deadrelu does not drop the imaginary part silently: pass real numbers, e.g. np.abs(x) or "
                "np.stack([x.real, x.imag], axis=-1)"
            )
        elif dtype.kind == "V":
            fix = "pass one plain numeric array, e.g. np.stack([x[name] for name in x.dtype.names], axis=-1)"
        else:
            fix = "convert them to numbers first (e.g. x.astype('int64'))"
        raise DataError(f"{label} {verb(label, 'holds')} {kind} (dtype {dtype}), not real numbers; {fix}")


def check_finite(x: Any, what: str, first_sample: int) -> None:
    """Refuses NaN and inf, naming the first sample that holds one.

    Args:
        x: A batch: an array, or a list or dict of arrays.
        what: "data" or "labels".
        first_sample: The index of the batch's first sample among all samples read.

    Raises:
        DataError: A float array holds NaN or inf.
    """
    for key, array in named_leaves(x):
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            rows = np.isfinite(array).reshape(len(array), -1).all(axis=1) if array.ndim else np.array([False])
            bad = first_sample + int(np.argmax(~rows))
            extra = "" if what == "labels" else " (values beyond the float32 range become inf too)"
            raise DataError(
                f"the {what}{key} {verb(what, 'holds')} NaN or inf values, first at sample {bad}; clean "
                f"or impute them first{extra}"
            )


def verb(subject: str, word: str) -> str:
    """'holds' → 'hold' (and 'is' → 'are') when the subject is the labels."""
    if not subject.removeprefix("the ").startswith("labels"):
        return word
    return "are" if word == "is" else word.removesuffix("s")


def first_sentence(exc: BaseException) -> str:
    """The first sentence of an exception's message (its type's name when it has none), for a message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0].rstrip(".")[:200]

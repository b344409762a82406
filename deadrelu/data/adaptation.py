"""Adaptation: how arrays are made to fit the model's inputs, and the notes that say so.

`Inputs` holds what the model takes (shapes, names, dtypes); `adapter` checks each input array
against it and builds the per-batch transform: a missing trailing channel axis added, integers and
float64 made float32 for float inputs, `rescale` applied. Each adaptation adds a one-line note for
the user.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from deadrelu.errors import DataError


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What the data is adapted to: the model's input shapes (without the batch axis), names and
    dtypes, in input order (None each for a subclassed model, which has no symbolic inputs)."""

    shapes: list | None = None
    names: list | None = None
    dtypes: list | None = None

    @classmethod
    def of(cls, model) -> Inputs:
        """The inputs of a Keras model; all None for a model without symbolic inputs."""
        try:
            inputs = list(model.inputs)
        except Exception:  # noqa: BLE001 - subclassed models have no symbolic inputs
            return cls()
        return cls([tuple(t.shape[1:]) for t in inputs], [t.name for t in inputs], [str(t.dtype) for t in inputs])


def model_output_names(model) -> list[str] | None:
    """The model's output names (labels in a file may be stored one array per output), or None."""
    names = getattr(model, "output_names", None)
    return list(names) if names else None


def adapter(x, inputs: Inputs, rescale: float | None, notes: list[str]) -> Callable:
    """Builds the per-batch transform that makes the data fit the model, and says what it does.

    Each input array is checked against its model input (by position, or by name in a dict): a
    missing trailing channel axis is added; for inputs the model takes as floats, integers and
    float64 become float32 and `rescale` multiplies (integer inputs such as token ids are left
    alone). With several inputs, the notes name the input.

    Args:
        x: The data (an array, or a list/dict of them; a stream's first batch), or None when there
            is nothing to inspect: every batch is then adapted alike, as floats unless the model
            takes integers.
        inputs: The model's inputs.
        rescale: The factor float inputs are multiplied by, or None.
        notes: The notes for the user; the adaptations are appended.

    Returns:
        A function batch → adapted batch, with the attribute `rescales` (whether `rescale` applies).

    Raises:
        DataError: The data does not fit the model's inputs (count, names or shapes).
    """
    # Without arrays to inspect (a stream), adapt every array alike: as floats unless the model
    # takes integers (token ids).
    default = _Plan(as_float=not inputs.dtypes or all("float" in dtype for dtype in inputs.dtypes))
    plans = (
        {}
        if x is None
        else {
            key: _plan(array, shape, dtype, label, notes, hint=rescale is None)
            for key, array, shape, dtype, label in _pair_inputs(x, inputs)
        }
    )
    rescales = rescale is not None and any(plan.as_float for plan in (plans.values() if plans else [default]))
    if rescale is not None:
        notes.append(
            f"inputs multiplied by {rescale:g}" if rescales else "`rescale` ignored: the model takes integer inputs"
        )

    def adapt(array, plan: _Plan):
        array = np.asarray(array)
        if plan.expand:
            array = array[..., None]
        if plan.as_float:
            if not np.issubdtype(array.dtype, np.floating) or array.dtype == np.float64:
                with np.errstate(over="ignore"):  # values beyond float32 become inf, which is refused next
                    array = array.astype(np.float32)
            if rescale is not None:
                array = array * np.float32(rescale)
        return array

    def transform(batch):
        if isinstance(batch, dict):
            return {k: adapt(v, plans.get(k, default)) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return [adapt(v, plans.get(i, default)) for i, v in enumerate(batch)]
        return adapt(batch, plans.get(0, default))

    transform.rescales = rescales
    return transform


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How one input array is adapted: add a trailing channel axis; treat it as float data."""

    expand: bool = False
    as_float: bool = True


def _pair_inputs(x, inputs: Inputs) -> list[tuple]:
    """(key in x, array, model input shape, model input dtype, label for messages) per input array;
    shape and dtype are None where unknown."""
    count = len(inputs.shapes) if inputs.shapes else None
    input_names = inputs.names

    def model_input(index):
        if index is None or not inputs.shapes:
            return None, None
        return inputs.shapes[index], inputs.dtypes[index]

    if isinstance(x, dict):
        names = input_names or []
        unknown = [key for key in x if key not in names]
        if names and unknown:
            raise DataError(
                f"the data names the input '{unknown[0]}', but the model's inputs are "
                f"{', '.join(repr(n) for n in names)}; key the arrays by input name"
            )
        if names and count and count > 1:
            missing = [name for name in names if name not in x]
            if missing:
                raise DataError(
                    f"no data for the model input '{missing[0]}'; give one array per input, "
                    f"keyed by the input names ({', '.join(names)})"
                )
        return [(k, v, *model_input(names.index(k) if k in names else None), f"input '{k}': ") for k, v in x.items()]
    if isinstance(x, (list, tuple)):
        if count and len(x) != count:
            raise DataError(
                f"the data has {len(x)} arrays but the model has {count} input{'s' if count != 1 else ''}; "
                "give one array per model input"
            )
        return [
            (i, v, *model_input(i), f"input '{input_names[i]}': " if input_names and len(x) > 1 else "")
            for i, v in enumerate(x)
        ]
    if count and count > 1:
        raise DataError(
            f"the model has {count} inputs ({', '.join(input_names or [])}) but the data is one array; "
            "pass one array per input (an .npz holding arrays named after the inputs)"
        )
    return [(0, x, *model_input(0), "")]


def _plan(array, want, want_dtype, label: str, notes: list[str], *, hint: bool) -> _Plan:
    """Checks one input array against its model input and says how it will be adapted.

    `hint`: suggest `rescale` for 8-bit pixels (when no rescale was asked for)."""
    expand = False
    have = tuple(array.shape[1:]) if hasattr(array, "shape") else None
    if want is not None and have is not None and not _shape_fits(have, want):
        if have == ():
            target = ", ".join("N" if w is None else str(w) for w in want)
            raise DataError(
                f"{label}data is one-dimensional ({array.shape[0]} values) but the model takes samples "
                f"of shape {tuple(want)}; pass an array of shape (samples, {target})"
            )
        if not _shape_fits(have + (1,), want):
            raise DataError(
                f"{label}data samples have shape {have} but the model takes {tuple(want)}; "
                "reshape the data to match the model input"
            )
        expand = True
        notes.append(f"{label}data shape {have} → {have + (1,)}: added the trailing channel axis the model expects")
    as_float = want_dtype is None or "float" in str(want_dtype)
    dtype = _dtype_of(array)
    if as_float and dtype is not None and not np.issubdtype(dtype, np.floating):
        note = f"{label}data is {dtype}; converted to float32"
        if hint and dtype == np.uint8:
            note += " (pixels kept 0–255; pass `rescale=1/255` if the model was trained on [0, 1])"
        notes.append(note)
    return _Plan(expand=expand, as_float=as_float)


def _shape_fits(have: tuple, want: tuple) -> bool:
    return len(have) == len(want) and all(w is None or h == w for h, w in zip(have, want))


def _dtype_of(x):
    dtype = getattr(x, "dtype", None)
    return np.dtype(dtype.as_numpy_dtype) if hasattr(dtype, "as_numpy_dtype") else dtype

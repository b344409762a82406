"""The range and scale of each model input, streamed over the batches the model receives.

`InputRanges` accumulates, per input, the minimum, maximum, mean and standard deviation of every
value of the adapted batches (after deadrelu's conversion to float and `rescale`), one batch at a
time on the host (pairwise sums per batch, float64 across batches): the report's `data.inputs`,
and the evidence of the input-scale finding (`deadrelu.diagnosis.findings`). NaN and ±inf values
are left out and counted.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

# About this many evenly spaced values of each batch: the centre of its deviations, and a first
# test for whole numbers (data that is not integer-valued, almost all float data, needs no full pass).
_SAMPLE = 4096


@dataclasses.dataclass
class _Moments:
    """Running statistics of one input: counts, extremes, mean and the sum of squared deviations."""

    values: int = 0
    non_finite: int = 0
    low: float = math.inf
    high: float = -math.inf
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    integer_valued: bool = True

    def add(self, array: np.ndarray) -> None:
        if array.size == 0:
            return
        if array.dtype == np.bool_:
            array = array.view(np.uint8)
        floating = np.issubdtype(array.dtype, np.floating)
        low, high = array.min(), array.max()
        if floating and not (math.isfinite(low) and math.isfinite(high)):  # NaN propagates to min/max
            finite = np.isfinite(array)
            self.non_finite += int(array.size - np.count_nonzero(finite))
            array = array[finite]
            if array.size == 0:
                return
            low, high = array.min(), array.max()
        flat = array.reshape(-1)
        sample = flat[:: max(1, flat.size // _SAMPLE)]
        if floating and self.integer_valued:
            self.integer_valued = _whole(flat, sample)
        # Deviations from a centre near the batch's mean (that of a strided sample), in float32
        # for float32 data (float64 for float64 and integers): then the sum and the sum of squares,
        # each a pairwise sum, lose nothing to an offset far above the spread. Batches are combined
        # below in float64 without cancellation either (Chan et al.).
        work = np.float32 if floating and array.dtype.itemsize <= 4 else np.float64
        centre = work(sample.mean(dtype=np.float64))
        deviation = np.subtract(flat, centre, dtype=work)
        count = flat.size
        shift = float(deviation.sum())
        np.square(deviation, out=deviation)
        batch_mean = float(centre) + shift / count
        batch_m2 = max(0.0, float(deviation.sum()) - shift * shift / count)
        combined = self.values + count
        delta = batch_mean - self.mean
        self.mean += delta * count / combined
        self.m2 += batch_m2 + delta * delta * self.values * count / combined
        self.values = combined
        self.low = min(self.low, float(low))
        self.high = max(self.high, float(high))

    def to_dict(self, name: str) -> dict:
        seen = self.values > 0
        return {
            "name": name,
            "min": self.low if seen else None,
            "max": self.high if seen else None,
            "mean": self.mean if seen else None,
            "std": math.sqrt(self.m2 / self.values) if seen else None,
            "integer_valued": bool(self.integer_valued and seen),
            "values": self.values,
            "non_finite": self.non_finite,
        }


def _whole(flat: np.ndarray, sample: np.ndarray) -> bool:
    """Whether every value of a flat float array is a whole number (its strided sample decides most arrays)."""
    if not np.array_equal(sample, np.rint(sample)):
        return False
    return bool(np.array_equal(flat, np.rint(flat)))


class InputRanges:
    """Per-input range and scale of the batches a model receives, accumulated batch by batch.

    Args:
        names: The model's input names, in input order (None when unknown: inputs are then named
            "input", or "input_<i>" for several).

    Example:
        >>> ranges = InputRanges(["image"])
        >>> for batch in batches:
        ...     ranges.add(batch)
        >>> ranges.to_list()[0]["max"]
        255.0
    """

    def __init__(self, names: list[str] | None = None):
        self.names = list(names) if names else None
        self._moments: dict[Any, _Moments] = {}
        self._order: list[Any] = []

    def add(self, batch: Any) -> None:
        """Adds one batch: an array, or a list or dict of arrays (one per input).

        Args:
            batch: The batch as the model receives it.
        """
        if isinstance(batch, dict):
            parts = list(batch.items())
        elif isinstance(batch, (list, tuple)):
            parts = list(enumerate(batch))
        else:
            parts = [(None, batch)]
        for key, array in parts:
            moments = self._moments.get(key)
            if moments is None:
                moments = self._moments[key] = _Moments()
                self._order.append(key)
            moments.add(np.asarray(array))

    def _name(self, key: Any) -> str:
        if isinstance(key, str):
            return key
        index = 0 if key is None else key
        if self.names and index < len(self.names):
            return self.names[index]
        return "input" if key is None else f"input_{key}"

    def to_list(self) -> list[dict]:
        """The statistics per input, in the model's input order (else in the order of the batches).

        Returns:
            One dict per input: `name`, `min`, `max`, `mean`, `std` (population standard deviation
            over every value; None each when no finite value was seen), `integer_valued` (every
            value is a whole number), `values` (finite values counted) and `non_finite` (NaN and
            ±inf values left out).
        """
        names = self.names or []
        order = sorted(self._order, key=lambda k: names.index(k) if k in names else len(names))  # stable
        return [self._moments[key].to_dict(self._name(key)) for key in order]

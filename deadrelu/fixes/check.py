"""One output-check policy for every fix: did the fixed model keep the original's outputs?

`patch` (through its slope-0 twin), `revive` and `prune` (of dead units) each promise a model that
computes what the original computed on the data its units were measured on. Each keeps that
promise the same way: both models run in inference mode on the same batches; the largest
|original − fixed| must be at most `tolerance × max(1, scale)` (scale: the largest finite |output|
of the original, so a model whose outputs are near 1e3 is not failed by float rounding); NaN is
strict (NaN on one side only fails, NaN on both sides is equal). A failure raises
`OutputCheckError`, naming why the outputs moved.

A fix that changes the outputs by design (`revive(dormant=τ)`, `prune(dormant=τ)`: the units it
removes still fired) runs the same comparison with `enforced=False`: the difference is measured
and reported — the largest |Δ| and the share of samples whose predicted class changed
(`changed_predictions`) — and nothing is refused.

Importing this module is cheap: Keras is imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from deadrelu.errors import OutputCheckError

if TYPE_CHECKING:
    import keras

DEFAULT_TOLERANCE = 1e-5


@dataclasses.dataclass(frozen=True)
class OutputCheck:
    """How far a fixed model's outputs are from the original's on the same inputs.

    Attributes:
        max_abs_diff: Largest |original − fixed| over every output value compared; NaN when one
            model gave NaN where the other did not.
        samples: Samples compared.
        scale: Largest finite |output| of the original model.
        tolerance: The accepted difference before scaling (`limit` scales it).
        synthetic: True when the inputs were random stand-ins (no data was given).
        keras_bug_layers: Layers (name → channels) whose bias Keras adds on the wrong axis
            (`deadrelu.fixes.bias_axis`); the models were then compared as the scan ran them.
        changed_predictions: Share of the compared samples whose predicted class (the argmax
            over the last axis of an output with several entries there, at any position, of any
            such output) differs between the two models; None when no output has classes.
        enforced: Whether a difference beyond `limit` is a failure (the fix promised unchanged
            outputs); False when the change is by design and only reported (`describe`).
    """

    max_abs_diff: float
    samples: int
    scale: float = 0.0
    tolerance: float = DEFAULT_TOLERANCE
    synthetic: bool = False
    keras_bug_layers: dict[str, int] = dataclasses.field(default_factory=dict)
    changed_predictions: float | None = None
    enforced: bool = True

    @property
    def limit(self) -> float:
        """The largest accepted `max_abs_diff`: `tolerance`, scaled up by the output scale past 1."""
        return self.tolerance * max(1.0, self.scale)

    @property
    def passed(self) -> bool:
        """Whether `max_abs_diff` is finite and at most `limit`."""
        return math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.limit

    def __float__(self) -> float:
        return float(self.max_abs_diff)

    def describe(self) -> str:
        """One line, e.g. "outputs unchanged: max |Δ| = 3.1e-07 ≤ 1e-05 on 500 samples"; for a change
        by design (`enforced=False`) e.g. "outputs changed by design: max |Δ| = 0.031 on 500
        samples, predictions changed on 0.4% (reported, not enforced)"."""
        what = "synthetic samples" if self.synthetic else "samples"
        if not self.enforced and not self.passed:
            share = self.changed_predictions
            changed = f", predictions changed on {share:.1%}" if share is not None else ""
            return (
                f"outputs changed by design: max |Δ| = {self.max_abs_diff:.2g} on {self.samples:,} {what}{changed} "
                "(reported, not enforced)"
            )
        verdict = "unchanged" if self.passed else "CHANGED"
        sign = "≤" if self.passed else ">"
        diff = f"max |Δ| = {self.max_abs_diff:.2g} {sign} {self.limit:.2g}"
        return f"outputs {verdict}: {diff} on {self.samples:,} {what}"

    def to_dict(self) -> dict:
        """The check as JSON-ready values (`max_abs_diff` None when NaN)."""
        return {
            "max_abs_diff": self.max_abs_diff if math.isfinite(self.max_abs_diff) else None,
            "samples": self.samples,
            "scale": self.scale,
            "tolerance": self.tolerance,
            "limit": self.limit,
            "passed": self.passed,
            "synthetic": self.synthetic,
            "keras_bug_layers": dict(self.keras_bug_layers),
            "changed_predictions": self.changed_predictions,
            "enforced": self.enforced,
        }


def compare_outputs(
    original: keras.Model,
    fixed: keras.Model,
    batches: Iterable[Any],
    *,
    samples: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    synthetic: bool = False,
    enforced: bool = True,
) -> OutputCheck:
    """Runs both models on the same batches (inference mode) and measures their outputs' distance.

    When Keras's TensorFlow backend misplaces the bias of a layer of either model
    (`deadrelu.fixes.bias_axis.misplaced_biases`), both run as the scan ran them (one
    `tf.function`), so the fixed model is compared with the function its units were measured on.

    Args:
        original: The reference `keras.Model` (`scale` is measured on its outputs).
        fixed: A `keras.Model` with the same inputs and outputs.
        batches: Iterable of input batches (anything the models accept).
        samples: Compare at most this many samples; a batch that goes past it is cut. Defaults to
            None (every batch).
        tolerance: Accepted |Δ| before scaling. Defaults to `1e-5`.
        synthetic: Whether the batches are random stand-ins (said in `describe`). Defaults to False.
        enforced: Whether a difference beyond the limit is a failure (see `OutputCheck.enforced`).
            Defaults to True.

    Returns:
        An `OutputCheck`.

    Example:
        >>> check = compare_outputs(model, revived, [x_test[:500]])
        >>> check.passed, check.describe()
    """
    import keras

    from deadrelu.engine.mesh import call_placed
    from deadrelu.fixes.bias_axis import as_scanned, misplaced_biases

    affected = {**misplaced_biases(original), **misplaced_biases(fixed)}
    run_a, run_b = as_scanned(original, affected), as_scanned(fixed, affected)
    worst, scale, seen, changed, classified = 0.0, 0.0, 0, 0, False
    for x in batches:
        if samples is not None and seen >= samples:
            break
        # Under a keras.distribution (JAX), each batch split over the mesh as the scan splits it.
        outputs_a = flat_numpy(call_placed(lambda batch: run_a(batch, training=False), x))
        outputs_b = flat_numpy(call_placed(lambda batch: run_b(batch, training=False), x))
        moved = None  # per sample of the batch: whether a predicted class changed
        for a, b in zip(outputs_a, outputs_b):
            if samples is not None and seen + len(a) > samples:
                a, b = a[: samples - seen], b[: samples - seen]
            if a.ndim >= 2 and a.shape[-1] > 1:
                flips = np.argmax(a, axis=-1) != np.argmax(b, axis=-1)
                flips = flips.reshape(len(flips), -1).any(axis=1)
                moved = flips if moved is None else (moved | flips)
            # NaN on both sides is the same output; NaN on one side only is a difference.
            diff = np.where(np.isnan(a) & np.isnan(b), 0.0, np.abs(a - b))
            largest = float(np.max(diff, initial=0.0))
            worst = math.nan if math.isnan(largest) or math.isnan(worst) else max(worst, largest)
            scale = max(scale, float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0)))
        if moved is not None:
            changed, classified = changed + int(moved.sum()), True
        seen += int(keras.tree.flatten(x)[0].shape[0])
    compared = seen if samples is None else min(seen, samples)
    return OutputCheck(
        max_abs_diff=worst,
        samples=compared,
        scale=scale,
        tolerance=tolerance,
        synthetic=synthetic,
        keras_bug_layers=affected,
        changed_predictions=changed / compared if classified and compared else None,
        enforced=enforced,
    )


def flat_numpy(outputs: Any) -> list[np.ndarray]:
    """A model's outputs as a flat list of float64 numpy arrays."""
    import keras

    return [np.asarray(keras.ops.convert_to_numpy(o)).astype(np.float64) for o in keras.tree.flatten(outputs)]


def check_failure(
    check: OutputCheck,
    *,
    fix: str,
    from_report: bool = False,
    result: Any = None,
    exact_because: str = "its units output 0 on this very data, where they were found dead",
) -> OutputCheckError:
    """The error for a failed check, its cause decided once for every fix.

    Args:
        check: The failed `OutputCheck`.
        fix: What was made, for the message: "patched", "revived" or "pruned".
        from_report: Whether the units came from a report of other data than `check` ran on
            (then they may fire there: the user's input, not a bug).
        result: The fix's result, attached to the error.
        exact_because: Why the outputs cannot move unless deadrelu is wrong, for the message.

    Returns:
        An `OutputCheckError` whose `cause` is "keras" (a layer Keras computes wrongly), "data"
        (units from a report of other data) or "deadrelu" (a bug: the units output 0 on this data).

    Example:
        >>> if not check.passed:
        ...     raise check_failure(check, fix="revived", result=result)
    """
    differ = (
        f"the {fix} model's outputs differ from the original's by max |Δ| = {check.max_abs_diff:.3g} on "
        f"{check.samples:,} samples (tolerance {check.limit:.3g})"
    )
    if check.keras_bug_layers:
        from deadrelu.fixes.bias_axis import describe

        message = (
            f"{differ}: {describe(check.keras_bug_layers)}, and changing such a layer changes what it computes; "
            "leave those layers out (`layers=`/--layers a pattern that skips them) or use another backend "
            "(KERAS_BACKEND=jax)"
        )
        cause = "keras"
    elif from_report:
        message = (
            f"{differ}: the units of the report are not all dead on this data (the report was made on other data); "
            "fix from a scan of this data (pass the data itself, not a report of other data)"
        )
        cause = "data"
    else:
        message = f"{differ}, yet {exact_because}: a bug in deadrelu, please report it"
        cause = "deadrelu"
    return OutputCheckError(f"{message}; nothing was written", check=check, cause=cause, result=result)

"""Whole-model helpers shared by the commands that change a model: copying it, measuring its cost.

`copy_model` gives `revive` and the retraining comparisons a model of their own to change;
`compare_cost` measures what a smaller model saves: parameters, file size, `predict` time. (Whether
a fix kept the outputs is `deadrelu.fixes.check`.)

Importing this module is cheap: Keras is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any

from deadrelu.errors import UnsupportedModelError

if TYPE_CHECKING:
    import keras


def copy_model(model: keras.Model) -> keras.Model:
    """An independent copy of a model with the same weights (and compile settings).

    Tries `keras.models.clone_model` + `set_weights`; falls back to a round trip through a
    temporary `.keras` file (nested models, layers clone_model cannot rebuild). A compiled model's
    copy is compiled the same way, with a fresh optimizer.

    Args:
        model: A `keras.Model`.

    Returns:
        The copy, sharing no variable with `model`.

    Raises:
        UnsupportedModelError: The model can be neither cloned nor saved (e.g. a subclassed
            model without `get_config`).

    Example:
        >>> baseline = copy_model(model)
    """
    import keras

    copy = None
    try:
        try:  # recursive: nested models are rebuilt under their own names (unique variable paths)
            copy = keras.models.clone_model(model, recursive=True)
        except TypeError:
            copy = keras.models.clone_model(model)
        weights = model.get_weights()
        if [w.shape for w in copy.get_weights()] != [w.shape for w in weights]:
            raise ValueError("the clone's weights differ in layout")
        copy.set_weights(weights)
    except Exception:  # noqa: BLE001 - any failure: try the file round trip
        copy = _copy_through_file(model)
    if getattr(model, "compiled", False):
        # A fresh optimizer of the same kind: old moments do not fit the new weights. The compile
        # settings are a convenience, not needed to revive: any failure leaves the copy uncompiled.
        with contextlib.suppress(Exception):
            copy.compile_from_config(model.get_compile_config())
    return copy


def _copy_through_file(model):
    import os
    import tempfile

    import keras

    with tempfile.TemporaryDirectory(prefix="deadrelu-") as folder:
        path = os.path.join(folder, "copy.keras")
        try:
            model.save(path)
            # The file was written a moment ago from the user's own in-memory model, so loading
            # any Python code in it runs nothing the model did not already contain.
            return keras.models.load_model(path, compile=False, safe_mode=False)
        except Exception as exc:
            raise UnsupportedModelError(
                f"cannot copy the model to revive it ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                "call deadrelu.revive_model(model, data, in_place=True) to change the model itself instead"
            ) from exc


@dataclasses.dataclass
class CostComparison:
    """What two models cost side by side: parameters, file size, `predict` time.

    Attributes:
        params: Parameters of each model, `(a, b)`.
        file_bytes: Size of each model saved in the same format without optimizer state, `(a, b)`,
            or None (not measured).
        predict_seconds: Per model, the `predict` time of each timed round, interleaved (the two
            run back to back, their order alternating), warm-up excluded.
        samples: Samples per `predict` call.
    """

    params: tuple[int, int]
    file_bytes: tuple[int, int] | None
    predict_seconds: tuple[list[float], list[float]]
    samples: int

    @property
    def predict_median(self) -> tuple[float, float]:
        """The median `predict` time of each model, seconds."""
        import statistics

        return statistics.median(self.predict_seconds[0]), statistics.median(self.predict_seconds[1])

    @property
    def predict_ratio(self) -> float:
        """b's time over a's, the median over rounds of the ratio within one round (both ran under
        the same machine load): steadier than a ratio of medians on a busy machine."""
        import statistics

        return statistics.median(b / a for a, b in zip(*self.predict_seconds) if a > 0)

    def to_dict(self) -> dict:
        return {
            "params": list(self.params),
            "file_bytes": list(self.file_bytes) if self.file_bytes is not None else None,
            "predict_seconds_median": list(self.predict_median),
            "predict_ratio": self.predict_ratio,
            "predict_rounds": len(self.predict_seconds[0]),
            "predict_samples": self.samples,
        }


def compare_cost(
    model_a: keras.Model,
    model_b: keras.Model,
    x: Any,
    *,
    batch_size: int = 256,
    rounds: int = 5,
    file_suffix: str | None = ".keras",
) -> CostComparison:
    """Measures two models side by side: parameters, saved file size, `predict` time.

    Each model is warmed up by one untimed `predict` (tracing excluded), then both are timed
    `rounds` times, back to back, alternating which goes first.

    Args:
        model_a: A `keras.Model` (the reference, e.g. the original).
        model_b: A `keras.Model` with the same inputs (e.g. its pruned twin).
        x: Inputs for `predict` (arrays, or a list/dict of them).
        batch_size: `predict`'s batch size. Defaults to `256`.
        rounds: Timed rounds. Defaults to `5`.
        file_suffix: Save both to temporary files of this format (".keras" or ".h5"), without
            optimizer state (`saved_size`), and compare their sizes; None skips it. Defaults to
            `".keras"`.

    Returns:
        A `CostComparison`.

    Example:
        >>> cost = compare_cost(model, pruned, x_test[:1000])
        >>> cost.params, cost.predict_ratio
    """
    import gc
    import time

    import keras

    models = (model_a, model_b)
    sizes = None
    if file_suffix is not None:
        sizes = tuple(saved_size(m, file_suffix) for m in models)
    for model in models:
        model.predict(x, batch_size=batch_size, verbose=0)
    seconds: tuple[list[float], list[float]] = ([], [])
    for r in range(rounds):
        for index in (0, 1) if r % 2 == 0 else (1, 0):
            gc.collect()
            start = time.perf_counter()
            models[index].predict(x, batch_size=batch_size, verbose=0)
            seconds[index].append(time.perf_counter() - start)
    samples = int(keras.tree.flatten(x)[0].shape[0])
    return CostComparison((model_a.count_params(), model_b.count_params()), sizes, seconds, samples)


def saved_size(model: keras.Model, suffix: str = ".keras") -> int:
    """Bytes of the model saved to a temporary file of this format (".keras" or ".h5").

    The model is saved without optimizer state (a copy made from its config and weights), so
    two models compare by what they compute with, not by what their optimizers hold.
    """
    import os
    import tempfile
    import warnings

    with tempfile.TemporaryDirectory(prefix="deadrelu-") as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = os.path.join(folder, "model" + suffix)
        _without_optimizer(model).save(path)
        return os.path.getsize(path)


def _without_optimizer(model):
    """A copy of the model from its config and weights, not compiled (the model itself if that fails)."""
    try:
        copy = type(model).from_config(model.get_config())
        copy.set_weights(model.get_weights())
        return copy
    except Exception:  # noqa: BLE001 - custom models: measure them as they are
        return model

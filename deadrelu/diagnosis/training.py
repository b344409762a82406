"""The training configuration stored with a model: optimizer, learning rate against its default, loss.

A model loaded from a Keras 3 `.keras` file is compiled from its `compile_config`, a legacy Keras 2
`.h5` from its repaired `training_config` (`deadrelu.io.legacy.training_config`); a model compiled in
memory carries its own. `training_config` reads the compiled model, so all three are read alike.
It is the evidence behind `killed_in_training`: units alive at initialisation and dead after
training, most often from updates too large for the data, so the learning rate is set against the
default of the same optimizer class in the installed Keras.
"""

from __future__ import annotations

import math
from typing import Any


def training_config(model) -> dict | None:
    """The optimizer, learning rate and loss the model was compiled with.

    Args:
        model: A `keras.Model`, compiled (in memory, or by `deadrelu.load_model` from the training
            configuration stored in its file) or not.

    Returns:
        None when the model is not compiled (no optimizer). Otherwise a dict:
        `optimizer` (the class name, e.g. "Adam"; a `LossScaleOptimizer` is looked through),
        `learning_rate` (float; for a schedule, its value at step 0), `learning_rate_schedule`
        (the schedule's class name, e.g. "ExponentialDecay", or None for a constant rate),
        `default_learning_rate` (that optimizer class's default in the installed Keras, read from
        an instance made without arguments; None when the class needs arguments),
        `learning_rate_ratio` (`learning_rate / default_learning_rate`, or None) and `loss` (the
        loss name; per output "out_a: mse, out_b: mae"; None when the model has no loss).
        Learning rates are rounded to 6 significant digits: the optimizer stores them as float32
        (0.05 reads 0.05000000074505806), and files often hold such a float32 widened to float64.

    Example:
        >>> model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
        >>> training_config(model)
        {'optimizer': 'Adam', 'learning_rate': 0.05, 'learning_rate_schedule': None,
         'default_learning_rate': 0.001, 'learning_rate_ratio': 50.0, 'loss': 'mse'}
    """
    optimizer = _inner(getattr(model, "optimizer", None))
    if optimizer is None:
        return None
    learning_rate, schedule = _learning_rate(optimizer)
    default = _default_learning_rate(type(optimizer))
    ratio = None
    if learning_rate is not None and default:
        ratio = float(f"{learning_rate / default:.6g}")
    return {
        "optimizer": type(optimizer).__name__,
        "learning_rate": learning_rate,
        "learning_rate_schedule": schedule,
        "default_learning_rate": default,
        "learning_rate_ratio": ratio,
        "loss": loss_name(getattr(model, "loss", None)),
    }


def loss_name(loss: Any) -> str | None:
    """A compiled loss as a name: "mse", "categorical_crossentropy", "out_a: mse, out_b: mae".

    Args:
        loss: `model.loss`: a name, a `keras.losses.Loss`, a function, or a dict or list of them.

    Returns:
        The name; None for no loss.
    """
    if loss is None:
        return None
    if isinstance(loss, dict):
        parts = [f"{key}: {loss_name(value)}" for key, value in loss.items() if value is not None]
        return ", ".join(parts) or None
    if isinstance(loss, (list, tuple)) or type(loss).__name__ == "ListWrapper":
        parts = [loss_name(value) for value in loss if value is not None]
        return ", ".join(p for p in parts if p) or None
    if isinstance(loss, str):
        return loss
    name = getattr(loss, "name", None)
    if isinstance(name, str) and name:
        return name
    return getattr(loss, "__name__", None) or type(loss).__name__


def _inner(optimizer):
    """The optimizer that sets the steps: a `LossScaleOptimizer`'s inner optimizer, or itself."""
    for _ in range(4):  # wrappers of wrappers, never a cycle
        inner = getattr(optimizer, "inner_optimizer", None)
        if inner is None:
            break
        optimizer = inner
    return optimizer


def _learning_rate(optimizer) -> tuple[float | None, str | None]:
    """(the learning rate, or a schedule's value at step 0; the schedule's class name or None)."""
    try:
        value = optimizer.get_config().get("learning_rate")
    except Exception:  # noqa: BLE001 - a custom optimizer without a config: read the attribute
        value = None
    if isinstance(value, dict):  # a serialised schedule
        schedule = str(value.get("class_name", "schedule"))
        return _schedule_start(value), schedule
    if value is None:
        value = getattr(optimizer, "learning_rate", None)
    return _rounded(value), None


def _schedule_start(config: dict) -> float | None:
    """A serialised learning-rate schedule's value at step 0."""
    import keras

    settings = dict(config.get("config") or {})
    if settings.get("name", "") is None:  # Keras writes name=None for an unnamed schedule, then refuses it
        del settings["name"]
    try:
        return _rounded(keras.optimizers.schedules.deserialize({**config, "config": settings})(0))
    except Exception:  # noqa: BLE001 - a custom schedule not registered: read its starting value
        values = settings.get("values")
        start = settings.get("initial_learning_rate", values[0] if isinstance(values, list) and values else None)
        return _rounded(start)


def _default_learning_rate(cls: type) -> float | None:
    """The learning rate an instance of `cls` made without arguments has (None when it needs some)."""
    try:
        default = cls()
    except Exception:  # noqa: BLE001 - an optimizer class that needs arguments has no default
        return None
    value, _ = _learning_rate(default)
    return value


def _rounded(value) -> float | None:
    """A learning rate as the user wrote it: 6 significant digits (float32 stores 0.05 as 0.05000000074505806)."""
    if value is None:
        return None
    import numpy as np

    try:
        number = float(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        return None
    return float(f"{number:.6g}") if math.isfinite(number) else number

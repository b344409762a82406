"""Compiling a loaded model from the training configuration stored with it.

Keras 3 files store a `compile_config` that `model.compile_from_config` reads. Keras 2 files store a
`training_config` (optimizer, loss, metrics) in Keras 2 terms; it is translated here into
`model.compile` arguments, keeping what Keras 3 understands.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

from deadrelu.io.legacy import first_line


def compile_model(model, training: dict | None, *, objects: dict, notes: list) -> bool:
    """Compiles `model` from a Keras 2 `training_config` or a Keras 3 `compile_config`.

    A model that cannot be compiled is still usable for scanning: it is kept uncompiled, and a note
    says why.

    Args:
        model: The loaded Keras 3 model.
        training: The stored training configuration, or None.
        objects: Custom objects, looked up for optimizer and loss classes.
        notes: Human-readable notes on what was left out; appended to.

    Returns:
        Whether the model was compiled.
    """
    if not training:
        return False
    if "optimizer" in training and "optimizer_config" not in training:
        try:
            model.compile_from_config(training)
            if getattr(model, "compiled", False) or getattr(model, "optimizer", None) is not None:
                return True
        except Exception:  # noqa: BLE001 - fall back to the translation below
            pass
    try:
        model.compile(**_compile_arguments(training, objects, notes))
    except Exception as exc:  # noqa: BLE001 - compiling is optional
        notes.append(
            f"not compiled: the saved training configuration cannot be used ({type(exc).__name__}: "
            f"{first_line(exc, 160)}); compile the model yourself to train it"
        )
        return False
    return True


def _compile_arguments(training: dict, objects: dict, notes: list) -> dict:
    """Translates a stored training configuration into `model.compile` arguments."""
    optimizer = training.get("optimizer_config", training.get("optimizer"))
    loss = training.get("loss")
    if loss is None:
        raise ValueError("the file stores no loss")
    metrics, dropped = _metrics(training.get("metrics"))
    if dropped:
        shown = ", ".join(sorted(set(dropped)))
        notes.append(f"compiled without the metric(s) {shown}, which Keras 3 does not provide")
    arguments = {
        "optimizer": _optimizer(optimizer, objects),
        "loss": _map_nested(loss, lambda value: _loss(value, objects)),
    }
    if metrics:
        arguments["metrics"] = metrics
    if training.get("loss_weights") is not None:
        arguments["loss_weights"] = training["loss_weights"]
    return arguments


def _optimizer(config, objects: dict):
    """Builds a Keras 3 optimizer from a Keras 2 or Keras 3 optimizer config."""
    import keras

    if config is None:
        raise ValueError("the file stores no optimizer")
    if isinstance(config, str):
        return keras.optimizers.get(config)
    name = str(config.get("class_name", "")).split(">")[-1]  # tf.keras 2.11+ wrote "Custom>Adam"
    cls = _class_named(name, objects, keras.optimizers, "optimizer")
    settings = dict(config.get("config", {}))
    if "lr" in settings:
        settings.setdefault("learning_rate", settings.pop("lr"))
    if isinstance(settings.get("learning_rate"), dict):
        settings["learning_rate"] = keras.optimizers.schedules.deserialize(settings["learning_rate"])
    return _construct(cls, settings)


def _loss(config, objects: dict):
    """Builds a Keras 3 loss from a name or a Keras 2 loss config."""
    import keras

    if isinstance(config, str):
        return objects.get(config) or keras.losses.get(config)
    if isinstance(config, dict) and "class_name" in config:
        cls = _class_named(config["class_name"], objects, keras.losses, "loss")
        settings = dict(config.get("config", {}))
        if settings.get("reduction") in ("auto", "sum_over_batch_size", None):
            settings["reduction"] = "sum_over_batch_size"
        return _construct(cls, settings)
    raise ValueError(f"unknown loss {config!r}")


def _class_named(name: str, objects: dict, module, kind: str) -> type:
    """The custom class or the class of a Keras module (`keras.losses`, ...) called `name`."""
    cls = objects.get(name) or getattr(module, name, None)
    if not isinstance(cls, type):
        raise ValueError(f"unknown {kind} {name}")
    return cls


def _construct(cls: type, settings: dict):
    """Instantiates `cls` with the stored settings its constructor accepts (Keras 2 had more)."""
    accepted = set(inspect.signature(cls.__init__).parameters)
    return cls(**{k: v for k, v in settings.items() if k in accepted})


def _metrics(config) -> tuple[list | None, list[str]]:
    """Keeps the stored metrics that Keras 3 understands; returns (metrics, names dropped)."""
    kept, dropped = [], []
    for item in _flatten(config or []):
        name = _metric_name(item)
        if name in ("accuracy", "acc"):
            name = "accuracy"
        elif not _is_keras_metric(name):
            dropped.append(str(name))
            continue
        if name is not None and name not in kept:
            kept.append(name)
    return (kept or None), dropped


def _metric_name(item):
    """The name of a stored metric (tf.keras stored MeanMetricWrapper {"name": "accuracy", ...})."""
    if isinstance(item, dict):
        return item.get("config", {}).get("name") or item.get("class_name")
    return item


def _is_keras_metric(name) -> bool:
    import keras

    try:
        keras.metrics.get(name)
    except Exception:  # noqa: BLE001 - a metric Keras 3 does not know is dropped
        return False
    return True


def _map_nested(value, function):
    """Applies `function` to each leaf of a loss given as one value, a list or a dict."""
    if isinstance(value, dict) and "class_name" not in value:
        return {k: _map_nested(v, function) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_nested(v, function) for v in value]
    return function(value)


def _flatten(value) -> Iterator:
    """Leaves of nested lists (Keras 2 stored metrics per output)."""
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _flatten(item)
    elif isinstance(value, dict) and "class_name" not in value:
        for item in value.values():
            yield from _flatten(item)
    else:
        yield value

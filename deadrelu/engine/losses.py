"""Compiled loss(es) + the user's labels → a per-sample loss, and labels `fit` accepts.

The one place that reads a model's loss: the probe's gradients need ℓₙ, each sample's own loss
as Keras computes it (`per_sample_loss`); retraining needs labels in the form the compiled loss
expects (`match_labels`) and the stored compile configuration (`compile_config`). A model with
several outputs has one loss per output (a list in output order, a dict by output name, or one
loss for all) and optional loss weights; `per_output` spreads such values over the outputs.

The per-sample losses are written with `keras.ops`, so they run on every Keras backend (TensorFlow,
JAX, PyTorch), eagerly and inside a compiled step (`tf.function`, `jax.jit`).

Importing this module is cheap: Keras is imported inside the functions.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from deadrelu.errors import DataError, UsageError


def per_sample_loss(model: Any, loss: Any, y: Any) -> Callable:
    """Returns `fn(y_true, y_pred) -> per-sample losses` (shape [batch]).

    ℓₙ is sample n's own loss as Keras computes it: the loss's values for that sample, averaged
    over any remaining axes (time steps, pixels) as Keras's mean reduction would. For a model with
    several outputs it is the weighted sum over outputs, as `fit` minimises it: each output's loss
    (a dict or list of losses, or one loss for all) times its compiled `loss_weights` (1 without).

    Args:
        model: The model (its compiled loss and loss weights are the default).
        loss: None, a Keras loss name, a function, or a `keras.losses.Loss` (for several outputs
            also a list or dict of them).
        y: A batch of labels (for several outputs a list in output order, or a dict by output
            name), used to tell sparse from one-hot labels.

    Returns:
        A traceable function giving each sample's own loss, on any Keras backend.

    Raises:
        UsageError: No loss is given or stored, a loss is unknown, or the losses or labels do not
            match the model's outputs.
    """
    names = list(getattr(model, "output_names", None) or [])
    shapes = output_shapes(model)
    if loss is None:
        loss = getattr(model, "loss", None)
        if loss is None:
            raise UsageError('the model has no stored loss; pass one, e.g. `loss="categorical_crossentropy"`')
    if len(shapes) <= 1:
        _check_label_width(np.asarray(y), shapes[0] if shapes else None, None)
        return _output_loss(single_loss(loss), np.asarray(y), shapes[0] if shapes else None)

    losses = per_output(loss, names, "loss")
    # The compiled loss weights apply to a --loss given on the command line too.
    weights = per_output(compile_config(model).get("loss_weights"), names, "loss weight")
    if isinstance(y, dict) and set(y) - set(names):
        raise DataError(
            f"the labels name the output {sorted(set(y) - set(names))[0]!r}, but the model's outputs are "
            f"{', '.join(names)}; key the labels by output name"
        )
    labels = _by_output(y, names)
    if len(labels) != len(names):
        raise UsageError(
            f"the model has {len(names)} outputs ({', '.join(names)}); pass one label array per "
            "output (a list, a dict by output name, or an .npz with arrays named after the outputs)"
        )
    for k, name in enumerate(names):
        if losses[k] is not None:
            if labels[k] is None:
                raise DataError(f"no labels for the output {name!r}, which has a loss; give one label array per output")
            _check_label_width(np.asarray(labels[k]), shapes[k], name)
    terms = [
        (k, 1.0 if weights[k] is None else float(weights[k]), _output_loss(losses[k], np.asarray(labels[k]), shapes[k]))
        for k in range(len(names))
        if losses[k] is not None
    ]

    def per_sample(y_true, y_pred, logits=None):  # logits: of one output only, so not used here
        y_true, y_pred = _by_output(y_true, names), _by_output(y_pred, names)
        return sum(weight * fn(y_true[k], y_pred[k]) for k, weight, fn in terms)

    def check_labels(y_true) -> None:
        y_true = _by_output(y_true, names)
        for k, _, fn in terms:
            fn.check_labels(y_true[k])

    per_sample.check_labels = check_labels
    return per_sample


def _check_label_width(y: np.ndarray, out_shape: tuple | None, name: str | None) -> None:
    """Labels of the output's rank must be as wide as the output (or 1 wide: class ids)."""
    width = out_shape[-1] if out_shape else None
    if width is None or y.ndim < 2 or y.ndim != len(out_shape) or y.shape[-1] in (1, width):
        return
    labels, output = (f"the labels of output '{name}'", "that output") if name else ("the labels", "the model's output")
    raise DataError(
        f"{labels} have {y.shape[-1]} columns but {output} has {width} units; one-hot labels need one "
        "column per output unit"
    )


def _output_loss(loss: Any, y: np.ndarray, out_shape: tuple | None) -> Callable:
    """The per-sample loss of one output: the loss unreduced, then averaged over non-batch axes."""
    import keras

    if isinstance(loss, (list, tuple, dict)):
        raise UsageError("a list or dict of losses is for a model with several outputs; pass one `loss`")
    try:
        loss_obj = loss if isinstance(loss, keras.losses.Loss) else keras.losses.get(loss)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"unknown loss {loss!r}; pass a Keras loss name such as categorical_crossentropy or mse as `loss`"
        ) from exc
    if isinstance(loss_obj, keras.losses.Loss):
        unreduced = loss_obj.call  # Loss objects match label ranks themselves
        name = f"{loss_obj.name} {type(loss_obj).__name__} {getattr(getattr(loss_obj, 'fn', None), '__name__', '')}"
    else:
        fn = loss_obj
        unreduced = lambda y_true, y_pred: fn(*_same_rank(y_true, y_pred))  # noqa: E731
        name = getattr(fn, "__name__", str(fn))
    adapt_labels = _label_adapter(_snake(name), y, out_shape)
    from_logits = _from_logits(loss_obj, _snake(name))

    def per_sample(y_true, y_pred, logits=None):
        y_true = adapt_labels(y_true, y_pred)
        if logits is not None and from_logits is not None and logits[0] == from_logits[0]:
            values = from_logits[1](y_true, logits[1])
        else:
            values = unreduced(y_true, y_pred)
        rank = _rank(values) or 0
        if rank > 1:
            values = keras.ops.mean(values, axis=tuple(range(1, rank)))
        return values

    per_sample.check_labels = _class_id_check(_snake(name), y, out_shape)
    return per_sample


def _class_id_check(name: str, y: np.ndarray, out_shape: tuple | None) -> Callable:
    """A host-side check of one batch of class-id labels for a categorical loss: every id within
    the output's classes. TensorFlow's own kernels refuse an id out of range; JAX and PyTorch would
    read past the classes or fail deep inside, so deadrelu checks it on every backend."""
    classes = out_shape[-1] if out_shape else None
    sparse_labels = y.ndim == 1 or (y.ndim >= 2 and y.shape[-1] == 1 and classes not in (None, 1))
    if "categorical" not in name or not sparse_labels or not classes or classes == 1:
        return lambda labels: None

    def check(labels) -> None:
        values = np.asarray(labels)
        if values.size == 0 or not np.issubdtype(values.dtype, np.number):
            return
        bad = values[(values < 0) | (values >= classes)]
        if bad.size:
            raise DataError(
                f"a label value of {bad.flat[0]:g} is outside the {classes} classes of the model's output; "
                f"class ids go from 0 to {classes - 1}"
            )

    return check


# Crossentropies on probabilities, and the activation whose input (logits) they can be computed from.
_LOGIT_LOSSES = {
    "categorical_crossentropy": "softmax",
    "sparse_categorical_crossentropy": "softmax",
    "binary_crossentropy": "sigmoid",
}


def _from_logits(loss_obj: Any, name: str) -> tuple[str, Callable] | None:
    """For a crossentropy on probabilities: `(activation, fn(y_true, logits))`, the same loss
    computed from the logits of that activation; else None.

    Keras's TensorFlow backend does this by itself (it finds the softmax's input in the graph);
    JAX and PyTorch clip the probabilities, whose gradient is then exactly zero wherever a
    probability rounds to 0 or 1. Computing from the logits gives the same losses and gradients
    on every backend.
    """
    import keras

    kind = next((k for k in sorted(_LOGIT_LOSSES, key=len, reverse=True) if k in name), None)
    if kind is None:
        return None
    config = loss_obj.get_config() if isinstance(loss_obj, keras.losses.Loss) else {}
    if config.get("from_logits"):
        return None
    fn = getattr(keras.losses, kind)
    options = {key: config[key] for key in ("label_smoothing", "axis", "ignore_class") if key in config}
    if kind == "sparse_categorical_crossentropy":
        options.pop("label_smoothing", None)
    else:
        options.pop("ignore_class", None)
    if kind == "binary_crossentropy":  # labels of shape (N,) for an (N, 1) output, as `fit` allows
        return "sigmoid", lambda y_true, logits: fn(*_same_rank(y_true, logits), from_logits=True, **options)
    return _LOGIT_LOSSES[kind], lambda y_true, logits: fn(y_true, logits, from_logits=True, **options)


def single_loss(loss: Any) -> Any:
    """The loss of a one-output model compiled with a list or dict of one loss; else `loss` itself."""
    if isinstance(loss, (list, tuple)) and len(loss) == 1:
        return loss[0]
    if isinstance(loss, dict) and len(loss) == 1:
        return next(iter(loss.values()))
    return loss


def output_shapes(model: Any) -> list[tuple]:
    """The model's output shapes, in output order (empty when unknown).

    Example:
        >>> output_shapes(model)   # [(None, 10), (None, 1)]
    """
    import keras

    try:
        return [tuple(t.shape) for t in keras.tree.flatten(model.outputs)]
    except Exception:  # noqa: BLE001 - a subclassed model never called symbolically
        shape = getattr(model, "output_shape", None)
        return [tuple(shape)] if isinstance(shape, tuple) else []


def compile_config(model: Any) -> dict:
    """The model's compile configuration: its loss, loss weights, metrics and optimizer.

    Args:
        model: A `keras.Model`, compiled or not.

    Returns:
        `model.get_compile_config()`; for a model compiled with objects that cannot be serialised,
        `{"loss": model.loss, "optimizer": None, "metrics": None}`; `{}` for a model without a loss.
    """
    try:
        config = model.get_compile_config() or {}
    except Exception:  # noqa: BLE001 - not compiled, or compiled with objects that cannot be serialised
        config = {}
    if not config and getattr(model, "loss", None) is not None:
        config = {"loss": model.loss, "optimizer": None, "metrics": None}
    return config


def per_output(value: Any, names: list[str], what: str) -> list:
    """One entry per output from one value for all, a list in output order, or a dict by name.

    Args:
        value: A value for every output, a list in output order, or a dict by output name.
        names: The model's output names.
        what: What the values are, for error messages ("loss").

    Returns:
        A list with one entry per output (None for outputs a dict leaves out).

    Raises:
        UsageError: A dict names an unknown output, or a list has the wrong length.
    """
    if isinstance(value, dict):
        unknown = set(value) - set(names)
        if unknown:
            raise UsageError(
                f"the {what} names the output {sorted(unknown)[0]!r}, but the model's outputs are {', '.join(names)}"
            )
        return [value.get(name) for name in names]
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise UsageError(f"a {what} list of {len(value)} entries for {len(names)} outputs; give one per output")
        return list(value)
    return [value] * len(names)


def _by_output(structure: Any, names: list[str]) -> list:
    """Labels or predictions as a list in output order (from a list, or a dict by output name)."""
    if isinstance(structure, dict):
        return [structure.get(name) for name in names]
    if isinstance(structure, (list, tuple)):
        return list(structure)
    return [structure]


def _rank(x) -> int | None:
    """The number of axes of a tensor of any backend; None when unknown (a TensorFlow trace)."""
    try:
        return len(x.shape)
    except (TypeError, ValueError):  # tf.TensorShape of unknown rank
        return None


def _same_rank(y_true, y_pred):
    """Labels of shape (N,) for an (N, 1) output get their last axis, as `fit` would do."""
    import keras

    true_rank, pred_rank = _rank(y_true), _rank(y_pred)
    if true_rank is None or pred_rank is None:
        return y_true, y_pred
    if true_rank == pred_rank - 1 and y_pred.shape[-1] == 1:
        y_true = keras.ops.expand_dims(y_true, -1)
    elif true_rank == pred_rank + 1 and y_true.shape[-1] == 1:
        y_true = keras.ops.squeeze(y_true, -1)
    return y_true, y_pred


def _snake(name: str) -> str:
    """'SparseCategoricalCrossentropy' → 'sparse_categorical_crossentropy' (names already snake stay)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _label_adapter(name: str, y: np.ndarray, out_shape: tuple | None) -> Callable:
    """Converts labels between sparse and one-hot, inside the traced step, when their shape says the other kind.

    The loss itself is kept (with its `from_logits`, `axis`, label smoothing, ...); only the
    labels change form. (`_match_one` is the eager counterpart used before `fit`.)
    """
    import keras

    ops = keras.ops
    classes = out_shape[-1] if out_shape else None
    sparse_labels = y.ndim == 1 or (y.ndim >= 2 and y.shape[-1] == 1 and classes not in (None, 1))
    if "sparse" not in name and "categorical_crossentropy" in name and sparse_labels and classes:
        return lambda y_true, y_pred: ops.one_hot(
            ops.cast(ops.reshape(y_true, (-1,)), "int32"),
            classes,
            dtype=keras.backend.standardize_dtype(y_pred.dtype),
        )
    if "sparse_categorical" in name and not sparse_labels and classes and y.shape[-1] == classes:
        return lambda y_true, y_pred: ops.argmax(y_true, axis=-1)
    return lambda y_true, y_pred: y_true


def match_labels(y: Any, model: Any) -> Any:
    """Turns integer labels into one-hot ones where the compiled loss is categorical crossentropy.

    Args:
        y: An array, or for a model with several outputs a list (output order) or dict (output
            name) of arrays; each output is matched with its own loss.
        model: The compiled model the labels are for.

    Returns:
        The labels in the same structure, one-hot where the output's loss needs it.
    """
    shapes = output_shapes(model)
    if not isinstance(y, (dict, list, tuple)):
        return _match_one(y, single_loss(getattr(model, "loss", None)), shapes[0] if shapes else None, None)
    names = list(model.output_names)
    losses = dict(zip(names, per_output(getattr(model, "loss", None), names, "loss")))
    if isinstance(y, dict):
        return {name: _match_one(value, losses.get(name), shapes[names.index(name)], name) for name, value in y.items()}
    return [_match_one(value, losses[name], shape, name) for value, name, shape in zip(y, names, shapes)]


def _match_one(y: Any, loss: Any, out_shape: tuple | None, output: str | None) -> np.ndarray:
    """One output's labels, one-hot when its loss is categorical and they are integer class ids.

    Raises:
        DataError: One-hot labels of another width than the output, or class ids outside its units.
    """
    name = str(loss if isinstance(loss, str) else getattr(loss, "name", None) or getattr(loss, "__name__", ""))
    classes = out_shape[-1] if out_shape else None
    y = np.asarray(y)
    _check_label_width(y, out_shape, output)
    class_ids = (y.ndim == 1 or y.shape[-1] == 1) and np.issubdtype(y.dtype, np.integer)
    if "categorical" in _snake(name) and classes and classes > 1 and class_ids and y.size:
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= classes:
            where = f"the output '{output}'" if output else "the model's output"
            raise DataError(
                f"the labels hold the class id {low if low < 0 else high}, but {where} has {classes} units "
                f"(class ids 0 to {classes - 1}); check the labels, or the model they are for"
            )
        if "sparse" not in _snake(name):
            return np.eye(classes, dtype=np.float32)[y.reshape(-1)]
    return y

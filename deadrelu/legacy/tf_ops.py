"""TensorFlow ops that tf.keras stored as layers (`TFOpLambda`), rebuilt for Keras 3.

In a tf.keras Functional model, calling a TensorFlow function on a symbolic tensor —
`tf.nn.relu(x)`, `x * 2.0`, `tf.concat([a, b], -1)` — silently became a `TFOpLambda` layer, saved
by the op's name (`"nn.relu"`, `"math.multiply"`, `"__operators__.add"`) and its arguments. Keras 3
has no such layer, so plain Keras 3 refuses these files. Here:

* `tf.nn.relu` and `tf.nn.relu6` become Keras `ReLU` layers (`max_value=6` for relu6): the same
  function, and the ReLU sites they are — a dying `tf.nn.relu` is as dead as a `Dense(relu)`;
* every other op becomes `TFOpLambda`, a small Keras 3 layer that looks the op up by its stored
  name in TensorFlow and calls it with the stored arguments; indexing (`x[:, 2:5]`, tf.keras's
  `SlicingOpLambda`) too.

Models holding a `TFOpLambda` save and load again with Keras 3 once this module is imported (the
class is registered as `deadrelu>TFOpLambda`).
"""

from __future__ import annotations

import functools

import keras

from deadrelu.errors import ModelLoadError

# tf.nn ops that are ReLU sites, as the equivalent Keras `ReLU` layer arguments.
RELU_OPS = {"nn.relu": {}, "nn.relu6": {"max_value": 6.0}}


def resolve_tf_op(name: str):
    """The TensorFlow function stored under `name` ("math.multiply" → `tf.math.multiply`).

    Raises:
        ModelLoadError: TensorFlow has no such function.
    """
    import tensorflow as tf

    for root in (tf, tf.compat.v1):
        try:
            return functools.reduce(getattr, name.split("."), root)
        except AttributeError:
            continue
    raise ModelLoadError(
        f"the file calls the TensorFlow op tf.{name}, which this TensorFlow "
        f"({tf.__version__}) does not have; load it with the TensorFlow version that wrote it"
    )


@keras.saving.register_keras_serializable(package="deadrelu")
class TFOpLambda(keras.layers.Layer):
    """A TensorFlow op called on the model's tensors, stored by name.

    Args:
        function: The op's name below `tf` (as tf.keras stored it), e.g. "math.multiply".
        **kwargs: Base layer arguments (name, dtype, trainable).

    Example:
        >>> scale = TFOpLambda("math.multiply")
        >>> y = scale(x, y=2.0)
    """

    def __init__(self, function: str, **kwargs):
        super().__init__(**kwargs)
        self.function = function
        self._op = resolve_tf_op(function)

    def call(self, inputs, *args, **kwargs):
        if "slice_spec" in kwargs:  # `x[:, 2:5]` (tf.keras SlicingOpLambda), stored as JSON
            kwargs["slice_spec"] = _slice_spec(kwargs["slice_spec"])
        return self._op(inputs, *args, **kwargs)

    def get_config(self) -> dict:
        return {**super().get_config(), "function": self.function}


def _slice_spec(spec):
    """tf.keras's JSON form of an index (`[{"start": 2, "stop": 5, "step": null}, 0]`) → `(slice(2, 5), 0)`."""

    def decode(item):
        if isinstance(item, dict) and item.get("class_name") == "__ellipsis__":
            return Ellipsis
        if isinstance(item, dict) and set(item) == {"start", "stop", "step"}:
            return slice(item["start"], item["stop"], item["step"])
        return item

    return tuple(decode(item) for item in spec) if isinstance(spec, (list, tuple)) else decode(spec)


def rebuild_entry(entry: dict) -> bool:
    """Rewrites a stored `TFOpLambda` / `SlicingOpLambda` layer entry in place; returns whether it
    became a `ReLU`.

    Args:
        entry: The layer's config entry.
    """
    cfg = entry["config"]
    function = cfg.get("function")
    if not isinstance(function, str):
        raise ModelLoadError(f"the TFOpLambda layer {cfg.get('name')!r} stores no op name; the file is damaged")
    base = {key: cfg[key] for key in ("name", "trainable", "dtype") if key in cfg}
    entry.pop("module", None)
    if function in RELU_OPS:
        entry.update(class_name="ReLU", module="keras.layers", registered_name=None)
        entry["config"] = {**base, **RELU_OPS[function]}
        return True
    from deadrelu.backends import require_tensorflow

    # Fails here, with the op's name, rather than deep inside Keras.
    require_tensorflow(
        f"the TensorFlow op tf.{function} that this file stores (tf.keras TFOpLambda layer {cfg.get('name')!r})",
        error=ModelLoadError,
    )
    resolve_tf_op(function)
    entry.update(class_name="TFOpLambda", registered_name="TFOpLambda")
    entry["config"] = {**base, "function": function}
    return False

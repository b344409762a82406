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

The class is deliberately not registered with Keras: a file naming it loads through
`deadrelu.load_model` (which checks the op against the allowlist below before building it), or with
`keras.models.load_model(path, custom_objects={"TFOpLambda": TFOpLambda})` by someone who trusts it.
"""

from __future__ import annotations

import functools
import re

import keras

from deadrelu.errors import ModelLoadError

# tf.nn ops that are ReLU sites, as the equivalent Keras `ReLU` layer arguments.
RELU_OPS = {"nn.relu": {}, "nn.relu6": {"max_value": 6.0}}


# Where the TensorFlow functions a tf.keras file may name live: computation on tensors only.
# Not tf.io, tf.print, tf.py_function, tf.saved_model, tf.compat.v1.gfile, tf.config or anything
# private (tf._os is the os module): a stored name can reach nothing that reads, writes or runs.
_OP_NAMESPACES = frozenset({"", "math", "nn", "linalg", "signal", "image", "bitwise", "random", "__operators__"})
_OP_MODULES = frozenset(
    {
        "array_ops",
        "array_ops_stack",
        "bincount_ops",
        "bitwise_ops",
        "check_ops",
        "clip_ops",
        "constant_op",
        "embedding_ops",
        "fft_ops",
        "gen_array_ops",
        "gen_bitwise_ops",
        "gen_image_ops",
        "gen_linalg_ops",
        "gen_math_ops",
        "gen_nn_ops",
        "gen_random_ops",
        "gen_spectral_ops",
        "histogram_ops",
        "image_ops_impl",
        "linalg_impl",
        "linalg_ops",
        "manip_ops",
        "math_ops",
        "nn_impl",
        "nn_ops",
        "random_ops",
        "shape_ops",
        "sort_ops",
        "special_math_ops",
        "spectral_ops",
        "stateless_random_ops",
        "tensor_getitem_override",
        "tensor_conversion",
        "window_ops",
    }
)
_OP_NAME = re.compile(r"(?:compat\.v1\.)?(?:(?P<space>[a-z_]+)\.)?(?P<op>[A-Za-z][A-Za-z0-9_]*)")


def is_allowed_op_name(name) -> bool:
    """Whether a stored op name has the form of an allowed op ("nn.relu", "concat", "compat.v1.squeeze").

    The name alone; `resolve_tf_op` also checks what it resolves to.
    """
    match = _OP_NAME.fullmatch(name) if isinstance(name, str) else None
    return bool(match) and (match["space"] or "") in _OP_NAMESPACES


def resolve_tf_op(name: str):
    """The TensorFlow function stored under `name` ("math.multiply" → `tf.math.multiply`).

    Only computations on tensors resolve (see `_OP_NAMESPACES`, `_OP_MODULES`): a model file cannot
    reach TensorFlow's file system, printing, Python or configuration functions through a name.

    Raises:
        ModelLoadError: The name is not an allowed op, or TensorFlow has no such function.
    """
    import tensorflow as tf

    if not is_allowed_op_name(name):
        raise ModelLoadError(refusal(name))
    parts = name.split(".")
    root = tf
    if parts[:2] == ["compat", "v1"]:
        root, parts = tf.compat.v1, parts[2:]
    try:
        op = functools.reduce(getattr, parts, root)
    except AttributeError:
        raise ModelLoadError(
            f"the file calls the TensorFlow op tf.{name}, which this TensorFlow "
            f"({tf.__version__}) does not have; load it with the TensorFlow version that wrote it"
        ) from None
    module = getattr(op, "__module__", "") or ""
    if not (callable(op) and module.startswith("tensorflow.python.") and module.rsplit(".", 1)[-1] in _OP_MODULES):
        raise ModelLoadError(refusal(name))
    return op


def refusal(name) -> str:
    """The message refusing a stored op name that is not an allowed op."""
    return (
        f"the file names tf.{name} as a layer (tf.keras TFOpLambda), which is not a computation on tensors; "
        "deadrelu refuses it (even with `unsafe`): a model file may only call TensorFlow's math, nn, "
        "array and image ops"
    )


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

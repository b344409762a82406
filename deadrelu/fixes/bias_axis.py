"""A Keras bug the fixing commands steer around: channels-first biases on the TensorFlow backend.

Keras's TensorFlow backend turns `keras.ops.add(x, bias)` into `tf.nn.bias_add` and guesses the
data format from the shapes: a bias reshaped to `(1, C, 1, ...)` whose C equals the size of `x`'s
*last* axis is added along that last axis. A Conv*, DepthwiseConv*, SeparableConv* or
Conv*Transpose layer with `data_format="channels_first"` whose channel count equals its output's
last spatial size therefore adds its bias across columns instead of channels. Measured with Keras
3.15.1 on TensorFlow 2.21 (CPU): eagerly and under XLA for every such layer; in a plain
`tf.function` (how `predict`, `fit` and deadrelu's scan run on a CPU) TensorFlow's graph optimizer
fuses a Conv1D/Conv2D with its bias and gets it right, while Conv3D and the other kinds stay wrong.

So such a model computes one function in a compiled step and another eagerly, and removing or
re-drawing units can move a layer into or out of the bug. What the fixing commands do about it:

- their proofs (the output check, `deadrelu.fixes.check.compare_outputs`) run both models the way
  the scan ran them (`as_scanned`), so a model is compared with the function its units were measured
  on, not with an eager call Keras computes differently;
- `prune` never gives a layer as many channels as its last spatial size (it keeps a dead unit);
- a difference left where the bug is present is reported as this bug (`describe`), not as the
  user's data or a bug in deadrelu.

Whether the installed Keras has the bug is found by running `keras.ops.add` once
(`adds_bias_on_last_axis`), so a Keras that fixes it — and the JAX and PyTorch backends, which
broadcast as written — get no special treatment.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras


@functools.cache
def adds_bias_on_last_axis() -> bool:
    """Whether the active Keras backend adds a `(1, C, 1, 1)` bias along the last axis when both have size C."""
    import keras

    x = np.zeros((1, 2, 1, 2), np.float32)
    bias = np.array([1.0, 2.0], np.float32).reshape(1, 2, 1, 1)
    out = keras.ops.convert_to_numpy(keras.ops.add(x, bias))
    return not np.array_equal(out[0, :, 0, 0], [1.0, 2.0])


def at_risk(layer: Any, channels: int, last_axis: int | None) -> bool:
    """Whether Keras would add `layer`'s bias along the wrong axis with this many channels.

    Args:
        layer: A layer (any kind).
        channels: Its output channels (its bias length).
        last_axis: The size of its output's last axis (None when unknown).

    Returns:
        True for a channels-first layer with a bias, more than one channel, and as many channels
        as its output's last axis, on a Keras that has the bug.
    """
    if getattr(layer, "data_format", None) != "channels_first" or not getattr(layer, "use_bias", False):
        return False
    if channels < 2 or last_axis != channels:
        return False
    return adds_bias_on_last_axis()


def misplaced_biases(model: keras.Model) -> dict[str, int]:
    """The layers of `model` whose bias Keras adds along the wrong axis (see the module docstring).

    Args:
        model: A `keras.Model` (nested models are searched too).

    Returns:
        Per layer name, its channel count; empty when no layer is affected.

    Example:
        >>> misplaced_biases(model)
        {'conv': 6}
    """
    from deadrelu._keras_compat import call_nodes, child_layers

    found = {}
    for layer in child_layers(model, recursive=True):
        bias = getattr(layer, "bias", None)
        if bias is None or len(bias.shape) != 1:
            continue
        channels = int(bias.shape[0])
        for node in call_nodes(layer):
            shape = tuple(node.outputs[0].shape)
            if len(shape) >= 3 and at_risk(layer, channels, shape[-1]):
                found[layer.name] = channels
    return found


def describe(layers: dict[str, int]) -> str:
    """The bug, said for these layers: one clause to put in a message."""
    named = ", ".join(f"'{name}' ({channels} channels)" for name, channels in sorted(layers.items()))
    return (
        f"Keras's TensorFlow backend adds the bias of channels_first layer(s) {named} along their last "
        "spatial axis, which has as many entries as they have channels, instead of along their channels "
        "(a Keras bug: keras.ops.add's bias_add shortcut)"
    )


class _AsScanned:
    """Runs a model as the scan does on TensorFlow: one `tf.function`, no XLA, inference mode."""

    def __init__(self, model):
        import tensorflow as tf

        self._fn = tf.function(lambda x: model(x, training=False), autograph=False, reduce_retracing=True)

    def __call__(self, x, training: bool = False):
        return self._fn(x)


def as_scanned(model: keras.Model, affected: dict[str, int]) -> Any:
    """`model`, or a callable that runs it as the scan ran it when the bug touches `affected` layers.

    Args:
        model: A `keras.Model`.
        affected: Layers with a misplaced bias (`misplaced_biases` of the models compared).

    Returns:
        `model` itself when `affected` is empty or the backend is not TensorFlow; else a callable
        `(x, training=False)` that runs it in one `tf.function`.

    Example:
        >>> run = as_scanned(model, misplaced_biases(model))
        >>> outputs = run(x, training=False)
    """
    from deadrelu.backends import TENSORFLOW, current

    if affected and current() == TENSORFLOW:
        return _AsScanned(model)
    return model

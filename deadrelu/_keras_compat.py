"""Every private Keras (and TensorFlow) internal deadrelu relies on, in one place.

Keras 3 has no public API for a layer's call graph (which tensors fed which call), for the
layers a container tracks, for the functions its ReLUs end in, or for an optimizer's slot layout.
deadrelu needs them, so it reads Keras's private attributes — here and nowhere else, so that a
Keras upgrade that renames one touches this file only. Each function says which attribute it
reads. TensorFlow's op callbacks (a private TensorFlow module) are reached from here too.

Importing this module is cheap: Keras is imported only inside the functions that need a class.
"""

from __future__ import annotations

import threading
from typing import Any


def child_layers(layer: Any, *, recursive: bool = False) -> list:
    """The layers `layer` tracks (not itself), in tracking order (`_flatten_layers`).

    Returns an empty list for objects that track no layers.
    """
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:
        return []
    return list(flatten(include_self=False, recursive=recursive))


def sequential_layers(model: Any) -> list:
    """A Sequential's layers including its `InputLayer` when it has one (`_layers`)."""
    return list(getattr(model, "_layers", None) or [])


def declared_dtype(layer: Any):
    """The dtype an `InputLayer` was declared with, not the dtype policy's (`_dtype`)."""
    return getattr(layer, "_dtype", None) or layer.dtype


def keras_history(tensor: Any):
    """The `(operation, node_index, tensor_index)` record of a symbolic tensor, or None."""
    return getattr(tensor, "_keras_history", None)


def call_nodes(layer: Any) -> list:
    """The nodes that record each call of `layer` in a functional graph (`_inbound_nodes`)."""
    return list(getattr(layer, "_inbound_nodes", None) or [])


def first_call_inputs(layer: Any) -> list:
    """The layers whose outputs fed the first call of `layer`; empty when it was never called."""
    nodes = call_nodes(layer)
    if not nodes:
        return []
    return [keras_history(t).operation for t in nodes[0].input_tensors if keras_history(t) is not None]


def first_call_output_shape(layer: Any) -> tuple:
    """The static shape of the first output of the first call of `layer`."""
    return tuple(call_nodes(layer)[0].outputs[0].shape)


def nodes_by_depth(function: Any) -> dict:
    """A Functional's nodes grouped by depth, outputs at depth 0 (`_nodes_by_depth`)."""
    return function._nodes_by_depth


def functional_graph(model: Any):
    """The Functional behind `model` (itself, or a built Sequential's `_functional`), or None."""
    if hasattr(model, "_nodes_by_depth") and hasattr(model, "inputs"):
        return model
    inner = getattr(model, "_functional", None)
    if inner is not None and hasattr(inner, "_nodes_by_depth"):
        return inner
    return None


def is_functional(model: Any) -> bool:
    """True for a Functional model (Sequential included, subclassed models excluded)."""
    import keras
    from keras.src.models.functional import Functional

    return isinstance(model, (keras.Sequential, Functional))


def inputs_structure(model: Any):
    """The nested structure (dict, list, single) a Functional was built with (`_inputs_struct`)."""
    return getattr(model, "_inputs_struct", None)


def optimizer_tracked_variables(optimizer: Any) -> list | None:
    """The model variables an optimizer's slot lists are aligned with (`_trainable_variables`)."""
    return getattr(optimizer, "_trainable_variables", None)


def optimizer_average_variables(optimizer: Any) -> list | None:
    """An optimizer's moving averages of the model variables (`use_ema=True`), aligned with
    `optimizer_tracked_variables`, or None (`_model_variables_moving_average`)."""
    if not getattr(optimizer, "use_ema", False):
        return None
    return getattr(optimizer, "_model_variables_moving_average", None)


def global_random_state() -> tuple:
    """Keras's global seed and `SeedGenerator` (`keras.src.backend.common.global_state`), and
    TensorFlow's eager seed with the generator of its operation seeds (`context._seed`, `_rng`),
    when TensorFlow is imported. Restore it with `set_global_random_state`."""
    import sys

    from keras.src.backend.common import global_state

    keras_state = tuple(
        global_state.get_global_attribute(name) for name in ("global_random_seed", "global_seed_generator")
    )
    tf_state = None
    if "tensorflow" in sys.modules:
        from tensorflow.python.eager import context

        ctx = context.context()
        rng = getattr(ctx, "_rng", None)
        tf_state = (getattr(ctx, "_seed", None), rng.getstate() if rng is not None else None)
    return keras_state, tf_state


def set_global_random_state(state: tuple) -> None:
    """Puts back what `global_random_state` returned."""
    import sys

    from keras.src.backend.common import global_state

    keras_state, tf_state = state
    for name, value in zip(("global_random_seed", "global_seed_generator"), keras_state):
        global_state.set_global_attribute(name, value)
    if tf_state is not None and "tensorflow" in sys.modules:
        from tensorflow.python.eager import context

        seed, rng_state = tf_state
        ctx = context.context()
        if seed is None:
            ctx._seed, ctx._rng = None, None
        else:
            context.set_global_seed(seed)
            if rng_state is not None:
                ctx._rng.setstate(rng_state)


def relu_functions() -> list[tuple[Any, str]]:
    """Where the ReLU-family functions of Keras live, as `(owner, attribute)` pairs to wrap.

    Every Keras spelling ends in one of them, looked up at call time (so wrapping them catches
    `keras.ops.relu` even when a user imported it by name before the wrap):

    - `keras.src.backend.nn.relu` / `relu6`: the active backend's functions, called by
      `keras.ops.relu`, `keras.ops.relu6`, `keras.ops.nn.*` and `keras.activations.relu6`;
    - `keras.src.activations.activations.ReLU.static_call`: what `keras.activations.relu` runs
      (its `threshold` and `max_value` variants do not call the backend's `relu` at all);
    - `keras.src.backend.numpy.maximum`: what `keras.ops.maximum` runs (`maximum(x, 0)` is a ReLU).
    """
    from keras.src import backend
    from keras.src.activations import activations

    return [
        (backend.nn, "relu"),
        (backend.nn, "relu6"),
        (activations.ReLU, "static_call"),
        (backend.numpy, "maximum"),
    ]


# TensorFlow keeps op callbacks per thread, but runs eager ops through them only while
# `execute.execute` is its `execute_with_callbacks`, a process-wide switch: its
# `remove_op_callback` turns it off whenever the calling thread has none left, also under
# another thread's callbacks. Ours keep it on while any thread has one registered.
_tf_eager = {"lock": threading.Lock(), "users": 0, "saved": None}


def add_tf_op_callback(callback) -> None:
    """Registers a TensorFlow op callback for the calling thread: it sees the ops this thread
    creates in a graph or runs eagerly (the private `context` list and `execute.execute` switch
    behind TensorFlow's `op_callbacks` module, which `tf.debugging.enable_check_numerics` uses).
    Eager execution keeps calling op callbacks until the last callback registered here is
    removed, whichever thread removes its own first."""
    from tensorflow.python.eager import context, execute

    with _tf_eager["lock"]:
        context.context().add_op_callback(callback)
        if _tf_eager["users"] == 0:
            _tf_eager["saved"] = execute.execute
            execute.execute = execute.execute_with_callbacks
        _tf_eager["users"] += 1


def remove_tf_op_callback(callback) -> None:
    """Removes a callback the calling thread registered with `add_tf_op_callback`."""
    from tensorflow.python.eager import context, execute

    with _tf_eager["lock"]:
        context.context().remove_op_callback(callback)
        _tf_eager["users"] -= 1
        if _tf_eager["users"] == 0:
            if execute.execute is execute.execute_with_callbacks and not context.context().op_callbacks:
                execute.execute = _tf_eager["saved"]
            _tf_eager["saved"] = None


def fit_callbacks(callback: Any, *, depth: int = 8) -> list:
    """The callbacks of the `fit` whose hook is running `callback` now, or `[]` when none is found.

    Keras gives a callback no reference to the others. Its `CallbackList` calls each hook in a
    loop over `self.callbacks`, so the caller frame whose `self` holds `callback` in its
    `callbacks` list is that list (up to `depth` frames up). Call it from a hook such as
    `on_train_begin`.
    """
    import sys

    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            break
        callbacks = getattr(frame.f_locals.get("self"), "callbacks", None)
        if isinstance(callbacks, list) and any(c is callback for c in callbacks):
            return list(callbacks)
        frame = frame.f_back
    return []


def jax_trace(value: Any):
    """The JAX trace a traced value belongs to (`Tracer._trace`, private), or None.

    Inside `jax.jit` every value of the step's own body shares the jit's trace; one computed in the
    body of a `lax.scan`, `fori_loop` or `cond` belongs to a trace of its own.
    """
    return getattr(value, "_trace", None)

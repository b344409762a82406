"""Op-level sites: ReLUs applied as function calls inside a layer's or a model's `call`.

A ReLU written `keras.ops.relu(x)` in a custom layer, a subclassed model, a `Lambda` or a custom
activation function is no layer that walking the model can find: it is found while the model runs.
`intercept_relus` does that for the duration of one forward pass:

- on every backend, it wraps the functions every Keras spelling ends in (`keras.ops.relu`,
  `keras.ops.relu6`, `keras.ops.nn.*`, `keras.activations.relu` with any `threshold` and
  `max_value`, `keras.activations.relu6`; see `_keras_compat.relu_functions`). They are looked up
  at call time, so a name imported before the scan is caught too;
- on TensorFlow, it also watches the creation of `Relu` and `Relu6` ops (an op callback), which
  catches what does not go through Keras: `tf.nn.relu`, `tf.nn.relu6`, tf.keras's `K.relu`.

Each application is handed over with the innermost layer whose `call` applied it and its
position among the ReLUs applied during that call of that layer, so a layer called twice applies
the same sites twice. When the pass is over, `Interception.applied` says how each one is applied
(`HowApplied`): exactly as a layer's custom `activation` or a `Lambda`'s function (which `patch`
can replace), or inside `call` code, fed by a sublayer whose units it keeps (which `revive` can
re-initialise). The stack of layer calls comes from wrapping each layer's `call` on the
instance for the pass: that sees `TimeDistributed`'s direct `layer.call(...)` per time step too,
which Keras's name-scope stack (opened by `Layer.__call__` only) does not. Applications that belong
to something already accounted for are skipped: the activation of a layer-level site (the caller
says so with `quiet`), and the inside of layers whose own ReLUs define them (`ReLU` with a slope,
`PReLU`, `LeakyReLU`, `ELU`, recurrent layers listed as not measured: `SiteMap.quiet_layers`).

Everything is put back when the pass ends, also when it raises: wrapped functions on their
modules and classes, each layer's `call` (set with `object.__setattr__`, bypassing Keras's
attribute tracking, as the probe's own hooks), the op callback. Importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from deadrelu._keras_compat import add_tf_op_callback, relu_functions, remove_tf_op_callback

# TensorFlow op types that are ReLUs (their outputs are the site's outputs).
_TF_RELU_OPS = {"Relu": "relu", "Relu6": "relu6"}


@dataclasses.dataclass(frozen=True)
class ReluSpec:
    """The ReLU an application computes.

    Attributes:
        activation: "relu" or "relu6".
        max_value: The cap (6.0 for relu6), or None.
        threshold: Values at or below it are zeroed (0.0 for a plain ReLU).
    """

    activation: str
    max_value: float | None = None
    threshold: float = 0.0

    @property
    def kind(self) -> str:
        """The site kind: "op:relu", "op:relu6", or "op:relu(threshold=0.5, max_value=2)"."""
        if self.activation == "relu6" or (self.max_value == 6.0 and not self.threshold):
            return "op:relu6"
        extras = []
        if self.threshold:
            extras.append(f"threshold={self.threshold:g}")
        if self.max_value is not None:
            extras.append(f"max_value={self.max_value:g}")
        return "op:relu" + (f"({', '.join(extras)})" if extras else "")


@dataclasses.dataclass(frozen=True)
class Application:
    """One ReLU applied as a function call.

    Attributes:
        layer: The innermost layer (or model) whose `call` applied it.
        index: Its position among the ReLUs applied during that call of `layer`, from 0.
        relu: What it computes.
        via: "keras" (a Keras function) or "tf" (a TensorFlow op created outside Keras).
        input: The tensor it was applied to.
        output: What it returned.
    """

    layer: Any
    index: int
    relu: ReluSpec
    via: str
    input: Any = dataclasses.field(default=None, repr=False, compare=False)
    output: Any = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class HowApplied:
    """Where in its layer an op-level ReLU runs: what `patch` and `revive` can act on.

    Attributes:
        applied_in: "activation" (the layer's `activation` attribute is exactly this ReLU: it
            returns the ReLU of what it is given), "function" (the same for a `Lambda`'s
            function), or "call" (somewhere in the layer's `call` code).
        fed_by: A layer called by the same `call` whose output is the ReLU's input, when that
            `call` returns the ReLU's output (`return relu(self.dense(x))`); else None.
    """

    applied_in: str = "call"
    fed_by: Any = None


def relu_spec(negative_slope: Any = 0.0, max_value: Any = None, threshold: Any = 0.0) -> ReluSpec | None:
    """The `ReluSpec` of `keras.activations.relu(x, negative_slope, max_value, threshold)`, or None when
    it keeps a gradient for negative inputs (a slope: not a site), lets negative values through
    (a negative threshold) or its parameters are not numbers."""
    try:
        slope = float(negative_slope or 0.0)
        cap = None if max_value is None else float(max_value)
        threshold = float(threshold or 0.0)
    except (TypeError, ValueError):  # tensors: not known while tracing
        return None
    if slope != 0.0 or threshold < 0.0:  # a negative threshold lets negative values through (as Keras's
        return None  # `ReLU` layer, which refuses one, deadrelu does not measure it)
    if cap == 6.0 and threshold == 0.0:
        return ReluSpec("relu6", 6.0)
    return ReluSpec("relu", cap, threshold)


class _Frame:
    """One running call of a layer: the ReLUs it applied, the outputs of the layers it called."""

    __slots__ = ("applications", "called", "layer")

    def __init__(self, layer):
        self.layer = layer
        self.applications: list[Application] = []
        self.called: list[tuple[Any, Any]] = []  # (layer, output) of each direct sublayer call


class Interception:
    """The state of one interception: the stack of layer calls, depth inside wrapped functions.

    Attributes:
        applied: Per `(id(layer), index)` of each application seen, how it is applied
            (`HowApplied`), decided when its layer's call (or callable attribute) returns.
        calls: Per `id(layer)`, how many times its `call` ran.
    """

    def __init__(self, on_apply: Callable[[Application, Any], Any], quiet_layers: set[int], quiet: Callable[[], bool]):
        self.on_apply = on_apply
        self.quiet_layers = quiet_layers
        self.quiet = quiet
        self.depth = 0  # > 0 inside a wrapped Keras function: its own ops are not applications again
        self.stack: list[_Frame] = []
        self.applied: dict[tuple[int, int], HowApplied] = {}
        self.calls: dict[int, int] = {}

    def apply(self, relu: ReluSpec | None, x, output, via: str):
        if relu is None or not self.stack or self.quiet():
            return output
        if any(id(frame.layer) in self.quiet_layers for frame in self.stack):
            return output
        frame = self.stack[-1]
        application = Application(frame.layer, len(frame.applications), relu, via, x, output)
        frame.applications.append(application)
        return self.on_apply(application, output)

    # -- the wrappers ---------------------------------------------------------------------------

    def wrap_call(self, layer, original: Callable) -> Callable:
        @functools.wraps(original)
        def call(*args, **kwargs):
            frame = _Frame(layer)
            self.stack.append(frame)
            try:
                result = original(*args, **kwargs)
            finally:
                self.stack.pop()
            self.calls[id(layer)] = self.calls.get(id(layer), 0) + 1
            for application in frame.applications:
                key = (id(layer), application.index)
                if key not in self.applied:  # a callable attribute decided it already
                    fed_by = None
                    if application.output is result:
                        fed_by = next((sub for sub, out in frame.called if out is application.input), None)
                    self.applied[key] = HowApplied("call", fed_by)
            if self.stack:
                self.stack[-1].called.append((layer, result))
            return result

        return call

    def wrap_callable(self, layer, attribute: str, original: Callable) -> Callable:
        """A layer's activation (or a Lambda's function): is it exactly one ReLU of its input?"""

        @functools.wraps(original)
        def wrapped(x, *args, **kwargs):
            frame = self.stack[-1] if self.stack and self.stack[-1].layer is layer else None
            before = len(frame.applications) if frame is not None else 0
            result = original(x, *args, **kwargs)
            if frame is not None:
                new = frame.applications[before:]
                if len(new) == 1 and new[0].input is x and new[0].output is result:
                    self.applied.setdefault((id(layer), new[0].index), HowApplied(attribute))
            return result

        return wrapped

    def wrap_backend(self, original: Callable, activation: str) -> Callable:
        relu = ReluSpec(activation, 6.0 if activation == "relu6" else None)

        def wrapped(x, *args, **kwargs):
            if self.depth:
                return original(x, *args, **kwargs)
            self.depth += 1
            try:
                output = original(x, *args, **kwargs)
            finally:
                self.depth -= 1
            return self.apply(relu, x, output, "keras")

        return wrapped

    def wrap_static_call(self, original: Callable) -> Callable:
        def static_call(x, negative_slope=0.0, max_value=None, threshold=0.0):
            if self.depth:
                return original(x, negative_slope, max_value, threshold)
            self.depth += 1
            try:
                output = original(x, negative_slope, max_value, threshold)
            finally:
                self.depth -= 1
            return self.apply(relu_spec(negative_slope, max_value, threshold), x, output, "keras")

        return static_call

    def on_tf_op(self, op_type, inputs, attrs, outputs, op_name=None, graph=None):
        activation = _TF_RELU_OPS.get(op_type)
        if activation is not None and not self.depth:
            relu = ReluSpec(activation, 6.0 if activation == "relu6" else None)
            self.apply(relu, inputs[0] if inputs else None, outputs[0], "tf")
        return None  # the op's outputs are left as they are


_MISSING = object()


@contextlib.contextmanager
def intercept_relus(
    on_apply: Callable[[Application, Any], Any],
    layers: Iterable,
    *,
    callables: Iterable[tuple[Any, str]] = (),
    quiet_layers: set[int] = frozenset(),
    quiet: Callable[[], bool] = lambda: False,
) -> Iterator[Interception]:
    """Hands every ReLU applied as a function call to `on_apply` while the block runs.

    Args:
        on_apply: Called as `on_apply(application, output)` for each application; its return value
            replaces the output of a Keras function (return `output` to leave it as it is).
        layers: The layers an application may be attributed to: the model and every layer it holds.
            An application is attributed to the innermost of them whose `call` is running;
            applications outside all of them are ignored.
        callables: `(layer, attribute)` pairs of callable attributes (a custom `activation`, a
            `Lambda`'s `function`) to check for being exactly one ReLU (`HowApplied`).
        quiet_layers: `id`s of layers inside which applications are ignored.
        quiet: Returns True while applications are to be ignored (a layer-level site's own
            activation is running).

    Yields:
        The `Interception`, whose `applied` says how each application is applied once the block
        has run.
    """
    import keras

    state = Interception(on_apply, set(quiet_layers), quiet)
    saved_functions, saved_attributes = [], []
    callback_added = False
    try:
        for layer in layers:
            saved_attributes.append((layer, "call", layer.__dict__.get("call", _MISSING)))
            object.__setattr__(layer, "call", state.wrap_call(layer, layer.call))
        for layer, attribute in callables:
            saved_attributes.append((layer, attribute, layer.__dict__.get(attribute, _MISSING)))
            object.__setattr__(layer, attribute, state.wrap_callable(layer, attribute, getattr(layer, attribute)))
        for owner, name in relu_functions():
            before = owner.__dict__[name]
            saved_functions.append((owner, name, before))
            if isinstance(before, staticmethod):
                setattr(owner, name, staticmethod(state.wrap_static_call(before.__func__)))
            else:
                setattr(owner, name, state.wrap_backend(before, name))
        if keras.backend.backend() == "tensorflow":
            add_tf_op_callback(state.on_tf_op)
            callback_added = True
        yield state
    finally:
        if callback_added:
            remove_tf_op_callback(state.on_tf_op)
        for owner, name, before in reversed(saved_functions):
            setattr(owner, name, before)
        for layer, attribute, before in reversed(saved_attributes):
            if before is _MISSING:
                layer.__dict__.pop(attribute, None)
            else:
                object.__setattr__(layer, attribute, before)


def op_site_path(layer_path: str, index: int) -> str:
    """The path of the `index`-th ReLU applied during a call of the layer at `layer_path`."""
    return f"{layer_path}:relu_{index}"

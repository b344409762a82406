"""Op-level sites: ReLUs applied as function calls inside a layer's or a model's `call`.

A ReLU written `keras.ops.relu(x)` in a custom layer, a subclassed model, a `Lambda` or a custom
activation function is no layer that walking the model can find: it is found while the model runs.
`intercept_relus` does that for the duration of one forward pass:

- on every backend, it wraps the functions every Keras spelling ends in (`keras.ops.relu`,
  `keras.ops.relu6`, `keras.ops.nn.*`, `keras.activations.relu` with any `threshold` and
  `max_value`, `keras.activations.relu6`, and `keras.ops.maximum` against a scalar zero; see
  `_keras_compat.relu_functions`). They are looked up at call time, so a name imported before the
  scan is caught too;
- on TensorFlow, it also watches the creation of `Relu`, `Relu6` and `Maximum`-with-zero ops (an
  op callback), which catches what does not go through Keras: `tf.nn.relu`, `tf.nn.relu6`,
  `tf.maximum(x, 0)`, tf.keras's `K.relu`.

A maximum with zero is a ReLU only when the model's own code takes it: Keras's code takes some too
(its TensorFlow CELU), so the first caller outside TensorFlow and `keras.ops` must not be in Keras.

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

Several scans may run at once (threads of a service, a notebook scan beside a threaded `fit`).
The Keras functions are wrapped once for all of them, under a lock with a count of the
interceptions using them: the first installs the wrappers, the last puts the originals back. Each
wrapper holds the original function only (never a model) and dispatches to the interception
active in the calling thread and context (a `contextvars.ContextVar`): code outside every scan, or
in a thread that is not scanning, runs the original and is recorded nowhere. The step runs its
Python in the scanning thread (a `tf.function` or `jax.jit` traces in the calling thread, a
`tf.distribute` replica thread enters its own interception), so it sees its scan. TensorFlow's op
callbacks are per thread already; one dispatcher is registered per scanning thread.

Everything is put back when the pass ends, also when it raises: each layer's `call` (set with
`object.__setattr__`, bypassing Keras's attribute tracking, as the probe's own hooks), the op
callback, and, with the last interception, the wrapped functions on their modules and classes.
Two scans may run at once on two models, not on one model: the wrapped `call`s live on its layers.
Importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import importlib.util
import os
import sys
import threading
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
        spelling: How the code wrote it: "relu" (a ReLU function or op) or "maximum"
            (`keras.ops.maximum(x, 0)`, `tf.maximum(x, 0)`: a plain ReLU; names the site's path).
    """

    activation: str
    max_value: float | None = None
    threshold: float = 0.0
    spelling: str = "relu"

    @property
    def kind(self) -> str:
        """The site kind: "op:relu", "op:relu6", "op:relu(threshold=0.5, max_value=2)", or "op:maximum"
        (a plain ReLU written as the maximum of a tensor and zero)."""
        if self.spelling != "relu":
            return f"op:{self.spelling}"
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


# The interception of the running scan in this thread and context (None outside every scan). The
# wrapped functions read it on each call, so they hold no interception, hence no model, themselves.
_ACTIVE: contextvars.ContextVar[Interception | None] = contextvars.ContextVar("deadrelu_interception", default=None)


class Interception:
    """The state of one interception: the stack of layer calls, depth inside wrapped functions.

    It is seen by the wrapped functions only in the thread and context that runs its
    `intercept_relus` block.

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

    # -- the per-layer wrappers (on the instances of this scan's model) ---------------------------

    def wrap_call(self, layer, original: Callable) -> Callable:
        @functools.wraps(original)
        def call(*args, **kwargs):
            if _ACTIVE.get() is not self:  # the same layer run by another thread, or after a nested scan
                return original(*args, **kwargs)
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
            if _ACTIVE.get() is not self:
                return original(x, *args, **kwargs)
            frame = self.stack[-1] if self.stack and self.stack[-1].layer is layer else None
            before = len(frame.applications) if frame is not None else 0
            result = original(x, *args, **kwargs)
            if frame is not None:
                new = frame.applications[before:]
                if len(new) == 1 and new[0].input is x and new[0].output is result:
                    self.applied.setdefault((id(layer), new[0].index), HowApplied(attribute))
            return result

        return wrapped

    def on_tf_op(self, op_type, inputs, attrs, outputs, op_name=None, graph=None):
        if isinstance(op_type, bytes):  # eager ops run through `execute.execute` name their type in bytes
            op_type = op_type.decode()
        if self.depth or not self.stack:
            return None
        activation = _TF_RELU_OPS.get(op_type)
        if activation is not None:
            relu = ReluSpec(activation, 6.0 if activation == "relu6" else None)
            self.apply(relu, inputs[0] if inputs else None, outputs[0], "tf")
        elif op_type == "Maximum" and len(inputs) == 2:
            x = _other_than_zero(*inputs, static=True)
            if x is not None and not _called_from_keras():
                self.apply(_MAX_WITH_ZERO, x, outputs[0], "tf")
        return None  # the op's outputs are left as they are


# -- the shared wrappers: installed once for every running interception ---------------------------


def _wrap_backend(original: Callable, activation: str) -> Callable:
    """`keras.src.backend.nn.relu` / `relu6`, dispatching to this context's interception."""
    relu = ReluSpec(activation, 6.0 if activation == "relu6" else None)

    @functools.wraps(original)
    def wrapped(x, *args, **kwargs):
        state = _ACTIVE.get()
        if state is None or state.depth:  # no scan here, or inside a wrapped function already
            return original(x, *args, **kwargs)
        state.depth += 1
        try:
            output = original(x, *args, **kwargs)
        finally:
            state.depth -= 1
        return state.apply(relu, x, output, "keras")

    return wrapped


_MAX_WITH_ZERO = ReluSpec("relu", spelling="maximum")


def _wrap_maximum(original: Callable) -> Callable:
    """`keras.src.backend.numpy.maximum` (what `keras.ops.maximum` runs): `maximum(x, 0)` written in
    user code is a ReLU; with anything but a zero, or called by Keras's own code, it is not."""

    @functools.wraps(original)
    def wrapped(x1, x2, *args, **kwargs):
        state = _ACTIVE.get()
        x = None if state is None or state.depth or not state.stack else _other_than_zero(x1, x2)
        if x is None or _called_from_keras():
            return original(x1, x2, *args, **kwargs)
        state.depth += 1
        try:
            output = original(x1, x2, *args, **kwargs)
        finally:
            state.depth -= 1
        return state.apply(_MAX_WITH_ZERO, x, output, "keras")

    return wrapped


def _other_than_zero(a, b, *, static: bool = False):
    """Of `maximum(a, b)`: the tensor when the other operand is a scalar zero, else None.

    A zero is a Python or NumPy number or a one-element array equal to 0 (with `static`, also a
    TensorFlow constant: what `tf.maximum(x, 0)` turns the 0 into).
    """
    for tensor, other in ((a, b), (b, a)):
        if _is_zero(other, static) and not _is_zero(tensor, static) and _is_tensor(tensor):
            return tensor
    return None


def _is_tensor(value) -> bool:
    import numpy as np

    return not isinstance(value, (int, float, complex, np.number, np.ndarray)) and hasattr(value, "shape")


def _is_zero(value, static: bool) -> bool:
    import numpy as np

    if isinstance(value, bool):
        return False
    if _is_tensor(value) and _elements(value) != 1:
        return False  # the ReLU's input, or a tensor of zeros the size of it (not read: no copy)
    if static and _is_tensor(value):
        import tensorflow as tf

        try:
            value = tf.get_static_value(value)
        except (TypeError, ValueError):  # a symbolic tensor of another graph
            return False
        if value is None:
            return False
    if isinstance(value, (int, float, np.number)):
        return value == 0
    if isinstance(value, np.ndarray):
        return value.size == 1 and value.dtype.kind in "iuf" and float(value.reshape(())) == 0.0
    return False


def _elements(value) -> int | None:
    """A tensor's number of elements, when its shape is known while tracing; else None."""
    import numpy as np

    try:
        dims = tuple(value.shape)
        return None if any(d is None for d in dims) else int(np.prod(dims, dtype=np.int64))
    except (TypeError, ValueError):  # a shape of unknown rank
        return None


def _called_from_keras() -> bool:
    """True when the code that called `maximum` is Keras's own (its TensorFlow CELU, tf.keras's
    capped `relu`): the first frame outside TensorFlow, Keras's `ops` front end and this module is
    in Keras or tf.keras."""
    keras_sources, pass_through = _source_prefixes()
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not (filename.startswith(pass_through) or filename == __file__):
            return filename.startswith(keras_sources)
        frame = frame.f_back
    return False


@functools.cache
def _source_prefixes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(Keras's and tf.keras's source folders, the folders of the frames between user code and a
    `maximum`: TensorFlow and Keras's `ops` front end), found without importing any of them."""
    keras = _package_dir("keras")
    sources = (keras + "src" + os.sep if keras else None, _package_dir("tf_keras"))
    through = (_package_dir("tensorflow"), keras + os.path.join("src", "ops") + os.sep if keras else None)
    return tuple(p for p in sources if p), tuple(p for p in through if p)


def _package_dir(name: str) -> str | None:
    """An installed top-level package's folder (with a trailing separator), or None."""
    spec = importlib.util.find_spec(name)
    return os.path.dirname(spec.origin) + os.sep if spec is not None and spec.origin else None


def _wrap_static_call(original: Callable) -> Callable:
    """`ReLU.static_call` (what `keras.activations.relu` runs), dispatching like `_wrap_backend`."""

    @functools.wraps(original)
    def static_call(x, negative_slope=0.0, max_value=None, threshold=0.0):
        state = _ACTIVE.get()
        if state is None or state.depth:
            return original(x, negative_slope, max_value, threshold)
        state.depth += 1
        try:
            output = original(x, negative_slope, max_value, threshold)
        finally:
            state.depth -= 1
        return state.apply(relu_spec(negative_slope, max_value, threshold), x, output, "keras")

    return static_call


def _on_tf_op(op_type, inputs, attrs, outputs, op_name=None, graph=None):
    """The TensorFlow op callback (one per scanning thread), dispatching to this context's interception."""
    state = _ACTIVE.get()
    if state is not None:
        state.on_tf_op(op_type, inputs, attrs, outputs, op_name, graph)
    return None


class _Installed:
    """The wrapped Keras functions, shared by every running interception of the process.

    `acquire` installs them for the first user, `release` puts the originals back after the last
    one; both under one lock, so overlapping scans in several threads neither wrap each other's
    wrappers nor restore them too early.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.users = 0
        self.functions: list[tuple[Any, str, Any, Any]] = []  # (owner, name, original, installed)

    def acquire(self) -> None:
        with self.lock:
            if self.users == 0:
                self._install()
            self.users += 1

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                self._restore()

    def _install(self) -> None:
        try:
            for owner, name in relu_functions():
                original = owner.__dict__[name]
                if isinstance(original, staticmethod):
                    installed = staticmethod(_wrap_static_call(original.__func__))
                elif name == "maximum":
                    installed = _wrap_maximum(original)
                else:
                    installed = _wrap_backend(original, name)
                setattr(owner, name, installed)
                self.functions.append((owner, name, original, installed))
        except BaseException:
            self._restore()
            raise

    def _restore(self) -> None:
        for owner, name, original, installed in reversed(self.functions):
            # Someone who wrapped ours since keeps theirs (ours underneath only dispatches).
            if owner.__dict__.get(name) is installed:
                setattr(owner, name, original)
        self.functions.clear()


_INSTALLED = _Installed()
_THREAD = threading.local()  # .tf_users: interceptions of this thread using the op callback


def _add_op_callback() -> None:
    users = getattr(_THREAD, "tf_users", 0)
    if users == 0:
        add_tf_op_callback(_on_tf_op)
    _THREAD.tf_users = users + 1


def _remove_op_callback() -> None:
    _THREAD.tf_users -= 1
    if _THREAD.tf_users == 0:
        remove_tf_op_callback(_on_tf_op)


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

    Only calls made in the thread and context running the block are seen: a scan in another
    thread has its own interception, and code running outside every scan is left alone. An
    interception opened inside another one in the same context replaces it until it ends.

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

    Example:
        >>> with intercept_relus(lambda application, output: output, [model] + layers) as interception:
        ...     model(x)
        >>> interception.calls[id(model)]
        1
    """
    import keras

    state = Interception(on_apply, set(quiet_layers), quiet)
    # Undone in reverse order when the block ends, each step also when an earlier one raises.
    with contextlib.ExitStack() as undo:
        for layer in layers:
            undo.callback(_put_back, layer, "call", layer.__dict__.get("call", _MISSING))
            object.__setattr__(layer, "call", state.wrap_call(layer, layer.call))
        for layer, attribute in callables:
            undo.callback(_put_back, layer, attribute, layer.__dict__.get(attribute, _MISSING))
            object.__setattr__(layer, attribute, state.wrap_callable(layer, attribute, getattr(layer, attribute)))
        _INSTALLED.acquire()
        undo.callback(_INSTALLED.release)
        undo.callback(_ACTIVE.reset, _ACTIVE.set(state))
        if keras.backend.backend() == "tensorflow":
            _add_op_callback()
            undo.callback(_remove_op_callback)
        yield state


def _put_back(layer, attribute: str, before) -> None:
    if before is _MISSING:
        layer.__dict__.pop(attribute, None)
    else:
        object.__setattr__(layer, attribute, before)


def op_site_path(layer_path: str, index: int, spelling: str = "relu") -> str:
    """The path of the `index`-th ReLU applied during a call of the layer at `layer_path`
    ("block:relu_0"; "block:maximum_1" for one written `maximum(x, 0)`)."""
    return f"{layer_path}:{spelling}_{index}"

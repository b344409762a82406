"""How the probe sees inside a model's call: hooks on the sites, and the op-level sites they find.

For the duration of one call of the model (or of the step that traces it):

- `hooked` wraps every layer-level site's nonlinearity — the layer's `activation` attribute, or the
  `call` of a `ReLU` layer (`Site.hook`) — so that its output, and its input (the pre-activation z),
  are handed to a `Recorder`; the attributes are set on the instance with `object.__setattr__`
  (bypassing Keras's attribute tracking) and put back exactly as they were, even when the call
  raises. Inside `TimeDistributed` the wrapper's output is recorded and the inner layer's
  nonlinearity gives z, one time step per call (`_TimeSteps`);
- `capturing_input` does the same to the model's output softmax or sigmoid, to keep its input
  (the logits a crossentropy is computed from);
- ReLUs applied as function calls are intercepted by `deadrelu.engine.interception`, which names
  each application by its layer and place in the call; `op_site` and `how_applied` turn those into
  op-level `Site`s, and `op_layout` reads their positions and units from one sample's output.

deadrelu's own code that runs inside the model's call (the recorder, the probe's callbacks, the
statistics traced into the step) is wrapped by `own_code`: an error there is a bug in deadrelu
(`deadrelu.errors.InternalError`, exit 3), never read as data the model cannot run on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from deadrelu._keras_compat import keras_history
from deadrelu.engine.interception import Application, op_site_path
from deadrelu.engine.sites import KIND_RELU_LAYER, Site, SiteMap
from deadrelu.errors import DeadReluError, InternalError

_MISSING = object()


def unwrapped(error: InternalError) -> InternalError:
    """`error` as `own_code` raised it, when a layer's call re-raised it under its own first line.

    Keras re-raises an exception from a layer's `call` as the same type whose message starts
    "Exception encountered when calling Dense.call()." and holds the original further down; the
    command line prints the first line, so the line `own_code` wrote is brought back to the top.

    Args:
        error: An `InternalError` caught around the model's call.

    Returns:
        `error` itself, or a new `InternalError` with `own_code`'s line first.
    """
    lines = [line.strip() for line in str(error).splitlines()]
    ours = next((line for line in lines if "this is a bug in deadrelu" in line), None)
    if ours is None or lines[0] == ours:
        return error
    return InternalError(re.sub(r"\x1b\[[0-9;]*m", "", ours))


def own_code(what: str) -> Callable[[Callable], Callable]:
    """Marks a function of deadrelu that runs inside the model's call: its errors are bugs.

    The model's call is guarded against bad data (a `ValueError` from Keras's input checks becomes
    a `DataError`, exit 2); the code deadrelu runs inside that call must not be mistaken for it.
    An exception of the decorated function becomes an `InternalError` (exit 3) that names `what`
    failed; deadrelu's own errors (`DeadReluError`, `InternalError`) pass unchanged.

    Args:
        what: What the function does, for the message ("recording a site's output").

    Returns:
        A decorator.

    Example:
        >>> @own_code("recording a site's output")
        ... def record(output): ...
    """

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (DeadReluError, InternalError):
                raise
            except Exception as exc:
                raise InternalError(
                    f"{what} failed: {type(exc).__name__}: {exc}; this is a bug in deadrelu, please report it"
                ) from exc

        return guarded

    return decorate


class Record(NamedTuple):
    """One recorded application of a site.

    Attributes:
        index: The site's index among the probe's sites.
        output: What the nonlinearity returned (the site's output).
        preact: What it was applied to (the pre-activation z, the output's shape), or None when it
            cannot be observed (see `preact_of`).
        stats: The site's statistics for this application when the kernel computed them with the
            output (`Recorder.fused`), else None (the step reduces output and z itself).
    """

    index: int
    output: Any
    preact: Any = None
    stats: Any = None


class Recorder:
    """Receives site outputs from the hooks while a step is being traced (or run eagerly).

    Attributes:
        records: While `recording`: the `Record`s (site index, output, pre-activation) so far; else None.
        quiet: Greater than 0 while a layer-level site's own activation runs: a ReLU it applies is
            no op-level site.
        fuse: While `recording` with one: `fuse(site index, fn, z)` → `(output, stats)`, the site's
            ReLU applied to z and its statistics in one op (TensorFlow's forward step with the
            kernel), or None when that site's `fn` must run as it is.
    """

    def __init__(self):
        self.records: list[tuple[int, object]] | None = None
        self.watch = None
        self.perturb = None
        self.fuse = None
        self.quiet = 0

    def is_quiet(self) -> bool:
        """True while a layer-level site's own activation runs."""
        return self.quiet > 0

    @own_code("recording a site's output")
    def record(self, site_index: int, output, preact=None):
        """Records `output` as site `site_index`'s (while `recording`); returns what the model goes on with.

        Args:
            site_index: The site's index.
            output: The site's output.
            preact: The nonlinearity's input, z; kept only when it has the output's shape.
        """
        if self.records is not None:
            if self.watch is not None:
                self.watch(output)
            if self.perturb is not None:  # JAX: ∂ℓ/∂z is the gradient of a zero added to z
                output = output + self.perturb[len(self.records)]
            self.records.append(Record(site_index, output, preact_of(preact, output)))
        return output

    @own_code("applying a site's ReLU with the kernel")
    def fused(self, site_index: int, fn: Callable, args: tuple, kwargs: dict):
        """Site `site_index`'s output and statistics from `fuse`, recorded; None when `fn` must run.

        Args:
            site_index: The site's index.
            fn: The nonlinearity the site's hook wraps.
            args, kwargs: What it was called with (only a call on z alone is fused).

        Returns:
            The output the model goes on with, or None (then the caller runs `fn` and `record`s).
        """
        if self.records is None or self.fuse is None or kwargs or len(args) != 1:
            return None
        done = self.fuse(site_index, fn, args[0])
        if done is None:
            return None
        output, stats = done
        if self.watch is not None:
            self.watch(output)
        self.records.append(Record(site_index, output, args[0], stats))
        return output

    @contextlib.contextmanager
    def recording(self, *, watch=None, perturb=None, fuse=None):
        """Records for the duration of the block; yields the list the records go to.

        Args:
            watch: Called on each recorded output (TensorFlow: `GradientTape.watch`).
            perturb: Zeros added to the recorded outputs, in order (JAX gradients).
            fuse: Applies a site's ReLU and reduces it in one op (see the class), or None.
        """
        self.records, self.watch, self.perturb, self.fuse = [], watch, perturb, fuse
        try:
            yield self.records
        finally:
            self.records, self.watch, self.perturb, self.fuse = None, None, None, None


@contextlib.contextmanager
def hooked(site_map: SiteMap, recorder: Recorder):
    """Wraps every site's nonlinearity so its output reaches `recorder`; always restores.

    Fused and `Activation` sites get their `activation` attribute wrapped, `ReLU` layers (and
    `TimeDistributed` wrappers) their `call` — see `Site.hook`. A recurrent layer whose activation
    is a site is unrolled, so each time step's activation runs in the step's own graph.

    Args:
        site_map: The layer-level sites (op-level sites are intercepted, nothing to wrap).
        recorder: Where the outputs go.
    """
    saved = []
    cells: dict[int, list[Site]] = {}  # an LSTM's cell: its two sites share one `activation`
    try:
        for site in site_map.sites:
            if not site.hook:
                continue  # an op-level site: intercepted while the model runs, nothing to wrap
            layer, name = site.hook
            if site.role is not None:
                cells.setdefault(id(layer), []).append(site)
                continue
            steps = None
            if layer is not site.layer and site.recurrent is None:
                # Inside TimeDistributed: z is the inner layer's, one time step per call.
                inner = "call" if site.kind == KIND_RELU_LAYER else "activation"
                steps = _TimeSteps()
                saved.append(_set(site.layer, inner, steps.wrap(getattr(site.layer, inner))))
            probe = _unroll(site.recurrent, 1, saved) if site.recurrent is not None else None
            saved.append(_set(layer, name, _wrap(getattr(layer, name), site.index, recorder, steps, probe)))
        for roles in cells.values():
            layer, name = roles[0].hook
            probe = _unroll(roles[0].recurrent, len(roles), saved)
            wrapped = _wrap_in_turn(getattr(layer, name), [s.index for s in roles], recorder, probe)
            saved.append(_set(layer, name, wrapped))
        yield
    finally:
        for layer, name, before in reversed(saved):
            _restore(layer, name, before)


@contextlib.contextmanager
def capturing_input(layer, keep: Callable[[object], None]):
    """Hands the input of `layer`'s activation to `keep` each time it runs; always restores.

    Args:
        layer: A layer with an `activation` (the model's output softmax or sigmoid, see
            `output_activation`).
        keep: Called with the activation's input (the logits).
    """
    activation = layer.activation

    def capture(x, *args, **kwargs):
        keep(x)
        return activation(x, *args, **kwargs)

    saved = _set(layer, "activation", capture)
    try:
        yield
    finally:
        _restore(*saved)


def _unroll(recurrent, calls_per_step: int, saved: list) -> _ShapeProbe | None:
    """Makes `recurrent` run its time steps one by one where its activation can be seen.

    TensorFlow and JAX loop in a compiled `while`/`scan`: the layer is unrolled. PyTorch loops in
    Python anyway, and its unrolled loop fails on a masked `go_backwards` layer (Keras ≤ 3.15 flips
    a tuple): such a layer (a `Bidirectional`'s backward half too), when called with a mask, keeps
    its loop, which runs the first step once more to learn the output's shape; a `_ShapeProbe`
    leaves those `calls_per_step` activation calls unrecorded. Returns that probe, or None.
    """
    import keras

    saved.append(_set(recurrent, "unroll", True))
    if keras.backend.backend() != "torch" or not getattr(recurrent, "go_backwards", False):
        return None
    probe = _ShapeProbe(recurrent, calls_per_step)
    saved.append(_set(recurrent, "call", probe.wrap(recurrent.call)))
    return probe


class _ShapeProbe:
    """Counts the activation calls of a recurrent loop's extra shape step, to leave them unrecorded."""

    def __init__(self, layer, calls_per_step: int):
        self.layer = layer
        self.calls_per_step = calls_per_step
        self.pending = 0

    def wrap(self, call: Callable) -> Callable:
        def started(*args, **kwargs):
            masked = kwargs.get("mask", args[2] if len(args) > 2 else None) is not None
            object.__setattr__(self.layer, "unroll", not masked)
            self.pending = self.calls_per_step if masked else 0
            return call(*args, **kwargs)

        return started

    def take(self) -> bool:
        """True for a call of the shape step (then not recorded)."""
        if self.pending:
            self.pending -= 1
            return True
        return False


def _set(layer, name: str, value) -> tuple:
    """Sets an attribute on the instance, bypassing Keras's tracking; returns what restores it."""
    before = layer.__dict__.get(name, _MISSING)
    object.__setattr__(layer, name, value)
    return layer, name, before


def _restore(layer, name: str, before) -> None:
    if before is _MISSING:
        layer.__dict__.pop(name, None)
    else:
        object.__setattr__(layer, name, before)


def _wrap(
    fn: Callable,
    site_index: int,
    recorder: Recorder,
    steps: _TimeSteps | None = None,
    probe: _ShapeProbe | None = None,
) -> Callable:
    """`fn` (a site's nonlinearity, or the `call` of a `ReLU` layer or `TimeDistributed` wrapper) with
    its output and input recorded; `steps` collects the pre-activation of a `TimeDistributed` site,
    `probe` tells the calls of a recurrent loop's shape step (not recorded)."""

    def wrapped(*args, **kwargs):
        if probe is not None and probe.take():
            return _unrecorded(fn, recorder, args, kwargs)
        if steps is None and recorder.fuse is not None:
            fused = recorder.fused(site_index, fn, args, kwargs)
            if fused is not None:  # the kernel applied the ReLU and measured it: `fn` does not run
                return fused
        recorder.quiet += 1
        if steps is not None:
            steps.start()
        try:
            output = fn(*args, **kwargs)
        finally:
            recorder.quiet -= 1
        preact = _first_argument(args, kwargs) if steps is None else steps.stacked(output)
        return recorder.record(site_index, output, preact)

    wrapped.__name__ = getattr(fn, "__name__", "wrapped")
    wrapped.__deadrelu_wrapped__ = fn
    return wrapped


def _wrap_in_turn(
    fn: Callable, site_indices: list[int], recorder: Recorder, probe: _ShapeProbe | None = None
) -> Callable:
    """A recurrent cell's `activation` recorded as its sites in turn: a GRU's one (the candidate),
    an LSTM's two (the candidate, then the new cell state), once per time step each.

    The cell applies its activation in that order at every step of the unrolled layer, so the
    k-th call is site `site_indices[k % len(site_indices)]`.
    """
    turn = {"records": None, "calls": 0}  # counted per recording: a pass that raised leaves no offset

    def wrapped(*args, **kwargs):
        if probe is not None and probe.take():
            return _unrecorded(fn, recorder, args, kwargs)
        if turn["records"] is not recorder.records:
            turn["records"], turn["calls"] = recorder.records, 0
        site_index = site_indices[turn["calls"] % len(site_indices)]
        turn["calls"] += 1
        recorder.quiet += 1
        try:
            output = fn(*args, **kwargs)
        finally:
            recorder.quiet -= 1
        return recorder.record(site_index, output, _first_argument(args, kwargs))

    wrapped.__name__ = getattr(fn, "__name__", "wrapped")
    wrapped.__deadrelu_wrapped__ = fn
    return wrapped


def _unrecorded(fn: Callable, recorder: Recorder, args: tuple, kwargs: dict):
    """`fn(*args, **kwargs)` with nothing recorded, not even the ReLU op it applies inside."""
    recorder.quiet += 1
    try:
        return fn(*args, **kwargs)
    finally:
        recorder.quiet -= 1


def _first_argument(args: tuple, kwargs: dict):
    """The tensor a nonlinearity (or a `ReLU` layer's `call`) was applied to."""
    if args:
        return args[0]
    return kwargs.get("inputs", kwargs.get("x"))


class _TimeSteps:
    """The pre-activations of a site inside `TimeDistributed`, one per time step.

    Keras's `TimeDistributed` calls its inner layer once per time step (a Python loop, when the
    number of steps is fixed), then stacks the outputs on axis 1: z is stacked the same way. With
    a number of steps not fixed it maps the layer over the steps (`vectorized_map`), whose inner
    tensors cannot be used outside: z is not observed then (`stacked` gives None).
    """

    def __init__(self):
        self.values: list = []

    def start(self) -> None:
        self.values = []

    def wrap(self, fn: Callable) -> Callable:
        def captured(*args, **kwargs):
            self.values.append(_first_argument(args, kwargs))
            return fn(*args, **kwargs)

        captured.__name__ = getattr(fn, "__name__", "captured")
        captured.__deadrelu_wrapped__ = fn
        return captured

    def stacked(self, output):
        """The steps' pre-activations stacked like `output`, [batch, steps, ...], or None."""
        values, self.values = self.values, []
        steps = (_dims(output) or [None, None])[1:2]
        if not steps or steps[0] is None or len(values) != steps[0] or any(v is None for v in values):
            return None  # not one call per time step of a fixed number (a vectorized map)
        from keras import ops

        return ops.stack(values, axis=1)


def plain_relu(site: Site, fn: Callable, *, under_tape: bool = False) -> bool:
    """Whether `fn`, which a layer-level site's hook wraps, is Keras's own zero-slope ReLU of the site.

    Such a ReLU is what the kernel's `deadrelu_relu_site_stats` computes, bit for bit, so the
    forward step may apply it there (`Recorder.fused`): a fused or `Activation` site whose function
    is `keras.activations.relu` or `relu6` itself, or a `ReLU` layer (not a subclass) whose `call`
    is Keras's own. Recurrent sites and sites inside `TimeDistributed` run as they are.

    Args:
        site: The site.
        fn: The function its hook wraps (an `activation`, or a `ReLU` layer's bound `call`).
        under_tape: The step takes gradients through it: only a ReLU without threshold or cap,
            whose derivative the op's registered gradient (TensorFlow's `ReluGrad`) is exactly.

    Returns:
        True when the kernel may apply it.
    """
    import keras

    if site.op_level or site.recurrent is not None or not site.hook or site.hook[0] is not site.layer:
        return False
    if under_tape and (site.threshold or site.capped):
        return False
    if site.kind == KIND_RELU_LAYER:
        layer = site.layer
        return (
            type(layer) is keras.layers.ReLU
            and getattr(fn, "__self__", None) is layer
            and getattr(fn, "__func__", None) is keras.layers.ReLU.call
            and not layer.negative_slope
        )
    if site.threshold:
        return False
    if fn is keras.activations.relu:
        return site.max_value is None
    return fn is keras.activations.relu6 and site.max_value == 6.0


def preact_of(preact, output):
    """`preact` when it has `output`'s shape (z of an elementwise nonlinearity), else None.

    Args:
        preact: What a site's nonlinearity was applied to, or None.
        output: The site's output.

    Returns:
        `preact`, or None when it is missing or shaped otherwise (then the site's pre-activation
        statistics are not measured).
    """
    shape = getattr(preact, "shape", None)
    if shape is None:
        return None
    theirs, ours = _dims(output), _dims(preact)
    if theirs is None or ours is None or len(theirs) != len(ours):
        return None
    if any(a is not None and b is not None and a != b for a, b in zip(theirs, ours)):
        return None
    return preact


def _dims(tensor) -> list | None:
    try:
        shape = tensor.shape
        if getattr(shape, "rank", 0) is None:  # a TensorFlow shape of unknown rank
            return None
        return [None if d is None else int(d) for d in shape]
    except (AttributeError, TypeError, ValueError):  # no shape to compare
        return None


def output_activation(model):
    """The layer whose fused or `Activation` softmax/sigmoid makes a one-output model's output, or None."""
    import keras

    try:
        outputs = keras.tree.flatten(model.outputs)
    except Exception:  # noqa: BLE001 - a subclassed model never called symbolically
        return None
    if len(outputs) != 1:
        return None
    history = keras_history(outputs[0])
    layer = getattr(history, "operation", None) or (history[0] if history else None)
    name = getattr(getattr(layer, "activation", None), "__name__", "")
    return layer if name in ("softmax", "sigmoid") else None


# -- op-level sites -----------------------------------------------------------------------


def op_site(application: Application, index: int, site_map: SiteMap, taken: set[str]) -> Site:
    """The op-level site of an application: named after its layer's path and its place in the call.

    Args:
        application: What the interception saw (`deadrelu.engine.interception.Application`).
        index: The site's index among the probe's sites.
        site_map: The layer-level map (its `layer_paths` name the layer).
        taken: Site paths already used; the new path is added.

    Returns:
        The `Site`.
    """
    layer = application.layer
    base = op_site_path(site_map.layer_paths[id(layer)], application.index, application.relu.spelling)
    path, k = base, 2
    while path in taken:  # a layer path that already ends in ":relu_<k>" (never in practice)
        path, k = f"{base}#{k}", k + 1
    taken.add(path)
    relu = application.relu
    axis = 1 if getattr(layer, "data_format", None) == "channels_first" else -1
    if id(layer) == _top_model_id(site_map):
        # A ReLU of the model's own `call`: a cached probe holds its sites, and must not keep the
        # model alive (the proxy still answers `__class__` and `isinstance` as the model).
        layer = weakref.proxy(layer)
    return Site(
        path,
        layer,
        relu.kind,
        relu.activation,
        relu.max_value,
        relu.threshold,
        axis,
        index,
        call_index=application.index,
    )


def how_applied(site: Site, interception, site_map: SiteMap) -> Site:
    """The op-level site with what the eager pass learnt of how its layer applies it.

    Args:
        site: An op-level site (`op_site`).
        interception: The eager pass's interception (its `applied` and `calls`).
        site_map: The layer-level map.

    Returns:
        The site with `applied_in`, `fed_by` and `fed_by_path` filled in.
    """
    how = interception.applied.get((id(site.layer), site.call_index))
    if how is None:
        return dataclasses.replace(site, applied_in="call")
    fed_by = how.fed_by
    calls = interception.calls
    if fed_by is not None and (
        id(fed_by) not in site_map.layer_paths or calls.get(id(fed_by)) != calls.get(id(site.layer))
    ):
        fed_by = None  # not a layer of the model, or called elsewhere too: its units are not the site's alone
    return dataclasses.replace(
        site,
        applied_in=how.applied_in,
        fed_by=fed_by,
        fed_by_path=site_map.layer_paths[id(fed_by)] if fed_by is not None else None,
    )


def _top_model_id(site_map: SiteMap) -> int | None:
    return next(reversed(site_map.layer_paths), None)  # find_sites adds the model last


def op_layout(shape: tuple, channel_axis: int) -> tuple[int, int]:
    """(positions, units) of an op-level site from its output for one sample.

    The output need not have the batch first: a layer may fold time steps into the batch (as
    `TimeDistributed` does) before its ReLU. Whatever one sample produces, beyond its units, counts
    as that sample's positions; the step reshapes each batch's output to [samples, positions, units].

    Args:
        shape: The output's shape for one sample.
        channel_axis: The site's channel axis.

    Returns:
        `(positions, units)`.
    """
    size = int(np.prod(shape, dtype=np.int64))
    units = int(shape[channel_axis]) if len(shape) >= 2 else 1
    return max(size // max(units, 1), 1), units

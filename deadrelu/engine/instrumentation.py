"""How the probe sees inside a model's call: hooks on the sites, and the op-level sites they find.

For the duration of one call of the model (or of the step that traces it):

- `hooked` wraps every layer-level site's nonlinearity — the layer's `activation` attribute, or the
  `call` of a `ReLU` layer (`Site.hook`) — so that its output is handed to a `Recorder`; the
  attributes are set on the instance with `object.__setattr__` (bypassing Keras's attribute
  tracking) and put back exactly as they were, even when the call raises;
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
import weakref
from collections.abc import Callable

import numpy as np

from deadrelu._keras_compat import keras_history
from deadrelu.engine.interception import Application, op_site_path
from deadrelu.engine.sites import Site, SiteMap
from deadrelu.errors import DeadReluError, InternalError

_MISSING = object()


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


class Recorder:
    """Receives site outputs from the hooks while a step is being traced (or run eagerly).

    Attributes:
        records: While `recording`: the `(site index, output)` pairs recorded so far; else None.
        quiet: Greater than 0 while a layer-level site's own activation runs: a ReLU it applies is
            no op-level site.
    """

    def __init__(self):
        self.records: list[tuple[int, object]] | None = None
        self.watch = None
        self.perturb = None
        self.quiet = 0

    def is_quiet(self) -> bool:
        """True while a layer-level site's own activation runs."""
        return self.quiet > 0

    @own_code("recording a site's output")
    def record(self, site_index: int, output):
        """Records `output` as site `site_index`'s (while `recording`); returns what the model goes on with."""
        if self.records is not None:
            if self.watch is not None:
                self.watch(output)
            if self.perturb is not None:  # JAX: ∂ℓ/∂z is the gradient of a zero added to z
                output = output + self.perturb[len(self.records)]
            self.records.append((site_index, output))
        return output

    @contextlib.contextmanager
    def recording(self, *, watch=None, perturb=None):
        """Records for the duration of the block; yields the list the records go to.

        Args:
            watch: Called on each recorded output (TensorFlow: `GradientTape.watch`).
            perturb: Zeros added to the recorded outputs, in order (JAX gradients).
        """
        self.records, self.watch, self.perturb = [], watch, perturb
        try:
            yield self.records
        finally:
            self.records, self.watch, self.perturb = None, None, None


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
    try:
        for site in site_map.sites:
            if not site.hook:
                continue  # an op-level site: intercepted while the model runs, nothing to wrap
            layer, name = site.hook
            saved.append(_set(layer, name, _wrap(getattr(layer, name), site.index, recorder)))
            if site.recurrent is not None:
                saved.append(_set(site.recurrent, "unroll", True))
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


def _wrap(fn: Callable, site_index: int, recorder: Recorder) -> Callable:
    def wrapped(*args, **kwargs):
        recorder.quiet += 1
        try:
            output = fn(*args, **kwargs)
        finally:
            recorder.quiet -= 1
        return recorder.record(site_index, output)

    wrapped.__name__ = getattr(fn, "__name__", "wrapped")
    wrapped.__deadrelu_wrapped__ = fn
    return wrapped


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
    base = op_site_path(site_map.layer_paths[id(layer)], application.index)
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

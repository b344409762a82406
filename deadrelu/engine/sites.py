"""Model → sites: every place where a ReLU-family nonlinearity that can die is applied.

A *site* (docs/how-it-works.md, "Sites") is a fused `activation='relu'|'relu6'`, an `Activation('relu'|'relu6')`
layer, or a `ReLU` layer with `negative_slope == 0`: a *layer-level* site, found here by walking
the model. A ReLU applied as a function call inside a layer's or a model's `call`
(`keras.ops.relu(x)`, `tf.nn.relu`, a custom activation function, a `Lambda`) is an *op-level*
site (`kind` "op:..."): it is found while the model runs (`deadrelu.engine.interception`, used by the probe),
so `find_sites` lists layer-level sites only and records what the probe needs to name op-level
ones (every layer's path).

Nonlinearities that keep a gradient for negative inputs (LeakyReLU, PReLU, ELU, GELU, ...) cannot
die: they are listed as *other activations* so `inspect` can show them, and never measured. A
callable activation that is none of the known ones is listed as an unknown activation (not
measured) until a scan finds the ReLUs it applies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from deadrelu._keras_compat import child_layers, first_call_inputs

# Activation names (as Keras serialises them) that are sites, and their cap.
_SITE_ACTIVATIONS = {"relu": None, "relu6": 6.0}
# Layer classes whose `activation` runs inside a loop or that we cannot observe per call.
_RECURRENT_MARKERS = ("RNN", "LSTM", "GRU", "Cell", "Bidirectional")
# A SimpleRNN is measured by unrolling it while the probe runs: one copy of the step per time step.
MAX_UNROLLED_STEPS = 256

KIND_FUSED = "fused"
KIND_ACTIVATION = "activation"
KIND_RELU_LAYER = "relu_layer"
KIND_OP_PREFIX = "op:"  # op-level sites: "op:relu", "op:relu6", "op:relu(threshold=0.5)", "op:maximum", ...

UNKNOWN_REASON = "unknown activation (not measured)"


@dataclasses.dataclass(frozen=True)
class Site:
    """One place where a dying-capable ReLU is applied.

    Attributes:
        path: Names of the nested models holding the layer, then the layer's name, joined by "/".
        layer: The Keras layer object that applies the nonlinearity (for an op-level site, the
            innermost layer or model whose `call` applied it).
        kind: "fused" (a layer's `activation`), "activation" (`Activation` layer),
            "relu_layer" (`ReLU` layer), or for an op-level site "op:relu", "op:relu6",
            "op:relu(threshold=..., max_value=...)" or "op:maximum" (`maximum(x, 0)`).
        activation: "relu" or "relu6" (for `ReLU` layers: "relu").
        max_value: The cap, or None when the site is not capped.
        threshold: Values at or below it are zeroed (0 for a plain ReLU).
        channel_axis: Axis of the output that indexes units (-1, or 1 for channels_first).
        index: Position of the site in model order.
        hook: The object whose attribute the probe wraps to observe the site's output, and the
            attribute's name: `(layer, "activation")`, `(layer, "call")`, or for a layer inside
            `TimeDistributed` the wrapper's `call`, so time steps count as positions.
        recurrent: For a recurrent site (`SimpleRNN`, `GRU`, `LSTM`), the layer itself: the probe
            unrolls it while it runs, so the cell's activation is observed once per time step (each
            step a call); else None.
        role: For a `GRU` or `LSTM` site, which application of the cell's activation it is:
            "candidate" (the candidate state), or for an LSTM "state" (the new cell state on its
            way to the output); None otherwise.
        time_steps: For a recurrent site, the fixed number of time steps it runs over.
        call_index: For an op-level site, its position among the ReLUs applied during one call of
            `layer` (the `k` of the path `<layer path>:relu_<k>`); None for layer-level sites.
        applied_in: For an op-level site: "activation" (the layer's custom `activation` is exactly
            this ReLU), "function" (a `Lambda`'s function is) or "call" (inside `call` code).
        fed_by: For an op-level site applied in `call` code that returns its output: the sublayer
            whose output it takes (`return relu(self.dense(x))`), else None.
        fed_by_path: The path of `fed_by`.
    """

    path: str
    layer: object = dataclasses.field(compare=False, repr=False)
    kind: str
    activation: str
    max_value: float | None
    threshold: float
    channel_axis: int
    index: int
    hook: tuple = dataclasses.field(compare=False, repr=False, default=())
    recurrent: object = dataclasses.field(compare=False, repr=False, default=None)
    role: str | None = None
    time_steps: int | None = None
    call_index: int | None = None
    applied_in: str | None = None
    fed_by: object = dataclasses.field(compare=False, repr=False, default=None)
    fed_by_path: str | None = None

    @property
    def layer_class(self) -> str:
        return self.layer.__class__.__name__  # through a weak proxy too (see `deadrelu.engine.instrumentation.op_site`)

    @property
    def op_level(self) -> bool:
        """Whether the site is a ReLU applied as a function call (found while the model runs)."""
        return self.kind.startswith(KIND_OP_PREFIX)

    @property
    def capped(self) -> bool:
        return self.max_value is not None

    @property
    def params(self) -> dict:
        """The nonlinearity's parameters, as recorded in the report."""
        params = {"activation": self.activation}
        if self.max_value is not None:
            params["max_value"] = self.max_value
        if self.threshold:
            params["threshold"] = self.threshold
        if self.channel_axis != -1:
            params["channel_axis"] = self.channel_axis
        if self.recurrent is not None:
            params["time_steps"] = self.time_steps  # each step is one call of the site
        if self.role is not None:
            params["role"] = self.role
        if self.applied_in is not None:
            params["applied_in"] = self.applied_in
        if self.fed_by_path is not None:
            params["fed_by"] = self.fed_by_path
        return params


@dataclasses.dataclass(frozen=True)
class OtherActivation:
    """A nonlinearity that cannot die (listed, never measured)."""

    path: str
    layer_class: str
    activation: str
    reason: str


@dataclasses.dataclass
class SiteMap:
    """All sites of a model, plus the activations that are not sites.

    Attributes:
        sites: The sites in model order; after a probe's first trace (`Probe.found`), followed by
            the op-level sites in the order they first ran.
        others: Nonlinearities that are listed but never counted as dead.
        layer_paths: The path of every layer the model holds, and of the model itself (its own
            name), by `id`: what an op-level site can be attributed to.
        quiet_layers: `id`s of layers whose own ReLU ops are already accounted for (activation
            layers that keep a gradient, recurrent layers listed as not measured): ReLUs they apply
            are not op-level sites.
        callables: Callable attributes that may apply a ReLU, by layer `id`: "activation" for an
            activation deadrelu does not know, "function" for a `Lambda`.
        custom_code: Whether the model runs code of its own (a layer or model class not from
            Keras, a `Lambda`, a custom activation): the only places op-level sites can be.
        notes: One-line remarks on what runs but is not measured (filled by the probe).
    """

    sites: list[Site]
    others: list[OtherActivation]
    layer_paths: dict[int, str] = dataclasses.field(default_factory=dict, repr=False)
    quiet_layers: set[int] = dataclasses.field(default_factory=set, repr=False)
    callables: dict[int, str] = dataclasses.field(default_factory=dict, repr=False)
    custom_code: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sites)

    def __iter__(self) -> Iterator[Site]:
        return iter(self.sites)

    def by_path(self, path: str) -> Site:
        for site in self.sites:
            if site.path == path:
                return site
        raise KeyError(path)


def activation_name(fn) -> str | None:
    """Returns the serialised name of an activation function, or None."""
    if fn is None:
        return None
    return getattr(fn, "__name__", None)  # a functools.partial (changed defaults) has none


def find_sites(model) -> SiteMap:
    """Lists the sites of a model, recursing into nested and subclassed models.

    Args:
        model: A built or unbuilt `keras.Model` (Sequential, Functional or subclassed).

    Returns:
        A `SiteMap` with the layer-level sites in model order. A layer used several times is one
        site. Op-level sites (ReLUs applied as function calls) are found by a scan's first pass
        (`deadrelu.engine.probe.find_all_sites` finds them without data).

    Example:
        >>> for site in deadrelu.find_sites(model):
        ...     print(site.path, site.kind)
    """
    sites: list[Site] = []
    others: list[OtherActivation] = []
    seen: set[int] = set()
    paths: set[str] = set()
    layer_paths: dict[int, str] = {}
    visited: list = []
    quiet: set[int] = set()
    callables: dict[int, str] = {}

    def unique(path: str) -> str:
        # Subclassed models may hold two layers with the same name; a path must name one site.
        candidate, k = path, 2
        while candidate in paths:
            candidate, k = f"{path}#{k}", k + 1
        paths.add(candidate)
        return candidate

    def visit(layer, prefix: str, previous, wrapper=None) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        path = unique(f"{prefix}{layer.name}")
        layer_paths[id(layer)] = path
        visited.append(layer)
        _classify(layer, path, previous, sites, others, wrapper, quiet, callables)
        if getattr(layer, "cell", None) is not None:
            return  # a recurrent layer: its cell's activation is the layer's own, said once above
        sublayers = children(layer)
        if sublayers:
            # Nested models and container layers prefix their children's paths.
            inner_wrapper = layer if _is_time_distributed(layer) or _is_bidirectional(layer) else None
            prev = None
            for child in sublayers:
                visit(child, f"{path}/", prev, inner_wrapper)
                prev = child

    previous = None
    for layer in children(model):
        visit(layer, "", previous)
        previous = layer
    # ReLUs applied by the model's own `call` are named after the model (after its layers, so a
    # layer of the same name keeps its path).
    layer_paths[id(model)] = unique(model.name)
    custom = bool(callables) or any(not type(layer).__module__.startswith("keras.") for layer in [model, *visited])
    return SiteMap(
        sites=sites, others=others, layer_paths=layer_paths, quiet_layers=quiet, callables=callables, custom_code=custom
    )


def _is_time_distributed(layer) -> bool:
    return type(layer).__name__ == "TimeDistributed"


def children(layer: Any) -> list:
    """The direct sublayers of a model or layer, in model order, without `InputLayer`s.

    Args:
        layer: A `keras.Model` (its `layers`, in functional order for Functional and Sequential)
            or a container layer (the layers it tracks).

    Returns:
        The sublayers; empty for a leaf layer.
    """
    import keras

    if isinstance(layer, keras.Model) and hasattr(layer, "layers"):
        try:
            return [child for child in layer.layers if not isinstance(child, keras.layers.InputLayer)]
        except Exception:  # noqa: BLE001 - some subclassed models raise before build
            pass
    return [child for child in child_layers(layer) if not isinstance(child, keras.layers.InputLayer)]


def _classify(
    layer,
    path: str,
    previous,
    sites: list,
    others: list,
    wrapper=None,
    quiet: set | None = None,
    callables: dict | None = None,
) -> None:
    import keras

    quiet = set() if quiet is None else quiet
    callables = {} if callables is None else callables
    if isinstance(layer, keras.layers.Lambda):
        callables[id(layer)] = "function"  # may apply a ReLU: found, and checked, while the model runs
    cls = type(layer).__name__
    index = len(sites)

    def hook(attribute: str) -> tuple:
        # Inside TimeDistributed the inner layer runs once per time step; observing the
        # wrapper's output instead counts time steps as positions of one call.
        return (wrapper, "call") if wrapper is not None and _is_time_distributed(wrapper) else (layer, attribute)

    if isinstance(layer, keras.layers.ReLU):
        slope = float(layer.negative_slope or 0.0)
        if slope != 0.0:
            others.append(OtherActivation(path, cls, "relu", f"negative_slope={slope:g} keeps a gradient"))
            quiet.add(id(layer))
            return
        max_value = None if layer.max_value is None else float(layer.max_value)
        sites.append(
            Site(
                path,
                layer,
                KIND_RELU_LAYER,
                "relu",
                max_value,
                float(layer.threshold or 0.0),
                _inherited_channel_axis(layer, previous),
                index,
                hook("call"),
            )
        )
        return
    if isinstance(layer, (keras.layers.LeakyReLU, keras.layers.PReLU, keras.layers.ELU, keras.layers.Softmax)):
        others.append(OtherActivation(path, cls, cls.lower(), "keeps a gradient for negative inputs"))
        quiet.add(id(layer))  # PReLU applies `activations.relu` inside: not a site of its own
        return
    fn = getattr(layer, "activation", None)
    if not callable(fn) or isinstance(fn, keras.layers.Layer):
        return  # no activation, or a layer used as one (a child of this layer, classified itself)
    name = activation_name(fn)
    if name not in _SITE_ACTIVATIONS and not _is_keras_activation(fn, name):
        # A lambda, a partial, a user's function: what it applies is found while the model runs.
        others.append(OtherActivation(path, cls, name or type(fn).__name__, UNKNOWN_REASON))
        callables[id(layer)] = "activation"
        return
    is_activation_layer = isinstance(layer, keras.layers.Activation)
    if name in _SITE_ACTIVATIONS:
        roles = _recurrent_roles(layer)
        if roles is not None and (wrapper is None or _is_bidirectional(wrapper)):
            steps = _time_steps(layer if wrapper is None else wrapper)
            if steps is not None and steps <= MAX_UNROLLED_STEPS:
                for k, role in enumerate(roles):
                    sites.append(
                        Site(
                            path if role is None else f"{path}:{role}",
                            layer,
                            KIND_FUSED,
                            name,
                            _SITE_ACTIVATIONS[name],
                            0.0,
                            -1,
                            index + k,
                            (layer.cell, "activation"),
                            recurrent=layer,
                            role=role,
                            time_steps=steps,
                        )
                    )
                return
            reason = (
                f"recurrent activation over {steps} time steps: measured for up to {MAX_UNROLLED_STEPS} only"
                if steps is not None
                else "recurrent activation over a number of time steps that is not fixed or not known here: "
                "not measured"
            )
            others.append(OtherActivation(path, cls, name, reason))
            quiet.add(id(layer))
            return
        if any(marker in cls for marker in _RECURRENT_MARKERS):
            others.append(
                OtherActivation(
                    path,
                    cls,
                    name,
                    "recurrent activation: runs inside a loop, not measured "
                    "(SimpleRNN, LSTM and GRU layers are; a custom RNN cell or a cell used alone is not)",
                )
            )
            quiet.add(id(layer))
            return
        kind = KIND_ACTIVATION if is_activation_layer else KIND_FUSED
        axis = _inherited_channel_axis(layer, previous) if is_activation_layer else _own_channel_axis(layer)
        sites.append(Site(path, layer, kind, name, _SITE_ACTIVATIONS[name], 0.0, axis, index, hook("activation")))
    elif name != "linear":
        others.append(OtherActivation(path, cls, name, "cannot die (not a zero-slope ReLU)"))


def _recurrent_roles(layer) -> tuple | None:
    """The sites a recurrent layer's `activation` makes, in the order its cell applies it per step.

    A `SimpleRNN` applies it once per step (one site, named after the layer); a `GRU` once, to its
    candidate state (`<layer>:candidate`); an `LSTM` twice, to its candidate cell input, then to
    the new cell state on the way to the output (`<layer>:candidate`, `<layer>:state`). Keras's own
    classes only (a subclass may apply it otherwise); None for any other layer.
    """
    import keras

    cls = type(layer)
    if cls is keras.layers.SimpleRNN:
        return (None,)
    if cls is keras.layers.GRU:
        return ("candidate",)
    if cls is keras.layers.LSTM:
        return ("candidate", "state")
    return None


def _is_bidirectional(layer) -> bool:
    return type(layer).__name__ == "Bidirectional"


def _is_keras_activation(fn, name: str | None) -> bool:
    """Whether `fn` is one of Keras's own activation functions (so its name says what it does)."""
    import keras

    if name is None:
        return False
    try:
        return keras.activations.get(name) is fn
    except (ValueError, TypeError):
        return False


def _time_steps(layer) -> int | None:
    """The fixed number of time steps a recurrent layer runs over, or None."""
    import keras

    try:
        return keras.tree.flatten(layer.input)[0].shape[1]  # the input, without a mask beside it
    except Exception:  # noqa: BLE001 - never called symbolically (subclassed models)
        return None


def _own_channel_axis(layer) -> int:
    return 1 if getattr(layer, "data_format", None) == "channels_first" else -1


def _inherited_channel_axis(layer, previous) -> int:
    """A standalone activation inherits the layout of what feeds it.

    Walks back, breadth first, through layers without a layout of their own (Add, Dropout,
    Concatenate, ...) to the nearest conv or pooling layer (`data_format`) or BatchNormalization
    (`axis`); if there is none, the Keras default `image_data_format` decides.
    """
    queue = _inbound_layers(layer) or ([previous] if previous is not None else [])
    seen: set[int] = set()
    while queue and len(seen) < 256:
        feeder = queue.pop(0)
        if id(feeder) in seen:
            continue
        seen.add(id(feeder))
        data_format = getattr(feeder, "data_format", None)
        if data_format is not None:
            return 1 if data_format == "channels_first" else -1
        if type(feeder).__name__ == "BatchNormalization":
            return 1 if getattr(feeder, "axis", -1) in (1, [1]) else -1
        queue += _inbound_layers(feeder)
    import keras

    return 1 if keras.config.image_data_format() == "channels_first" else -1


def _inbound_layers(layer) -> list:
    """The layers whose outputs feed `layer` in a functional graph (empty elsewhere)."""
    try:
        return first_call_inputs(layer)
    except Exception:  # noqa: BLE001 - not a functional graph
        return []

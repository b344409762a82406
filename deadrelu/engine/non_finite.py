"""Non-finite values: which weights hold NaN or ±inf, whose units they are, and how a report says so.

A model whose training diverged holds NaN or ±inf in its weights, or produces them: its units are
neither dead nor alive, and a scan gives them a verdict of their own, *non-finite*
(docs/report-format.md). Two things make a unit non-finite:

- its **outputs**: the probe counts, per unit, the (sample, position) pairs whose output is NaN or
  ±inf (`deadrelu.engine.reductions`, the same count on every engine path);
- its **own weights**, read here: the entries of the layer that computes the unit —

  - a fused activation (`Dense(…, activation="relu")`), or an op-level ReLU that is a layer's
    own custom `activation`: that layer's kernel column of the unit (for a Conv*Transpose the
    kernel's output axis, for a DepthwiseConv the unit's channel and multiplier, for a
    SeparableConv its pointwise column), its bias entry, any other weight with one entry per
    unit (a SimpleRNN's recurrent column); a weight every unit reads (a SeparableConv's depthwise
    kernel) makes every unit non-finite;
  - an `Activation` or `ReLU` layer: the Dense/Conv and BatchNormalization feeding it, as
    `deadrelu.fixes.graph.LayerGraph.find_owner` finds them for revive (when it finds none — a ReLU fed
    by a layer whose output is also read elsewhere, say — only the outputs judge);
  - an op-level ReLU applied in a layer's `call` to a sublayer's output (`relu(self.dense(x))`):
    that sublayer; any other op-level ReLU: its outputs alone.

The weights are the only witness where an activation hides a non-finite input: `relu6(+inf)` is 6
and `ReLU(threshold=t)` maps NaN to 0, so such a unit looks saturated or dead on its outputs.

Every layer whose weights (trainable or not: BatchNormalization's moving statistics too) hold a
non-finite value is listed as well (`NonFiniteLayer`), sites or not, so a report can say where a
diverged model went wrong first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np


@dataclasses.dataclass
class NonFiniteLayer:
    """A layer whose weights hold NaN or ±inf.

    Attributes:
        path: The layer's path (as `layer_gradients` name it).
        layer_class: Its class name.
        values: How many of its weight entries are NaN or ±inf.
        size: How many weight entries it has.
    """

    path: str
    layer_class: str
    values: int
    size: int

    def to_dict(self) -> dict:
        return {"path": self.path, "layer": self.layer_class, "values": self.values, "size": self.size}


def non_finite_layers(groups: Iterable, read: Callable) -> tuple[list[NonFiniteLayer], set[int]]:
    """The layers, in model order, whose weights hold NaN or ±inf.

    Args:
        groups: Per layer with weights, an object with `path`, `layer_class`, `layer` and
            `variables` (`deadrelu.engine.statistics.weight_groups`, with every weight).
        read: Variable → numpy array.

    Returns:
        The `NonFiniteLayer`s, and the `id`s of their layers.
    """
    found, ids = [], set()
    for group in groups:
        values = size = 0
        for variable in group.variables:
            array = read(variable)
            if np.issubdtype(array.dtype, np.floating):
                values += int(array.size - np.count_nonzero(np.isfinite(array)))
            size += int(array.size)
        if values:
            found.append(NonFiniteLayer(group.path, group.layer_class, values, size))
            ids.add(id(group.layer))
    return found, ids


def owners(site, graph: Callable) -> list:
    """The layers whose weights are the units' own (see the module docstring).

    Args:
        site: A `deadrelu.engine.sites.Site`.
        graph: Returns the model's `deadrelu.fixes.graph.LayerGraph` (called only for `Activation` and
            `ReLU` layers, which need it).

    Returns:
        The layers, possibly none.
    """
    from deadrelu.engine.sites import KIND_FUSED
    from deadrelu.fixes.graph import UnitTarget

    if site.kind == KIND_FUSED or site.applied_in == "activation":
        return [site.layer]
    if site.op_level:
        return [site.fed_by] if site.fed_by is not None else []
    target = UnitTarget(site=site, units=np.arange(0), live=np.arange(0))
    if graph().find_owner(target) is not None:
        return []
    return [layer for layer in (target.producer, target.batchnorm) if layer is not None]


def unit_mask(layer, units: int, read: Callable) -> np.ndarray:
    """Per unit of `layer`'s output: whether the unit's own weights in `layer` hold NaN or ±inf.

    Args:
        layer: A layer computing `units` units (see the module docstring for which of its weights
            are a unit's own).
        units: Its number of output units.
        read: Variable → numpy array.

    Returns:
        A boolean array of `units` entries.
    """
    from deadrelu.fixes.edits import kernel_of
    from deadrelu.fixes.graph import weighted_kind

    kind = weighted_kind(layer)
    kernel = kernel_of(kind, layer)[0] if kind is not None else None
    shared = (
        {id(v) for v in layer.weights} - {id(kernel), id(getattr(layer, "bias", None))} if kind is not None else set()
    )
    mask = np.zeros(units, bool)
    for variable in layer.weights:
        bad = ~np.isfinite(read(variable))
        if not bad.any():
            continue
        if variable is kernel and kind == "transpose":  # (..., out, in)
            bad = np.moveaxis(bad, -2, -1)
        elif variable is kernel and kind == "depthwise":  # (..., in, multiplier): unit c * multiplier + m
            bad = bad.reshape(*bad.shape[:-2], -1)
        if id(variable) in shared or bad.ndim == 0 or bad.shape[-1] != units:
            mask[:] = True  # a weight every unit reads
        else:
            mask |= bad.reshape(-1, units).any(axis=0)
    return mask


def first_non_finite(sites: list, layers: list[dict]) -> dict | None:
    """Where a diverged model's non-finite values appear first, in model order.

    Args:
        sites: The report's `SiteReport`s, in model order.
        layers: The report's `non_finite_layers` (dicts), in model order.

    Returns:
        `{"weights": <path of the first layer whose weights hold NaN or ±inf, or None>,
        "outputs": <path of the first site with a NaN or ±inf output, or None>}`; None when
        there is neither (the model has not diverged).
    """
    weights = layers[0]["path"] if layers else None
    outputs = next(
        (s.path for s in sites if s.non_finite_outputs is not None and np.any(s.non_finite_outputs)),
        None,
    )
    return None if weights is None and outputs is None else {"weights": weights, "outputs": outputs}


def divergence_text(summary: dict) -> str | None:
    """One sentence saying that the model diverged and where, from a report's `summary`; None if it did not.

    Example:
        >>> divergence_text(report.summary)
        "the model has diverged: 12 units are non-finite (NaN/inf); weights first non-finite in
        layer 'hidden', outputs first non-finite at site 'hidden'"
    """
    if not summary.get("diverged"):
        return None
    count = summary.get("non_finite", 0)
    units = f"{count:,} unit is" if count == 1 else f"{count:,} units are"
    text = f"the model has diverged: {units} non-finite (NaN/inf)"
    first = summary.get("first_non_finite") or {}
    weights, outputs = first.get("weights"), first.get("outputs")
    if weights is not None:
        text += f"; weights first non-finite in layer '{weights}'"
        if outputs is not None:
            text += f", outputs first non-finite at site '{outputs}'"
    elif outputs is not None:
        text += f"; the weights are finite: outputs overflow to NaN/inf first at site '{outputs}'"
    return text

"""ReLUs right after `Add` (ResNet v1, hand-built residual nets): which branch owns a unit.

A unit `k` of `relu(a + b)` has no weights of its own: it is dead because `a[k] + b[k] ≤ 0` on
every input. Its incoming weights are those of the layers that end the Add's branches — a linear
Dense/Conv, optionally through a BatchNormalization, whose output nothing but the Add reads. An
identity shortcut (the block's input added as it is) has no such layer.

- `revive` gives the unit fresh incoming weights on ONE branch: channel `k` of that branch's
  Dense/Conv (and its BatchNormalization channel, reset as for any revived unit). The Add's output
  must be read by the ReLU alone, so that the changed sum reaches nothing else (in Xception the
  next block's shortcut reads the sum too: those units are left with the reason); the other branch
  keeps its value, and the unit fires where the new branch value exceeds minus the old one.
  The first input of the Add (in the order the Add reads them) whose branch qualifies is chosen;
  `UnitTarget.via` says which. Its outgoing weights are cut like any revived unit's
  (`deadrelu.fixes.propagation`): where the ReLU's output feeds the next block's Add through an
  identity shortcut, the revived value is added to that block's branch, and the walk follows it
  to the next ReLU; the unit is revived only if every layer reading the footprint there reads no
  live signal through the same entries (the next block's unit is dead too), else it is left with
  the reason.
- `prune` removes channel `k` from every branch that owns it (`UnitTarget.start`: each branch's
  footprint starts at its last layer's output), so the channel leaves the Add from every input; an
  input without a layer of its own (an identity shortcut) must lose the channel through another
  removed unit (the previous block's dead unit `k`), which the carrying walk checks.

Example:
    >>> graph = LayerGraph.build(model)
    >>> add_node, relu_call = add_feeding(graph, target.site)
    >>> revive_owner(graph, target, add_node, relu_call)  # None: a branch was chosen
    >>> target.producer.name, target.via
"""

from __future__ import annotations

import dataclasses

from deadrelu.engine.sites import KIND_FUSED, KIND_RELU_LAYER
from deadrelu.fixes.graph import (
    FlatNode,
    LayerGraph,
    UnitTarget,
    batchnorm_axis,
    channels_first,
    is_batchnorm,
    is_linear,
    weighted_kind,
)


@dataclasses.dataclass
class Branch:
    """One input of an Add, and the layers that make it.

    Attributes:
        index: Position of the input among the Add's inputs (0 for the first).
        producer: The linear Dense/Conv ending the branch, or None.
        batchnorm: The BatchNormalization between `producer` and the Add, if any.
        why: Why the branch cannot own the sum's units (None when it can).
    """

    index: int
    producer: object = None
    batchnorm: object = None
    why: str | None = None

    @property
    def last(self):
        """The layer whose output the Add reads: the BatchNormalization, else the Dense/Conv."""
        return self.batchnorm if self.batchnorm is not None else self.producer

    def describe(self, add) -> str:
        """The branch in words, e.g. "input 2 of Add 'add': Conv2D 'c3' → BatchNormalization 'bn3'"."""
        text = f"input {self.index + 1} of Add '{add.name}': {type(self.producer).__name__} '{self.producer.name}'"
        return text + (f" → BatchNormalization '{self.batchnorm.name}'" if self.batchnorm is not None else "")


def add_feeding(graph: LayerGraph, site) -> tuple[FlatNode, FlatNode] | None:
    """The Add feeding a standalone ReLU site directly, and the ReLU's call.

    Args:
        graph: The model's `LayerGraph`.
        site: A `deadrelu.engine.sites.Site`.

    Returns:
        `(add node, relu node)`, or None when the site is not a ReLU layer called once on an Add's output.
    """
    if site.kind == KIND_FUSED or site.recurrent is not None or getattr(site, "op_level", False):
        return None
    calls = graph.nodes_of.get(id(site.layer), [])
    if len(calls) != 1 or len(calls[0].inputs) != 1:
        return None
    feeder = graph.producer.get(calls[0].inputs[0])
    if feeder is None or type(feeder.layer).__name__ != "Add":
        return None
    return feeder, calls[0]


def sum_reason(graph: LayerGraph, add_node: FlatNode, relu_call: FlatNode) -> str | None:
    """Why the Add's output cannot change (or lose a channel) for the ReLU alone, or None."""
    add = add_node.layer
    if len(graph.nodes_of.get(id(add), [])) != 1:
        return f"Add '{add.name}' is called more than once, so its branches serve other sums too"
    if graph.only_consumer(add_node) is not relu_call:
        key = add_node.outputs[0]
        others = [
            f"{type(n.layer).__name__} '{n.layer.name}'" for n in graph.consumers.get(key, []) if n is not relu_call
        ]
        parts = others[:3] + (["a model output"] if key in graph.outputs else [])
        return (
            f"the sum of Add '{add.name}' is also read by {', '.join(parts)} (e.g. the next block's "
            "shortcut), which sees the sum itself rather than the ReLU's zeros"
        )
    return None


def branches(graph: LayerGraph, add_node: FlatNode) -> list[Branch]:
    """Each input of the Add, with the Dense/Conv (and BatchNormalization) that owns its channels.

    A branch qualifies when its input has the Add's own shape (no broadcasting) and is made by a
    linear Dense/Conv, optionally followed by a BatchNormalization over the channel axis, each called
    once and read by nothing but the next (the Add last).

    Args:
        graph: The model's `LayerGraph`.
        add_node: The Add's call.

    Returns:
        One `Branch` per input, in the Add's order; `why` is None for those that qualify.
    """
    out_shape = graph.shapes[add_node.outputs[0]]
    found = []
    for index, key in enumerate(add_node.inputs):
        branch = Branch(index)
        found.append(branch)
        name = f"input {index + 1}"
        if graph.shapes[key] != out_shape:
            branch.why = f"{name} is broadcast to the sum's shape"
            continue
        node = graph.producer.get(key)
        if node is None:
            branch.why = f"{name} is a model input (no weights of its own)"
            continue
        reader = add_node
        if is_batchnorm(node.layer):
            bn = node.layer
            rank = len(graph.shapes[key])
            if graph.only_consumer(node) is not add_node or len(graph.nodes_of[id(bn)]) != 1:
                branch.why = f"{name}: BatchNormalization '{bn.name}' is also used elsewhere"
                continue
            if batchnorm_axis(bn, rank) != (0 if _channels_first_node(graph, node) else rank - 1):
                branch.why = f"{name}: BatchNormalization '{bn.name}' normalises another axis than the channels"
                continue
            branch.batchnorm, reader = bn, node
            node = graph.producer.get(node.inputs[0])
            if node is None:
                branch.why = f"{name}: BatchNormalization '{bn.name}' reads a model input (no weights of its own)"
                continue
        layer = node.layer
        if weighted_kind(layer) is None:
            branch.why = f"{name} comes from {type(layer).__name__} '{layer.name}' (a shortcut: no weights of its own)"
        elif not is_linear(layer):
            branch.why = f"{name}: {type(layer).__name__} '{layer.name}' applies {layer.activation.__name__} itself"
        elif graph.only_consumer(node) is not reader or len(graph.nodes_of[id(layer)]) != 1:
            branch.why = f"{name}: the output of '{layer.name}' is also used elsewhere"
        elif branch.batchnorm is not None and channels_first(layer) != _channels_first_node(graph, reader):
            branch.why = f"{name}: BatchNormalization '{branch.batchnorm.name}' normalises another axis"
        else:
            branch.producer = layer
    return found


def _channels_first_node(graph: LayerGraph, bn_node: FlatNode) -> bool:
    """Whether the convolution feeding a BatchNormalization is channels-first (False for Dense or none)."""
    feeder = graph.producer.get(bn_node.inputs[0])
    return feeder is not None and channels_first(feeder.layer) and len(graph.shapes[bn_node.inputs[0]]) > 1


def revive_owner(graph: LayerGraph, target: UnitTarget, add_node: FlatNode, relu_call: FlatNode) -> str | None:
    """Makes one branch of the Add the owner of the target's units (sets `producer`, `batchnorm`, `via`).

    Args:
        graph: The model's `LayerGraph`.
        target: Units of a ReLU layer fed directly by `add_node`.
        add_node: The Add's call.
        relu_call: The ReLU's call.

    Returns:
        None when a branch was chosen (the first that qualifies), else why the units are left.
    """
    add = add_node.layer
    if target.site.kind == KIND_RELU_LAYER:
        target.threshold = float(target.site.threshold or 0.0)
    reason = sum_reason(graph, add_node, relu_call)
    if reason:
        return f"fed by Add '{add.name}': {reason}"
    found = branches(graph, add_node)
    for branch in found:
        if branch.why is None:
            target.producer, target.batchnorm = branch.producer, branch.batchnorm
            target.via = branch.describe(add)
            return None
    return (
        f"fed by Add '{add.name}', and no input of it ends in a linear Dense/Conv (optionally through a "
        f"BatchNormalization) read by the Add alone, whose channel could take new weights: "
        + "; ".join(branch.why for branch in found)
    )


def prune_targets(graph: LayerGraph, target: UnitTarget) -> tuple[list[UnitTarget], str | None] | None:
    """For a ReLU fed by an Add: one target per branch that owns the units, or why there is none.

    Each returned target has the branch's `producer`/`batchnorm` and `start` (its last layer), so
    that prune removes the channel from that branch; inputs without a layer of their own must lose
    the channel through other removed units (checked by the carrying walk).

    Args:
        graph: The model's `LayerGraph`.
        target: Units of a site (any kind).

    Returns:
        None when the site is not a ReLU fed by an Add; else `(targets, None)` or `([], reason)`.
    """
    found = add_feeding(graph, target.site)
    if found is None:
        return None
    add_node, relu_call = found
    add = add_node.layer
    reason = sum_reason(graph, add_node, relu_call)
    if reason:
        return [], f"fed by Add '{add.name}': {reason}"
    usable, whys = [], []
    for branch in branches(graph, add_node):
        why = branch.why
        if why is None and weighted_kind(branch.producer) == "depthwise":
            why = f"input {branch.index + 1}: DepthwiseConv '{branch.producer.name}' has units that follow its inputs"
        if why is None and (getattr(branch.producer, "groups", 1) or 1) > 1:
            why = f"input {branch.index + 1}: '{branch.producer.name}' is a grouped convolution"
        if why is None:
            usable.append(branch)
        else:  # it may still lose the channel through another removed unit: the walk decides
            whys.append(why)
    if not usable:
        return [], (
            f"fed by Add '{add.name}', and no input of it ends in a linear Dense/Conv (optionally through a "
            "BatchNormalization) read by the Add alone, to remove the channel from: " + "; ".join(whys)
        )
    threshold = float(target.site.threshold or 0.0) if target.site.kind == KIND_RELU_LAYER else 0.0
    return [
        dataclasses.replace(
            target,
            producer=branch.producer,
            batchnorm=branch.batchnorm,
            start=branch.last,
            via=branch.describe(add),
            threshold=threshold,
        )
        for branch in usable
    ], None

"""The walk that follows units forward through a model's `LayerGraph`: which layers read them.

`Propagation` walks that graph forward once. Each `UnitTarget` is a *slot*; each tensor carries a
`Flow`: per slot, the entries the slot's units can reach (the slot's *footprint*), and the entries
that may be non-zero on the data at all (`live`: everything except units known to be zero, and
what only they feed). Layer by layer:

- layers that move, copy or pool entries (Flatten, Reshape, Permute, pooling, padding, cropping,
  upsampling, Concatenate, ...) are run on 0/1 indicators: each is monotone with f(0) = 0, so an
  output entry is reached exactly where it reads a reached input entry;
- inference-time identities (Dropout & co.) and elementwise activations with f(0) = 0 pass the
  flow on unchanged;
- merges (Add, Subtract, Average, Maximum, Minimum) take the union of their inputs;
- a target with a `start` (prune, a ReLU fed by `Add`: `deadrelu.fixes.residual`) also starts its
  footprint at that layer's output, the end of one branch of the Add, holding zeros;
- layers with per-channel weights (Dense, Conv*, DepthwiseConv*, SeparableConv*, Conv*Transpose,
  BatchNormalization) *read* the footprint and stop it: the walk records a `Read` — per slot, the
  rows (Dense) or input channels of the kernel that see it — and their outputs start clean;
  a walk that does not carry (revive) reads `SimpleRNN` / `GRU` / `LSTM` (and `Bidirectional`) alike,
  through their input kernel's rows (`deadrelu.fixes.revive_recurrent.reads_inputs`);
- any other layer (Lambda, Softmax, LayerNormalization, custom layers) mixes entries in ways the
  walk cannot follow, and a footprint may reach a model output: both are recorded as `Escape`s.

The walk decides nothing. Whether a read can be cut off (revive zeroes those kernel entries) or
removed (prune drops them), and whether an escape is fatal, is up to the caller.

A *carrying* walk (`carry=True`, for prune) follows the entries that will be deleted from every
tensor, and their values, further:

- the footprint's entries are known: each carries the constant the unit is replaced by (0 for a
  dead unit), and every layer the footprint passes is run on those values (`values`);
- layers that keep channels apart — BatchNormalization, DepthwiseConv* — *carry* it: they read it
  (a `Read` with `carried=True`: their channels go too) and their output channels that read only
  deleted channels are deleted in turn, holding the constants the layer makes of them (a
  BatchNormalization after a ReLU turns a dead unit into `beta - mean * gamma / sqrt(var + eps)`);
- pooling, padding, cropping and upsampling delete whole channels (a padded border goes with its
  channel); Flatten, Reshape, Permute, RepeatVector and Concatenate move entries one to one;
- Multiply is followed like the other merges;
- what cannot be deleted is an `Escape` with its reason (`why`): a merge whose inputs do not all
  delete the same entries ("partial"), a channel only partly reached or a reshape that scatters
  the entries so that no rectangular tensor is left ("shape"), an axis that would lose every
  entry ("empty"), a grouped convolution ("grouped").

Per tensor, a carrying walk keeps the union of the footprints (`removed`: the entries the pruned
model no longer has) and their values (`values`).

Example:
    >>> graph = LayerGraph.build(model)
    >>> graph.find_owner(target)
    >>> walk = Propagation(graph, [target]).run()
    >>> for consumer in walk.consumers().values():
    ...     print(consumer.layer.name, np.flatnonzero(consumer.rows[0]))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from deadrelu.fixes.graph import (
    FlatNode,
    LayerGraph,
    UnitTarget,
    channels_first,
    input_channel_axis,
    is_batchnorm,
    set_channels,
    site_axis,
    weighted_kind,
)
from deadrelu.fixes.revive_recurrent import reads_inputs

# Layer classes the walk follows (matched by class name, so subclasses of other classes stay out).
_WINDOWED = ("ZeroPadding", "Cropping", "UpSampling")
MERGES = frozenset({"Add", "Subtract", "Average", "Maximum", "Minimum"})
STRUCTURAL = frozenset(
    {
        "Flatten",
        "Reshape",
        "Permute",
        "RepeatVector",
        "Concatenate",
        "MaxPooling1D",
        "MaxPooling2D",
        "MaxPooling3D",
        "AveragePooling1D",
        "AveragePooling2D",
        "AveragePooling3D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling2D",
        "GlobalMaxPooling3D",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling2D",
        "GlobalAveragePooling3D",
        "ZeroPadding1D",
        "ZeroPadding2D",
        "ZeroPadding3D",
        "Cropping1D",
        "Cropping2D",
        "Cropping3D",
        "UpSampling1D",
        "UpSampling2D",
        "UpSampling3D",
    }
)
# Structural layers that keep each channel apart; the others (Flatten, Reshape, Permute,
# RepeatVector, Concatenate) move each entry to one place.
PER_CHANNEL = frozenset(name for name in STRUCTURAL if "Pooling" in name or name[:-2] in _WINDOWED)
MOVERS = STRUCTURAL - PER_CHANNEL
# Identities at inference time.
IDENTITIES = frozenset(
    {
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "ActivityRegularization",
        "Identity",
    }
)
_ACTIVATION_LAYERS = {"Activation", "ReLU", "LeakyReLU", "PReLU", "ELU"}
# Elementwise activations that map 0 to 0 (checked numerically as well) and never mix units.
_ELEMENTWISE = {
    "relu",
    "relu6",
    "elu",
    "selu",
    "gelu",
    "silu",
    "swish",
    "tanh",
    "leaky_relu",
    "linear",
    "mish",
    "softsign",
    "hard_silu",
    "hard_swish",
    "celu",
    "hard_tanh",
}


def carries(layer) -> bool:
    """True for a layer a carrying walk follows through: each output channel reads one input channel.

    BatchNormalization over one axis and DepthwiseConv* (channel `c` makes output channels
    `c * depth_multiplier ... c * depth_multiplier + depth_multiplier - 1`).
    """
    if is_batchnorm(layer):
        axis = layer.axis
        return not isinstance(axis, (list, tuple)) or len(axis) == 1
    return weighted_kind(layer) == "depthwise"


def grouped(layer) -> bool:
    """True for a convolution whose input channels are split into groups (`groups > 1`)."""
    return (getattr(layer, "groups", 1) or 1) > 1


@dataclasses.dataclass
class Flow:
    """What the walk knows about one tensor (shapes without the batch axis).

    Attributes:
        footprint: Per slot, the entries the slot's units can reach (only slots that reach some).
        live: The entries that may be non-zero on the data (a carrying walk: and are not held by
            a footprint).
        values: A carrying walk's known values on the footprint's entries (zeros elsewhere), or
            None when there is no footprint.
    """

    footprint: dict[int, np.ndarray]
    live: np.ndarray
    values: np.ndarray | None = None


@dataclasses.dataclass
class Read:
    """One call of a layer with per-channel weights, on a tensor some footprint may reach.

    Attributes:
        step: The call's position in `LayerGraph.nodes`.
        node: The call.
        axis: The input axis (without the batch axis) whose entries own separate weights
            (`input_channel_axis`).
        per_position: True when each weight along `axis` is shared by several input entries
            (a convolution's channel, BatchNormalization on images); False for a Dense on a vector.
        live: Over `axis`: the input rows/channels that may be non-zero on the data.
        rows: Per slot, over `axis`: the input rows/channels its footprint reaches (only slots
            reaching some).
        carried: True when a carrying walk followed the footprint through the layer
            (BatchNormalization, DepthwiseConv*: the channels it reads go, and what it makes of them).
        values: In a carrying walk, the known values of the input on the footprint's entries
            (zeros elsewhere), or None when no footprint reaches the call.
    """

    step: int
    node: FlatNode
    axis: int
    per_position: bool
    live: np.ndarray
    rows: dict[int, np.ndarray]
    carried: bool = False
    values: np.ndarray | None = None

    @property
    def layer(self):
        return self.node.layer


@dataclasses.dataclass
class Escape:
    """A footprint the walk cannot follow further.

    Attributes:
        step: Position of the call in `LayerGraph.nodes` (`len(nodes)` for a model output).
        slot: The slot whose footprint escapes.
        node: The call of a layer that mixes entries without per-channel weights (Lambda, Softmax,
            custom layers, ...), or None when the footprint reaches a model output.
        why: "mixes" (the layer mixes entries), "output" (a model output), and in a carrying walk
            "partial" (a merge whose other inputs do not delete the same entries), "shape" (a
            channel only partly reached, or entries a reshape scatters: no rectangular tensor is
            left), "empty" (every entry along an axis would go) or "grouped" (a grouped convolution).
    """

    step: int
    slot: int
    node: FlatNode | None
    why: str = "mixes"


@dataclasses.dataclass
class Consumer:
    """A layer with per-channel weights that some footprint reaches, over all its calls.

    Attributes:
        layer: The layer.
        rows: Per slot, the input rows/channels its footprint reaches in any call.
        live: The input rows/channels that may be non-zero on the data in any call.
        per_position: True when some call shares each weight across several input entries.
    """

    layer: object
    rows: dict[int, np.ndarray]
    live: np.ndarray
    per_position: bool


class Propagation:
    """One forward walk of the targets' footprints (see the module docstring).

    Args:
        graph: The model's `LayerGraph`.
        targets: The units to follow; target `i` is slot `i`. A footprint starts at the output
            of the target's site layer.
        zero_units: Per `id(site layer)`, `(site, units)` known to be zero on the data (dead
            units, targeted or not): they are not live. Defaults to the targets' own units.
        carry: Follow the entries that will be deleted, and their values, through the layers that
            keep channels apart (prune; see the module docstring). Defaults to False (revive: a
            footprint stops at the first layer with weights).

    Attributes:
        reads: Every call of a layer with per-channel weights, in walk order.
        escapes: Every place a footprint could not be followed, in walk order (model outputs last).
        removed: Carrying walk: per tensor key, the union of the footprints reaching it.
        values: Carrying walk: per tensor key in `removed`, the known values on those entries.
        touched: Carrying walk: per tensor key in `removed`, the slots reaching it.
        summed: Per slot, the first merge (Add, ...) where its footprint meets entries that may be
            non-zero: past it, the footprint and live signal share entries.

    Example:
        >>> walk = Propagation(graph, targets).run()
        >>> [escape.slot for escape in walk.escapes]
    """

    def __init__(
        self,
        graph: LayerGraph,
        targets: Sequence[UnitTarget],
        zero_units: Mapping[int, tuple[object, np.ndarray]] | None = None,
        *,
        carry: bool = False,
    ):
        self.graph = graph
        self.targets = list(targets)
        if zero_units is None:
            zero_units = {id(t.site.layer): (t.site, np.asarray(t.units)) for t in self.targets}
        self.zero_units = zero_units
        self.carry = carry
        self.sources: dict[int, list[int]] = {}
        self.starts: dict[int, list[int]] = {}  # a ReLU after Add (prune): the branches it leaves
        for slot, target in enumerate(self.targets):
            self.sources.setdefault(id(target.site.layer), []).append(slot)
            if target.start is not None:
                self.starts.setdefault(id(target.start), []).append(slot)
        self.reads: list[Read] = []
        self.escapes: list[Escape] = []
        self.removed: dict[tuple, np.ndarray] = {}
        self.values: dict[tuple, np.ndarray] = {}
        self.touched: dict[tuple, set[int]] = {}
        self.summed: dict[int, FlatNode] = {}

    def run(self) -> Propagation:
        """Walks the graph once.

        Returns:
            This object, with `reads` and `escapes` filled in (and `removed`, `values`, `touched`
            for a carrying walk).
        """
        graph = self.graph
        flows: dict[tuple, Flow] = {k: Flow({}, np.ones(graph.shapes[k], bool)) for k in graph.inputs}
        remaining = {k: len(v) for k, v in graph.consumers.items()}
        for step, node in enumerate(graph.nodes):
            inputs = [flows[k] for k in node.inputs]
            outputs = self._step(step, node, inputs)
            for key, flow in zip(node.outputs, outputs):
                flows[key] = flow
                if self.carry:
                    self._record(key, flow)
            for key in node.inputs:  # free what no later node reads
                remaining[key] -= 1
                if remaining[key] == 0 and key not in graph.outputs:
                    flows.pop(key, None)
        for key in graph.outputs:
            for slot, mask in flows[key].footprint.items():
                if mask.any():
                    self.escapes.append(Escape(len(graph.nodes), slot, None, "output"))
        return self

    def consumers(self) -> dict[int, Consumer]:
        """The reads gathered per layer: which consumers read each slot, and through which rows.

        Returns:
            Per `id(layer)`, a `Consumer`, for every layer some footprint reaches, in the order
            the footprints first reach them. `live` and `per_position` cover every call of the
            layer, including calls no footprint reaches.
        """
        live: dict[int, np.ndarray] = {}
        per_position: dict[int, bool] = {}
        found: dict[int, Consumer] = {}
        for read in self.reads:
            key = id(read.layer)
            live[key] = live.get(key, np.zeros_like(read.live)) | read.live
            per_position[key] = per_position.get(key, False) or read.per_position
            if read.rows:
                consumer = found.setdefault(key, Consumer(read.layer, {}, read.live, False))
                for slot, rows in read.rows.items():
                    consumer.rows[slot] = consumer.rows.get(slot, np.zeros_like(rows)) | rows
        for key, consumer in found.items():
            consumer.live, consumer.per_position = live[key], per_position[key]
        return found

    def _record(self, key: tuple, flow: Flow) -> None:
        """Keeps a tensor's removed entries and their values (zeroed elsewhere, for the next layers)."""
        slots = {slot for slot, mask in flow.footprint.items() if mask.any()}
        if not slots:
            flow.values = None
            return
        union = np.any(np.stack([flow.footprint[s] for s in slots]), axis=0)
        values = flow.values if flow.values is not None else np.zeros(union.shape, np.float32)
        flow.values = np.where(union, values, 0).astype(np.float32)
        self.removed[key], self.values[key], self.touched[key] = union, flow.values, slots

    def _escape(self, step: int, node: FlatNode | None, slots, why: str) -> None:
        for slot in slots:
            self.escapes.append(Escape(step, slot, node, why))

    def _step(self, step: int, node: FlatNode, inputs: list[Flow]) -> list[Flow]:
        layer = node.layer
        shapes = [self.graph.shapes[k] for k in node.outputs]
        cls = type(layer).__name__
        mixes = False
        if self.carry and is_batchnorm(layer) and not carries(layer):
            mixes = True  # normalises several axes at once
        elif self.carry and grouped(layer) and weighted_kind(layer) is not None:
            outputs = [Flow({}, np.ones(shape, bool)) for shape in shapes]
            self._escape(step, node, [s for f in inputs for s, m in f.footprint.items() if m.any()], "grouped")
        elif weighted_kind(layer) is not None or is_batchnorm(layer):
            if self.carry and carries(layer):
                outputs = self._carry(step, node, inputs, shapes)
            else:
                outputs = self._read(step, node, inputs, shapes)
        elif not self.carry and reads_inputs(layer, inputs):  # SimpleRNN/GRU/LSTM: input kernel rows
            outputs = self._read(step, node, inputs, shapes)
        elif _is_elementwise(layer, inputs, shapes):
            flow = inputs[0]
            outputs = [Flow(dict(flow.footprint), flow.live.copy(), self._apply(node, inputs))]
        elif cls in MERGES or (self.carry and cls == "Multiply"):
            outputs = [self._merge(step, node, inputs, shapes[0])]
        elif cls in STRUCTURAL:
            outputs = [self._structural(step, node, inputs, shapes[0])]
        else:
            mixes = True
        if mixes:
            for flow in inputs:
                self._escape(step, node, [s for s, m in flow.footprint.items() if m.any()], "mixes")
            outputs = [Flow({}, np.ones(shape, bool)) for shape in shapes]
        # The last layer of an Add's branch whose channels go with a ReLU after the Add (`target.start`).
        for slot in self.starts.get(id(layer), []) if len(outputs) == 1 else []:
            flow = outputs[0]
            mask = np.zeros(flow.live.shape, bool)
            set_channels(mask, site_axis(self.targets[slot].site, mask.ndim), self.targets[slot].units, True)
            flow.footprint[slot] = flow.footprint[slot] | mask if slot in flow.footprint else mask
            flow.live &= ~mask
            if flow.values is not None:
                flow.values = np.where(mask, 0.0, flow.values).astype(np.float32)
        # A site's output: its zero units are not live, its targeted units start a footprint.
        zero = self.zero_units.get(id(layer))
        if zero is not None and len(outputs) == 1:
            site, units = zero
            flow = outputs[0]
            axis = site_axis(site, flow.live.ndim)
            set_channels(flow.live, axis, units, False)
            for slot in self.sources.get(id(layer), []):
                target = self.targets[slot]
                mask = np.zeros(flow.live.shape, bool)
                set_channels(mask, axis, target.units, True)
                flow.footprint[slot] = flow.footprint[slot] | mask if slot in flow.footprint else mask
                if self.carry:
                    if flow.values is None:
                        flow.values = np.zeros(flow.live.shape, np.float32)
                    elif not flow.values.flags.writeable:  # a layer's output (a ReLU after Add)
                        flow.values = np.array(flow.values)
                    constants = target.constants if target.constants is not None else np.zeros(len(target.units))
                    set_channels(flow.values, axis, target.units, np.asarray(constants, np.float32))
        return outputs

    def _read(self, step: int, node: FlatNode, inputs: list[Flow], shapes) -> list[Flow]:
        """A layer with per-channel weights: records which of its input rows/channels each slot reaches."""
        self._reading(step, node, inputs[0], carried=False)
        return [Flow({}, np.ones(shape, bool)) for shape in shapes]

    def _reading(self, step: int, node: FlatNode, flow: Flow, *, carried: bool) -> Read:
        rank = flow.live.ndim
        axis = input_channel_axis(node.layer, rank)
        others = tuple(i for i in range(rank) if i != axis)
        live = flow.live.any(axis=others) if others else flow.live
        rows = {}
        for slot, mask in flow.footprint.items():
            reached = mask.any(axis=others) if others else mask
            if reached.any():
                rows[slot] = reached
        values = None
        if self.carry and rows:
            values = flow.values
            self._check_whole(step, node, flow, axis)
        read = Read(step, node, axis, bool(others), live, rows, carried, values)
        self.reads.append(read)
        return read

    def _carry(self, step: int, node: FlatNode, inputs: list[Flow], shapes) -> list[Flow]:
        """BatchNormalization / DepthwiseConv*: their channels reading deleted channels go too."""
        layer, flow, shape = node.layer, inputs[0], shapes[0]
        read = self._reading(step, node, flow, carried=True)
        if is_batchnorm(layer):
            multiplier, out_axis = 1, read.axis
        else:
            multiplier = layer.depth_multiplier
            out_axis = 0 if channels_first(layer) else len(shape) - 1
        footprint = {}
        for slot, rows in read.rows.items():
            mask = np.zeros(shape, bool)
            set_channels(mask, out_axis, np.flatnonzero(np.repeat(rows, multiplier)), True)
            footprint[slot] = mask
        out = Flow(footprint, np.ones(shape, bool))
        if footprint:
            out.live &= ~np.any(np.stack(list(footprint.values())), axis=0)
            out.values = _call_values(node, [flow.values])
        return [out]

    def _apply(self, node: FlatNode, inputs: list[Flow]) -> np.ndarray | None:
        """A carrying walk's values after a layer (None without a footprint)."""
        if not self.carry or not any(flow.footprint for flow in inputs):
            return None
        arrays = [flow.values if flow.values is not None else np.zeros(flow.live.shape, np.float32) for flow in inputs]
        return _call_values(node, arrays)

    def _merge(self, step: int, node: FlatNode, inputs: list[Flow], shape) -> Flow:
        out = _merge(inputs, shape)
        for slot, mask in out.footprint.items():  # an identity shortcut into a live sum
            if slot not in self.summed and (mask & out.live).any():
                self.summed[slot] = node
        if not self.carry or not out.footprint:
            return out
        # Dropping an entry of a sum or product drops it from every input: each must lose it too.
        covered = [_union(flow, shape) for flow in inputs]
        partial = set()
        for i, flow in enumerate(inputs):
            for slot, mask in flow.footprint.items():
                mask = np.broadcast_to(mask, shape)
                if any((mask & ~other).any() for j, other in enumerate(covered) if j != i):
                    partial.add(slot)
        self._escape(step, node, sorted(partial), "partial")
        out.values = self._apply(node, inputs)
        return out

    def _structural(self, step: int, node: FlatNode, inputs: list[Flow], shape) -> Flow:
        out = _structural(node, inputs, shape)
        if not self.carry or not out.footprint:
            return out
        if type(node.layer).__name__ in PER_CHANNEL:
            for flow in inputs:
                self._check_whole(step, node, flow, _structural_axis(node.layer, flow.live.ndim))
            # A deleted channel goes whole, its padded border included (which holds 0).
            axis = _structural_axis(node.layer, len(shape))
            others = tuple(i for i in range(len(shape)) if i != axis)
            for slot, mask in out.footprint.items():
                reached = mask.any(axis=others) if others else mask
                out.footprint[slot] = np.zeros(shape, bool)
                set_channels(out.footprint[slot], axis, np.flatnonzero(reached), True)
            out.live &= ~_union(out, shape)
        elif rectangle(_union(out, shape)) is None:
            self._escape(step, node, sorted(out.footprint), "shape")
        out.values = self._apply(node, inputs)
        return out

    def _check_whole(self, step: int, node: FlatNode, flow: Flow, axis: int) -> None:
        """Channels along `axis` are deleted whole or not at all, and never all of them."""
        if not flow.footprint:
            return
        rank = flow.live.ndim
        others = tuple(i for i in range(rank) if i != axis)
        union = _union(flow, flow.live.shape)
        whole = union.all(axis=others) if others else union
        bad = []
        for slot, mask in flow.footprint.items():
            reached = mask.any(axis=others) if others else mask
            if (reached & ~whole).any():
                bad.append(slot)
        self._escape(step, node, bad, "shape")
        if whole.all():
            self._escape(step, node, sorted(flow.footprint), "empty")


def _union(flow: Flow, shape) -> np.ndarray:
    union = np.zeros(shape, bool)
    for mask in flow.footprint.values():
        union |= np.broadcast_to(mask, shape)
    return union


def rectangle(mask: np.ndarray, axis: int | None = None) -> tuple[int, np.ndarray] | None:
    """Whether deleting the entries of `mask` leaves a rectangular array, and along which axis.

    Args:
        mask: Boolean, the entries to delete (without the batch axis).
        axis: The axis to try first (the channel axis). Defaults to None (the last axis first).

    Returns:
        `(axis, indices)`: the mask is every entry of those indices along that axis, so deleting
        them leaves an array whose entries keep their row-major order; None when no axis works.
        An empty mask gives `(last axis, no indices)`.
    """
    rank = mask.ndim
    order = list(range(rank - 1, -1, -1))
    if axis is not None:
        order.remove(axis % rank)
        order.insert(0, axis % rank)
    total = int(mask.sum())
    for k in order:
        others = tuple(i for i in range(rank) if i != k)
        reached = mask.any(axis=others) if others else mask
        if total == int(reached.sum()) * (mask.size // max(mask.shape[k], 1)):
            return k, np.flatnonzero(reached)
    return None


def _structural_axis(layer, rank: int) -> int:
    """The channel axis of a pooling/padding/cropping/upsampling layer's input or output."""
    return 0 if rank == 1 or channels_first(layer) else rank - 1


def _is_elementwise(layer, inputs: list[Flow], shapes) -> bool:
    """An inference-time identity, or an elementwise activation with f(0) = 0."""
    cls = type(layer).__name__
    if len(inputs) != 1 or len(shapes) != 1 or inputs[0].live.shape != shapes[0]:
        return False
    if cls in IDENTITIES:
        return True
    if cls not in _ACTIVATION_LAYERS:
        return False
    if cls == "Activation" and getattr(layer.activation, "__name__", None) not in _ELEMENTWISE:
        return False
    zeros = np.zeros((1,) + shapes[0], np.float32)
    try:
        return bool(np.all(np.asarray(layer(zeros, training=False)) == 0))
    except Exception:  # noqa: BLE001
        return False


def _merge(inputs: list[Flow], shape) -> Flow:
    """Add & co.: an entry may be non-zero / may be reached where any input's may."""
    live = np.zeros(shape, bool)
    footprint: dict[int, np.ndarray] = {}
    for flow in inputs:
        live |= np.broadcast_to(flow.live, shape)
        for slot, mask in flow.footprint.items():
            footprint[slot] = footprint.get(slot, np.zeros(shape, bool)) | np.broadcast_to(mask, shape)
    return Flow(footprint, live)


def _structural(node: FlatNode, inputs: list[Flow], shape) -> Flow:
    """Moves, copies and pools entries: runs the layer itself on 0/1 indicators.

    Each of these layers is monotone and maps 0 to 0, so an output entry is positive exactly
    where some input entry it reads is 1.
    """
    slots = sorted({slot for flow in inputs for slot in flow.footprint})
    live = _call_indicator(node, [flow.live[None] for flow in inputs])[0]
    footprint = {}
    if slots:
        stacked = [np.stack([flow.footprint.get(s, np.zeros(flow.live.shape, bool)) for s in slots]) for flow in inputs]
        out = _call_indicator(node, stacked)
        footprint = {slot: out[i] for i, slot in enumerate(slots) if out[i].any()}
    return Flow(footprint, live)


def _call_indicator(node: FlatNode, arrays: list[np.ndarray]) -> np.ndarray:
    """Replays the node's call (same arguments) on 0/1 arrays; True where the output is positive."""
    return _call(node, [a.astype(np.float32) for a in arrays]) > 0


def _call_values(node: FlatNode, arrays: list[np.ndarray]) -> np.ndarray:
    """Replays the node's call on one sample of values (no batch axis); returns its first output."""
    return _call(node, [np.asarray(a, np.float32)[None] for a in arrays])[0]


def _call(node: FlatNode, arrays: list[np.ndarray]) -> np.ndarray:
    """Replays the node's call (same arguments, inference mode) on arrays with a batch axis."""
    values = {id(t): a for t, a in zip(node.node.input_tensors, arrays)}
    args, kwargs = node.node.arguments.fill_in(values)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("training", "mask")}
    outputs = node.layer(*args, **kwargs, training=False)
    if isinstance(outputs, (list, tuple)):
        outputs = outputs[0]
    return np.asarray(outputs)

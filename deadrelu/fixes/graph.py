"""A model as one flat graph of layer calls, and which layer owns each unit's weights.

Editing the weights of a unit (one output channel of a layer) raises two questions:

1. *Which layer owns it?* Its incoming weights are a kernel column of the layer that computes it:
   the site's own Dense/Conv for a fused `activation='relu'`, the Dense/Conv (and
   BatchNormalization) feeding a standalone `ReLU` layer. `LayerGraph.find_owner` answers this.
2. *Which layers read it, through which entries of their weights?* The walk over this graph,
   `deadrelu.fixes.propagation.Propagation`, answers this.

`LayerGraph` flattens a Functional or Sequential model into `FlatNode`s, one per call of a leaf
layer, in the order Keras runs them: nested models are inlined (their inner inputs aliased to the
tensors that feed them), and a shared layer appears once per call.

This module also holds what both questions ask of a single layer: how its units own their weights
(`weighted_kind`, `is_batchnorm`, `is_linear`), and along which axis its channels lie
(`input_channel_axis`, `batchnorm_axis`, `site_axis`, `set_channels`).

Example:
    >>> graph = LayerGraph.build(model)
    >>> target = UnitTarget(site=site, units=np.array([3, 7]), live=live_units)
    >>> graph.find_owner(target)  # None: target.producer now names the owning layer
    >>> target.producer.name
"""

from __future__ import annotations

import dataclasses

import numpy as np

from deadrelu._keras_compat import functional_graph, nodes_by_depth
from deadrelu.engine.sites import KIND_FUSED, KIND_RELU_LAYER

# -- layers ------------------------------------------------------------------------------------


def weighted_kind(layer) -> str | None:
    """How a layer's output units own their incoming weights.

    Args:
        layer: A Keras layer.

    Returns:
        "dense", "conv", "transpose" (Conv*Transpose), "depthwise" or "separable"; None for a
        layer without a per-unit kernel (grouped transposed convolutions included).
    """
    import keras

    L = keras.layers
    if isinstance(layer, L.Dense):
        return "dense"
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        return "separable"
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        return "depthwise"
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        return "transpose" if getattr(layer, "groups", 1) in (1, None) else None
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)):
        return "conv"
    return None


def is_batchnorm(layer) -> bool:
    """True for a `BatchNormalization` layer (by class name, as the walk matches layers)."""
    return type(layer).__name__ == "BatchNormalization"


def is_linear(layer) -> bool:
    """True when the layer applies no activation of its own."""
    fn = getattr(layer, "activation", None)
    return fn is None or getattr(fn, "__name__", None) == "linear"


def channels_first(layer) -> bool:
    """True for a convolution or pooling layer with `data_format="channels_first"`."""
    return getattr(layer, "data_format", None) == "channels_first"


def batchnorm_axis(layer, rank: int) -> int:
    """BatchNormalization's channel axis among the non-batch axes of a `rank`-dimensional input.

    Args:
        layer: A `BatchNormalization` layer.
        rank: Number of non-batch axes of its input.

    Returns:
        The axis, counted without the batch axis (-1 when the layer normalises several axes).
    """
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        axis = axis[0] if len(axis) == 1 else None
    if axis is None:
        return -1
    return (axis % (rank + 1)) - 1


def input_channel_axis(layer, rank: int) -> int:
    """The axis of a weighted layer's input whose entries own separate rows or channels of its weights.

    Args:
        layer: A layer with per-channel weights (`weighted_kind` is not None, or BatchNormalization).
        rank: Number of non-batch axes of its input.

    Returns:
        The axis, counted without the batch axis: the feature axis of a Dense (so a Dense on a
        vector reads each entry with its own kernel row), the channel axis of the others.
    """
    if is_batchnorm(layer):
        return batchnorm_axis(layer, rank)
    if weighted_kind(layer) == "dense":
        return rank - 1
    return 0 if channels_first(layer) else rank - 1


def _is_model(op) -> bool:
    import keras

    return isinstance(op, keras.Model)


def _function_of(model):
    """The Functional graph of a Functional or Sequential model, or None (subclassed)."""
    return functional_graph(model)


# -- targets -----------------------------------------------------------------------------------


@dataclasses.dataclass
class UnitTarget:
    """Units of one site to be edited, and the layers that own them.

    Attributes:
        site: The `deadrelu.engine.sites.Site` the units belong to.
        units: Indices of the units, along the site's channel axis.
        live: Indices of the site's other units (left as they are).
        producer: The layer whose kernel columns are the units' incoming weights (a Dense/Conv), or
            None when the units are only a BatchNormalization's channels. Set by
            `LayerGraph.find_owner`.
        batchnorm: The BatchNormalization between `producer` and the ReLU, if any. Set by
            `LayerGraph.find_owner`.
        threshold: The threshold of the site's `ReLU` layer (0 for other sites): the bias at which a
            unit fires wherever its weighted input is positive. Set by `LayerGraph.find_owner`.
        norm: Scratch for edits that scale new weights: the mean norm of the live units' incoming
            weights (see `deadrelu.fixes.edits.reinitialize`).
        constants: Per unit, the constant a carrying walk gives its output (prune replaces a
            dormant unit by its mean output); None for zeros (dead units).
        via: For a ReLU fed by `Add`, which branch owns the units, in words (revive's notes), or None.
        start: For a ReLU fed by `Add` (prune): the layer ending one branch of the Add, whose output
            starts the footprint too (zeros), so that the channel leaves the Add from that input.
        offset: For a unit of one direction of a `Bidirectional` layer, where that direction's
            units start in the layer's output: `units` count from the output, the site's own
            numbering is `units - offset` (`deadrelu.fixes.revive_recurrent`).
    """

    site: object
    units: np.ndarray
    live: np.ndarray
    producer: object = None
    batchnorm: object = None
    threshold: float = 0.0
    norm: float | None = None
    constants: np.ndarray | None = None
    via: str | None = None
    start: object = None
    offset: int = 0


# -- the graph ---------------------------------------------------------------------------------


@dataclasses.dataclass
class FlatNode:
    """One call of one leaf layer.

    Attributes:
        layer: The layer called.
        node: Keras's node for the call (its `input_tensors` and `arguments` replay the call).
        inputs: Keys (`LayerGraph.key`) of the tensors the call reads.
        outputs: Keys of the tensors it returns.
    """

    layer: object
    node: object
    inputs: list[tuple]
    outputs: list[tuple]


class LayerGraph:
    """A model's functional graph, nested Functional/Sequential models inlined, in call order.

    Built from Keras 3's node API: each Functional keeps its nodes by depth (the order
    `Functional.call` runs them in), each node its `operation`, `input_tensors`, `outputs` and
    `arguments`. A nested model's inner input tensors are aliased to the outer tensors that feed
    it, and its outer outputs to its inner outputs, so the walk sees one flat graph of leaf layers.
    Tensors are named by keys `(scope, id(tensor))`; the scope tells apart the calls of a nested
    model used twice.

    Attributes:
        nodes: Every `FlatNode`, in call order (a node comes after the nodes it reads from).
        shapes: Per tensor key, its shape without the batch axis.
        inputs: Keys of the model's inputs.
        outputs: Keys of the model's outputs.
        producer: Per tensor key, the node returning it (model inputs have none).
        consumers: Per tensor key, the nodes reading it.
        nodes_of: Per `id(layer)`, the nodes calling that layer.
        keys_of: Per `id(symbolic tensor)`, its keys (one per call of the model holding it): how a
            nested model's own input tensors are found in the flat graph.
        problem: Why the graph cannot be walked (no functional graph, unknown input sizes), or None.
    """

    def __init__(self):
        self.nodes: list[FlatNode] = []
        self.alias: dict[tuple, tuple] = {}
        self.shapes: dict[tuple, tuple] = {}
        self.inputs: list[tuple] = []
        self.outputs: list[tuple] = []
        self.producer: dict[tuple, FlatNode] = {}
        self.consumers: dict[tuple, list[FlatNode]] = {}
        self.nodes_of: dict[int, list[FlatNode]] = {}
        self.keys_of: dict[int, list[tuple]] = {}
        self.problem: str | None = None
        self._scopes = 0

    @classmethod
    def build(cls, model) -> LayerGraph:
        """Flattens a model's graph.

        Args:
            model: A Functional or Sequential `keras.Model` (nested models allowed).

        Returns:
            The `LayerGraph`; for a model without a functional graph (subclassed, or a Sequential
            never built) or with unknown input sizes, `problem` says why and `nodes` may be empty.
        """
        graph = cls()
        function = _function_of(model)
        if function is None:
            graph.problem = (
                "the model has no functional graph to follow (a subclassed model, or a Sequential "
                "never built); rebuild it as a Functional or Sequential model with an Input"
            )
            return graph
        graph.inputs = [graph.key(t, 0) for t in function.inputs]
        for t in function.inputs:
            graph.shapes[graph.key(t, 0)] = tuple(t.shape[1:])
            graph._remember(t, 0)
        graph._inline(function, 0)
        graph.outputs = [graph.key(t, 0) for t in function.outputs]
        for node in graph.nodes:
            for key in node.inputs:
                graph.consumers.setdefault(key, []).append(node)
            for key in node.outputs:
                graph.producer[key] = node
            graph.nodes_of.setdefault(id(node.layer), []).append(node)
        unknown = [graph.shapes[k] for k in graph.inputs if any(d is None for d in graph.shapes[k])]
        if unknown:
            graph.problem = (
                f"the model input has unknown dimensions {unknown[0]}; following units through the "
                "model needs fixed input sizes: rebuild the model with a fixed input shape"
            )
        return graph

    def key(self, tensor, scope: int) -> tuple:
        """A tensor's canonical key.

        Args:
            tensor: A symbolic Keras tensor.
            scope: 0 for the outer model; each inlined call of a nested model has its own.

        Returns:
            The key under which the flat graph knows the tensor (aliases resolved).
        """
        k = (scope, id(tensor))
        while k in self.alias:
            k = self.alias[k]
        return k

    def _remember(self, tensor, scope: int) -> None:
        keys = self.keys_of.setdefault(id(tensor), [])
        key = self.key(tensor, scope)
        if key not in keys:
            keys.append(key)

    def _inline(self, function, scope: int) -> None:
        by_depth = nodes_by_depth(function)
        for depth in sorted(by_depth, reverse=True):
            for node in by_depth[depth]:
                op = node.operation
                if op is None or node.is_input:
                    continue
                inner = _function_of(op) if _is_model(op) else None
                if inner is not None:
                    self._scopes += 1
                    inner_scope = self._scopes
                    for inner_in, outer_in in zip(inner.inputs, node.input_tensors):
                        self.alias[(inner_scope, id(inner_in))] = self.key(outer_in, scope)
                        self._remember(inner_in, inner_scope)
                    self._inline(inner, inner_scope)
                    for outer_out, inner_out in zip(node.outputs, inner.outputs):
                        self.alias[(scope, id(outer_out))] = self.key(inner_out, inner_scope)
                        self._remember(outer_out, scope)
                    continue
                outputs = [self.key(t, scope) for t in node.outputs]
                for key, t in zip(outputs, node.outputs):
                    self.shapes[key] = tuple(t.shape[1:])
                    self._remember(t, scope)
                self.nodes.append(FlatNode(op, node, [self.key(t, scope) for t in node.input_tensors], outputs))

    def only_consumer(self, node: FlatNode) -> FlatNode | None:
        """The single node reading `node`'s single output.

        Args:
            node: A node of this graph.

        Returns:
            That node, or None when `node` has several outputs, feeds a model output, or is read
            by no node or by several.
        """
        if len(node.outputs) != 1 or node.outputs[0] in self.outputs:
            return None
        readers = self.consumers.get(node.outputs[0], [])
        return readers[0] if len(readers) == 1 else None

    def find_owner(self, target: UnitTarget) -> str | None:
        """Finds the layers owning the target's units and records them on the target.

        A fused site's units are owned by the site's layer. A standalone ReLU's units are owned
        by the linear Dense/Conv feeding it (through a BatchNormalization, if any), when nothing
        else reads that layer's output; failing that, by the BatchNormalization feeding it alone
        (`Add → BN → ReLU` in pre-activation ResNets, `Concatenate → BN → ReLU` in DenseNets).

        Args:
            target: The units; `producer`, `batchnorm` and `threshold` are set on it.

        Returns:
            None when an owner was found, else why the units have none that can be edited.
        """
        site = target.site
        layer = site.layer
        calls = self.nodes_of.get(id(layer), [])
        if not calls:
            return (
                "not part of a functional graph deadrelu can follow (inside a subclassed model?); "
                "its dead units are left as they are"
            )
        if site.recurrent is not None:  # revive asks `deadrelu.fixes.revive_recurrent.recurrent_owner` instead
            return (
                f"a recurrent unit ({site.layer_class}): its step reads its own last output, which ReDo's "
                "re-initialisation does not cover"
            )
        if site.kind == KIND_FUSED:
            if weighted_kind(layer) is None:
                return f"re-initialising units of a {type(layer).__name__} is not supported"
            target.producer = layer
            return None
        # A standalone ReLU: its units are made by the Dense/Conv (and BatchNormalization) feeding it.
        if len(calls) != 1 or len(calls[0].inputs) != 1:
            return "the ReLU layer is called more than once; its units have no single producing layer"
        feeder = self.producer.get(calls[0].inputs[0])
        if feeder is None:
            return "fed directly by a model input: its units have no incoming weights"
        batchnorm = None
        if is_batchnorm(feeder.layer):
            batchnorm = feeder
            if self.only_consumer(batchnorm) is not calls[0] or len(self.nodes_of[id(batchnorm.layer)]) != 1:
                return f"BatchNormalization '{batchnorm.layer.name}' feeding it is also used elsewhere"
            feeder = self.producer.get(batchnorm.inputs[0])
        if site.kind == KIND_RELU_LAYER:
            target.threshold = float(site.threshold or 0.0)
        reason = self._weighted_producer(target, feeder, batchnorm, calls[0])
        if reason is None or batchnorm is None:
            return reason
        # No Dense/Conv of its own: the unit's own parameters are its BatchNormalization channel.
        rank = len(self.shapes[batchnorm.outputs[0]])
        if batchnorm_axis(batchnorm.layer, rank) != (rank - 1 if site.channel_axis == -1 else site.channel_axis - 1):
            return f"BatchNormalization '{batchnorm.layer.name}' normalises another axis than the units' axis"
        if not (batchnorm.layer.scale or batchnorm.layer.center):
            return f"{reason}; BatchNormalization '{batchnorm.layer.name}' has no gamma or beta to reset"
        target.producer, target.batchnorm = None, batchnorm.layer
        return None

    def _weighted_producer(self, target: UnitTarget, feeder, batchnorm, relu_call) -> str | None:
        """Dense/Conv → [BatchNormalization →] ReLU: sets the target's producer, or says why not."""
        if feeder is None:
            return "fed by a model input (through BatchNormalization or not): no incoming weights"
        producer = feeder.layer
        if weighted_kind(producer) is None:
            return (
                f"fed by {type(producer).__name__} '{producer.name}', which has no per-unit incoming "
                "weights (revive needs a Dense/Conv or a BatchNormalization of the ReLU's own before it)"
            )
        if not is_linear(producer):
            return (
                f"fed by {type(producer).__name__} '{producer.name}', which applies its own activation "
                f"({producer.activation.__name__}) before this ReLU"
            )
        expected = batchnorm if batchnorm is not None else relu_call
        if self.only_consumer(feeder) is not expected or len(self.nodes_of[id(producer)]) != 1:
            return f"the output of '{producer.name}' is also used elsewhere, so its units cannot be changed"
        if batchnorm is not None and batchnorm_axis(batchnorm.layer, len(self.shapes[batchnorm.outputs[0]])) != (
            0 if channels_first(producer) else len(self.shapes[batchnorm.outputs[0]]) - 1
        ):
            return f"BatchNormalization '{batchnorm.layer.name}' normalises another axis than the units' axis"
        target.producer = producer
        target.batchnorm = batchnorm.layer if batchnorm is not None else None
        return None


def site_axis(site, rank: int) -> int:
    """The axis of a site's output (without the batch axis) that indexes its units."""
    return 0 if site.channel_axis == 1 and rank > 1 else rank - 1


def set_channels(array: np.ndarray, axis: int, units: np.ndarray, value) -> None:
    """Sets `array`'s entries at `units` along `axis` to `value` (a scalar, or one per unit)."""
    moved = np.moveaxis(array, axis, -1)  # a view: writes go to `array`
    moved[..., units] = value

"""The smaller model of `prune`: the layers made again with fewer units, and the remaining weights.

`Shrinker` is a `deadrelu.fixes.rewriter.Rebuilder` driven by a `deadrelu.fixes.prune_plan.Plan`:
each layer the plan touches is made again from its config with fewer `units`/`filters` (and a
bias where constants are folded into one), Reshapes and nested models' inputs get the new shapes,
and every weight is the old one with the removed rows and units deleted
(`deadrelu.fixes.edits.shrunk_weights`). The layers keep their names and are plain Keras layers,
so the result loads with `keras.models.load_model` and no deadrelu.

Importing this module is cheap: Keras is imported inside the functions.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from deadrelu.errors import UnsupportedModelError
from deadrelu.fixes.graph import LayerGraph, is_batchnorm, set_channels, site_axis, weighted_kind
from deadrelu.fixes.propagation import carries, rectangle
from deadrelu.fixes.prune_plan import Plan, output_units
from deadrelu.fixes.rewriter import Rebuilder


@dataclasses.dataclass
class LayerChange:
    """How one layer of the model shrank.

    Attributes:
        name: The layer's name (the same in the pruned model).
        layer: Its class name.
        units: Output units (or channels) before and after.
        inputs: Input rows/channels read before and after.
        folded: Whether constants of removed units were folded into its bias.
    """

    name: str
    layer: str
    units: tuple[int, int] | None = None
    inputs: tuple[int, int] | None = None
    folded: bool = False


@dataclasses.dataclass
class _Cut:
    """What goes from one layer: input rows/channels, output units, and the constant its bias gains."""

    rows: np.ndarray | None = None
    units: np.ndarray | None = None
    bias: np.ndarray | None = None


def _or(a: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    return b.copy() if a is None else a | b


class Shrinker(Rebuilder):
    """Builds the pruned model from a plan: layers with fewer units and the remaining weights.

    Args:
        model: The original Sequential or Functional `keras.Model`.
        graph: Its `LayerGraph`.
        plan: What goes (`deadrelu.fixes.prune_plan.plan_pruning`).

    Example:
        >>> shrinker = Shrinker(model, graph, plan)
        >>> smaller, changes = shrinker.run(), shrinker.changes_made()
    """

    def __init__(self, model, graph: LayerGraph, plan: Plan):
        super().__init__(model)
        self.graph, self.plan = graph, plan
        self.cuts: dict[int, _Cut] = {}
        self.layers: dict[int, object] = {}
        for target in plan.targets:
            for owner in (o for o in (target.producer, target.batchnorm) if o is not None):
                mask = np.zeros(output_units(owner), bool)
                mask[target.units] = True
                cut = self.cuts.setdefault(id(owner), _Cut())
                cut.units = _or(cut.units, mask)
                self.layers[id(owner)] = owner
        for read in plan.walk.reads:
            if not read.rows:
                continue
            rows = np.any(np.stack(list(read.rows.values())), axis=0)
            cut = self.cuts.setdefault(id(read.layer), _Cut())
            cut.rows = _or(cut.rows, rows)
            self.layers[id(read.layer)] = read.layer
        for key, delta in plan.biases.items():
            self.cuts[key].bias = delta
        removed = dict(plan.walk.removed)
        for target in plan.targets:  # the owners' own outputs (before the ReLU) lose the units too
            for owner in (target.producer, target.batchnorm):
                for node in graph.nodes_of.get(id(owner), []) if owner is not None else []:
                    key = node.outputs[0]
                    mask = np.zeros(graph.shapes[key], bool)
                    set_channels(mask, site_axis(target.site, mask.ndim), target.units, True)
                    removed[key] = removed[key] | mask if key in removed else mask
        self.shapes = self._new_shapes(removed)
        self.reshapes: dict[int, tuple] = {}
        for node in graph.nodes:
            if type(node.layer).__name__ == "Reshape" and node.outputs[0] in self.shapes:
                self.reshapes[id(node.layer)] = self.shapes[node.outputs[0]]
        self.inputs: dict[int, tuple] = {}  # id(symbolic tensor) → new shape (nested models' inputs)
        for tensor_id, keys in graph.keys_of.items():
            shapes = {self.shapes[key] for key in keys if key in self.shapes}
            if len(shapes) == 1:
                self.inputs[tensor_id] = shapes.pop()

    @staticmethod
    def _new_shapes(removed: dict[tuple, np.ndarray]) -> dict[tuple, tuple]:
        shapes = {}
        for key, mask in removed.items():
            found = rectangle(mask)
            if found is None:  # the walk refuses these; a failure here is a bug
                raise RuntimeError(f"the entries removed from a tensor of shape {mask.shape} are not rectangular")
            axis, indices = found
            shape = list(mask.shape)
            shape[axis] -= len(indices)
            shapes[key] = tuple(shape)
        return shapes

    # -- Rebuilder hooks -------------------------------------------------------------------

    def new_layer(self, layer):
        cut = self.cuts.get(id(layer))
        reshape = self.reshapes.get(id(layer))
        if cut is None and reshape is None:
            return self.plain_clone(layer)
        config = layer.get_config()
        if reshape is not None:
            config["target_shape"] = list(reshape)
        if cut is not None and cut.units is not None:
            key = "units" if weighted_kind(layer) == "dense" else "filters"
            if key in config:
                config[key] = int(config[key]) - int(cut.units.sum())
        if cut is not None and cut.bias is not None and not config.get("use_bias", True):
            config["use_bias"] = True
        return self.plain_clone(layer, config)

    def changes(self, model) -> bool:
        from deadrelu._keras_compat import child_layers

        return any(id(child) in self.layers for child in child_layers(model, recursive=True))

    def unchanged_message(self, model) -> str:
        return (
            f"{model.name!r} (a sub-model) is a subclassed model: its layers cannot be rebuilt with fewer "
            "units; select other sites (`layers=`)"
        )

    def input_shape(self, tensor) -> tuple:
        shape = self.inputs.get(id(tensor))
        return tuple(tensor.shape) if shape is None else (tensor.shape[0], *shape)

    def new_values(self, old, new):
        from deadrelu.fixes.edits import shrunk_weights

        cut = self.cuts.get(id(old))
        if cut is None:
            return super().new_values(old, new)
        values = shrunk_weights(old, rows=cut.rows, units=cut.units, bias=cut.bias)
        triples = [(getattr(old, name, None), getattr(new, name), value) for name, value in values.items()]
        used = {id(source) for source, _, _ in triples if source is not None}
        leftover = [w.path for w in old.weights if id(w) not in used]
        if leftover:
            raise UnsupportedModelError(f"layer {old.name!r} has weights prune does not know how to shrink: {leftover}")
        return triples

    # -- what changed --------------------------------------------------------------------

    def changes_made(self) -> list[LayerChange]:
        """Every layer that changed, in model order."""
        changes, seen = [], set()
        for node in self.graph.nodes:
            layer = node.layer
            cut = self.cuts.get(id(layer))
            if cut is None or id(layer) in seen:
                continue
            seen.add(id(layer))
            folded = cut.bias is not None and bool(np.any(cut.bias))
            change = LayerChange(layer.name, type(layer).__name__, folded=folded)
            if cut.units is not None or (cut.rows is not None and (is_batchnorm(layer) or carries(layer))):
                before = output_units(layer)
                gone = cut.units.copy() if cut.units is not None else np.zeros(before, bool)
                if cut.rows is not None and is_batchnorm(layer):
                    gone |= cut.rows
                elif cut.rows is not None and carries(layer):
                    gone |= np.repeat(cut.rows, layer.depth_multiplier)
                change.units = (before, before - int(gone.sum()))
            if cut.rows is not None and not is_batchnorm(layer):
                change.inputs = (len(cut.rows), len(cut.rows) - int(cut.rows.sum()))
            changes.append(change)
        return changes

"""Dead units → fresh units, without changing what the model computes (ReDo recycling).

ReDo (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning")
recycles a dead unit in two moves:

1. its *incoming* weights are drawn again from the layer's own initializer and its bias is set
   to zero, so the unit fires again on part of the data;
2. its *outgoing* weights — wherever its output is consumed — are set to zero, so the model's
   outputs do not change at the moment of revival. Training then grows the outgoing weights
   from zero: they receive a gradient because the unit now fires.

Finding "wherever its output is consumed" is the hard part. `revive_in_place` walks the
functional graph (nested models included) and follows each revived unit's *footprint*: the
entries of every tensor its value can reach. Layers that only move or pool entries (Flatten,
Reshape, pooling, padding, Concatenate, Dropout, ...) and elementwise activations with
f(0) = 0 carry the footprint along; the first layer that mixes units blocks it:

- Dense / Conv* / DepthwiseConv* / SeparableConv* / Conv*Transpose: the kernel entries that read
  the footprint are zeroed (except those that feed other revived units: a revived unit may
  listen to another revived unit, since both are cut off downstream — that is what brings a
  fully dead stack of layers back);
- BatchNormalization: the channel's `gamma` is set to zero and `beta` to the constant the
  channel output before (a dead input is 0, so the channel was constant), so the channel keeps
  its value; `gamma` then grows back in training like an outgoing weight.

Alongside the footprint the walk tracks which entries may be non-zero on the data before
revival (every entry, except the outputs of dead units and padding). A footprint can only be
blocked where it does not share a kernel row or channel with such an entry; where it cannot be
blocked — it reaches a model output, a Lambda or custom layer, Softmax, LayerNormalization, or
is summed by Add with a live branch before the first mixing layer — the site is skipped and the
reason recorded.

Sites that are standalone `Activation('relu')` / `ReLU` layers are revived through the layer
that feeds them: `Dense/Conv → ReLU` or `Dense/Conv → BatchNormalization → ReLU`, when the
producing layer has a linear activation and nothing else reads its output. When a
BatchNormalization read by nothing else feeds the ReLU but no such Dense/Conv feeds it (`Add → BN →
ReLU` in pre-activation ResNets, `Concatenate → BN → ReLU` in DenseNets), the unit's own
parameters are its BatchNormalization channel: `gamma` is set as below, `beta` to the ReLU's
threshold, and the moving statistics are kept — they still describe the channel's input — so the
unit fires where its input is above its mean (or, with `gamma` negated, below it). The producer's
units are re-initialised, and for BatchNormalization the channel is reset to a fresh,
live-looking state: `gamma` = mean |gamma| of the live channels, `beta` = 0 (the ReLU's
threshold for a thresholded ReLU), `moving_mean` = 0, `moving_variance` = mean moving variance
of the live channels. Keeping the old statistics would keep the unit dead (they are what
pushed it below zero); with the fresh ones the unit fires where its new pre-activation is
positive, about half of the inputs, in inference and in training mode alike.

Scale of the new weights (`scale=`): "initializer" (the default, as in ReDo) keeps the draw as
the initializer makes it; "live" rescales each new unit's incoming weights to the mean norm of
the layer's live units. "live" fits a healthy layer whose weights have grown in training, but
it copies a bad scale too: on a real MNIST model stuck at 11% (every kernel about 10× too small,
signal vanishing through 14 Dense layers) "live" revived units stayed useless and retraining
stayed at 11%, while "initializer" reached 93% after two epochs.

Given data, the revived units are checked on it: a fresh unit reading non-negative, correlated
features can land with w·x ≤ 0 on every sample and stay dead; its new weights are then negated
(or drawn again), which changes nothing outside its own re-initialised entries.

"Outputs unchanged" holds on the data the dead units were measured on: a unit that is dead on
the scan data may fire on other inputs, and those contributions are cut off by the revival.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from deadrelu._keras_compat import functional_graph, nodes_by_depth
from deadrelu.errors import UnsupportedModelError, UsageError
from deadrelu.sites import KIND_FUSED, KIND_RELU_LAYER

# How new incoming weights are scaled (see the module docstring).
SCALES = ("initializer", "live")

# Elementwise activations that map 0 to 0 (checked numerically as well) and never mix units.
_ELEMENTWISE = {
    "relu", "relu6", "elu", "selu", "gelu", "silu", "swish", "tanh", "leaky_relu", "linear", "mish",
    "softsign", "hard_silu", "hard_swish", "celu", "hard_tanh",
}


# -- result ------------------------------------------------------------------------------------

@dataclasses.dataclass
class ReviveResult:
    """What `revive_in_place` changed.

    Attributes:
        revived: Per site path, the indices of the units that were re-initialised.
        skipped: Per site path, why its dead units were left as they are.
        reinitialized: Per modified variable (its `.path`), a boolean mask of the entries that
            were re-initialised, zeroed or reset. Every changed entry is in the mask; a training
            callback can reset the optimizer's moment slots for exactly these entries. Should two
            modified variables share a path (possible in models loaded from files with nested
            models), the second is keyed `path#2` and a note says so.
        variables: The modified variables themselves, under the same keys as `reinitialized`.
        notes: One-line remarks (fallbacks taken, ambiguities).
    """

    revived: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    reinitialized: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    variables: dict[str, object] = dataclasses.field(default_factory=dict, repr=False)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def units_revived(self) -> int:
        """How many units were revived in all."""
        return sum(len(units) for units in self.revived.values())

    def to_dict(self) -> dict:
        """A JSON-ready summary (masks are given as counts of modified entries)."""
        return {
            "revived": {path: list(units) for path, units in self.revived.items()},
            "skipped": dict(self.skipped),
            "units_revived": self.units_revived,
            "modified_entries": {path: int(mask.sum()) for path, mask in self.reinitialized.items()},
            "notes": list(self.notes),
        }


# -- public API --------------------------------------------------------------------------------

def revive(model, report_or_data, *, seed: int | None = None, scale: str = "initializer", batch_size: int = 256,
           sites=None, **scan_options):
    """Returns a copy of `model` whose dead ReLU units are re-initialised (ReDo).

    The copy computes the same outputs as `model` on the data the units were found dead on;
    the revived units fire again, so training can put them back to use. `model` itself is left
    unchanged. Given data (not a report), the revived units are checked on it and those that
    still never fire get their new incoming weights negated.

    Args:
        model: A `keras.Model` (Sequential or Functional, nested models allowed).
        report_or_data: A `Report` from `deadrelu.scan`, or data to scan (anything
            `deadrelu.scan` accepts).
        seed: Seed of the new weights (None: a fresh draw every time).
        scale: "initializer" (new weights as the layer's initializer draws them, as in ReDo) or
            "live" (rescaled to the mean norm of the layer's live units' incoming weights).
        batch_size: Batch size of the scan, when data is given.
        sites: Only revive these site paths (default: every site with dead units).
        **scan_options: More options for `deadrelu.scan` (`samples`, `rescale`, ...).

    Returns:
        The revived copy, a `keras.Model` (compiled like `model` with a fresh optimizer, when
        `model` was compiled).

    Example:
        >>> revived = deadrelu.revive(model, x_test[:2000], seed=0)
        >>> revived.fit(x_train, y_train, epochs=2)
    """
    revived, _ = revive_with_result(model, report_or_data, seed=seed, scale=scale, batch_size=batch_size,
                                    sites=sites, **scan_options)
    return revived


def revive_with_result(model, report_or_data, *, seed: int | None = None, scale: str = "initializer",
                       batch_size: int = 256, sites=None, **scan_options):
    """Like `revive`, and also returns what was changed.

    Given data, the revived units are also checked on it (see `revive_in_place`'s `data`).

    Returns:
        `(revived_model, ReviveResult)`.

    Example:
        >>> revived, result = deadrelu.revive_with_result(model, report)
        >>> result.skipped
    """
    from deadrelu.report import Report

    data = None
    if isinstance(report_or_data, Report):
        report = report_or_data
    else:
        from deadrelu.scanner import scan

        data = report_or_data
        report = scan(model, data, batch_size=batch_size, **scan_options)
    copy = copy_model(model)
    result = revive_in_place(copy, report, seed=seed, scale=scale, sites=sites, data=data, batch_size=batch_size,
                             scan_options=scan_options)
    return copy, result


def revive_in_place(model, report, *, seed: int | None = None, scale: str = "initializer",
                    sites: Iterable[str] | None = None, data=None, batch_size: int = 256,
                    scan_options: dict | None = None) -> ReviveResult:
    """Re-initialises the dead units of `report` in `model` itself, keeping its outputs.

    Args:
        model: The `keras.Model` the report was measured on (or an exact copy).
        report: A `Report` (from `deadrelu.scan`) naming the dead units per site.
        seed: Seed of the new weights (None: a fresh draw every time).
        scale: "initializer" (new weights as the layer's initializer draws them, as in ReDo) or
            "live" (rescaled to the mean norm of the layer's live units' incoming weights).
        sites: Only revive these site paths (default: every site with dead units).
        data: Optional inputs (anything `deadrelu.scan` accepts, normally the data the report was
            measured on). The revived units are checked on it, and those that still never fire
            get their new incoming weights negated, which makes them fire.
        batch_size: Batch size of that check.
        scan_options: More `deadrelu.scan` options for that check (`samples`, `rescale`, ...).

    Returns:
        A `ReviveResult`: revived units per site, skipped sites with reasons, and the mask of
        modified entries per variable.

    Raises:
        UsageError: `sites` names a path that is not in the report, or `scale` is unknown.

    Example:
        >>> report = deadrelu.scan(model, x)
        >>> result = revive_in_place(model, report, seed=0)
        >>> result.revived
    """
    from deadrelu.sites import find_sites

    if scale not in SCALES:
        raise UsageError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    wanted = None
    if sites is not None:
        wanted = set(sites)
        unknown = wanted - {s.path for s in report.sites}
        if unknown:
            raise UsageError(f"no site {sorted(unknown)[0]!r} in the report; sites are "
                             f"{[s.path for s in report.sites]}")
    site_map = find_sites(model)
    by_path = {site.path: site for site in site_map.sites}
    result = ReviveResult()
    graph = _Graph.build(model)

    # Units known to be zero on the data: every dead unit the report names, targeted or not.
    zero_units: dict[int, tuple[object, np.ndarray]] = {}
    targets: list[_Target] = []
    for entry in report.sites:
        site = by_path.get(entry.path)
        if not entry.dead:
            continue
        if site is None:
            result.skipped[entry.path] = "not found in this model (is the report from another model?)"
            continue
        units = np.asarray(sorted(entry.dead), dtype=np.int64)
        zero_units[id(site.layer)] = (site, units)
        if wanted is not None and entry.path not in wanted:
            continue
        target = _Target(site=site, units=units, live=np.setdiff1d(np.arange(entry.units), units))
        reason = graph.resolve(target)
        if reason:
            result.skipped[entry.path] = reason
        else:
            targets.append(target)

    if graph.problem and targets:
        for target in targets:
            result.skipped[target.site.path] = graph.problem
        targets = []

    if targets:
        plan, targets = _plan(graph, targets, zero_units, result)
    if not targets:
        return result

    rng = np.random.default_rng(seed)
    edits = _Edits()
    merged = _merge_targets(targets)
    for target in merged:
        _reinitialize(target, int(rng.integers(0, 2**31 - 1)), scale, edits, result.notes)
    for layer, rows_by_slot in plan.blocks.items():
        rows = np.any(np.stack(list(rows_by_slot.values())), axis=0)
        _block(layer, rows, plan.revived_out.get(id(layer)), edits)
    edits.apply(result)
    for target in merged:
        result.revived[target.site.path] = [int(u) for u in target.units]
    if data is not None:
        _second_chance(model, merged, data, batch_size, dict(scan_options or {}), rng, result)
    return result


def _plan(graph: "_Graph", targets: list["_Target"], zero_units: dict, result: ReviveResult):
    """Propagates footprints until every remaining target can be cut off.

    A first pass has one slot per site. The sites that conflict are split into one slot per unit
    and walked again, so one unit that reaches live signal does not hold back its neighbours;
    units that still conflict are dropped. Dropping a footprint never creates a conflict (what
    is live does not depend on the targets), so this ends after at most three passes.
    """
    reasons: dict[str, dict[str, list[int]]] = {}
    while True:
        plan = _Propagation(graph, targets, zero_units).run()
        if not plan.conflicts:
            break
        kept = []
        for slot, target in enumerate(targets):
            if slot not in plan.conflicts:
                kept.append(target)
            elif len(target.units) > 1:
                kept.extend(dataclasses.replace(target, units=target.units[i:i + 1]) for i in range(len(target.units)))
            else:
                by_reason = reasons.setdefault(target.site.path, {})
                by_reason.setdefault(plan.conflicts[slot], []).append(int(target.units[0]))
        targets = kept
        if not targets:
            break
    still = {t.site.path for t in targets}
    for path, by_reason in reasons.items():
        if path not in still and len(by_reason) == 1:
            result.skipped[path] = next(iter(by_reason))
        else:
            result.skipped[path] = "; ".join(f"{_units_text(sorted(units))}: {reason}"
                                             for reason, units in by_reason.items())
    return plan, targets


def _merge_targets(targets: list["_Target"]) -> list["_Target"]:
    """One target per site again (its units may have been split for planning)."""
    merged: dict[str, _Target] = {}
    for target in targets:
        path = target.site.path
        if path in merged:
            merged[path].units = np.union1d(merged[path].units, target.units)
        else:
            merged[path] = dataclasses.replace(target, units=np.array(target.units))
    return list(merged.values())


def _second_chance(model, targets: list["_Target"], data, batch_size: int, scan_options: dict,
                   rng: np.random.Generator, result: ReviveResult) -> None:
    """Gives the revived units that still never fire on `data` new incoming weights.

    A fresh random unit reading non-negative, strongly correlated features (the outputs of the
    ReLUs before it) often lands with w·x ≤ 0 on every sample: still dead. Negating its weights
    gives -w·x ≥ 0 everywhere, > 0 wherever w·x was < 0, so it fires. Sites are fixed in model
    order, since fixing one changes what the revived units after it see; a unit gets up to four
    tries (negate, new draw, negate, new draw). Only entries already re-initialised change and
    the outgoing weights stay zero: the outputs keep.
    """
    from deadrelu.data import load_data
    from deadrelu.probe import probe_for

    probe_data = load_data(data, model, samples=scan_options.get("samples"), rescale=scan_options.get("rescale"))
    # Traced once, run again after every change (it reads the variables); a later scan of the
    # revived model reuses the same trace.
    probe = probe_for(model)

    def dead_units() -> dict[str, set[int]]:
        stats = probe.run(probe_data.batches(batch_size))
        return {s.site.path: {int(u) for u in np.flatnonzero(s.fires == 0)} for s in stats.sites}

    tries: dict[tuple[str, int], int] = {}
    dead = dead_units()
    for target in sorted(targets, key=lambda t: t.site.index):
        path = target.site.path
        if target.producer is None:  # BatchNormalization only: fire on the other side of the mean
            todo = sorted(dead[path] & {int(u) for u in target.units})
            if todo and target.batchnorm.scale:
                gamma = np.array(target.batchnorm.gamma.numpy())
                gamma[todo] = -gamma[todo]
                target.batchnorm.gamma.assign(gamma)
                tries.update({(path, u): 1 for u in todo})
                dead = dead_units()
            continue
        kind = _weighted_kind(target.producer)
        kernel, _ = _kernel_of(kind, target.producer)
        while True:
            todo = sorted(dead[path] & {int(u) for u in target.units})
            todo = [u for u in todo if tries.get((path, u), 0) < 4]
            if not todo:
                break
            value = np.array(kernel.numpy())
            redraw = [u for u in todo if tries.get((path, u), 0) % 2 == 1]
            for unit in todo:
                if tries.get((path, unit), 0) % 2 == 0:
                    index = _unit_index(kind, target.producer, unit)
                    value[index] = -value[index]
                tries[(path, unit)] = tries.get((path, unit), 0) + 1
            for index, column in _draw_columns(target, redraw, int(rng.integers(0, 2**31 - 1)), result.notes):
                value[index] = column
            kernel.assign(value)
            dead = dead_units()
    for target in targets:
        still = sorted(dead[target.site.path] & {int(u) for u in target.units})
        if still:
            result.notes.append(f"{target.site.path}: {_units_text(still)} revived but still not firing on the "
                                "data (their inputs are all zero there, e.g. every unit before them is dead, "
                                "or every draw pointed away from the data)")
    if tries:
        result.notes.append(f"{len(tries)} revived units did not fire on the data at first; their new incoming "
                            "weights (or BatchNormalization scale) were negated or drawn again")


def _units_text(units: list[int], shown: int = 8) -> str:
    """'3 units [1, 4, 9]' or '84 units [0, 1, 2, 3, 4, 5, 6, 7, …]'."""
    listed = ", ".join(str(u) for u in units[:shown]) + (", …" if len(units) > shown else "")
    return f"{len(units)} unit{'s' if len(units) != 1 else ''} [{listed}]"


def copy_model(model):
    """An independent copy of a model with the same weights (and compile settings).

    Tries `keras.models.clone_model` + `set_weights`; falls back to a round trip through a
    temporary `.keras` file (nested models, layers clone_model cannot rebuild).

    Raises:
        UnsupportedModelError: The model can be neither cloned nor saved (e.g. a subclassed
            model without `get_config`).
    """
    import keras

    copy = None
    try:
        try:  # recursive: nested models are rebuilt under their own names (unique variable paths)
            copy = keras.models.clone_model(model, recursive=True)
        except TypeError:
            copy = keras.models.clone_model(model)
        weights = model.get_weights()
        if [w.shape for w in copy.get_weights()] != [w.shape for w in weights]:
            raise ValueError("the clone's weights differ in layout")
        copy.set_weights(weights)
    except Exception:  # noqa: BLE001 - any failure: try the file round trip
        copy = _copy_through_file(model)
    if getattr(model, "compiled", False):
        try:  # a fresh optimizer of the same kind: old moments do not fit the new weights
            copy.compile_from_config(model.get_compile_config())
        except Exception:  # noqa: BLE001 - compile settings are a convenience, not needed to revive
            pass
    return copy


def _copy_through_file(model):
    import os
    import tempfile

    import keras

    with tempfile.TemporaryDirectory(prefix="deadrelu-") as folder:
        path = os.path.join(folder, "copy.keras")
        try:
            model.save(path)
            # The file was written a moment ago from the user's own in-memory model, so loading
            # any Python code in it runs nothing the model did not already contain.
            return keras.models.load_model(path, compile=False, safe_mode=False)
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedModelError(
                f"cannot copy the model to revive it ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                "call deadrelu.revive_in_place(model, report) to change the model itself instead") from exc


def output_difference(model_a, model_b, batches) -> tuple[float, int]:
    """The largest |Δ| between two models' outputs over batches of inputs (inference mode).

    Args:
        model_a: A `keras.Model`.
        model_b: A `keras.Model` with the same inputs and outputs.
        batches: Iterable of input batches.

    Returns:
        `(max_abs_difference, samples)`.

    Example:
        >>> diff, n = output_difference(model, revived, [x_test[:500]])
    """
    import keras

    worst, samples = 0.0, 0
    for x in batches:
        a = keras.tree.flatten(model_a(x, training=False))
        b = keras.tree.flatten(model_b(x, training=False))
        for ya, yb in zip(a, b):
            diff = np.abs(np.asarray(ya, np.float64) - np.asarray(yb, np.float64))
            worst = max(worst, float(np.nanmax(diff)) if diff.size else 0.0)
        samples += int(keras.tree.flatten(x)[0].shape[0])
    return worst, samples


# -- targets -----------------------------------------------------------------------------------

@dataclasses.dataclass
class _Target:
    """A site whose dead units are to be revived, and the layers that own them."""

    site: object
    units: np.ndarray
    live: np.ndarray
    producer: object = None   # the layer whose incoming weights are re-initialised (None: BN only)
    batchnorm: object = None  # the BatchNormalization between producer and ReLU, if any
    bias_value: float = 0.0   # the new bias (the ReLU's threshold, so it fires for w·x > 0)
    norm: float | None = None  # mean norm of the live units' incoming weights


def _weighted_kind(layer) -> str | None:
    """How a layer's units own their weights: "dense", "conv", "transpose", "depthwise", "separable"."""
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


def _is_linear(layer) -> bool:
    fn = getattr(layer, "activation", None)
    return fn is None or getattr(fn, "__name__", None) == "linear"


def _channels_first(layer) -> bool:
    return getattr(layer, "data_format", None) == "channels_first"


# -- the graph ---------------------------------------------------------------------------------

@dataclasses.dataclass
class _FlatNode:
    """One call of one layer, with nested models inlined; tensors are canonical keys."""

    layer: object
    node: object
    inputs: list[tuple]
    outputs: list[tuple]


class _Graph:
    """A model's functional graph, nested Functional/Sequential models inlined, in call order.

    Built from Keras 3's node API: each Functional keeps `_nodes_by_depth` (the order
    `Functional.call` runs its nodes in), each node its `operation`, `input_tensors`,
    `outputs` and `arguments`. A nested model's inner input tensors are aliased to the outer
    tensors that feed it, and its outer outputs to its inner outputs, so the walk sees one flat
    graph of leaf layers.
    """

    def __init__(self):
        self.nodes: list[_FlatNode] = []
        self.alias: dict[tuple, tuple] = {}
        self.shapes: dict[tuple, tuple] = {}
        self.inputs: list[tuple] = []
        self.outputs: list[tuple] = []
        self.producer: dict[tuple, _FlatNode] = {}
        self.consumers: dict[tuple, list[_FlatNode]] = {}
        self.nodes_of: dict[int, list[_FlatNode]] = {}
        self.problem: str | None = None
        self._scopes = 0

    @classmethod
    def build(cls, model) -> "_Graph":
        graph = cls()
        function = _function_of(model)
        if function is None:
            graph.problem = ("the model has no functional graph to follow (a subclassed model, or a Sequential "
                             "never built); rebuild it as a Functional or Sequential model with an Input")
            return graph
        graph.inputs = [graph.key(t, 0) for t in function.inputs]
        for t in function.inputs:
            graph.shapes[graph.key(t, 0)] = tuple(t.shape[1:])
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
            graph.problem = (f"the model input has unknown dimensions {unknown[0]}; revive needs fixed "
                             "input sizes: rebuild the model with a fixed input shape")
        return graph

    def key(self, tensor, scope: int) -> tuple:
        """A tensor's canonical key; `scope` tells apart the calls of a nested model used twice."""
        k = (scope, id(tensor))
        while k in self.alias:
            k = self.alias[k]
        return k

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
                    self._inline(inner, inner_scope)
                    for outer_out, inner_out in zip(node.outputs, inner.outputs):
                        self.alias[(scope, id(outer_out))] = self.key(inner_out, inner_scope)
                    continue
                outputs = [self.key(t, scope) for t in node.outputs]
                for key, t in zip(outputs, node.outputs):
                    self.shapes[key] = tuple(t.shape[1:])
                self.nodes.append(_FlatNode(op, node, [self.key(t, scope) for t in node.input_tensors], outputs))

    def only_consumer(self, node: _FlatNode) -> _FlatNode | None:
        """The single node reading `node`'s single output, or None."""
        if len(node.outputs) != 1 or node.outputs[0] in self.outputs:
            return None
        readers = self.consumers.get(node.outputs[0], [])
        return readers[0] if len(readers) == 1 else None

    def resolve(self, target: _Target) -> str | None:
        """Finds the layer owning the target's incoming weights; returns a skip reason or None."""
        site = target.site
        layer = site.layer
        calls = self.nodes_of.get(id(layer), [])
        if not calls:
            return ("not part of a functional graph deadrelu can follow (inside a subclassed model?); "
                    "its dead units are left as they are")
        if site.recurrent is not None:
            return ("a recurrent unit (SimpleRNN): its step reads its own last output, which ReDo's "
                    "re-initialisation does not cover")
        if site.kind == KIND_FUSED:
            if _weighted_kind(layer) is None:
                return f"re-initialising units of a {type(layer).__name__} is not supported"
            target.producer = layer
            return None
        # A standalone ReLU: revive through the Dense/Conv (and BatchNormalization) feeding it.
        if len(calls) != 1 or len(calls[0].inputs) != 1:
            return "the ReLU layer is called more than once; its units have no single producing layer"
        feeder = self.producer.get(calls[0].inputs[0])
        if feeder is None:
            return "fed directly by a model input: its units have no incoming weights"
        batchnorm = None
        if type(feeder.layer).__name__ == "BatchNormalization":
            batchnorm = feeder
            if self.only_consumer(batchnorm) is not calls[0] or len(self.nodes_of[id(batchnorm.layer)]) != 1:
                return f"BatchNormalization '{batchnorm.layer.name}' feeding it is also used elsewhere"
            feeder = self.producer.get(batchnorm.inputs[0])
        if site.kind == KIND_RELU_LAYER:
            target.bias_value = float(site.threshold or 0.0)
        reason = self._weighted_producer(target, feeder, batchnorm, calls[0])
        if reason is None or batchnorm is None:
            return reason
        # No Dense/Conv of its own (Add → BN → ReLU in ResNet v2, Concatenate → BN → ReLU in
        # DenseNet): the unit's own parameters are its BatchNormalization channel.
        rank = len(self.shapes[batchnorm.outputs[0]])
        if _bn_axis(batchnorm.layer, rank) != (rank - 1 if site.channel_axis == -1 else site.channel_axis - 1):
            return f"BatchNormalization '{batchnorm.layer.name}' normalises another axis than the units' axis"
        if not (batchnorm.layer.scale or batchnorm.layer.center):
            return f"{reason}; BatchNormalization '{batchnorm.layer.name}' has no gamma or beta to reset"
        target.producer, target.batchnorm = None, batchnorm.layer
        return None

    def _weighted_producer(self, target: _Target, feeder, batchnorm, relu_call) -> str | None:
        """Dense/Conv → [BatchNormalization →] ReLU: sets the target's producer, or says why not."""
        if feeder is None:
            return "fed by a model input (through BatchNormalization or not): no incoming weights"
        producer = feeder.layer
        kind = _weighted_kind(producer)
        if kind is None:
            return (f"fed by {type(producer).__name__} '{producer.name}', which has no per-unit incoming "
                    "weights (revive needs a Dense/Conv or a BatchNormalization of the ReLU's own before it)")
        if not _is_linear(producer):
            return (f"fed by {type(producer).__name__} '{producer.name}', which applies its own activation "
                    f"({producer.activation.__name__}) before this ReLU")
        expected = batchnorm if batchnorm is not None else relu_call
        if self.only_consumer(feeder) is not expected or len(self.nodes_of[id(producer)]) != 1:
            return f"the output of '{producer.name}' is also used elsewhere, so its units cannot be changed"
        if batchnorm is not None and _bn_axis(batchnorm.layer, len(self.shapes[batchnorm.outputs[0]])) != \
                (0 if _channels_first(producer) else len(self.shapes[batchnorm.outputs[0]]) - 1):
            return f"BatchNormalization '{batchnorm.layer.name}' normalises another axis than the units' axis"
        target.producer = producer
        target.batchnorm = batchnorm.layer if batchnorm is not None else None
        return None


def _is_model(op) -> bool:
    import keras

    return isinstance(op, keras.Model)


def _function_of(model):
    """The Functional graph of a Functional or Sequential model, or None (subclassed)."""
    return functional_graph(model)


def _bn_axis(layer, rank: int) -> int:
    """BatchNormalization's channel axis among the non-batch axes."""
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        axis = axis[0] if len(axis) == 1 else None
    if axis is None:
        return -1
    return (axis % (rank + 1)) - 1


# -- footprints --------------------------------------------------------------------------------

@dataclasses.dataclass
class _Flow:
    """What is known about one tensor (non-batch shape): per target slot, the entries its revival
    may change (`footprint`), and the entries that may be non-zero on the data before (`live`)."""

    footprint: dict[int, np.ndarray]
    live: np.ndarray


class _Propagation:
    """One pass over the graph: footprints forward, blocks recorded, conflicts collected.

    Attributes:
        blocks: Per absorbing layer, per slot, the input rows/channels whose outgoing weights
            are to be cut.
        revived_out: Per producer layer id, its output units being re-initialised (their
            incoming weights are kept as drawn, never zeroed).
        conflicts: Per slot, why its footprint cannot be blocked.
    """

    def __init__(self, graph: _Graph, targets: list[_Target], zero_units: dict):
        self.graph = graph
        self.targets = targets
        self.zero_units = zero_units
        self.sources: dict[int, list[int]] = {}
        for slot, target in enumerate(targets):
            self.sources.setdefault(id(target.site.layer), []).append(slot)
        self.revived_out: dict[int, np.ndarray] = {}
        for target in targets:
            key = id(target.producer if target.producer is not None else target.batchnorm)
            self.revived_out[key] = np.union1d(self.revived_out.get(key, np.zeros(0, np.int64)), target.units)
        self.blocks: dict = {}
        self._block_live: dict[int, np.ndarray] = {}
        self._block_layers: dict[int, object] = {}
        self._shared: set[int] = set()  # absorbing layers whose weights are shared across positions
        self.conflicts: dict[int, str] = {}

    def run(self) -> "_Propagation":
        graph = self.graph
        flows: dict[tuple, _Flow] = {k: _Flow({}, np.ones(graph.shapes[k], bool)) for k in graph.inputs}
        remaining = {k: len(v) for k, v in graph.consumers.items()}
        for node in graph.nodes:
            inputs = [flows[k] for k in node.inputs]
            outputs = self._step(node, inputs)
            for key, flow in zip(node.outputs, outputs):
                flows[key] = flow
            for key in node.inputs:  # free what no later node reads
                remaining[key] -= 1
                if remaining[key] == 0 and key not in graph.outputs:
                    flows.pop(key, None)
        for key in graph.outputs:
            for slot, mask in flows[key].footprint.items():
                if mask.any():
                    self._conflict(slot, "its revived units reach a model output without passing a layer "
                                         "whose weights can cut them off")
        for layer_id, by_slot in self.blocks.items():
            live = self._block_live[layer_id]
            layer = self._block_layers[layer_id]
            where = (f"input channels of {type(layer).__name__} '{layer.name}' with live entries (its weights "
                     "are shared by every position of a channel)") if layer_id in self._shared else \
                f"inputs of {type(layer).__name__} '{layer.name}' with live signal"
            for slot, rows in by_slot.items():
                if (rows & live).any():
                    self._conflict(slot, f"its revived units share the {where}, so cutting them off would "
                                         "change the outputs")
        self.blocks = {self._block_layers[k]: v for k, v in self.blocks.items()}
        return self

    def _conflict(self, slot: int, reason: str) -> None:
        self.conflicts.setdefault(slot, reason)

    def _step(self, node: _FlatNode, inputs: list[_Flow]) -> list[_Flow]:
        layer = node.layer
        shapes = [self.graph.shapes[k] for k in node.outputs]
        cls = type(layer).__name__
        if _weighted_kind(layer) is not None or cls == "BatchNormalization":
            outputs = self._absorb(node, inputs, shapes)
        elif _is_elementwise(layer, inputs, shapes):
            outputs = [_Flow(dict(inputs[0].footprint), inputs[0].live.copy())]
        elif cls in _MERGES:
            outputs = [_merge(inputs, shapes[0])]
        elif cls in _STRUCTURAL:
            outputs = [_structural(node, inputs, shapes[0])]
        else:
            for flow in inputs:
                for slot, mask in flow.footprint.items():
                    if mask.any():
                        self._conflict(slot, f"its revived units reach {cls} '{layer.name}', which revive "
                                             "cannot follow (it mixes units without weights to cut)")
            outputs = [_Flow({}, np.ones(shape, bool)) for shape in shapes]
        # A site's output: its dead units are zero on the data, its revived units change.
        zero = self.zero_units.get(id(layer))
        if zero is not None and len(outputs) == 1:
            site, units = zero
            flow = outputs[0]
            axis = _site_axis(site, flow.live.ndim)
            _set_channels(flow.live, axis, units, False)
            for slot in self.sources.get(id(layer), []):
                mask = np.zeros(flow.live.shape, bool)
                _set_channels(mask, axis, self.targets[slot].units, True)
                flow.footprint[slot] = flow.footprint[slot] | mask if slot in flow.footprint else mask
        return outputs

    def _absorb(self, node: _FlatNode, inputs: list[_Flow], shapes) -> list[_Flow]:
        """A layer with weights: the footprint stops here; record which rows/channels to cut."""
        layer = node.layer
        flow = inputs[0]
        rank = flow.live.ndim
        if type(layer).__name__ == "BatchNormalization":
            axis = _bn_axis(layer, rank)
        elif _weighted_kind(layer) == "dense":
            axis = rank - 1
        else:
            axis = 0 if _channels_first(layer) else rank - 1
        others = tuple(i for i in range(rank) if i != axis)
        live = flow.live.any(axis=others) if others else flow.live
        key = id(layer)
        self._block_layers[key] = layer
        if others:
            self._shared.add(key)
        self._block_live[key] = self._block_live.get(key, np.zeros_like(live)) | live
        for slot, mask in flow.footprint.items():
            rows = mask.any(axis=others) if others else mask
            if rows.any():
                by_slot = self.blocks.setdefault(key, {})
                by_slot[slot] = by_slot.get(slot, np.zeros_like(rows)) | rows
                if type(layer).__name__ == "BatchNormalization":
                    reason = _batchnorm_cannot_block(layer, rows)
                    if reason:
                        self._conflict(slot, reason)
        return [_Flow({}, np.ones(shape, bool)) for shape in shapes]


_MERGES = {"Add", "Subtract", "Average", "Maximum", "Minimum"}
_STRUCTURAL = {
    "Flatten", "Reshape", "Permute", "RepeatVector", "Concatenate",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D",
}
# Identities at inference time.
_IDENTITIES = {"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
               "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity"}
_ACTIVATION_LAYERS = {"Activation", "ReLU", "LeakyReLU", "PReLU", "ELU"}


def _is_elementwise(layer, inputs: list[_Flow], shapes) -> bool:
    """An inference-time identity, or an elementwise activation with f(0) = 0."""
    cls = type(layer).__name__
    if len(inputs) != 1 or len(shapes) != 1 or inputs[0].live.shape != shapes[0]:
        return False
    if cls in _IDENTITIES:
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


def _batchnorm_cannot_block(layer, rows: np.ndarray) -> str | None:
    """Why BatchNormalization cannot hold these channels at their old constant, or None."""
    if not layer.scale:
        return (f"its revived units feed BatchNormalization '{layer.name}', which has no scale (gamma) "
                "to cut them off with")
    if not layer.center and np.any(np.asarray(layer.moving_mean.numpy())[rows] != 0):
        return (f"its revived units feed BatchNormalization '{layer.name}', which has no offset (beta) to "
                "hold the channel's old constant value")
    return None


def _merge(inputs: list[_Flow], shape) -> _Flow:
    """Add & co.: an entry may be non-zero / may change where any input's may."""
    live = np.zeros(shape, bool)
    footprint: dict[int, np.ndarray] = {}
    for flow in inputs:
        live |= np.broadcast_to(flow.live, shape)
        for slot, mask in flow.footprint.items():
            footprint[slot] = footprint.get(slot, np.zeros(shape, bool)) | np.broadcast_to(mask, shape)
    return _Flow(footprint, live)


def _structural(node: _FlatNode, inputs: list[_Flow], shape) -> _Flow:
    """Moves, copies and pools entries: run the layer itself on 0/1 indicators.

    Each of these layers is monotone and maps 0 to 0, so an output entry is positive exactly
    where some input entry it reads is 1.
    """
    slots = sorted({slot for flow in inputs for slot in flow.footprint})
    live = _call_indicator(node, [flow.live[None] for flow in inputs])[0]
    footprint = {}
    if slots:
        stacked = [np.stack([flow.footprint.get(s, np.zeros(flow.live.shape, bool)) for s in slots])
                   for flow in inputs]
        out = _call_indicator(node, stacked)
        footprint = {slot: out[i] for i, slot in enumerate(slots) if out[i].any()}
    return _Flow(footprint, live)


def _call_indicator(node: _FlatNode, arrays: list[np.ndarray]) -> np.ndarray:
    values = {id(t): a.astype(np.float32) for t, a in zip(node.node.input_tensors, arrays)}
    args, kwargs = node.node.arguments.fill_in(values)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("training", "mask")}
    return np.asarray(node.layer(*args, **kwargs, training=False)) > 0


def _site_axis(site, rank: int) -> int:
    return 0 if site.channel_axis == 1 and rank > 1 else rank - 1


def _set_channels(array: np.ndarray, axis: int, units: np.ndarray, value: bool) -> None:
    index = [slice(None)] * array.ndim
    index[axis] = units
    array[tuple(index)] = value


# -- weight edits ------------------------------------------------------------------------------

class _Edits:
    """New values for entries of variables, applied together; records the masks."""

    def __init__(self):
        self._values: dict[int, tuple[object, np.ndarray, np.ndarray]] = {}

    def get(self, variable) -> tuple[np.ndarray, np.ndarray]:
        key = id(variable)
        if key not in self._values:
            value = np.array(variable.numpy())
            self._values[key] = (variable, value, np.zeros(value.shape, bool))
        _, value, mask = self._values[key]
        return value, mask

    def apply(self, result: ReviveResult) -> None:
        for variable, value, mask in self._values.values():
            if not mask.any():
                continue
            variable.assign(value)
            key, n = variable.path, 1
            while key in result.reinitialized:
                n += 1
                key = f"{variable.path}#{n}"
            if n > 1:
                result.notes.append(f"several modified variables share the path {variable.path!r}; "
                                    f"this one is keyed {key!r} (see ReviveResult.variables)")
            result.reinitialized[key] = mask
            result.variables[key] = variable


def _unit_index(kind: str, layer, unit: int) -> tuple:
    """Index of one output unit's incoming weights in the layer's (pointwise) kernel."""
    if kind == "transpose":
        return (Ellipsis, unit, slice(None))
    if kind == "depthwise":
        multiplier = layer.depth_multiplier
        return (Ellipsis, unit // multiplier, unit % multiplier)
    return (Ellipsis, unit)


def _kernel_of(kind: str, layer):
    if kind == "separable":
        return layer.pointwise_kernel, layer.pointwise_initializer
    return layer.kernel, (layer.depthwise_initializer if kind == "depthwise" else layer.kernel_initializer)


def _reinitialize(target: _Target, seed: int, scale: str, edits: _Edits, notes: list[str]) -> None:
    """New incoming weights for the target's units; their bias; their BatchNormalization channel."""
    layer = target.producer
    if layer is None:  # only a BatchNormalization channel: its input statistics still hold
        _reset_batchnorm(target.batchnorm, target.units, target.live, target.bias_value, edits, keep_statistics=True)
        return
    kind = _weighted_kind(layer)
    kernel, _ = _kernel_of(kind, layer)
    value, mask = edits.get(kernel)
    norms = [np.linalg.norm(value[_unit_index(kind, layer, int(u))]) for u in target.live]
    target.norm = float(np.mean(norms)) if norms and scale == "live" else None
    for index, column in _draw_columns(target, target.units, seed, notes):
        value[index] = column
        mask[index] = True
    if getattr(layer, "bias", None) is not None:
        bias, bias_mask = edits.get(layer.bias)
        bias[target.units] = 0.0 if target.batchnorm is not None else target.bias_value
        bias_mask[target.units] = True
    if target.batchnorm is not None:
        _reset_batchnorm(target.batchnorm, target.units, target.live, target.bias_value, edits)


def _draw_columns(target: _Target, units, seed: int, notes: list[str]) -> list[tuple[tuple, np.ndarray]]:
    """Fresh incoming weights for `units`: (kernel index, values) pairs.

    The whole kernel is drawn from a seeded copy of the layer's own initializer (so fan-in and
    fan-out scaling are the layer's); with `scale="live"` each unit's slice is then rescaled to
    the mean norm of the live units' incoming weights (kept as drawn when no unit is live).
    """
    layer = target.producer
    kind = _weighted_kind(layer)
    kernel, initializer = _kernel_of(kind, layer)
    draw = _draw(initializer, tuple(kernel.shape), seed, kernel.dtype)
    if draw is None:
        notes.append(f"{layer.name}: its kernel initializer gives no random draw; used glorot_uniform")
        draw = _draw("glorot_uniform", tuple(kernel.shape), seed, kernel.dtype)
    columns = []
    for unit in units:
        index = _unit_index(kind, layer, int(unit))
        column = draw[index]
        norm = float(np.linalg.norm(column))
        if target.norm and norm > 0:
            column = column * (target.norm / norm)
        columns.append((index, column))
    return columns


def _draw(initializer, shape: tuple, seed: int, dtype) -> np.ndarray | None:
    """A draw of the whole kernel from a seeded copy of the layer's initializer (None if constant)."""
    import keras

    try:
        init = keras.initializers.get(initializer)
        config = init.get_config()
        if "seed" in config:
            init = type(init).from_config({**config, "seed": seed})
        draw = np.asarray(init(shape, dtype=dtype))
    except Exception:  # noqa: BLE001 - an initializer we cannot re-seed or call
        return None
    if draw.size > 1 and float(np.std(draw)) == 0.0:
        return None  # zeros / ones / constant: no way to break symmetry
    return draw


def _reset_batchnorm(layer, units: np.ndarray, live: np.ndarray, beta_value: float, edits: _Edits, *,
                     keep_statistics: bool = False) -> None:
    """Gives the revived channels a fresh state in which they can fire (see the module docstring).

    `keep_statistics`: the channel's input was not re-drawn, so its moving mean and variance still
    describe it; the unit then fires where its input is above its mean.
    """
    if layer.scale:
        gamma, mask = edits.get(layer.gamma)
        gamma[units] = float(np.mean(np.abs(gamma[live]))) if live.size else 1.0
        mask[units] = True
    if layer.center:
        beta, mask = edits.get(layer.beta)
        beta[units] = beta_value
        mask[units] = True
    if keep_statistics:
        return
    mean, mask = edits.get(layer.moving_mean)
    mean[units] = 0.0
    mask[units] = True
    variance, mask = edits.get(layer.moving_variance)
    variance[units] = float(np.mean(variance[live])) if live.size else 1.0
    mask[units] = True


def _block(layer, rows: np.ndarray, revived_out: np.ndarray | None, edits: _Edits) -> None:
    """Cuts the given input rows/channels off from the layer's output units (but its revived ones)."""
    if type(layer).__name__ == "BatchNormalization":
        if revived_out is not None:  # a revived channel of its own may listen to another revived unit
            rows = rows.copy()
            rows[revived_out] = False
        _block_batchnorm(layer, rows, edits)
        return
    kind = _weighted_kind(layer)
    channels = np.flatnonzero(rows)
    if kind == "separable":
        kernel, mask = edits.get(layer.depthwise_kernel)
        kernel[..., channels, :] = 0.0
        mask[..., channels, :] = True
        return
    kernel, mask = edits.get(layer.kernel)
    if kind == "depthwise":
        multiplier = layer.depth_multiplier
        keep = np.zeros(kernel.shape[-2] * multiplier, bool)
        if revived_out is not None:
            keep[revived_out] = True
        for c in channels:
            cols = [m for m in range(multiplier) if not keep[c * multiplier + m]]
            kernel[..., c, cols] = 0.0
            mask[..., c, cols] = True
        return
    out_axis = -2 if kind == "transpose" else -1
    in_axis = -1 if kind == "transpose" else -2
    outputs = kernel.shape[out_axis]
    cut = np.ones(outputs, bool)
    if revived_out is not None:
        cut[revived_out] = False
    groups = getattr(layer, "groups", 1) or 1
    per_group_in = kernel.shape[in_axis]
    per_group_out = outputs // groups
    for c in channels:
        group = c // per_group_in if groups > 1 else 0
        cols = np.zeros(outputs, bool)
        cols[group * per_group_out:(group + 1) * per_group_out] = True
        cols &= cut
        index = [slice(None)] * kernel.ndim
        index[in_axis] = c % per_group_in
        index[out_axis] = cols
        kernel[tuple(index)] = 0.0
        mask[tuple(index)] = True


def _block_batchnorm(layer, rows: np.ndarray, edits: _Edits) -> None:
    """gamma → 0, beta → the constant the channel output while its input was 0."""
    channels = np.flatnonzero(rows)
    gamma, gamma_mask = edits.get(layer.gamma)
    mean = np.asarray(layer.moving_mean.numpy(), np.float64)[channels]
    variance = np.asarray(layer.moving_variance.numpy(), np.float64)[channels]
    inv = np.asarray(gamma, np.float64)[channels] / np.sqrt(variance + layer.epsilon)
    if layer.center:
        beta, beta_mask = edits.get(layer.beta)
        beta[channels] = np.asarray(beta, np.float64)[channels] - mean * inv
        beta_mask[channels] = True
    gamma[channels] = 0.0
    gamma_mask[channels] = True


"""What `prune` removes: the selected units, the layers that own them, the walk, and the reasons.

`plan_pruning` takes a scan's dead (and with `dormant`, dormant) units of the selected sites,
finds the layer that owns each (`LayerGraph.find_owner`), and walks their footprints forward
(`deadrelu.fixes.propagation.Propagation`, carrying form) until every remaining unit can go
exactly. Units that cannot, stay with their reason:

- the walk escapes: a model output, a layer whose mixing it cannot follow, a merge whose other
  inputs keep the channel, a reshape that scatters it, a grouped convolution (`escape_reason`);
- a consumer reads them through rows or channels that also carry units that stay, or only some
  calls of a shared layer reach them (`conflicts`);
- a constant they hold (after a BatchNormalization, or a dormant unit's mean) is not the same at
  every position of the consumer, so it cannot go into its bias (`folds`);
- they have no layer of their own, belong to a DepthwiseConv*, a SimpleRNN or a ReLU inside a
  layer's `call` (`owner_reason`), or are the last unit of a layer (a layer keeps one);
- they follow an `Add` none of whose inputs ends in a Dense/Conv (and BatchNormalization) of its own
  (`deadrelu.fixes.residual.prune_targets`: a ReLU after `Add` loses the channel from every branch
  that owns it, one target per branch, and from the other inputs through other removed units);
- they would leave a channels-first layer with as many channels as its last axis, where Keras's
  TensorFlow backend misplaces the bias (`spare_misplaced_bias`, `deadrelu.fixes.bias_axis`).

Importing this module is cheap: Keras is imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from deadrelu.fixes.graph import LayerGraph, UnitTarget, is_batchnorm, site_axis, weighted_kind
from deadrelu.fixes.propagation import Escape, Propagation, grouped
from deadrelu.fixes.residual import prune_targets

if TYPE_CHECKING:
    from deadrelu.report import Report

# Folded contributions must be the same at every position up to float rounding.
FOLD_RTOL = 1e-6


@dataclasses.dataclass
class Plan:
    """What the final walk decided: the targets that go, the walk, and the folded constants.

    Attributes:
        targets: The units that go, per site (`UnitTarget`, owners found).
        walk: The carrying `Propagation` of their footprints.
        biases: Per `id(layer)`, the constant its bias gains from the removed entries.
    """

    targets: list[UnitTarget]
    walk: Propagation
    biases: dict[int, np.ndarray]


@dataclasses.dataclass
class PrunePlan:
    """The decision for one model and report, before the smaller model is built.

    Attributes:
        graph: The model's `LayerGraph`.
        plan: What goes (`Plan`), or None when nothing can.
        candidates: Per site path, the selected units (dead, and with `dormant` dormant ones).
        removed: Per site path, the channels of its output that go (indices in the original).
        kept: Per site path, the selected units that stay.
        skipped: Per site path with kept units, why.
        notes: One-line remarks of the selection.
    """

    graph: LayerGraph
    plan: Plan | None
    candidates: dict[str, list[int]]
    removed: dict[str, list[int]]
    kept: dict[str, list[int]]
    skipped: dict[str, str]
    notes: list[str]


def plan_pruning(
    model,
    report: Report,
    *,
    dormant: float | None = None,
    sites: Iterable[str] | None = None,
    layers: str | None = None,
    only: str | None = None,
    spare: frozenset[str] = frozenset(),
) -> PrunePlan:
    """Decides which of the report's dead (and dormant) units of the selected sites go.

    Args:
        model: A Sequential or Functional `keras.Model`.
        report: A scan of `model` (its sites matched by path).
        dormant: Also select the τ-dormant units for this τ (`deadrelu.engine.dormancy.dormant_units`).
            Defaults to None.
        sites, layers, only: The selection (`deadrelu.fixes.selection.select_sites`).
        spare: Names of layers whose units stay (Keras misplaces their bias, `deadrelu.fixes.bias_axis`).

    Returns:
        A `PrunePlan`.

    Raises:
        UsageError: The selection is invalid (`select_sites`).
    """
    from deadrelu.engine.dormancy import dormant_units
    from deadrelu.engine.sites import find_sites
    from deadrelu.fixes.selection import select_sites

    site_map = find_sites(model)
    by_path = {site.path: site for site in site_map.sites}
    # Sites the report has and the model's layers do not (op-level sites, another model's) are
    # selected by the same rules, so that their units are listed with the reason they stay.
    extra = [entry for entry in report.sites if entry.path not in by_path]
    choices = types.SimpleNamespace(sites=[*site_map.sites, *extra])
    selected, _, notes = select_sites(choices, sites=sites, only=only, report=report, layers=layers, action="prune")
    wanted = {site.path for site in selected}
    graph = LayerGraph.build(model)
    candidates: dict[str, list[int]] = {}
    dead: dict[int, tuple[object, np.ndarray]] = {}  # units known to be zero on the data
    targets: list[UnitTarget] = []
    reasons: dict[str, dict[str, list[int]]] = {}
    for entry in report.sites:
        site = by_path.get(entry.path)
        if site is not None and entry.dead:
            dead[id(site.layer)] = (site, np.asarray(sorted(entry.dead), np.int64))
        units = set(entry.dead)
        if dormant is not None:
            units |= set(dormant_units(entry, dormant))  # the one definition of τ-dormancy
        if not units or entry.path not in wanted:
            continue
        units = sorted(units)
        candidates[entry.path] = list(units)
        if site is None:
            reasons[entry.path] = {_missing_reason(entry): units}
            continue
        means = np.asarray(entry.mean_abs, np.float64)
        if len(units) >= entry.units:  # a layer keeps at least one unit: its most active one
            keep = max(units, key=lambda u: (means[u] if u < len(means) else 0.0, -u))
            units.remove(keep)
            reasons.setdefault(entry.path, {}).setdefault("a layer keeps at least one unit", []).append(keep)
        if not units:
            continue
        array = np.asarray(units, np.int64)
        target = UnitTarget(site=site, units=array, live=np.setdiff1d(np.arange(entry.units), array))
        if dormant is not None and len(means) == entry.units:
            target.constants = means[array]  # ReLU outputs are ≥ 0: the mean |output| is the mean output
        owned, reason = _owned(graph, target, spare)
        if reason:
            reasons.setdefault(entry.path, {}).setdefault(reason, []).extend(units)
        else:
            targets.extend(owned)
    if graph.problem and targets:
        for target in targets:
            reasons.setdefault(target.site.path, {}).setdefault(graph.problem, []).extend(target.units.tolist())
        targets = []

    plan = walk_until_exact(graph, targets, dead, reasons) if targets else None
    while plan is not None:  # a layer must not end up with as many channels as its last axis
        trimmed = spare_misplaced_bias(graph, plan.targets, reasons)
        if trimmed is None:
            break
        plan = walk_until_exact(graph, trimmed, dead, reasons) if trimmed else None
    removed = removed_per_site(graph, site_map, plan.walk) if plan is not None else {}
    kept, skipped = {}, {}
    for path, units in candidates.items():
        left = sorted(set(units) - set(removed.get(path, [])))
        if left:
            kept[path] = left
            skipped[path] = reason_text(reasons.get(path, {}), left)
    return PrunePlan(
        graph=graph,
        plan=plan if removed else None,
        candidates=candidates,
        removed=removed,
        kept=kept,
        skipped=skipped,
        notes=notes,
    )


def output_units(layer) -> int:
    """How many output units (channels) a layer with per-unit weights, or a BatchNormalization, has."""
    if is_batchnorm(layer):
        return int(layer.moving_mean.shape[0])
    kind = weighted_kind(layer)
    if kind == "depthwise":
        return int(layer.kernel.shape[-2]) * layer.depth_multiplier
    if kind == "separable":
        return int(layer.pointwise_kernel.shape[-1])
    if kind == "transpose":
        return int(layer.kernel.shape[-2])
    return int(layer.kernel.shape[-1])


def _missing_reason(entry) -> str:
    if entry.kind.startswith("op:"):
        return "a ReLU applied inside a layer's call: prune cannot remove units from inside a layer"
    return "not found in this model (is the report from another model?)"


def owner_reason(graph: LayerGraph, target: UnitTarget) -> str | None:
    """Finds the layer the units are removed from (sets `target.producer`), or says why there is none."""
    site = target.site
    if site.recurrent is not None:
        return f"a recurrent unit ({site.layer_class}): its step reads its own output, so it cannot be removed"
    reason = graph.find_owner(target)
    if reason:
        return reason.replace("re-initialising units", "removing units").replace("revive needs", "prune needs")
    producer = target.producer
    if producer is None:
        return (
            f"its units have no layer of their own: they come through BatchNormalization "
            f"'{target.batchnorm.name}' from a layer without per-unit weights (Add, Concatenate, ...)"
        )
    if weighted_kind(producer) == "depthwise":
        return (
            f"the units of DepthwiseConv '{producer.name}' follow its input channels: they go only when "
            "the channels they read go"
        )
    if grouped(producer):
        return f"'{producer.name}' is a grouped convolution (groups={producer.groups}), whose groups must stay equal"
    return None


def _owned(graph: LayerGraph, target: UnitTarget, spare: frozenset[str]) -> tuple[list[UnitTarget], str | None]:
    """The target with its owner found — one per branch for a ReLU fed by `Add` — or why it has none."""
    split = prune_targets(graph, target)  # a ReLU after Add: every branch that owns the channel
    if split is None:
        reason = owner_reason(graph, target)
        split = ([], reason) if reason else ([target], None)
    owned, reason = split
    for each in owned:
        if not reason and each.producer is not None and each.producer.name in spare:
            reason = (
                f"Keras's TensorFlow backend adds the bias of '{each.producer.name}' along the wrong axis (a Keras "
                "bug: a channels_first layer with as many channels as its last axis), and removing units changes that"
            )
    return ([], reason) if reason else (owned, None)


def spare_misplaced_bias(graph: LayerGraph, targets: list[UnitTarget], reasons: dict) -> list[UnitTarget] | None:
    """Keeps one unit more where a layer would be left with as many channels as its last axis.

    Keras's TensorFlow backend adds the bias of such a channels-first layer along the wrong axis
    (`deadrelu.fixes.bias_axis`): the pruned model would compute something else than the original, at
    least eagerly. One dead unit more stays instead (the one with the highest index).

    Returns:
        The targets with those units taken out (the reason recorded), or None when none is.
    """
    from deadrelu.fixes.bias_axis import at_risk

    removed: dict[int, set[int]] = {}
    for target in targets:
        if target.producer is not None:
            removed.setdefault(id(target.producer), set()).update(int(u) for u in target.units)
    spared: dict[int, int] = {}
    for target in targets:
        layer = target.producer
        if layer is None or id(layer) in spared or weighted_kind(layer) == "depthwise":
            continue
        nodes = graph.nodes_of.get(id(layer), [])
        last = {graph.shapes[node.outputs[0]][-1] for node in nodes if len(graph.shapes[node.outputs[0]]) >= 2}
        left = output_units(layer) - len(removed[id(layer)])
        if len(last) == 1 and at_risk(layer, left, last.pop()):
            spared[id(layer)] = max(removed[id(layer)])
    if not spared:
        return None
    kept = []
    for target in targets:
        unit = spared.get(id(target.producer)) if target.producer is not None else None
        if unit is None or unit not in target.units:
            kept.append(target)
            continue
        reason = (
            f"kept so that '{target.producer.name}' does not end up with as many channels as its last axis, "
            "where Keras's TensorFlow backend adds a channels_first bias along the wrong axis (a Keras bug)"
        )
        reasons.setdefault(target.site.path, {}).setdefault(reason, []).append(unit)
        where = target.units != unit
        if where.any():
            constants = None if target.constants is None else target.constants[where]
            live = np.union1d(target.live, [unit])
            kept.append(dataclasses.replace(target, units=target.units[where], constants=constants, live=live))
    return kept


def walk_until_exact(graph: LayerGraph, targets: list[UnitTarget], dead: dict, reasons: dict) -> Plan | None:
    """Walks until every remaining target can be removed.

    As in revive: the sites that conflict are split into one slot per unit and walked again, and
    units that still conflict are dropped (their reason recorded). Dropping a target can only
    remove conflicts of the others (or make a merge partial, which the next walk finds).

    Args:
        graph: The model's `LayerGraph`.
        targets: The units to remove, owners found.
        dead: Per `id(site layer)`, `(site, units)` known to be zero on the data.
        reasons: Per site path, reason → units that stay; filled in.

    Returns:
        The `Plan`, or None when no target is left.
    """
    while targets:
        zero = dict(dead)
        for target in targets:  # removed units are replaced by constants: they are not live either
            site, units = zero.get(id(target.site.layer), (target.site, np.zeros(0, np.int64)))
            zero[id(target.site.layer)] = (site, np.union1d(units, target.units))
        walk = Propagation(graph, targets, zero, carry=True).run()
        found = conflicts(graph, walk)
        biases: dict[int, np.ndarray] = {}
        if not found:
            biases, found = folds(walk)
        if not found:
            return Plan(targets, walk, biases)
        kept = []
        for slot, target in enumerate(targets):
            if slot not in found:
                kept.append(target)
            elif len(target.units) > 1:
                for i in range(len(target.units)):
                    constants = None if target.constants is None else target.constants[i : i + 1]
                    kept.append(dataclasses.replace(target, units=target.units[i : i + 1], constants=constants))
            else:
                by_reason = reasons.setdefault(target.site.path, {})
                by_reason.setdefault(found[slot], []).append(int(target.units[0]))
        targets = kept
    return None


def conflicts(graph: LayerGraph, walk: Propagation) -> dict[int, str]:
    """Per slot, the first reason (in walk order) why its units cannot be removed exactly."""
    events = [(escape.step, escape.slot, escape_reason(escape)) for escape in walk.escapes]
    found: dict[int, str] = {}
    for _, slot, reason in sorted(events, key=lambda event: event[0]):
        found.setdefault(slot, reason)
    for consumer in walk.consumers().values():
        layer = consumer.layer
        for slot, rows in consumer.rows.items():
            if (rows & consumer.live).any():
                found.setdefault(
                    slot,
                    f"{type(layer).__name__} '{layer.name}' reads them through input "
                    f"{'channels' if consumer.per_position else 'rows'} that also carry units that stay",
                )
    # A layer called several times has one set of weights: every call must lose the same entries.
    for nodes in graph.nodes_of.values():
        if len(nodes) < 2:
            continue
        patterns = [tuple(walk.removed.get(key) for key in node.inputs + node.outputs) for node in nodes]
        if all(_same(patterns[0], other) for other in patterns[1:]):
            continue
        layer = nodes[0].layer
        for node in nodes:
            for key in node.inputs + node.outputs:
                for slot in walk.touched.get(key, ()):
                    found.setdefault(
                        slot,
                        f"they reach only some calls of the shared layer '{layer.name}', whose weights serve "
                        "every call",
                    )
    return found


def _same(a: tuple, b: tuple) -> bool:
    for x, y in zip(a, b):
        if x is None or y is None:
            if (x is not None and x.any()) or (y is not None and y.any()):
                return False
        elif x.shape != y.shape or not np.array_equal(x, y):
            return False
    return True


def escape_reason(escape: Escape) -> str:
    """Why units whose footprint escapes the walk there must stay, in one clause."""
    if escape.node is None:
        return "they reach a model output, and a model's outputs are never pruned"
    layer = escape.node.layer
    name = f"{type(layer).__name__} '{layer.name}'"
    if escape.why == "partial":
        shortcut = (
            "; an identity shortcut loses it only with the same unit of the block before"
            if type(layer).__name__ == "Add"
            else ""
        )
        return (
            f"they reach {name}, whose other inputs keep these channels (a channel leaves a sum or "
            f"product only when it goes from every input{shortcut})"
        )
    if escape.why == "shape":
        return (
            f"removing them at {name} would leave no rectangular tensor (a channel only partly removed there, "
            "or a reshape that scatters it)"
        )
    if escape.why == "empty":
        return f"every channel reaching {name} would go; a layer keeps at least one"
    if escape.why == "grouped":
        return f"{name} is a grouped convolution (groups={layer.groups}), whose groups must stay equal"
    return f"they reach {name}, which mixes units in a way prune cannot follow"


def folds(walk: Propagation) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """The constant each consumer gets from the removed entries, to add to its bias.

    A removed entry holding a non-zero constant (a BatchNormalization's output for a dead unit, a
    dormant unit's mean) contributed to the consumer's output; that contribution moves into the
    consumer's bias, which is possible when it is the same at every output position.

    Returns:
        `(bias deltas per id(layer), conflicts per slot)`.
    """
    biases: dict[int, np.ndarray] = {}
    found: dict[int, str] = {}
    for read in walk.reads:
        if read.carried or not read.rows or read.values is None or not np.any(read.values):
            continue
        layer = read.layer
        contribution = _contribution(layer, read.values)
        out_axis = 0 if getattr(layer, "data_format", None) == "channels_first" and contribution.ndim > 1 else -1
        per_unit = np.moveaxis(contribution, out_axis, -1).reshape(-1, contribution.shape[out_axis])
        delta = per_unit[0]
        scale = max(1.0, float(np.max(np.abs(per_unit))))
        earlier = biases.get(id(layer))
        if np.max(np.abs(per_unit - delta), initial=0.0) > FOLD_RTOL * scale or (
            earlier is not None and np.max(np.abs(earlier - delta)) > FOLD_RTOL * scale
        ):
            reason = (
                f"they hold a constant (after a BatchNormalization, or a dormant unit's mean) that "
                f"{type(layer).__name__} '{layer.name}' does not see equally at every position (padding), so it "
                "cannot go into its bias"
            )
            for slot, rows in read.rows.items():
                if np.any(np.compress(rows, read.values, axis=read.axis)):
                    found.setdefault(slot, reason)
            continue
        biases[id(layer)] = delta
    return biases, found


def _contribution(layer, values: np.ndarray) -> np.ndarray:
    """What the layer's kernel makes of `values` (one sample, no batch axis), without bias or activation."""
    if weighted_kind(layer) == "dense":
        kernel = np.asarray(layer.kernel.numpy(), np.float64)
        return np.tensordot(values.astype(np.float64), kernel, axes=([-1], [0]))
    config = {**layer.get_config(), "activation": "linear", "use_bias": False, "name": f"{layer.name}_fold"}
    linear = type(layer).from_config(config)
    linear.build((None,) + values.shape)
    for name in ("kernel", "depthwise_kernel", "pointwise_kernel"):
        if getattr(layer, name, None) is not None and getattr(linear, name, None) is not None:
            getattr(linear, name).assign(getattr(layer, name).numpy())
    return np.asarray(linear(values[None].astype(np.float32)), np.float64)[0]


def removed_per_site(graph: LayerGraph, site_map, walk: Propagation) -> dict[str, list[int]]:
    """Per site, the channels of its output that the pruned model no longer has."""
    removed = {}
    for site in site_map.sites:
        for node in graph.nodes_of.get(id(site.layer), []):
            mask = walk.removed.get(node.outputs[0]) if len(node.outputs) == 1 else None
            if mask is None:
                continue
            axis = site_axis(site, mask.ndim)
            others = tuple(i for i in range(mask.ndim) if i != axis)
            channels = mask.all(axis=others) if others else mask
            removed[site.path] = sorted(set(removed.get(site.path, [])) | {int(c) for c in np.flatnonzero(channels)})
    return {path: units for path, units in removed.items() if units}


def reason_text(by_reason: dict[str, list[int]], kept: list[int]) -> str:
    """Why `kept` units of one site stay: the one reason, or "N units [..]: reason; ..." for several."""
    from deadrelu.fixes.selection import units_text

    known = {u for units in by_reason.values() for u in units}
    parts = {reason: sorted(set(units) & set(kept)) for reason, units in by_reason.items()}
    parts = {reason: units for reason, units in parts.items() if units}
    missing = sorted(set(kept) - known)
    if missing:
        parts["not selected"] = missing
    if len(parts) == 1:
        return next(iter(parts))
    return "; ".join(f"{units_text(units)}: {reason}" for reason, units in parts.items())

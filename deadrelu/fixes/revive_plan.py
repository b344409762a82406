"""How `revive` decides what to change: which footprints can be cut off, and a second draw for units
that still do not fire.

`deadrelu.fixes.revive` applies the plan; this module makes it:

- `choose_targets` takes the report's dead units (with `dormant=τ`, its τ-dormant units:
  `deadrelu.engine.dormancy.dormant_units`) of the selected sites and finds their owners (the layers whose
  weights make them; for a ReLU right after `Add`, one branch of the sum: `deadrelu.fixes.residual`);
- `plan` walks each revived unit's footprint through the graph (`deadrelu.fixes.propagation`)
  and keeps the units whose footprint can be cut off without touching live signal: a site whose
  footprint conflicts is split into single units and walked again, and units that still conflict
  are dropped with their reason (`Cuts` is what is left to zero);
- `second_chance` runs the revived model on the data and gives the revived units that still never
  fire new incoming weights (negated, or drawn again), changing nothing outside them.

Importing this module is cheap: Keras is imported inside the functions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from deadrelu.engine.dormancy import dormant_units
from deadrelu.fixes.edits import draw_columns, kernel_of, unit_index
from deadrelu.fixes.graph import LayerGraph, UnitTarget, is_batchnorm, weighted_kind
from deadrelu.fixes.op_fixes import revive_twin
from deadrelu.fixes.propagation import Propagation
from deadrelu.fixes.residual import add_feeding, revive_owner
from deadrelu.fixes.revive_recurrent import output_site, recurrent_owner, retry_recurrent, site_units
from deadrelu.fixes.selection import units_text

# -- the units ---------------------------------------------------------------------------------


def revived_units(entry, dormant: float | None) -> list[int]:
    """The units of a report's site that revive re-initialises: its dead units, or with `dormant`
    its τ-dormant units (`deadrelu.engine.dormancy.dormant_units`: dead ones included), ascending."""
    if dormant is None:
        return sorted(entry.dead)
    return sorted(set(entry.dead) | set(dormant_units(entry, dormant)))


def choose_targets(
    graph: LayerGraph, report, by_path: dict, wanted: set[str], *, dormant: float | None, skipped: dict[str, str]
) -> tuple[dict, list[UnitTarget]]:
    """The units to re-initialise, one target per selected site whose owner is found.

    Args:
        graph: The model's `LayerGraph`.
        report: The scan the units come from.
        by_path: The model's sites by path (op-level ones included when the report has some).
        wanted: The paths of the selected sites.
        dormant: ReDo's τ, or None (dead units only).
        skipped: Per site path, why its units are left; filled here.

    Returns:
        `(zero_units, targets)`: per `id(site layer)`, the units whose outputs are taken as zero by
        the walk — every dead unit of the report, targeted or not, and the targeted dormant ones
        (their contribution is cut off with them) — and the targets.
    """
    zero_units: dict[int, tuple[object, np.ndarray]] = {}
    targets: list[UnitTarget] = []
    for entry in report.sites:
        site = by_path.get(entry.path)
        chosen = revived_units(entry, dormant) if entry.path in wanted else sorted(entry.dead)
        if not chosen:
            continue
        if site is None:
            skipped[entry.path] = "not found in this model (is the report from another model?)"
            continue
        producer = None
        if site.op_level:  # only where its units' weights are known (`deadrelu.fixes.op_fixes`)
            twin, producer, reason = revive_twin(site)
            if twin is None:
                if entry.path in wanted:
                    skipped[entry.path] = reason
                continue
            site = twin
        units = np.asarray(chosen, dtype=np.int64)
        live, offset = np.setdiff1d(np.arange(entry.units), units), 0
        if site.recurrent is not None:  # as the graph's layer outputs them; an LSTM's two sites share it
            site, offset = output_site(graph, site)
            units = units + offset
            zeros = np.union1d(zero_units.get(id(site.layer), (site, units))[1], units)
        zero_units[id(site.layer)] = (site, units if site.recurrent is None else zeros)
        if entry.path not in wanted:
            continue
        target = UnitTarget(site=site, units=units, live=live, offset=offset)
        after_add = add_feeding(graph, site) if producer is None and site.recurrent is None else None
        if site.recurrent is not None:  # every gate of the unit (`deadrelu.fixes.revive_recurrent`)
            reason = recurrent_owner(target, graph.nodes_of.get(id(site.layer), []))
        elif after_add is not None:  # ResNet v1: one branch of the sum owns the units
            reason = revive_owner(graph, target, *after_add)
        else:
            reason = graph.find_owner(target) if producer is None else fed_owner(graph, target, producer)
        if not reason and site.op_level:
            target.threshold = float(site.threshold or 0.0)
        if reason:
            skipped[entry.path] = reason
        else:
            targets.append(target)
    return zero_units, targets


# -- the plan ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Cuts:
    """The outgoing weights to zero so that the revived units change no output.

    Attributes:
        blocks: Per reading layer, per slot, the input rows/channels to cut off.
        revived_out: Per `id(layer)` whose units are re-initialised, those units (their incoming
            weights are kept as drawn, never cut).
    """

    blocks: dict
    revived_out: dict[int, np.ndarray]


def plan(
    graph: LayerGraph, targets: list[UnitTarget], zero_units: dict, skipped: dict[str, str]
) -> tuple[Cuts, list[UnitTarget]]:
    """Propagates footprints until every remaining target can be cut off.

    A first pass has one slot per site. The sites that conflict are split into one slot per unit
    and walked again, so one unit that reaches live signal does not hold back its neighbours;
    units that still conflict are dropped. Dropping a footprint never creates a conflict (what
    is live does not depend on the targets), so this ends after at most three passes.

    Args:
        graph: The model's `LayerGraph`.
        targets: The units to revive, one target per site.
        zero_units: Per `id(layer)`, `(site, units)` known to output zero on the data (every dead
            unit of the report, targeted or not).
        skipped: Per site path, why its units are left; the dropped units' reasons are added.

    Returns:
        `(cuts, targets kept)`; a site may appear in several targets (one per unit) after a split.
    """
    reasons: dict[str, dict[str, list[int]]] = {}
    while True:
        walk = Propagation(graph, targets, zero_units).run()
        conflicts = _conflicts(walk)
        if not conflicts:
            break
        kept = []
        for slot, target in enumerate(targets):
            if slot not in conflicts:
                kept.append(target)
            elif len(target.units) > 1:
                kept.extend(
                    dataclasses.replace(target, units=target.units[i : i + 1]) for i in range(len(target.units))
                )
            else:
                by_reason = reasons.setdefault(target.site.path, {})
                by_reason.setdefault(conflicts[slot], []).append(int(site_units(target)[0]))
        targets = kept
        if not targets:
            break
    still = {t.site.path for t in targets}
    for path, by_reason in reasons.items():
        if path not in still and len(by_reason) == 1:
            skipped[path] = next(iter(by_reason))
        else:
            skipped[path] = "; ".join(f"{units_text(sorted(units))}: {reason}" for reason, units in by_reason.items())
    revived_out: dict[int, np.ndarray] = {}
    for target in targets:
        key = id(target.producer if target.producer is not None else target.batchnorm)
        revived_out[key] = np.union1d(revived_out.get(key, np.zeros(0, np.int64)), target.units)
    blocks = {consumer.layer: consumer.rows for consumer in walk.consumers().values()}
    return Cuts(blocks, revived_out), targets


def _conflicts(walk: Propagation) -> dict[int, str]:
    """Per slot, the first reason (in walk order) why its footprint cannot be cut off unnoticed.

    A footprint cannot be cut where it escapes the walk (a model output, a layer that mixes
    entries without weights), where a BatchNormalization cannot hold its channel constant, or
    where it shares a kernel row or channel with live signal (cutting it would cut that too).
    """
    events = []
    for escape in walk.escapes:
        if escape.node is None:
            reason = "its revived units reach a model output without passing a layer whose weights can cut them off"
        else:
            layer = escape.node.layer
            reason = (
                f"its revived units reach {type(layer).__name__} '{layer.name}', which revive cannot follow "
                "(it mixes units without weights to cut)"
            )
        events.append((escape.step, escape.slot, reason))
    for read in walk.reads:
        if is_batchnorm(read.layer):
            for slot, rows in read.rows.items():
                reason = _batchnorm_cannot_block(read.layer, rows)
                if reason:
                    events.append((read.step, slot, reason))
    conflicts: dict[int, str] = {}
    for _, slot, reason in sorted(events, key=lambda event: event[0]):
        conflicts.setdefault(slot, reason)
    for consumer in walk.consumers().values():
        layer = consumer.layer
        where = (
            (
                f"input channels of {type(layer).__name__} '{layer.name}' with live entries (its weights "
                "are shared by every position of a channel)"
            )
            if consumer.per_position
            else f"inputs of {type(layer).__name__} '{layer.name}' with live signal"
        )
        for slot, rows in consumer.rows.items():
            if (rows & consumer.live).any():
                merge = walk.summed.get(slot)
                if merge is not None:  # e.g. an identity shortcut into the next block's Add
                    conflicts.setdefault(
                        slot,
                        f"its revived units are summed with live signal by {type(merge.layer).__name__} "
                        f"'{merge.layer.name}' (an identity shortcut into a unit that is alive, or a live "
                        f"branch), so cutting them off at {type(layer).__name__} '{layer.name}' would cut that "
                        "signal too",
                    )
                conflicts.setdefault(
                    slot, f"its revived units share the {where}, so cutting them off would change the outputs"
                )
    return conflicts


def _batchnorm_cannot_block(layer, rows: np.ndarray) -> str | None:
    """Why BatchNormalization cannot hold these channels at their old constant, or None."""
    if not layer.scale:
        return (
            f"its revived units feed BatchNormalization '{layer.name}', which has no scale (gamma) to cut them off with"
        )
    if not layer.center and np.any(np.asarray(layer.moving_mean.numpy())[rows] != 0):
        return (
            f"its revived units feed BatchNormalization '{layer.name}', which has no offset (beta) to "
            "hold the channel's old constant value"
        )
    return None


def fed_owner(graph: LayerGraph, target: UnitTarget, producer) -> str | None:
    """Makes `producer` the owner of an op-level site whose layer returns `relu(producer(x))`.

    Returns:
        None when the site's layer is part of the functional graph, else why its units are left.
    """
    if not graph.nodes_of.get(id(target.site.layer)):
        return (
            "not part of a functional graph deadrelu can follow (inside a subclassed model or a wrapper?); "
            "its dead units are left as they are"
        )
    target.producer = producer
    return None


def merge_targets(targets: list[UnitTarget]) -> list[UnitTarget]:
    """One target per site again (its units may have been split by `plan`)."""
    merged: dict[str, UnitTarget] = {}
    for target in targets:
        path = target.site.path
        if path in merged:
            merged[path].units = np.union1d(merged[path].units, target.units)
        else:
            merged[path] = dataclasses.replace(target, units=np.array(target.units))
    return list(merged.values())


# -- the second chance -------------------------------------------------------------------------


def second_chance(
    model,
    targets: list[UnitTarget],
    probe_data: Any,
    *,
    batch_size: int,
    rng: np.random.Generator,
    notes: list[str],
    strategy: Any = None,
) -> None:
    """Gives the revived units that still never fire on the data new incoming weights.

    A fresh random unit reading non-negative, strongly correlated features (the outputs of the
    ReLUs before it) often lands with w·x ≤ 0 on every sample: still dead. Negating its weights
    gives -w·x ≥ 0 everywhere, > 0 wherever w·x was < 0, so it fires. Sites are fixed in model
    order, since fixing one changes what the revived units after it see; a unit gets up to four
    tries (negate, new draw, negate, new draw). Only entries already re-initialised change and
    the outgoing weights stay zero: the outputs keep.

    Args:
        model: The revived model (changed in place).
        targets: The revived units, one target per site (`merge_targets`).
        probe_data: The data (`deadrelu.data.load_data` for `model` and `strategy`).
        batch_size: Batch size of the passes over the data.
        rng: Draws the new weights.
        notes: Receives one line per site whose units still do not fire, and one on the retries.
        strategy: The `tf.distribute.Strategy` holding the model's variables, or None.
    """
    from deadrelu.engine.probe import probe_for

    # Traced once, run again after every change (it reads the variables); a later scan of the
    # revived model reuses the same trace.
    probe = probe_for(model, strategy=strategy)

    def dead_units() -> dict[str, set[int]]:
        stats = probe.run(probe_data.batches(batch_size))
        return {s.site.path: {int(u) for u in np.flatnonzero(s.fires == 0)} for s in stats.sites}

    tries: dict[tuple[str, int], int] = {}
    dead = dead_units()
    for target in sorted(targets, key=lambda t: t.site.index):
        path = target.site.path
        if target.site.recurrent is not None:  # every gate of the unit: `deadrelu.fixes.revive_recurrent`
            dead = retry_recurrent(target, dead, dead_units, tries, rng)
            continue
        if target.producer is None:  # BatchNormalization only: fire on the other side of the mean
            todo = sorted(dead[path] & {int(u) for u in target.units})
            if todo and target.batchnorm.scale:
                gamma = np.array(target.batchnorm.gamma.numpy())
                gamma[todo] = -gamma[todo]
                target.batchnorm.gamma.assign(gamma)
                tries.update({(path, u): 1 for u in todo})
                dead = dead_units()
            continue
        kind = weighted_kind(target.producer)
        kernel, _ = kernel_of(kind, target.producer)
        while True:
            todo = sorted(dead[path] & {int(u) for u in target.units})
            todo = [u for u in todo if tries.get((path, u), 0) < 4]
            if not todo:
                break
            value = np.array(kernel.numpy())
            redraw = [u for u in todo if tries.get((path, u), 0) % 2 == 1]
            for unit in todo:
                if tries.get((path, unit), 0) % 2 == 0:
                    index = unit_index(kind, target.producer, unit)
                    value[index] = -value[index]
                tries[(path, unit)] = tries.get((path, unit), 0) + 1
            for index, column in draw_columns(target, redraw, int(rng.integers(0, 2**31 - 1)), notes):
                value[index] = column
            kernel.assign(value)
            dead = dead_units()
    for target in targets:
        still = sorted(dead[target.site.path] & {int(u) for u in site_units(target)})
        if still:
            notes.append(
                f"{target.site.path}: {units_text(still)} revived but still not firing on the "
                "data (their inputs are all zero there, e.g. every unit before them is dead, "
                "or every draw pointed away from the data)"
            )
    if tries:
        notes.append(
            f"{len(tries)} revived units did not fire on the data at first; their new incoming "
            "weights (or BatchNormalization scale) were negated or drawn again"
        )

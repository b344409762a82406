"""Dead units → fresh units, without changing what the model computes (ReDo recycling).

ReDo (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning")
recycles a dead unit in two moves:

1. its *incoming* weights are drawn again from the layer's own initializer and its bias is set
   to zero, so the unit fires again on part of the data;
2. its *outgoing* weights — wherever its output is consumed — are set to zero, so the model's
   outputs do not change at the moment of revival. Training then grows the outgoing weights
   from zero: they receive a gradient because the unit now fires.

Finding "wherever its output is consumed" is the hard part. `revive_in_place` walks the
functional graph (nested models included, `deadrelu.graph`) and follows each revived unit's
*footprint*: the entries of every tensor its value can reach. Layers that only move or pool
entries (Flatten, Reshape, pooling, padding, Concatenate, Dropout, ...) and elementwise
activations with f(0) = 0 carry the footprint along; the first layer that mixes units blocks it
(the weight edits are `deadrelu.edits`):

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
`revive_model` measures it: its result's `check` is the largest output difference on the data.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

import deadrelu.validation as validation
from deadrelu.edits import Edits, cut_inputs, draw_columns, kernel_of, reinitialize, unit_index
from deadrelu.errors import UsageError
from deadrelu.graph import LayerGraph, Propagation, UnitTarget, is_batchnorm, weighted_kind
from deadrelu.model_utils import OutputComparison, copy_model
from deadrelu.op_fixes import revive_twin, with_op_sites
from deadrelu.patcher import check_only, select_sites
from deadrelu.sites import KIND_OP_PREFIX

if TYPE_CHECKING:
    import keras

    from deadrelu.report import Report

# How new incoming weights are scaled (see the module docstring).
SCALES = ("initializer", "live")


# -- result ------------------------------------------------------------------------------------


@dataclasses.dataclass(repr=False)
class ReviveResult:
    """The revived model and what was changed in it (`deadrelu.PatchResult` is its twin for `patch_model`).

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
        model: The revived `keras.Model`: a copy for `revive_model`, the model itself for
            `revive_in_place`.
        check: For `revive_model` given data: how far the revived model's outputs are from the
            original's on that data (`max_abs_diff`, `samples`); else None.

    `repr(result)` is one line; a notebook shows a table of the revived units per site
    (`_repr_html_`), and so does a rich console (`__rich__`).
    """

    revived: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    reinitialized: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    variables: dict[str, object] = dataclasses.field(default_factory=dict, repr=False)
    notes: list[str] = dataclasses.field(default_factory=list)
    model: keras.Model | None = dataclasses.field(default=None, repr=False)
    check: OutputComparison | None = None

    @property
    def units_revived(self) -> int:
        """How many units were revived in all."""
        return sum(len(units) for units in self.revived.values())

    def __repr__(self) -> str:
        from deadrelu.display import revive_summary

        return f"<ReviveResult {revive_summary(self)[0]}>"

    def _repr_html_(self) -> str:
        from deadrelu.display import revive_html

        return revive_html(self)

    def __rich__(self):
        from deadrelu.display import revive_renderable

        return revive_renderable(self)

    def to_dict(self) -> dict:
        """A JSON-ready summary (masks are given as counts of modified entries)."""
        out = {
            "revived": {path: list(units) for path, units in self.revived.items()},
            "skipped": dict(self.skipped),
            "units_revived": self.units_revived,
            "modified_entries": {path: int(mask.sum()) for path, mask in self.reinitialized.items()},
            "notes": list(self.notes),
        }
        if self.check is not None:
            out["check"] = self.check.to_dict()
        return out


# -- public API --------------------------------------------------------------------------------


def revive(
    model: keras.Model,
    report_or_data: Report | str | os.PathLike | Any,
    *,
    seed: int | None = None,
    scale: str = "initializer",
    batch_size: int = 256,
    sites: Iterable[str] | None = None,
    only: str | None = None,
    strategy: Any = None,
    **scan_options,
) -> keras.Model:
    """Returns a copy of `model` whose dead ReLU units are re-initialised (ReDo).

    The copy computes the same outputs as `model` on the data the units were found dead on;
    the revived units fire again, so training can put them back to use. `model` itself is left
    unchanged. Given data (not a report), the revived units are checked on it and those that
    still never fire get their new incoming weights negated. `revive_model` does the same and
    returns a `ReviveResult` (the model, the revived units, the output check).

    Args:
        model: A `keras.Model` (Sequential or Functional, nested models allowed).
        report_or_data: A `Report` from `deadrelu.scan`, or data to scan (anything
            `deadrelu.scan` accepts, paths included).
        seed: Seed of the new weights. Defaults to None (a fresh draw every time).
        scale: "initializer" (new weights as the layer's initializer draws them, as in ReDo) or
            "live" (rescaled to the mean norm of the layer's live units' incoming weights).
            Defaults to `"initializer"`.
        batch_size: Batch size of the scan, when data is given. Defaults to `256`.
        sites: Only revive these site paths. Defaults to None (every site with dead units).
        only: "all", "dead" or "flagged" (only sites whose dead share reached the report's flag
            threshold). Defaults to None ("all").
        strategy: A `tf.distribute.Strategy`: the scan runs on all its replicas, the copy is
            made in its scope, and the new weights are assigned to every replica (under several
            workers, drawn alike on every worker: with `seed=None` the seed is derived from the
            dead units and the weights). Defaults to None: the strategy the model was built
            under, if any.
        **scan_options: More options for `deadrelu.scan` (`samples`, `rescale`, ...).

    Returns:
        The revived copy, a `keras.Model` (compiled like `model` with a fresh optimizer, when
        `model` was compiled).

    Example:
        >>> revived = deadrelu.revive(model, x_test[:2000], seed=0)
        >>> revived.fit(x_train, y_train, epochs=2)
    """
    return _revive_copy(
        model,
        report_or_data,
        seed=seed,
        scale=scale,
        batch_size=batch_size,
        sites=sites,
        only=only,
        strategy=strategy,
        scan_options=scan_options,
        check=False,
    ).model


def revive_model(
    model: keras.Model,
    report_or_data: Report | str | os.PathLike | Any,
    *,
    seed: int | None = None,
    scale: str = "initializer",
    batch_size: int = 256,
    sites: Iterable[str] | None = None,
    only: str | None = None,
    strategy: Any = None,
    **scan_options,
) -> ReviveResult:
    """Like `revive`, but returns a `ReviveResult`: the revived copy, what changed, and the check.

    `patch_model` is its twin: both results carry `.model`, the per-site changes (`revived`
    here, `rewrites` there), `.skipped` and `.check`, and both select sites with `sites` /
    `only` (`deadrelu.patcher.select_sites`). Given data, the outputs of `model` and the revived
    copy are compared on it (one more pass over the data): `check.max_abs_diff` should be at the
    level of float rounding.

    Args:
        model: A `keras.Model` (Sequential or Functional, nested models allowed).
        report_or_data: A `Report` from `deadrelu.scan`, or data to scan (anything
            `deadrelu.scan` accepts, paths included).
        seed: Seed of the new weights. Defaults to None (a fresh draw every time).
        scale: "initializer" or "live" (see `revive`). Defaults to `"initializer"`.
        batch_size: Batch size of the scan and of the checks on the data. Defaults to `256`.
        sites: Only revive these site paths. Defaults to None (every site with dead units).
        only: "all", "dead" or "flagged". Defaults to None ("all").
        strategy: A `tf.distribute.Strategy` (see `revive`). Defaults to None: the strategy the
            model was built under, if any.
        **scan_options: More options for `deadrelu.scan` (`samples`, `rescale`, ...); `samples`
            and `rescale` apply to the checks too.

    Returns:
        A `ReviveResult` whose `model` is the revived copy (`model` is left unchanged) and whose
        `check` is the output comparison on the data (None when a report was given).

    Raises:
        UsageError: `sites` names a path that is not in the report, or `scale` / `only` is invalid.
        UnsupportedModelError: The model cannot be copied.

    Example:
        >>> result = deadrelu.revive_model(model, x_test[:2000], seed=0)
        >>> result.units_revived, result.skipped, float(result.check)
        >>> result.model.fit(x_train, y_train, epochs=2)
    """
    return _revive_copy(
        model,
        report_or_data,
        seed=seed,
        scale=scale,
        batch_size=batch_size,
        sites=sites,
        only=only,
        strategy=strategy,
        scan_options=scan_options,
        check=True,
    )


def revive_with_result(
    model: keras.Model,
    report_or_data: Report | str | os.PathLike | Any,
    *,
    seed: int | None = None,
    scale: str = "initializer",
    batch_size: int = 256,
    sites: Iterable[str] | None = None,
    only: str | None = None,
    strategy: Any = None,
    **scan_options,
) -> tuple[keras.Model, ReviveResult]:
    """Like `revive`, and also returns what was changed: the older form of `revive_model`.

    The arguments are those of `revive_model`; the outputs are not compared (`check` is None).

    Returns:
        `(revived_model, ReviveResult)`.

    Example:
        >>> revived, result = deadrelu.revive_with_result(model, report)
        >>> result.skipped
    """
    result = _revive_copy(
        model,
        report_or_data,
        seed=seed,
        scale=scale,
        batch_size=batch_size,
        sites=sites,
        only=only,
        strategy=strategy,
        scan_options=scan_options,
        check=False,
    )
    return result.model, result


def revive_in_place(
    model: keras.Model,
    report: Report,
    *,
    seed: int | None = None,
    scale: str = "initializer",
    sites: Iterable[str] | None = None,
    only: str | None = None,
    data: str | os.PathLike | Any = None,
    batch_size: int = 256,
    scan_options: dict | None = None,
    strategy: Any = None,
) -> ReviveResult:
    """Re-initialises the dead units of `report` in `model` itself, keeping its outputs.

    Args:
        model: The `keras.Model` the report was measured on (or an exact copy).
        report: A `Report` (from `deadrelu.scan`) naming the dead units per site.
        seed: Seed of the new weights. Defaults to None (a fresh draw every time).
        scale: "initializer" (new weights as the layer's initializer draws them, as in ReDo) or
            "live" (rescaled to the mean norm of the layer's live units' incoming weights).
            Defaults to `"initializer"`.
        sites: Only revive these site paths. Defaults to None (every site with dead units).
        only: "all", "dead" or "flagged" (sites the report flags). Defaults to None ("all").
        data: Inputs (anything `deadrelu.scan` accepts, normally the data the report was
            measured on). The revived units are checked on it, and those that still never fire
            get their new incoming weights negated, which makes them fire. Defaults to None (no
            check).
        batch_size: Batch size of that check. Defaults to `256`.
        scan_options: More `deadrelu.scan` options for that check (`samples`, `rescale`, ...).
            Defaults to None.
        strategy: A `tf.distribute.Strategy` whose scope holds the model's variables: the new
            weights are assigned to every replica and the check runs on all of them; under several
            workers, `seed=None` becomes a seed derived from the report's dead units and the
            weights (`deadrelu.distribute.shared_seed`), the same on every worker. Defaults to
            None: the strategy the model was built under, if any.

    Returns:
        A `ReviveResult`: revived units per site, skipped sites with reasons, the mask of
        modified entries per variable; its `model` is `model`.

    Raises:
        UsageError: `sites` names a path that is not in the report, or `scale` / `only` is invalid.

    Example:
        >>> report = deadrelu.scan(model, x)
        >>> result = revive_in_place(model, report, seed=0)
        >>> result.revived
    """
    from deadrelu.distribute import num_workers, resolve_strategy, shared_seed
    from deadrelu.report import Report
    from deadrelu.sites import find_sites

    seed, scale, batch_size = _check_options(seed, scale, batch_size)
    if not isinstance(report, Report):
        raise UsageError(
            f"`report` must be a deadrelu.Report (from deadrelu.scan), got {type(report).__name__}; "
            "to revive from data, call revive_model(model, data)"
        )
    strategy = resolve_strategy(strategy, model)
    if seed is None and num_workers(strategy) > 1:  # every worker must draw the same weights
        seed = shared_seed(report, model)
    only = check_only(only, report)
    site_map, found_notes = find_sites(model), []
    if any(entry.kind.startswith(KIND_OP_PREFIX) and entry.dead for entry in report.sites):
        site_map, found_notes = with_op_sites(model, site_map, data)
    selected, _, notes = select_sites(site_map, sites=sites, only=only, report=report, action="revive")
    wanted = {site.path for site in selected}
    by_path = {site.path: site for site in site_map.sites}
    result = ReviveResult(notes=found_notes + notes, model=model)
    graph = LayerGraph.build(model)

    # Units known to be zero on the data: every dead unit the report names, targeted or not.
    zero_units: dict[int, tuple[object, np.ndarray]] = {}
    targets: list[UnitTarget] = []
    for entry in report.sites:
        site = by_path.get(entry.path)
        if not entry.dead:
            continue
        if site is None:
            result.skipped[entry.path] = "not found in this model (is the report from another model?)"
            continue
        producer = None
        if site.op_level:  # only where its units' weights are known (`deadrelu.op_fixes`)
            twin, producer, reason = revive_twin(site)
            if twin is None:
                if entry.path in wanted:
                    result.skipped[entry.path] = reason
                continue
            site = twin
        units = np.asarray(sorted(entry.dead), dtype=np.int64)
        zero_units[id(site.layer)] = (site, units)
        if entry.path not in wanted:
            continue
        target = UnitTarget(site=site, units=units, live=np.setdiff1d(np.arange(entry.units), units))
        reason = graph.find_owner(target) if producer is None else _fed_owner(graph, target, producer)
        if not reason and site.op_level:
            target.threshold = float(site.threshold or 0.0)
        if reason:
            result.skipped[entry.path] = reason
        else:
            targets.append(target)

    if graph.problem and targets:
        for target in targets:
            result.skipped[target.site.path] = graph.problem
        targets = []

    if targets:
        cuts, targets = _plan(graph, targets, zero_units, result)
    if not targets:
        return result

    rng = np.random.default_rng(seed)
    edits = Edits()
    merged = _merge_targets(targets)
    for target in merged:
        reinitialize(target, int(rng.integers(0, 2**31 - 1)), scale, edits, result.notes)
    for layer, rows_by_slot in cuts.blocks.items():
        rows = np.any(np.stack(list(rows_by_slot.values())), axis=0)
        cut_inputs(layer, rows, cuts.revived_out.get(id(layer)), edits)
    for path, key in edits.apply(result.reinitialized, result.variables):
        result.notes.append(
            f"several modified variables share the path {path!r}; "
            f"this one is keyed {key!r} (see ReviveResult.variables)"
        )
    for target in merged:
        result.revived[target.site.path] = [int(u) for u in target.units]
    if data is not None:
        _second_chance(model, merged, data, batch_size, dict(scan_options or {}), rng, result, strategy)
    return result


def _revive_copy(
    model, report_or_data, *, seed, scale, batch_size, sites, only, strategy, scan_options: dict, check: bool
) -> ReviveResult:
    """Scans `model` when given data, revives a copy, and (`check`) compares the outputs on the data."""
    from deadrelu.bias_axis import compare_as_scanned, describe
    from deadrelu.distribute import resolve_strategy
    from deadrelu.distribute import scope as strategy_scope
    from deadrelu.report import Report

    seed, scale, batch_size = _check_options(seed, scale, batch_size)
    strategy = resolve_strategy(strategy, model)
    data = None
    if isinstance(report_or_data, Report):
        report = report_or_data
    else:
        from deadrelu.scanner import scan

        data = report_or_data
        report = scan(model, data, batch_size=batch_size, strategy=strategy, **scan_options)
    with strategy_scope(strategy):  # the copy's variables are the strategy's too
        copy = copy_model(model)
    result = revive_in_place(
        copy,
        report,
        seed=seed,
        scale=scale,
        sites=sites,
        only=only,
        data=data,
        batch_size=batch_size,
        scan_options=scan_options,
        strategy=strategy,
    )
    if check and data is not None:
        from deadrelu.data import load_data

        samples = scan_options.get("samples")
        probe_data = load_data(
            data,
            model,
            samples=samples,
            rescale=scan_options.get("rescale"),
            skip_bad_images=scan_options.get("skip_bad_images", False),
        )
        result.check, affected = compare_as_scanned(model, copy, probe_data.batches(batch_size), samples=samples)
        if affected:
            result.notes.append(f"{describe(affected)}: the outputs were compared as the scan ran the model")
    return result


def _check_options(seed, scale, batch_size) -> tuple:
    """The options every revive function shares, checked as the command line checks its flags."""
    return (
        validation.seed(seed),
        validation.one_of(scale, "scale", SCALES),
        validation.positive_int(batch_size, "batch_size"),
    )


# -- the plan ----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Cuts:
    """The outgoing weights to zero so that the revived units change no output.

    Attributes:
        blocks: Per reading layer, per slot, the input rows/channels to cut off.
        revived_out: Per `id(layer)` whose units are re-initialised, those units (their incoming
            weights are kept as drawn, never cut).
    """

    blocks: dict
    revived_out: dict[int, np.ndarray]


def _plan(
    graph: LayerGraph, targets: list[UnitTarget], zero_units: dict, result: ReviveResult
) -> tuple[_Cuts, list[UnitTarget]]:
    """Propagates footprints until every remaining target can be cut off.

    A first pass has one slot per site. The sites that conflict are split into one slot per unit
    and walked again, so one unit that reaches live signal does not hold back its neighbours;
    units that still conflict are dropped. Dropping a footprint never creates a conflict (what
    is live does not depend on the targets), so this ends after at most three passes.
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
                by_reason.setdefault(conflicts[slot], []).append(int(target.units[0]))
        targets = kept
        if not targets:
            break
    still = {t.site.path for t in targets}
    for path, by_reason in reasons.items():
        if path not in still and len(by_reason) == 1:
            result.skipped[path] = next(iter(by_reason))
        else:
            result.skipped[path] = "; ".join(
                f"{_units_text(sorted(units))}: {reason}" for reason, units in by_reason.items()
            )
    revived_out: dict[int, np.ndarray] = {}
    for target in targets:
        key = id(target.producer if target.producer is not None else target.batchnorm)
        revived_out[key] = np.union1d(revived_out.get(key, np.zeros(0, np.int64)), target.units)
    blocks = {consumer.layer: consumer.rows for consumer in walk.consumers().values()}
    return _Cuts(blocks, revived_out), targets


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


def _fed_owner(graph: LayerGraph, target: UnitTarget, producer) -> str | None:
    """An op-level site whose layer returns `relu(producer(x))`: its units are the producer's."""
    if not graph.nodes_of.get(id(target.site.layer)):
        return (
            "not part of a functional graph deadrelu can follow (inside a subclassed model or a wrapper?); "
            "its dead units are left as they are"
        )
    target.producer = producer
    return None


def _merge_targets(targets: list[UnitTarget]) -> list[UnitTarget]:
    """One target per site again (its units may have been split for planning)."""
    merged: dict[str, UnitTarget] = {}
    for target in targets:
        path = target.site.path
        if path in merged:
            merged[path].units = np.union1d(merged[path].units, target.units)
        else:
            merged[path] = dataclasses.replace(target, units=np.array(target.units))
    return list(merged.values())


# -- the second chance -------------------------------------------------------------------------


def _second_chance(
    model,
    targets: list[UnitTarget],
    data,
    batch_size: int,
    scan_options: dict,
    rng: np.random.Generator,
    result: ReviveResult,
    strategy=None,
) -> None:
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

    probe_data = load_data(
        data,
        model,
        samples=scan_options.get("samples"),
        rescale=scan_options.get("rescale"),
        skip_bad_images=scan_options.get("skip_bad_images", False),
        strategy=strategy,
    )
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
            for index, column in draw_columns(target, redraw, int(rng.integers(0, 2**31 - 1)), result.notes):
                value[index] = column
            kernel.assign(value)
            dead = dead_units()
    for target in targets:
        still = sorted(dead[target.site.path] & {int(u) for u in target.units})
        if still:
            result.notes.append(
                f"{target.site.path}: {_units_text(still)} revived but still not firing on the "
                "data (their inputs are all zero there, e.g. every unit before them is dead, "
                "or every draw pointed away from the data)"
            )
    if tries:
        result.notes.append(
            f"{len(tries)} revived units did not fire on the data at first; their new incoming "
            "weights (or BatchNormalization scale) were negated or drawn again"
        )


def _units_text(units: list[int], shown: int = 8) -> str:
    """'3 units [1, 4, 9]' or '84 units [0, 1, 2, 3, 4, 5, 6, 7, …]'."""
    listed = ", ".join(str(u) for u in units[:shown]) + (", …" if len(units) > shown else "")
    return f"{len(units)} unit{'s' if len(units) != 1 else ''} [{listed}]"

"""Dead units → fresh units, without changing what the model computes (ReDo recycling).

ReDo (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning")
recycles a dead unit in two moves:

1. its *incoming* weights are drawn again from the layer's own initializer and its bias is set
   to zero, so the unit fires again on part of the data;
2. its *outgoing* weights — wherever its output is consumed — are set to zero, so the model's
   outputs do not change at the moment of revival. Training then grows the outgoing weights
   from zero: they receive a gradient because the unit now fires.

Finding "wherever its output is consumed" is the hard part. `revive` walks the
functional graph (nested models included, `deadrelu.fixes.graph`) and follows each revived unit's
*footprint*: the entries of every tensor its value can reach. Layers that only move or pool
entries (Flatten, Reshape, pooling, padding, Concatenate, Dropout, ...) and elementwise
activations with f(0) = 0 carry the footprint along; the first layer that mixes units blocks it
(the weight edits are `deadrelu.fixes.edits`):

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
producing layer has a linear activation and nothing else reads its output. A ReLU fed by `Add`
(ResNet v1) is revived through one branch of the sum: the first input of the Add that ends in such
a Dense/Conv (and BatchNormalization) read by the Add alone (`deadrelu.fixes.residual`; a note
names it). When a
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

Recurrent units (`SimpleRNN`, `GRU`, `LSTM` with `activation='relu'`, `Bidirectional` included) are
revived gate by gate, their row of the recurrent kernel zeroed (`deadrelu.fixes.revive_recurrent`).

Scale of the new weights (`scale=`): "initializer" (the default, as in ReDo) keeps the draw as
the initializer makes it; "live" rescales each new unit's incoming weights to the mean norm of
the layer's live units. "live" fits a healthy layer whose weights have grown in training, but
it copies a bad scale too: on a real MNIST model stuck at 11% (every kernel about 10× too small,
signal vanishing through 14 Dense layers) "live" revived units stayed useless and retraining
stayed at 11%, while "initializer" reached 93% after two epochs.

Given data, the revived units are checked on it: a fresh unit reading non-negative, correlated
features can land with w·x ≤ 0 on every sample and stay dead; its new weights are then negated
(or drawn again), which changes nothing outside its own re-initialised entries
(`deadrelu.fixes.revive_plan`, which also plans the cuts).

"Outputs unchanged" holds on the data the dead units were measured on: a unit that is dead on
the scan data may fire on other inputs, and those contributions are cut off by the revival.
`revive_model` checks it on the data, as every fix does (`deadrelu.fixes.check`): the outputs of
the model before and after must agree within `tolerance × max(1, largest |output|)`, else
`OutputCheckError`.

With `dormant=τ` (ReDo proper) the τ-dormant units are revived, not only the dead ones
(`deadrelu.engine.dormancy`); those that still fired contributed to the outputs, so the outputs
change by that contribution: the check measures it (max |Δ|, the share of changed predictions)
and reports it instead of raising.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

import deadrelu.validation as validation
from deadrelu._keras_compat import optimizer_average_variables, optimizer_tracked_variables
from deadrelu.engine.sites import KIND_OP_PREFIX
from deadrelu.errors import UsageError
from deadrelu.fixes.check import DEFAULT_TOLERANCE, OutputCheck, check_failure, compare_outputs
from deadrelu.fixes.edits import Edits, cut_inputs, reinitialize
from deadrelu.fixes.graph import LayerGraph
from deadrelu.fixes.model_utils import copy_model
from deadrelu.fixes.op_fixes import with_op_sites
from deadrelu.fixes.revive_plan import choose_targets, merge_targets, plan, revived_units, second_chance
from deadrelu.fixes.revive_recurrent import cut_recurrent_inputs, is_recurrent, reinitialize_recurrent, site_units
from deadrelu.fixes.selection import check_only, select_sites, units_text

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
            loop can reset the optimizer's moment slots for exactly these entries
            (`reset_optimizer_slots`). Should two modified variables share a path (possible in
            models loaded from files with nested models), the second is keyed `path#2` and a note
            says so.
        variables: The modified variables themselves, under the same keys as `reinitialized`.
        notes: One-line remarks (fallbacks taken, ambiguities, the scan's own notes).
        model: The revived `keras.Model`: a copy, or the model itself with `in_place=True`.
        check: The outputs of the model before and after compared on the data (an
            `OutputCheck`); None when there was no data to compare on.
        report: The scan the dead units were taken from (made here, or given).
        seed: The seed the new weights were drawn from (None: a fresh draw).
        scale: How the new weights were scaled: "initializer" or "live".
        dormant: ReDo's τ when the τ-dormant units were revived (the outputs then change by
            their contribution, measured in `check`), else None (dead units only).
        in_place: Whether `model` is the input model itself, changed in place.
        optimizer_entries_reset: With `in_place=True`: how many entries of the optimizer's slots
            (moments, moving averages) were reset for the changed weights.

    `repr(result)` is one line; a notebook shows a table of the sites with dead units
    (`_repr_html_`), and so does a rich console (`__rich__`).
    """

    revived: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    reinitialized: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    variables: dict[str, object] = dataclasses.field(default_factory=dict, repr=False)
    notes: list[str] = dataclasses.field(default_factory=list)
    model: keras.Model | None = dataclasses.field(default=None, repr=False)
    check: OutputCheck | None = None
    report: Report | None = dataclasses.field(default=None, repr=False)
    seed: int | None = None
    scale: str = "initializer"
    in_place: bool = False
    optimizer_entries_reset: int = 0
    dormant: float | None = None

    @property
    def units_revived(self) -> int:
        """How many units were revived in all."""
        return sum(len(units) for units in self.revived.values())

    def __repr__(self) -> str:
        from deadrelu.views.notebook import revive_summary

        return f"<ReviveResult {revive_summary(self)[0]}>"

    def _repr_html_(self) -> str:
        from deadrelu.views.notebook import revive_html

        return revive_html(self)

    def __rich__(self):
        from deadrelu.views.notebook import revive_renderable

        return revive_renderable(self)

    def to_dict(self) -> dict:
        """A JSON-ready summary: masks as counts of modified entries, the report as its summary.

        Returns:
            `revived`, `skipped`, `units_revived`, `modified_entries`, `optimizer_entries_reset`,
            `in_place`, `seed`, `scale`, `dormant`, `data` and `summary_before` (the report's data provenance
            and summary, or None), `check` (`OutputCheck.to_dict()`, or None) and `notes`
            (docs/cli.md describes each).
        """
        return {
            "revived": {path: list(units) for path, units in self.revived.items()},
            "skipped": dict(self.skipped),
            "units_revived": self.units_revived,
            "modified_entries": {path: int(mask.sum()) for path, mask in self.reinitialized.items()},
            "optimizer_entries_reset": self.optimizer_entries_reset,
            "in_place": self.in_place,
            "seed": self.seed,
            "scale": self.scale,
            "dormant": self.dormant,
            "data": dict(self.report.data) if self.report is not None else None,
            "summary_before": dict(self.report.summary) if self.report is not None else None,
            "check": self.check.to_dict() if self.check is not None else None,
            "notes": list(self.notes),
        }


# -- public API --------------------------------------------------------------------------------


def revive(
    model: keras.Model,
    report_or_data: Report | str | os.PathLike | Any,
    *,
    data: str | os.PathLike | Any = None,
    seed: int | None = None,
    scale: str = "initializer",
    dormant: float | None = None,
    sites: Iterable[str] | None = None,
    layers: str | None = None,
    only: str | None = None,
    in_place: bool = False,
    batch_size: int = 256,
    samples: int | None = None,
    rescale: float | None = None,
    skip_bad_images: bool = False,
    check_samples: int | None = None,
    strategy: Any = None,
    tolerance: float = DEFAULT_TOLERANCE,
    on_start: Callable[[int | None], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> keras.Model:
    """Returns a copy of `model` whose dead ReLU units are re-initialised (ReDo).

    The copy computes the same outputs as `model` on the data the units were found dead on; the
    revived units fire again, so training can put them back to use. `revive_model` takes the same
    arguments and returns a `ReviveResult` (the model, the revived units, the output check).

    Args:
        model: A `keras.Model` (Sequential or Functional, nested models allowed).
        report_or_data: Data to scan (anything `deadrelu.scan` accepts, paths included), or a
            `Report` of this model from `deadrelu.scan` / `Report.from_json`.
        data: With a report: the data to check the revival on (normally the data the report was
            measured on). Defaults to None: the report's own data file, when it names one that
            exists (with the report's `samples` limit and `rescale`); otherwise nothing is checked.
        seed: Seed of the new weights. Defaults to None (a fresh draw every time).
        scale: "initializer" (new weights as the layer's initializer draws them, as in ReDo) or
            "live" (rescaled to the mean norm of the layer's live units' incoming weights).
            Defaults to `"initializer"`.
        dormant: ReDo proper: re-initialise the τ-dormant units for this τ (dormancy ≤ τ, dead
            units included: `deadrelu.engine.dormancy.dormant_units`), e.g. 0.1. Their outgoing weights
            are zeroed too, so the outputs change by the contribution the live-but-dormant units
            made: the check measures it and reports it (`check.max_abs_diff`,
            `check.changed_predictions`) instead of refusing. Defaults to None (dead units only).
        sites: Only revive these site paths (exact). Defaults to None (every site).
        layers: Only revive sites whose path matches this regular expression (`re.search`).
            Defaults to None (every site).
        only: "all", "dead" or "flagged" (only sites whose dead share reached the report's flag
            threshold). Defaults to None ("all").
        in_place: Change `model` itself instead of a copy, and reset its optimizer's slots for
            the changed entries (what `DeadReluMonitor(on_dead="revive")` does during training).
            `model` must be the model the report was measured on. Defaults to False.
        batch_size: Batch size of the scan, the second draws and the output check. Defaults to
            `256`.
        samples: Use the first `samples` samples of the data (scan, second draws and check).
            Defaults to None (all).
        rescale: Multiply inputs by this factor, as for `scan`. Defaults to None.
        skip_bad_images: For a folder of images: skip the images that cannot be read (counted in
            a note) instead of refusing the folder. Defaults to False.
        check_samples: Compare the outputs on at most this many samples. Defaults to None (all
            the samples used).
        strategy: A `tf.distribute.Strategy`: the scan runs on all its replicas, the copy is
            made in its scope, and the new weights are assigned to every replica (under several
            workers, drawn alike on every worker: with `seed=None` the seed is derived from the
            dead units and the weights). Defaults to None: the strategy the model was built
            under, if any.
        tolerance: Largest accepted output difference on the data, scaled up by the largest
            |output| past 1 (`deadrelu.fixes.check`). Defaults to `1e-5`.
        on_start: Called once by the scan with the number of samples to come (None if unknown).
            Defaults to None. Not called with a report.
        on_batch: Called by the scan with the number of samples of each batch done. Defaults to
            None.

    Returns:
        The revived `keras.Model`: a copy compiled like `model` with a fresh optimizer (when
        `model` was compiled), or `model` itself with `in_place=True`.

    Raises:
        OutputCheckError: The outputs before and after differ on the data beyond the tolerance
            (not raised with `dormant`); nothing is returned (with `in_place=True`, `model` is
            restored first).
        UsageError: An option is invalid, `sites` names a path that is not in the report, or
            `data` is given beside data to scan.
        UnsupportedModelError: The model cannot be copied (pass `in_place=True`).

    Example:
        >>> revived = deadrelu.revive(model, x_test[:2000], seed=0)
        >>> revived.fit(x_train, y_train, epochs=2)
    """
    return revive_model(
        model,
        report_or_data,
        data=data,
        seed=seed,
        scale=scale,
        dormant=dormant,
        sites=sites,
        layers=layers,
        only=only,
        in_place=in_place,
        batch_size=batch_size,
        samples=samples,
        rescale=rescale,
        skip_bad_images=skip_bad_images,
        check_samples=check_samples,
        strategy=strategy,
        tolerance=tolerance,
        on_start=on_start,
        on_batch=on_batch,
    ).model


def revive_model(
    model: keras.Model,
    report_or_data: Report | str | os.PathLike | Any,
    *,
    data: str | os.PathLike | Any = None,
    seed: int | None = None,
    scale: str = "initializer",
    dormant: float | None = None,
    sites: Iterable[str] | None = None,
    layers: str | None = None,
    only: str | None = None,
    in_place: bool = False,
    batch_size: int = 256,
    samples: int | None = None,
    rescale: float | None = None,
    skip_bad_images: bool = False,
    check_samples: int | None = None,
    strategy: Any = None,
    tolerance: float = DEFAULT_TOLERANCE,
    on_start: Callable[[int | None], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ReviveResult:
    """Like `revive`, but returns a `ReviveResult`: the revived model, what changed, and the check.

    Given data (or a report whose data file is still there), the revived units that still never
    fire on it get their new incoming weights negated or drawn again, and the outputs of the model
    before and after are compared on it (one more pass): they must agree within `tolerance`
    × max(1, largest |output|), NaN strict, as for every fix (`deadrelu.fixes.check`).
    `patch_model` and `deadrelu.prune` are its twins: the same selection (`sites`, `layers`,
    `only`), the same check, results with `.model`, `.check`, `.skipped` and `.notes`.

    Args:
        model: A `keras.Model` (Sequential or Functional, nested models allowed).
        report_or_data: Data to scan, or a `Report` of this model (see `revive`).
        data: With a report: the data to check on (see `revive`). Defaults to None.
        seed: Seed of the new weights. Defaults to None (a fresh draw every time).
        scale: "initializer" or "live" (see `revive`). Defaults to `"initializer"`.
        dormant: Re-initialise the τ-dormant units for this τ (see `revive`); the outputs then
            change and the check reports by how much. Defaults to None (dead units only).
        sites: Only revive these site paths (exact). Defaults to None (every site).
        layers: Only revive sites whose path matches this regular expression. Defaults to None.
        only: "all", "dead" or "flagged". Defaults to None ("all").
        in_place: Change `model` itself and reset its optimizer's slots for the changed entries.
            Defaults to False (a copy).
        batch_size: Batch size of the scan, the second draws and the check. Defaults to `256`.
        samples: Use the first `samples` samples of the data. Defaults to None (all).
        rescale: Multiply inputs by this factor, as for `scan`. Defaults to None.
        skip_bad_images: Skip unreadable images of a folder. Defaults to False.
        check_samples: Compare the outputs on at most this many samples. Defaults to None.
        strategy: A `tf.distribute.Strategy` (see `revive`). Defaults to None: the strategy the
            model was built under, if any.
        tolerance: Largest accepted output difference before scaling. Defaults to `1e-5`.
        on_start: Progress of the scan: called with the samples to come. Defaults to None.
        on_batch: Progress of the scan: called with each batch's samples. Defaults to None.

    Returns:
        A `ReviveResult` whose `model` is the revived copy (or `model`, in place) and whose
        `check` is the output comparison on the data (None without data to compare on).

    Raises:
        OutputCheckError: Without `dormant`, the outputs differ on the data beyond the tolerance (its `cause` says
            why: "data" for units from a report of other data, "keras" for a layer Keras computes
            wrongly, "deadrelu" for a bug); with `in_place=True`, `model` is restored first.
        UsageError: An option is invalid, `sites` names a path that is not in the report,
            `report_or_data` is None, or `data` is given beside data to scan.
        UnsupportedModelError: The model cannot be copied (pass `in_place=True`).

    Example:
        >>> result = deadrelu.revive_model(model, x_test[:2000], seed=0)
        >>> result.units_revived, result.skipped, result.check.describe()
        >>> result.model.fit(x_train, y_train, epochs=2)
    """
    from deadrelu.data import load_data
    from deadrelu.engine.distribute import resolve_strategy
    from deadrelu.engine.distribute import scope as strategy_scope
    from deadrelu.engine.scanner import dormant_threshold
    from deadrelu.report import Report

    seed, scale, batch_size = _check_options(seed, scale, batch_size)
    samples = validation.positive_int(samples, "samples", optional=True)
    check_samples = validation.positive_int(check_samples, "check_samples", optional=True)
    rescale = validation.positive_number(rescale, "rescale", optional=True, example="1/255")
    tolerance = validation.finite_number(tolerance, "tolerance", minimum=0.0, example="1e-5")
    in_place = validation.boolean(in_place, "in_place")
    dormant = dormant_threshold(dormant)
    skip_bad_images = validation.boolean(skip_bad_images, "skip_bad_images")
    validation.model(model)
    strategy = resolve_strategy(strategy, model)
    from_report = isinstance(report_or_data, Report)
    notes: list[str] = []
    if from_report:
        report = report_or_data
        if data is None:
            data, samples, rescale = _report_data(report, samples, rescale)
    else:
        if report_or_data is None:
            raise UsageError(
                "`report_or_data` is None: revive needs the data the units are dead on (an array, a path, a "
                "dataset), or a Report of a scan of it; units dead on random inputs say nothing of the model"
            )
        if data is not None:
            raise UsageError(
                "`data` is the data to check a report's units on; `report_or_data` is data already: "
                "leave `data` out (or pass a Report as `report_or_data`)"
            )
        from deadrelu.engine.scanner import scan

        data = report_or_data
        report = scan(
            model,
            data,
            batch_size=batch_size,
            samples=samples,
            rescale=rescale,
            skip_bad_images=skip_bad_images,
            strategy=strategy,
            on_start=on_start,
            on_batch=on_batch,
        )
        notes += report.notes
    options = {"samples": samples, "rescale": rescale, "skip_bad_images": skip_bad_images}

    before = None
    if in_place:
        target = model
        if data is not None:  # to compare with, and to put back should the check fail
            before = {id(v): np.array(v.numpy()) for v in model.weights}
    else:
        with strategy_scope(strategy):  # the copy's variables are the strategy's too
            target = copy_model(model)
    result = _revive(
        target,
        report,
        seed=seed,
        scale=scale,
        dormant=dormant,
        sites=sites,
        layers=layers,
        only=only,
        data=data,
        options=options,
        batch_size=batch_size,
        strategy=strategy,
        notes=notes,
    )
    result.in_place = in_place
    if data is None:
        result.notes.append(
            "the outputs were not compared: no data (the report names no data file that is there); "
            "pass `data=` (the data the report was measured on)"
        )
    else:
        limit = min(filter(None, (samples, check_samples)), default=None)
        # The whole data on every worker: every worker gets the same check.
        check_data = load_data(data, model, **{**options, "samples": limit})
        original = model if before is None else _AsItWas(model, before)
        result.check = compare_outputs(
            original,
            target,
            check_data.batches(batch_size),
            samples=limit,
            tolerance=tolerance,
            enforced=dormant is None,  # dormant units still fired: their contribution is gone
        )
        if result.check.keras_bug_layers:
            from deadrelu.fixes.bias_axis import describe

            result.notes.append(
                f"{describe(result.check.keras_bug_layers)}: the outputs were compared as the scan ran the model"
            )
        if not result.check.passed and result.check.enforced:
            if before is not None:
                original.restore()  # in place: the model is left as it was
            raise check_failure(result.check, fix="revived", from_report=from_report, result=result)
    if in_place:
        result.optimizer_entries_reset = reset_optimizer_slots(
            getattr(model, "optimizer", None), result.reinitialized, result.variables
        )
    return result


# -- the revival -------------------------------------------------------------------------------


def _revive(
    model, report: Report, *, seed, scale, dormant, sites, layers, only, data, options, batch_size, strategy, notes
) -> ReviveResult:
    """Re-initialises the dead (or τ-dormant) units of `report` in `model` itself (a copy, or the model in place).

    With `data`, the revived units that still never fire on it get a second draw
    (`deadrelu.fixes.revive_plan.second_chance`).
    """
    from deadrelu.engine.distribute import num_workers, shared_seed
    from deadrelu.engine.sites import find_sites

    if seed is None and num_workers(strategy) > 1:  # every worker must draw the same weights
        seed = shared_seed(report, model)
    only = check_only(only, report)
    site_map, found_notes = find_sites(model), []
    if any(entry.kind.startswith(KIND_OP_PREFIX) and revived_units(entry, dormant) for entry in report.sites):
        site_map, found_notes = with_op_sites(model, site_map, data)
    selected, _, selection_notes = select_sites(
        site_map, sites=sites, only=only, report=report, layers=layers, action="revive"
    )
    wanted = {site.path for site in selected}
    by_path = {site.path: site for site in site_map.sites}
    result = ReviveResult(
        notes=notes + found_notes + selection_notes, model=model, report=report, seed=seed, scale=scale
    )
    result.dormant = dormant
    graph = LayerGraph.build(model)

    zero_units, targets = choose_targets(graph, report, by_path, wanted, dormant=dormant, skipped=result.skipped)
    if graph.problem and targets:
        for target in targets:
            result.skipped[target.site.path] = graph.problem
        targets = []

    if targets:
        cuts, targets = plan(graph, targets, zero_units, result.skipped)
    if not targets:
        return result

    rng = np.random.default_rng(seed)
    edits = Edits()
    merged = merge_targets(targets)
    for target in merged:
        fresh = reinitialize if target.site.recurrent is None else reinitialize_recurrent  # every gate
        fresh(target, int(rng.integers(0, 2**31 - 1)), scale, edits, result.notes)
    for layer, rows_by_slot in cuts.blocks.items():
        rows = np.any(np.stack(list(rows_by_slot.values())), axis=0)
        cut = cut_recurrent_inputs if is_recurrent(layer) else cut_inputs  # an RNN: its input kernel's rows
        cut(layer, rows, cuts.revived_out.get(id(layer)), edits)
    for path, key in edits.apply(result.reinitialized, result.variables):
        result.notes.append(
            f"several modified variables share the path {path!r}; "
            f"this one is keyed {key!r} (see ReviveResult.variables)"
        )
    for target in merged:
        result.revived[target.site.path] = [int(u) for u in site_units(target)]
        if target.via:  # a ReLU after Add: say which branch took the new weights
            result.notes.append(
                f"{target.site.path}: {units_text([int(u) for u in target.units])} revived through {target.via} "
                "(the other inputs of the sum are left as they are)"
            )
    if data is not None:
        from deadrelu.data import load_data

        probe_data = load_data(data, model, **options, strategy=strategy)
        second_chance(model, merged, probe_data, batch_size=batch_size, rng=rng, notes=result.notes, strategy=strategy)
    return result


def _check_options(seed, scale, batch_size) -> tuple:
    """The options every revive function shares, checked as the command line checks its flags."""
    return (
        validation.seed(seed),
        validation.one_of(scale, "scale", SCALES),
        validation.positive_int(batch_size, "batch_size"),
    )


def _report_data(report: Report, samples: int | None, rescale: float | None) -> tuple:
    """The data a report was measured on, when it names a file that is still there, else None.

    Returns:
        `(data, samples, rescale)`: the report's `samples` limit and `rescale` unless given.
    """
    from deadrelu.io.files import data_file

    source = (report.data or {}).get("source")
    if not source or (report.data or {}).get("synthetic") or source == "in-memory":
        return None, samples, rescale
    if not os.path.exists(data_file(source)):
        return None, samples, rescale
    settings = report.settings or {}
    return (
        source,
        samples if samples is not None else settings.get("samples_limit"),
        rescale if rescale is not None else settings.get("rescale"),
    )


class _AsItWas:
    """A model revived in place, run with the values its variables had before: what the check compares with.

    `compare_outputs` runs it and the revived model on each batch in turn; each call puts the old
    values of the changed variables back for the call, and the new ones after it. (Copying the
    model instead is not always possible: a Lambda's code may not survive the copy.)
    """

    def __init__(self, model, before: dict[int, np.ndarray]):
        self._model = model
        changed = [v for v in model.weights if not np.array_equal(np.asarray(v.numpy()), before[id(v)])]
        self._old = [(v, before[id(v)]) for v in changed]
        self._new = [(v, np.array(v.numpy())) for v in changed]

    def __call__(self, x, training: bool = False):
        for variable, value in self._old:
            variable.assign(value)
        try:
            return self._model(x, training=training)
        finally:
            for variable, value in self._new:
                variable.assign(value)

    def restore(self) -> None:
        """Puts the old values back for good."""
        for variable, value in self._old:
            variable.assign(value)


# -- the optimizer -----------------------------------------------------------------------------


def reset_optimizer_slots(optimizer, masks: dict[str, np.ndarray], variables: dict[str, object]) -> int:
    """Zeroes the optimizer's per-variable slots (moments, velocities) where `masks` is True.

    A re-initialised weight must not inherit the running moments of the dead unit it replaces:
    Adam would otherwise keep stepping it with stale statistics. The moving averages of an
    optimizer with `use_ema=True` get the new values instead: Keras writes the averages into the
    model at the end of `fit`, and a zeroed or stale average would undo the revival there.
    `revive_model(..., in_place=True)` calls it with its result's masks.

    Args:
        optimizer: A Keras 3 optimizer (or None: nothing to do).
        masks: Key → boolean mask of the entries to reset (`ReviveResult.reinitialized`).
        variables: Key → the model variable the mask belongs to (`ReviveResult.variables`).

    Returns:
        How many slot entries were reset.

    Example:
        >>> reset_optimizer_slots(model.optimizer, result.reinitialized, result.variables)
    """
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    tracked = optimizer_tracked_variables(optimizer)
    if not tracked or not masks:
        return 0
    index = {id(v): i for i, v in enumerate(tracked)}  # by identity: paths can repeat
    averages = optimizer_average_variables(optimizer)
    # Slots are lists aligned with the trainable variables (Adam: _momentums, _velocities, ...).
    slot_lists = [
        value
        for name, value in vars(optimizer).items()
        if value is not tracked
        and value is not averages
        and isinstance(value, list)
        and len(value) == len(tracked)
        and all(hasattr(slot, "assign") for slot in value)
    ]
    reset = 0
    for key, mask in masks.items():
        i = index.get(id(variables.get(key)))
        if i is None:
            continue
        for slots in slot_lists:
            slot = slots[i]
            if tuple(slot.shape) != tuple(mask.shape):
                continue
            value = np.array(slot.numpy())
            value[mask] = 0
            slot.assign(value)
            reset += int(mask.sum())
        average = averages[i] if averages is not None and len(averages) == len(tracked) else None
        if average is not None and tuple(average.shape) == tuple(mask.shape):
            value = np.array(average.numpy())
            value[mask] = np.asarray(variables[key].numpy())[mask]
            average.assign(value)
            reset += int(mask.sum())
    return reset

"""Dead units → a smaller model that computes the same outputs (prune).

A unit that never fires on the data outputs 0 there, so it contributes nothing downstream.
Removing it — its incoming weights (a kernel column or filter), its bias, its BatchNormalization
channel, and the input rows/channels through which every consumer reads it — leaves the outputs
unchanged on that data, with fewer parameters.

Which consumers read a unit, through which entries, is the walk `revive` uses too
(`deadrelu.graph.Propagation`), in its *carrying* form: the entries to delete are followed through
Flatten (the strided rows of the next Dense), pooling, padding, Dropout, channel-preserving
Reshape, Concatenate (the offset slice), nested models and shared layers, and through the layers
that keep channels apart:

- a BatchNormalization *after* the ReLU turns a dead unit into a constant
  (`beta - moving_mean * gamma / sqrt(moving_variance + epsilon)`); its channel goes, and the
  constant's contribution is folded into the bias of the layer that reads it next (that layer
  gets a bias if it had none). A contribution that is not the same at every position (a
  convolution with `padding="same"` sees the constant only partly at the borders) cannot be
  folded: the unit is kept and the reason said;
- a DepthwiseConv* channel reading only a deleted channel goes too (its output is its bias);
- `Add`, `Subtract`, `Average`, `Maximum`, `Minimum` and `Multiply` can lose a channel only when
  it goes from every input (dead in every branch, and removable in every consumer);
- a unit whose value reaches a model output, a layer the walk cannot follow (Lambda, Softmax,
  LayerNormalization, custom layers) or a grouped convolution stays, with the reason.

Units are removed from the layer that owns them (`LayerGraph.find_owner`): a fused
`Dense/Conv(activation="relu")`, or the linear Dense/Conv* (and BatchNormalization) feeding a
standalone `ReLU`/`Activation`. Units with no layer of their own (a ReLU after `Add`), of a
DepthwiseConv* (its units follow its input channels), of a grouped convolution, of a SimpleRNN,
or of a ReLU applied inside a layer's `call` stay, with the reason; so does one unit of a layer
whose units would all go (a layer keeps at least one).

The smaller model is made again from the layers' configs (`deadrelu.rewriter.Rebuilder`) with
fewer `units`/`filters` and the remaining weights (`deadrelu.edits.shrunk_weights`): plain Keras
layers with their old names, the compile configuration carried over, so the result loads with
`keras.models.load_model` and no deadrelu.

Proof, every time: the original and the pruned model are run on the data and their outputs
compared (`check`, run as the scan ran the models, `deadrelu.bias_axis`); a difference above
`tolerance` × max(1, the output scale) raises `PruneSelfCheckError` when the units come from a
scan of that very data (they output 0 there: a bug in deadrelu, exit 3), else `PruneCheckError`
(a report of other data, or a layer Keras computes wrongly; exit 2). Either way nothing is
written. Given a held-out set (`validation_data`), the difference there is measured too
(`validation_check`): a unit dead on the probe data may fire on other data, and that difference
is the user's to see.

A channels-first layer is never left with as many channels as its output's last spatial size
(one dead unit stays): Keras's TensorFlow backend would add its bias along the wrong axis
(`deadrelu.bias_axis`).

Beyond dead units, `dormant=TAU` also removes the units whose ReDo dormancy (mean |output|
relative to the site's average unit, Sokar et al. 2023) is at most TAU. Each is replaced by its
mean output on the data, folded into the consumers' biases like the BatchNormalization constants,
so the outputs change only by the unit's variation around its mean; the model's loss and compiled
metrics are then measured before and after on labelled data (the check is reported, not enforced).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

import deadrelu.validation as validation
from deadrelu.errors import DeadReluError, InternalError, UnsupportedModelError, UsageError
from deadrelu.graph import (
    Escape,
    LayerGraph,
    Propagation,
    UnitTarget,
    carries,
    grouped,
    is_batchnorm,
    rectangle,
    set_channels,
    site_axis,
    weighted_kind,
)
from deadrelu.model_utils import OutputComparison
from deadrelu.rewriter import Rebuilder, rebuildable, subclassed_message

if TYPE_CHECKING:
    import keras

    from deadrelu.report import Report

DEFAULT_TOLERANCE = 1e-5
# Folded contributions must be the same at every position up to float rounding.
_FOLD_RTOL = 1e-6


class PruneCheckError(DeadReluError):
    """The pruned model's outputs differ from the original's on the data, for a reason outside deadrelu.

    Raised by `prune` for a removal of dead units only (with `dormant` the outputs change by
    design and the difference is reported instead), when the units came from a report of other
    data (they may fire on this data), or when Keras computes a layer of the model wrongly
    (`deadrelu.bias_axis`). The command line writes nothing and exits 2.

    Attributes:
        result: The `PruneResult`, with the failed `check`.
        cause: "data" (the units came from a report of other data) or "keras" (a layer whose bias
            Keras misplaces).
    """

    def __init__(self, message: str, result: PruneResult, cause: str = "data"):
        super().__init__(message)
        self.result = result
        self.cause = cause


class PruneSelfCheckError(InternalError):
    """The pruned model's outputs differ on the very data its dead units were measured on.

    Units dead on the data output 0 there, so removing them cannot change the outputs on it: the
    difference is a bug in deadrelu. The command line writes nothing and exits 3.

    Attributes:
        result: The `PruneResult`, with the failed `check`.
    """

    def __init__(self, message: str, result: PruneResult):
        super().__init__(message)
        self.result = result


# -- result ------------------------------------------------------------------------------------


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


@dataclasses.dataclass(repr=False)
class PruneResult:
    """The pruned model and what was removed from it.

    Attributes:
        model: The pruned `keras.Model` (a new model; the input is left unchanged).
        removed: Per site path, the units removed (indices in the original model), including
            units that went because every unit they read went (e.g. after a BatchNormalization).
        kept: Per site path, the selected units (dead, or dormant) that were kept.
        skipped: Per site path with kept units, why.
        candidates: Per site path, the units selected for removal: dead, and with `dormant`,
            dormant ones.
        layers: Every layer that changed, in model order.
        params_before: Parameters of the original model.
        params_after: Parameters of the pruned model.
        check: The outputs of both models compared on the data (None when no data was compared).
        tolerance: The largest accepted `check.max_abs_diff` before scaling (`OutputComparison.limit`).
        validation_check: The same comparison on `validation_data`, or None.
        metrics_before: With labels (`dormant`, or labelled validation data): the original
            model's loss and compiled metrics; else None.
        metrics_after: The same for the pruned model.
        metrics_data: What the metrics were measured on ("data" or "validation data").
        dormant: The dormancy threshold, or None (dead units only).
        report: The scan the units were selected from.
        notes: One-line remarks for the user.

    `repr(result)` is one line; a notebook shows a table of the pruned sites (`_repr_html_`), and so
    does a rich console (`__rich__`).
    """

    model: keras.Model | None
    removed: dict[str, list[int]]
    kept: dict[str, list[int]]
    skipped: dict[str, str]
    candidates: dict[str, list[int]]
    layers: list[LayerChange]
    params_before: int
    params_after: int
    check: OutputComparison | None = None
    tolerance: float = DEFAULT_TOLERANCE
    validation_check: OutputComparison | None = None
    metrics_before: dict[str, float] | None = None
    metrics_after: dict[str, float] | None = None
    metrics_data: str | None = None
    dormant: float | None = None
    report: Report | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def units_removed(self) -> int:
        """How many units were removed in all."""
        return sum(len(units) for units in self.removed.values())

    @property
    def passed(self) -> bool:
        """Whether the outputs stayed within the tolerance on the data (True when not compared)."""
        return self.check is None or self.check.within(self.tolerance)

    def __repr__(self) -> str:
        from deadrelu.display import prune_summary

        return f"<PruneResult {prune_summary(self)[0]}>"

    def _repr_html_(self) -> str:
        from deadrelu.display import prune_html

        return prune_html(self)

    def __rich__(self):
        from deadrelu.display import prune_renderable

        return prune_renderable(self)

    def to_dict(self) -> dict:
        """A JSON-ready summary (the model and the report left out)."""
        out = {
            "removed": {path: list(units) for path, units in self.removed.items()},
            "kept": {path: list(units) for path, units in self.kept.items()},
            "skipped": dict(self.skipped),
            "candidates": {path: list(units) for path, units in self.candidates.items()},
            "units_removed": self.units_removed,
            "layers": [dataclasses.asdict(change) for change in self.layers],
            "params_before": self.params_before,
            "params_after": self.params_after,
            "dormant": self.dormant,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "check": self.check.to_dict() if self.check is not None else None,
            "validation_check": self.validation_check.to_dict() if self.validation_check is not None else None,
            "metrics_before": self.metrics_before,
            "metrics_after": self.metrics_after,
            "metrics_data": self.metrics_data,
            "notes": list(self.notes),
        }
        return out


# -- public API --------------------------------------------------------------------------------


def prune(
    model: keras.Model,
    report_or_data: Report | str | os.PathLike | Any,
    *,
    data: str | os.PathLike | Any = None,
    labels: str | os.PathLike | Any = None,
    dormant: float | None = None,
    sites: Iterable[str] | None = None,
    layers: str | None = None,
    only: str | None = None,
    batch_size: int = 256,
    samples: int | None = None,
    rescale: float | None = None,
    validation_data: str | os.PathLike | Any = None,
    validation_labels: str | os.PathLike | Any = None,
    loss: Any = None,
    tolerance: float = DEFAULT_TOLERANCE,
    skip_bad_images: bool = False,
    strategy: Any = None,
    **scan_options,
) -> PruneResult:
    """Returns a smaller copy of `model` without its dead ReLU units, and the proof it computes the same.

    Each dead unit's incoming weights, bias and BatchNormalization channel are removed, and so are
    the input rows/channels through which every consumer read it (see the module docstring for
    what is followed and what is kept). The copy is then run beside `model` on the data: when the
    largest output difference exceeds `tolerance` × max(1, output scale), `PruneCheckError` is
    raised. `model` itself is left unchanged.

    Args:
        model: A Sequential or Functional `keras.Model` (nested models and shared layers allowed).
        report_or_data: Data to scan (anything `deadrelu.scan` accepts, paths included), or a
            `Report` of this model from `deadrelu.scan` / `Report.from_json`.
        data: With a report: the data to prove the result on. Defaults to None: the data the report
            was measured on, when it names a file that exists (with the report's `samples` limit
            and `rescale`); otherwise `UsageError`.
        labels: Labels for the metrics (array or path). Defaults to None (the data file's `y`).
        dormant: Also remove units whose dormancy (ReDo score) is at most this (e.g. 0.1); each is
            replaced by its mean output, so the outputs change: the metrics before and after are
            measured, which needs labels and a loss. Defaults to None (dead units only).
        sites: Only prune these site paths. Defaults to None (every site).
        layers: Only prune sites whose path matches this regular expression (`re.search`).
            Defaults to None (every site).
        only: "all", "dead" or "flagged" (sites whose dead share reached the report's flag
            threshold). Defaults to None ("all").
        batch_size: Batch size of the scan, the checks and the metrics. Defaults to `256`.
        samples: Use the first `samples` samples of the data (scan and check). Defaults to None (all).
        rescale: Multiply inputs by this factor, as for `scan`. Defaults to None.
        validation_data: Held-out inputs (and labels): the output difference there is measured
            and, with labels, the metrics too. Defaults to None.
        validation_labels: Labels of `validation_data`, if not in it. Defaults to None.
        loss: The loss for the metrics, when the model stores none. Defaults to None (the model's).
        tolerance: Largest accepted output difference on the data, scaled up by the largest
            |output| past 1. Defaults to `1e-5`.
        skip_bad_images: For a folder of images: skip the images that cannot be read (counted in
            a note) instead of refusing the folder. Defaults to False.
        strategy: A `tf.distribute.Strategy`: the scan runs on all its replicas and the pruned
            copy is built in its scope; the checks run on the whole data in every worker, so every
            worker returns the same result. Defaults to None: the strategy the model was built
            under, if any.
        **scan_options: More options for `deadrelu.scan` (`dying_threshold`, ...).

    Returns:
        A `PruneResult`: `.model` is the pruned copy (compiled like `model`, fresh optimizer);
        `.removed`, `.kept` and `.skipped` say what went and what stayed, per site; `.check` the
        output comparison on the data.

    Raises:
        PruneCheckError: Dead units only, and the outputs differ on the data beyond the tolerance
            because the units were not dead on it (the report came from other data), or because
            Keras misplaces the bias of a layer pruning changes (`deadrelu.bias_axis`).
        PruneSelfCheckError: Dead units only, scanned on the data here, and the outputs differ on
            it: a bug in deadrelu (units dead on the data output 0 there).
        UsageError: An option is invalid; a report without data to prove on; `dormant` without
            labels or loss.
        UnsupportedModelError: `model` is subclassed (or not a Keras 3 model).

    Example:
        >>> result = deadrelu.prune(model, x_test[:2000])
        >>> result.params_before, result.params_after, float(result.check)
        >>> result.model.save("pruned.keras")
    """
    from deadrelu.data import load_data
    from deadrelu.distribute import resolve_strategy
    from deadrelu.distribute import scope as strategy_scope
    from deadrelu.losses import compile_config
    from deadrelu.patcher import check_only
    from deadrelu.report import Report

    batch_size = validation.positive_int(batch_size, "batch_size")
    samples = validation.positive_int(samples, "samples", optional=True)
    rescale = validation.positive_number(rescale, "rescale", optional=True, example="1/255")
    tolerance = validation.finite_number(tolerance, "tolerance", minimum=0.0, example="1e-5")
    if dormant is not None:
        dormant = validation.finite_number(dormant, "dormant", minimum=0.0, example="0.1")
    _check_model(model)
    strategy = resolve_strategy(strategy, model)
    has_loss = loss is not None or bool(compile_config(model).get("loss"))
    if dormant is not None and not has_loss:
        raise UsageError(
            "`dormant` changes the outputs, and the model stores no loss to measure what that costs: pass `loss=` "
            '(e.g. `loss="categorical_crossentropy"`)'
        )

    scanned_here = not isinstance(report_or_data, Report)
    if not scanned_here:
        report = report_or_data
        if data is None:
            data, samples, rescale = _report_data(report, samples, rescale)
    else:
        from deadrelu.scanner import scan

        data = report_or_data
        report = scan(
            model,
            data,
            batch_size=batch_size,
            samples=samples,
            rescale=rescale,
            skip_bad_images=skip_bad_images,
            strategy=strategy,
            **scan_options,
        )
    only = check_only(only, report)
    probe_data = load_data(
        data, model, labels=labels, samples=samples, rescale=rescale, skip_bad_images=skip_bad_images
    )
    if dormant is not None and not probe_data.has_labels:
        raise UsageError(
            "`dormant` removes units that still fire, which changes the outputs: pass `labels=` (or data with "
            "a 'y' array) so that the loss and metrics before and after can be measured"
        )

    with strategy_scope(strategy):  # the pruned copy's variables are the strategy's too
        result = _prune(model, report, dormant=dormant, sites=sites, layers=layers, only=only)
        result.tolerance = tolerance
        if result.model is None:
            return result
        result.check, affected = _compare(model, result.model, probe_data, batch_size, samples)
        spare = _owners_named(result, set(affected))
        if dormant is None and not result.passed and spare:
            # Keras computes these layers wrongly on every path (Conv3D, DepthwiseConv*, ...):
            # removing their units changes that. Without them, the rest may still go exactly.
            retry = _prune(model, report, dormant=dormant, sites=sites, layers=layers, only=only, spare=spare)
            retry.tolerance = tolerance
            if retry.model is None:
                return retry
            retry.check, affected_retry = _compare(model, retry.model, probe_data, batch_size, samples)
            if retry.passed:
                result, affected = retry, affected_retry
        metrics_data = probe_data if dormant is not None else None
        if validation_data is not None:
            held_out = load_data(validation_data, model, labels=validation_labels, rescale=rescale)
            result.validation_check, _ = _compare(model, result.model, held_out, batch_size, None)
            if held_out.has_labels and has_loss:
                metrics_data, result.metrics_data = held_out, "validation data"
        if metrics_data is not None:
            result.metrics_data = result.metrics_data or "data"
            result.metrics_before, result.metrics_after = _metrics(model, result.model, metrics_data, batch_size, loss)
    if affected:
        from deadrelu.bias_axis import describe

        result.notes.append(
            f"{describe(affected)}: such a model computes differently eagerly than in `predict`; the outputs "
            "were compared as the scan ran the model"
        )
    if dormant is None and not result.passed:
        raise check_failure(result, same_data=scanned_here, affected=affected)
    return result


def check_failure(result: PruneResult, *, same_data: bool, affected: dict[str, int] | None = None) -> Exception:
    """The error for a pruned model whose outputs differ from the original's on the data.

    Args:
        result: The `PruneResult` with the failed `check`.
        same_data: Whether its units come from a scan of the data the outputs were compared on,
            in the same call: then they output 0 there and the difference is deadrelu's bug.
        affected: Layers of either model whose bias Keras adds along the wrong axis
            (`deadrelu.bias_axis.misplaced_biases`): then the difference is Keras's.

    Returns:
        `PruneCheckError` (the report's data, or Keras) or `PruneSelfCheckError` (deadrelu).
    """
    check = result.check
    differ = (
        f"the pruned model's outputs differ from the original's by max |Δ| = {check.max_abs_diff:.3g} on "
        f"{check.samples:,} samples (tolerance {check.limit(result.tolerance):.3g})"
    )
    if affected:
        from deadrelu.bias_axis import describe

        return PruneCheckError(
            f"{differ}: {describe(affected)}, and pruning changes what such a layer computes; leave those layers "
            "out (`layers=` a pattern that skips them) or prune on another backend (KERAS_BACKEND=jax); "
            "nothing was written",
            result,
            cause="keras",
        )
    if same_data:
        return PruneSelfCheckError(
            f"{differ}, on the very data the dead units were measured on, where they output 0: a bug in deadrelu; "
            "nothing was written",
            result,
        )
    return PruneCheckError(
        f"{differ}: the units of the report are not all dead on this data (the report was made on other data); "
        "prune from a scan of this data (pass the data itself, not a report of other data); nothing was written",
        result,
    )


def _check_model(model) -> None:
    import keras

    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"prune needs a Keras 3 model, got {type(model).__module__}.{type(model).__name__}; "
            "load the file with deadrelu.load_model, which converts tf.keras models"
        )
    if not rebuildable(model):
        raise UnsupportedModelError(
            subclassed_message(model).replace("with new activation layers", "with fewer units", 1)
        )


def _report_data(report, samples, rescale) -> tuple:
    """The data a report was measured on, when it names a file that is still there."""
    from deadrelu.files import data_file

    source = (report.data or {}).get("source")
    synthetic = (report.data or {}).get("synthetic")
    if source and not synthetic and source != "in-memory" and os.path.exists(data_file(source)):
        settings = report.settings or {}
        return (
            source,
            samples if samples is not None else settings.get("samples_limit"),
            rescale if rescale is not None else settings.get("rescale"),
        )
    raise UsageError(
        "prune proves the smaller model on data, and the report names no data file that is there "
        f"({source!r}): pass `data=` (the data the report was measured on)"
    )


# -- the removal ---------------------------------------------------------------------------------


def _prune(model, report, *, dormant, sites, layers, only, spare: frozenset[str] = frozenset()) -> PruneResult:
    """Plans the removal of the report's dead (and dormant) units and builds the smaller model.

    The units of the layers named in `spare` stay (their bias is misplaced by Keras, `deadrelu.bias_axis`).
    """
    from deadrelu.patcher import select_sites
    from deadrelu.sites import find_sites

    site_map = find_sites(model)
    selected, _, notes = select_sites(site_map, sites=sites, only=only, report=report, layers=layers, action="prune")
    wanted = {site.path for site in selected}
    by_path = {site.path: site for site in site_map.sites}
    graph = LayerGraph.build(model)
    params = model.count_params()
    result = PruneResult(
        model=None,
        removed={},
        kept={},
        skipped={},
        candidates={},
        layers=[],
        params_before=params,
        params_after=params,
        dormant=dormant,
        report=report,
        notes=notes,
    )

    dead: dict[int, tuple[object, np.ndarray]] = {}  # units known to be zero on the data
    targets: list[UnitTarget] = []
    reasons: dict[str, dict[str, list[int]]] = {}
    for entry in report.sites:
        site = by_path.get(entry.path)
        if site is not None and entry.dead:
            dead[id(site.layer)] = (site, np.asarray(sorted(entry.dead), np.int64))
        units = set(entry.dead)
        if dormant is not None and entry.units:
            units |= {int(u) for u in np.flatnonzero(np.asarray(entry.dormancy) <= dormant)}
        if not units:
            continue
        units = sorted(units)
        if site is None:  # op-level sites (and sites of another model) are in the report only
            if _chosen(entry.path, sites, layers):
                result.candidates[entry.path] = units
                reasons[entry.path] = {_missing_reason(entry): units}
            continue
        if entry.path not in wanted:
            continue
        result.candidates[entry.path] = list(units)
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
        reason = _owner_reason(graph, target)
        if not reason and target.producer is not None and target.producer.name in spare:
            reason = (
                f"Keras's TensorFlow backend adds the bias of '{target.producer.name}' along the wrong axis (a Keras "
                "bug: a channels_first layer with as many channels as its last axis), and removing units changes that"
            )
        if reason:
            reasons.setdefault(entry.path, {}).setdefault(reason, []).extend(units)
        else:
            targets.append(target)
    if graph.problem and targets:
        for target in targets:
            reasons.setdefault(target.site.path, {}).setdefault(graph.problem, []).extend(target.units.tolist())
        targets = []

    plan = _plan(graph, targets, dead, reasons) if targets else None
    while plan is not None:  # a layer must not end up with as many channels as its last axis
        trimmed = _spare_misplaced_bias(graph, plan.targets, reasons)
        if trimmed is None:
            break
        plan = _plan(graph, trimmed, dead, reasons) if trimmed else None
    if plan is not None:
        result.removed = _removed_per_site(graph, site_map, plan.walk)
    for path, units in result.candidates.items():
        kept = sorted(set(units) - set(result.removed.get(path, [])))
        if kept:
            result.kept[path] = kept
            result.skipped[path] = _reason_text(reasons.get(path, {}), kept)
    if plan is None or not result.removed:
        return result
    shrinker = _Shrinker(model, graph, plan)
    result.model = shrinker.run()
    _compile_like_original(result.model, model, result.notes)
    result.notes.extend(shrinker.notes)
    result.layers = shrinker.changes_made()
    result.params_after = result.model.count_params()
    return result


def _owners_named(result: PruneResult, names: set[str]) -> frozenset[str]:
    """Those of `names` that are layers `result` removed units from."""
    return frozenset(change.name for change in result.layers if change.name in names and change.units is not None)


def _chosen(path: str, sites: Iterable[str] | None, layers: str | None) -> bool:
    import re

    return (sites is None or path in set(sites)) and (layers is None or re.search(layers, path) is not None)


def _missing_reason(entry) -> str:
    if entry.kind.startswith("op:"):
        return "a ReLU applied inside a layer's call: prune cannot remove units from inside a layer"
    return "not found in this model (is the report from another model?)"


def _owner_reason(graph: LayerGraph, target: UnitTarget) -> str | None:
    """Finds the layer the units are removed from, or says why there is none."""
    site = target.site
    if site.recurrent is not None:
        return "a recurrent unit (SimpleRNN): its step reads its own output, so it cannot be removed"
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


def _spare_misplaced_bias(graph: LayerGraph, targets: list[UnitTarget], reasons: dict) -> list[UnitTarget] | None:
    """Keeps one unit more where a layer would be left with as many channels as its last axis.

    Keras's TensorFlow backend adds the bias of such a channels-first layer along the wrong axis
    (`deadrelu.bias_axis`): the pruned model would compute something else than the original, at
    least eagerly. One dead unit more stays instead (the one with the highest index).

    Returns:
        The targets with those units taken out (the reason recorded), or None when none is.
    """
    from deadrelu.bias_axis import at_risk

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
        left = _output_units(layer) - len(removed[id(layer)])
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


@dataclasses.dataclass
class _Plan:
    """What the final walk decided: the targets that go, the walk, and the folded constants."""

    targets: list[UnitTarget]
    walk: Propagation
    biases: dict[int, np.ndarray]


def _plan(graph: LayerGraph, targets: list[UnitTarget], dead: dict, reasons: dict) -> _Plan | None:
    """Walks until every remaining target can be removed.

    As in revive: the sites that conflict are split into one slot per unit and walked again, and
    units that still conflict are dropped (their reason recorded). Dropping a target can only
    remove conflicts of the others (or make a merge partial, which the next walk finds).
    """
    while targets:
        zero = dict(dead)
        for target in targets:  # removed units are replaced by constants: they are not live either
            site, units = zero.get(id(target.site.layer), (target.site, np.zeros(0, np.int64)))
            zero[id(target.site.layer)] = (site, np.union1d(units, target.units))
        walk = Propagation(graph, targets, zero, carry=True).run()
        conflicts = _conflicts(graph, walk)
        biases: dict[int, np.ndarray] = {}
        if not conflicts:
            biases, conflicts = _folds(walk)
        if not conflicts:
            return _Plan(targets, walk, biases)
        kept = []
        for slot, target in enumerate(targets):
            if slot not in conflicts:
                kept.append(target)
            elif len(target.units) > 1:
                for i in range(len(target.units)):
                    constants = None if target.constants is None else target.constants[i : i + 1]
                    kept.append(dataclasses.replace(target, units=target.units[i : i + 1], constants=constants))
            else:
                by_reason = reasons.setdefault(target.site.path, {})
                by_reason.setdefault(conflicts[slot], []).append(int(target.units[0]))
        targets = kept
    return None


def _conflicts(graph: LayerGraph, walk: Propagation) -> dict[int, str]:
    """Per slot, the first reason (in walk order) why its units cannot be removed exactly."""
    events = [(escape.step, escape.slot, _escape_reason(escape)) for escape in walk.escapes]
    conflicts: dict[int, str] = {}
    for _, slot, reason in sorted(events, key=lambda event: event[0]):
        conflicts.setdefault(slot, reason)
    for consumer in walk.consumers().values():
        layer = consumer.layer
        for slot, rows in consumer.rows.items():
            if (rows & consumer.live).any():
                conflicts.setdefault(
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
                    conflicts.setdefault(
                        slot,
                        f"they reach only some calls of the shared layer '{layer.name}', whose weights serve "
                        "every call",
                    )
    return conflicts


def _same(a: tuple, b: tuple) -> bool:
    for x, y in zip(a, b):
        if x is None or y is None:
            if (x is not None and x.any()) or (y is not None and y.any()):
                return False
        elif x.shape != y.shape or not np.array_equal(x, y):
            return False
    return True


def _escape_reason(escape: Escape) -> str:
    if escape.node is None:
        return "they reach a model output, and a model's outputs are never pruned"
    layer = escape.node.layer
    name = f"{type(layer).__name__} '{layer.name}'"
    if escape.why == "partial":
        return (
            f"they reach {name}, whose other inputs keep these channels (a channel leaves a sum or "
            "product only when it goes from every input)"
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


def _folds(walk: Propagation) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """The constant each consumer gets from the removed entries, to add to its bias.

    A removed entry holding a non-zero constant (a BatchNormalization's output for a dead unit, a
    dormant unit's mean) contributed to the consumer's output; that contribution moves into the
    consumer's bias, which is possible when it is the same at every output position.

    Returns:
        `(bias deltas per id(layer), conflicts per slot)`.
    """
    biases: dict[int, np.ndarray] = {}
    conflicts: dict[int, str] = {}
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
        if np.max(np.abs(per_unit - delta), initial=0.0) > _FOLD_RTOL * scale or (
            earlier is not None and np.max(np.abs(earlier - delta)) > _FOLD_RTOL * scale
        ):
            reason = (
                f"they hold a constant (after a BatchNormalization, or a dormant unit's mean) that "
                f"{type(layer).__name__} '{layer.name}' does not see equally at every position (padding), so it "
                "cannot go into its bias"
            )
            for slot, rows in read.rows.items():
                if np.any(np.compress(rows, read.values, axis=read.axis)):
                    conflicts.setdefault(slot, reason)
            continue
        biases[id(layer)] = delta
    return biases, conflicts


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


def _removed_per_site(graph: LayerGraph, site_map, walk: Propagation) -> dict[str, list[int]]:
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


def _reason_text(by_reason: dict[str, list[int]], kept: list[int]) -> str:
    from deadrelu.reviver import _units_text

    known = {u for units in by_reason.values() for u in units}
    parts = {reason: sorted(set(units) & set(kept)) for reason, units in by_reason.items()}
    parts = {reason: units for reason, units in parts.items() if units}
    missing = sorted(set(kept) - known)
    if missing:
        parts["not selected"] = missing
    if len(parts) == 1:
        return next(iter(parts))
    return "; ".join(f"{_units_text(units)}: {reason}" for reason, units in parts.items())


def _compile_like_original(new, model, notes: list[str]) -> None:
    """Compiles the pruned model as `model` was, with a fresh optimizer that has no variables yet.

    `compile_from_config` (which the rebuild uses) also builds the optimizer, whose zero moments
    would then be saved with the model and make its file larger than it needs to be.
    """
    import keras

    if not getattr(model, "compiled", False):
        return
    try:
        new.compile(**keras.saving.deserialize_keras_object(model.get_compile_config()))
    except Exception as exc:  # noqa: BLE001 - the weights are what matter
        notes.append(f"could not carry over the compile settings ({exc}); compile the pruned model before training")


# -- the smaller model ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Cut:
    """What goes from one layer: input rows/channels, output units, and the constant its bias gains."""

    rows: np.ndarray | None = None
    units: np.ndarray | None = None
    bias: np.ndarray | None = None


def _or(a: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    return b.copy() if a is None else a | b


class _Shrinker(Rebuilder):
    """Builds the pruned model from a plan: layers with fewer units and the remaining weights.

    A `Rebuilder` whose layers get fewer `units`/`filters` (and a bias where constants are folded
    into one), whose Reshapes and nested models' inputs get the new shapes, and whose weights are
    the old ones with the removed rows and units deleted (`deadrelu.edits.shrunk_weights`).
    """

    def __init__(self, model, graph: LayerGraph, plan: _Plan):
        super().__init__(model)
        self.graph, self.plan = graph, plan
        self.cuts: dict[int, _Cut] = {}
        self.layers: dict[int, object] = {}
        for target in plan.targets:
            owners = [o for o in (target.producer, target.batchnorm) if o is not None]
            for owner in owners:
                size = _output_units(owner)
                mask = np.zeros(size, bool)
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
        from deadrelu.edits import shrunk_weights

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
                before = _output_units(layer)
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


def _output_units(layer) -> int:
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


# -- the proof and the metrics -------------------------------------------------------------------


def _compare(model_a, model_b, data, batch_size: int, samples: int | None) -> tuple[OutputComparison, dict]:
    """The outputs compared as the scan ran the models, and the layers Keras adds a bias to wrongly."""
    import warnings

    from deadrelu.bias_axis import compare_as_scanned

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*structure of `inputs`", category=UserWarning)
        return compare_as_scanned(model_a, model_b, data.batches(batch_size), samples=samples, strict_nan=True)


def _metrics(model, pruned, data, batch_size: int, loss) -> tuple[dict[str, float], dict[str, float]]:
    """The loss and compiled metrics of both models on labelled data (each compiled like `model`)."""
    import keras

    from deadrelu.losses import match_labels
    from deadrelu.model_utils import copy_model
    from deadrelu.retrain import compile_like

    xs, ys = zip(*data.batches(4096, labels=True))
    x = keras.tree.map_structure(lambda *arrays: np.concatenate(arrays), *xs)
    y = keras.tree.map_structure(lambda *arrays: np.concatenate(arrays), *ys)
    out = []
    for variant in (copy_model(model), pruned):
        compile_like(variant, model, loss=loss)
        values = variant.evaluate(x, match_labels(y, variant), batch_size=batch_size, verbose=0, return_dict=True)
        out.append({k: float(v) for k, v in values.items()})
    return out[0], out[1]

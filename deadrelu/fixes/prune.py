"""Dead units → a smaller model that computes the same outputs (prune).

A unit that never fires on the data outputs 0 there, so it contributes nothing downstream.
Removing it — its incoming weights (a kernel column or filter), its bias, its BatchNormalization
channel, and the input rows/channels through which every consumer reads it — leaves the outputs
unchanged on that data, with fewer parameters.

Three modules share the work:

- `deadrelu.fixes.prune_plan` decides what goes. Which consumers read a unit, through which
  entries, is the walk `revive` uses too (`deadrelu.fixes.propagation.Propagation`), in its
  *carrying* form: the entries to delete are followed through Flatten (the strided rows of the
  next Dense), pooling, padding, Dropout, channel-preserving Reshape, Concatenate (the offset
  slice), nested models and shared layers, and through the layers that keep channels apart. A
  BatchNormalization *after* the ReLU turns a dead unit into a constant (`beta - moving_mean *
  gamma / sqrt(moving_variance + epsilon)`): its channel goes and the constant is folded into the
  bias of the layer that reads it next, when that layer sees it equally at every position. A
  DepthwiseConv* channel reading only a deleted channel goes too; a channel leaves `Add`,
  `Multiply`, ... only when it goes from every input. A dead unit of a ReLU right after `Add`
  (ResNet v1) goes from every branch of the sum that ends in a Dense/Conv (and BatchNormalization)
  of its own, and from an identity shortcut only with the same dead unit of the block before
  (`deadrelu.fixes.residual`). Units that cannot go exactly stay, with the
  reason: they reach a model output or a layer the walk cannot follow, have no layer of their own,
  belong to a DepthwiseConv*, a grouped convolution, a SimpleRNN or a ReLU inside a layer's `call`,
  or are the last unit of a layer.
- `deadrelu.fixes.shrink` makes the smaller model again from the layers' configs with fewer
  `units`/`filters` and the remaining weights: plain Keras layers with their old names, the compile
  configuration carried over, so the result loads with `keras.models.load_model` and no deadrelu.
- this module: the public API, the result, the proof and the metrics.

Proof, every time: the original and the pruned model are run on the data and their outputs
compared (`deadrelu.fixes.check.compare_outputs`: scaled tolerance, NaN strict, run as the scan ran
the models). For a removal of dead units a failure raises `OutputCheckError`, whose cause says why:
"deadrelu" when the units come from a scan of that very data (they output 0 there: a bug),
"data" when they come from a report of other data, "keras" when Keras computes a layer of the
model wrongly (`deadrelu.fixes.bias_axis`). Given a held-out set (`validation_data`), the
difference there is measured too (`validation_check`): a unit dead on the probe data may fire on
other data, and that difference is the user's to see.

Beyond dead units, `dormant=TAU` also removes the units whose ReDo dormancy (mean |output|
relative to the site's average unit, Sokar et al. 2023) is at most TAU. Each is replaced by its
mean output on the data, folded into the consumers' biases like the BatchNormalization constants,
so the outputs change only by the unit's variation around its mean; the model's loss and compiled
metrics are then measured before and after on labelled data (the check is reported, not enforced).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

import deadrelu.validation as validation
from deadrelu.errors import UnsupportedModelError, UsageError
from deadrelu.fixes.check import DEFAULT_TOLERANCE, OutputCheck
from deadrelu.fixes.rewriter import rebuildable, subclassed_message
from deadrelu.fixes.shrink import LayerChange

if TYPE_CHECKING:
    import keras

    from deadrelu.report import Report

# -- result ------------------------------------------------------------------------------------


@dataclasses.dataclass(repr=False)
class PruneResult:
    """The pruned model and what was removed from it.

    Attributes:
        model: The pruned `keras.Model` (a new model; the input is left unchanged), or None when
            no unit could be removed.
        removed: Per site path, the units removed (indices in the original model), including
            units that went because every unit they read went (e.g. after a BatchNormalization).
        kept: Per site path, the selected units (dead, or dormant) that were kept.
        skipped: Per site path with kept units, why.
        candidates: Per site path, the units selected for removal: dead, and with `dormant`,
            dormant ones.
        layers: Every layer that changed, in model order.
        params_before: Parameters of the original model.
        params_after: Parameters of the pruned model.
        check: The outputs of both models compared on the data (`OutputCheck`), or None when
            nothing was removed.
        validation_check: The same comparison on `validation_data`, or None.
        metrics_before: With labels (`dormant`, or labelled validation data): the original
            model's loss and compiled metrics; else None.
        metrics_after: The same for the pruned model.
        metrics_data: What the metrics were measured on ("data" or "validation data").
        dormant: The dormancy threshold, or None (dead units only).
        report: The scan the units were selected from.
        notes: One-line remarks for the user.

    `repr(result)` is one line; a notebook shows the pruned sites, the checks and the metrics
    (`_repr_html_`), and so does a rich console (`__rich__`).
    """

    model: keras.Model | None
    removed: dict[str, list[int]]
    kept: dict[str, list[int]]
    skipped: dict[str, str]
    candidates: dict[str, list[int]]
    layers: list[LayerChange]
    params_before: int
    params_after: int
    check: OutputCheck | None = None
    validation_check: OutputCheck | None = None
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
        return self.check is None or self.check.passed

    def site_rows(self) -> list[dict]:
        """Per site with selected or removed units: its units and dead units (from the report),
        the candidates, the removed and kept units, and why any stayed; in the report's order."""
        entries = {site.path: site for site in self.report.sites} if self.report is not None else {}
        paths = [path for path in entries if self.candidates.get(path) or self.removed.get(path)]
        paths += [path for path in dict.fromkeys([*self.candidates, *self.removed]) if path not in entries]
        rows = []
        for path in paths:
            entry = entries.get(path)
            rows.append(
                {
                    "path": path,
                    "units": entry.units if entry is not None else None,
                    "dead": len(entry.dead) if entry is not None else None,
                    "candidates": list(self.candidates.get(path, [])),
                    "removed": list(self.removed.get(path, [])),
                    "kept": list(self.kept.get(path, [])),
                    "reason": self.skipped.get(path),
                }
            )
        return rows

    def __repr__(self) -> str:
        from deadrelu.views.notebook import prune_summary

        return f"<PruneResult {prune_summary(self)[0]}>"

    def _repr_html_(self) -> str:
        from deadrelu.views.notebook import prune_html

        return prune_html(self)

    def __rich__(self):
        from deadrelu.views.notebook import prune_renderable

        return prune_renderable(self)

    def to_dict(self) -> dict:
        """A JSON-ready summary (the model left out; of the report, its data and summary).

        Returns:
            A dict with `dormant`, `scan` (`data` and `summary` of the report the units came
            from), `sites` (`site_rows`), `units_removed`, `layers`, `params_before`,
            `params_after`, `passed`, `check`, `validation_check`, `metrics_before`,
            `metrics_after`, `metrics_data` and `notes` (docs/cli.md lists every field).
        """
        report = self.report
        return {
            "dormant": self.dormant,
            "scan": None if report is None else {"data": dict(report.data or {}), "summary": report.summary},
            "sites": self.site_rows(),
            "units_removed": self.units_removed,
            "layers": [dataclasses.asdict(change) for change in self.layers],
            "params_before": self.params_before,
            "params_after": self.params_after,
            "passed": self.passed,
            "check": self.check.to_dict() if self.check is not None else None,
            "validation_check": self.validation_check.to_dict() if self.validation_check is not None else None,
            "metrics_before": self.metrics_before,
            "metrics_after": self.metrics_after,
            "metrics_data": self.metrics_data,
            "notes": list(self.notes),
        }


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
    skip_bad_images: bool = False,
    validation_data: str | os.PathLike | Any = None,
    validation_labels: str | os.PathLike | Any = None,
    loss: Any = None,
    tolerance: float = DEFAULT_TOLERANCE,
    strategy: Any = None,
    on_start: Callable[[int | None], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> keras.Model:
    """Returns a smaller copy of `model` without its dead ReLU units, proven to compute the same.

    Each dead unit's incoming weights, bias and BatchNormalization channel are removed, and so are
    the input rows/channels through which every consumer read it (see the module docstring for
    what is followed and what is kept). The copy is then run beside `model` on the data: when the
    largest output difference exceeds `tolerance` × max(1, output scale), `OutputCheckError` is
    raised. `model` itself is left unchanged. `prune_model` does the same and returns a
    `PruneResult` (the model, what went and what stayed, the check, the metrics).

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
        sites: Only prune these site paths (exact). Defaults to None (every site).
        layers: Only prune sites whose path matches this regular expression (`re.search`).
            Defaults to None (every site).
        only: "all", "dead" or "flagged" (sites whose dead share reached the report's flag
            threshold). Defaults to None ("all").
        batch_size: Batch size of the scan, the checks and the metrics. Defaults to `256`.
        samples: Use the first `samples` samples of the data (scan and check). Defaults to None (all).
        rescale: Multiply inputs by this factor, as for `scan`. Defaults to None.
        skip_bad_images: For a folder of images: skip the images that cannot be read (counted in
            a note) instead of refusing the folder. Defaults to False.
        validation_data: Held-out inputs (and labels): the output difference there is measured
            and, with labels, the metrics too. Defaults to None.
        validation_labels: Labels of `validation_data`, if not in it. Defaults to None.
        loss: The loss for the metrics, when the model stores none. Defaults to None (the model's).
        tolerance: Largest accepted output difference on the data, scaled up by the largest
            |output| past 1. Defaults to `1e-5`.
        strategy: A `tf.distribute.Strategy`: the scan runs on all its replicas and the pruned
            copy is built in its scope; the checks run on the whole data in every worker, so every
            worker returns the same result. Defaults to None: the strategy the model was built
            under, if any.
        on_start: Called once by the scan with the number of batches (None if unknown), as for
            `deadrelu.scan`; not called with a report. Defaults to None.
        on_batch: Called by the scan after each batch with the batch's sample count. Defaults to None.

    Returns:
        The pruned copy, a `keras.Model` (compiled like `model` with a fresh optimizer, when
        `model` was compiled); an unchanged copy when no unit can be removed.

    Raises:
        OutputCheckError: Dead units only, and the outputs differ on the data beyond the tolerance
            (`cause`: "data" for units from a report of other data, "keras" for a layer Keras
            computes wrongly, "deadrelu" for a bug); `.result` holds the `PruneResult`.
        UsageError: An option is invalid; a report without data to prove on; `dormant` without
            labels or loss.
        UnsupportedModelError: `model` is subclassed (or not a Keras 3 model).

    Example:
        >>> smaller = deadrelu.prune(model, x_test[:2000])
        >>> smaller.count_params(), model.count_params()
        >>> smaller.save("pruned.keras")
    """
    result = prune_model(
        model,
        report_or_data,
        data=data,
        labels=labels,
        dormant=dormant,
        sites=sites,
        layers=layers,
        only=only,
        batch_size=batch_size,
        samples=samples,
        rescale=rescale,
        skip_bad_images=skip_bad_images,
        validation_data=validation_data,
        validation_labels=validation_labels,
        loss=loss,
        tolerance=tolerance,
        strategy=strategy,
        on_start=on_start,
        on_batch=on_batch,
    )
    if result.model is not None:
        return result.model
    from deadrelu.engine.distribute import resolve_strategy, scope
    from deadrelu.fixes.model_utils import copy_model

    with scope(resolve_strategy(strategy, model)):
        return copy_model(model)


def prune_model(
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
    skip_bad_images: bool = False,
    validation_data: str | os.PathLike | Any = None,
    validation_labels: str | os.PathLike | Any = None,
    loss: Any = None,
    tolerance: float = DEFAULT_TOLERANCE,
    strategy: Any = None,
    on_start: Callable[[int | None], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> PruneResult:
    """Like `prune`, but returns a `PruneResult`: the pruned copy, what went and what stayed, the proof.

    `patch_model` and `revive_model` are its twins: each result carries `.model`, `.check` (an
    `OutputCheck`), `.notes`, `to_dict()` and a rich/notebook view, and each verb selects sites
    with `sites` / `layers` / `only` (`deadrelu.fixes.selection.select_sites`). The arguments are
    those of `prune`.

    Returns:
        A `PruneResult`: `.model` is the pruned copy (None when no unit can be removed: `.skipped`
        says why); `.removed`, `.kept` and `.skipped` say what went and what stayed, per site;
        `.check` the output comparison on the data; with `dormant` (or labelled validation data)
        `.metrics_before` / `.metrics_after`.

    Raises:
        OutputCheckError: As for `prune`; nothing is returned, `.result` holds the `PruneResult`.
        UsageError: An option is invalid; `data` with data (not a report); a report without data
            to prove on; `dormant` without labels or loss.
        UnsupportedModelError: `model` is subclassed (or not a Keras 3 model).

    Example:
        >>> result = deadrelu.prune_model(model, x_test[:2000])
        >>> result.params_before, result.params_after, result.check.describe()
        >>> result.skipped                    # {path: why its dead units stay}
        >>> result.model.save("pruned.keras")
    """
    from deadrelu.data import load_data
    from deadrelu.engine.distribute import resolve_strategy
    from deadrelu.engine.distribute import scope as strategy_scope
    from deadrelu.engine.losses import compile_config
    from deadrelu.engine.mesh import keras_batches_split
    from deadrelu.fixes.check import check_failure
    from deadrelu.fixes.selection import check_only
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
        scan_notes: list[str] = []
    else:
        if data is not None:
            raise UsageError(
                "`data` is the data to prove a report's units on; given data to scan, pass it once "
                "(`prune(model, x)`), or pass the report (`prune(model, report, data=x)`)"
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
        scan_notes = list(report.notes)
    only = check_only(only, report)
    probe_data = load_data(
        data, model, labels=labels, samples=samples, rescale=rescale, skip_bad_images=skip_bad_images
    )
    if dormant is not None and not probe_data.has_labels:
        raise UsageError(
            "`dormant` removes units that still fire, which changes the outputs: pass `labels=` (or data with "
            "a 'y' array) so that the loss and metrics before and after can be measured"
        )

    selection = {"dormant": dormant, "sites": sites, "layers": layers, "only": only, "notes": scan_notes}
    with strategy_scope(strategy):  # the pruned copy's variables are the strategy's too
        result = _build(model, report, **selection)
        if result.model is None:
            return result
        result.check = _compare(model, result.model, probe_data, batch_size, samples, tolerance)
        spare = _owners_named(result, set(result.check.keras_bug_layers))
        if dormant is None and not result.check.passed and spare:
            # Keras computes these layers wrongly on every path (Conv3D, DepthwiseConv*, ...):
            # removing their units changes that. Without them, the rest may still go exactly.
            retry = _build(model, report, **selection, spare=spare)
            if retry.model is None:
                return retry
            retry.check = _compare(model, retry.model, probe_data, batch_size, samples, tolerance)
            if retry.check.passed:
                result = retry
        metrics_data = probe_data if dormant is not None else None
        if validation_data is not None:
            held_out = load_data(validation_data, model, labels=validation_labels, rescale=rescale)
            result.validation_check = _compare(model, result.model, held_out, batch_size, None, tolerance)
            if held_out.has_labels and has_loss:
                metrics_data, result.metrics_data = held_out, "validation data"
        if metrics_data is not None:
            result.metrics_data = result.metrics_data or "data"
            # Under a keras.distribution, Keras's evaluate takes only batches that split over the devices.
            with keras_batches_split("Keras's `evaluate` of the loss and metrics before and after"):
                before_after = _metrics(model, result.model, metrics_data, batch_size, loss)
            result.metrics_before, result.metrics_after = before_after
    if dormant is not None:  # dormant units still fired: the change is reported, not enforced
        result.check = dataclasses.replace(result.check, enforced=False)
    if result.check.keras_bug_layers:
        from deadrelu.fixes.bias_axis import describe

        result.notes.append(
            f"{describe(result.check.keras_bug_layers)}: such a model computes differently eagerly than in "
            "`predict`; the outputs were compared as the scan ran the model"
        )
    if dormant is None and not result.check.passed:
        raise check_failure(result.check, fix="pruned", from_report=not scanned_here, result=result)
    return result


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
    from deadrelu.io.files import data_file

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


def _build(
    model, report, *, dormant, sites, layers, only, notes: list[str], spare: frozenset[str] = frozenset()
) -> PruneResult:
    """Plans the removal of the report's dead (and dormant) units and builds the smaller model.

    The units of the layers named in `spare` stay (their bias is misplaced by Keras, `deadrelu.fixes.bias_axis`).
    """
    from deadrelu.engine.mesh import layouts_fit
    from deadrelu.fixes.prune_plan import plan_pruning
    from deadrelu.fixes.shrink import Shrinker

    decided = plan_pruning(model, report, dormant=dormant, sites=sites, layers=layers, only=only, spare=spare)
    params = model.count_params()
    result = PruneResult(
        model=None,
        removed=decided.removed,
        kept=decided.kept,
        skipped=decided.skipped,
        candidates=decided.candidates,
        layers=[],
        params_before=params,
        params_after=params,
        dormant=dormant,
        report=report,
        notes=[*notes, *decided.notes],
    )
    if decided.plan is None:
        return result
    shrinker = Shrinker(model, decided.graph, decided.plan)
    with layouts_fit("the pruned model"):  # a ModelParallel layout may not split the smaller weights
        result.model = shrinker.run()
    _compile_like_original(result.model, model, result.notes)
    result.notes.extend(shrinker.notes)
    result.layers = shrinker.changes_made()
    result.params_after = result.model.count_params()
    return result


def _owners_named(result: PruneResult, names: set[str]) -> frozenset[str]:
    """Those of `names` that are layers `result` removed units from."""
    return frozenset(change.name for change in result.layers if change.name in names and change.units is not None)


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


# -- the proof and the metrics -------------------------------------------------------------------


def _compare(original, pruned, data, batch_size: int, samples: int | None, tolerance: float) -> OutputCheck:
    """The outputs of both models on `data` (a `deadrelu.data` stream), compared as the scan ran them."""
    import warnings

    from deadrelu.fixes.check import compare_outputs

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*structure of `inputs`", category=UserWarning)
        return compare_outputs(original, pruned, data.batches(batch_size), samples=samples, tolerance=tolerance)


def _metrics(model, pruned, data, batch_size: int, loss) -> tuple[dict[str, float], dict[str, float]]:
    """The loss and compiled metrics of both models on labelled data (each compiled like `model`)."""
    import keras

    from deadrelu.engine.losses import match_labels
    from deadrelu.fixes.model_utils import copy_model
    from deadrelu.fixes.retrain import compile_like

    xs, ys = zip(*data.batches(4096, labels=True))
    x = keras.tree.map_structure(lambda *arrays: np.concatenate(arrays), *xs)
    y = keras.tree.map_structure(lambda *arrays: np.concatenate(arrays), *ys)
    out = []
    for variant in (copy_model(model), pruned):
        compile_like(variant, model, loss=loss)
        values = variant.evaluate(x, match_labels(y, variant), batch_size=batch_size, verbose=0, return_dict=True)
        out.append({k: float(v) for k, v in values.items()})
    return out[0], out[1]

"""`deadrelu.patch`: the same model with its ReLU sites rewritten to LeakyReLU or PReLU.

Every trained weight is carried over, and the result is built from Keras's own layers only, so it
loads with plain `keras.models.load_model` (no custom objects).

How each site kind (docs/report-format.md, "Site kinds and paths") is rewritten:

* **fused** (`Dense(..., activation='relu')`): the same layer with `activation='linear'`, followed
  by a new activation layer named after it (`dense_1_leaky`, `dense_1_prelu`). A layer called
  several times (a shared layer) gets one new activation layer, shared the same way, so PReLU
  alphas are shared like the layer's kernel.
* **activation** / **relu_layer** (`Activation('relu')`, `ReLU(...)`): replaced by the new
  activation layer, which keeps the old name.
* **op-level** (`op:...`, a ReLU applied as a function call): only where that is exact — a custom
  `activation` that is exactly one ReLU is rewritten as a fused one, an `Activation` or `Lambda`
  layer whose function is exactly one ReLU as an `Activation('relu')` layer; a ReLU inside `call`
  code is left, with the reason (`deadrelu.fixes.op_fixes`). When no selected site can be rewritten, the
  result says "nothing patched" (`PatchResult.changed` is False) and the command line writes nothing.

Caps (`relu6`, `max_value`) and thresholds are kept, exactly, with built-in layers:

* leaky: `ReLU(max_value=m, negative_slope=alpha, threshold=t)`, which is `min(x, m)` above `t` and
  `alpha * (x - t)` at or below it (Keras's own thresholded leaky ReLU); a plain ReLU becomes
  `LeakyReLU(negative_slope=alpha)`.
* prelu: `ReLU(max_value=m, negative_slope=1.0, threshold=t)` (named `<name>_clip`) followed by
  `PReLU`. The first layer is `min(x, m)` above `t` and `x - t` (≤ 0) at or below it, so the PReLU
  passes the upper part unchanged and scales only the part under the threshold:
  `min(x, m)` above `t`, `alpha * (x - t)` below it — the same function as the leaky rewrite, with a
  learnt slope. It is exact: with alpha 0 it reproduces the original site bit for bit. (Keras's
  `ReLU` layer refuses negative thresholds and caps, so `t ≥ 0` and `m ≥ 0` always hold.)

`patch` and `patch_model` check every patch they make: the same patch with slope 0 (alpha 0 / alpha_init 0)
must reproduce the original outputs, compared on the data given (or synthetic inputs) with the one
output-check policy of every fix (`deadrelu.fixes.check`); a patch that fails raises
`OutputCheckError` (the command line exits 4 and writes nothing).

The rebuild itself is `deadrelu.fixes.rewriter.Rewriter`; this module holds the options, the site
selection (`deadrelu.fixes.selection`, shared with `revive` and `prune`) and the results.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import deadrelu.fixes.check as output_check
import deadrelu.validation as validation
from deadrelu.engine.sites import find_sites
from deadrelu.errors import UnsupportedModelError
from deadrelu.fixes.check import DEFAULT_TOLERANCE, OutputCheck
from deadrelu.fixes.op_fixes import old_text, patch_twin, with_op_sites
from deadrelu.fixes.rewriter import LEAKY, PRELU, Rewriter, rebuildable, subclassed_message
from deadrelu.fixes.selection import check_only, report_site, select_sites

if TYPE_CHECKING:
    import keras

    from deadrelu.report import Report

TARGETS = (LEAKY, PRELU)
SHARED_AXES_CHOICES = ("channel", None)

# Maas et al. (2013) use 0.01 (Keras 3's LeakyReLU defaults to 0.3).
DEFAULT_ALPHA = 0.01
# He et al. (2015) initialise PReLU slopes at 0.25 (Keras's PReLU defaults to zeros: a ReLU).
DEFAULT_ALPHA_INIT = 0.25
# The slope-0 check compares this many samples of the data given (a check, not a scan), or of
# synthetic inputs without data, unless `samples` says otherwise.
CHECK_SAMPLES = 1024
SYNTHETIC_SAMPLES = 256


@dataclasses.dataclass
class Rewrite:
    """How one site was rewritten.

    Attributes:
        path: The site's path.
        kind: "fused", "activation" or "relu_layer", or an op-level kind ("op:relu", ...).
        layer: Class name of the site's layer.
        old: The original nonlinearity, e.g. "Dense(activation='relu')".
        new: What replaces it, e.g. "Dense(activation='linear') → PReLU(alpha_init=0.25, per channel)".
        new_layers: Names of the activation layers now applying the nonlinearity.
        units: Units of the site, when a report was given.
        dead: Dead units of the site, when a report was given.
    """

    path: str
    kind: str
    layer: str
    old: str
    new: str
    new_layers: list[str]
    units: int | None = None
    dead: int | None = None


@dataclasses.dataclass(repr=False)
class PatchResult:
    """The patched model and what was done to it (`deadrelu.ReviveResult` is its twin for `revive_model`).

    Attributes:
        model: The patched `keras.Model` (a new model; the input is left unchanged).
        to: "leaky" or "prelu".
        settings: The options the patch was made with (`to`, `only`, `layers`, `sites`, and
            `alpha`, or `alpha_init` and `prelu_shared_axes`).
        rewrites: The sites that were rewritten, in model order.
        kept: Paths of the sites left as they were (not selected by `sites` / `layers` / `only`).
        skipped: Selected sites that could not be rewritten, with the reason: `{path: reason}`.
        notes: One-line remarks for the user.
        check: The slope-0 check: the same patch with slope 0 compared with the original model
            (`deadrelu.fixes.check.OutputCheck`); None when nothing was rewritten.

    `repr(result)` is one line; a notebook shows a table of the rewritten sites (`_repr_html_`),
    and so does a rich console (`__rich__`).
    """

    model: keras.Model
    to: str
    settings: dict
    rewrites: list[Rewrite]
    kept: list[str]
    skipped: dict[str, str]
    notes: list[str] = dataclasses.field(default_factory=list)
    check: OutputCheck | None = None

    def __repr__(self) -> str:
        from deadrelu.views.notebook import patch_summary

        return f"<PatchResult {patch_summary(self)[0]}>"

    def _repr_html_(self) -> str:
        from deadrelu.views.notebook import patch_html

        return patch_html(self)

    def __rich__(self):
        from deadrelu.views.notebook import patch_renderable

        return patch_renderable(self)

    @property
    def changed(self) -> bool:
        """Whether any site was rewritten (else `model` is an unchanged copy: "nothing patched")."""
        return bool(self.rewrites)

    def to_dict(self) -> dict:
        """The result as JSON-ready values (docs/cli.md, "deadrelu patch", lists every field)."""
        return {
            "to": self.to,
            "settings": dict(self.settings),
            "changed": self.changed,
            "rewrites": [dataclasses.asdict(r) for r in self.rewrites],
            "kept": list(self.kept),
            "skipped": dict(self.skipped),
            "notes": list(self.notes),
            "check": None if self.check is None else self.check.to_dict(),
        }


# -- public API ---------------------------------------------------------------------------------


def patch(
    model: keras.Model,
    to: str = LEAKY,
    *,
    alpha: float = DEFAULT_ALPHA,
    alpha_init: float = DEFAULT_ALPHA_INIT,
    prelu_shared_axes: str | None = "channel",
    sites: Iterable[str] | None = None,
    layers: str | None = None,
    only: str | None = None,
    report: Report | None = None,
    data: str | os.PathLike | Any = None,
    batch_size: int = 256,
    samples: int | None = None,
    rescale: float | None = None,
    skip_bad_images: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    strategy: Any = None,
) -> keras.Model:
    """Returns a copy of `model` whose ReLU sites are LeakyReLU or PReLU, with every weight kept.

    It is `patch_model(...).model`: the same patch, checked the same way (the same patch with
    slope 0 must reproduce `model`'s outputs); `patch_model` returns the whole `PatchResult`
    (the model, the rewrites, the check).

    Args:
        model: A Sequential or Functional `keras.Model` (nested sub-models are rewritten inside).
            Subclassed models cannot be rebuilt and raise `UnsupportedModelError`.
        to: "leaky" (`LeakyReLU` with slope `alpha`) or "prelu" (`PReLU` with learnt slopes).
            Defaults to `"leaky"`.
        alpha: Negative slope of the leaky rewrite. Defaults to `0.01` (Maas et al. 2013).
        alpha_init: Initial PReLU slope. Defaults to `0.25` (He et al. 2015).
        prelu_shared_axes: "channel" (one alpha per channel: shared over every spatial/time
            axis, as in He et al.) or None (one alpha per element, Keras's default).
            Defaults to `"channel"`.
        sites: Only rewrite these site paths (exact paths, as `find_sites` or the scan table
            show them). Defaults to None (every site).
        layers: A regular expression; only sites whose path it matches (`re.search`) are
            rewritten. Defaults to None (every site).
        only: "all", "dead" (sites with at least one dead unit) or "flagged" (sites whose dead
            share reached the report's flag threshold); "dead" and "flagged" need `report`.
            Defaults to None ("all").
        report: A `Report` of this model (from `deadrelu.scan` or `Report.from_json`).
            Defaults to None.
        data: Inputs to run the check on (see `patch_model`). Defaults to None (synthetic inputs).
        batch_size: Batch size of the check. Defaults to `256`.
        samples: Samples the check compares. Defaults to None (1,024 of `data`, or 256 synthetic).
        rescale: Multiply the check's inputs by this factor. Defaults to None.
        skip_bad_images: Skip unreadable images of a folder `data`. Defaults to False.
        tolerance: Accepted max |Δ| of the check before scaling. Defaults to `1e-5`.
        strategy: A `tf.distribute.Strategy`: the patched model's variables are created in its
            scope, so it runs on the strategy's replicas like `model`. Defaults to None: the
            strategy `model` was built under, if any.

    Returns:
        A new `keras.Model`; `model` is left unchanged. The compile configuration (optimizer,
        loss, metrics) is carried over, not the optimizer's state.

    Raises:
        UnsupportedModelError: `model` is subclassed (or not a Keras 3 model).
        UsageError: An option is invalid, `sites` names an unknown path, `layers` matches no
            site, or `only` needs a report that was not given.
        DataError: `data` cannot be read or does not fit the model.
        OutputCheckError: The slope-0 patch does not reproduce the original outputs.

    Example:
        >>> fixed = deadrelu.patch(model, "prelu")
        >>> fixed = deadrelu.patch(model, "leaky", alpha=0.1, only="dead", report=deadrelu.scan(model, x))
    """
    return patch_model(
        model,
        to,
        alpha=alpha,
        alpha_init=alpha_init,
        prelu_shared_axes=prelu_shared_axes,
        sites=sites,
        layers=layers,
        only=only,
        report=report,
        data=data,
        batch_size=batch_size,
        samples=samples,
        rescale=rescale,
        skip_bad_images=skip_bad_images,
        tolerance=tolerance,
        strategy=strategy,
    ).model


def patch_model(
    model: keras.Model,
    to: str = LEAKY,
    *,
    alpha: float = DEFAULT_ALPHA,
    alpha_init: float = DEFAULT_ALPHA_INIT,
    prelu_shared_axes: str | None = "channel",
    sites: Iterable[str] | None = None,
    layers: str | None = None,
    only: str | None = None,
    report: Report | None = None,
    data: str | os.PathLike | Any = None,
    batch_size: int = 256,
    samples: int | None = None,
    rescale: float | None = None,
    skip_bad_images: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    strategy: Any = None,
) -> PatchResult:
    """Like `patch`, but returns a `PatchResult`: the model, every rewrite, and the check.

    The check: the same patch with slope 0 (alpha 0, or alpha_init 0) computes exactly the
    original function, so its outputs are compared with `model`'s on `data` (or synthetic
    inputs) by the output-check policy every fix shares (`deadrelu.fixes.check.compare_outputs`:
    max |Δ| ≤ `tolerance` × max(1, largest |output|), NaN on one side only fails). It proves the
    rewrite changed nothing but the negative slope.

    `revive_model` and `prune_model` are its twins: each result carries `.model`, the per-site
    changes, `.skipped` and `.check`, and each selects sites with `sites` / `layers` / `only`.

    Args:
        model: A Sequential or Functional `keras.Model`.
        to: "leaky" or "prelu". Defaults to `"leaky"`.
        alpha: Negative slope of the leaky rewrite. Defaults to `0.01`.
        alpha_init: Initial PReLU slope. Defaults to `0.25`.
        prelu_shared_axes: "channel" or None. Defaults to `"channel"`.
        sites: Only rewrite these site paths. Defaults to None (every site).
        layers: A regular expression matched against site paths. Defaults to None (every site).
        only: "all", "dead" or "flagged" (the last two need `report`). Defaults to None ("all").
        report: A `Report` of this model. Defaults to None.
        data: Inputs to run the check on (anything `deadrelu.scan` accepts, paths included).
            Defaults to None (synthetic inputs: uniform random numbers of the model's input shape).
        batch_size: Batch size of the check. Defaults to `256`.
        samples: Compare the first `samples` samples. Defaults to None: the first 1,024 samples
            of `data`, or 256 synthetic samples.
        rescale: Multiply the inputs by this factor (e.g. 1/255), as for `scan`. Defaults to None.
        skip_bad_images: With a folder of images, skip the unreadable ones instead of refusing
            the folder. Defaults to False.
        tolerance: Accepted max |Δ| of the check before scaling by the largest |output| (when
            above 1). Defaults to `1e-5`.
        strategy: A `tf.distribute.Strategy` (see `patch`): the patched model (and its slope-0
            twin) are built in its scope. Defaults to None: the strategy `model` was built under.

    Returns:
        A `PatchResult` whose `check` passed (None when nothing was rewritten).

    Raises:
        UnsupportedModelError: `model` is subclassed (or not a Keras 3 model).
        UsageError: An option is invalid, or `only` needs a report that was not given.
        DataError: `data` cannot be read or does not fit the model.
        OutputCheckError: The slope-0 patch does not reproduce the original outputs; `.check`
            says by how much, `.cause` why ("keras" when Keras computes a layer of the model
            wrongly, else "deadrelu": a bug), `.result` holds the `PatchResult`.

    Example:
        >>> result = patch_model(model, "prelu", data=x_test[:256])
        >>> for rewrite in result.rewrites:
        ...     print(rewrite.path, rewrite.old, "→", rewrite.new)
        >>> result.check.describe()
    """
    batch_size = validation.positive_int(batch_size, "batch_size")
    samples = validation.positive_int(samples, "samples", optional=True)
    rescale = validation.positive_number(rescale, "rescale", optional=True, example="1/255")
    skip_bad_images = validation.boolean(skip_bad_images, "skip_bad_images")
    tolerance = validation.finite_number(tolerance, "tolerance", minimum=0.0, example="1e-5")
    plan = _plan(model, to, alpha, alpha_init, prelu_shared_axes, sites, layers, only, report, strategy, data=data)
    patched, rewriter = _build(plan, alpha=plan.alpha, alpha_init=plan.alpha_init)
    result = _result(plan, patched, rewriter, report)
    if not result.changed:
        return result
    zero, _ = _build(plan, alpha=0.0, alpha_init=0.0)
    result.check = _slope_zero_check(
        model,
        zero,
        data,
        batch_size=batch_size,
        samples=samples,
        rescale=rescale,
        skip_bad_images=skip_bad_images,
        tolerance=tolerance,
    )
    if not result.check.passed:
        raise output_check.check_failure(
            result.check,
            fix="slope-0 patched",
            result=result,
            exact_because="a slope-0 LeakyReLU or PReLU computes exactly what the ReLU computed",
        )
    return result


# -- the steps ---------------------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    """What to rewrite, and how: the checked options and the selection, before any model is built."""

    model: keras.Model
    to: str
    alpha: float
    alpha_init: float
    shared_axes: str | None
    settings: dict
    rewritable: list  # the sites handed to the Rewriter (op-level ones as their layer-level twins)
    op_sites: dict  # path → the op-level site a twin stands for
    op_skipped: dict[str, str]
    selected: int
    kept: list[str]
    notes: list[str]
    strategy: Any


def _plan(model, to, alpha, alpha_init, shared_axes, sites, layers, only, report, strategy, *, data) -> _Plan:
    from deadrelu.engine.distribute import resolve_strategy

    to, alpha, alpha_init, shared_axes, only = _check_options(to, alpha, alpha_init, shared_axes, only, report)
    _check_model(model)
    strategy = resolve_strategy(strategy, model)
    sites = None if sites is None else _paths(sites)  # read once: it may be an iterator
    site_map, found_notes = with_op_sites(model, find_sites(model), data)
    selected, kept, notes = select_sites(site_map, sites=sites, only=only, report=report, layers=layers)
    # Op-level sites are rewritten only where a layer-level twin is exact (`deadrelu.fixes.op_fixes`).
    rewritable, op_skipped, op_sites = [], {}, {}
    for site in selected:
        if site.op_level:
            twin, reason = patch_twin(site)
            if twin is None:
                op_skipped[site.path] = reason
                continue
            op_sites[site.path], site = site, twin
        rewritable.append(site)
    settings = {"to": to, "only": only, "layers": layers, "sites": sites}
    if to == LEAKY:
        settings["alpha"] = alpha
    else:
        settings.update(alpha_init=alpha_init, prelu_shared_axes=shared_axes)
    return _Plan(
        model=model,
        to=to,
        alpha=alpha,
        alpha_init=alpha_init,
        shared_axes=shared_axes,
        settings=settings,
        rewritable=rewritable,
        op_sites=op_sites,
        op_skipped=op_skipped,
        selected=len(selected),
        kept=kept,
        notes=found_notes + notes,
        strategy=strategy,
    )


def _build(plan: _Plan, *, alpha: float, alpha_init: float) -> tuple[keras.Model, Rewriter]:
    """Rebuilds the model with the planned sites rewritten, its variables in the strategy's scope."""
    from deadrelu.engine.distribute import scope

    rewriter = Rewriter(
        plan.model, plan.rewritable, to=plan.to, alpha=alpha, alpha_init=alpha_init, shared_axes=plan.shared_axes
    )
    with scope(plan.strategy):
        return rewriter.run(), rewriter


def _result(plan: _Plan, patched, rewriter: Rewriter, report) -> PatchResult:
    rewrites = []
    for site in plan.rewritable:
        if site.path in rewriter.skipped:
            continue
        rewrite = Rewrite(**{**rewriter.rewrites[id(site.layer)], "path": site.path})  # an LSTM's two sites
        if site.path in plan.op_sites:
            rewrite.kind, rewrite.old = plan.op_sites[site.path].kind, old_text(plan.op_sites[site.path])
        if report is not None:
            site_report = report_site(report, site.path)
            rewrite.units, rewrite.dead = site_report.units, len(site_report.dead)
        rewrites.append(rewrite)
    skipped = {**plan.op_skipped, **rewriter.skipped}
    notes = list(plan.notes)
    if not plan.selected:
        notes.append("nothing patched: no site selected (the result is an unchanged copy)")
    elif not rewrites:
        notes.append("nothing patched: no selected site can be rewritten (the result is an unchanged copy)")
    for path, reason in skipped.items():
        notes.append(f"left {path} as it was: {reason}")
    notes.extend(rewriter.notes)
    return PatchResult(
        model=patched,
        to=plan.to,
        settings=plan.settings,
        rewrites=rewrites,
        kept=plan.kept,
        skipped=skipped,
        notes=notes,
    )


def _slope_zero_check(model, zero, data, *, batch_size, samples, rescale, skip_bad_images, tolerance) -> OutputCheck:
    """Compares `model` with its slope-0 patch `zero`, which must compute the very same function."""
    from deadrelu.data import load_data

    if samples is None:
        samples = CHECK_SAMPLES if data is not None else SYNTHETIC_SAMPLES
    probe_data = load_data(data, model, samples=samples, rescale=rescale, skip_bad_images=skip_bad_images)
    with warnings.catch_warnings():
        # A model built with `inputs=[x]` warns when called with a bare array; both get the same.
        warnings.filterwarnings("ignore", message=".*structure of `inputs`", category=UserWarning)
        return output_check.compare_outputs(
            model,
            zero,
            probe_data.batches(batch_size),
            samples=samples,
            tolerance=tolerance,
            synthetic=probe_data.synthetic,
        )


def _paths(sites) -> list[str]:
    return [sites] if isinstance(sites, str) else [str(path) for path in sites]


def _check_options(to, alpha, alpha_init, shared_axes, only, report):
    to = validation.one_of(to.lower() if isinstance(to, str) else to, "to", TARGETS)
    alpha = validation.finite_number(alpha, "alpha", minimum=0.0, example="0.01")
    alpha_init = validation.finite_number(alpha_init, "alpha_init", example="0.25")
    if isinstance(shared_axes, str):
        shared_axes = None if shared_axes.lower() == "none" else shared_axes.lower()
    shared_axes = validation.one_of(shared_axes, "prelu_shared_axes", SHARED_AXES_CHOICES)
    return to, alpha, alpha_init, shared_axes, check_only(only, report)


def _check_model(model) -> None:
    import keras

    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"patch needs a Keras 3 model, got {type(model).__module__}.{type(model).__name__}; "
            "load the file with deadrelu.load_model, which converts tf.keras models"
        )
    if not rebuildable(model):
        raise UnsupportedModelError(subclassed_message(model))

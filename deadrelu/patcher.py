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
  code is left, with the reason (`deadrelu.op_fixes`). When no selected site can be rewritten, the
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

The self-check (`patch_self_check`) builds the same patch with slope 0 (alpha 0 / alpha_init 0),
which must reproduce the original outputs; the command line runs it on every patch.

The rebuild itself is `deadrelu.rewriter.Rewriter`; this module holds the options, the site
selection (`select_sites`, shared with `deadrelu.revive_model`) and the results.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import deadrelu.validation as validation
from deadrelu.errors import UnsupportedModelError, UsageError
from deadrelu.op_fixes import old_text, patch_twin, with_op_sites
from deadrelu.rewriter import LEAKY, PRELU, Rewriter, rebuildable, subclassed_message
from deadrelu.sites import Site, SiteMap, find_sites

if TYPE_CHECKING:
    import keras

    from deadrelu.report import Report

TARGETS = (LEAKY, PRELU)
ONLY_CHOICES = ("all", "dead", "flagged")
SHARED_AXES_CHOICES = ("channel", None)

# Maas et al. (2013) use 0.01 (Keras 3's LeakyReLU defaults to 0.3).
DEFAULT_ALPHA = 0.01
# He et al. (2015) initialise PReLU slopes at 0.25 (Keras's PReLU defaults to zeros: a ReLU).
DEFAULT_ALPHA_INIT = 0.25
SELF_CHECK_TOLERANCE = 1e-5


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
        settings: The options the patch was made with.
        rewrites: The sites that were rewritten, in model order.
        kept: Paths of the sites left as they were (not selected by `sites` / `only` / `layers`).
        skipped: Selected sites that could not be rewritten, with the reason: `{path: reason}`.
        notes: One-line remarks for the user.
        check: The self-check (`patch_self_check`) on the data given to `patch_model`, or None
            when no data was given.

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
    check: SelfCheck | None = None

    def __repr__(self) -> str:
        from deadrelu.display import patch_summary

        return f"<PatchResult {patch_summary(self)[0]}>"

    def _repr_html_(self) -> str:
        from deadrelu.display import patch_html

        return patch_html(self)

    def __rich__(self):
        from deadrelu.display import patch_renderable

        return patch_renderable(self)

    @property
    def changed(self) -> bool:
        """Whether any site was rewritten (else `model` is an unchanged copy: "nothing patched")."""
        return bool(self.rewrites)

    def to_dict(self) -> dict:
        out = {
            "to": self.to,
            "settings": self.settings,
            "rewrites": [dataclasses.asdict(r) for r in self.rewrites],
            "kept": self.kept,
            "skipped": self.skipped,
            "notes": self.notes,
        }
        if self.check is not None:
            out["check"] = self.check.to_dict()
        return out


@dataclasses.dataclass
class SelfCheck:
    """Result of `patch_self_check`: does the slope-0 patch reproduce the original outputs?

    Attributes:
        max_abs_diff: Largest |original − patched| over every output value.
        samples: Samples compared.
        synthetic: True when the inputs were random stand-ins (no data given).
        tolerance: The largest difference accepted (absolute, scaled up for outputs beyond ±1).
        scale: Largest |output| of the original model (the tolerance grows with it past 1).
    """

    max_abs_diff: float
    samples: int
    synthetic: bool
    tolerance: float = SELF_CHECK_TOLERANCE
    scale: float = 1.0

    @property
    def passed(self) -> bool:
        return math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance * max(1.0, self.scale)

    def __float__(self) -> float:
        return float(self.max_abs_diff)

    def describe(self) -> str:
        """The one line the command line prints."""
        what = "synthetic samples" if self.synthetic else "samples"
        verdict = "reproduces" if self.passed else "does NOT reproduce"
        return (
            f"self-check: slope-0 patch {verdict} the original outputs "
            f"(max |Δ| = {self.max_abs_diff:.2g} on {self.samples} {what})"
        )

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["passed"] = self.passed
        if not math.isfinite(self.max_abs_diff):
            out["max_abs_diff"] = None
        return out


class SelfCheckError(RuntimeError):
    """The slope-0 patch does not reproduce the original model: a bug in deadrelu, not in the input."""


# -- public API ---------------------------------------------------------------------------------


def patch(
    model: keras.Model,
    to: str = LEAKY,
    *,
    alpha: float = DEFAULT_ALPHA,
    alpha_init: float = DEFAULT_ALPHA_INIT,
    prelu_shared_axes: str | None = "channel",
    only: str | None = None,
    report: Report | None = None,
    layers: str | None = None,
    sites: Iterable[str] | None = None,
) -> keras.Model:
    """Returns a copy of `model` whose ReLU sites are LeakyReLU or PReLU, with every weight kept.

    `patch_model` does the same and returns a `PatchResult` (the model, the rewrites, the check).

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
        only: "all", "dead" (sites with at least one dead unit) or "flagged" (sites whose dead
            share reached the report's flag threshold); "dead" and "flagged" need `report`.
            Defaults to None ("all").
        report: A `Report` of this model (from `deadrelu.scan` or `Report.from_json`).
            Defaults to None.
        layers: A regular expression; only sites whose path it matches (`re.search`) are
            rewritten. Defaults to None (every site).
        sites: Only rewrite these site paths. Defaults to None (every site).

    Returns:
        A new `keras.Model`; `model` is left unchanged. The compile configuration (optimizer,
        loss, metrics) is carried over, not the optimizer's state.

    Raises:
        UnsupportedModelError: `model` is subclassed (or not a Keras 3 model).
        UsageError: An option is invalid, or `only` needs a report that was not given.

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
        only=only,
        report=report,
        layers=layers,
        sites=sites,
    ).model


def patch_model(
    model: keras.Model,
    to: str = LEAKY,
    *,
    alpha: float = DEFAULT_ALPHA,
    alpha_init: float = DEFAULT_ALPHA_INIT,
    prelu_shared_axes: str | None = "channel",
    only: str | None = None,
    report: Report | None = None,
    layers: str | None = None,
    sites: Iterable[str] | None = None,
    data: str | os.PathLike | Any = None,
    batch_size: int = 256,
) -> PatchResult:
    """Like `patch`, but returns a `PatchResult`: the model, every rewrite, and the self-check.

    `revive_model` is its twin: both results carry `.model`, the per-site changes, `.skipped`
    and `.check`, and both select sites with `sites` / `only` (`select_sites`).

    Args:
        model: A Sequential or Functional `keras.Model`.
        to: "leaky" or "prelu". Defaults to `"leaky"`.
        alpha: Negative slope of the leaky rewrite. Defaults to `0.01`.
        alpha_init: Initial PReLU slope. Defaults to `0.25`.
        prelu_shared_axes: "channel" or None. Defaults to `"channel"`.
        only: "all", "dead" or "flagged" (the last two need `report`). Defaults to None ("all").
        report: A `Report` of this model. Defaults to None.
        layers: A regular expression matched against site paths. Defaults to None (every site).
        sites: Only rewrite these site paths. Defaults to None (every site).
        data: Inputs to run the self-check on (anything `deadrelu.scan` accepts): the slope-0
            patch is compared with `model` on up to 1024 samples (`patch_self_check`).
            Defaults to None (no check: `check` is None).
        batch_size: Batch size of the self-check. Defaults to `256`.

    Returns:
        A `PatchResult`.

    Raises:
        UnsupportedModelError: `model` is subclassed (or not a Keras 3 model).
        UsageError: An option is invalid, or `only` needs a report that was not given.

    Example:
        >>> result = patch_model(model, "prelu", data=x_test[:256])
        >>> for rewrite in result.rewrites:
        ...     print(rewrite.path, rewrite.old, "→", rewrite.new)
        >>> assert result.check.passed, result.check.describe()
    """
    to, alpha, alpha_init, prelu_shared_axes, only = _check_options(
        to, alpha, alpha_init, prelu_shared_axes, only, report
    )
    batch_size = validation.positive_int(batch_size, "batch_size")
    _check_model(model)
    site_map, found_notes = with_op_sites(model, find_sites(model), data)
    selected, kept, notes = select_sites(site_map, sites=sites, only=only, report=report, layers=layers)
    notes = found_notes + notes
    # Op-level sites are rewritten only where a layer-level twin is exact (`deadrelu.op_fixes`).
    rewritable, op_skipped, op_sites = [], {}, {}
    for site in selected:
        if site.op_level:
            twin, reason = patch_twin(site)
            if twin is None:
                op_skipped[site.path] = reason
                continue
            op_sites[site.path], site = site, twin
        rewritable.append(site)
    rewriter = Rewriter(model, rewritable, to=to, alpha=alpha, alpha_init=alpha_init, shared_axes=prelu_shared_axes)
    patched = rewriter.run()
    rewrites = []
    for site in rewritable:
        if site.path in rewriter.skipped:
            continue
        rewrite = Rewrite(**rewriter.rewrites[id(site.layer)])
        if site.path in op_sites:
            rewrite.kind, rewrite.old = op_sites[site.path].kind, old_text(op_sites[site.path])
        if report is not None:
            site_report = _report_site(report, site.path)
            rewrite.units, rewrite.dead = site_report.units, len(site_report.dead)
        rewrites.append(rewrite)
    skipped = {**op_skipped, **rewriter.skipped}
    if not selected:
        notes.append("nothing patched: no site selected (the result is an unchanged copy)")
    elif not rewrites:
        notes.append("nothing patched: no selected site can be rewritten (the result is an unchanged copy)")
    for path, reason in skipped.items():
        notes.append(f"left {path} as it was: {reason}")
    notes.extend(rewriter.notes)
    settings = {"to": to, "only": only, "layers": layers}
    if to == LEAKY:
        settings["alpha"] = alpha
    else:
        settings.update(alpha_init=alpha_init, prelu_shared_axes=prelu_shared_axes)
    check = None
    if data is not None:
        check = patch_self_check(
            model,
            data,
            to=to,
            batch_size=batch_size,
            prelu_shared_axes=prelu_shared_axes,
            only=only,
            report=report,
            layers=layers,
            sites=sites,
        )
    return PatchResult(
        model=patched,
        to=to,
        settings=settings,
        rewrites=rewrites,
        kept=kept,
        skipped=skipped,
        notes=notes,
        check=check,
    )


def patch_self_check(
    model: keras.Model,
    data: str | os.PathLike | Any = None,
    *,
    to: str = LEAKY,
    batch_size: int = 256,
    samples: int | None = 1024,
    synthetic_samples: int = 256,
    rescale: float | None = None,
    tolerance: float = SELF_CHECK_TOLERANCE,
    **options,
) -> SelfCheck:
    """Checks that the patch changes nothing but the negative slope.

    Builds the same patch as `patch(model, to, **options)` but with slope 0 (alpha 0 for leaky,
    alpha_init 0 for PReLU), which must compute exactly the original function, and compares the
    outputs of both models in inference mode (`deadrelu.model_utils.compare_outputs`).

    Args:
        model: The original model.
        data: Inputs (anything `deadrelu.scan` accepts). Defaults to None (synthetic inputs).
        to: "leaky" or "prelu". Defaults to `"leaky"`.
        batch_size: Samples per step. Defaults to `256`.
        samples: Compare at most this many samples of `data`. Defaults to `1024` (None: all).
        synthetic_samples: How many random inputs to use when `data` is None. Defaults to `256`.
        rescale: Multiply inputs by this factor, as for `scan`. Defaults to None.
        tolerance: Largest accepted |Δ| (scaled up by the largest |output| when that exceeds 1).
            Defaults to `1e-5`.
        **options: The other options of `patch` (`prelu_shared_axes`, `only`, `report`, `layers`,
            `sites`).

    Returns:
        A `SelfCheck`; `float(check)` is the largest absolute difference.

    Example:
        >>> check = patch_self_check(model, x_test[:256], to="prelu")
        >>> assert check.passed, check.describe()
    """
    from deadrelu.data import load_data
    from deadrelu.model_utils import compare_outputs

    batch_size = validation.positive_int(batch_size, "batch_size")
    samples = validation.positive_int(samples, "samples", optional=True)
    synthetic_samples = validation.positive_int(synthetic_samples, "synthetic_samples")
    tolerance = validation.finite_number(tolerance, "tolerance", minimum=0.0, example="1e-5")
    options = {k: v for k, v in options.items() if k not in ("alpha", "alpha_init")}
    zero = patch(model, to, alpha=0.0, alpha_init=0.0, **options)
    if data is None:
        samples = synthetic_samples
    probe_data = load_data(data, model, samples=samples, rescale=rescale, synthetic_samples=synthetic_samples)
    with warnings.catch_warnings():
        # A model built with `inputs=[x]` warns when called with a bare array; both get the same.
        warnings.filterwarnings("ignore", message=".*structure of `inputs`", category=UserWarning)
        # NaN on both sides is the same output; NaN on one side only is a difference (a failure).
        comparison = compare_outputs(model, zero, probe_data.batches(batch_size), samples=samples, strict_nan=True)
    return SelfCheck(
        max_abs_diff=comparison.max_abs_diff,
        samples=comparison.samples,
        synthetic=probe_data.synthetic,
        tolerance=tolerance,
        scale=comparison.scale,
    )


def select_sites(
    site_map: SiteMap,
    *,
    sites: Iterable[str] | None = None,
    only: str | None = None,
    report: Report | None = None,
    layers: str | None = None,
    action: str = "rewrite",
) -> tuple[list[Site], list[str], list[str]]:
    """Chooses the sites to change: the one selection `patch` and `revive` share.

    The criteria combine: a site is selected when it is among `sites`, matches `layers` and is
    `only`.

    Args:
        site_map: The model's sites (`find_sites`).
        sites: Site paths to select. Each must be a site of `report` when one is given, else of
            the model. Defaults to None (every site).
        only: "all", "dead" or "flagged" (decided from `report`). Defaults to None ("all").
        report: A `Report` of the same model. Defaults to None.
        layers: A regular expression matched against each site's path with `re.search`.
            Defaults to None (every site).
        action: The verb of the note said when `only` selects nothing. Defaults to `"rewrite"`.

    Returns:
        `(selected sites, paths of the sites kept as they are, notes)`.

    Raises:
        UsageError: `sites` names an unknown path; `layers` is not a regular expression or
            matches no site; `only` needs a report; the report does not describe this model.

    Example:
        >>> selected, kept, notes = select_sites(find_sites(model), only="flagged", report=report)
    """
    every = list(site_map.sites)
    notes: list[str] = []
    if layers is not None:
        try:
            pattern = re.compile(layers)
        except re.error as exc:
            raise UsageError(
                f"`layers` {layers!r} is not a regular expression ({exc}); pass e.g. 'conv' or '^encoder/'"
            ) from None
        matched = [site for site in every if pattern.search(site.path)]
        if every and not matched:
            raise UsageError(
                f"`layers` {layers!r} matches no site; the sites are: "
                + ", ".join(site.path for site in every[:20])
                + (" ..." if len(every) > 20 else "")
            )
    else:
        matched = every
    if isinstance(sites, str):
        sites = [sites]  # one site path
    if sites is not None:
        wanted = set(sites)
        known = [s.path for s in (report.sites if report is not None else every)]
        unknown = wanted - set(known)
        if unknown:
            where = "the report" if report is not None else "the model"
            raise UsageError(f"no site {sorted(unknown)[0]!r} in {where}; sites are {known}")
        matched = [site for site in matched if site.path in wanted]
    only = only or "all"
    if only != "all":
        if report is None:
            raise UsageError(f"`only={only!r}` decides from a scan: pass `report` (a deadrelu.Report of this model)")
        if only == "dead":
            chosen = [site for site in matched if _report_site(report, site.path).dead]
        else:
            chosen = [site for site in matched if _report_site(report, site.path).flagged]
        if matched and not chosen:
            notes.append(f"no site is {only} in the report: nothing to {action}")
    else:
        chosen = matched
    chosen_ids = {id(site) for site in chosen}
    kept = [site.path for site in every if id(site) not in chosen_ids]
    return chosen, kept, notes


# -- checks ---------------------------------------------------------------------------------


def check_only(only: str | None, report: Report | None) -> str:
    """Validates an `only` option: returns "all", "dead" or "flagged".

    Raises:
        UsageError: `only` is another value, or "dead"/"flagged" without a report.
    """
    only = validation.one_of(
        "all" if only is None else only.lower() if isinstance(only, str) else only, "only", ONLY_CHOICES
    )
    if only != "all" and report is None:
        raise UsageError(f"`only={only!r}` decides from a scan: pass `report` (a deadrelu.Report of this model)")
    return only


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


def _report_site(report, path: str):
    try:
        return report.site(path)
    except KeyError:
        raise UsageError(
            f"the report has no site {path!r}: it was made on another model; "
            "scan this model again (deadrelu scan MODEL --json scan.json)"
        ) from None

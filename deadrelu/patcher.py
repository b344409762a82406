"""`deadrelu.patch`: the same model with its ReLU sites rewritten to LeakyReLU or PReLU.

Every trained weight is carried over, and the result is built from Keras's own layers only, so it
loads with plain `keras.models.load_model` (no custom objects).

How each site kind (DESIGN.md) is rewritten:

* **fused** (`Dense(..., activation='relu')`): the same layer with `activation='linear'`, followed
  by a new activation layer named after it (`dense_1_leaky`, `dense_1_prelu`). A layer called
  several times (a shared layer) gets one new activation layer, shared the same way, so PReLU
  alphas are shared like the layer's kernel.
* **activation** / **relu_layer** (`Activation('relu')`, `ReLU(...)`): replaced by the new
  activation layer, which keeps the old name.

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
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings

from deadrelu._keras_compat import (
    child_layers, declared_dtype, first_call_output_shape, is_functional, keras_history, sequential_layers,
)
from typing import Iterable

from deadrelu.errors import UnsupportedModelError, UsageError
from deadrelu.sites import KIND_ACTIVATION, KIND_FUSED, Site, SiteMap, find_sites

LEAKY, PRELU = "leaky", "prelu"
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
        kind: "fused", "activation" or "relu_layer".
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


@dataclasses.dataclass
class PatchResult:
    """The patched model and what was done to it.

    Attributes:
        model: The patched `keras.Model` (a new model; the input is left unchanged).
        to: "leaky" or "prelu".
        settings: The options the patch was made with.
        rewrites: The sites that were rewritten, in model order.
        kept: Paths of the sites left as they were (not selected by `only` / `layers`).
        skipped: Selected sites that could not be rewritten, with the reason: `{path: reason}`.
        notes: One-line remarks for the user.
    """

    model: object
    to: str
    settings: dict
    rewrites: list[Rewrite]
    kept: list[str]
    skipped: dict[str, str]
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return {"to": self.to, "settings": self.settings,
                "rewrites": [dataclasses.asdict(r) for r in self.rewrites],
                "kept": self.kept, "skipped": self.skipped, "notes": self.notes}


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
        return (f"self-check: slope-0 patch {verdict} the original outputs "
                f"(max |Δ| = {self.max_abs_diff:.2g} on {self.samples} {what})")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["passed"] = self.passed
        if not math.isfinite(self.max_abs_diff):
            out["max_abs_diff"] = None
        return out


class SelfCheckError(RuntimeError):
    """The slope-0 patch does not reproduce the original model: a bug in deadrelu, not in the input."""


# -- public API ---------------------------------------------------------------------------------

def patch(model, to: str = LEAKY, *, alpha: float = DEFAULT_ALPHA, alpha_init: float = DEFAULT_ALPHA_INIT,
          prelu_shared_axes: str | None = "channel", only: str | None = None, report=None,
          layers: str | None = None):
    """Returns a copy of `model` whose ReLU sites are LeakyReLU or PReLU, with every weight kept.

    Args:
        model: A Sequential or Functional `keras.Model` (nested sub-models are rewritten inside).
            Subclassed models cannot be rebuilt and raise `UnsupportedModelError`.
        to: "leaky" (`LeakyReLU` with slope `alpha`) or "prelu" (`PReLU` with learnt slopes).
        alpha: Negative slope of the leaky rewrite (default 0.01, Maas et al. 2013).
        alpha_init: Initial PReLU slope (default 0.25, He et al. 2015).
        prelu_shared_axes: "channel" (one alpha per channel: shared over every spatial/time
            axis, as in He et al.) or None (one alpha per element, Keras's default).
        only: "all" (default), "dead" (sites with at least one dead unit) or "flagged" (sites whose
            dead share reached the report's flag threshold); needs `report`.
        report: A `Report` of this model (from `deadrelu.scan` or `Report.from_json`).
        layers: A regular expression; only sites whose path it matches (`re.search`) are rewritten.

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
    return patch_model(model, to, alpha=alpha, alpha_init=alpha_init, prelu_shared_axes=prelu_shared_axes,
                       only=only, report=report, layers=layers).model


def patch_model(model, to: str = LEAKY, *, alpha: float = DEFAULT_ALPHA, alpha_init: float = DEFAULT_ALPHA_INIT,
                prelu_shared_axes: str | None = "channel", only: str | None = None, report=None,
                layers: str | None = None) -> PatchResult:
    """Like `patch`, but returns a `PatchResult`: the model and a summary of every rewrite.

    Example:
        >>> result = patch_model(model, "prelu")
        >>> for rewrite in result.rewrites:
        ...     print(rewrite.path, rewrite.old, "→", rewrite.new)
    """
    to, alpha, alpha_init, prelu_shared_axes, only = _check_options(to, alpha, alpha_init, prelu_shared_axes,
                                                                    only, report)
    _check_model(model)
    site_map = find_sites(model)
    selected, kept, notes = select_sites(site_map, only=only, report=report, layers=layers)
    rewriter = _Rewriter(model, selected, to=to, alpha=alpha, alpha_init=alpha_init,
                         shared_axes=prelu_shared_axes)
    patched = rewriter.run()
    rewrites = []
    for site in selected:
        if site.path in rewriter.skipped:
            continue
        rewrite = rewriter.rewrites[id(site.layer)]
        if report is not None:
            site_report = _report_site(report, site.path)
            rewrite.units, rewrite.dead = site_report.units, len(site_report.dead)
        rewrites.append(rewrite)
    if not selected:
        notes.append("no site selected: the patched model is an unchanged copy")
    for path, reason in rewriter.skipped.items():
        notes.append(f"left {path} as it was: {reason}")
    notes.extend(rewriter.notes)
    settings = {"to": to, "only": only, "layers": layers}
    if to == LEAKY:
        settings["alpha"] = alpha
    else:
        settings.update(alpha_init=alpha_init, prelu_shared_axes=prelu_shared_axes)
    return PatchResult(model=patched, to=to, settings=settings, rewrites=rewrites, kept=kept,
                       skipped=dict(rewriter.skipped), notes=notes)


def patch_self_check(model, data=None, *, to: str = LEAKY, batch_size: int = 256, samples: int | None = 1024,
                     synthetic_samples: int = 256, rescale: float | None = None,
                     tolerance: float = SELF_CHECK_TOLERANCE, **options) -> SelfCheck:
    """Checks that the patch changes nothing but the negative slope.

    Builds the same patch as `patch(model, to, **options)` but with slope 0 (alpha 0 for leaky,
    alpha_init 0 for PReLU), which must compute exactly the original function, and compares the
    outputs of both models in inference mode.

    Args:
        model: The original model.
        data: Inputs (anything `deadrelu.scan` accepts); None uses synthetic inputs.
        to: "leaky" or "prelu".
        batch_size: Samples per step.
        samples: Compare at most this many samples of `data` (None: all).
        synthetic_samples: How many random inputs to use when `data` is None.
        rescale: Multiply inputs by this factor, as for `scan`.
        tolerance: Largest accepted |Δ| (scaled up by the largest |output| when that exceeds 1).
        **options: The other options of `patch` (`prelu_shared_axes`, `only`, `report`, `layers`).

    Returns:
        A `SelfCheck`; `float(check)` is the largest absolute difference.

    Example:
        >>> check = patch_self_check(model, x_test[:256], to="prelu")
        >>> assert check.passed, check.describe()
    """
    import numpy as np

    from deadrelu.data import load_data

    options = {k: v for k, v in options.items() if k not in ("alpha", "alpha_init")}
    zero = patch(model, to, alpha=0.0, alpha_init=0.0, **options)
    if data is None:
        samples = synthetic_samples
    probe_data = load_data(data, model, samples=samples, rescale=rescale, synthetic_samples=synthetic_samples)
    worst, scale, seen = 0.0, 0.0, 0
    for batch in probe_data.batches(batch_size):
        if samples is not None and seen >= samples:
            break
        with warnings.catch_warnings():
            # A model built with `inputs=[x]` warns when called with a bare array; both get the same.
            warnings.filterwarnings("ignore", message=".*structure of `inputs`", category=UserWarning)
            expected = _flat_outputs(model(batch, training=False))
            got = _flat_outputs(zero(batch, training=False))
        for a, b in zip(expected, got):
            if samples is not None and seen + len(a) > samples:  # streams ignore `samples`
                a, b = a[:samples - seen], b[:samples - seen]
            same_nan = np.isnan(a) & np.isnan(b)
            diff = np.where(same_nan, 0.0, np.abs(a.astype(np.float64) - b.astype(np.float64)))
            largest = float(np.max(diff, initial=0.0))
            worst = math.nan if math.isnan(largest) or math.isnan(worst) else max(worst, largest)
            finite = a[np.isfinite(a)]
            scale = max(scale, float(np.max(np.abs(finite), initial=0.0)))
        seen += len(expected[0]) if expected else 0
    return SelfCheck(max_abs_diff=worst, samples=min(seen, samples) if samples else seen,
                     synthetic=probe_data.synthetic, tolerance=tolerance, scale=scale)


def select_sites(site_map: SiteMap, *, only: str | None = None, report=None,
                 layers: str | None = None) -> tuple[list[Site], list[str], list[str]]:
    """Chooses the sites to rewrite.

    Args:
        site_map: The model's sites (`find_sites`).
        only: "all"/None, "dead" or "flagged" (decided from `report`).
        report: A `Report` of the same model.
        layers: A regular expression matched against each site's path with `re.search`.

    Returns:
        `(selected sites, paths of the sites kept as they are, notes)`.

    Raises:
        UsageError: `layers` is not a regular expression or matches no site; `only` needs a
            report; the report does not describe this model.
    """
    sites = list(site_map.sites)
    notes: list[str] = []
    if layers is not None:
        try:
            pattern = re.compile(layers)
        except re.error as exc:
            raise UsageError(f"--layers {layers!r} is not a regular expression ({exc}); "
                             "pass e.g. 'conv' or '^encoder/'") from None
        matched = [site for site in sites if pattern.search(site.path)]
        if sites and not matched:
            raise UsageError(f"--layers {layers!r} matches no site; the sites are: "
                             + ", ".join(site.path for site in sites[:20]) + (" ..." if len(sites) > 20 else ""))
    else:
        matched = sites
    only = only or "all"
    if only != "all":
        if report is None:
            raise UsageError(f"only={only!r} decides from a scan: pass report= (a deadrelu.Report of this model)")
        if only == "dead":
            chosen = [site for site in matched if _report_site(report, site.path).dead]
        else:
            chosen = [site for site in matched if _report_site(report, site.path).flagged]
        if matched and not chosen:
            notes.append(f"no site is {only} in the report: nothing to rewrite")
    else:
        chosen = matched
    chosen_ids = {id(site) for site in chosen}
    kept = [site.path for site in sites if id(site) not in chosen_ids]
    return chosen, kept, notes


# -- checks ---------------------------------------------------------------------------------

def _check_options(to, alpha, alpha_init, shared_axes, only, report):
    to = str(to).lower()
    if to not in TARGETS:
        raise UsageError(f"cannot patch to {to!r}; choose 'leaky' or 'prelu'")
    try:
        alpha, alpha_init = float(alpha), float(alpha_init)
    except (TypeError, ValueError):
        raise UsageError(f"alpha and alpha_init must be numbers (got {alpha!r}, {alpha_init!r})") from None
    if not math.isfinite(alpha) or alpha < 0:
        raise UsageError(f"the leaky slope alpha must be a number ≥ 0 (got {alpha}); 0.01 is the usual choice")
    if not math.isfinite(alpha_init):
        raise UsageError(f"alpha_init must be a finite number (got {alpha_init}); 0.25 is the usual choice")
    if isinstance(shared_axes, str) and shared_axes.lower() == "none":
        shared_axes = None
    if shared_axes not in SHARED_AXES_CHOICES:
        raise UsageError(f"prelu_shared_axes must be 'channel' or None (got {shared_axes!r})")
    only = "all" if only is None else str(only).lower()
    if only not in ONLY_CHOICES:
        raise UsageError(f"only must be 'all', 'dead' or 'flagged' (got {only!r})")
    if only != "all" and report is None:
        raise UsageError(f"only={only!r} decides from a scan: pass report= (a deadrelu.Report of this model)")
    return to, alpha, alpha_init, shared_axes, only


def _check_model(model) -> None:
    import keras

    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"patch needs a Keras 3 model, got {type(model).__module__}.{type(model).__name__}; "
            "load the file with deadrelu.load_model, which converts tf.keras models")
    if not _rebuildable(model):
        raise UnsupportedModelError(_subclassed_message(model))


def _rebuildable(model) -> bool:
    return is_functional(model)


def _subclassed_message(model) -> str:
    return (f"{model.name!r} is a subclassed model ({type(model).__name__}): its call() is Python code, so "
            "deadrelu cannot rebuild it with new activation layers. Build it in code with "
            "activation=keras.layers.LeakyReLU(negative_slope=0.01) (or PReLU layers) and copy the weights "
            "over, or use 'deadrelu scan' / 'deadrelu revive', which work on subclassed models")


def _report_site(report, path: str):
    try:
        return report.site(path)
    except KeyError:
        raise UsageError(f"the report has no site {path!r}: it was made on another model; "
                         "scan this model again (deadrelu scan MODEL --json scan.json)") from None


def _flat_outputs(outputs) -> list:
    import keras
    import numpy as np

    return [np.asarray(keras.ops.convert_to_numpy(o)) for o in keras.tree.flatten(outputs)]


# -- the rewrite ----------------------------------------------------------------------------

class _Rewriter:
    """Rebuilds a model layer by layer, rewriting the selected sites, then copies the weights.

    Functional models go through `keras.models.clone_model` with a `clone_function` (new layers
    from each layer's config) and a `call_function` (the new activation layers after a fused
    layer). `call_function` does not apply to Sequential models, so their layer list is rebuilt
    here. Nested models are rebuilt by the same `clone_function`, so both kinds nest in any order.
    """

    def __init__(self, model, selected: Iterable[Site], *, to: str, alpha: float, alpha_init: float,
                 shared_axes: str | None):
        self.model = model
        self.to, self.alpha, self.alpha_init, self.shared_axes = to, alpha, alpha_init, shared_axes
        selected = list(selected)
        self.sites = {id(site.layer): site for site in selected if site.recurrent is None}
        self.memo: dict[int, object] = {}      # id(old layer) → new layer (keeps sharing intact)
        self.post: dict[int, list] = {}        # id(new layer) → activation layers applied after it
        self.pairs: list[tuple[object, object]] = []  # (old, new) layers whose weights carry over
        self.rewrites: dict[int, Rewrite] = {}
        self.skipped: dict[str, str] = {}
        self.notes: list[str] = []
        self.taken = set(_all_names(model))
        for site in selected:
            if site.recurrent is not None:
                self.skipped[site.path] = (
                    "a SimpleRNN's activation runs inside the recurrence, where no layer can follow it; "
                    "rebuild it with activation=keras.layers.LeakyReLU(negative_slope=0.01) by hand")

    def run(self):
        new = self._clone(self.model)
        for site in self.sites.values():
            if id(site.layer) not in self.rewrites:
                self.skipped[site.path] = self._skip_reason(site)
        self._copy_weights()
        return new

    # Called by clone_model for every layer (and by us for Sequential layers).
    def _clone(self, layer):
        import keras

        key = id(layer)
        if key in self.memo:
            return self.memo[key]
        if isinstance(layer, keras.Model):
            if not _rebuildable(layer):
                if any(_contains(layer, site.layer) for site in self.sites.values()):
                    raise UnsupportedModelError(_subclassed_message(layer).replace(
                        "is a subclassed model", "(a sub-model) is a subclassed model", 1))
                new = self._plain_clone(layer)
            elif isinstance(layer, keras.Sequential):
                new = self._sequential(layer)
            else:
                new = self._functional(layer)
        elif key in self.sites:
            new = self._rewrite(layer, self.sites[key])
        else:
            new = self._plain_clone(layer)
        self.memo[key] = new
        return new

    def _call(self, layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        for extra in self.post.get(id(layer), ()):
            outputs = extra(outputs)
        return outputs

    def _functional(self, model):
        import keras

        # Our own Input tensors: clone_model would name them after the tensors ("keras_tensor_3")
        # instead of after the input layers.
        inputs = keras.tree.map_structure(
            lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype, name=_input_name(x)), model.input)
        new = keras.models.clone_model(model, input_tensors=inputs, clone_function=self._clone,
                                       call_function=self._call)
        new.trainable = model.trainable
        return new

    def _sequential(self, model):
        import keras

        new_layers = []
        for layer in model.layers:
            new = self._clone(layer)
            new_layers.append(new)
            new_layers.extend(self.post.get(id(new), ()))
        first = next(iter(sequential_layers(model)), None)
        if isinstance(first, keras.layers.InputLayer):
            new_layers.insert(0, keras.Input(batch_shape=first.batch_shape, dtype=declared_dtype(first),
                                             name=first.name))
        new = keras.Sequential(new_layers, name=model.name, trainable=model.trainable)
        if model.compiled:
            try:
                new.compile_from_config(model.get_compile_config())
            except Exception as exc:  # noqa: BLE001 - compiling is a courtesy, the weights are what matter
                self.notes.append(f"could not carry over the compile settings of {model.name!r} ({exc}); "
                                  "compile the patched model before training it")
        return new

    def _plain_clone(self, layer):
        try:
            new = layer.__class__.from_config(layer.get_config())
        except Exception as exc:  # noqa: BLE001 - custom layers without a working get_config
            raise UnsupportedModelError(
                f"cannot rebuild layer {layer.name!r} ({type(layer).__name__}) from its config ({exc}); "
                "give it a get_config() that returns its constructor arguments") from exc
        self.pairs.append((layer, new))
        return new

    def _rewrite(self, layer, site: Site):
        """The new layer taking `layer`'s place; its trailing activation layers go to `self.post`."""
        if site.kind == KIND_FUSED:
            config = layer.get_config()
            config["activation"] = "linear"
            new = layer.__class__.from_config(config)
            self.pairs.append((layer, new))
            chain = self._chain(layer, site, keep_name=False)
            self.post[id(new)] = chain
            old = f"{site.layer_class}(activation={site.activation!r})"
            new_text = f"{site.layer_class}(activation='linear') → " + " → ".join(self._describe(c) for c in chain)
        else:
            chain = self._chain(layer, site, keep_name=True)
            new, self.post[id(chain[0])] = chain[0], chain[1:]
            old = (f"Activation({site.activation!r})" if site.kind == KIND_ACTIVATION
                   else f"ReLU({_relu_args(site.max_value, None, site.threshold)})")
            new_text = " → ".join(self._describe(c) for c in chain)
        self.rewrites[id(layer)] = Rewrite(path=site.path, kind=site.kind, layer=site.layer_class, old=old,
                                           new=new_text, new_layers=[c.name for c in chain])
        return new

    def _chain(self, layer, site: Site, *, keep_name: bool) -> list:
        """The built-in activation layers equivalent to the site with a negative slope."""
        import keras

        cap, threshold = site.max_value, site.threshold
        plain = cap is None and not threshold
        common = {"dtype": layer.dtype_policy, "trainable": layer.trainable}
        name = layer.name if keep_name else self._unique(f"{layer.name}_{self.to}")
        if self.to == LEAKY:
            if plain:
                return [keras.layers.LeakyReLU(negative_slope=self.alpha, name=name, **common)]
            return [keras.layers.ReLU(max_value=cap, negative_slope=self.alpha, threshold=threshold, name=name,
                                      **common)]
        prelu = keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(self.alpha_init),
                                   shared_axes=self._shared_axes(layer, site), name=name, **common)
        if plain:
            return [prelu]
        # Identity below the threshold (shifted by it), the site's cap above: PReLU then scales
        # only what lies below the threshold. See the module docstring.
        clip = keras.layers.ReLU(max_value=cap, negative_slope=1.0, threshold=threshold,
                                 name=self._unique(f"{layer.name}_clip"), **common)
        return [clip, prelu]

    def _shared_axes(self, layer, site: Site) -> list[int] | None:
        shape = _output_shape(layer)
        if self.shared_axes is None:
            if any(dim is None for dim in shape[1:]):
                raise UsageError(
                    f"one PReLU alpha per element needs a fixed output shape, but {site.path!r} outputs "
                    f"{tuple(shape)}; use prelu_shared_axes='channel' (--prelu-shared-axes channel)")
            return None
        rank = len(shape)
        channel = rank - 1 if site.channel_axis == -1 else site.channel_axis
        axes = [axis for axis in range(1, rank) if axis != channel]
        return axes or None

    def _describe(self, layer) -> str:
        return _describe(layer, self.shared_axes)

    def _unique(self, name: str) -> str:
        candidate, n = name, 1
        while candidate in self.taken:
            candidate, n = f"{name}_{n}", n + 1
        self.taken.add(candidate)
        return candidate

    def _skip_reason(self, site: Site) -> str:
        holder = site.path.rsplit("/", 2)[-2] if "/" in site.path else self.model.name
        return (f"it sits inside {holder!r}, a layer that is not a Sequential or Functional model, "
                "so its activation cannot be followed by a new layer")

    def _copy_weights(self) -> None:
        """Copies every weight from the old layers to their new twins, matched by variable name."""
        copied = set()
        for old, new in self.pairs:
            old_weights, new_weights = old.weights, new.weights
            if len(old_weights) != len(new_weights):
                raise RuntimeError(f"layer {old.name!r} has {len(old_weights)} weights but its rebuilt copy "
                                   f"{len(new_weights)}")
            old_names = [w.name for w in old_weights]
            if len(set(old_names)) == len(old_names) and sorted(old_names) == sorted(w.name for w in new_weights):
                by_name = {w.name: w for w in new_weights}
                targets = [by_name[name] for name in old_names]
            else:  # names repeat inside the layer (wrappers): same class, same config, same order
                targets = new_weights
            for source, target in zip(old_weights, targets):
                if tuple(source.shape) != tuple(target.shape):
                    raise RuntimeError(f"weight {source.path} has shape {source.shape} but its copy {target.shape}")
                target.assign(source.numpy())
                copied.add(id(source))
        missing = [w.path for w in self.model.weights if id(w) not in copied]
        if missing:
            raise RuntimeError(f"{len(missing)} weights were not carried over, e.g. {missing[:3]}")


# -- helpers --------------------------------------------------------------------------------

def _all_names(model) -> Iterable[str]:
    """Every layer name in the model, nested ones included (new names must not collide)."""
    stack, seen = [model], set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer.name
        stack.extend(sequential_layers(layer))
        stack.extend(child_layers(layer))


def _input_name(tensor) -> str | None:
    history = keras_history(tensor)
    return getattr(history.operation, "name", None) if history is not None else None


def _contains(container, layer) -> bool:
    return any(child is layer for child in child_layers(container, recursive=True))


def _output_shape(layer) -> tuple:
    """Shape (batch axis included) of the layer's output in the original graph."""
    try:
        return first_call_output_shape(layer)
    except (AttributeError, IndexError):
        pass
    try:
        return tuple(layer.output.shape)
    except Exception:  # noqa: BLE001 - a layer never called
        raise UnsupportedModelError(
            f"layer {layer.name!r} has never been called, so its output shape is unknown; build the model "
            "(call it on an input, or give it an Input) before patching it") from None


def _relu_args(cap, slope, threshold) -> str:
    parts = []
    if cap is not None:
        parts.append(f"max_value={cap:g}")
    if slope is not None:
        parts.append(f"negative_slope={slope:g}")
    if threshold:
        parts.append(f"threshold={threshold:g}")
    return ", ".join(parts)


def _describe(layer, shared_axes: str | None) -> str:
    """A short description of a new activation layer, e.g. "PReLU(alpha_init=0.25, per channel) 'x_prelu'"."""
    import keras

    if isinstance(layer, keras.layers.PReLU):
        init = getattr(layer.alpha_initializer, "value", None)
        per = "per channel" if shared_axes == "channel" else "per element"
        text = f"PReLU(alpha_init={init:g}, {per})" if init is not None else f"PReLU({per})"
    elif isinstance(layer, keras.layers.LeakyReLU):
        text = f"LeakyReLU(negative_slope={layer.negative_slope:g})"
    else:
        text = f"ReLU({_relu_args(layer.max_value, layer.negative_slope, layer.threshold)})"
    return f"{text} {layer.name!r}"

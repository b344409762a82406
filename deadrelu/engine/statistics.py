"""What a probe's pass measured: per-unit statistics of every site, and per-layer weight gradients.

The step adds each batch's numbers into `deadrelu.engine.reductions.Totals` (raw counts, sums and
maxima, O(units)); once the pass is over, this module turns those totals into the results every
caller reads:

- `SiteStatistics`: one site's raw sums, with the rates (`active_rate`, `dormancy`, ...) and the
  pre-activation statistics (`margin`, `preact_mean`, `preact_std`, `preact_min`) derived from
  them; `site_statistics` builds them from the totals, in the probe's site order;
- `LayerGradient`: the weight-gradient magnitude of one layer (with gradients); `WeightGroup` /
  `weight_groups` say which weights each layer owns (a container's exclude its sublayers');
- `non_finite_weights`: which layers, and which units of each site, hold NaN or ±inf weights
  (`deadrelu.engine.non_finite`);
- `ProbeResult`: all of it, for one pass.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence, Set

import numpy as np

from deadrelu.engine.dormancy import dormancy_scores
from deadrelu.engine.non_finite import non_finite_layers, owners, unit_mask
from deadrelu.engine.sites import Site, children
from deadrelu.fixes.graph import LayerGraph


@dataclasses.dataclass
class SiteStatistics:
    """Accumulated statistics of one site (raw sums; rates are derived properties).

    Attributes:
        site: The site measured.
        calls: How many times the site runs per forward pass (2 for a sub-model used twice).
        positions: Non-batch, non-channel positions per call (1 for Dense).
        samples: Sample-calls observed (samples × calls).
        fires: Per unit, (sample, position) pairs with a finite non-zero output.
        sample_fires: Per unit, sample-calls in which the unit fired at least once.
        sum_abs: Per unit, sum of the finite |output|.
        max_output: Per unit, the largest finite output seen.
        saturated: Per unit, pairs at the cap (capped sites only).
        grad_abs_sum: Per unit, sum of |∂ℓₙ/∂z| (with gradients only).
        grad_zero: Per unit, pairs whose gradient is zero or not finite (with gradients only).
        non_finite: Per unit, pairs whose output is NaN or ±inf (read as zero by the statistics
            above). None when not measured.
        non_finite_weights: Per unit, whether its own weights hold NaN or ±inf
            (`deadrelu.engine.non_finite`); None when no weight the site's units own does.
        pre_max, pre_min: Per unit, the largest and smallest pre-activation z seen (what the
            nonlinearity was applied to; NaN and ±inf read as 0). None when not measured: the
            site was not reached, or its z cannot be observed.
        pre_sum, pre_sumsq: Per unit, the sums of z and z² (float64); None with `pre_max`.
    """

    site: Site
    calls: int
    positions: int
    samples: int
    fires: np.ndarray
    sample_fires: np.ndarray
    sum_abs: np.ndarray
    max_output: np.ndarray
    saturated: np.ndarray | None = None
    grad_abs_sum: np.ndarray | None = None
    grad_zero: np.ndarray | None = None
    non_finite: np.ndarray | None = None
    non_finite_weights: np.ndarray | None = None
    pre_max: np.ndarray | None = None
    pre_min: np.ndarray | None = None
    pre_sum: np.ndarray | None = None
    pre_sumsq: np.ndarray | None = None

    @property
    def units(self) -> int:
        return int(self.fires.shape[0])

    @property
    def observations(self) -> int:
        """(sample, position) pairs per unit."""
        return self.samples * self.positions

    @property
    def active_rate(self) -> np.ndarray:
        return self.fires / max(self.observations, 1)

    @property
    def sample_active_rate(self) -> np.ndarray:
        return self.sample_fires / max(self.samples, 1)

    @property
    def mean_abs(self) -> np.ndarray:
        return self.sum_abs / max(self.observations, 1)

    @property
    def dormancy(self) -> np.ndarray:
        """ReDo score: each unit's mean |output| relative to the site's average unit
        (`deadrelu.engine.dormancy.dormancy_scores`)."""
        return dormancy_scores(self.mean_abs)

    @property
    def saturated_rate(self) -> np.ndarray | None:
        return None if self.saturated is None else self.saturated / max(self.observations, 1)

    @property
    def grad_mean_abs(self) -> np.ndarray | None:
        return None if self.grad_abs_sum is None else self.grad_abs_sum / max(self.observations, 1)

    @property
    def grad_zero_rate(self) -> np.ndarray | None:
        return None if self.grad_zero is None else self.grad_zero / max(self.observations, 1)

    @property
    def margin(self) -> np.ndarray | None:
        """Per unit, the largest pre-activation relative to the site's threshold: max(z) − threshold
        (≤ 0 for a dead unit); None when z was not measured."""
        if self.pre_max is None:
            return None
        return np.asarray(self.pre_max, np.float64) - float(self.site.threshold)

    @property
    def preact_min(self) -> np.ndarray | None:
        """Per unit, the smallest pre-activation; None when z was not measured."""
        return None if self.pre_min is None else np.asarray(self.pre_min, np.float64)

    @property
    def preact_mean(self) -> np.ndarray | None:
        """Per unit, the mean pre-activation over (sample, position) pairs; None when z was not measured."""
        if self.pre_sum is None:
            return None
        return np.asarray(self.pre_sum, np.float64) / max(self.observations, 1)

    @property
    def preact_std(self) -> np.ndarray | None:
        """Per unit, the standard deviation of the pre-activation over (sample, position) pairs
        (population: sqrt(max(0, E[z²] − E[z]²))); exactly 0.0 for a unit whose z never varied
        (`pre_max == pre_min`); None when z was not measured."""
        if self.pre_sum is None or self.pre_sumsq is None:
            return None
        mean = self.preact_mean
        variance = np.asarray(self.pre_sumsq, np.float64) / max(self.observations, 1) - mean * mean
        std = np.sqrt(np.maximum(variance, 0.0))
        return np.where(np.asarray(self.pre_max) == np.asarray(self.pre_min), 0.0, std)


@dataclasses.dataclass
class LayerGradient:
    """Weight-gradient magnitude of one layer, over the whole data.

    `grad_norm` is the L2 norm of the gradient of the mean per-sample loss with respect to the
    layer's trainable weights; `ratio` is `grad_norm / weight_norm` (the relative step size of
    plain SGD at learning rate 1).
    """

    path: str
    layer_class: str
    params: int
    grad_norm: float
    weight_norm: float

    @property
    def ratio(self) -> float:
        return self.grad_norm / self.weight_norm if self.weight_norm > 0 else float("inf")


@dataclasses.dataclass
class ProbeResult:
    """Everything one pass of the probe measured.

    Attributes:
        sites: Statistics per site, in model order (op-level sites after the layer-level ones).
        samples: Samples streamed through the model.
        others: Activations that are not sites (listed, not measured).
        layer_gradients: Per layer with trainable weights (with gradients only).
        mean_loss: Mean per-sample loss (with gradients only).
        notes: One-line remarks, e.g. ReLUs that ran but no site covers.
        non_finite_layers: The layers whose weights hold NaN or ±inf, in model order
            (`deadrelu.engine.non_finite.NonFiniteLayer`).
    """

    sites: list[SiteStatistics]
    samples: int
    others: list
    layer_gradients: list[LayerGradient] | None = None
    mean_loss: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    non_finite_layers: list = dataclasses.field(default_factory=list)


def site_statistics(
    sites: Sequence[Site],
    layout: Sequence[tuple[int, int, int]],
    sums: Sequence[dict],
    samples: int,
    *,
    skip: Mapping[int, object],
    op_calls: Mapping[int, int],
    non_finite_units: Mapping[int, np.ndarray],
    no_preact: Set[int] = frozenset(),
) -> list[SiteStatistics]:
    """The statistics of every measured site, from the totals of one pass.

    Args:
        sites: Every site the probe knows, in its order (layer-level, then op-level).
        layout: Per site, `(calls, positions, units)` as the eager pass found them.
        sums: Per site, its totals (`deadrelu.engine.reductions.Totals.read()["sites"]`).
        samples: Samples streamed through the model.
        skip: Site indices not measured (op-level sites the trace could not measure).
        op_calls: Per op-level site index, its calls per forward pass as the trace counted them
            (an op-level site's eager count may differ: a loop run eagerly).
        non_finite_units: Per site index, its units whose own weights hold NaN or ±inf.
        no_preact: Site indices recorded without their pre-activation (its statistics are None).

    Returns:
        The `SiteStatistics` of every site not in `skip`, in order.
    """
    stats = []
    for site, (calls, positions, _), totals in zip(sites, layout, sums):
        if site.index in skip:
            continue
        if site.op_level:
            calls = op_calls.get(site.index, 0)
        measured = calls > 0 and site.index not in no_preact
        preact = {name: totals[name] if measured else None for name in ("pre_max", "pre_min", "pre_sum", "pre_sumsq")}
        stats.append(
            SiteStatistics(
                site=site,
                calls=calls,
                positions=positions,
                samples=samples * calls,
                fires=totals["fires"],
                sample_fires=totals["sample_fires"],
                sum_abs=totals["sum_abs"],
                max_output=totals["max"],
                saturated=totals.get("saturated"),
                grad_abs_sum=totals.get("grad_abs"),
                grad_zero=totals.get("grad_zero"),
                non_finite=totals["non_finite"],
                non_finite_weights=non_finite_units.get(site.index),
                **preact,
            )
        )
    return stats


def layer_gradients(groups: Sequence[WeightGroup], weight_sums: Sequence[list], samples: int) -> list[LayerGradient]:
    """Per weight group, the norm of the mean per-sample gradient and of the weights.

    Args:
        groups: The probe's weight groups (`weight_groups(model)`).
        weight_sums: Per group, the summed gradient of each of its variables over the pass.
        samples: Samples streamed through the model (the sums are divided by it).

    Returns:
        One `LayerGradient` per group, in order.
    """
    return [
        LayerGradient(
            path=group.path,
            layer_class=group.layer_class,
            params=int(sum(int(np.prod(v.shape)) for v in group.variables)),
            grad_norm=float(np.sqrt(sum(np.sum((g / samples) ** 2) for g in grads))),
            weight_norm=float(
                np.sqrt(sum(np.sum(np.square(keras_numpy(v), dtype=np.float64)) for v in group.variables))
            ),
        )
        for group, grads in zip(groups, weight_sums)
    ]


def non_finite_weights(
    model, sites: Sequence[Site], layout: Sequence[tuple[int, int, int]]
) -> tuple[list, dict[int, np.ndarray]]:
    """The layers whose weights hold NaN or ±inf, and per site index its units whose own weights do.

    A healthy model costs one `isfinite` over its weights; the owners of the units (and the
    layer graph, for `Activation` and `ReLU` layers) are looked up only when a weight is not finite.

    Args:
        model: The probed `keras.Model`.
        sites: Every site measured, with `layout`, per site `(calls, positions, units)`.

    Returns:
        `(layers, units_of)`: the `deadrelu.engine.non_finite.NonFiniteLayer`s in model order, and per
        site index a boolean mask over its units (only sites with such units).
    """
    layers, bad = non_finite_layers(weight_groups(model, trainable=False), keras_numpy)
    units_of: dict[int, np.ndarray] = {}
    if not bad:
        return layers, units_of
    graph = functools.cache(lambda: LayerGraph.build(model))
    for site, (_, _, units) in zip(sites, layout):
        owned = [layer for layer in owners(site, graph) if id(layer) in bad]
        if owned:
            units_of[site.index] = np.logical_or.reduce([unit_mask(layer, units, keras_numpy) for layer in owned])
    return layers, units_of


# -- weights -------------------------------------------------------------------------------


@dataclasses.dataclass
class WeightGroup:
    """One layer's own weights (a container's exclude its sublayers'), measured as one `LayerGradient`.

    Attributes:
        path: The layer's path in the model ("block/conv").
        layer_class: Its class name.
        variables: Its own weights.
        layer: The layer.
    """

    path: str
    layer_class: str
    variables: list
    layer: object = None


def weight_groups(model, *, trainable: bool = True) -> list[WeightGroup]:
    """Layers with weights of their own, in model order, with their paths.

    Args:
        model: A `keras.Model`.
        trainable: Only trainable weights (what the gradients are taken of). Defaults to True;
            False lists every weight (BatchNormalization's moving statistics too).

    Returns:
        One `WeightGroup` per layer that owns weights.
    """
    groups: list[WeightGroup] = []
    seen: set[int] = set()

    def visit(layer, prefix: str) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        path = f"{prefix}{layer.name}"
        sublayers = children(layer)

        def weights(of) -> list:
            return of.trainable_weights if trainable else of.weights

        if sublayers:
            for child in sublayers:
                visit(child, f"{path}/")
            own = [v for v in weights(layer) if not any(v is w for child in sublayers for w in weights(child))]
        else:
            own = list(weights(layer))
        if own:
            groups.append(WeightGroup(path, type(layer).__name__, own, layer))

    for layer in children(model):
        visit(layer, "")
    return groups


def keras_numpy(variable) -> np.ndarray:
    """A Keras variable's value as a numpy array, on any backend."""
    from keras import ops

    return ops.convert_to_numpy(variable)

"""The cause of every dead unit, with its evidence: the rules of docs/fixing.md#why-units-die.

Each dead unit of a site gets one kind, the first that matches, in this order (`KINDS`):

1. **starved** — its pre-activation z does not vary over the data: `pre_max == pre_min`, equal up
   to float32 rounding (`|pre_max − pre_min| ≤ STARVED_RTOL × max(|pre_max|, |pre_min|)`), where
   `pre_max = margin + threshold` and `pre_min = preact_min`. Everything it reads is dead,
   constant or zero, so it sits at its bias. Evidence: the constant z (median over the site's
   starved units) and the upstream sites feeding the site's producer through layers without an
   activation of their own, with their dead counts (`upstream_sites`).
2. **output_relu** — the site's output is a model output (a ReLU on the head), also through
   nested models. Evidence: the output's name.
3. **born_dead** — a site rule: the site's dead fraction at initialisation, the mean over the
   seeds of the baseline (`deadrelu.diagnosis.baseline`), is at least `BORN_DEAD_SHARE` (0.5) ×
   its dead fraction now. Evidence: that mean, its min and max over the seeds, the dead fraction
   now and the seeds.
4. **killed_in_training** — alive at initialisation (the site is not born dead) and its margin
   is below `−KILLED_MARGIN × spread` (0.1 × the spread): far below the data, beyond what more
   data would reach. Evidence: the medians of the dead and of the live units' bias and
   incoming-weight norm in the producing Dense/Conv (`producer_of`).
5. **data_dependent** — the rest: margin ≥ −0.1 × spread, a unit that may fire on data the scan
   did not see (and a unit whose z could not be observed: margin None). Evidence: each such
   unit's margin in units of the spread, and the spread.

The **spread** of a site is its pooled pre-activation standard deviation over its units: the root
mean square of the units' `preact_std` (non-finite units and units without a value left out),
`sqrt(mean_u preact_std_u²)` — the typical within-unit variation of z over the data.

Units with NaN or ±inf are never dead (their own verdict, `non_finite`), so they get no cause.
"""

from __future__ import annotations

import math

import numpy as np

KINDS = ("starved", "output_relu", "born_dead", "killed_in_training", "data_dependent")
STARVED_RTOL = 1e-6
BORN_DEAD_SHARE = 0.5
KILLED_MARGIN = 0.1
_MAX_WALK = 10_000  # nodes visited walking upstream, at most (a guard, far above real models)


def unit_values(site, name: str) -> np.ndarray | None:
    """A per-unit statistic of a `SiteReport` as float64, NaN where a unit has none; None when absent."""
    values = getattr(site, name, None)
    if values is None:
        return None
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def spread(site) -> float | None:
    """The site's pooled pre-activation standard deviation (see the module docstring), or None."""
    std = unit_values(site, "preact_std")
    if std is None:
        return None
    keep = np.isfinite(std)
    keep[list(site.non_finite)] = False
    if not keep.any():
        return None
    return float(math.sqrt(float(np.mean(std[keep] ** 2))))


def starved_units(site) -> np.ndarray:
    """Per unit: whether its pre-activation did not vary over the data (`pre_max == pre_min`)."""
    margin, low = unit_values(site, "margin"), unit_values(site, "preact_min")
    if margin is None or low is None:
        return np.zeros(site.units, bool)
    high = margin + float(site.params.get("threshold", 0.0) or 0.0)
    with np.errstate(invalid="ignore"):
        return np.abs(high - low) <= STARVED_RTOL * np.maximum(np.abs(high), np.abs(low))


class ModelContext:
    """What the rules ask of the model: its flat graph, its sites' layers, who produces what."""

    def __init__(self, model, report):
        from deadrelu._keras_compat import child_layers
        from deadrelu.engine.sites import find_sites

        self.model = model
        self.report = report
        self.site_map = find_sites(model)
        self.sites = {site.path: site for site in self.site_map.sites}
        layers = {id(layer): layer for layer in [model] + child_layers(model, recursive=True)}
        self.layers = {path: layers[key] for key, path in self.site_map.layer_paths.items() if key in layers}
        self._graph = None
        # Layers that apply a site, by id: where a walk upstream stops (layer-level and op-level
        # sites applied as the layer's own activation).
        self.site_of_layer: dict[int, str] = {}
        for site in report.sites:
            layer = self.layer_of(site)
            if layer is not None and (site.path in self.sites or site.params.get("applied_in") == "activation"):
                self.site_of_layer.setdefault(id(layer), site.path)

    @property
    def graph(self):
        if self._graph is None:
            from deadrelu.fixes.graph import LayerGraph

            self._graph = LayerGraph.build(self.model)
        return self._graph

    def layer_of(self, site):
        """The layer applying a report site: its own for layer-level sites, the `call`'s for op-level ones."""
        known = self.sites.get(site.path)
        if known is not None:
            return known.layer
        return self.layers.get(site.path.rsplit(":", 1)[0])

    def output_of(self, site) -> str | None:
        """The name of the model output the site's output is, or None."""
        layer = self.layer_of(site)
        if layer is None or (site.path not in self.sites and site.params.get("applied_in") != "activation"):
            return None
        graph = self.graph
        if graph.problem is not None and not graph.nodes:
            return None
        names = list(getattr(self.model, "output_names", None) or [])
        for node in graph.nodes_of.get(id(layer), []):
            for key in node.outputs:
                if key in graph.outputs:
                    index = graph.outputs.index(key)
                    return names[index] if index < len(names) else layer.name
        return None

    def upstream_sites(self, site) -> list[dict]:
        """The sites whose outputs reach this site's producer through layers without an activation.

        Walks the flat graph (`deadrelu.fixes.graph.LayerGraph`) up from the inputs of the
        layer applying the site, through every layer with no activation of its own (Dense/Conv
        with a linear activation, BatchNormalization, pooling, Flatten, Dropout, Add,
        Concatenate, ...), stopping at each site's layer (recorded), at a layer with another
        activation, and at the model inputs.

        Returns:
            `[{"path", "dead", "units"}]`, in the order found.
        """
        from deadrelu.fixes.graph import is_linear

        layer = self.layer_of(site)
        graph = self.graph
        if layer is None or not graph.nodes:
            return []
        frontier = [key for node in graph.nodes_of.get(id(layer), []) for key in node.inputs]
        seen_keys: set = set()
        found: list[str] = []
        while frontier and len(seen_keys) < _MAX_WALK:
            key = frontier.pop(0)
            if key in seen_keys:
                continue
            seen_keys.add(key)
            node = graph.producer.get(key)
            if node is None:
                continue  # a model input
            path = self.site_of_layer.get(id(node.layer))
            if path is not None and path != site.path:
                if path not in found:
                    found.append(path)
                continue
            if is_linear(node.layer):
                frontier.extend(node.inputs)
        by_path = {s.path: s for s in self.report.sites}
        return [{"path": p, "dead": len(by_path[p].dead), "units": by_path[p].units} for p in found if p in by_path]

    def producer_of(self, site):
        """The Dense/Conv whose kernel columns are the site's units' incoming weights, or None.

        As `deadrelu.engine.non_finite.owners` finds them: the site's own layer for a fused
        activation (and an op-level ReLU that is a layer's own activation), the Dense/Conv feeding
        an `Activation`/`ReLU` layer (`LayerGraph.find_owner`), the sublayer whose output an
        op-level ReLU takes.
        """
        from deadrelu.engine.sites import KIND_FUSED
        from deadrelu.fixes.graph import UnitTarget, weighted_kind

        known = self.sites.get(site.path)
        if known is None:
            applied = site.params.get("applied_in")
            layer = self.layers.get(site.path.rsplit(":", 1)[0]) if applied == "activation" else None
            if layer is None and site.params.get("fed_by"):
                layer = self.layers.get(site.params["fed_by"])
            return layer if layer is not None and weighted_kind(layer) is not None else None
        if known.kind == KIND_FUSED:
            return known.layer if weighted_kind(known.layer) is not None else None
        target = UnitTarget(site=known, units=np.arange(0), live=np.arange(0))
        if self.graph.find_owner(target) is not None:
            return None
        return target.producer


def weight_evidence(layer, dead: list[int], live: list[int]) -> dict:
    """Medians of the dead and of the live units' bias and incoming-weight norm in `layer`.

    Args:
        layer: The producing Dense/Conv (`ModelContext.producer_of`), or None.
        dead: The dead units.
        live: The units neither dead nor non-finite.

    Returns:
        The `killed_in_training` evidence: `dead_bias_median`, `live_bias_median`,
        `dead_weight_norm_median`, `live_weight_norm_median` (None where there is no such unit,
        bias or layer).
    """
    import keras

    from deadrelu.fixes.edits import kernel_of, unit_index
    from deadrelu.fixes.graph import weighted_kind

    out = dict.fromkeys(("dead_bias_median", "live_bias_median", "dead_weight_norm_median", "live_weight_norm_median"))
    if layer is None:
        return out
    kind = weighted_kind(layer)
    kernel = keras.ops.convert_to_numpy(kernel_of(kind, layer)[0])
    bias = getattr(layer, "bias", None) if getattr(layer, "use_bias", True) else None
    bias = None if bias is None else keras.ops.convert_to_numpy(bias)

    def median(values: list[float]) -> float | None:
        return float(np.median(values)) if values else None

    for name, units in (("dead", dead), ("live", live)):
        norms = [float(np.linalg.norm(kernel[unit_index(kind, layer, int(u))])) for u in units]
        out[f"{name}_weight_norm_median"] = median(norms)
        if bias is not None and bias.ndim == 1:
            out[f"{name}_bias_median"] = median([float(bias[int(u)]) for u in units if int(u) < bias.shape[0]])
    return out


def site_causes(site, context: ModelContext, baseline) -> tuple[list[str], dict[str, int], dict[str, dict]]:
    """The causes of one site's dead units (see the module docstring).

    Args:
        site: A `SiteReport`.
        context: The model's `ModelContext`.
        baseline: The `InitBaseline`, or None when it could not be measured (nothing is then
            born dead).

    Returns:
        `(dead_causes, causes, cause_evidence)` for the site.
    """
    if not site.dead:
        return [], {}, {}
    dead = np.asarray(site.dead, dtype=np.int64)
    margin = unit_values(site, "margin")
    site_spread = spread(site)
    kinds = np.full(len(dead), "", dtype=object)

    starved = starved_units(site)[dead]
    kinds[starved] = "starved"
    output = context.output_of(site)
    if output is not None:
        kinds[kinds == ""] = "output_relu"
    init = baseline.dead_fraction.get(site.path) if baseline is not None else None
    now = site.dead_fraction
    # Compared on the baseline's own samples: fewer samples leave more units silent on both sides.
    now_there = baseline.trained_dead_fraction.get(site.path, now) if baseline is not None else now
    born = bool(init) and float(np.mean(init)) >= BORN_DEAD_SHARE * now_there
    if born:
        kinds[kinds == ""] = "born_dead"
    if margin is not None and site_spread is not None:
        with np.errstate(invalid="ignore"):
            killed = (kinds == "") & (margin[dead] < -KILLED_MARGIN * site_spread)
        kinds[killed] = "killed_in_training"
    kinds[kinds == ""] = "data_dependent"

    dead_causes = [str(k) for k in kinds]
    causes = {kind: int(np.sum(kinds == kind)) for kind in KINDS if np.any(kinds == kind)}
    evidence: dict[str, dict] = {}
    if "starved" in causes:
        value = margin[dead][starved] + float(site.params.get("threshold", 0.0) or 0.0)
        evidence["starved"] = {"preact_value": float(np.median(value)), "upstream": context.upstream_sites(site)}
    if "output_relu" in causes:
        evidence["output_relu"] = {"output": output}
    if "born_dead" in causes:
        evidence["born_dead"] = {
            "init_dead_fraction_mean": float(np.mean(init)),
            "init_dead_fraction_min": float(np.min(init)),
            "init_dead_fraction_max": float(np.max(init)),
            "dead_fraction_now": float(now),
            "dead_fraction_now_on_baseline_samples": float(now_there),
            "seeds": list(baseline.seeds),
        }
    if "killed_in_training" in causes:
        gone = set(site.dead) | set(site.non_finite)
        live = [u for u in range(site.units) if u not in gone]
        killed = [int(u) for u, k in zip(dead, kinds) if k == "killed_in_training"]
        evidence["killed_in_training"] = weight_evidence(context.producer_of(site), killed, live)
    if "data_dependent" in causes:
        chosen = dead[kinds == "data_dependent"]
        evidence["data_dependent"] = {
            "margin_in_spread": [_in_spread(margin, int(u), site_spread) for u in chosen],
            "spread": site_spread,
        }
    return dead_causes, causes, evidence


def _in_spread(margin: np.ndarray | None, unit: int, site_spread: float | None) -> float | None:
    if margin is None or not site_spread or not math.isfinite(margin[unit]):
        return None  # z not observed, or a site whose z never varies: no scale to measure it in
    return float(margin[unit] / site_spread)


def assign_causes(report, model, baseline) -> None:
    """Fills every site's `dead_causes`, `causes` and `cause_evidence` (see `site_causes`).

    Args:
        report: The `Report` of the scan (changed in place).
        model: The scanned `keras.Model`.
        baseline: Its `InitBaseline`, or None.
    """
    context = ModelContext(model, report)
    for site in report.sites:
        site.dead_causes, site.causes, site.cause_evidence = site_causes(site, context, baseline)

"""Probe statistics → verdicts per unit and per site → the JSON report of docs/report-format.md."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from deadrelu.engine.dormancy import dormant_units
from deadrelu.errors import DataError

SCHEMA = "deadrelu/report@1"

NON_FINITE, DEAD, SATURATED, DYING, HEALTHY = "non_finite", "dead", "saturated", "dying", "healthy"


@dataclasses.dataclass
class Thresholds:
    """Where the verdicts are drawn (recorded in the report's settings).

    A unit whose outputs or own weights are NaN or ±inf is non-finite, and a unit that never fires
    on the data is dead, whatever the thresholds; they place the other verdicts.

    Args:
        dying: A live unit firing on fewer than this share of (sample, position) pairs is dying.
            Defaults to `0.01`.
        flag: A site whose dead share is at least this is flagged. Defaults to `0.10`.
        saturated: A capped unit (ReLU6, `max_value`) at its cap on at least this share of pairs
            is saturated. Defaults to `0.99`.
        dormant: ReDo's τ: with a number, each site also lists its τ-dormant units
            (`deadrelu.engine.dormancy.dormant_units`). Defaults to `None` (not listed).

    Example:

    ```python
    report = deadrelu.scan(model, x, flag_threshold=0.25)   # scan builds its Thresholds
    Thresholds(dying=0.05)                                  # dying below 5%, other defaults
    ```
    """

    dying: float = 0.01
    flag: float = 0.10
    saturated: float = 0.99
    dormant: float | None = None


_UNIT_ARRAYS = ("active_rate", "sample_active_rate", "mean_abs", "dormancy", "max_output")
_OPTIONAL_ARRAYS = ("saturated_rate", "grad_mean_abs", "grad_zero_rate")
_CAUSE_FIELDS = ("dead_causes", "causes", "cause_evidence")  # filled by `scan(..., why=True)`
# Per unit, from the pre-activation z; in the JSON always present, one entry per unit, null where
# not measured (an unreached site, a z that cannot be observed).
_PREACT_ARRAYS = ("margin", "preact_mean", "preact_std", "preact_min")


@dataclasses.dataclass(repr=False)
class SiteReport:
    """Verdicts and per-unit statistics of one site (a place where a ReLU-family activation runs).

    Built by the scan (`site_report`) or read back with `from_dict`; not usually made by hand.
    Unit indices count along the site's channel axis. Per-unit arrays have one entry per unit.

    Attributes:
        path: The site's path: names of the nested models holding the layer, then the layer's
            name, joined by "/"; for an op-level site, followed by ":relu_<k>" (the k-th ReLU
            that layer's `call` applies, from 0; the model's own name for its own `call`).
        layer: The class name of the layer holding the activation (e.g. "Dense"; for an
            op-level site, of the innermost layer whose `call` applied it).
        kind: How the activation is applied: "fused" (a layer's `activation=`), "activation" (an
            `Activation` layer), "relu_layer" (a `ReLU` layer), or for a ReLU applied as a
            function call "op:relu", "op:relu6", "op:relu(threshold=…, max_value=…)" or "op:maximum".
        params: The activation's parameters (e.g. `max_value`, `negative_slope`, `time_steps`).
        units: Number of units.
        positions: Non-batch, non-channel positions per call (1 for Dense).
        calls: How many times the site runs per forward pass (2 for a sub-model used twice; 0 when
            the pass never reached it).
        dead: Indices of the units that never fired on the data (and are not non-finite).
        dying: Indices of the live units firing on fewer than `Thresholds.dying` of the pairs.
        saturated: Indices of the capped units at their cap on at least `Thresholds.saturated`.
        flagged: Whether the site's dead share reaches `Thresholds.flag`.
        fires: Per unit, how many (sample, position) pairs it fired on (a finite non-zero output).
        active_rate: Per unit, the share of (sample, position) pairs it fired on.
        sample_active_rate: Per unit, the share of samples in which it fired at least once.
        mean_abs: Per unit, the mean absolute output.
        dormancy: Per unit, the mean absolute output relative to the site's average unit (ReDo's
            score).
        max_output: Per unit, the largest output seen.
        saturated_rate: Per unit, the share of pairs at the cap; `None` for uncapped
            activations. Defaults to `None`.
        grad_mean_abs: Per unit, the mean absolute loss gradient with respect to its output;
            `None` unless the scan measured gradients. Defaults to `None`.
        grad_zero_rate: Per unit, the share of pairs with a zero gradient; `None` unless the scan
            measured gradients. Defaults to `None`.
        reached: Whether the forward pass ran the site at all (an unused branch is not dead).
            Defaults to `True`.
        non_finite: Indices of the units whose output was NaN or ±inf on some (sample, position)
            pair, or whose own weights hold NaN or ±inf (`deadrelu.engine.non_finite`): a verdict of their
            own, never also dead, dying or saturated. Defaults to `[]`.
        non_finite_weights: Indices of the units whose own weights hold NaN or ±inf (a subset of
            `non_finite`). Defaults to `[]`.
        non_finite_outputs: Per unit, how many (sample, position) pairs gave a NaN or ±inf output
            (read as zero by every other statistic); `None` in reports written before it was
            measured. Defaults to `None`.
        margin: Per unit, the largest pre-activation z (what the ReLU is applied to: a fused
            layer's linear output, an `Activation`/`ReLU` layer's input, an op's input) minus the
            site's threshold (0 for a plain ReLU): ≤ 0 for a dead unit. `None` when z was not
            measured (an unreached site; a site whose z cannot be observed; an older report).
            NaN and ±inf z are read as 0, as everywhere. Defaults to `None`.
        preact_mean: Per unit, the mean of z over (sample, position) pairs; `None` as `margin`.
            Defaults to `None`.
        preact_std: Per unit, the standard deviation of z (population: sqrt(max(0, E[z²] −
            E[z]²))), exactly 0.0 when z never varied; `None` as `margin`. Defaults to `None`.
        preact_min: Per unit, the smallest z; `None` as `margin`. Defaults to `None`.
        dead_causes: Per entry of `dead`, in the same order, why that unit died: "starved",
            "output_relu", "born_dead", "killed_in_training" or "data_dependent"
            (`deadrelu.diagnosis.causes`); `None` unless the scan ran with `why=True`. Defaults
            to `None`.
        causes: `{cause: dead units}` for the causes present; `None` without `why`. Defaults to
            `None`.
        cause_evidence: `{cause: {...numbers...}}` for the causes present (docs/report-format.md);
            `None` without `why`. Defaults to `None`.
        dormant: Indices of the τ-dormant units (`deadrelu.engine.dormancy`: dormancy ≤ τ, dead units
            included, non-finite ones not); `None` unless the scan ran with `dormant=τ`. Defaults
            to `None`.

    `repr(site)` is one line, e.g. `<SiteReport hidden_1 (Dense, fused): 48/64 units dead (75.0%), flagged>`;
    a notebook shows the summary line, every unit's numbers (dead ones in red) and the site's unit
    figure (`_repr_html_`).
    """

    path: str
    layer: str
    kind: str
    params: dict
    units: int
    positions: int
    calls: int
    dead: list[int]
    dying: list[int]
    saturated: list[int]
    flagged: bool
    fires: np.ndarray
    active_rate: np.ndarray
    sample_active_rate: np.ndarray
    mean_abs: np.ndarray
    dormancy: np.ndarray
    max_output: np.ndarray
    saturated_rate: np.ndarray | None = None
    grad_mean_abs: np.ndarray | None = None
    grad_zero_rate: np.ndarray | None = None
    reached: bool = True
    non_finite: list[int] = dataclasses.field(default_factory=list)
    non_finite_weights: list[int] = dataclasses.field(default_factory=list)
    non_finite_outputs: np.ndarray | None = None
    margin: np.ndarray | None = None
    preact_mean: np.ndarray | None = None
    preact_std: np.ndarray | None = None
    preact_min: np.ndarray | None = None
    dead_causes: list[str] | None = None
    causes: dict[str, int] | None = None
    cause_evidence: dict[str, dict] | None = None
    dormant: list[int] | None = None

    @property
    def dead_fraction(self) -> float:
        """Dead units / units (0.0 for a site without units)."""
        return len(self.dead) / self.units if self.units else 0.0

    @property
    def healthy(self) -> int:
        """Units neither non-finite, dead, dying nor saturated."""
        return self.units - len(self.non_finite) - len(self.dead) - len(self.dying) - len(self.saturated)

    def __repr__(self) -> str:
        state = ", flagged" if self.flagged else ("" if self.reached else ", not reached")
        if self.non_finite:
            state = f", {len(self.non_finite):,} non-finite (NaN/inf)" + state
        return (
            f"<SiteReport {_clip(self.path)} ({self.layer}, {self.kind}): {len(self.dead):,}/{self.units:,} "
            f"units dead ({self.dead_fraction:.1%}){state}>"
        )

    def _repr_html_(self) -> str:
        from deadrelu.views.site_view import site_html

        return site_html(self)

    def status(self, unit: int) -> str:
        """The verdict of one unit.

        Args:
            unit: The unit's index.

        Returns:
            "non_finite", "dead", "saturated", "dying" or "healthy".
        """
        verdicts = ((NON_FINITE, self.non_finite), (DEAD, self.dead), (SATURATED, self.saturated), (DYING, self.dying))
        for name, members in verdicts:
            if unit in members:
                return name
        return HEALTHY

    def to_dict(self) -> dict:
        """The site as the JSON report stores it (arrays as lists)."""
        out = {
            "path": self.path,
            "layer": self.layer,
            "kind": self.kind,
            "params": self.params,
            "units": self.units,
            "positions": self.positions,
            "calls": self.calls,
            "dead": self.dead,
            "dying": self.dying,
            "saturated": self.saturated,
            "dead_fraction": self.dead_fraction,
            "flagged": self.flagged,
            "reached": self.reached,
            "non_finite": self.non_finite,
            "non_finite_weights": self.non_finite_weights,
            "fires": [int(v) for v in self.fires],
        }
        if self.non_finite_outputs is not None:
            out["non_finite_outputs"] = [int(v) for v in self.non_finite_outputs]
        for name in _UNIT_ARRAYS + _OPTIONAL_ARRAYS:
            value = getattr(self, name)
            if value is not None:
                out[name] = [float(v) for v in value]
        for name in _PREACT_ARRAYS:
            value = getattr(self, name)
            out[name] = [None] * self.units if value is None else [_finite_or_none(v) for v in value]
        for name in _CAUSE_FIELDS:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.dormant is not None:
            out["dormant"] = list(self.dormant)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> SiteReport:
        """The inverse of `to_dict`."""
        arrays = {
            name: (np.asarray(d[name], dtype=np.float64) if d.get(name) is not None else None)
            for name in _UNIT_ARRAYS + _OPTIONAL_ARRAYS
        }
        return cls(
            path=d["path"],
            layer=d["layer"],
            kind=d["kind"],
            params=d.get("params", {}),
            units=d["units"],
            positions=d["positions"],
            calls=d.get("calls", 1),
            dead=list(d["dead"]),
            dying=list(d["dying"]),
            saturated=list(d["saturated"]),
            flagged=bool(d.get("flagged", False)),
            reached=bool(d.get("reached", True)),
            fires=np.asarray(d.get("fires", []), dtype=np.int64),
            non_finite=list(d.get("non_finite", [])),
            non_finite_weights=list(d.get("non_finite_weights", [])),
            non_finite_outputs=(
                np.asarray(d["non_finite_outputs"], dtype=np.int64) if d.get("non_finite_outputs") is not None else None
            ),
            **arrays,
            **{name: _preact_array(d.get(name)) for name in _PREACT_ARRAYS},
            **{name: d.get(name) for name in _CAUSE_FIELDS},
            dormant=None if d.get("dormant") is None else [int(u) for u in d["dormant"]],
        )


@dataclasses.dataclass(repr=False)
class Report:
    """The result of a scan: what was measured, on what, and the verdicts.

    Returned by `deadrelu.scan`, or read back with `Report.from_json`. The fields are those of the
    JSON report (docs/report-format.md); `summary` and `dead_fraction` are computed from `sites`.

    Attributes:
        model: Provenance of the model: `path`, `name`, `sha256`, `format` (and `repairs` when
            loading had to adapt it).
        data: Provenance of the data: `source`, `samples` (and `synthetic` when generated).
        settings: Scan settings: batch size and the thresholds, among others.
        sites: One `SiteReport` per ReLU-family site, in model order; op-level sites (ReLUs applied
            as function calls) follow the layer-level ones, in the order they first ran.
        others: Activations seen that are not ReLU-family (listed, not measured). Defaults to
            `[]`.
        layer_gradients: Per weighted layer, gradient and weight norms; `None` unless the scan
            measured gradients. Defaults to `None`.
        notes: One-line remarks kept with the report (adaptations, warnings). Defaults to `[]`.
        tool: Name and version of the tool that wrote the report, and the Keras backend it ran
            on. Defaults to `tool_info()`: deadrelu, its installed version and the backend.
        loss: The mean loss on the data; `None` unless measured. Defaults to `None`.
        non_finite_layers: The layers whose weights hold NaN or ±inf, in model order, each
            `{"path", "layer", "values", "size"}` (the diverged model's weights, sites or not).
            Defaults to `[]`.
        why: The cause analysis of `scan(..., why=True)`: `init_baseline` (the dead fraction of
            every site in freshly initialised copies of the model, per seed), `training` (the
            training configuration stored with the model, or None), `findings` (model-level,
            each with its numbers) and `recommendations` (one per cause); `None` without `why`
            (docs/report-format.md). Defaults to `None`.

    `repr(report)` is one line, e.g.
    `<Report dying_mlp: 104/192 units dead (54.2%) in 3 sites, 1,000 samples>`. A notebook shows
    the summary line, the sites worst first (flagged ones in red) and the overview figure
    (`_repr_html_`); a rich console (`rich.print(report)`) shows the table (`__rich__`).

    Example:

    ```python
    report = deadrelu.scan(model, x)
    report.summary["dead_fraction"]
    report.site("hidden_1").dead      # dead unit indices of one site
    report.to_json("scan.json")
    ```
    """

    model: dict
    data: dict
    settings: dict
    sites: list[SiteReport]
    others: list[dict] = dataclasses.field(default_factory=list)
    layer_gradients: list[dict] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    tool: dict = dataclasses.field(default_factory=lambda: tool_info())
    loss: float | None = None
    non_finite_layers: list[dict] = dataclasses.field(default_factory=list)
    why: dict | None = None

    def __repr__(self) -> str:
        summary = self.summary
        name = self.model.get("name") or self.model.get("path") or "model"
        sites = summary["sites"]
        samples = self.data.get("samples")
        tail = f", {samples:,} samples" if isinstance(samples, int) else ""
        diverged = f", DIVERGED: {summary['non_finite']:,} non-finite" if summary["diverged"] else ""
        return (
            f"<Report {_clip(str(name))}: {summary['dead']:,}/{summary['units']:,} units dead "
            f"({summary['dead_fraction']:.1%}){diverged} in {sites} site{'' if sites == 1 else 's'}{tail}>"
        )

    def _repr_html_(self) -> str:
        from deadrelu.views.notebook import report_html

        return report_html(self)

    def __rich__(self):
        from deadrelu.views.notebook import report_renderable

        return report_renderable(self)

    @property
    def summary(self) -> dict:
        """Counts over the sites: sites, units, dead, dying, saturated, non_finite, healthy,
        dead_fraction, flagged_sites, unreached_sites (units of unreached sites are left out);
        whether the model `diverged` (NaN or ±inf in a weight or a site output) and where
        (`first_non_finite`, see `deadrelu.engine.non_finite.first_non_finite`); with `why`,
        `causes`: dead units per cause over the model; with `dormant`, `dormant` (τ-dormant
        units) and `dormant_fraction`."""
        from deadrelu.engine.non_finite import first_non_finite

        units = sum(s.units for s in self.sites if s.reached)
        dead = sum(len(s.dead) for s in self.sites)
        non_finite = sum(len(s.non_finite) for s in self.sites if s.reached)
        first = first_non_finite(self.sites, self.non_finite_layers)
        summary = {
            "sites": len(self.sites),
            "units": units,
            "dead": dead,
            "dying": sum(len(s.dying) for s in self.sites),
            "saturated": sum(len(s.saturated) for s in self.sites),
            "non_finite": non_finite,
            "healthy": sum(s.healthy for s in self.sites if s.reached),
            "dead_fraction": dead / units if units else 0.0,
            "flagged_sites": sum(s.flagged for s in self.sites),
            "unreached_sites": sum(not s.reached for s in self.sites),
            "diverged": bool(non_finite or first is not None),
            "first_non_finite": first,
        }
        if any(s.causes is not None for s in self.sites):
            from deadrelu.diagnosis.causes import KINDS

            totals = {kind: sum((s.causes or {}).get(kind, 0) for s in self.sites) for kind in KINDS}
            summary["causes"] = {kind: count for kind, count in totals.items() if count}
        if any(s.dormant is not None for s in self.sites):
            dormant = sum(len(s.dormant or ()) for s in self.sites)
            summary["dormant"] = dormant
            summary["dormant_fraction"] = dormant / units if units else 0.0
        return summary

    @property
    def diverged(self) -> bool:
        """Whether a weight or a site output of the model is NaN or ±inf (see `summary`)."""
        return self.summary["diverged"]

    @property
    def dead_fraction(self) -> float:
        """Dead units / units of the reached sites."""
        return self.summary["dead_fraction"]

    @property
    def collapsed(self) -> list[str]:
        """Paths of the sites that are 100% dead: every unit silent on the data, so the site's output
        is 0 for every input and no gradient flows back through it."""
        return [s.path for s in self.sites if s.reached and s.units and len(s.dead) == s.units]

    @property
    def has_gradients(self) -> bool:
        """Whether the scan measured gradients."""
        return any(s.grad_mean_abs is not None for s in self.sites) or bool(self.layer_gradients)

    def site(self, path: str | int) -> SiteReport:
        """The site with this path, or at this index of `report.sites` (0-based, as in Python:
        `report.site(0)` is the first; the table's "#" column counts from 1).

        Args:
            path: A site path, as in `report.sites[i].path`; or an index into `report.sites`.

        Returns:
            Its `SiteReport`.

        Raises:
            KeyError: No site has this path, or the index is out of range (the message lists the paths).
        """
        if isinstance(path, int) and not isinstance(path, bool):
            if -len(self.sites) <= path < len(self.sites):
                return self.sites[path]
            raise KeyError(
                f"no site at index {path}: the report has {len(self.sites)} sites (0 to {len(self.sites) - 1})"
            )
        for site in self.sites:
            if site.path == path:
                return site
        raise KeyError(f"no site {path!r}; sites are {[s.path for s in self.sites]}")

    def to_dict(self) -> dict:
        """The report as the JSON document of docs/report-format.md (schema `deadrelu/report@1`)."""
        out = {
            "schema": SCHEMA,
            "tool": self.tool,
            "model": self.model,
            "data": self.data,
            "settings": self.settings,
            "summary": self.summary,
            "sites": [site.to_dict() for site in self.sites],
            "other_activations": self.others,
            "notes": self.notes,
            "non_finite_layers": self.non_finite_layers,
        }
        if self.layer_gradients is not None:
            out["layer_gradients"] = self.layer_gradients
        if self.loss is not None:
            out["loss"] = self.loss
        if self.why is not None:
            out["why"] = self.why
        return out

    def to_json(self, path: str) -> None:
        """Writes the report as JSON (atomically: a temporary file renamed into place)."""
        from deadrelu.io.files import write_json

        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        """The inverse of `to_dict`.

        Raises:
            DataError: `d` is not a deadrelu report (another schema).
        """
        if d.get("schema") != SCHEMA:
            raise DataError(f"not a deadrelu report (schema {d.get('schema')!r}, expected {SCHEMA!r})")
        return cls(
            model=d["model"],
            data=d["data"],
            settings=d["settings"],
            sites=[SiteReport.from_dict(s) for s in d["sites"]],
            others=d.get("other_activations", []),
            layer_gradients=d.get("layer_gradients"),
            notes=d.get("notes", []),
            tool=d.get("tool", {}),
            loss=d.get("loss"),
            non_finite_layers=list(d.get("non_finite_layers", [])),
            why=d.get("why"),
        )

    @classmethod
    def from_json(cls, path: str) -> Report:
        """Reads a report written by `to_json` (or `deadrelu scan --json`).

        Args:
            path: The JSON file.

        Returns:
            The `Report`.

        Raises:
            DataError: The file is missing or is not a JSON report.
        """
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError as exc:
            raise DataError(f"report file not found: {path}; check the path") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(
                f"{path} is not a JSON report ({exc}); pass a file written by `Report.to_json` ('deadrelu scan --json')"
            ) from exc
        return cls.from_dict(d)


def build_report(
    result, *, thresholds: Thresholds, model: dict, data: dict, settings: dict, notes: list[str] | None = None
) -> Report:
    """Turns a `ProbeResult` into a `Report`: per-unit verdicts, flags and provenance.

    Args:
        result: The probe's `ProbeResult`.
        thresholds: Where the verdicts are drawn.
        model: Provenance of the model (path, name, sha256, format, ...).
        data: Provenance of the data (source, samples, ...).
        settings: Scan settings; the thresholds are added.
        notes: One-line remarks to keep with the report (adaptations, warnings).

    Returns:
        A `Report`.
    """
    sites = [site_report(stats, thresholds) for stats in result.sites]
    settings = dict(
        settings,
        dying_threshold=thresholds.dying,
        flag_threshold=thresholds.flag,
        saturated_threshold=thresholds.saturated,
    )
    if thresholds.dormant is not None:
        settings["dormant_threshold"] = thresholds.dormant
    others = [dataclasses.asdict(other) for other in result.others]
    layer_gradients = None
    if result.layer_gradients is not None:
        layer_gradients = [
            {
                "path": g.path,
                "layer": g.layer_class,
                "params": g.params,
                "grad_norm": g.grad_norm,
                "weight_norm": g.weight_norm,
                "ratio": g.ratio if math.isfinite(g.ratio) else None,
            }
            for g in result.layer_gradients
        ]
    return Report(
        model=model,
        data=data,
        settings=settings,
        sites=sites,
        others=others,
        layer_gradients=layer_gradients,
        notes=list(notes or []),
        loss=result.mean_loss,
        non_finite_layers=[layer.to_dict() for layer in getattr(result, "non_finite_layers", [])],
    )


def site_report(stats, thresholds: Thresholds) -> SiteReport:
    """Verdicts for one site's `SiteStatistics`: first match wins — non-finite, dead, saturated, dying.

    Args:
        stats: The probe's `SiteStatistics` of the site.
        thresholds: Where the verdicts are drawn.

    Returns:
        A `SiteReport`.
    """
    active = stats.active_rate
    # A site the forward pass never ran (an unused branch) was not measured: it is not dead.
    reached = stats.calls > 0
    outputs = getattr(stats, "non_finite", None)
    weights = getattr(stats, "non_finite_weights", None)
    non_finite = np.zeros(stats.units, bool)
    if outputs is not None:
        non_finite |= np.asarray(outputs) > 0
    if weights is not None:
        non_finite |= np.asarray(weights, bool)
    non_finite &= reached
    dead = (stats.fires == 0) & reached & ~non_finite
    saturated = np.zeros_like(dead)
    if stats.saturated_rate is not None:
        saturated = ~non_finite & ~dead & (stats.saturated_rate >= thresholds.saturated)
    dying = ~non_finite & ~dead & ~saturated & (active < thresholds.dying) & reached
    units = stats.units
    site = SiteReport(
        path=stats.site.path,
        layer=stats.site.layer_class,
        kind=stats.site.kind,
        params=stats.site.params,
        units=units,
        positions=stats.positions,
        calls=stats.calls,
        dead=_indices(dead),
        dying=_indices(dying),
        saturated=_indices(saturated),
        flagged=bool(units and dead.sum() / units >= thresholds.flag),
        fires=stats.fires.astype(np.int64),
        active_rate=active,
        sample_active_rate=stats.sample_active_rate,
        mean_abs=stats.mean_abs,
        dormancy=stats.dormancy,
        max_output=stats.max_output.astype(np.float64),
        saturated_rate=stats.saturated_rate,
        grad_mean_abs=stats.grad_mean_abs,
        grad_zero_rate=stats.grad_zero_rate,
        reached=reached,
        non_finite=_indices(non_finite),
        non_finite_weights=[] if weights is None else _indices(np.asarray(weights, bool) & reached),
        non_finite_outputs=None if outputs is None else np.asarray(outputs, dtype=np.int64),
        **{name: getattr(stats, name, None) for name in _PREACT_ARRAYS},
    )
    if thresholds.dormant is not None:
        site.dormant = dormant_units(site, thresholds.dormant)
    return site


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _preact_array(values) -> np.ndarray | None:
    """A per-unit pre-activation list of the JSON → float64 array (null → NaN); None when absent or all null."""
    if values is None or all(v is None for v in values):
        return None
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def _clip(text: str, width: int = 80) -> str:
    """`text`, or its end after "…" when longer than `width` (a path's end names the layer)."""
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _indices(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask)]


def tool_info() -> dict:
    """What wrote a report: `{"name": "deadrelu", "version": ..., "backend": ...}`.

    `backend` is the Keras backend of this process ("tensorflow", "jax" or "torch"); it is left
    out when Keras has not been imported (nothing ran on a backend), so this never imports it.

    Returns:
        The `tool` object of the JSON reports.

    Example:
        >>> tool_info()
        {'name': 'deadrelu', 'version': '0.1.0', 'backend': 'jax'}
    """
    from deadrelu.backends import loaded

    tool = {"name": "deadrelu", "version": _version()}
    backend = loaded()
    if backend is not None:
        tool["backend"] = backend
    return tool


def _version() -> str:
    from deadrelu._version import __version__

    return __version__

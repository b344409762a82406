"""A timeline of scans during training: which units are dead at each check, and what changed.

The figure of a timeline is drawn by `deadrelu.views.plots.timeline_figure`; notebooks and rich consoles
show it with `deadrelu.views.notebook`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(repr=False)
class Check:
    """One scan during training: an entry of `DeadReluMonitor.timeline`.

    Attributes:
        epoch: Epoch index (0-based, as Keras counts them in the `fit`) at which the check ran.
        step: Global training step: the optimizer's iteration count, which keeps counting across
            `fit` calls.
        dead: Per site path, the dead unit indices.
        units: Per site path, the number of units.
        dead_fraction: Dead units / all units.
        dying_fraction: Dying units / all units.
        newly_dead: Per site path, units dead now but not at the previous check.
        revived: Per site path, units dead at the previous check but alive now.
        persistence: Share of the previous check's dead units still dead (None at the first check).
        action: What the monitor did after this check: "stop", "revive" or None. Defaults to
            `None`.
        non_finite: Per site path, the units whose outputs or own weights are NaN or ±inf (sites
            without any are left out). Defaults to `{}`.
        non_finite_fraction: Non-finite units / all units. Defaults to `0.0`.
        diverged: Whether a weight or a site output of the model was NaN or ±inf at this check
            (`Report.summary["diverged"]`). Defaults to `False`.
        dormant: Per site path, the τ-dormant units (`deadrelu.engine.dormancy.dormant_units`, dead ones
            included) when the monitor has `dormant=τ`; `{}` otherwise. Defaults to `{}`.
        dormant_fraction: τ-dormant units / all units, or None without `dormant=τ`. Defaults to
            `None`.

    `repr(check)` is one line, e.g. `<Check epoch 2, step 24: 25.0% dead, +6 dead, 0 revived>`.
    """

    epoch: int
    step: int
    dead: dict[str, list[int]]
    units: dict[str, int]
    dead_fraction: float
    dying_fraction: float
    newly_dead: dict[str, list[int]]
    revived: dict[str, list[int]]
    persistence: float | None
    action: str | None = None
    non_finite: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    non_finite_fraction: float = 0.0
    diverged: bool = False
    dormant: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    dormant_fraction: float | None = None

    def __repr__(self) -> str:
        changes = ""
        if self.persistence is not None or self.newly_dead or self.revived:
            changes = (
                f", +{sum(map(len, self.newly_dead.values())):,} dead, {sum(map(len, self.revived.values())):,} revived"
            )
        diverged = f", DIVERGED ({self.non_finite_fraction:.1%} non-finite)" if self.diverged else ""
        action = f", action {self.action}" if self.action else ""
        return (
            f"<Check epoch {self.epoch}, step {self.step:,}: {self.dead_fraction:.1%} dead{changes}{diverged}{action}>"
        )

    def site_dead_fraction(self, path: str) -> float:
        """Dead share of one site (0.0 for an unknown site)."""
        return len(self.dead.get(path, ())) / self.units[path] if self.units.get(path) else 0.0

    def site_dormant_fraction(self, path: str) -> float:
        """τ-dormant share of one site (0.0 for an unknown site, or without `dormant=τ`)."""
        return len(self.dormant.get(path, ())) / self.units[path] if self.units.get(path) else 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Timeline(list):
    """The checks of a `DeadReluMonitor`'s fit, in order: a list of `Check`.

    `repr(timeline)` is one line, e.g. `<Timeline 3 checks (epochs 1–3): dead 4.2% → 25.0%, ...>`;
    a notebook shows a table of the latest checks and the figure of each site's dead share
    (`_repr_html_`), a rich console the table (`__rich__`). Everything else is a plain list's.
    """

    def __repr__(self) -> str:
        from deadrelu.views.notebook import timeline_summary

        return f"<Timeline {timeline_summary(self)}>"

    def _repr_html_(self) -> str:
        from deadrelu.views.notebook import timeline_html

        return timeline_html(self)

    def __rich__(self):
        from deadrelu.views.notebook import timeline_renderable

        return timeline_renderable(self)


def make_check(report, previous: Check | None, *, epoch: int, step: int) -> Check:
    """Builds a `Check` from a scan `Report`, diffing against the previous check."""
    dead = {site.path: list(site.dead) for site in report.sites}
    units = {site.path: site.units for site in report.sites}
    summary = report.summary
    newly_dead, revived = {}, {}
    persistence = None
    if previous is not None:
        kept = total = 0
        for path, now in dead.items():
            before = set(previous.dead.get(path, ()))
            now_set = set(now)
            newly_dead[path] = sorted(now_set - before)
            revived[path] = sorted(before - now_set)
            kept += len(before & now_set)
            total += len(before)
        persistence = kept / total if total else None
    return Check(
        epoch=epoch,
        step=step,
        dead=dead,
        units=units,
        dead_fraction=summary["dead_fraction"],
        dying_fraction=summary["dying"] / summary["units"] if summary["units"] else 0.0,
        newly_dead=newly_dead,
        revived=revived,
        persistence=persistence,
        non_finite={site.path: list(site.non_finite) for site in report.sites if site.non_finite},
        non_finite_fraction=summary["non_finite"] / summary["units"] if summary["units"] else 0.0,
        diverged=summary["diverged"],
        dormant={site.path: list(site.dormant) for site in report.sites if site.dormant is not None},
        dormant_fraction=summary.get("dormant_fraction"),
    )

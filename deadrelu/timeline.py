"""A timeline of scans during training: which units are dead at each check, and what changed.

The figure of a timeline is drawn by `deadrelu.views.plots.timeline_figure`; notebooks and rich consoles
show it with `deadrelu.views.notebook`.
"""

from __future__ import annotations

import dataclasses
import itertools


@dataclasses.dataclass(repr=False)
class Check:
    """One scan during training: an entry of `DeadReluMonitor.timeline`.

    Two words for units that come back: *recovered* units came back by themselves (training brought
    them back); *revived* units were re-initialised by deadrelu (`on_dead="revive"`, ReDo).

    Attributes:
        epoch: The epoch the check ran in, counted from 1 (a check at the end of the first epoch
            has `epoch == 1`). Keras's own hooks, `History.epoch` and TensorBoard steps count from
            0: the check of Keras's epoch `e` has `epoch == e + 1`.
        step: Global training step: the optimizer's iteration count, which keeps counting across
            `fit` calls.
        dead: Per site path, the dead unit indices.
        units: Per site path, the number of units.
        dead_fraction: Dead units / all units.
        dying_fraction: Dying units / all units.
        newly_dead: Per site path, units dead now but not at the previous check.
        recovered: Per site path, units dead at the previous check and alive now (neither dead nor
            non-finite) that deadrelu did not revive: they came back by themselves.
        persistence: Share of the previous check's dead units still dead (None at the first check).
        action: What the monitor did after this check: "stop", "revive" or None. Defaults to
            `None`.
        revived: Per site path, the units deadrelu re-initialised after this check (`action ==
            "revive"`); `{}` when it revived none. Defaults to `{}`.
        revived_alive: Per site path, of the units revived at the previous check, those alive at
            this one (neither dead nor non-finite); `{}` when the previous check revived none.
            Defaults to `{}`.
        revived_alive_fraction: Share of the previous check's revived units alive at this check;
            None when the previous check revived none. Defaults to `None`.
        non_finite: Per site path, the units whose outputs or own weights are NaN or ±inf (sites
            without any are left out). Defaults to `{}`.
        non_finite_fraction: Non-finite units / all units. Defaults to `0.0`.
        diverged: Whether a weight or a site output of the model was NaN or ±inf at this check
            (`Report.summary["diverged"]`). Defaults to `False`.
        dormant: Per site path, the τ-dormant units (`deadrelu.engine.dormancy.dormant_units`, dead ones
            included) when the monitor has `dormant=τ`; `{}` otherwise. Defaults to `{}`.
        dormant_fraction: τ-dormant units / all units, or None without `dormant=τ`. Defaults to
            `None`.

    `repr(check)` is one line, e.g. `<Check epoch 2, step 24: 25.0% dead, +6 dead, 0 recovered>`.
    """

    epoch: int
    step: int
    dead: dict[str, list[int]]
    units: dict[str, int]
    dead_fraction: float
    dying_fraction: float
    newly_dead: dict[str, list[int]]
    recovered: dict[str, list[int]]
    persistence: float | None
    action: str | None = None
    revived: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    revived_alive: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    revived_alive_fraction: float | None = None
    non_finite: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    non_finite_fraction: float = 0.0
    diverged: bool = False
    dormant: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    dormant_fraction: float | None = None

    def __repr__(self) -> str:
        changes = ""
        if self.persistence is not None or self.newly_dead or self.recovered:
            changes = f", +{count(self.newly_dead):,} dead, {count(self.recovered):,} recovered"
        if self.revived_alive_fraction is not None:
            changes += f", {count(self.revived_alive):,} revived still alive"
        diverged = f", DIVERGED ({self.non_finite_fraction:.1%} non-finite)" if self.diverged else ""
        action = f", action {self.action}" if self.action else ""
        if self.revived:
            action += f" ({count(self.revived):,} units)"
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


def count(units: dict[str, list[int]]) -> int:
    """How many units a per-site dict of unit indices holds (e.g. `Check.recovered`)."""
    return sum(len(indices) for indices in units.values())


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


@dataclasses.dataclass
class FitSummary:
    """What a `DeadReluMonitor` saw over one `fit`, judged from its numbers: `monitor.summary`.

    Attributes:
        checks: How many checks the fit ran.
        first_epoch: The epoch of the first check (counted from 1).
        last_epoch: The epoch of the last check.
        measure: `"dead"`, or `"dormant"` for a monitor with `dormant=τ`: the share judged.
        share_first: That share of all units at the first check (measured before any revival).
        share_last: That share at the last check.
        verdict: `"better"` (lower at the last check), `"no better"` (equal) or `"worse"`.
        revivals: Checks after which the monitor revived units.
        units_revived: Units revived over the fit (a unit revived twice counts twice).
        revived_followed: Of those, the units revived at a check that another check followed.
        revived_alive: Of those, the units alive at that next check.
        val_loss_first: `val_loss` of the fit's first epoch in the logs (`History`), or None.
        val_loss_last: `val_loss` of its last epoch, or None.
        val_loss_verdict: better / no better / worse on `val_loss` (lower is better), or None
            without two epochs of it.
        warning: The line the monitor printed when most revived units died again, or None.

    Example:
        >>> monitor.summary.line  # schematic
        'fit summary: dead 21.9% → 21.4% (better, −0.5 points) over 3 checks (epochs 1–3); ...'
    """

    checks: int
    first_epoch: int
    last_epoch: int
    measure: str
    share_first: float
    share_last: float
    verdict: str
    revivals: int = 0
    units_revived: int = 0
    revived_followed: int = 0
    revived_alive: int = 0
    val_loss_first: float | None = None
    val_loss_last: float | None = None
    val_loss_verdict: str | None = None
    warning: str | None = None

    @property
    def revived_alive_fraction(self) -> float | None:
        """`revived_alive / revived_followed`, or None when no revived unit was checked again."""
        return self.revived_alive / self.revived_followed if self.revived_followed else None

    @property
    def line(self) -> str:
        """The summary as one line, every word of it computed from the numbers above."""
        change = (self.share_last - self.share_first) * 100
        judged = self.verdict if self.verdict == "no better" else f"{self.verdict}, {_signed(change, 1)} points"
        text = (
            f"fit summary: {self.measure} {self.share_first:.1%} → {self.share_last:.1%} ({judged}) over "
            f"{self.checks} check{'s' if self.checks != 1 else ''} (epochs {self.first_epoch}–{self.last_epoch})"
        )
        if self.revivals:
            checks = f"{self.revivals} check{'s' if self.revivals != 1 else ''}"
            text += f"; {self.units_revived:,} units revived at {checks}"
            if self.revived_followed:
                text += (
                    f", {self.revived_alive:,} of the {self.revived_followed:,} checked again alive at the next "
                    f"check ({self.revived_alive_fraction:.0%})"
                )
        if self.val_loss_verdict is not None:
            gap = self.val_loss_last - self.val_loss_first
            judged = self.val_loss_verdict
            if judged in ("better", "worse"):
                judged += f", {_signed(gap, 4, general=True)}"
            text += f"; val loss {self.val_loss_first:.4g} → {self.val_loss_last:.4g} ({judged})"
        return text

    def to_dict(self) -> dict:
        """The fields, `revived_alive_fraction` and `line`, JSON-ready."""
        return {**dataclasses.asdict(self), "revived_alive_fraction": self.revived_alive_fraction, "line": self.line}


def _signed(value: float, digits: int, *, general: bool = False) -> str:
    """`+0.5` / `−0.5` (a minus sign, not a hyphen); `general` uses significant digits."""
    text = f"{value:+.{digits}g}" if general else f"{value:+.{digits}f}"
    if not general and abs(value) < 0.5 * 10**-digits and value:
        text = f"{value:+.1g}"  # a change smaller than the rounding still shows its sign and size
    return text.replace("-", "−")


def summarize_fit(
    checks: list[Check],
    *,
    val_losses: list[float] | None = None,
    measure: str = "dead",
    warning: str | None = None,
) -> FitSummary:
    """Judges a fit from its checks: the share first → last, the revivals and how many stayed alive.

    Args:
        checks: The checks of the fit, in order (at least one).
        val_losses: The `val_loss` of each epoch of the fit, from its logs. Defaults to None.
        measure: `"dead"` or `"dormant"`: the share judged. Defaults to `"dead"`.
        warning: The line the monitor printed when revived units died again. Defaults to None.

    Returns:
        A `FitSummary`.

    Example:
        >>> summarize_fit(monitor.timeline).verdict
        'better'
    """
    from deadrelu.compare import judge

    def share(check: Check) -> float:
        return check.dead_fraction if measure == "dead" else (check.dormant_fraction or 0.0)

    first, last = checks[0], checks[-1]
    followed = [(count(before.revived), count(after.revived_alive)) for before, after in itertools.pairwise(checks)]
    losses = [v for v in (val_losses or []) if v is not None]
    summary = FitSummary(
        checks=len(checks),
        first_epoch=first.epoch,
        last_epoch=last.epoch,
        measure=measure,
        share_first=share(first),
        share_last=share(last),
        verdict=judge(share(first), share(last)),
        revivals=sum(bool(c.revived) for c in checks),
        units_revived=sum(count(c.revived) for c in checks),
        revived_followed=sum(n for n, _ in followed),
        revived_alive=sum(alive for _, alive in followed),
        warning=warning,
    )
    if len(losses) >= 2:
        summary.val_loss_first, summary.val_loss_last = losses[0], losses[-1]
        summary.val_loss_verdict = judge(losses[0], losses[-1])
    return summary


def make_check(report, previous: Check | None, *, epoch: int, step: int) -> Check:
    """Builds a `Check` from a scan `Report`, diffing against the previous check.

    Args:
        report: The scan of this check.
        previous: The previous check, or None for the first one.
        epoch: The epoch the check ran in, counted from 1.
        step: The optimizer's iteration count.

    Returns:
        The `Check`, with no action (the monitor sets `action` and `revived` when it acts).
    """
    dead = {site.path: list(site.dead) for site in report.sites}
    units = {site.path: site.units for site in report.sites}
    summary = report.summary
    non_finite = {site.path: set(site.non_finite) for site in report.sites if site.non_finite}
    newly_dead, recovered, revived_alive = {}, {}, {}
    persistence = revived_alive_fraction = None
    if previous is not None:
        kept = total = 0
        for path, now in dead.items():
            before = set(previous.dead.get(path, ()))
            now_set = set(now)
            gone = now_set | non_finite.get(path, set())  # non-finite units are neither dead nor alive
            revived = set(previous.revived.get(path, ()))
            newly_dead[path] = sorted(now_set - before)
            recovered[path] = sorted(before - gone - revived)
            if revived:
                revived_alive[path] = sorted(revived - gone)
            kept += len(before & now_set)
            total += len(before)
        persistence = kept / total if total else None
        revived_before = count({path: units for path, units in previous.revived.items() if path in dead})
        if revived_before:
            revived_alive_fraction = count(revived_alive) / revived_before
    return Check(
        epoch=epoch,
        step=step,
        dead=dead,
        units=units,
        dead_fraction=summary["dead_fraction"],
        dying_fraction=summary["dying"] / summary["units"] if summary["units"] else 0.0,
        newly_dead=newly_dead,
        recovered=recovered,
        persistence=persistence,
        revived_alive=revived_alive,
        revived_alive_fraction=revived_alive_fraction,
        non_finite={site.path: list(site.non_finite) for site in report.sites if site.non_finite},
        non_finite_fraction=summary["non_finite"] / summary["units"] if summary["units"] else 0.0,
        diverged=summary["diverged"],
        dormant={site.path: list(site.dormant) for site in report.sites if site.dormant is not None},
        dormant_fraction=summary.get("dormant_fraction"),
    )

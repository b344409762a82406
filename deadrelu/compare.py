"""Two reports → what changed: which units died and which recovered between two scans.

Units *recovered* are dead in the old report and alive in the new one (whatever brought them back;
`deadrelu revive` calls the units it re-initialises *revived*).

Typical use is two checkpoints of one model scanned on the same data. Sites are matched by path;
units by index within a site, so a site whose unit count changed is listed but not diffed unit by unit.
The views show a diff: `views.terminal` (`diff_summary`, `diff_table`, `diff_markdown`), `views.html`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from deadrelu.report import Report

DIFF_SCHEMA = "deadrelu/diff@2"


@dataclasses.dataclass
class SiteDiff:
    """How one site present in both reports changed.

    Attributes:
        path: The site's path (the same in both reports).
        layer: The layer class in the new report.
        units: Unit count in the new report.
        units_before: Unit count in the old report.
        dead_before: Dead units in the old report.
        dead_after: Dead units in the new report.
        newly_dead: Indices dead in the new report but not in the old one.
        recovered: Indices dead in the old report but not in the new one.
        flagged_before: Whether the site was flagged in the old report.
        flagged_after: Whether the site is flagged in the new report.
    """

    path: str
    layer: str
    units: int
    units_before: int
    dead_before: int
    dead_after: int
    newly_dead: list[int]
    recovered: list[int]
    flagged_before: bool
    flagged_after: bool

    @property
    def comparable(self) -> bool:
        """False when the unit count changed, so unit indices cannot be matched."""
        return self.units == self.units_before

    @property
    def changed(self) -> bool:
        return bool(self.newly_dead or self.recovered) or self.dead_before != self.dead_after or not self.comparable

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["comparable"] = self.comparable
        return out


@dataclasses.dataclass
class ReportDiff:
    """The difference between a new and an old report.

    Attributes:
        new: Provenance of the new report (model path, name, sha256; data source, samples).
        old: Provenance of the old report.
        sites: One entry per site present in both, in the new report's model order.
        only_new: Paths of sites only in the new report.
        only_old: Paths of sites only in the old report.
        notes: Caveats, e.g. the two scans used different data or thresholds.
    """

    new: dict
    old: dict
    sites: list[SiteDiff]
    only_new: list[str] = dataclasses.field(default_factory=list)
    only_old: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def summary(self) -> dict:
        return {
            "matched_sites": len(self.sites),
            "changed_sites": sum(s.changed for s in self.sites),
            "only_new": len(self.only_new),
            "only_old": len(self.only_old),
            "dead_before": sum(s.dead_before for s in self.sites),
            "dead_after": sum(s.dead_after for s in self.sites),
            "newly_dead": sum(len(s.newly_dead) for s in self.sites),
            "recovered": sum(len(s.recovered) for s in self.sites),
        }

    @property
    def verdict(self) -> str:
        """One computed sentence: is the new model better, no better or worse than the old one on
        its matched sites' dead units, and by how much (their dead share before → after).

        Example:
            >>> diff.verdict  # schematic
            'better: B → A dead units on the N matched sites (A − B; B% → A% of their units)'
        """
        s = self.summary
        before, after = s["dead_before"], s["dead_after"]
        units_before = sum(site.units_before for site in self.sites)
        units_after = sum(site.units for site in self.sites)
        share = (
            f"{before / units_before:.1%} → {after / units_after:.1%} of their units"
            if units_before and units_after
            else "no units matched"
        )
        where = f"on the {s['matched_sites']} matched site{'s' if s['matched_sites'] != 1 else ''}"
        if not self.sites:
            return "not comparable: no site is in both reports"
        word = judge(before, after)
        change = f"{after - before:+,}".replace("-", "−") + "; " if after != before else ""
        return f"{word}: {before:,} → {after:,} dead units {where} ({change}{share})"

    def site(self, path: str) -> SiteDiff:
        """The diff of the site with this path."""
        for site in self.sites:
            if site.path == path:
                return site
        raise KeyError(f"no matched site {path!r}")

    def to_dict(self) -> dict:
        return {
            "schema": DIFF_SCHEMA,
            "new": self.new,
            "old": self.old,
            "summary": self.summary,
            "verdict": self.verdict,
            "sites": [site.to_dict() for site in self.sites],
            "only_new": self.only_new,
            "only_old": self.only_old,
            "notes": self.notes,
        }

    def to_json(self, path: str) -> None:
        """Writes the diff as JSON (atomically)."""
        from deadrelu.io.files import write_json

        write_json(path, self.to_dict())


def judge(before: float, after: float, *, lower_is_better: bool = True) -> str:
    """The word of a computed verdict: `after` against `before`.

    Args:
        before: The value of the baseline (the old report, the first check).
        after: The value to judge.
        lower_is_better: Whether a lower value is better (dead units, a loss). Defaults to `True`.

    Returns:
        "better", "no better" (equal up to 1e-9 relative) or "worse"; "not comparable" when a
        value is not finite.

    Example:
        >>> judge(0.25, 0.20)
        'better'
    """
    if not (math.isfinite(before) and math.isfinite(after)):
        return "not comparable"
    if abs(after - before) <= 1e-9 * max(1.0, abs(before)):
        return "no better"
    return "better" if (after < before) == lower_is_better else "worse"


def compare_reports(new: Report, old: Report) -> ReportDiff:
    """Compares two reports site by site and unit by unit.

    Args:
        new: The later report (e.g. the later checkpoint).
        old: The earlier report.

    Returns:
        A `ReportDiff`: per matched site, dead counts before and after, newly dead and recovered
        unit indices; the sites found in only one report; caveats.
    """
    old_sites = {site.path: site for site in old.sites}
    new_paths = {site.path for site in new.sites}
    diffs = []
    for site in new.sites:
        before = old_sites.get(site.path)
        if before is None:
            continue
        comparable = site.units == before.units
        dead_now, dead_then = set(site.dead), set(before.dead)
        diffs.append(
            SiteDiff(
                path=site.path,
                layer=site.layer,
                units=site.units,
                units_before=before.units,
                dead_before=len(before.dead),
                dead_after=len(site.dead),
                newly_dead=sorted(dead_now - dead_then) if comparable else [],
                recovered=sorted(dead_then - dead_now) if comparable else [],
                flagged_before=before.flagged,
                flagged_after=site.flagged,
            )
        )
    return ReportDiff(
        new=_provenance(new),
        old=_provenance(old),
        sites=diffs,
        only_new=[s.path for s in new.sites if s.path not in old_sites],
        only_old=[s.path for s in old.sites if s.path not in new_paths],
        notes=_caveats(new, old, diffs),
    )


def _provenance(report: Report) -> dict:
    model, data = report.model, report.data
    return {
        "model": model.get("path"),
        "name": model.get("name"),
        "sha256": model.get("sha256"),
        "data": data.get("source"),
        "samples": data.get("samples"),
        "dead": report.summary["dead"],
        "units": report.summary["units"],
    }


def _caveats(new: Report, old: Report, diffs: list[SiteDiff]) -> list[str]:
    notes = []
    if (new.data.get("source"), new.data.get("samples")) != (old.data.get("source"), old.data.get("samples")):
        notes.append(
            f"the scans used different data ({old.data.get('source')}, {old.data.get('samples')} samples → "
            f"{new.data.get('source')}, {new.data.get('samples')} samples); some changes may come from "
            "the data, not the model"
        )
    if new.data.get("synthetic") or old.data.get("synthetic"):
        notes.append("a scan was measured on synthetic inputs; its dead units are not a real verdict")
    for key in ("dying_threshold", "flag_threshold", "saturated_threshold"):
        if new.settings.get(key) != old.settings.get(key):
            notes.append(f"{key} differs ({old.settings.get(key)} → {new.settings.get(key)})")
    changed = [d.path for d in diffs if not d.comparable]
    if changed:
        notes.append(
            f"unit count changed at {len(changed)} site(s) ({', '.join(changed[:3])}"
            f"{', …' if len(changed) > 3 else ''}); their units are not compared one by one"
        )
    if new.model.get("sha256") and new.model.get("sha256") == old.model.get("sha256"):
        notes.append("both reports are of the same model file (same sha256)")
    return notes


def compress_indices(indices: list[int], limit: int = 60) -> str:
    """Unit indices as ranges, e.g. `[1, 2, 3, 7]` → "1–3, 7", cut to about `limit` characters.

    Args:
        indices: Sorted unit indices.
        limit: Longest string to return before eliding the rest as "… (+N)".

    Returns:
        The compact text; "–" when there are none.
    """
    if not indices:
        return "–"
    runs, start, prev = [], indices[0], indices[0]
    for i in list(indices[1:]) + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        runs.append((start, prev))
        if i is not None:
            start = prev = i
    parts, length, shown = [], 0, 0
    for a, b in runs:
        part = str(a) if a == b else f"{a}–{b}"
        if parts and length + len(part) + 2 > limit:
            break
        parts.append(part)
        length += len(part) + 2
        shown += b - a + 1
    text = ", ".join(parts)
    return text if shown == len(indices) else f"{text}, … (+{len(indices) - shown})"

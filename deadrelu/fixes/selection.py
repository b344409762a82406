"""Which sites a fix changes: the one selection `patch`, `revive` and `prune` share.

Three criteria combine, with the same meaning in every verb and on the command line: `sites`
(exact site paths; `--site PATH`, repeatable), `layers` (a regular expression searched in each
site's path; `--layers`), and `only` ("all", "dead": sites with a dead unit, "flagged": sites whose
dead share reached the report's flag threshold; `--only`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import deadrelu.validation as validation
from deadrelu.errors import UsageError

if TYPE_CHECKING:
    from deadrelu.engine.sites import Site, SiteMap
    from deadrelu.report import Report, SiteReport

ONLY_CHOICES = ("all", "dead", "flagged")


def select_sites(
    site_map: SiteMap,
    *,
    sites: Iterable[str] | None = None,
    only: str | None = None,
    report: Report | None = None,
    layers: str | None = None,
    action: str = "rewrite",
) -> tuple[list[Site], list[str], list[str]]:
    """Chooses the sites to change.

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
            chosen = [site for site in matched if report_site(report, site.path).dead]
        else:
            chosen = [site for site in matched if report_site(report, site.path).flagged]
        if matched and not chosen:
            notes.append(f"no site is {only} in the report: nothing to {action}")
    else:
        chosen = matched
    chosen_ids = {id(site) for site in chosen}
    kept = [site.path for site in every if id(site) not in chosen_ids]
    return chosen, kept, notes


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


def report_site(report: Report, path: str) -> SiteReport:
    """The report's entry for a site path.

    Raises:
        UsageError: The report has no such site (it describes another model).
    """
    try:
        return report.site(path)
    except KeyError:
        raise UsageError(
            f"the report has no site {path!r}: it was made on another model; "
            "scan this model again (deadrelu scan MODEL --json scan.json)"
        ) from None


def units_text(units: list[int], shown: int = 8) -> str:
    """Units as a message names them: '3 units [1, 4, 9]', or '84 units [0, 1, 2, 3, 4, 5, 6, 7, …]'.

    Args:
        units: Unit indices, in the order to list them.
        shown: Most indices listed; the rest are an ellipsis. Defaults to `8`.

    Returns:
        The text.

    Example:
        >>> units_text([1, 4, 9])
        '3 units [1, 4, 9]'
    """
    listed = ", ".join(str(u) for u in units[:shown]) + (", …" if len(units) > shown else "")
    return f"{len(units)} unit{'s' if len(units) != 1 else ''} [{listed}]"

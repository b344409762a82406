"""One recommendation per cause of death found, consistent with what `patch`, `revive` and `prune` do.

- **starved** → fix the upstream site first: the units read nothing but its dead or constant
  outputs, so neither patch nor revive brings them back on their own.
- **output_relu** → remove the ReLU on the output (`deadrelu patch --to leaky --site PATH`, or a
  linear head and retraining).
- **born_dead** → change the initialiser or the architecture; or `deadrelu patch --to leaky`, so
  that the units cannot die.
- **killed_in_training** → `deadrelu revive`, and retrain with a lower learning rate, naming the
  stored one against its optimizer's default when the file holds the training configuration.
- **data_dependent** → scan more data before acting: the units may fire on inputs the scan did
  not see.

The views render these (the summary line, the `next:` hint, the "why" section) with the commands
that reproduce the scan's flags.
"""

from __future__ import annotations

import statistics
from collections import Counter

KINDS = ("starved", "output_relu", "born_dead", "killed_in_training", "data_dependent")


def recommendations(report) -> list[dict]:
    """What to do about each cause of death present in a report.

    Args:
        report: The `deadrelu.Report` of a scan with the cause analysis: its sites' `dead_causes`
            (or `causes`) and `cause_evidence` filled, `report.why["training"]` set (None when the
            model holds no training configuration) and, when computed, `report.why["findings"]`.

    Returns:
        One dict per cause present, in the causes' priority order: `cause`, `units` (dead units
        with that cause over the model), `sites` (the site paths where it occurs, most units
        first), `action` (one sentence, with the numbers), and per cause: `upstream` (starved:
        the sites to fix first), `outputs` (output_relu), `init_dead_fraction` (born_dead: the
        mean over its sites of their dead fraction at initialisation), `learning_rate_ratio`
        (killed_in_training: None without a training configuration), `margin_in_spread_median`
        (data_dependent). `[]` for a report without causes.

    Example:
        >>> [(r["cause"], r["units"]) for r in recommendations(report)]
        [('killed_in_training', 96), ('data_dependent', 8)]
    """
    per_site: dict[str, dict[str, int]] = {}
    totals: Counter = Counter()
    for site in report.sites:
        causes = getattr(site, "causes", None)
        if causes is None:
            causes = Counter(getattr(site, "dead_causes", None) or [])
        for kind, count in causes.items():
            if count:
                per_site.setdefault(kind, {})[site.path] = int(count)
                totals[kind] += int(count)
    why = getattr(report, "why", None) or {}
    out = []
    for kind in sorted(totals, key=lambda k: KINDS.index(k) if k in KINDS else len(KINDS)):
        sites = sorted(per_site[kind], key=lambda path: -per_site[kind][path])
        entry = {"cause": kind, "units": totals[kind], "sites": sites}
        evidence = [_evidence(report, path, kind) for path in sites]
        if kind == "starved":
            evidence = _chain_starts(report, evidence)
        entry.update(_ADVICE.get(kind, _other)(entry, evidence, why))
        out.append(entry)
    return out


def _chain_starts(report, evidence: list[dict]) -> list[dict]:
    """Starved evidence naming where each chain of starved sites starts, in model order.

    A starved site's upstream site may be starved itself (a stack of layers after one dead layer):
    the fix belongs where the chain starts, the first upstream site whose own dead units are not
    all starved. Upstream sites that are wholly starved are left out when a start is named.
    """
    order = {site.path: index for index, site in enumerate(report.sites)}

    def starts_chain(path: str) -> bool:
        try:
            causes = report.site(path).causes or {}
        except KeyError:
            return True
        return set(causes) != {"starved"}

    union = [item for ev in evidence for item in ev.get("upstream") or []]
    named = any(item.get("dead") and starts_chain(item.get("path")) for item in union)
    out = []
    for ev in evidence:
        items = sorted(ev.get("upstream") or [], key=lambda item: order.get(item.get("path"), len(order)))
        out.append({**ev, "upstream": [item for item in items if starts_chain(item.get("path"))] if named else items})
    return out


def _evidence(report, path: str, kind: str) -> dict:
    site = report.site(path)
    return (getattr(site, "cause_evidence", None) or {}).get(kind) or {}


def _starved(entry: dict, evidence: list[dict], why: dict) -> dict:
    upstream: dict[str, dict] = {}
    for ev in evidence:
        for item in ev.get("upstream") or []:
            if item.get("dead"):
                upstream.setdefault(item["path"], item)
    named = ", ".join(f"'{p}' ({u['dead']:,} of {u['units']:,} dead)" for p, u in list(upstream.items())[:3])
    if upstream:
        plural = "s" if len(upstream) > 1 else ""
        first = f"fix the upstream site{plural} {named}{' and more' if len(upstream) > 3 else ''} first"
    else:  # no upstream site with dead units: constant data or a constant layer feeds them
        first = "find what feeds them a constant (the data, or a layer before them) and fix that first"
    return {
        "upstream": list(upstream),
        "action": (
            f"{first}: {_units(entry)} {_verb(entry, 'read', 'reads')} nothing but dead or constant values, so "
            f"patching or reviving {_verb(entry, 'them', 'it')} alone changes nothing"
        ),
    }


def _output_relu(entry: dict, evidence: list[dict], why: dict) -> dict:
    outputs = [ev["output"] for ev in evidence if ev.get("output")]
    site = entry["sites"][0]
    return {
        "outputs": outputs,
        "action": (
            f"remove the ReLU on the model output{'s' if len(outputs) > 1 else ''} "
            f"{', '.join(repr(o) for o in outputs) or repr(site)}: patch it (`deadrelu patch --to leaky "
            f"--site {site}`) or give the head a linear activation and retrain; a dead output unit predicts a "
            "constant 0"
        ),
    }


def _born_dead(entry: dict, evidence: list[dict], why: dict) -> dict:
    fractions = [ev["init_dead_fraction_mean"] for ev in evidence if ev.get("init_dead_fraction_mean") is not None]
    init = statistics.fmean(fractions) if fractions else None
    whose = _verb(entry, "their", "its")
    numbers = f" ({init:.0%} of {whose} site's units, mean over the seeds)" if init is not None else ""
    return {
        "init_dead_fraction": init,
        "action": (
            "change the initialiser or the architecture (He initialisation, no negative bias initialiser, fewer "
            f"or wider layers), or `deadrelu patch --to leaky` so that {_verb(entry, 'they', 'it')} cannot die: "
            f"{_units(entry)} {_verb(entry, 'are', 'is')} dead at initialisation already{numbers}"
        ),
    }


def _killed(entry: dict, evidence: list[dict], why: dict) -> dict:
    training = why.get("training") or None
    ratio = training.get("learning_rate_ratio") if training else None
    action = f"revive {_them(entry)} (`deadrelu revive`)"
    if training and training.get("learning_rate") is not None:
        rate = f"{training.get('optimizer')} at {training['learning_rate']:g}"
        if training.get("learning_rate_schedule"):
            rate += f" ({training['learning_rate_schedule']}, at its start)"
        if ratio is not None and ratio > 1:
            action += f" and retrain with a lower learning rate: {rate} is {ratio:g}× its default"
            action += f" {training['default_learning_rate']:g}"
        elif ratio is not None:
            action += (
                f" and retrain; the stored learning rate ({rate}) is not above its default "
                f"{training['default_learning_rate']:g}, so look for the large updates elsewhere (loss scale, "
                "input scale, batch size)"
            )
        else:
            action += f" and retrain with a lower learning rate than the stored one ({rate})"
    else:
        action += " and retrain with a lower learning rate (the model holds no training configuration to compare)"
    scale = [f for f in why.get("findings") or [] if f.get("kind") == "input_scale"]
    if scale:
        action += f"; scale the input '{scale[0].get('input')}' too (it reaches the model unscaled)"
    return {"learning_rate_ratio": ratio, "action": action}


def _data_dependent(entry: dict, evidence: list[dict], why: dict) -> dict:
    margins = [m for ev in evidence for m in ev.get("margin_in_spread") or [] if m is not None]
    median = statistics.median(margins) if margins else None
    numbers = f" (median margin {median:.2g} × the site's pre-activation spread)" if median is not None else ""
    return {
        "margin_in_spread_median": median,
        "action": (
            f"scan more data before acting: {_units(entry)} {_verb(entry, 'miss', 'misses')} firing by a small "
            f"margin{numbers} and may fire on inputs the scan did not see"
        ),
    }


def _other(entry: dict, evidence: list[dict], why: dict) -> dict:
    return {"action": f"look at {_units(entry)} by hand: deadrelu has no recommendation for '{entry['cause']}'"}


_ADVICE = {
    "starved": _starved,
    "output_relu": _output_relu,
    "born_dead": _born_dead,
    "killed_in_training": _killed,
    "data_dependent": _data_dependent,
}


def _verb(entry: dict, plural: str, singular: str) -> str:
    """`plural` or `singular`, agreeing with the entry's unit count."""
    return singular if entry["units"] == 1 else plural


def _units(entry: dict) -> str:
    count = entry["units"]
    return f"these {count:,} units" if count != 1 else "this unit"


def _them(entry: dict) -> str:
    return "the unit" if entry["units"] == 1 else f"the {entry['units']:,} units"

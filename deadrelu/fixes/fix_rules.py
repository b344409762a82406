"""The rules of `deadrelu.fix`: which candidates exist, which are tried by default, which one wins.

Kept apart from the tournament itself (`deadrelu.fixes.tournament`) so that the rules read in one
place, and match docs/fixing.md#which-fix-works.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from deadrelu.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from deadrelu.fixes.tournament import Candidate
    from deadrelu.report import Report

CANDIDATES = ("baseline", "leaky", "prelu", "revive", "revive+lr", "lr", "prune")
"""Every candidate `fix` knows, in the order it trains them."""

LR_FACTOR = 0.1
"""What `lr` and `revive+lr` multiply the learning rate by."""

# The repair each candidate is built by: `lr` and `revive+lr` train what `baseline` and `revive` build.
REPAIR = {"baseline": "copy", "lr": "copy", "revive": "revive", "revive+lr": "revive"}
REPAIR.update({kind: kind for kind in ("leaky", "prelu", "prune")})

_LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "mape", "msle", "hinge", "crossentropy", "poisson", "divergence")
_TIE = 1e-9  # relative: two values this close are a tie (equal up to float rounding)


def default_candidates(report: Report | None) -> tuple[list[str], str]:
    """The candidates `fix` tries when none are named, from a why-scan's causes, and why.

    The rule (docs/fixing.md#which-fix-works): `baseline`, `leaky` and `prelu` always; `revive`
    when units were killed in training or born dead; `lr` and `revive+lr` when killed in
    training; `prune` when any unit is dead. With nothing dead: `baseline`, `leaky`, `prelu`,
    `lr`. Without causes (no why-analysis): all.

    Args:
        report: A `Report` from `scan(..., why=True)`, or None.

    Returns:
        The candidate kinds in training order, and one line saying why.
    """
    causes = None if report is None else report.summary.get("causes")
    if causes is None:
        return list(CANDIDATES), "no cause analysis: every candidate"
    if not causes:
        return ["baseline", "leaky", "prelu", "lr"], "no dead unit: the activations and the learning rate"
    chosen = {"baseline", "leaky", "prelu", "prune"}
    if causes.get("killed_in_training") or causes.get("born_dead"):
        chosen.add("revive")
    if causes.get("killed_in_training"):
        chosen |= {"lr", "revive+lr"}
    shown = ", ".join(f"{kind} {count}" for kind, count in causes.items())
    return [kind for kind in CANDIDATES if kind in chosen], f"from the dead units' causes ({shown})"


def parse_candidates(entries: Sequence[str] | str) -> list[tuple[str, str]]:
    """`["baseline", "control=baseline", "leaky"]` → `[(label, kind), ...]`, checked.

    Args:
        entries: Candidate kinds, or `label=kind` to train a kind under another label (e.g. the
            same `baseline` twice, to see that training is deterministic); a string is split at
            commas.

    Raises:
        UsageError: An unknown kind (the message lists the valid ones), a repeated label, or none.
    """
    if isinstance(entries, str):
        entries = [part for part in entries.split(",") if part.strip()]
    pairs = []
    for entry in entries:
        label, _, kind = str(entry).strip().rpartition("=")
        kind = kind.strip()
        label = label.strip() or kind
        if kind not in CANDIDATES:
            raise UsageError(
                f"`candidates`: unknown candidate {kind!r}; choose from {', '.join(CANDIDATES)} "
                "(or label=kind, e.g. control=baseline)"
            )
        if label in [p[0] for p in pairs]:
            raise UsageError(f"`candidates`: {label!r} is named twice; give the second one a label (label={kind})")
        pairs.append((label, kind))
    if not pairs:
        raise UsageError(f"`candidates` is empty; choose from {', '.join(CANDIDATES)}")
    return pairs


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of `metric` is better: losses and errors (a name with "loss",
    "error", "mse", "mae", "mape", "msle", "hinge", "crossentropy", "poisson", "divergence");
    every other metric (accuracy, AUC, precision, ...) is better higher."""
    return any(word in metric.lower() for word in _LOWER_IS_BETTER)


def verdict(done: list[Candidate], metric: str, higher: bool) -> tuple[str | None, list[str], str]:
    """The best trained candidate (ties: baseline, else the first), the tied names, the sentence."""
    scored = [(c, c.after.get(metric)) for c in done if c.trained]
    scored = [(c, v) for c, v in scored if v is not None and math.isfinite(v)]
    if not scored:
        return None, [], "no candidate trained to a finite value: nothing to choose"
    pick = max if higher else min
    top = pick(v for _, v in scored)
    tied = [c for c, v in scored if abs(v - top) <= _TIE * max(1.0, abs(top))]
    best = next((c for c in tied if c.kind == "baseline"), tied[0])
    shown = f"val {metric.replace('_', ' ')} {top:.4f}"
    base = next((c for c in done if c.kind == "baseline" and c.trained), None)
    if base is not None and base in tied:
        others = [c.name for c in tied if c is not base]
        same = f" ({', '.join(others)} tie with it)" if others else ""
        return (
            base.name,
            [c.name for c in tied] if len(tied) > 1 else [],
            (f"no candidate beats {base.name} ({shown}){same}: keep the model as it is"),
        )
    tie_text = f"; tie between {', '.join(c.name for c in tied)}, kept the first" if len(tied) > 1 else ""
    versus = ""
    if base is not None and base.after.get(metric) is not None:
        gap = top - base.after[metric]
        versus = f" vs {base.name} {base.after[metric]:.4f}"
        if "acc" in metric:
            versus += f" ({gap * 100:+.1f} points)"
    return best.name, [c.name for c in tied] if len(tied) > 1 else [], f"best: {best.name} ({shown}{versus}){tie_text}"

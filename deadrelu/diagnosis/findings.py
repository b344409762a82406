"""Model-level findings of the cause analysis: what is wrong with the model as a whole, with its numbers.

Each finding is a dict with `kind`, `message` (one sentence, with the numbers) and the numbers
themselves, in this order (a kind appears only when the report's numbers support it):

- **non_finite** — units whose outputs were NaN or ±inf on the data (first whenever present: every
  other statistic reads those values as 0);
- **non_finite_weights** — layers whose weights hold NaN or ±inf: the training run diverged, so
  the remedy is an earlier checkpoint, not a repair of the units;
- **input_scale** — an input far from unit scale (standard deviation or |mean| above
  `SCALE_LIMIT`, 10) that reaches a weighted layer with no `Rescaling` or normalisation layer
  before it; raw 0–255 pixels are the classic, and `--rescale 1/255` (`rescale=1/255`) scans them
  as a model trained on [0, 1] sees them;
- **output_relu** — a ReLU site directly on a model output, with dead units: the model predicts a
  constant 0 there;
- **dead_site** — a site whose units are all dead: its output is 0 for every input, so whatever
  reads only that output is constant.
"""

from __future__ import annotations

import math
from typing import Any

from deadrelu.fixes.propagation import IDENTITIES, STRUCTURAL

SCALE_LIMIT = 10.0
"""An input whose standard deviation or |mean| exceeds this is far from unit scale (`input_scale`)."""

# Layers that bring an input to unit scale (or take it as ids or categories): an input path
# through one of them is scaled.
_SCALERS = (
    "Rescaling",
    "Normalization",
    "BatchNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "UnitNormalization",
    "RMSNormalization",
    "SpectralNormalization",
    "Embedding",
    "Discretization",
    "CategoryEncoding",
    "Hashing",
    "IntegerLookup",
    "StringLookup",
    "TextVectorization",
)
# Layers that move, drop or pool values without changing their scale: followed downstream (the unit
# walk's structural layers and inference-time identities, and preprocessing that keeps the scale).
_PASS_THROUGH = (
    STRUCTURAL
    | IDENTITIES
    | {
        "CenterCrop",
        "InputLayer",
        "Masking",
        "RandomCrop",
        "RandomFlip",
        "RandomRotation",
        "RandomTranslation",
        "RandomZoom",
        "Resizing",
    }
)


def model_findings(report, model) -> list[dict]:
    """The model-level findings of a scan (see the module docstring for the kinds and their rules).

    Args:
        report: The `deadrelu.Report` of the scan, with its `data["inputs"]` and, when the cause
            analysis ran, the sites' `cause_evidence`.
        model: The scanned `keras.Model`, or None (the findings that need its graph are then
            left out: `input_scale`, and `output_relu` where the evidence does not name the output).

    Returns:
        A list of findings, each `{"kind", "message", ...numbers}`; `non_finite` first when
        present. The numbers per kind:
        `non_finite`: `units`, `sites`, `first_site`;
        `non_finite_weights`: `layers`, `values`, `first_layer`;
        `input_scale`: `input`, `min`, `max`, `mean`, `std`, `integer_valued`, `layers` (the
        weighted layers that read it unscaled), `rescale` (the factor suggested, 1/255 for
        whole numbers in 0–255, else None), `scanned_rescale` (the scan's own `rescale`);
        `output_relu`: `site`, `output`, `dead`, `units`;
        `dead_site`: `site`, `units`, `samples`, `starves` (the sites whose starved units read it).

    Example:
        >>> [f["kind"] for f in model_findings(report, model)]
        ['input_scale', 'dead_site']
    """
    context = _context(model, report)
    return [
        *_non_finite(report),
        *_non_finite_weights(report),
        *_input_scale(report, model, context),
        *_output_relu(report, context),
        *_dead_sites(report),
    ]


def _context(model, report):
    """The cause analysis's view of the model (its flat graph, its sites' layers), or None."""
    if model is None:
        return None
    from deadrelu.diagnosis.causes import ModelContext

    return ModelContext(model, report)


# -- non-finite values ----------------------------------------------------------------------


def _non_finite(report) -> list[dict]:
    counts = []
    for site in report.sites:
        if site.non_finite_outputs is not None:
            units = sum(1 for value in site.non_finite_outputs if value)
        else:  # a report written before the outputs were counted: the verdict itself
            units = len(set(site.non_finite) - set(site.non_finite_weights))
        if units:
            counts.append((site.path, units))
    if not counts:
        return []
    units = sum(count for _, count in counts)
    first = counts[0][0]
    sites = len(counts)
    return [
        {
            "kind": "non_finite",
            "message": (
                f"{units:,} unit{_s(units)} in {sites:,} site{_s(sites)} output NaN or ±inf on the data, first at "
                f"site '{first}': the model diverged, and these units are left out of the dead count"
            ),
            "units": units,
            "sites": sites,
            "first_site": first,
        }
    ]


def _non_finite_weights(report) -> list[dict]:
    layers = list(getattr(report, "non_finite_layers", None) or [])
    if not layers:
        return []
    values = sum(int(layer.get("values") or 0) for layer in layers)
    first = layers[0].get("path")
    return [
        {
            "kind": "non_finite_weights",
            "message": (
                f"the weights of {len(layers):,} layer{_s(len(layers))} hold {values:,} NaN or ±inf "
                f"value{_s(values)}, first in '{first}': the training run diverged, so retrain from a checkpoint "
                "saved before it did (patch and revive cannot repair these weights)"
            ),
            "layers": len(layers),
            "values": values,
            "first_layer": first,
        }
    ]


# -- input scale ----------------------------------------------------------------------------


def _input_scale(report, model, context) -> list[dict]:
    inputs = (report.data or {}).get("inputs") or []
    if model is None or context is None or not inputs:
        return []
    graph = context.graph
    if not graph.nodes:
        return []  # no graph to follow (a subclassed model): the input path is unknown
    names = [getattr(t, "name", None) for t in _model_inputs(model)]
    scanned_rescale = (report.settings or {}).get("rescale")
    found = []
    for position, entry in enumerate(inputs):
        std, mean = entry.get("std"), entry.get("mean")
        if std is None or mean is None or not (std > SCALE_LIMIT or abs(mean) > SCALE_LIMIT):
            continue
        index = names.index(entry.get("name")) if entry.get("name") in names else position
        if index >= len(graph.inputs) or _takes_integers(model, index):
            continue
        readers = _unscaled_readers(graph, graph.inputs[index])
        if not readers:
            continue
        found.append(_scale_finding(entry, readers, scanned_rescale))
    return found


def _model_inputs(model) -> list:
    try:
        return list(model.inputs)
    except Exception:  # noqa: BLE001 - a model without symbolic inputs
        return []


def _takes_integers(model, index: int) -> bool:
    """Whether the model's input `index` is an integer input (token ids: their range is no scale)."""
    inputs = _model_inputs(model)
    return index < len(inputs) and "int" in str(getattr(inputs[index], "dtype", ""))


def _unscaled_readers(graph, key) -> list[str]:
    """The weighted layers an input reaches with no scaling layer on the way, in graph order.

    Walks down from the input through layers that keep the scale (`_PASS_THROUGH`); a branch
    ends at a scaling layer (`_SCALERS`: scaled), at a Keras layer with weights (recorded: it reads
    the raw values), or at any other layer, whose effect on the scale is unknown (a `Lambda` may
    well divide by 255, a custom layer normalise): only what is known to be unscaled is reported.
    """
    frontier, seen, readers = [key], set(), []
    while frontier:
        current = frontier.pop(0)
        if current in seen:
            continue
        seen.add(current)
        for node in graph.consumers.get(current, []):
            layer = node.layer
            names = {cls.__name__ for cls in type(layer).__mro__}
            if names & set(_SCALERS) or not type(layer).__module__.startswith("keras"):
                continue  # scaled, or a layer of the user's own, which may scale
            if names & _PASS_THROUGH:
                frontier.extend(node.outputs)
            elif getattr(layer, "weights", None) and layer.name not in readers:
                readers.append(layer.name)
    return readers


def _scale_finding(entry: dict, readers: list[str], scanned_rescale) -> dict:
    low, high, mean, std = entry["min"], entry["max"], entry["mean"], entry["std"]
    whole = bool(entry.get("integer_valued"))
    pixels = whole and low >= 0 and 1 < high <= 255
    name = entry.get("name") or "input"
    shown = f"'{readers[0]}'" + (f" and {len(readers) - 1} more" if len(readers) > 1 else "")
    kind = "whole numbers, " if whole else ""
    text = (
        f"input '{name}' ranges {_num(low)}–{_num(high)} ({kind}mean {_num(mean)}, std {_num(std)}) and reaches "
        f"{shown} with no Rescaling or Normalization layer before it"
    )
    if scanned_rescale:
        text += f", even after `rescale={scanned_rescale:g}`"
    if pixels and not scanned_rescale:
        text += (
            ": if the model was trained on [0, 1], scan with `--rescale 1/255` (`rescale=1/255`); if it was "
            "trained on raw pixels, add `Rescaling(1/255)` before it and retrain"
        )
    else:
        text += (
            ": pass the data scaled as the model was trained on it (`--rescale`, `rescale=`), or standardise it "
            "(a Normalization layer, adapted to the data) and retrain"
        )
    return {
        "kind": "input_scale",
        "message": text,
        "input": name,
        "min": low,
        "max": high,
        "mean": mean,
        "std": std,
        "integer_valued": whole,
        "layers": readers,
        "rescale": 1 / 255 if pixels and not scanned_rescale else None,
        "scanned_rescale": scanned_rescale,
    }


# -- sites ----------------------------------------------------------------------------------


def _output_relu(report, context) -> list[dict]:
    found = []
    for site in report.sites:
        if not site.reached or not site.dead:
            continue
        evidence = (getattr(site, "cause_evidence", None) or {}).get("output_relu") or {}
        output = evidence.get("output")
        if output is None and context is not None:
            output = context.output_of(site)
        if output is None:
            continue
        dead = len(site.dead)
        found.append(
            {
                "kind": "output_relu",
                "message": (
                    f"site '{site.path}' applies a ReLU directly on the model output '{output}': {dead:,} of "
                    f"{site.units:,} output unit{_s(site.units)} never fire{'s' if dead == 1 else ''}, so the model "
                    f"predicts a constant 0 there; remove the ReLU on the output"
                ),
                "site": site.path,
                "output": output,
                "dead": dead,
                "units": site.units,
            }
        )
    return found


def _dead_sites(report) -> list[dict]:
    starving: dict[str, list[str]] = {}
    for site in report.sites:
        evidence = (getattr(site, "cause_evidence", None) or {}).get("starved") or {}
        for upstream in evidence.get("upstream") or []:
            starving.setdefault(upstream.get("path"), []).append(site.path)
    samples = (report.data or {}).get("samples")
    found = []
    for site in report.sites:
        if not site.reached or not site.units or len(site.dead) != site.units:
            continue
        on = f" on {samples:,} samples" if isinstance(samples, int) else ""
        starves = starving.get(site.path, [])
        tail = ""
        if starves:
            tail = f" (it starves {', '.join(repr(p) for p in starves[:3])}{' and more' if len(starves) > 3 else ''})"
        found.append(
            {
                "kind": "dead_site",
                "message": (
                    f"site '{site.path}' is 100% dead ({site.units:,} of {site.units:,} units never fire{on}): its "
                    f"output is 0 for every input, so whatever reads only it is constant{tail}"
                ),
                "site": site.path,
                "units": site.units,
                "samples": samples,
                "starves": starves,
            }
        )
    return found


# -- wording --------------------------------------------------------------------------------


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def _num(value: Any) -> str:
    """A statistic as it reads: whole numbers plainly (255), others to 3 significant digits (0.131)."""
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e9:
        return f"{int(value):,}" if abs(value) >= 1e4 else str(int(value))
    return f"{value:.3g}"

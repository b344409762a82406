"""Reviving the dead units of recurrent layers (`SimpleRNN`, `GRU`, `LSTM` with `activation='relu'`).

A recurrent unit `k` is dead when the layer's output `h[k]` is 0 at every step of every sample:

- `SimpleRNN`: `h_t = relu(x_t W + h_{t-1} U + b)`; its site is `h_t` itself.
- `GRU` (gates packed `[z, r, h]`, each `units` wide): `h_t = z·h_{t-1} + (1 - z)·relu(ĥ)`. A dead
  candidate (`<layer>:candidate`, `relu(ĥ[k]) = 0` at every step) leaves `h[k]` at its initial 0,
  exactly: `z·0 + (1 - z)·0 = 0`, with `reset_after` or not.
- `LSTM` (gates packed `[i, f, c, o]`): `c_t = f·c_{t-1} + i·relu(z_c)`, `h_t = o·relu(c_t)`. A dead
  state (`<layer>:state`, `relu(c_t[k]) = 0` at every step) gives `h[k] = o·0 = 0`. A dead candidate
  (`<layer>:candidate`) keeps `c[k]` at its initial 0 (`f·0 + i·0`), so its state is dead too (the
  report lists the unit at both sites). Both sites are revived the same way.

Both arguments start from a zero initial state, so a layer called with `initial_state`, or
`stateful`, is left. A dead unit is revived as ReDo revives a Dense unit, gate by gate:

1. its incoming weights are drawn again from the layer's own initializers: the input kernel's
   columns `g·units + k` and the recurrent kernel's columns `g·units + k` of every gate `g`, and
   its bias entries (the LSTM's forget gate at 1 with `unit_forget_bias`, as Keras builds it;
   both rows of a GRU's `reset_after` bias);
2. its outgoing weights are zeroed: row `k` of the recurrent kernel (every gate's column of every
   unit that is not revived: its weight into their next steps), and the rows of every layer that
   reads the layer's output (`deadrelu.fixes.revive`'s walk; a `return_sequences` output read by
   another recurrent layer: that layer's input-kernel rows, every gate).

Then `h[k]` changes but no other unit and no output reads it: by induction over the steps, every
other unit computes what it computed before, exactly (masked steps carry the same states over).
Among the revived units of one layer the new weights are kept: they may listen to each other.

A `Bidirectional` layer is its two directions, each a layer of its own; its output concatenates
them (`merge_mode="concat"`, the only mode where a unit has output entries of its own), so the
backward direction's unit `k` is output channel `forward.units + k` (`UnitTarget.offset`).

Example:
    >>> result = deadrelu.revive_model(model, x, seed=0)   # an LSTM(..., activation="relu") inside
    >>> result.revived["lstm_1:state"], result.check.max_abs_diff
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from deadrelu.fixes.edits import Edits, seeded_draw
from deadrelu.fixes.graph import LayerGraph, UnitTarget

# Gates per recurrent layer class, packed side by side in its kernels, and the one its activation reads.
_GATES = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}
_CANDIDATE = {"SimpleRNN": 0, "GRU": 2, "LSTM": 2}


def directions(layer) -> list[tuple[object, int]]:
    """The recurrent layers making a layer's output, and where their units start in it.

    Args:
        layer: A `SimpleRNN` / `GRU` / `LSTM`, or a `Bidirectional` wrapping one.

    Returns:
        `[(layer, 0)]`, or for a `Bidirectional` `[(forward, 0), (backward, forward.units)]`.
    """
    if type(layer).__name__ == "Bidirectional":
        return [(layer.forward_layer, 0), (layer.backward_layer, int(layer.forward_layer.units))]
    return [(layer, 0)]


def output_site(graph: LayerGraph, site) -> tuple[object, int]:
    """A recurrent site as the graph's layer outputs it.

    Args:
        graph: The model's `LayerGraph`.
        site: A recurrent `Site` (its `recurrent` is the layer running the cell).

    Returns:
        `(site, offset)`: the site itself and 0, or for one direction of a `Bidirectional` a copy
        whose `layer` is the wrapper (the layer the graph calls) and where that direction's units
        start in the wrapper's output.
    """
    for node in graph.nodes:
        if type(node.layer).__name__ != "Bidirectional":
            continue
        for layer, offset in directions(node.layer):
            if layer is site.recurrent:
                return dataclasses.replace(site, layer=node.layer), offset
    return site, 0


def site_units(target: UnitTarget) -> np.ndarray:
    """The target's units as its site numbers them (without a `Bidirectional` offset)."""
    return np.asarray(target.units) - target.offset


def recurrent_owner(target: UnitTarget, calls: list) -> str | None:
    """Makes the recurrent layer the owner of its dead units, or says why they are left.

    Args:
        target: Units of a recurrent site (`output_site` applied); `producer` is set here.
        calls: The graph's calls of the site's layer.

    Returns:
        None when the units can be revived exactly, else the reason.
    """
    layer, cell_layer = target.site.layer, target.site.recurrent
    name = f"{type(layer).__name__} '{layer.name}'"
    if not calls:
        return (
            "not part of a functional graph deadrelu can follow (inside a subclassed model?); "
            "its dead units are left as they are"
        )
    if type(cell_layer).__name__ not in _GATES:
        return f"re-initialising units of a {type(cell_layer).__name__} is not supported"
    if len(calls) != 1:
        return f"{name} is called more than once; its units cannot be cut off in one place"
    if calls[0].node.arguments.kwargs.get("initial_state") is not None:
        return (
            f"{name} is called with an initial state: a dead unit is exact zero only from a zero "
            "state, so reviving it could change the outputs"
        )
    if getattr(layer, "stateful", False) or getattr(cell_layer, "stateful", False):
        return f"{name} is stateful (its state carries over between batches): its units are left"
    if getattr(layer, "return_state", False) or len(calls[0].outputs) != 1:
        return f"{name} returns its states (return_state=True): a revived unit's state would be an output"
    if type(layer).__name__ == "Bidirectional" and layer.merge_mode != "concat":
        return (
            f"{name} merges its directions with merge_mode={layer.merge_mode!r}: a unit shares its "
            "output entries with the other direction's unit (only 'concat' keeps them apart)"
        )
    target.producer = layer
    return None


def is_recurrent(layer) -> bool:
    """True for Keras's own `SimpleRNN` / `GRU` / `LSTM`, or a `Bidirectional` wrapping one."""
    return all(type(rnn).__name__ in _GATES for rnn, _ in directions(layer))


def reads_inputs(layer, inputs: list) -> bool:
    """Whether revive's walk may read a recurrent layer's input rows (and cut them off there).

    Args:
        layer: A layer of the graph.
        inputs: The walk's `Flow`s of the call's inputs (its sequence, then a mask or initial states).

    Returns:
        True for a `SimpleRNN` / `GRU` / `LSTM` (or a `Bidirectional` of them) no footprint reaches
        except through its sequence input: its input kernel's rows read that input's features.
    """
    return is_recurrent(layer) and not any(mask.any() for flow in inputs[1:] for mask in flow.footprint.values())


def _gate_columns(rnn, units) -> list[np.ndarray]:
    """Per gate, the kernel columns of `units` (the gates are packed side by side, each `units` wide)."""
    n, units = int(rnn.units), np.asarray(units, np.int64)
    return [g * n + units for g in range(_GATES[type(rnn).__name__])]


def _columns(rnn, units) -> np.ndarray:
    """The kernel columns of `units` in every gate of a recurrent layer."""
    return np.concatenate(_gate_columns(rnn, units))


def _draw(initializer, shape: tuple, seed: int, dtype, fallback: str | None = None) -> tuple[np.ndarray, bool]:
    """A draw from a seeded copy of an initializer.

    Returns:
        `(values, replaced)`: with `fallback` (a Keras initializer class name), a draw that is
        constant (zeros, ones: no way to break symmetry) or fails is replaced by one of `fallback`.
    """
    import keras

    draw = seeded_draw(initializer, shape, seed, dtype)
    if fallback is None:
        return (np.zeros(shape, dtype) if draw is None else draw), False
    if draw is not None and (draw.size <= 1 or float(np.std(draw)) > 0.0):
        return draw, False
    init = keras.initializers.get({"class_name": fallback, "config": {"seed": seed}})
    return np.array(init(shape, dtype=dtype)), True


def _incoming(rnn, units, seed: int, live: np.ndarray, scale: str, notes: list[str]) -> list[tuple[object, np.ndarray]]:
    """Fresh incoming kernel and recurrent-kernel columns for `units`, every gate.

    Returns:
        `(variable, draw)` pairs: the draw has the variable's shape; only the units' columns are used.
        With `scale="live"`, each new column is rescaled to the mean norm of the live units' columns
        of the same gate.
    """
    cell = rnn.cell
    out = []
    for variable, initializer, fallback in (
        (cell.kernel, cell.kernel_initializer, "GlorotUniform"),
        (cell.recurrent_kernel, cell.recurrent_initializer, "Orthogonal"),
    ):
        draw, replaced = _draw(initializer, tuple(variable.shape), seed, variable.dtype, fallback)
        note = f"{rnn.name}: its {variable.name} initializer gives no random draw; used {fallback}"
        if replaced and note not in notes:  # an LSTM's two sites: said once
            notes.append(note)
        if scale == "live" and len(live):
            current = np.asarray(variable.numpy())
            for own, others in zip(_gate_columns(rnn, units), _gate_columns(rnn, live)):
                norm = float(np.mean(np.linalg.norm(current[:, others], axis=0)))
                drawn = np.linalg.norm(draw[:, own], axis=0)
                draw[:, own] *= np.where(drawn > 0, norm / np.where(drawn > 0, drawn, 1.0), 1.0)
        out.append((variable, draw))
    return out


def _fresh_bias(rnn, seed: int) -> np.ndarray | None:
    """A fresh bias, as the layer builds it (an LSTM's forget gate at 1 with `unit_forget_bias`)."""
    cell = rnn.cell
    if getattr(cell, "bias", None) is None:
        return None
    bias, _ = _draw(cell.bias_initializer, tuple(cell.bias.shape), seed, cell.bias.dtype)
    if type(rnn).__name__ == "LSTM" and cell.unit_forget_bias:
        n = int(rnn.units)
        bias[n : 2 * n] = 1.0
    return bias


def reinitialize_recurrent(target: UnitTarget, seed: int, scale: str, edits: Edits, notes: list[str]) -> None:
    """New incoming weights for a recurrent target's units, and their outgoing recurrent weights zeroed.

    Every gate's input-kernel and recurrent-kernel columns of the units and their bias entries are
    drawn again from the layer's initializers (see the module docstring); the units' rows of the
    recurrent kernel are zeroed in the columns of every unit not revived here, so no other unit's
    next step reads them. What reads the layer's output is cut off by revive's walk.

    Args:
        target: Units of a recurrent site whose owner was found (`recurrent_owner`).
        seed: Seed of the draw.
        scale: "initializer" (weights as drawn) or "live" (each new column rescaled to the mean
            norm of the live units' columns of its gate).
        edits: Where the new values go.
        notes: Remarks are appended here (e.g. an initializer that gives no random draw).
    """
    rnn = target.site.recurrent
    units = site_units(target)
    live = np.setdiff1d(np.asarray(target.live, np.int64), units)
    cols = _columns(rnn, units)
    target.norm = None
    for variable, draw in _incoming(rnn, units, seed, live, scale, notes):
        value, mask = edits.get(variable)
        value[:, cols] = draw[:, cols]
        mask[:, cols] = True
    bias = _fresh_bias(rnn, seed)
    if bias is not None:
        value, mask = edits.get(rnn.cell.bias)
        value[..., cols] = bias[..., cols]
        mask[..., cols] = True
    recurrent, mask = edits.get(rnn.cell.recurrent_kernel)
    others = np.setdiff1d(np.arange(recurrent.shape[1]), cols)
    recurrent[np.ix_(units, others)] = 0.0
    mask[np.ix_(units, others)] = True


def cut_recurrent_inputs(layer, rows: np.ndarray, keep_outputs: np.ndarray | None, edits: Edits) -> None:
    """Cuts input features off from a recurrent layer: its input-kernel rows become zero, every gate.

    Args:
        layer: A `SimpleRNN` / `GRU` / `LSTM`, or a `Bidirectional` of them (both directions are cut).
        rows: Boolean over the layer's input features: the rows to cut.
        keep_outputs: Units of the layer's output (a `Bidirectional`'s: both directions, concatenated)
            whose incoming weights are kept (units being revived may listen to one another), or None.
        edits: Where the new values go.
    """
    features = np.flatnonzero(rows)
    keep = np.zeros(0, np.int64) if keep_outputs is None else np.asarray(keep_outputs, np.int64)
    for rnn, offset in directions(layer):
        n = int(rnn.units)
        own = keep[(keep >= offset) & (keep < offset + n)] - offset
        kernel, mask = edits.get(rnn.cell.kernel)
        cols = _columns(rnn, np.setdiff1d(np.arange(n), own))
        kernel[np.ix_(features, cols)] = 0.0
        mask[np.ix_(features, cols)] = True


def retry_recurrent(
    target: UnitTarget,
    dead: dict[str, set[int]],
    dead_units: Callable[[], dict[str, set[int]]],
    tries: dict[tuple[str, int], int],
    rng: np.random.Generator,
) -> dict[str, set[int]]:
    """New incoming weights for a recurrent target's revived units that still never fire on the data.

    A unit gets up to four tries, as revive's other units: its candidate's incoming weights (input
    and recurrent columns, and bias) negated, then every gate's incoming weights drawn again (as the
    initializers draw them), and so on. Only the units' own re-initialised columns change: the outputs keep.

    Args:
        target: The revived units of one recurrent site.
        dead: Per site path, its units that never fire on the data (`second_chance`'s probe).
        dead_units: Runs the probe again.
        tries: Per `(site path, unit)`, how many tries it had; updated here.
        rng: Draws the new weights.

    Returns:
        The dead units after the last try.
    """
    rnn, path = target.site.recurrent, target.site.path
    cell = rnn.cell
    variables = [v for v in (cell.kernel, cell.recurrent_kernel, getattr(cell, "bias", None)) if v is not None]
    units = {int(u) for u in site_units(target)}
    while True:
        todo = [u for u in sorted(dead[path] & units) if tries.get((path, u), 0) < 4]
        if not todo:
            return dead
        values = [np.array(v.numpy()) for v in variables]
        redraw = [u for u in todo if tries.get((path, u), 0) % 2 == 1]
        for unit in todo:
            if tries.get((path, unit), 0) % 2 == 0:
                column = _CANDIDATE[type(rnn).__name__] * int(rnn.units) + unit
                for value in values:
                    value[..., column] = -value[..., column]
            tries[(path, unit)] = tries.get((path, unit), 0) + 1
        if redraw:
            cols = _columns(rnn, redraw)
            for value, (_, draw) in zip(values, _incoming(rnn, redraw, int(rng.integers(0, 2**31 - 1)), [], "", [])):
                value[:, cols] = draw[:, cols]
        for variable, value in zip(variables, values):
            variable.assign(value)
        dead = dead_units()

"""Entry-wise edits of layer variables, applied together and recorded as masks.

Every edit works on a numpy copy of a variable (`Edits.get`); `Edits.apply` assigns the edited
copies at once and records, per variable, a boolean mask of the entries that were written. The
masks are the contract with training: a callback resets the optimizer's moment slots for exactly
those entries (`deadrelu.fixes.revive.reset_optimizer_slots`).

Where a unit's weights sit depends on the layer kind (`deadrelu.fixes.graph.weighted_kind`):

- dense / conv: the unit's incoming weights are the kernel's last axis, `kernel[..., unit]`; an
  input row or channel `c` is read through `kernel[..., c, :]`;
- transpose (Conv*Transpose): the kernel is `(..., out, in)`, so output and input swap places;
- depthwise: output unit `c * multiplier + m` reads input channel `c` through `kernel[..., c, m]`;
- separable: a unit's incoming weights are its pointwise column; input channel `c` is read
  through the depthwise kernel `depthwise_kernel[..., c, :]`.

The edits ReDo needs (`deadrelu.fixes.revive`): `reinitialize` gives units fresh incoming weights drawn
from the layer's own initializer, `reset_batchnorm` a fresh BatchNormalization channel, and
`cut_inputs` zeroes the weights through which a layer reads some input rows or channels
(BatchNormalization: holds the channel at the constant it output).

The edit prune needs (`deadrelu.fixes.prune`) changes shapes instead: `shrunk_weights` deletes input
rows/channels and output units from a layer's weights, for a smaller twin of the layer.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from deadrelu.fixes.graph import UnitTarget, is_batchnorm, weighted_kind


class Edits:
    """New values for entries of variables, applied together; records which entries changed.

    Example:
        >>> edits = Edits()
        >>> kernel, mask = edits.get(layer.kernel)
        >>> kernel[:, 3], mask[:, 3] = 0.0, True
        >>> edits.apply(masks, variables)
    """

    def __init__(self):
        self._values: dict[int, tuple[object, np.ndarray, np.ndarray]] = {}

    def get(self, variable) -> tuple[np.ndarray, np.ndarray]:
        """The working copy of a variable and its mask of edited entries (both edited in place).

        Args:
            variable: A Keras variable.

        Returns:
            `(value, mask)`: a numpy copy of the variable (with the edits so far) and a boolean
            array of its shape; set the mask wherever the value is written.
        """
        key = id(variable)
        if key not in self._values:
            value = np.array(variable.numpy())
            self._values[key] = (variable, value, np.zeros(value.shape, bool))
        _, value, mask = self._values[key]
        return value, mask

    def apply(self, masks: dict[str, np.ndarray], variables: dict[str, object]) -> list[tuple[str, str]]:
        """Assigns every edited variable and records it.

        Args:
            masks: Filled with, per edited variable (keyed by its `.path`), its mask of edited entries.
            variables: Filled with the edited variables, under the same keys.

        Returns:
            `(path, key)` for each variable keyed otherwise than by its path: should two edited
            variables share a path (models loaded with nested models can), the second is keyed
            `path#2`, and so on.
        """
        renamed = []
        for variable, value, mask in self._values.values():
            if not mask.any():
                continue
            variable.assign(value)
            key, n = variable.path, 1
            while key in masks:
                n += 1
                key = f"{variable.path}#{n}"
            if n > 1:
                renamed.append((variable.path, key))
            masks[key] = mask
            variables[key] = variable
        return renamed


def unit_index(kind: str, layer, unit: int) -> tuple:
    """Index of one output unit's incoming weights in the layer's (pointwise) kernel.

    Args:
        kind: The layer's `weighted_kind`.
        layer: The layer.
        unit: The output unit.

    Returns:
        A numpy index into the array returned by `kernel_of`.
    """
    if kind == "transpose":
        return (Ellipsis, unit, slice(None))
    if kind == "depthwise":
        multiplier = layer.depth_multiplier
        return (Ellipsis, unit // multiplier, unit % multiplier)
    return (Ellipsis, unit)


def kernel_of(kind: str, layer) -> tuple:
    """The kernel holding the layer's units' incoming weights, and that kernel's initializer.

    Args:
        kind: The layer's `weighted_kind`.
        layer: The layer.

    Returns:
        `(variable, initializer)`: the pointwise kernel of a separable convolution, else `kernel`.
    """
    if kind == "separable":
        return layer.pointwise_kernel, layer.pointwise_initializer
    return layer.kernel, (layer.depthwise_initializer if kind == "depthwise" else layer.kernel_initializer)


def reinitialize(target: UnitTarget, seed: int, scale: str, edits: Edits, notes: list[str]) -> None:
    """New incoming weights for the target's units; their bias; their BatchNormalization channel.

    Args:
        target: Units whose owner was found (`LayerGraph.find_owner`). Its `norm` is set here.
        seed: Seed of the draw.
        scale: "initializer" (weights as drawn) or "live" (each unit's weights rescaled to the
            mean norm of the live units' incoming weights).
        edits: Where the new values go.
        notes: Remarks are appended here (e.g. an initializer that gives no random draw).
    """
    layer = target.producer
    if layer is None:  # only a BatchNormalization channel: its input statistics still hold
        reset_batchnorm(target.batchnorm, target.units, target.live, target.threshold, edits, keep_statistics=True)
        return
    kind = weighted_kind(layer)
    kernel, _ = kernel_of(kind, layer)
    value, mask = edits.get(kernel)
    norms = [np.linalg.norm(value[unit_index(kind, layer, int(u))]) for u in target.live]
    target.norm = float(np.mean(norms)) if norms and scale == "live" else None
    for index, column in draw_columns(target, target.units, seed, notes):
        value[index] = column
        mask[index] = True
    if getattr(layer, "bias", None) is not None:
        bias, bias_mask = edits.get(layer.bias)
        bias[target.units] = 0.0 if target.batchnorm is not None else target.threshold
        bias_mask[target.units] = True
    if target.batchnorm is not None:
        reset_batchnorm(target.batchnorm, target.units, target.live, target.threshold, edits)


def draw_columns(
    target: UnitTarget, units: Iterable[int], seed: int, notes: list[str]
) -> list[tuple[tuple, np.ndarray]]:
    """Fresh incoming weights for `units` of the target's producer.

    The whole kernel is drawn from a seeded copy of the layer's own initializer (so fan-in and
    fan-out scaling are the layer's); when `target.norm` is set, each unit's slice is then
    rescaled to it.

    Args:
        target: The units' target (its `producer` and `norm` are read).
        units: The units to draw for.
        seed: Seed of the draw.
        notes: Remarks are appended here.

    Returns:
        `(kernel index, values)` pairs, one per unit.
    """
    layer = target.producer
    kind = weighted_kind(layer)
    kernel, initializer = kernel_of(kind, layer)
    draw = _draw(initializer, tuple(kernel.shape), seed, kernel.dtype)
    if draw is None:
        notes.append(f"{layer.name}: its kernel initializer gives no random draw; used glorot_uniform")
        draw = _draw("glorot_uniform", tuple(kernel.shape), seed, kernel.dtype)
    columns = []
    for unit in units:
        index = unit_index(kind, layer, int(unit))
        column = draw[index]
        norm = float(np.linalg.norm(column))
        if target.norm and norm > 0:
            column = column * (target.norm / norm)
        columns.append((index, column))
    return columns


def _draw(initializer, shape: tuple, seed: int, dtype) -> np.ndarray | None:
    """A draw of the whole kernel from a seeded copy of the initializer (None if constant)."""
    draw = seeded_draw(initializer, shape, seed, dtype)
    if draw is not None and draw.size > 1 and float(np.std(draw)) == 0.0:
        return None  # zeros / ones / constant: no way to break symmetry
    return draw


def seeded_draw(initializer, shape: tuple, seed: int, dtype) -> np.ndarray | None:
    """A draw from a copy of `initializer` seeded with `seed`; None if it cannot be re-seeded or called."""
    import keras

    try:
        init = keras.initializers.get(initializer)
        config = init.get_config()
        if "seed" in config:
            init = type(init).from_config({**config, "seed": seed})
        return np.array(init(shape, dtype=dtype))
    except Exception:  # noqa: BLE001 - an initializer we cannot re-seed or call
        return None


def reset_batchnorm(
    layer, units: np.ndarray, live: np.ndarray, beta_value: float, edits: Edits, *, keep_statistics: bool = False
) -> None:
    """Gives BatchNormalization channels a fresh state in which their ReLU can fire.

    `gamma` becomes the mean |gamma| of the live channels and `beta` `beta_value`; the moving
    mean becomes 0 and the moving variance the mean of the live channels' (the old statistics
    are what kept the unit dead).

    Args:
        layer: The BatchNormalization layer.
        units: The channels to reset.
        live: The channels left as they are (their parameters set the scale).
        beta_value: The new `beta` (the ReLU's threshold).
        edits: Where the new values go.
        keep_statistics: Keep the moving mean and variance: the channel's input was not drawn
            again, so they still describe it; the unit then fires where its input is above its mean.
            Defaults to False.
    """
    if layer.scale:
        gamma, mask = edits.get(layer.gamma)
        gamma[units] = float(np.mean(np.abs(gamma[live]))) if live.size else 1.0
        mask[units] = True
    if layer.center:
        beta, mask = edits.get(layer.beta)
        beta[units] = beta_value
        mask[units] = True
    if keep_statistics:
        return
    mean, mask = edits.get(layer.moving_mean)
    mean[units] = 0.0
    mask[units] = True
    variance, mask = edits.get(layer.moving_variance)
    variance[units] = float(np.mean(variance[live])) if live.size else 1.0
    mask[units] = True


def cut_inputs(layer, rows: np.ndarray, keep_outputs: np.ndarray | None, edits: Edits) -> None:
    """Cuts input rows/channels off from a layer's output units: their weights become zero.

    Args:
        layer: A layer with per-channel weights (`weighted_kind`) or a BatchNormalization.
        rows: Boolean, over the layer's input channel axis (`deadrelu.fixes.graph.input_channel_axis`):
            the rows/channels to cut.
        keep_outputs: Output units whose incoming weights are kept (units being re-initialised
            may listen to one another), or None.
        edits: Where the new values go.
    """
    if is_batchnorm(layer):
        if keep_outputs is not None:
            rows = rows.copy()
            rows[keep_outputs] = False
        _hold_batchnorm(layer, rows, edits)
        return
    kind = weighted_kind(layer)
    channels = np.flatnonzero(rows)
    if kind == "separable":
        kernel, mask = edits.get(layer.depthwise_kernel)
        kernel[..., channels, :] = 0.0
        mask[..., channels, :] = True
        return
    kernel, mask = edits.get(layer.kernel)
    if kind == "depthwise":
        multiplier = layer.depth_multiplier
        keep = np.zeros(kernel.shape[-2] * multiplier, bool)
        if keep_outputs is not None:
            keep[keep_outputs] = True
        for c in channels:
            cols = [m for m in range(multiplier) if not keep[c * multiplier + m]]
            kernel[..., c, cols] = 0.0
            mask[..., c, cols] = True
        return
    out_axis = -2 if kind == "transpose" else -1
    in_axis = -1 if kind == "transpose" else -2
    outputs = kernel.shape[out_axis]
    cut = np.ones(outputs, bool)
    if keep_outputs is not None:
        cut[keep_outputs] = False
    groups = getattr(layer, "groups", 1) or 1
    per_group_in = kernel.shape[in_axis]
    per_group_out = outputs // groups
    for c in channels:
        group = c // per_group_in if groups > 1 else 0
        cols = np.zeros(outputs, bool)
        cols[group * per_group_out : (group + 1) * per_group_out] = True
        cols &= cut
        index = [slice(None)] * kernel.ndim
        index[in_axis] = c % per_group_in
        index[out_axis] = cols
        kernel[tuple(index)] = 0.0
        mask[tuple(index)] = True


def _hold_batchnorm(layer, rows: np.ndarray, edits: Edits) -> None:
    """gamma → 0, beta → the constant the channel output while its input was 0."""
    channels = np.flatnonzero(rows)
    gamma, gamma_mask = edits.get(layer.gamma)
    mean = np.asarray(layer.moving_mean.numpy(), np.float64)[channels]
    variance = np.asarray(layer.moving_variance.numpy(), np.float64)[channels]
    inv = np.asarray(gamma, np.float64)[channels] / np.sqrt(variance + layer.epsilon)
    if layer.center:
        beta, beta_mask = edits.get(layer.beta)
        beta[channels] = np.asarray(beta, np.float64)[channels] - mean * inv
        beta_mask[channels] = True
    gamma[channels] = 0.0
    gamma_mask[channels] = True


def shrunk_weights(
    layer, *, rows: np.ndarray | None = None, units: np.ndarray | None = None, bias: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """A layer's weights with some input rows/channels and output units deleted.

    Args:
        layer: A layer with per-channel weights (`weighted_kind`) or a BatchNormalization.
        rows: Boolean, over the layer's input channel axis (`deadrelu.fixes.graph.input_channel_axis`):
            the input rows/channels to delete. A DepthwiseConv* loses the output channels they
            make as well; a BatchNormalization loses those channels. Defaults to None (none).
        units: Boolean, over the layer's output units: the units to delete (a BatchNormalization:
            its channels). Not for DepthwiseConv*, whose units follow their input channels.
            Defaults to None (none).
        bias: Added to the bias, over the output units before any is deleted; a layer without a
            bias gets this one. Defaults to None (the bias as it is).

    Returns:
        Per attribute of the layer holding a variable ("kernel", "bias", "gamma", ...), its new
        value. Variables not listed keep their value.

    Example:
        >>> new = shrunk_weights(dense, rows=dead_inputs, units=dead_units)
        >>> smaller.kernel.assign(new["kernel"])
    """
    if is_batchnorm(layer):
        size = int(layer.moving_mean.shape[0])
        drop = _mask(rows, size) | _mask(units, size)
        names = ("gamma", "beta", "moving_mean", "moving_variance")
        return {name: _keep(getattr(layer, name), -1, drop) for name in names if getattr(layer, name, None) is not None}
    kind = weighted_kind(layer)
    out: dict[str, np.ndarray] = {}
    if kind == "depthwise":
        if units is not None and np.any(units):
            raise ValueError(f"the units of DepthwiseConv '{layer.name}' follow its input channels: delete those")
        channels = int(layer.kernel.shape[-2])
        drop = _mask(rows, channels)
        out["kernel"] = _keep(layer.kernel, -2, drop)
        units = np.repeat(drop, layer.depth_multiplier)
    elif kind == "separable":
        channels = int(layer.depthwise_kernel.shape[-2])
        drop = _mask(rows, channels)
        out["depthwise_kernel"] = _keep(layer.depthwise_kernel, -2, drop)
        pointwise = _keep(layer.pointwise_kernel, -2, np.repeat(drop, layer.depth_multiplier))
        units = _mask(units, pointwise.shape[-1])
        out["pointwise_kernel"] = np.compress(~units, pointwise, axis=-1)
    else:
        in_axis, out_axis = (-1, -2) if kind == "transpose" else (-2, -1)
        kernel = _keep(layer.kernel, in_axis, _mask(rows, int(layer.kernel.shape[in_axis])))
        units = _mask(units, kernel.shape[out_axis])
        out["kernel"] = np.compress(~units, kernel, axis=out_axis)
    current = getattr(layer, "bias", None)
    if current is not None or bias is not None:
        value = np.zeros(len(units), np.float32) if current is None else np.array(current.numpy())
        if bias is not None:
            value = (value.astype(np.float64) + bias).astype(value.dtype)
        out["bias"] = value[~units]
    return out


def _mask(selected: np.ndarray | None, size: int) -> np.ndarray:
    return np.zeros(size, bool) if selected is None else np.asarray(selected, bool)


def _keep(variable, axis: int, drop: np.ndarray) -> np.ndarray:
    return np.compress(~drop, np.array(variable.numpy()), axis=axis)

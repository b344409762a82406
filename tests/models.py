"""Shared helpers for the reference tests: tiny models and plain-numpy reference statistics.

Nothing here imports deadrelu's internals: the reference numbers are computed from tensors
materialised with plain Keras (sub-models, direct layer calls) and reduced with numpy, following
the definitions of docs/report-format.md, so that the engine can be checked against them.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

RTOL, ATOL = 1e-5, 1e-6
L = keras.layers


# -- reference statistics (docs/report-format.md, "Words") ------------------------------------


@dataclasses.dataclass
class RefSite:
    """Reference statistics of one site, computed with numpy from its materialised outputs."""

    units: int
    positions: int
    calls: int
    samples: int  # sample-calls (N x calls)
    fires: np.ndarray
    active_rate: np.ndarray
    sample_active_rate: np.ndarray
    mean_abs: np.ndarray
    dormancy: np.ndarray
    max_output: np.ndarray
    saturated_rate: np.ndarray | None
    dead: list
    dying: list
    saturated: list
    flagged: bool


def _units_last(array: np.ndarray, channel_axis: int) -> np.ndarray:
    """(N, ..., C, ...) → (N, S, C): units on the last axis, every other non-batch axis a position."""
    a = np.moveaxis(np.asarray(array), channel_axis, -1)
    return a.reshape(a.shape[0], -1, a.shape[-1])


def reference_stats(
    calls,
    *,
    channel_axis: int = -1,
    max_value: float | None = None,
    dying: float = 0.01,
    flag: float = 0.10,
    saturated: float = 0.99,
) -> RefSite:
    """Every per-unit statistic and verdict of one site, from its outputs.

    Args:
        calls: The site's output arrays, one per call of the site in a forward pass (each of
            shape (N, ...)). Several calls count as more samples (N x calls).
        channel_axis: The unit axis of each output.
        max_value: The cap for capped sites (relu6, ReLU(max_value=...)), else None.
        dying, flag, saturated: Verdict thresholds.
    """
    if not isinstance(calls, (list, tuple)):
        calls = [calls]
    flats = [_units_last(a, channel_axis) for a in calls]
    a = np.concatenate(flats, axis=0)
    n, s, c = a.shape
    fire = a != 0
    fires = fire.sum(axis=(0, 1)).astype(np.int64)
    active = fires / (n * s)
    sample_active = fire.any(axis=1).sum(axis=0) / n
    mean_abs = np.abs(a.astype(np.float64)).mean(axis=(0, 1))
    scale = mean_abs.mean()
    dormancy = mean_abs / scale if scale > 0 else np.zeros_like(mean_abs)
    sat_rate = None if max_value is None else (a == np.float32(max_value)).sum(axis=(0, 1)) / (n * s)
    dead, dying_units, sat_units = [], [], []
    for j in range(c):  # first match wins: dead, saturated, dying, healthy
        if fires[j] == 0:
            dead.append(j)
        elif sat_rate is not None and sat_rate[j] >= saturated:
            sat_units.append(j)
        elif active[j] < dying:
            dying_units.append(j)
    return RefSite(
        units=c,
        positions=s,
        calls=len(calls),
        samples=n,
        fires=fires,
        active_rate=active,
        sample_active_rate=sample_active,
        mean_abs=mean_abs,
        dormancy=dormancy,
        max_output=a.max(axis=(0, 1)).astype(np.float64),
        saturated_rate=sat_rate,
        dead=dead,
        dying=dying_units,
        saturated=sat_units,
        flagged=len(dead) / c >= flag,
    )


def reference_grad_stats(grads, *, channel_axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(grad_mean_abs, grad_zero_rate) per unit from ∂ℓₙ/∂z arrays (one per call of the site)."""
    if not isinstance(grads, (list, tuple)):
        grads = [grads]
    g = np.concatenate([_units_last(a, channel_axis) for a in grads], axis=0).astype(np.float64)
    return np.abs(g).mean(axis=(0, 1)), (g == 0).mean(axis=(0, 1))


def close(actual, expected, what: str = "") -> None:
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=RTOL, atol=ATOL, err_msg=what
    )


def assert_site_matches(site, ref: RefSite) -> None:
    """Compares a `deadrelu.SiteReport` with the numpy reference: counts exactly, rates to 1e-5."""
    where = f"site {site.path}"
    assert site.units == ref.units, where
    assert site.positions == ref.positions, where
    assert site.calls == ref.calls, where
    np.testing.assert_array_equal(np.asarray(site.fires), ref.fires, err_msg=f"{where}: fires")
    close(site.active_rate, ref.active_rate, f"{where}: active_rate")
    close(site.sample_active_rate, ref.sample_active_rate, f"{where}: sample_active_rate")
    close(site.mean_abs, ref.mean_abs, f"{where}: mean_abs")
    close(site.dormancy, ref.dormancy, f"{where}: dormancy")
    close(site.max_output, ref.max_output, f"{where}: max_output")
    if ref.saturated_rate is None:
        assert site.saturated_rate is None, f"{where}: uncapped site reports saturated_rate"
    else:
        assert site.saturated_rate is not None, f"{where}: capped site has no saturated_rate"
        close(site.saturated_rate, ref.saturated_rate, f"{where}: saturated_rate")
    assert list(site.dead) == ref.dead, f"{where}: dead"
    assert list(site.saturated) == ref.saturated, f"{where}: saturated"
    assert list(site.dying) == ref.dying, f"{where}: dying"
    assert site.flagged == ref.flagged, f"{where}: flagged"


def assert_reports_equal(a, b) -> None:
    """Two reports of the same model on the same data (e.g. two batch sizes) agree."""
    assert [s.path for s in a.sites] == [s.path for s in b.sites]
    for sa, sb in zip(a.sites, b.sites):
        assert (sa.units, sa.positions, sa.calls) == (sb.units, sb.positions, sb.calls)
        np.testing.assert_array_equal(sa.fires, sb.fires)
        assert (sa.dead, sa.dying, sa.saturated, sa.flagged) == (sb.dead, sb.dying, sb.saturated, sb.flagged)
        for name in (
            "active_rate",
            "sample_active_rate",
            "mean_abs",
            "dormancy",
            "max_output",
            "saturated_rate",
            "grad_mean_abs",
            "grad_zero_rate",
        ):
            va, vb = getattr(sa, name), getattr(sb, name)
            assert (va is None) == (vb is None), name
            if va is not None:
                np.testing.assert_allclose(va, vb, rtol=RTOL, atol=ATOL, err_msg=f"{sa.path}: {name}")


# -- materialising tensors --------------------------------------------------------------------


def to_numpy(t) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(t))


def outputs_of(inputs, tensors, x) -> list[np.ndarray]:
    """Evaluates symbolic `tensors` of a functional graph on `x` with a separate multi-output model."""
    if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
        inputs = inputs[0]
    extractor = keras.Model(inputs, list(tensors))
    out = extractor(x, training=False)
    return [to_numpy(t) for t in (out if isinstance(out, (list, tuple)) else [out])]


def leaves(model) -> list:
    """Leaf layers of a (possibly nested) Sequential chain, in order, InputLayers left out."""
    out = []
    for layer in model.layers:
        if isinstance(layer, L.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            out.extend(leaves(layer))
        else:
            out.append(layer)
    return out


def all_layers(model) -> list:
    """The model and every layer it holds, recursively."""
    return list(model._flatten_layers(include_self=True, recursive=True))


def linear_clone(layer, input_shape):
    """A copy of a layer with a fused activation, without the activation, sharing nothing."""
    config = layer.get_config()
    config.update(activation="linear", name=f"{layer.name}_ref_linear")
    clone = type(layer).from_config(config)
    clone.build(input_shape)
    clone.set_weights(layer.get_weights())
    return clone


def plant_bias(layer, values: dict) -> None:
    """Sets chosen entries of a layer's bias (e.g. a large negative one makes a unit dead)."""
    bias = to_numpy(layer.bias).copy()
    for index, value in values.items():
        bias[index] = value
    layer.bias.assign(bias)


def randomize_batchnorm(bn, rng: np.random.Generator, beta: dict | None = None) -> None:
    """Non-trivial moving statistics and affine parameters, so inference mode is really tested."""
    c = bn.gamma.shape[0]
    gamma = rng.uniform(0.5, 2.0, c).astype(np.float32)
    b = rng.normal(0.0, 0.5, c).astype(np.float32)
    for index, value in (beta or {}).items():
        b[index] = value
    bn.set_weights([gamma, b, rng.normal(0.0, 0.5, c).astype(np.float32), rng.uniform(0.5, 2.0, c).astype(np.float32)])


def random_x(shape, n: int, seed: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n,) + tuple(shape)) * scale).astype(np.float32)


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels]

"""Step-by-step references for recurrent sites, in numpy (float64) over a layer's own weights.

Keras's equations written out: an LSTM's gates i, f, c, o with `c = f·c + i·relu(z_c)` and
`h = o·relu(c)`; a GRU with `reset_after=True` (Keras's default), `hh = relu(x_h + r·(h U_h + b_h))`.
A masked step carries the state over; `backwards` reads the sequence reversed (`go_backwards`).
Shared by tests/test_recurrent.py and tests/backends; nothing here imports deadrelu or a backend.
"""

from __future__ import annotations

import numpy as np


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def lstm_steps(layer, x, mask=None, backwards=False):
    """Per step of an LSTM: (z_candidate, c) — the two places its cell applies its ReLU."""
    w, u, b = (a.astype(np.float64) for a in layer.get_weights())
    n = layer.units
    h, c = np.zeros((len(x), n)), np.zeros((len(x), n))
    steps = range(x.shape[1] - 1, -1, -1) if backwards else range(x.shape[1])
    candidates, states = [], []
    for t in steps:
        z = x[:, t].astype(np.float64) @ w + h @ u + b
        i, f, zc, o = sigmoid(z[:, :n]), sigmoid(z[:, n : 2 * n]), z[:, 2 * n : 3 * n], sigmoid(z[:, 3 * n :])
        new_c = f * c + i * np.maximum(zc, 0.0)
        new_h = o * np.maximum(new_c, 0.0)
        candidates.append(zc)
        states.append(new_c)
        keep = np.ones((len(x), 1), bool) if mask is None else mask[:, t : t + 1]
        h, c = np.where(keep, new_h, h), np.where(keep, new_c, c)
    return candidates, states


def gru_steps(layer, x, mask=None, backwards=False):
    """Per step of a GRU (`reset_after=True`, Keras's default): z of its candidate `hh`."""
    w, u, b = (a.astype(np.float64) for a in layer.get_weights())
    n = layer.units
    h = np.zeros((len(x), n))
    steps = range(x.shape[1] - 1, -1, -1) if backwards else range(x.shape[1])
    candidates = []
    for t in steps:
        mx = x[:, t].astype(np.float64) @ w + b[0]
        mh = h @ u + b[1]
        zg = sigmoid(mx[:, :n] + mh[:, :n])
        r = sigmoid(mx[:, n : 2 * n] + mh[:, n : 2 * n])
        zh = mx[:, 2 * n :] + r * mh[:, 2 * n :]
        new_h = zg * h + (1 - zg) * np.maximum(zh, 0.0)
        candidates.append(zh)
        keep = np.ones((len(x), 1), bool) if mask is None else mask[:, t : t + 1]
        h = np.where(keep, new_h, h)
    return candidates


def plant_candidate(layer, units, gates: int, gate: int, value: float = -100.0) -> None:
    """A bias of `value` (-100) on the candidate's chosen units: they never fire (nor, in an LSTM, their state)."""
    weights = layer.get_weights()
    bias = weights[2]
    n = layer.units
    for unit in units:
        if bias.ndim == 2:  # GRU reset_after: input and recurrent biases
            bias[:, gate * n + unit] = value
        else:
            bias[gate * n + unit] = value
    layer.set_weights(weights)
    assert gates in (3, 4)

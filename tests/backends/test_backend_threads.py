"""Two threads scanning two models with op-level sites at once, on the active backend.

tests/test_threads.py checks this at length on TensorFlow; here, the same meeting on JAX and PyTorch
(where `jax.jit` traces, or PyTorch runs every batch eagerly, in the scanning thread): each model
holds a layer whose `call` waits on a `threading.Barrier` in the scanning threads, so both scans are
inside a forward pass with the other's interception active. Both reports must match numpy on the
sites' outputs computed by a plain forward pass, and every wrapped function must be the original
object afterwards.
"""

from __future__ import annotations

import threading

import keras
from keras import ops

import deadrelu
from deadrelu._keras_compat import relu_functions
from models import L, assert_site_matches, plant_bias, random_x, reference_stats, to_numpy

TIMEOUT = 60
SPELLINGS = {
    "ops.relu": ops.relu,
    "capped": lambda t: keras.activations.relu(t, max_value=2.0),
    "ops.relu6": ops.relu6,
}
CAPS = {"ops.relu": None, "capped": 2.0, "ops.relu6": 6.0}
MEETINGS: dict[int, threading.Barrier] = {}  # per scanning thread id


class _OpDense(L.Layer):
    def __init__(self, units: int, spelling: str, **kwargs):
        super().__init__(**kwargs)
        self.spelling = spelling
        self.dense = L.Dense(units)

    def call(self, x):
        return SPELLINGS[self.spelling](self.dense(x))


class _Meet(L.Layer):
    def call(self, x):
        barrier = MEETINGS.get(threading.get_ident())
        if barrier is not None:
            barrier.wait()
        return x


def _model(seed: int, first: str, second: str) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5,))
    a, b = _OpDense(8, first, name="first"), _OpDense(6, second, name="second")
    model = keras.Model(inputs, L.Dense(3, name="head")(b(_Meet()(a(inputs)))))
    plant_bias(a.dense, {1: -100.0, 4: -100.0})
    return model


MODELS = {"one": (1, "ops.relu", "capped"), "two": (2, "capped", "ops.relu6")}
X = {name: random_x((5,), 24, seed, 2.0) for name, (seed, _, _) in MODELS.items()}


def _scan(name, model):
    return deadrelu.scan(model, X[name], batch_size=10, verbose=0)


def _references(model, spec, x) -> dict:
    """Each site's statistics from numpy on its outputs in a plain forward pass (no scan)."""
    _, first, second = spec
    a, b = model.get_layer("first"), model.get_layer("second")
    h1 = SPELLINGS[first](a.dense(x))
    h2 = SPELLINGS[second](b.dense(h1))
    return {
        "first:relu_0": reference_stats(to_numpy(h1), max_value=CAPS[first]),
        "second:relu_0": reference_stats(to_numpy(h2), max_value=CAPS[second]),
    }


def test_two_threads_scan_two_models_at_once():
    originals = [owner.__dict__[name] for owner, name in relu_functions()]
    models = {name: _model(*spec) for name, spec in MODELS.items()}  # here: seeding is process-wide
    expected = {name: _references(models[name], MODELS[name], X[name]) for name in MODELS}
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    results, errors = {}, {}

    def run(name):
        MEETINGS[threading.get_ident()] = barrier
        try:
            results[name] = _scan(name, models[name])
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors[name] = exc
        finally:
            MEETINGS.pop(threading.get_ident(), None)

    threads = [threading.Thread(target=run, args=(name,)) for name in MODELS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 3)
    assert not errors, errors
    for name in MODELS:
        assert [s.path for s in results[name].sites] == list(expected[name])
        assert {1, 4} <= set(results[name].site("first:relu_0").dead)
        for site in results[name].sites:
            assert_site_matches(site, expected[name][site.path])
    assert all(owner.__dict__[name] is fn for (owner, name), fn in zip(relu_functions(), originals))

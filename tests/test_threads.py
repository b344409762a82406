"""Scans in several threads at once: the op-level interception is per thread and context.

Two threads scan two models whose ReLUs are function calls (op-level sites, through every path the
interception wraps: `keras.ops.relu`, `keras.activations.relu` with a cap, `keras.ops.relu6`, and
TensorFlow's `tf.nn.relu` seen by the op callback). Each model holds a `Rendezvous` layer between
its ReLUs whose `call` waits on a `threading.Barrier` in the scanning threads, so both scans are
inside their forward pass (the eager pass, then the trace of the step), with ReLUs applied before
and after the meeting, while the other's interception is active. Each report must equal a
single-threaded scan of a twin of the same model (the same weights; a twin, because a scan reuses
the traced step of a model it has scanned before), every wrapped function must be the original
object afterwards, and nothing may keep a model alive.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import deadrelu
from deadrelu._keras_compat import add_tf_op_callback, relu_functions, remove_tf_op_callback
from models import L, assert_reports_equal, plant_bias, random_x, to_numpy

N, BATCH = 24, 10
TIMEOUT = 60  # seconds a thread waits for the other before the test fails (never reached when it works)

SPELLINGS: dict[str, Callable] = {
    "ops.relu": ops.relu,
    "capped": lambda t: keras.activations.relu(t, max_value=2.0),
    "ops.relu6": ops.relu6,
    "tf.nn.relu": tf.nn.relu,
}

# Per thread id: what `Rendezvous.call` runs in that thread (nothing in threads not listed).
HOOKS: dict[int, Callable[[], None]] = {}


class OpDense(L.Layer):
    """`relu(dense(x))` with the ReLU applied as a function call spelled `spelling`: an op-level site."""

    def __init__(self, units: int, spelling: str, **kwargs):
        super().__init__(**kwargs)
        self.spelling = spelling
        self.dense = L.Dense(units)

    def call(self, x):
        return SPELLINGS[self.spelling](self.dense(x))


class Rendezvous(L.Layer):
    """The identity; its `call` runs the calling thread's hook (where the scans meet)."""

    def call(self, x):
        hook = HOOKS.get(threading.get_ident())
        if hook is not None:
            hook()
        return x


def _model(name: str, seed: int, first: str, second: str) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5,))
    a = OpDense(8, first, name="first")
    b = OpDense(6, second, name="second")
    model = keras.Model(inputs, L.Dense(3, activation="softmax", name="head")(b(Rendezvous()(a(inputs)))), name=name)
    plant_bias(a.dense, {1: -100.0, 4: -100.0})  # dead by construction
    plant_bias(b.dense, {2: -100.0})
    return model


def alpha() -> keras.Model:
    return _model("alpha", 1, "ops.relu", "capped")


def beta() -> keras.Model:
    return _model("beta", 2, "tf.nn.relu", "ops.relu6")


X = {"alpha": random_x((5,), N, 1, 2.0), "beta": random_x((5,), N, 2, 2.0)}
PLANTED = {"first:relu_0": {1, 4}, "second:relu_0": {2}}  # dead units, in both models


def _scan(model):
    return deadrelu.scan(model, X[model.name], batch_size=BATCH, verbose=0)


def _originals() -> list:
    """What every function the interception wraps is now, and TensorFlow's eager execute."""
    from tensorflow.python.eager import execute

    return [owner.__dict__[name] for owner, name in relu_functions()] + [execute.execute]


def _assert_restored(originals: list, models) -> None:
    from tensorflow.python.eager import context

    now = _originals()
    assert len(now) == len(originals) and all(a is b for a, b in zip(now, originals))
    for model in models:
        assert all("call" not in layer.__dict__ for layer in [model] + model._flatten_layers(recursive=True))
    assert not context.context().op_callbacks


def _run_threads(targets: dict[str, Callable[[], object]]) -> tuple[dict, dict]:
    """Runs each target in a thread of its own; returns (results, exceptions) by name."""
    results, errors = {}, {}

    def run(name, target):
        try:
            results[name] = target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors[name] = exc
        finally:
            HOOKS.pop(threading.get_ident(), None)

    threads = {name: threading.Thread(target=run, args=(name, target), name=name) for name, target in targets.items()}
    for thread in threads.values():
        thread.start()
    for thread in threads.values():
        thread.join(TIMEOUT * 3)
        assert not thread.is_alive(), f"thread {thread.name} is stuck"
    return results, errors


def _with_hook(hook: Callable[[], None], target: Callable[[], object]) -> Callable[[], object]:
    def run():
        HOOKS[threading.get_ident()] = hook
        return target()

    return run


def _assert_dead(report, name: str) -> None:
    assert [s.path for s in report.sites] == list(PLANTED)
    assert all(PLANTED[s.path] <= set(s.dead) for s in report.sites)
    assert [s.kind for s in report.sites] == (
        ["op:relu", "op:relu(max_value=2)"] if name == "alpha" else ["op:relu", "op:relu6"]
    )


def _died(refs) -> bool:
    gc.collect()
    return all(ref() is None for ref in refs)


def test_two_threads_scan_two_models_at_once_as_one_thread_would():
    expected = {"alpha": _scan(alpha()), "beta": _scan(beta())}
    originals = _originals()
    models = {"alpha": alpha(), "beta": beta()}
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    met = []

    def meet():
        met.append(threading.get_ident())
        barrier.wait()

    results, errors = _run_threads({name: _with_hook(meet, lambda m=model: _scan(m)) for name, model in models.items()})
    assert not errors, errors
    assert len(met) >= 4  # both threads met in the eager pass and in the trace, at least
    for name in models:
        _assert_dead(results[name], name)
        assert_reports_equal(results[name], expected[name])
    _assert_restored(originals, models.values())
    refs = [weakref.ref(model) for model in models.values()]
    del models, results, expected
    assert _died(refs)


class Boom(Exception):
    """Raised inside one scan's forward pass."""


def _caused_by(exc: BaseException, kind: type) -> bool:
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def test_an_error_in_one_scan_leaves_the_other_measured_and_restores_everything():
    expected = _scan(beta())
    originals = _originals()
    models = {"alpha": alpha(), "beta": beta()}
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    failed = threading.Event()
    seen_while_one_runs = []

    def fail():
        barrier.wait()
        failed.set()
        raise Boom("inside the forward pass")

    def wait_for_the_failure():
        HOOKS.pop(threading.get_ident())  # once: the eager pass
        barrier.wait()
        assert failed.wait(TIMEOUT)
        failing_thread.join(TIMEOUT)
        seen_while_one_runs.append(_originals())

    failing_thread = None

    def start():
        nonlocal failing_thread
        failing_thread = threading.current_thread()
        return _scan(models["alpha"])

    results, errors = _run_threads(
        {"alpha": _with_hook(fail, start), "beta": _with_hook(wait_for_the_failure, lambda: _scan(models["beta"]))}
    )
    assert set(errors) == {"alpha"} and _caused_by(errors["alpha"], Boom)
    # While the second scan still ran, the functions stayed wrapped for it.
    [during] = seen_while_one_runs
    assert not any(a is b for a, b in zip(during[:-1], originals[:-1]))
    _assert_dead(results["beta"], "beta")
    assert_reports_equal(results["beta"], expected)
    _assert_restored(originals, models.values())
    refs = [weakref.ref(model) for model in models.values()]
    models.clear()  # the models' only references (the threads' closures read this dict)
    errors.clear()  # its traceback holds the frames that ran the model
    assert _died(refs)


def test_relus_in_a_third_thread_are_not_counted_while_a_scan_runs():
    expected = _scan(alpha())
    originals = _originals()
    model, other = alpha(), beta()
    plain = {"alpha": to_numpy(model(X["alpha"])), "beta": to_numpy(other(X["beta"]))}
    inside, done = threading.Event(), threading.Event()
    outside = {}
    x = np.linspace(-3.0, 8.0, 12, dtype="float32").reshape(2, 6)

    def pause():
        HOOKS.pop(threading.get_ident())  # once: inside the eager pass, the scan's layers on the stack
        inside.set()
        assert done.wait(TIMEOUT)

    def third():
        assert inside.wait(TIMEOUT)
        try:
            outside["relus"] = [to_numpy(fn(x)) for fn in SPELLINGS.values()]
            outside["model"] = to_numpy(model(X["alpha"]))  # the very model being scanned
            outside["other"] = to_numpy(other(X["beta"]))
        finally:
            done.set()

    results, errors = _run_threads({"scan": _with_hook(pause, lambda: _scan(model)), "third": third})
    assert not errors, errors
    # The third thread computed the plain functions...
    relu = np.maximum(x, 0.0)
    for got, want in zip(outside["relus"], [relu, np.minimum(relu, 2.0), np.minimum(relu, 6.0), relu]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(outside["model"], plain["alpha"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(outside["other"], plain["beta"], rtol=1e-6, atol=1e-7)
    # ...and the scan counted none of them: the same sites, calls and statistics as alone.
    _assert_dead(results["scan"], "alpha")
    assert_reports_equal(results["scan"], expected)
    _assert_restored(originals, [model, other])


def test_an_op_callback_survives_another_threads_removal_of_its_own():
    """TensorFlow runs eager ops through the op callbacks only while its `execute.execute` is switched
    to them, a process-wide switch its own `remove_op_callback` turns off when the calling thread
    has none left, under another thread's callbacks too."""
    from tensorflow.python.eager import context, execute
    from tensorflow.python.ops import gen_nn_ops

    before = execute.execute
    seen = []
    registered, removed_here = threading.Event(), threading.Event()

    def watch(op_type, inputs, attrs, outputs, op_name=None, graph=None):
        seen.append((threading.get_ident(), op_type))

    def mine(*args, **kwargs):
        return None

    def other_thread():
        add_tf_op_callback(watch)
        try:
            registered.set()
            assert removed_here.wait(TIMEOUT)
            # The path TensorFlow takes when its fast path falls back: through `execute.execute`.
            gen_nn_ops.relu_eager_fallback(tf.constant([-1.0, 2.0]), name=None, ctx=context.context())
        finally:
            remove_tf_op_callback(watch)

    thread = threading.Thread(target=other_thread)
    thread.start()
    assert registered.wait(TIMEOUT)
    add_tf_op_callback(mine)
    remove_tf_op_callback(mine)
    removed_here.set()
    thread.join(TIMEOUT)
    assert seen == [(thread.ident, b"Relu")]
    assert execute.execute is before
    assert not context.context().op_callbacks


def test_two_threads_scanning_one_model_take_turns_and_both_get_its_report():
    """One model, two threads at once (a service scanning one model for two requests): both reports exact."""
    expected = _scan(alpha())
    originals = _originals()
    model = alpha()
    inside = threading.Event()
    overlapped = []

    def first_hook():
        inside.set()  # the first scan is mid-pass: start the second now
        overlapped.append(HOOKS.get(threading.get_ident()))

    def second():
        assert inside.wait(TIMEOUT)
        return _scan(model)

    results, errors = _run_threads({"a": _with_hook(first_hook, lambda: _scan(model)), "b": second})
    assert not errors, errors
    assert overlapped  # the second scan started while the first was inside the model
    for report in results.values():
        _assert_dead(report, "alpha")
        assert_reports_equal(report, expected)
    _assert_restored(originals, [model])

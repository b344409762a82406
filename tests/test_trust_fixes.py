"""The smaller trust faults of issue 23, each proven on real models, real fits and real processes.

- Channels-first convolutions: Keras's TensorFlow backend adds the bias of a channels_first layer
  with as many channels as its last spatial size along that last axis (`deadrelu.fixes.bias_axis`).
  `prune` and `revive` still prove their result on such models, against a numpy computation of the
  model (bias per channel, Flatten of NCHW channel-major), and never create such a layer.
- A failed proof is an `OutputCheckError` (exit 4) whose cause says whose fault it is: deadrelu's
  on the very data the units were found dead on, the data's on other data.
- A revival keeps an optimizer's moving averages (`use_ema=True`) on the revived weights.
- `retrain` leaves the process's global random state as it found it.
- `DeadReluMonitor.check()` without a model says what to do.
- A crash in native code under the command line's quiet stderr still shows (a subprocess that
  aborts, or segfaults, inside a command).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import deadrelu
from deadrelu.errors import OutputCheckError
from deadrelu.fixes.bias_axis import misplaced_biases
from deadrelu.fixes.prune import prune_model

L = keras.layers
RELATIVE = 1e-5
DEAD = [1, 3]


# -- channels-first models and their numpy twin ------------------------------------------------


def channels_first_model(
    rank: int, filters: int, size: int, after: str, seed: int = 0, alive: float = 0.2
) -> keras.Model:
    """Conv{rank}D(channels_first, relu) → `after` → Dense, with channels `DEAD` dead by
    construction: a zero kernel and a negative bias; the others get the bias `alive`."""
    keras.utils.set_random_seed(seed)
    conv = {1: L.Conv1D, 2: L.Conv2D, 3: L.Conv3D}[rank]
    pool = {1: L.MaxPooling1D, 2: L.MaxPooling2D, 3: L.MaxPooling3D}[rank]
    inputs = keras.Input((2,) + (size,) * rank)
    x = conv(filters, 3, data_format="channels_first", activation="relu", name="conv")(inputs)
    if after == "pool":
        x = pool(2, data_format="channels_first", name="pool")(x)
    if after == "reshape":
        x = L.Reshape((filters, -1), name="reshape")(x)
    x = L.Flatten(name="flatten")(x)
    outputs = L.Dense(3, name="head")(x)
    model = keras.Model(inputs, outputs)
    kernel, bias = model.get_layer("conv").get_weights()
    kernel[..., DEAD] = 0.0
    bias[:] = alive
    bias[DEAD] = -0.5
    model.get_layer("conv").set_weights([kernel, bias])
    return model


def numpy_outputs(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """The model computed by numpy as the layers are documented: each conv channel gets its own bias."""
    kernel, bias = model.get_layer("conv").get_weights()
    rank = kernel.ndim - 2
    axes = tuple(range(2, 2 + rank))
    windows = sliding_window_view(x.astype(np.float64), kernel.shape[:rank], axis=axes)  # (n, c, *out, *k)
    letters = "xyz"[:rank]
    spec = f"nc{letters.upper()}{letters},{letters}co->no{letters.upper()}"
    y = np.einsum(spec, windows, kernel.astype(np.float64))
    y = np.maximum(y + bias.reshape((1, -1) + (1,) * rank), 0.0)
    names = [layer.name for layer in model.layers]
    if "pool" in names:
        cut = tuple(slice(0, (s // 2) * 2) for s in y.shape[2:])
        y = y[(slice(None), slice(None), *cut)]
        shape = y.shape[:2] + sum(((s // 2, 2) for s in y.shape[2:]), ())
        y = y.reshape(shape).max(axis=tuple(range(3, 2 + 2 * rank, 2)))
    flat = y.reshape(len(y), -1)  # NCHW row-major: channel-major features
    head, head_bias = model.get_layer("head").get_weights()
    return flat @ head + head_bias


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    scale = max(1.0, float(np.max(np.abs(b))))
    assert float(np.max(np.abs(np.asarray(a, np.float64) - b))) <= RELATIVE * scale


def probe_inputs(model: keras.Model, n: int = 24) -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 1, (n, *model.input_shape[1:])).astype(np.float32)


@pytest.mark.parametrize(
    "rank, filters, size, after",
    [
        (2, 6, 8, "flatten"),  # the model: 6 channels, 6 columns
        (1, 7, 9, "flatten"),  # Conv1D: 7 channels, 7 steps
        (2, 5, 8, "flatten"),
        (3, 5, 6, "flatten"),
        (2, 5, 10, "pool"),
        (2, 5, 8, "reshape"),
    ],
)
def test_prune_and_revive_channels_first_keep_the_outputs(rank, filters, size, after):
    model = channels_first_model(rank, filters, size, after)
    x = probe_inputs(model)
    expected = numpy_outputs(model, x)
    hit = misplaced_biases(model)
    assert hit == ({"conv": filters} if filters == size - 2 else {})
    if not hit:  # Keras computes these as documented, on every path
        assert_close(np.asarray(model(x)), expected)

    result = prune_model(model, x)
    assert result.removed == {"conv": DEAD} and result.passed
    assert result.model.get_layer("conv").filters == filters - len(DEAD)
    assert misplaced_biases(result.model) == {}
    assert_close(np.asarray(result.model(x)), expected)  # eager call, on the pruned model
    assert_close(result.model.predict(x, verbose=0), expected)
    assert any("Keras bug" in note for note in result.notes) == bool(hit)

    revived = deadrelu.revive_model(model, x, seed=0)
    assert revived.revived == {"conv": DEAD}
    assert revived.check.max_abs_diff <= RELATIVE * max(1.0, revived.check.scale)
    assert_close(revived.model.predict(x, verbose=0), expected)  # as fit and predict run it (CPU)


def test_prune_never_leaves_as_many_channels_as_columns():
    """8 channels, 6 columns, 2 dead: removing both would leave a layer Keras computes wrongly."""
    model = channels_first_model(2, 8, 8, "flatten")
    x = probe_inputs(model)
    result = prune_model(model, x)
    assert result.removed == {"conv": [1]} and result.kept == {"conv": [3]}
    assert "as many channels as its last axis" in result.skipped["conv"]
    assert result.model.get_layer("conv").filters == 7 and misplaced_biases(result.model) == {}
    assert_close(np.asarray(result.model(x)), numpy_outputs(model, x))


def test_prune_keeps_the_units_of_a_layer_keras_computes_wrongly_everywhere():
    """Conv3D runs under XLA inside Keras: its misplaced bias is there in every mode, and removing
    channels would change the model (measured), so they stay, with the reason. (The live channels'
    bias is 0, so that the dead ones stay dead under the misplaced bias too.)"""
    model = channels_first_model(3, 5, 7, "flatten", alive=0.0)
    x = probe_inputs(model, 12)
    assert misplaced_biases(model) == {"conv": 5}
    assert np.max(np.abs(model.predict(x, verbose=0) - numpy_outputs(model, x))) > 1e-3  # Keras's bug, measured
    result = prune_model(model, x)
    assert result.model is None and result.kept == {"conv": DEAD}
    assert "Keras" in result.skipped["conv"]


# -- a failed proof: whose fault ------------------------------------------------------------------


def dense_model(seed: int = 3) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu", name="h"), L.Dense(3, name="out")])
    kernel, bias = model.get_layer("h").get_weights()
    bias[:] = 3.0
    bias[[2, 5]] = -100.0
    model.get_layer("h").set_weights([kernel, bias])
    return model


@pytest.fixture
def broken_surgery(monkeypatch):
    """Makes prune's weight surgery wrong (the head's kernel off by one): a bug inside deadrelu."""
    import deadrelu.fixes.edits as edits

    real = edits.shrunk_weights

    def wrong(layer, **cut):
        values = real(layer, **cut)
        if layer.name == "out":
            values["kernel"] = values["kernel"] + 1.0
        return values

    monkeypatch.setattr(edits, "shrunk_weights", wrong)


@pytest.fixture
def vectors():
    return np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)


def test_a_failed_proof_on_the_scanned_data_is_deadrelus_bug(broken_surgery, vectors):
    model = dense_model()
    with pytest.raises(OutputCheckError, match="a bug in deadrelu") as raised:
        prune_model(model, vectors)
    assert raised.value.cause == "deadrelu" and raised.value.exit_code == 4
    assert raised.value.result.removed == {"h": [2, 5]} and not raised.value.result.passed
    # The same failure with units from a report: the report may be of other data.
    report = deadrelu.scan(model, vectors)
    with pytest.raises(OutputCheckError, match="report was made on other data") as raised:
        prune_model(model, report, data=vectors)
    assert raised.value.cause == "data"


def test_cli_exit_codes_of_a_failed_proof(broken_surgery, vectors, run_cli, tmp_path):
    model_path, data_path, report_path = tmp_path / "m.keras", tmp_path / "x.npy", tmp_path / "scan.json"
    dense_model().save(model_path)
    np.save(data_path, vectors)
    out = tmp_path / "pruned.keras"
    code, _, stderr = run_cli(["prune", model_path, "--data", data_path, "-o", out, "--no-timing"])
    assert code == 4, stderr
    assert "please report" in stderr and "a bug in deadrelu" in stderr
    assert not out.exists()
    assert run_cli(["scan", model_path, "--data", data_path, "--json", report_path, "--quiet"])[0] == 0
    code, _, stderr = run_cli(
        ["prune", model_path, "--report", report_path, "--data", data_path, "-o", out, "--no-timing"]
    )
    assert code == 4 and "deadrelu: error:" in stderr and "scan of this data" in stderr
    assert not out.exists()


def test_cli_revive_exit_codes_of_a_failed_proof(monkeypatch, vectors, run_cli, tmp_path):
    import deadrelu.fixes.revive as reviver

    monkeypatch.setattr(reviver, "cut_inputs", lambda *args, **kwargs: None)  # outgoing weights not cut: a bug
    model_path, data_path, report_path = tmp_path / "m.keras", tmp_path / "x.npy", tmp_path / "scan.json"
    dense_model().save(model_path)
    np.save(data_path, vectors)
    out = tmp_path / "revived.keras"
    code, _, stderr = run_cli(["revive", model_path, "--data", data_path, "-o", out, "--seed", "0"])
    assert code == 4 and "a bug in deadrelu" in stderr and "please report" in stderr, stderr
    assert run_cli(["scan", model_path, "--data", data_path, "--json", report_path, "--quiet"])[0] == 0
    code, _, stderr = run_cli(
        ["revive", model_path, "--report", report_path, "--data", data_path, "-o", out, "--seed", "0"]
    )
    assert code == 4 and "not all dead on this data" in stderr, stderr
    assert not out.exists()


# -- the optimizer's moving averages --------------------------------------------------------------


class _AfterRevival(keras.callbacks.Callback):
    """Listed after the monitor: keeps the hidden layer's weights right after each revival."""

    def __init__(self, monitor):
        super().__init__()
        self.monitor, self.kernels = monitor, []

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor.revivals > len(self.kernels):
            self.kernels.append(np.array(self.model.get_layer("h").kernel.numpy()))


def test_monitor_revival_keeps_the_moving_averages_on_the_new_weights():
    """With `use_ema=True`, Keras writes the averages into the model when `fit` ends: the revived
    columns must come out as the revived weights trained on, not as (almost) zeros."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 6)).astype(np.float32)
    y = rng.normal(size=(128, 3)).astype(np.float32)
    model = dense_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3, use_ema=True, ema_momentum=0.99), loss="mse")
    monitor = deadrelu.DeadReluMonitor(x[:64], on_dead="revive", max_dead_fraction=0.1, seed=0, verbose=0)
    keep = _AfterRevival(monitor)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[monitor, keep])
    assert monitor.revivals >= 1
    revived = keep.kernels[0][:, [2, 5]]
    final = model.get_layer("h").kernel.numpy()[:, [2, 5]]
    assert np.linalg.norm(revived) > 0.1
    # Four Adam steps of 1e-3 move each entry by at most ~4e-3 (plus the average's lag behind them).
    assert np.max(np.abs(final - revived)) < 0.02, (final, revived)


# -- retrain and the global random state ------------------------------------------------------------


def test_retrain_leaves_the_global_random_state_alone():
    from deadrelu.fixes.retrain import retrain

    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = rng.normal(size=(40, 3)).astype(np.float32)
    source, variant = dense_model(), dense_model()  # (dense_model seeds: before the draws)
    source.compile(optimizer="sgd", loss="mse")

    def draws():
        drawn = [random.random(), float(np.random.rand()), np.asarray(keras.random.uniform((3,))).tolist()]
        if keras.backend.backend() == "tensorflow":  # an operation seed from TensorFlow's global seed
            import tensorflow as tf

            drawn.append(tf.random.uniform((2,)).numpy().tolist())
        return drawn

    keras.utils.set_random_seed(123)
    expected = draws()
    keras.utils.set_random_seed(123)
    comparison = retrain({"copy": variant}, source, x, y, epochs=1, batch_size=20, validation_split=0.25, seed=7)
    assert comparison.settings["seed"] == 7
    assert draws() == expected


# -- the monitor's check without a model ----------------------------------------------------------


def test_monitor_check_without_a_model_says_what_to_do(vectors):
    model = dense_model()
    monitor = deadrelu.DeadReluMonitor(vectors, on_dead=None, verbose=0)
    with pytest.raises(RuntimeError, match=r"monitor\.check\(model=model\)"):
        monitor.check()
    check = monitor.check(model=model)
    hidden = np.maximum(vectors @ model.get_layer("h").kernel.numpy() + model.get_layer("h").bias.numpy(), 0)
    dead = np.flatnonzero(~(hidden > 0).any(axis=0)).tolist()
    assert dead == [2, 5] and check.dead_fraction == pytest.approx(len(dead) / 8)
    assert len(monitor.timeline) == 1 and monitor.last_report.site("h").dead == dead


# -- a crash under the quiet stderr ---------------------------------------------------------------

_CRASH = textwrap.dedent(
    """
    import ctypes, os, sys
    import deadrelu.commands.inspect as command

    def crash(args, output):  # runs where the command would, fd 2 already quieted
        os.write(2, b"F0000 fake_op.cc:12] Check failed: rows == cols (3 vs. 4)\\n")
        if sys.argv[1] == "abort":
            os.abort()
        if sys.argv[1] == "segfault":
            ctypes.string_at(0)
        return 0

    command.run = crash
    from deadrelu.cli import main
    sys.exit(main(["inspect", sys.argv[2]]))
    """
)


@pytest.mark.parametrize("how", ["abort", "segfault", "none"])
def test_a_native_crash_under_the_quiet_stderr_still_shows(how, tmp_path):
    model_path = tmp_path / "m.keras"
    model_path.write_bytes(b"")  # the command never reads it: the crash comes first
    env = {**os.environ, "PYTHONFAULTHANDLER": ""}
    env.pop("PYTHONFAULTHANDLER")
    done = subprocess.run(
        [sys.executable, "-c", _CRASH, how, str(model_path)], capture_output=True, text=True, timeout=120, env=env
    )
    if how == "none":  # a clean run: the native line stays out of sight
        assert done.returncode == 0 and "Check failed" not in done.stderr, done.stderr
        return
    assert done.returncode != 0
    assert "Fatal Python error" in done.stderr  # faulthandler, on the real stderr
    assert "ended abnormally" in done.stderr and "Check failed: rows == cols" in done.stderr

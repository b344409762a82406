"""deadrelu's fused statistics kernel (deadrelu/kernel.py, deadrelu/site_stats.cc) on TensorFlow.

1. The two ops against numpy on arrays with planted values: dead units, units at their cap,
   subnormal outputs and gradients, -0.0, NaN and ±inf outputs and gradients (counted in
   `non_finite`, read as zero by the rest), padding rows left out by `valid`, one position to
   hundreds, unit counts that are no multiple of a vector width, an empty batch; and their
   refusal of malformed inputs.
2. Scans with the kernel equal scans on TensorFlow's own ops (`DEADRELU_KERNEL=off`), counts
   exactly, on models that take every path of the engine (fused, channels-first, capped and
   threshold ReLUs, op-level ReLUs on reshaped tensors, a layer called twice, gradients). The
   reference suite (test_reference.py) checks the kernel's scans against numpy as well.
3. Building, in subprocesses with a cache directory of their own: a failing compiler leaves the
   scan working on TensorFlow's ops, with one note after the work and the same numbers; a built library
   is loaded from the cache without a compiler; a bad `DEADRELU_KERNEL` is exit 2 in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import deadrelu
from deadrelu import kernel
from deadrelu.probe import probe_for
from models import L, assert_reports_equal, one_hot, plant_bias, random_x
from paths import SAMPLES

TINY = np.finfo(np.float32).tiny  # FLT_MIN: below it a value is subnormal, read as zero
CAP = 6.0


@pytest.fixture(scope="module")
def ops():
    module = kernel.ops()
    if module is None:
        pytest.skip(f"the kernel is not available here: {kernel.status()}")
    return module


def test_kernel_is_built_where_a_compiler_exists():
    """CI has g++: a scan there must run on the kernel, not fall back silently."""
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler on this machine")
    assert kernel.status().startswith("built: "), kernel.status()
    model = keras.Sequential([keras.Input((3,)), L.Dense(4, activation="relu")])
    deadrelu.scan(model, random_x((3,), 8, seed=0))
    assert probe_for(model)._kernel is not None


def test_status_says_why_the_kernel_is_off(monkeypatch):
    monkeypatch.setenv("DEADRELU_KERNEL", "off")
    assert kernel.status() == "off: DEADRELU_KERNEL=off (TensorFlow's ops are used)"
    assert kernel.ops() is None


# -- the ops against numpy ------------------------------------------------------------------------


def planted(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Outputs [samples, positions, units] of a capped ReLU with planted units, and a gradient."""
    rng = np.random.default_rng(seed)
    a = np.clip(rng.normal(1.0, 2.5, shape), 0, CAP).astype(np.float32)
    g = rng.normal(0, 1, shape).astype(np.float32)
    n, _, u = shape
    if u >= 5 and n:
        a[..., 0] = 0.0  # dead
        a[..., 1] = np.float32(1e-40)  # subnormal only: dead, as TensorFlow's ops read it
        a[..., 2] = CAP  # always at the cap: saturated, passes no gradient
        a[..., 3] = 0.0
        a[0, 0, 3] = 0.25  # fires once
        a[..., 4] = -0.0
        g[: n // 2, :, 3] = np.float32(1e-41)  # subnormal gradients count as zero
    g[rng.random(shape) < 0.1] = 0.0
    # A diverged model's values: NaN and ±inf among the units past the planted ones, and in gradients.
    wild = np.array([np.nan, np.inf, -np.inf], np.float32)
    spots = rng.random(shape) < 0.05
    spots[..., : min(u, 5)] = False
    a[spots] = rng.choice(wild, int(spots.sum()))
    spots = rng.random(shape) < 0.05
    g[spots] = rng.choice(wild, int(spots.sum()))
    return a, g


def numpy_stats(a, g, valid, cap) -> dict:
    """The kernel's outputs by definition (DESIGN.md), in float64."""
    if valid is not None:
        a, g = a[valid == 1], g[valid == 1]
    finite = np.isfinite(a)  # NaN and ±inf: counted apart, read as zero by every other number
    fires = finite & (np.abs(a) >= TINY)
    passes = fires & (a < (np.inf if cap is None else cap)) & (np.abs(g) >= TINY) & np.isfinite(g)
    return {
        "fires": fires.sum(axis=(0, 1)),
        "sample_fires": fires.any(axis=1).sum(axis=0),
        "sum_abs": np.where(fires, np.abs(a), 0).astype(np.float64).sum(axis=(0, 1)),
        "max": np.where(fires, a, 0).max(axis=(0, 1)) if len(a) else np.full(a.shape[2], -np.inf, np.float32),
        "saturated": (finite & (a >= cap)).sum(axis=(0, 1)) if cap is not None else np.zeros(a.shape[2], np.int64),
        "non_finite": (~finite).sum(axis=(0, 1)),
        "grad_abs": np.where(passes, np.abs(g), 0).astype(np.float64).sum(axis=(0, 1)),
        "grad_nonzero": passes.sum(axis=(0, 1)),
    }


@pytest.mark.parametrize(
    "shape", [(7, 5, 6), (3, 1, 9), (1, 300, 5), (3, 200, 9), (40, 33, 17), (64, 49, 130), (0, 4, 6)], ids=str
)
@pytest.mark.parametrize("capped", [False, True], ids=["uncapped", "capped"])
@pytest.mark.parametrize("masked", [False, True], ids=["all-rows", "padding"])
def test_ops_match_numpy(ops, shape, capped, masked):
    a, g = planted(shape, seed=sum(shape))
    valid = None
    if masked:
        valid = (np.arange(shape[0]) % 3 != 2).astype(np.float32)
    cap = CAP if capped else None
    attrs = {"cap": CAP, "capped": True} if capped else {}
    valid_t = tf.constant(valid if valid is not None else np.zeros(0, np.float32))
    fires, sample_fires, sum_abs, maxima, saturated, non_finite = ops.deadrelu_site_stats(
        tf.constant(a), valid_t, **attrs
    )
    grad_abs, grad_nonzero = ops.deadrelu_grad_stats(tf.constant(a), tf.constant(g), valid_t, **attrs)
    want = numpy_stats(a, g, valid, cap)
    for name, got in [
        ("fires", fires),
        ("sample_fires", sample_fires),
        ("saturated", saturated),
        ("non_finite", non_finite),
        ("grad_nonzero", grad_nonzero),
    ]:
        assert got.dtype == tf.int64
        np.testing.assert_array_equal(got.numpy(), want[name], err_msg=name)
    np.testing.assert_array_equal(maxima.numpy(), want["max"])
    # Per-sample sums are float32 (as TensorFlow's path), added in float64.
    np.testing.assert_allclose(sum_abs.numpy(), want["sum_abs"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad_abs.numpy(), want["grad_abs"], rtol=1e-6, atol=1e-6)
    assert np.isfinite(sum_abs.numpy()).all() and np.isfinite(grad_abs.numpy()).all()
    if shape[2] >= 5 and shape[0]:
        f = fires.numpy()
        assert f[0] == f[1] == f[4] == 0 and (f[3] == 1) == (not masked or valid[0] == 1)
        if capped:
            assert saturated.numpy()[2] == want["fires"][2] > 0 and grad_nonzero.numpy()[2] == 0
    if shape[0] * shape[1] >= 40 and shape[2] > 5:  # enough values for the planted NaN/inf to land
        assert non_finite.numpy().sum() > 0 and non_finite.numpy()[:5].sum() == 0


def test_sums_stay_accurate_over_many_positions(ops):
    """A large feature map (a 500×500 image) per sample: its sums are not one long float32 chain."""
    rng = np.random.default_rng(5)
    a = rng.uniform(0.5, 1.5, (2, 250_000, 3)).astype(np.float32)
    g = rng.uniform(-1.0, 1.0, a.shape).astype(np.float32)
    empty = tf.zeros((0,))
    sum_abs = ops.deadrelu_site_stats(tf.constant(a), empty)[2].numpy()
    grad_abs = ops.deadrelu_grad_stats(tf.constant(a), tf.constant(g), empty)[0].numpy()
    np.testing.assert_allclose(sum_abs, a.astype(np.float64).sum(axis=(0, 1)), rtol=1e-7)
    np.testing.assert_allclose(grad_abs, np.abs(g.astype(np.float64)).sum(axis=(0, 1)), rtol=1e-7)


def test_ops_run_inside_a_traced_function_with_unknown_shapes(ops):
    a, g = planted((9, 12, 7), seed=3)

    @tf.function(input_signature=[tf.TensorSpec((None, None, 7)), tf.TensorSpec((None, None, 7))])
    def both(a, g):
        empty = tf.zeros((0,))
        return ops.deadrelu_site_stats(a, empty)[0], ops.deadrelu_grad_stats(a, g, empty)[1]

    fires, nonzero = both(a, g)
    assert fires.shape == (7,) and nonzero.shape == (7,)
    want = numpy_stats(a, g, None, None)
    np.testing.assert_array_equal(fires.numpy(), want["fires"])
    np.testing.assert_array_equal(nonzero.numpy(), want["grad_nonzero"])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda ops: ops.deadrelu_site_stats(tf.zeros((4, 3)), tf.zeros((0,))), "rank"),
        (lambda ops: ops.deadrelu_site_stats(tf.zeros((4, 2, 3)), tf.zeros((3,))), "valid"),
        (lambda ops: ops.deadrelu_grad_stats(tf.zeros((4, 2, 3)), tf.zeros((4, 2, 2)), tf.zeros((0,))), "grad"),
    ],
    ids=["rank-2 output", "valid of another length", "gradient of another shape"],
)
def test_ops_refuse_malformed_inputs(ops, call, message):
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=message):
        call(ops)


# -- scans with and without the kernel ---------------------------------------------------------------


class ReshapedRelu(L.Layer):
    """ReLUs called as ops inside a layer: on a reshaped tensor and on a plain one."""

    def call(self, x):
        folded = keras.ops.reshape(x, (-1, 4, 6))
        return keras.ops.reshape(tf.nn.relu(folded), (-1, 24)) + keras.ops.relu(x - 0.5)


def capped_cnn():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((10, 9, 3))
    h = L.Conv2D(8, 3, activation="relu", name="first_conv")(inputs)
    h = L.DepthwiseConv2D(3, activation="relu6", name="depthwise")(h)
    h = L.Flatten()(h)
    h = L.Dense(12, activation="relu", name="hidden")(h)
    outputs = L.Dense(4, activation="softmax", name="head")(h)
    model = keras.Model(inputs, outputs)
    plant_bias(model.get_layer("first_conv"), {1: -1e3})
    plant_bias(model.get_layer("depthwise"), {2: 1e3, 5: -1e3})
    return model


def channels_first_thresholds():
    keras.utils.set_random_seed(2)
    return keras.Sequential(
        [
            keras.Input((3, 7, 8)),
            L.Conv2D(4, 3, data_format="channels_first"),
            L.ReLU(threshold=0.3, name="threshold"),
            L.Conv2D(5, 2, data_format="channels_first"),
            L.ReLU(max_value=0.4, name="capped"),
            L.GlobalAveragePooling2D(data_format="channels_first"),
            L.Dense(3, activation="softmax"),
        ]
    )


def op_level_shared():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((24,))
    shared = L.Dense(24, activation="relu", name="shared")
    h = shared(ReshapedRelu(name="ops")(shared(inputs)))
    outputs = L.Dense(3, activation="softmax")(h)
    return keras.Model(inputs, outputs)


def unknown_sizes():
    """Spatial sizes and a sequence length unknown until the data arrives (positions not static)."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((None, None, 3))
    h = L.Conv2D(6, 3, activation="relu", name="image_conv")(inputs)
    h = L.Reshape((-1, 6))(h)
    h = L.Conv1D(5, 2, activation="relu", name="sequence_conv")(h)
    outputs = L.Dense(3, activation="softmax", name="head")(L.GlobalMaxPooling1D()(h))
    return keras.Model(inputs, outputs)


MODELS = {
    "capped CNN": (capped_cnn, (10, 9, 3), 4),
    "channels-first thresholds": (channels_first_thresholds, (3, 7, 8), 3),
    "op-level ReLUs, a layer called twice": (op_level_shared, (24,), 3),
    "unknown spatial sizes": (unknown_sizes, (8, 7, 3), 3),
}


def scan_both_ways(model, monkeypatch, **kwargs):
    with_kernel = deadrelu.scan(model, **kwargs)
    assert probe_for(model, gradients=kwargs.get("gradients", False))._kernel is not None
    monkeypatch.setenv("DEADRELU_KERNEL", "off")
    without = deadrelu.scan(model, **kwargs)
    assert probe_for(model, gradients=kwargs.get("gradients", False))._kernel is None
    monkeypatch.delenv("DEADRELU_KERNEL")
    return with_kernel, without


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("gradients", [False, True], ids=["activations", "gradients"])
def test_scans_with_and_without_the_kernel_agree(ops, monkeypatch, name, gradients):
    build, shape, classes = MODELS[name]
    model = build()
    model.compile(loss="categorical_crossentropy")
    x = random_x(shape, 45, seed=7)
    labels = one_hot(np.arange(45) % classes, classes) if gradients else None
    fast, plain = scan_both_ways(model, monkeypatch, data=x, labels=labels, gradients=gradients, batch_size=16)
    assert_reports_equal(fast, plain)
    assert fast.summary == plain.summary
    if gradients:
        assert fast.loss == pytest.approx(plain.loss, rel=1e-6)
    if name == "capped CNN":  # the planted units are found
        by_path = {site.path: site for site in fast.sites}
        assert 1 in by_path["first_conv"].dead and 5 in by_path["depthwise"].dead
        assert 2 in by_path["depthwise"].saturated


# -- building, loading, falling back (subprocesses with their own cache) --------------------------


def run_scan(tmp_path, name: str, env: dict) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = tmp_path / f"{name}.json"
    done = subprocess.run(
        [sys.executable, "-m", "deadrelu", "scan", SAMPLES / "dying_mlp.keras", "--data", SAMPLES / "probe.npz"]
        + ["--json", out],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env},
        capture_output=True,
        text=True,
        timeout=240,
    )
    return done, json.loads(out.read_text()) if out.exists() else None


def kernel_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "kernel" in line]


def unit_numbers(report: dict) -> list[float]:
    keys = ("fires", "active_rate", "sample_active_rate", "mean_abs", "max_output")
    return [float(v) for site in report["sites"] for key in keys for v in site[key]]


@pytest.mark.slow
def test_a_failing_build_falls_back_and_a_built_library_loads_from_the_cache(ops, tmp_path):
    broken = tmp_path / "broken-cache"
    done, fallback = run_scan(tmp_path, "fallback", {"DEADRELU_CACHE_DIR": str(broken), "CXX": "false"})
    assert done.returncode == 0, done.stderr
    lines = kernel_lines(done.stderr)
    assert len(lines) == 2 and "building" in lines[0] and "unavailable" in lines[1], done.stderr
    assert done.stderr.strip().splitlines()[-1] == lines[1], "the note comes after the work"
    assert not list(broken.glob("*.so")) and not list(broken.glob("*.part")), "a failed build left files behind"

    cached = tmp_path / "cache"
    cached.mkdir()
    built = kernel.status().removeprefix("built: ")
    shutil.copy(built, cached / os.path.basename(built))
    done, fast = run_scan(tmp_path, "cached", {"DEADRELU_CACHE_DIR": str(cached), "CXX": "false"})
    assert done.returncode == 0, done.stderr
    assert kernel_lines(done.stderr) == [], "the cached library was not used"
    assert unit_numbers(fast) == pytest.approx(unit_numbers(fallback), rel=1e-6)
    assert [s["dead"] for s in fast["sites"]] == [s["dead"] for s in fallback["sites"]]


def test_a_damaged_library_in_the_cache_is_removed_and_built_anew(ops, tmp_path):
    cached = tmp_path / "cache"
    cached.mkdir()
    damaged = cached / os.path.basename(kernel.status().removeprefix("built: "))
    damaged.write_bytes(b"not a shared library")
    # CXX=false: the new build fails too, so the scan falls back; the damaged file must be gone.
    done, report = run_scan(tmp_path, "damaged", {"DEADRELU_CACHE_DIR": str(cached), "CXX": "false"})
    assert done.returncode == 0 and report is not None, done.stderr
    assert "building" in done.stderr and "unavailable" in done.stderr, done.stderr
    assert not damaged.exists()


def test_a_bad_kernel_setting_is_exit_2_in_one_line(tmp_path):
    done, report = run_scan(tmp_path, "bad", {"DEADRELU_KERNEL": "fast"})
    assert done.returncode == 2 and report is None
    assert done.stderr.strip().count("\n") == 0 and "DEADRELU_KERNEL" in done.stderr, done.stderr

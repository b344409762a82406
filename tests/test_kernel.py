"""deadrelu's fused statistics kernel (deadrelu/kernel/__init__.py, deadrelu/kernel/site_stats.cc) on TensorFlow.

1. The site and gradient ops against numpy on arrays with planted values: dead units, units at
   their cap, subnormal outputs and gradients, -0.0, NaN and ±inf outputs and gradients (counted
   in `non_finite`, read as zero by the rest), padding rows left out by `valid`, one position to
   hundreds, unit counts that are no multiple of a vector width, an empty batch; and their
   refusal of malformed inputs. The pre-activation op (`deadrelu_preact_stats`) against numpy
   with exact (`math.fsum`) sums: maxima and minima bit for bit, float64 sums within 1e-12, on
   all-negative, constant, subnormal and huge units, NaN and ±inf read as zero, padding, one unit
   to 2048, one sample, no rows; the same bits on every run and with one thread. The fused ReLU op
   (`deadrelu_relu_site_stats`): its output equal, bit for bit, to Keras's relu, relu6 and
   ReLU(threshold, max_value) on TensorFlow and to numpy's maximum/clip semantics (NaN passes without a
   threshold, is 0 with one; -0.0 and subnormals give +0; +inf gives the cap), written over z inside a
   traced function too; its statistics equal to the site and pre-activation ops' on the same values.
2. Scans with the kernel equal scans on TensorFlow's own ops (`DEADRELU_KERNEL=off`), counts
   exactly, on models that take every path of the engine (fused, channels-first, capped and
   threshold ReLUs, op-level ReLUs on reshaped tensors, a layer called twice, gradients). The
   reference suite (test_reference.py) checks the kernel's scans against numpy as well.
3. Where scans use it: on a CPU with a compiler, always; where TensorFlow sees a GPU, never (the
   ops are CPU ops; their own tests above still run, on the CPU).
4. Building, in subprocesses with a cache directory of their own and compilers that are shell
   scripts counting their compiles (one wraps the real compiler: the suite's only real compile
   besides the session's): two processes building at once compile once and both load the library;
   a failing build leaves the scan working on TensorFlow's ops with one note after the work and
   the same numbers, is recorded and not tried again until the compiler changes;
   `python -m deadrelu.kernel build|status` and their exit codes; a library built by another
   compiler is used where there is none; a damaged library is built anew; a process that waits
   too long for another's build goes on without it; a bad `DEADRELU_KERNEL` is exit 2 in one line.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import deadrelu
from deadrelu import kernel
from deadrelu.engine.probe import probe_for
from deadrelu.kernel import __main__ as kernel_command
from models import L, assert_reports_equal, one_hot, plant_bias, random_x
from paths import SAMPLES

TINY = np.finfo(np.float32).tiny  # FLT_MIN: below it a value is subnormal, read as zero
CAP = 6.0


@pytest.fixture(scope="module")
def library() -> kernel.Loaded:
    """The kernel's library, built or loaded wherever it can be (a GPU host too: the ops are CPU ops)."""
    try:
        return kernel.load()
    except kernel.BuildError as error:
        pytest.skip(f"the kernel cannot be built here: {error}")


@pytest.fixture
def ops(library):
    """The op module, with every op of the test placed on the CPU (where its kernels are)."""
    with tf.device("/CPU:0"):
        yield library.module


@pytest.fixture(scope="module")
def scans_use_the_kernel() -> None:
    if kernel.ops() is None:
        pytest.skip(f"scans here do not use the kernel: {kernel.status()}")


def test_scans_on_a_cpu_use_the_kernel_where_a_compiler_exists():
    """CI has g++: a scan there must run on the kernel, not fall back silently."""
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler on this machine")
    if kernel.gpu_visible():
        pytest.skip("TensorFlow sees a GPU here, so scans use its ops (test_a_gpu_turns_the_kernel_off)")
    assert kernel.status().startswith("built: "), kernel.status()
    model = keras.Sequential([keras.Input((3,)), L.Dense(4, activation="relu")])
    deadrelu.scan(model, random_x((3,), 8, seed=0))
    assert probe_for(model)._kernel is not None


def test_a_gpu_turns_the_kernel_off(monkeypatch):
    """The kernel's ops are CPU ops: where TensorFlow sees a GPU, scans use TensorFlow's ops, and say so."""
    if not kernel.gpu_visible():
        monkeypatch.setattr(kernel, "gpu_visible", lambda: True)  # a CPU host: as TensorFlow on a GPU host answers
    assert kernel.status() == "off: TensorFlow sees a GPU, and the kernel is for CPUs (TensorFlow's ops are used)"
    assert kernel.ops() is None
    model = keras.Sequential([keras.Input((3,)), L.Dense(4, activation="relu")])
    deadrelu.scan(model, random_x((3,), 8, seed=0))
    assert probe_for(model)._kernel is None


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
    """The kernel's outputs by the definitions of docs/report-format.md, in float64."""
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

    # The shape function gives the pre-activation op's outputs their static [units] too.
    z = preact_planted((9, 12, 7), seed=3)
    unknown = [tf.TensorSpec((None, None, 7)), tf.TensorSpec((None,))]
    traced = tf.function(ops.deadrelu_preact_stats, input_signature=unknown)
    outputs = traced.get_concrete_function().structured_outputs
    assert [(t.shape, t.dtype) for t in outputs] == [((7,), tf.float32)] * 2 + [((7,), tf.float64)] * 2
    assert_preact_equal(traced(z, tf.zeros((0,))), preact_reference(z, None))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda ops: ops.deadrelu_site_stats(tf.zeros((4, 3)), tf.zeros((0,))), "rank"),
        (lambda ops: ops.deadrelu_site_stats(tf.zeros((4, 2, 3)), tf.zeros((3,))), "valid"),
        (lambda ops: ops.deadrelu_grad_stats(tf.zeros((4, 2, 3)), tf.zeros((4, 2, 2)), tf.zeros((0,))), "grad"),
        (lambda ops: ops.deadrelu_preact_stats(tf.zeros((4, 3)), tf.zeros((0,))), "rank"),
        (lambda ops: ops.deadrelu_preact_stats(tf.zeros((4, 2, 3)), tf.zeros((5,))), "valid"),
    ],
    ids=[
        "rank-2 output",
        "valid of another length",
        "gradient of another shape",
        "rank-2 pre-activation",
        "pre-activation's valid of another length",
    ],
)
def test_ops_refuse_malformed_inputs(ops, call, message):
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=message):
        call(ops)


# -- the pre-activation op against numpy ---------------------------------------------------------

BIG = np.finfo(np.float32).max


def preact_planted(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Pre-activations [samples, positions, units] of both signs, planted units first, then NaN, ±inf, -0.0."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.2, 3.0, shape).astype(np.float32)
    n, _, u = shape
    if u >= 6 and n:
        z[..., 0] = -np.abs(z[..., 0]) - 0.5  # all negative: a dead unit, its margin below zero
        z[..., 1] = -1.75  # constant: max == min, no spread (a starved unit)
        z[..., 2] = np.float32(1e-40)  # subnormal only: read as zero
        z[..., 3] = z[..., 3] * 1e4 + 3e4  # large values: their squares need float64's digits
        z[..., 4] = -np.abs(z[..., 4]) - 1.0
        z[0, 0, 4], z[-1, -1, 4] = np.nan, np.inf  # the only non-negative entries: NaN and inf, read as 0
        z[..., 5] = -np.inf  # nothing finite: every entry read as 0
    wild = np.array([np.nan, np.inf, -np.inf, -0.0], np.float32)
    spots = rng.random(shape) < 0.05
    spots[..., : min(u, 6)] = False
    z[spots] = rng.choice(wild, int(spots.sum()))
    return z


def preact_reference(z: np.ndarray, valid: np.ndarray | None) -> dict:
    """`deadrelu_preact_stats` by its definition: max and min of z with NaN, ±inf and subnormals read
    as +0, and EXACT sums (`math.fsum`; numpy's float64 sum over axes (0, 1) adds naively and errs by
    up to ~1e-13 on these sizes)."""
    if valid is not None:
        z = z[valid == 1]
    u = z.shape[2]
    x = np.where(np.isfinite(z), z, np.float32(0))
    x = np.where(np.abs(x) >= TINY, x, np.float32(0)).reshape(-1, u)
    if not len(x):
        return {"max": np.full(u, -np.inf, np.float32), "min": np.full(u, np.inf, np.float32), "n": 0}
    wide = x.astype(np.float64)
    return {
        "max": x.max(axis=0),
        "min": x.min(axis=0),
        "sum": np.array([math.fsum(wide[:, k]) for k in range(u)]),
        "sumsq": np.array([math.fsum(wide[:, k] ** 2) for k in range(u)]),  # squares of float32: exact
        "sum_abs": np.array([math.fsum(np.abs(wide[:, k])) for k in range(u)]),
        "n": len(x),
    }


def assert_preact_equal(got, want: dict, rtol: float = 1e-12) -> None:
    pre_max, pre_min, pre_sum, pre_sumsq = (t.numpy() for t in got)
    assert [t.dtype for t in (pre_max, pre_min, pre_sum, pre_sumsq)] == [np.float32] * 2 + [np.float64] * 2
    # Bit for bit (so -0.0 for +0 or a NaN would fail).
    np.testing.assert_array_equal(pre_max.view(np.uint32), want["max"].view(np.uint32), err_msg="pre_max")
    np.testing.assert_array_equal(pre_min.view(np.uint32), want["min"].view(np.uint32), err_msg="pre_min")
    if not want["n"]:
        assert not pre_sum.any() and not pre_sumsq.any()
        return
    # The sum of z may cancel: its error is measured against the sum of |z| it came from.
    assert (np.abs(pre_sum - want["sum"]) <= rtol * want["sum_abs"]).all(), (pre_sum, want["sum"])
    np.testing.assert_allclose(pre_sumsq, want["sumsq"], rtol=rtol, atol=0, err_msg="pre_sumsq")


PREACT_SHAPES = [
    (7, 5, 6),
    (1, 300, 6),  # one sample: one chunk
    (3, 4, 1),  # a single unit
    (9, 2, 2048),  # a wide layer
    (200, 1, 7),  # Dense: one position, blocks of rows across samples
    (40, 33, 17),
    (300, 40, 24),  # several chunks, of unequal numbers of samples
    (64, 49, 130),
    (0, 4, 6),  # an empty batch
]


@pytest.mark.parametrize("shape", PREACT_SHAPES, ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["all-rows", "padding"])
def test_preact_op_matches_numpy(ops, shape, masked):
    z = preact_planted(shape, seed=sum(shape))
    valid = (np.arange(shape[0]) % 3 != 1).astype(np.float32) if masked else None
    got = ops.deadrelu_preact_stats(tf.constant(z), tf.constant(valid if masked else np.zeros(0, np.float32)))
    want = preact_reference(z, valid)
    assert_preact_equal(got, want)
    pre_max, pre_min = got[0].numpy(), got[1].numpy()
    if shape[2] >= 6 and want["n"]:  # the planted units, by name
        assert pre_max[0] < -0.5 and pre_min[0] < pre_max[0]
        assert pre_max[1] == pre_min[1] == np.float32(-1.75)
        assert got[2].numpy()[1] == -1.75 * want["n"] and got[3].numpy()[1] == 1.75**2 * want["n"]
        assert pre_max[2] == pre_min[2] == 0.0 and got[3].numpy()[2] == 0.0
        assert pre_max[4] == 0.0 and pre_min[4] < -1.0  # its NaN (row 0, never padding) read as 0
        assert pre_max[5] == pre_min[5] == 0.0 and got[2].numpy()[5] == 0.0
    for value in (pre_max, pre_min, got[2].numpy(), got[3].numpy()):
        assert not np.isnan(value).any()
    if shape[0] * shape[1] >= 40 and shape[2] > 6:  # enough values for the planted NaN/±inf to land
        assert not np.isfinite(z[..., 6:]).all() and np.isfinite(pre_max).all() and np.isfinite(pre_min).all()


def test_preact_op_without_counted_rows_gives_the_identities(ops):
    """Every row padding: nothing counted, so the totals over batches start from -inf, +inf, 0, 0."""
    z = preact_planted((4, 3, 6), seed=1)
    pre_max, pre_min, pre_sum, pre_sumsq = (t.numpy() for t in ops.deadrelu_preact_stats(z, tf.zeros((4,))))
    assert (pre_max == -np.inf).all() and (pre_min == np.inf).all()
    assert (pre_sum == 0).all() and (pre_sumsq == 0).all()


def test_preact_sums_are_float64_throughout(ops):
    """Values near 1000 over a 500×500 feature map: float32 sums (even per block of positions) would be
    off by ~1e-7; the op's are within 1e-12 of the exact sums."""
    rng = np.random.default_rng(8)
    z = rng.uniform(1000.0, 1001.0, (2, 250_000, 3)).astype(np.float32)
    z[1, :, 2] *= -1.0  # one unit whose sum cancels
    assert_preact_equal(ops.deadrelu_preact_stats(z, tf.zeros((0,))), preact_reference(z, None), rtol=1e-12)


PREACT_BITS = """
import sys
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
ops = tf.load_op_library(sys.argv[1])
z = np.load(sys.argv[2])
outputs = ops.deadrelu_preact_stats(z, tf.zeros((0,)))
print(np.concatenate([t.numpy().view(np.uint8) for t in outputs]).tobytes().hex())
"""


def preact_bits(ops, z) -> np.ndarray:
    return np.concatenate([t.numpy().view(np.uint8) for t in ops.deadrelu_preact_stats(z, tf.zeros((0,)))])


def test_preact_op_gives_the_same_bits_on_every_run(ops):
    z = preact_planted((300, 40, 24), seed=11)  # 9 chunks over this process's threads
    first = preact_bits(ops, z)
    for _ in range(3):
        np.testing.assert_array_equal(preact_bits(ops, z), first)


def test_preact_op_gives_the_same_bits_with_one_thread(ops, library, tmp_path):
    """The samples are summed in chunks fixed by the shape, added in order: the thread count does not matter."""
    z = preact_planted((300, 40, 24), seed=11)
    first = preact_bits(ops, z)
    np.save(tmp_path / "z.npy", z)
    done = subprocess.run(
        [sys.executable, "-c", PREACT_BITS, str(library.path), str(tmp_path / "z.npy")],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1"},
        capture_output=True,
        text=True,
        timeout=HELPER_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == first.tobytes().hex(), "one thread summed otherwise"


def test_scans_find_the_preact_op_on_the_kernel(scans_use_the_kernel):
    """The engine asks `getattr(kernel.ops(), "deadrelu_preact_stats", None)`: there when scans use the kernel."""
    assert callable(getattr(kernel.ops(), "deadrelu_preact_stats", None))


# -- the fused ReLU op: Keras's ReLU and every statistic, from one read of z ---------------------------

RELUS = {  # name: (threshold, cap, Keras's own function of that site)
    "relu": (0.0, None, lambda z: keras.activations.relu(z)),
    "relu6": (0.0, 6.0, lambda z: keras.activations.relu6(z)),
    "ReLU(max_value=0.4)": (0.0, 0.4, L.ReLU(max_value=0.4)),
    "ReLU(threshold=0.5)": (0.5, None, L.ReLU(threshold=0.5)),
    "ReLU(threshold=0.5, max_value=6)": (0.5, 6.0, L.ReLU(threshold=0.5, max_value=6.0)),
    "ReLU(threshold=1, max_value=2)": (1.0, 2.0, L.ReLU(threshold=1.0, max_value=2.0)),
}
WILD = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-40, -1e-40, 0.4, 0.5, 1.0, 2.0, 6.0, 7.0, 1e30, -3.0])


def numpy_relu(z: np.ndarray, threshold: float, cap: float | None) -> np.ndarray:
    """Keras's ReLU on TensorFlow's CPU, by numpy: NaN passes (unless a threshold zeroes it), -0.0,
    subnormals and everything at or below the threshold give +0, the cap clips (+inf too)."""
    if threshold:
        a = np.where(z > np.float32(threshold), z, np.float32(0))
    else:
        a = np.where(np.isnan(z), z, np.maximum(np.where(np.abs(z) >= TINY, z, np.float32(0)), np.float32(0)))
    if cap is not None:
        a = np.where(np.isnan(a), a, np.clip(a, np.float32(0), np.float32(cap)))
    return np.where(a == 0, np.float32(0), a).astype(np.float32)  # +0, never -0


def relu_attrs(threshold: float, cap: float | None) -> dict:
    return {"threshold": threshold, **({"cap": cap, "capped": True} if cap is not None else {})}


def relu_planted(shape: tuple, seed: int) -> np.ndarray:
    """`preact_planted` values, shaped [samples, ..., units], with every kind of value planted in them."""
    n, u = shape[0], shape[-1]
    z = preact_planted((n, int(np.prod(shape[1:-1], dtype=np.int64)), u), seed).reshape(shape)
    flat = z.reshape(-1)
    flat[: min(flat.size, 5 * len(WILD))] = np.resize(WILD.astype(np.float32), min(flat.size, 5 * len(WILD)))
    return z


@pytest.mark.parametrize("name", list(RELUS))
@pytest.mark.parametrize("shape", [(5, 37), (4, 3, 16), (3, 5, 4, 19)], ids=str)
def test_relu_op_output_is_keras_relu_bit_for_bit(ops, name, shape):
    threshold, cap, keras_relu = RELUS[name]
    z = relu_planted(shape, seed=len(name) + len(shape))
    got = ops.deadrelu_relu_site_stats(z, tf.zeros((0,)), tf.zeros((0,)), **relu_attrs(threshold, cap))[0].numpy()
    assert got.shape == z.shape and got.dtype == np.float32
    want = np.asarray(keras_relu(tf.constant(z)))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=f"{name} vs Keras")
    np.testing.assert_array_equal(got.view(np.uint32), numpy_relu(z, threshold, cap).view(np.uint32))
    # The planted values, by name (the first row holds WILD, in order, for shapes wide enough).
    first = got.reshape(-1)[: len(WILD)]
    nan_passes = not threshold
    assert np.isnan(first[0]) == nan_passes and np.isnan(first[1]) == nan_passes
    assert first[2] == (np.inf if cap is None else np.float32(cap))
    assert (first[3:8].view(np.uint32) == 0).all()  # -inf, ±0 and ±subnormals: +0 bit for bit


@pytest.mark.parametrize("name", list(RELUS))
def test_relu_op_is_keras_relu_when_it_writes_over_z_in_a_traced_function(ops, name):
    """Inside a `tf.function` z feeds nothing else, so the op writes `a` over it: still Keras's relu,
    and the statistics are those of the values of z, read before they were overwritten."""
    threshold, cap, keras_relu = RELUS[name]
    z = relu_planted((6, 7, 5, 24), seed=3)
    empty = tf.zeros((0,))
    attrs = relu_attrs(threshold, cap)
    traced = tf.function(lambda x: ops.deadrelu_relu_site_stats(x * 1.0, empty, empty, **attrs), autograph=False)
    got = traced(tf.constant(z))
    eager = ops.deadrelu_relu_site_stats(z, empty, empty, **attrs)
    np.testing.assert_array_equal(got[0].numpy().view(np.uint32), np.asarray(keras_relu(z)).view(np.uint32))
    for traced_value, eager_value in zip(got[1:], eager[1:]):
        np.testing.assert_array_equal(traced_value.numpy(), eager_value.numpy())


@pytest.mark.parametrize("name", ["relu", "relu6", "ReLU(threshold=0.5)", "ReLU(threshold=1, max_value=2)"])
@pytest.mark.parametrize("shape", [(7, 5, 6), (200, 1, 7), (40, 33, 17), (300, 40, 24), (64, 49, 130), (0, 4, 6)])
@pytest.mark.parametrize("masked", [False, True], ids=["all-rows", "padding"])
def test_relu_op_statistics_equal_the_site_and_preact_ops(ops, name, shape, masked):
    threshold, cap, _ = RELUS[name]
    z = relu_planted(shape, seed=sum(shape))
    valid = (np.arange(shape[0]) % 3 != 1).astype(np.float32) if masked else None
    valid_t = tf.constant(valid if masked else np.zeros(0, np.float32))
    a, *stats = ops.deadrelu_relu_site_stats(z, valid_t, tf.zeros((0,)), **relu_attrs(threshold, cap))
    want_a = numpy_relu(z, threshold, cap)
    np.testing.assert_array_equal(a.numpy().view(np.uint32), want_a.view(np.uint32))  # padding rows too
    site_attrs = {"cap": cap, "capped": True} if cap is not None else {}
    site = ops.deadrelu_site_stats(want_a, valid_t, **site_attrs)
    names = ["fires", "sample_fires", "sum_abs", "max", "saturated", "non_finite"]
    for label, got, expected in zip(names, stats[:6], site):
        assert got.dtype == expected.dtype, label
        if label == "sum_abs":  # the same float32 block sums, added in float64 in another grouping
            np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-12, atol=0, err_msg=label)
        else:
            np.testing.assert_array_equal(got.numpy(), expected.numpy(), err_msg=label)
    pre = ops.deadrelu_preact_stats(z, valid_t)
    for got, expected in zip(stats[6:], pre):
        assert got.dtype == expected.dtype
    assert_preact_equal(stats[6:], preact_reference(z, valid))
    counted = want_a if valid is None else want_a[valid == 1]
    assert stats[5].numpy().sum() == (~np.isfinite(counted)).sum()
    if shape[0] * shape[1] >= 40 and not threshold:  # the planted NaN landed, passed, and were counted
        assert stats[5].numpy().sum() > 0


@pytest.mark.parametrize("name", ["relu", "relu6", "ReLU(threshold=0.5)", "ReLU(threshold=1, max_value=2)"])
@pytest.mark.parametrize("shape", [(5, 37), (4, 3, 16), (64, 49, 130)], ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["all-rows", "padding"])
def test_relu_op_with_a_bias_is_the_op_on_bias_add_bit_for_bit(ops, name, shape, masked):
    """Given the layer's bias, the op adds it as TensorFlow's `BiasAdd` does: output and every statistic
    equal the op run on `tf.nn.bias_add`'s result, bit for bit (planted NaN, ±inf, subnormals included)."""
    threshold, cap, _ = RELUS[name]
    c = relu_planted(shape, seed=len(shape) + 11)
    rng = np.random.default_rng(len(name))
    bias = rng.normal(0, 2, shape[-1]).astype(np.float32)
    bias[:4] = [-1e3, 1e3, 1e-40, -0.0][: min(4, shape[-1])]  # a dead unit, a saturated one, a subnormal, -0
    valid = tf.constant((np.arange(shape[0]) % 3 != 1).astype(np.float32) if masked else np.zeros(0, np.float32))
    attrs = relu_attrs(threshold, cap)
    folded = ops.deadrelu_relu_site_stats(c, valid, bias, **attrs)
    z = tf.nn.bias_add(tf.constant(c), tf.constant(bias))
    unfolded = ops.deadrelu_relu_site_stats(z, valid, tf.zeros((0,)), **attrs)
    for got, want in zip(folded, unfolded):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    np.testing.assert_array_equal(folded[0].numpy().view(np.uint32), unfolded[0].numpy().view(np.uint32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="bias must be"):
        ops.deadrelu_relu_site_stats(c, valid, bias[:-1], **attrs)


def test_relu_op_with_a_bias_has_bias_adds_gradient(ops):
    """Under a tape the folded op's gradients (input and bias) are those of `relu(bias_add(c, b))`, bit for bit."""
    c = tf.constant(relu_planted((16, 9, 24), seed=5)[..., :24] * np.float32(0.1))
    c = tf.where(tf.math.is_finite(c), c, 0.0)
    bias = tf.constant(np.random.default_rng(2).normal(0, 0.5, 24).astype(np.float32))
    upstream = tf.constant(np.random.default_rng(3).normal(size=(16, 9, 24)).astype(np.float32))
    empty = tf.zeros((0,))

    def grads(apply):
        with tf.GradientTape() as tape:
            tape.watch([c, bias])
            loss = tf.reduce_sum(apply(c, bias) * upstream)
        return tape.gradient(loss, [c, bias])

    fused = grads(lambda c, b: ops.deadrelu_relu_site_stats(c, empty, b)[0])
    keras_relu = grads(lambda c, b: tf.nn.relu(tf.nn.bias_add(c, b)))
    for got, want in zip(fused, keras_relu):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert np.count_nonzero(fused[1].numpy()) > 0


def test_relu_op_refuses_malformed_inputs(ops):
    with pytest.raises(tf.errors.InvalidArgumentError, match="rank 1"):
        ops.deadrelu_relu_site_stats(tf.zeros((4,)), tf.zeros((0,)), tf.zeros((0,)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="valid must be"):
        ops.deadrelu_relu_site_stats(tf.zeros((4, 3)), tf.zeros((3,)), tf.zeros((0,)))


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


def relu_layers():
    """Channels-last `ReLU` layers with a threshold and a cap, an `Activation`, BN → ReLU: the kernel
    applies each of them (and the fused relu of the last conv) in the forward step."""
    keras.utils.set_random_seed(5)
    return keras.Sequential(
        [
            keras.Input((7, 8, 3)),
            L.Conv2D(4, 3),
            L.ReLU(threshold=0.3, name="threshold"),
            L.Conv2D(5, 2),
            L.BatchNormalization(),
            L.ReLU(max_value=0.4, name="capped"),
            L.Conv2D(6, 2, activation="relu", name="fused"),
            L.Flatten(),
            L.Dense(7),
            L.Activation("relu", name="activation"),
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
    "ReLU layers, Activation, BN": (relu_layers, (7, 8, 3), 3),
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
def test_scans_with_and_without_the_kernel_agree(scans_use_the_kernel, monkeypatch, name, gradients):
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
        # The weights' gradients pass through the fused op's registered gradient: the same as Keras's ReLU.
        assert [g["path"] for g in fast.layer_gradients] == [g["path"] for g in plain.layer_gradients]
        np.testing.assert_allclose(
            [g["grad_norm"] for g in fast.layer_gradients], [g["grad_norm"] for g in plain.layer_gradients], rtol=1e-5
        )
    if name == "capped CNN":  # the planted units are found
        by_path = {site.path: site for site in fast.sites}
        assert 1 in by_path["first_conv"].dead and 5 in by_path["depthwise"].dead
        assert 2 in by_path["depthwise"].saturated


# Per model: the sites the forward step hands to `deadrelu_relu_site_stats` (channels-first sites
# and op-level ReLUs keep the other path), and those the gradient step hands to it (only ReLUs
# without threshold or cap, whose gradient is the op's registered `ReluGrad`).
FUSED_SITES = {
    "capped CNN": 3,
    "channels-first thresholds": 0,
    "ReLU layers, Activation, BN": 4,
    "op-level ReLUs, a layer called twice": 2,  # the shared Dense, called twice
    "unknown spatial sizes": 2,
}
# Of those, the sites whose z is a channels-last `BiasAdd` (a Conv or Dense with bias) or a
# BatchNormalization's shift: the op reads what came before the sum and adds it itself.
FOLDED_BIASES = {
    "capped CNN": 3,
    "channels-first thresholds": 0,
    "ReLU layers, Activation, BN": 4,
    "op-level ReLUs, a layer called twice": 2,
    "unknown spatial sizes": 2,
}
FUSED_UNDER_TAPE = {
    "capped CNN": 2,
    "channels-first thresholds": 0,
    "ReLU layers, Activation, BN": 2,
    "op-level ReLUs, a layer called twice": 2,
    "unknown spatial sizes": 2,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_the_forward_step_applies_plain_relus_with_the_fused_op(scans_use_the_kernel, name):
    build, shape, classes = MODELS[name]
    model = build()
    model.compile(loss="categorical_crossentropy")
    x = random_x(shape, 8, seed=1)
    deadrelu.scan(model, data=x, batch_size=8)
    graph = probe_for(model)._step._fn.get_concrete_function().graph
    kinds = [op.type for op in graph.get_operations()]
    assert kinds.count("DeadreluReluSiteStats") == FUSED_SITES[name]
    # A per-unit bias (a Conv's or Dense's BiasAdd, a BatchNormalization's shift) is folded into the
    # op, which reads what came before the sum; the sum is left without a reader (TensorFlow prunes it).
    fused = [op for op in graph.get_operations() if op.type == "DeadreluReluSiteStats"]
    folded = [op for op in fused if op.inputs[2].shape.num_elements() != 0]
    assert len(folded) == FOLDED_BIASES[name]
    read = {tensor.name for op in graph.get_operations() for tensor in op.inputs}
    for op in folded:
        sums = [c for c in op.inputs[0].consumers() if c.type in ("BiasAdd", "AddV2")]
        assert len(sums) == 1 and sums[0].outputs[0].name not in read
    deadrelu.scan(model, data=x, labels=one_hot(np.arange(8) % classes, classes), gradients=True, batch_size=8)
    graph = probe_for(model, gradients=True)._step._fn.get_concrete_function().graph
    assert [op.type for op in graph.get_operations()].count("DeadreluReluSiteStats") == FUSED_UNDER_TAPE[name]


# -- building, loading, falling back (subprocesses with their own cache) --------------------------

posix_only = pytest.mark.skipif(os.name != "posix", reason="the stand-in compilers are shell scripts")
FAILING = 'echo "site_stats.cc:12:3: error: planted failure" >&2; exit 1'
HELPER_TIMEOUT_S = 240


def fake_compiler(folder, name: str, action: str):
    """A compiler `folder/name` (a shell script) that answers `--version`, appends one line per compile
    to `folder/name.compiles`, then runs `action`. Returns (its path, that marker file)."""
    script, marker = folder / name, folder / f"{name}.compiles"
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = "--version" ]; then echo "{name} 1.0"; exit 0; fi\necho "$*" >> "{marker}"\n{action}\n'
    )
    script.chmod(0o755)
    return script, marker


def copying(library) -> str:
    """A compile that writes a copy of a built `library` to its `-o` path (a build without compiling)."""
    return f'for a; do [ "$prev" = -o ] && out="$a"; prev="$a"; done; cp "{library}" "$out"'


def compiles(marker) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def kernel_env(cache, cxx) -> dict:
    """The environment of a subprocess: its own cache and compiler, GPUs hidden (so that it uses the kernel)."""
    return {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CUDA_VISIBLE_DEVICES": "-1",
        "DEADRELU_KERNEL": "auto",
        "DEADRELU_CACHE_DIR": str(cache),
        "CXX": str(cxx),
    }


def run_kernel(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """`python -m deadrelu.kernel ARGS`, or with `["-c", code]` a Python snippet."""
    argv = [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "deadrelu.kernel", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=HELPER_TIMEOUT_S)


STATUS = "import deadrelu.kernel as k; print(k.status())"  # what a scan does: build or load, or say why not


def facts(stdout: str) -> dict[str, str]:
    """`python -m deadrelu.kernel status`'s lines as {name: value}."""
    return dict(line.split(": ", 1) for line in stdout.splitlines())


def run_scan(tmp_path, name: str, env: dict) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = tmp_path / f"{name}.json"
    done = subprocess.run(
        [sys.executable, "-m", "deadrelu", "scan", SAMPLES / "dying_mlp.keras", "--data", SAMPLES / "probe.npz"]
        + ["--json", out],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1", **env},
        capture_output=True,
        text=True,
        timeout=HELPER_TIMEOUT_S,
    )
    return done, json.loads(out.read_text()) if out.exists() else None


def kernel_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "kernel" in line]


def unit_numbers(report: dict) -> list[float]:
    keys = ("fires", "active_rate", "sample_active_rate", "mean_abs", "max_output")
    return [float(v) for site in report["sites"] for key in keys for v in site[key]]


def cache_files(cache) -> list[str]:
    return sorted(path.name for path in cache.iterdir())


@posix_only
@pytest.mark.slow
def test_two_processes_building_at_once_compile_once_and_both_load_it(library, tmp_path):
    """A real compile (the real compiler behind a script that counts and slows it down by 2 s, so
    that the processes overlap): the build command and a scan's load, started together."""
    real = next(filter(None, map(shutil.which, ("c++", "g++", "clang++"))), None)
    if real is None:
        pytest.skip("no C++ compiler on this machine")
    cxx, marker = fake_compiler(tmp_path, "slow-cc", f'sleep 2; exec "{real}" "$@"')
    env = kernel_env(tmp_path / "cache", cxx)
    argvs = [[sys.executable, "-m", "deadrelu.kernel", "build"], [sys.executable, "-c", STATUS]]
    processes = [subprocess.Popen(a, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in argvs]
    (build_out, build_err), (status_out, status_err) = (p.communicate(timeout=HELPER_TIMEOUT_S) for p in processes)
    assert [p.returncode for p in processes] == [0, 0], build_err + status_err
    assert compiles(marker) == 1, "two processes building at once compiled twice"
    stderr = build_err + status_err
    assert stderr.count("deadrelu: building its statistics kernel") == 1, stderr
    assert stderr.count("deadrelu: waiting for another process to build the statistics kernel") == 1, stderr
    built = Path(build_out.strip().split(": ", 1)[1])
    assert built.parent == tmp_path / "cache"
    assert build_out.strip() in (f"built: {built}", f"already built: {built}")
    assert status_out.strip() == f"built: {built}", "the scan's process did not load the library"
    assert cache_files(tmp_path / "cache") == sorted([built.name, built.with_suffix(".lock").name])


@posix_only
@pytest.mark.slow
def test_a_failed_build_is_recorded_and_tried_again_only_when_the_compiler_changes(library, tmp_path):
    cache = tmp_path / "cache"
    failing, failed_compiles = fake_compiler(tmp_path, "failing-cc", FAILING)
    done, fallback = run_scan(tmp_path, "fallback", kernel_env(cache, failing))
    assert done.returncode == 0 and fallback is not None, done.stderr
    lines = kernel_lines(done.stderr)
    assert len(lines) == 2 and "building" in lines[0] and "unavailable" in lines[1], done.stderr
    assert done.stderr.strip().splitlines()[-1] == lines[1], "the note comes after the work"
    assert "failing-cc failed (exit 1): site_stats.cc:12:3: error: planted failure" in lines[1], lines[1]
    assert "`python -m deadrelu.kernel build` tries again" in lines[1]
    assert compiles(failed_compiles) == 1
    (record_file,) = cache.glob("*.failed.json")
    record = json.loads(record_file.read_text())
    assert record["reason"] == "failing-cc failed (exit 1): site_stats.cc:12:3: error: planted failure"
    assert record["compiler_output"] == ["site_stats.cc:12:3: error: planted failure"]
    assert record["parts"]["compiler"] == str(failing) and record["parts"]["compiler_version"] == "failing-cc 1.0"
    assert {"source", "tensorflow", "tensorflow_build", "flags", "python_abi", "cpu"} <= record["parts"].keys()
    assert record["key"] == record_file.name.removeprefix("site_stats-").removesuffix(".failed.json")
    assert not list(cache.glob("*.so")) and not list(cache.glob(".deadrelu-tmp-*")), cache_files(cache)

    # The next process reads the record: no compile, the same note with the recorded reason.
    done, again = run_scan(tmp_path, "again", kernel_env(cache, failing))
    assert done.returncode == 0, done.stderr
    (note,) = kernel_lines(done.stderr)
    assert "its build failed at " + record["time"] in note and "planted failure" in note, note
    assert "not tried again until the source, the compiler or TensorFlow changes" in note
    assert compiles(failed_compiles) == 1, "a recorded failure was tried again"
    assert unit_numbers(again) == unit_numbers(fallback)

    # Another compiler is another key: tried again, and the scan runs on the kernel, with the same numbers.
    working, working_compiles = fake_compiler(tmp_path, "working-cc", copying(library.path))
    done, fast = run_scan(tmp_path, "fast", kernel_env(cache, working))
    assert done.returncode == 0, done.stderr
    assert kernel_lines(done.stderr) == [
        f"deadrelu: building its statistics kernel for TensorFlow {tf.__version__} (once; cached in {cache})"
    ], done.stderr
    assert compiles(working_compiles) == 1 and compiles(failed_compiles) == 1
    assert len(list(cache.glob("*.so"))) == 1
    assert unit_numbers(fast) == pytest.approx(unit_numbers(fallback), rel=1e-6)
    assert [s["dead"] for s in fast["sites"]] == [s["dead"] for s in fallback["sites"]]


@posix_only
@pytest.mark.slow
def test_the_kernel_command_builds_and_reports(library, tmp_path, monkeypatch, capfd):
    """`build` in subprocesses (it loads the library, which this process has loaded from another
    path); `status`, and `build` where nothing gets loaded, in this process."""
    cache = tmp_path / "cache"
    working, marker = fake_compiler(tmp_path, "working-cc", copying(library.path))
    env = kernel_env(cache, working)
    for name in ("TF_CPP_MIN_LOG_LEVEL", "DEADRELU_KERNEL", "DEADRELU_CACHE_DIR", "CXX"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setattr(kernel, "gpu_visible", lambda: False)  # as in the subprocesses, whose GPUs are hidden

    def here(*args: str) -> tuple[int, str, str]:
        capfd.readouterr()
        code = kernel_command.main(args)
        return (code, *capfd.readouterr())

    code, out, err = here("status")
    assert code == 0 and err == "", err
    status = facts(out)
    key = status["key"]
    assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]{8}", key), key
    assert status["cache"] == str(cache) and status["compiler"] == f"{working} (working-cc 1.0)"
    assert status["library"].startswith("not built") and status["DEADRELU_KERNEL"] == "auto"
    assert status["scans use"] == "the kernel, once the first scan has built it"
    assert compiles(marker) == 0, "status built something"

    done = run_kernel(["build"], env)
    so = cache / f"site_stats-{key}.so"
    assert (done.returncode, done.stdout) == (0, f"built: {so}\n"), done.stderr
    done = run_kernel(["build"], env)
    assert (done.returncode, done.stdout) == (0, f"already built: {so}\n"), done.stderr
    assert compiles(marker) == 1
    status = facts(here("status")[1])
    assert status["library"] == f"built, {so}" and status["scans use"] == "the kernel"

    # No compiler (an image whose build stage had one): the library built by another is loaded.
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-cc"))
    status = facts(here("status")[1])
    assert status["compiler"] == f"none (CXX='{tmp_path / 'no-such-cc'}' is not an executable)"
    assert status["key"] != key and status["key"].split("-")[0] == key.split("-")[0]
    assert status["library"] == f"built by another compiler, {so}"
    done = run_kernel(["build"], {**env, "CXX": str(tmp_path / "no-such-cc")})
    assert (done.returncode, done.stdout, done.stderr) == (0, f"already built: {so}\n", ""), done.stderr

    # Cannot: exit 2, one line after the build's own, no traceback; the failure is recorded.
    failing, failed = fake_compiler(tmp_path, "failing-cc", FAILING)
    monkeypatch.setenv("CXX", str(failing))
    done = run_kernel(["build"], {**env, "CXX": str(failing)})
    assert done.returncode == 2 and done.stdout == "", done.stdout
    building, error = done.stderr.strip().splitlines()
    assert building.startswith("deadrelu: building its statistics kernel"), done.stderr
    (record,) = cache.glob("*.failed.json")
    assert error == (
        "deadrelu: the kernel cannot be built: failing-cc failed (exit 1): site_stats.cc:12:3: error: "
        f"planted failure (recorded in {record})"
    ), error
    status = facts(here("status")[1])
    assert status["library"].startswith("failed at ") and "planted failure" in status["library"], status
    assert status["library"].endswith("`python -m deadrelu.kernel build` tries again")
    assert status["scans use"] == "TensorFlow's ops (the library cannot be built; see library)"
    with pytest.raises(kernel.BuildError, match="its build failed at"):  # as a scan: not tried again
        kernel.build.ensure_built(tf)
    assert compiles(failed) == 1
    code, out, err = here("build")  # `build` tries again after a recorded failure
    assert (code, out) == (2, "") and compiles(failed) == 2, err

    monkeypatch.setenv("CXX", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("DEADRELU_CACHE_DIR", str(tmp_path / "empty"))
    code, out, err = here("build")
    assert (code, out) == (2, "")
    assert err == (
        f"deadrelu: the kernel cannot be built: CXX='{tmp_path / 'no-such-cc'}' is not an executable "
        f"(recorded in {next((tmp_path / 'empty').glob('*.failed.json'))})\n"
    )


def test_the_kernel_command_help_imports_no_tensorflow():
    code = (
        "import runpy, sys\n"
        "sys.argv = ['python -m deadrelu.kernel', '--help']\n"
        "try:\n"
        "    runpy.run_module('deadrelu.kernel', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    print('exit', exit.code)\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'numpy') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "{build,status}" in done.stdout and done.stdout.endswith("exit 0\n[]\n"), done.stdout


@posix_only
def test_a_process_that_waits_too_long_for_another_build_goes_on_without_it(library, tmp_path, monkeypatch):
    """The lock is held (by another open file, as another process would); a short wait gives up."""
    import fcntl

    working, marker = fake_compiler(tmp_path, "working-cc", copying(library.path))
    monkeypatch.setenv("DEADRELU_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(working))
    key = kernel.build.cache_key(kernel.build.key_parts(tf))
    lock = kernel.build.lock_path(key)
    lock.parent.mkdir()
    with open(lock, "a+b") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        with pytest.raises(kernel.BuildError, match=r"another process has been building it for over 0\.3 s"):
            kernel.build.ensure_built(tf, wait=0.3)
        assert compiles(marker) == 0 and kernel.build.read_record(key) is None, "a wait is no failure"
        fcntl.flock(holder.fileno(), fcntl.LOCK_UN)
    assert kernel.build.ensure_built(tf, wait=0.3) == (kernel.build.library_path(key), True)
    assert compiles(marker) == 1


@posix_only
def test_a_damaged_library_in_the_cache_is_removed_and_built_anew(library, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    working, marker = fake_compiler(tmp_path, "working-cc", copying(library.path))
    monkeypatch.setenv("DEADRELU_CACHE_DIR", str(cache))
    monkeypatch.setenv("CXX", str(working))
    damaged = kernel.build.library_path(kernel.build.cache_key(kernel.build.key_parts(tf)))
    cache.mkdir()
    damaged.write_bytes(b"not a shared library")
    done, report = run_scan(tmp_path, "damaged", kernel_env(cache, working))
    assert done.returncode == 0 and report is not None, done.stderr
    assert [line.split(" for ")[0] for line in kernel_lines(done.stderr)] == [
        "deadrelu: building its statistics kernel"
    ], done.stderr
    assert compiles(marker) == 1 and damaged.read_bytes() == library.path.read_bytes()


def test_a_bad_kernel_setting_is_exit_2_in_one_line(tmp_path):
    done, report = run_scan(tmp_path, "bad", {"DEADRELU_KERNEL": "fast"})
    assert done.returncode == 2 and report is None
    assert done.stderr.strip().count("\n") == 0 and "DEADRELU_KERNEL" in done.stderr, done.stderr

"""deadrelu's fused statistics kernel (deadrelu/kernel/__init__.py, deadrelu/kernel/site_stats.cc) on TensorFlow.

1. The two ops against numpy on arrays with planted values: dead units, units at their cap,
   subnormal outputs and gradients, -0.0, NaN and ±inf outputs and gradients (counted in
   `non_finite`, read as zero by the rest), padding rows left out by `valid`, one position to
   hundreds, unit counts that are no multiple of a vector width, an empty batch; and their
   refusal of malformed inputs.
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
    if name == "capped CNN":  # the planted units are found
        by_path = {site.path: site for site in fast.sites}
        assert 1 in by_path["first_conv"].dead and 5 in by_path["depthwise"].dead
        assert 2 in by_path["depthwise"].saturated


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

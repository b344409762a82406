"""`keras.distribution` on JAX (issue 28): scan, revive, prune and the monitor under `DataParallel`
run each batch on the mesh and give what they give on one device; `ModelParallel` scans and revives,
and a prune its layout cannot split is refused in one line; the command line's
`--distribution data-parallel --devices N` starts JAX with N host devices itself.

tests/jax_distribution/check_mesh.py does the work in a process of its own per device count (2 and
4 host CPU devices, which must be asked for before JAX starts): both run at once, bounded in time,
and are killed if they overrun (about 20 s of CPU each: the tests that read them are marked slow).
Here, each one's findings are checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from paths import ROOT

pytest.importorskip("jax")

SCRIPT = Path(__file__).parent / "jax_distribution" / "check_mesh.py"
TIMEOUT = 240
DEVICE_COUNTS = (2, 4)
DEAD = [2, 4, 9]  # the hidden units planted dead
L = keras.layers


def planted_model() -> keras.Model:
    """Dense(16, relu) → Dense(3, softmax) on 6 inputs, units 2, 4 and 9 dead by a bias of -50."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = L.Dense(16, activation="relu", name="hidden")
    model = keras.Model(inputs, L.Dense(3, activation="softmax", name="head")(hidden(inputs)))
    weights = hidden.get_weights()
    weights[1][DEAD] = -50.0
    hidden.set_weights(weights)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("jax_distribution")
    planted_model().save(folder / "model.keras")
    x = np.random.default_rng(0).normal(size=(101, 6)).astype("float32")  # 101: batches do not divide
    np.savez(folder / "data.npz", x=x, y=keras.utils.to_categorical(np.arange(101) % 3, 3))
    return folder


@pytest.fixture(scope="module")
def findings(files) -> dict[int, dict]:
    """Per device count, the JSON line check_mesh.py printed; both processes run at once."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the command line asks for the devices
    env.update(KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    processes = {}
    for n in DEVICE_COUNTS:
        folder = files / f"devices_{n}"
        folder.mkdir()
        for name in ("model.keras", "data.npz"):
            (folder / name).symlink_to(files / name)
        processes[n] = subprocess.Popen(
            [sys.executable, str(SCRIPT), str(n), str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
    found = {}
    try:
        for n, process in processes.items():
            try:
                stdout, stderr = process.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the check on {n} devices took over {TIMEOUT} s and was killed")
            assert process.returncode == 0, f"{n} devices:\n{stderr[-6000:]}"
            found[n] = json.loads(stdout.strip().splitlines()[-1])
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    return found


def close(compared: dict, samples: int = 101) -> None:
    """A report equal to the one-device one: every count exactly, every float statistic to 1e-6."""
    assert compared["counts_equal"] and compared["dead"] == [[DEAD], [DEAD]]
    assert compared["samples"] == [samples, samples]  # the rows that fill a batch up count nowhere
    assert {"mean_abs", "margin", "preact_mean"} <= set(compared["fields"]) and compared["max_rel"] <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("n", DEVICE_COUNTS)
def test_the_command_line_starts_jax_with_the_devices_asked_for(findings, n):
    found = findings[n]
    assert found["xla_flags_before"] is None and found["devices"] == n
    assert found["cli_scan"][0] == 0, found["cli_scan"][1]
    assert f"distribution: DataParallel over {n} cpu devices" in found["cli_scan"][1]
    assert found["cli_settings"] == {"distribution": "DataParallel", "devices": n}
    if n == 2:  # revive and prune from the command line write what one device makes (seed 0)
        for key in ("cli_revive", "cli_prune"):
            code, err, diff = found[key]
            assert code == 0 and "over 2 cpu devices" in err and diff == 0.0, err
        assert "timing predict" in found["cli_prune"][1]  # Keras's predict, on batches that split evenly
    code, err = found["cli_too_many"]
    assert code == 2 and err.count("deadrelu: error:") == 1
    assert f"--devices {n + 1} but JAX has {n} cpu devices: pass at most {n}" in err
    assert f"XLA_FLAGS=--xla_force_host_platform_device_count={n + 1} set before JAX starts" in err


@pytest.mark.slow
@pytest.mark.parametrize("n", DEVICE_COUNTS)
def test_scan_under_data_parallel_runs_on_every_device_and_measures_what_one_device_does(findings, n):
    found = findings[n]
    assert found["one_device_placed"] == []  # without a distribution, nothing is placed on a mesh
    assert found["scan_placed"] == [[n, n]]  # every batch split in n slices, one per device
    assert found["settings"] == {
        "distribution": "DataParallel",
        "devices": n,
        "mesh": {"batch": n},
        "batch_axis": "batch",
    }
    assert found["collective"]  # the compiled step sums the devices' statistics with XLA collectives
    close(found["scan"])
    assert "grad_mean_abs" in found["scan"]["fields"]


@pytest.mark.slow
@pytest.mark.parametrize("n", DEVICE_COUNTS)
def test_revive_and_prune_under_data_parallel_make_the_one_device_model(findings, n):
    found = findings[n]
    revive, prune = found["revive"], found["prune"]
    assert found["revive_placed"] == found["prune_placed"] == [[n, n]]
    assert revive["revived"] == [{"hidden": DEAD}, {"hidden": DEAD}] and revive["weights_diff"] == 0.0
    assert revive["passed"] and revive["on_devices"] == n  # the copy lives on the mesh
    assert prune["shapes"][0] == prune["shapes"][1] == [[6, 13], [13], [13, 3], [3]]
    assert prune["weights_diff"] == 0.0 and prune["on_devices"] == n
    assert prune["outputs_diff"] <= 1e-6
    if n == 2:  # Keras's own evaluate takes no batch of 25 rows over 2 devices: said in one line
        assert found["dormant_prune"] == (
            "Keras's `evaluate` of the loss and metrics before and after needs batches that split evenly over the "
            "2 devices of the active keras.distribution (DataParallel), as Keras's own trainer does under it: pass "
            "a `batch_size` and a number of samples (`samples`) that are multiples of 2"
        )
    even = -(-25 // n) * n
    assert found["whole_batches"] == [100, even]  # Keras's predict: every batch splits over the devices


@pytest.mark.slow
@pytest.mark.parametrize("n", DEVICE_COUNTS)
def test_the_monitor_in_a_data_parallel_fit_checks_what_a_one_device_scan_measures(findings, n):
    found = findings[n]
    assert found["monitor_placed"] == [[n, n]]
    close(found["monitor"], samples=50)


@pytest.mark.slow
def test_model_parallel_scans_and_revives_and_refuses_a_prune_its_layout_cannot_split(findings):
    found = findings[4]  # a mesh of 2 × 2: batches split over "batch", the hidden kernel over "model"
    assert found["mp_settings"] == {"distribution": "ModelParallel", "devices": 4, "mesh": {"batch": 2, "model": 2}}
    assert found["mp_kernel_split"] == "P(None, 'model')" and found["mp_scan_placed"] == [
        [4, 2]
    ]  # 2 slices, each on 2 devices
    close(found["mp_scan"])
    assert found["mp_revive"] == {"weights_diff": 0.0, "passed": True}
    assert found["mp_prune"].startswith(
        "the pruned model does not fit the layouts of the active keras.distribution (ModelParallel): it splits "
        "axis 1 of a (6, 13) weight over 2 devices, and 13 is not a multiple of 2;"
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--distribution", "data-parallel", "--devices", "2"],
            "--distribution data-parallel is Keras's JAX distribution API (keras.distribution), and Keras runs on "
            "{backend}: rerun with KERAS_BACKEND=jax",
        ),
        (
            ["--strategy", "mirrored", "--distribution", "data-parallel"],
            "--strategy mirrored is TensorFlow's tf.distribute and --distribution data-parallel JAX's",
        ),
        (["--distribution", "model-parallel"], "argument --distribution: invalid choice: 'model-parallel'"),
    ],
)
def test_distribution_flags_off_jax_exit_2_in_one_line(run_cli, files, flags, message):
    backend = keras.backend.backend()
    if backend == "jax":
        pytest.skip("this process runs on JAX: the flags are checked on 2 and 4 devices above")
    out = files / "never.keras"
    code, _stdout, err = run_cli(["revive", files / "model.keras", "--data", files / "data.npz", "-o", out, *flags])
    lines = [line for line in err.splitlines() if line.startswith("deadrelu: error:")]
    assert code == 2 and len(lines) == 1 and message.format(backend=backend) in lines[0], err
    assert "Traceback" not in err and not out.exists()
    if backend == "tensorflow" and "--devices" in flags:
        assert lines[0].endswith(
            "on TensorFlow, --strategy mirrored with --devices runs on several devices (tf.distribute)"
        )


def test_host_devices_are_asked_for_only_while_jax_has_not_started():
    import jax  # noqa: F401  (started: only a count given already can serve)

    from deadrelu.engine.mesh import ask_for_host_devices

    environ = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=8"}
    assert ask_for_host_devices(4, environ) and environ["XLA_FLAGS"].endswith("count=8")  # 8 ≥ 4: kept
    assert not ask_for_host_devices(16, environ) and environ["XLA_FLAGS"].endswith("count=8")  # too late
    environ = {}
    assert not ask_for_host_devices(2, environ) and environ == {}

"""tf.distribute (issue 16): strategies, sharding, the command line's flags, and the real thing in subprocesses.

This process's TensorFlow has one CPU device, so the tests on 2 and 3 replicas run in a fresh
process that splits its CPU first (tests/distributed, see its conftest.py), and the 2-worker
`MultiWorkerMirroredStrategy` cluster runs as two worker processes on localhost (tests/cluster.py).
Both are bounded in time and always cleaned up.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import deadrelu
import deadrelu.engine.distribute as distribute
from cluster import run_cluster
from deadrelu.data import load_data
from processes import run_at_once

L = keras.layers
TESTS = Path(__file__).parent
REPO = TESTS.parent


@pytest.fixture(scope="module", autouse=True)
def devices_started():
    """TensorFlow's devices are started in this process (as in any test run that built a model)."""
    tf.config.list_logical_devices("CPU")


def small_model(name: str = "small"):
    model = keras.Sequential(
        [keras.Input((6,)), L.Dense(8, activation="relu", name="h1"), L.Dense(2, name="out")], name=name
    )
    bias = np.zeros(8, "float32")
    bias[:3] = -100.0  # units 0, 1, 2 dead
    model.get_layer("h1").bias.assign(bias)
    return model


# -- the strategy -------------------------------------------------------------------------------


def test_no_strategy_is_the_plain_path():
    model = small_model()
    assert distribute.resolve_strategy(None, model) is None
    assert distribute.resolve_strategy(tf.distribute.get_strategy(), model) is None  # the default one
    assert (distribute.num_workers(None), distribute.worker_index(None), distribute.is_chief(None)) == (1, 0, True)
    assert distribute.shard_of(None) is None


def test_strategy_that_is_not_one_is_refused_by_name():
    with pytest.raises(deadrelu.UsageError, match=r"^`strategy` must be a tf.distribute.Strategy .* got str"):
        deadrelu.scan(small_model(), np.zeros((4, 6), "float32"), strategy="mirrored")


def test_a_strategy_whose_scope_does_not_hold_the_model():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    model = small_model()  # built outside the scope
    with pytest.raises(deadrelu.UsageError) as error:
        distribute.resolve_strategy(strategy, model)
    message = str(error.value)
    assert "h1/kernel" in message and "MirroredStrategy" in message and "strategy.scope()" in message
    model.compile(loss="mse")
    monitor = deadrelu.DeadReluMonitor(np.zeros((4, 6), "float32"), strategy=strategy, verbose=0)
    with pytest.raises(deadrelu.UsageError, match=r"strategy\.scope\(\)"):
        model.fit(np.zeros((8, 6), "float32"), np.zeros((8, 2), "float32"), epochs=1, verbose=0, callbacks=[monitor])


def test_one_device_mirrored_strategy_and_describe():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = small_model()
    assert distribute.resolve_strategy(None, model) is strategy
    assert distribute.resolve_strategy(strategy, model) is strategy
    assert distribute.describe(strategy) == "strategy: MirroredStrategy, 1 replica on 1 device"
    assert distribute.settings(strategy) == {"name": "MirroredStrategy", "replicas": 1, "workers": 1}
    assert distribute.is_chief(strategy) and distribute.shard_of(strategy) is None


def test_logical_devices_after_tensorflow_started_are_refused_clearly():
    with pytest.raises(deadrelu.UsageError, match=r"^`devices=3` splits the CPU .* before it starts"):
        distribute.split_cpu(3)
    distribute.split_cpu(len(tf.config.list_logical_devices("CPU")))  # what it has already: fine


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "needs the TF_CONFIG environment variable, which is not set"),
        ("{not json", "TF_CONFIG is not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG has no 'cluster'"),
        ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG has no 'task'"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "task worker 1 is not in"),
    ],
)
def test_tf_config_is_checked(monkeypatch, value, message):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(deadrelu.UsageError, match=message):
        distribute.strategy_from_flags("multi-worker")


def test_shared_seed_depends_on_the_dead_units_and_the_weights():
    model = small_model()
    report = deadrelu.scan(model, np.random.default_rng(0).normal(size=(20, 6)).astype("float32"))
    seed = distribute.shared_seed(report, model)
    assert seed == distribute.shared_seed(report, model) and 0 <= seed < 2**31
    model.get_layer("out").bias.assign(np.ones(2, "float32"))
    assert distribute.shared_seed(report, model) != seed


# -- each worker its shard ------------------------------------------------------------------------


def _shards(monkeypatch, data, model, *, workers: int, batch_size: int, samples=None, labels=None):
    """Every worker's batches of `data` (as load_data gives them under `workers` workers)."""
    parts = []
    for index in range(workers):
        monkeypatch.setattr(distribute, "shard_of", lambda strategy, index=index: (index, workers))
        probe_data = load_data(data() if callable(data) else data, model, samples=samples, strategy=object())
        assert probe_data.shard == (index, workers)
        parts.append([np.asarray(x) for x in probe_data.batches(batch_size)])
    return parts


@pytest.mark.parametrize("kind", ["array", "npy", "batched dataset", "unbatched dataset", "generator"])
@pytest.mark.parametrize("samples", [None, 50])
def test_the_union_of_the_shards_is_every_sample_once(monkeypatch, tmp_path, kind, samples):
    model = small_model()
    x = np.arange(61 * 6, dtype="float32").reshape(61, 6)  # sample i holds 6i … 6i+5: its identity
    np.save(tmp_path / "x.npy", x)
    data = {
        "array": x,
        "npy": str(tmp_path / "x.npy"),
        "batched dataset": tf.data.Dataset.from_tensor_slices(x).batch(8),
        "unbatched dataset": tf.data.Dataset.from_tensor_slices(x),
        "generator": lambda: (x[i : i + 8] for i in range(0, 61, 8)),
    }[kind]
    expected = x[: samples or 61]
    for workers in (2, 3):
        parts = _shards(monkeypatch, data, model, workers=workers, batch_size=8, samples=samples)
        assert all(parts), "every worker gets batches"
        ids = np.concatenate([batch[:, 0] for part in parts for batch in part]) / 6
        assert sorted(ids.astype(int).tolist()) == list(range(len(expected))), (kind, workers)
        again = _shards(monkeypatch, data, model, workers=workers, batch_size=8, samples=samples)
        assert all(
            np.array_equal(np.concatenate(a), np.concatenate(b)) for a, b in zip(parts, again)
        )  # the split does not depend on timing


def test_local_samples_counts_the_shard(monkeypatch):
    monkeypatch.setattr(distribute, "shard_of", lambda strategy: (1, 2))
    probe_data = load_data(np.zeros((61, 6), "float32"), small_model(), strategy=object())
    assert probe_data.samples == 61  # the count of all workers, as the report says
    assert probe_data.local_samples(8) == 8 * 3 + 5  # batches 1, 3, 5, 7 (5 samples)
    assert dataclasses.replace(probe_data, shard=None).local_samples(8) == 61


# -- the command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distribute")
    small_model().save(folder / "m.keras")
    x = np.random.default_rng(0).normal(size=(40, 6)).astype("float32")
    np.savez(folder / "x.npz", x=x)
    return folder


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--devices", "0"], "argument --devices: expected a whole number of at least 1, got 0"),
        (["--devices", "2"], "--devices 2 needs --strategy mirrored"),
        (["--strategy", "multi-worker", "--devices", "2"], "--devices 2 needs --strategy mirrored"),
        (["--strategy", "multi-worker"], "--strategy multi-worker needs the TF_CONFIG environment variable"),
        (["--strategy", "mirrored", "--devices", "3"], "--devices 3 splits the CPU"),
        (["--strategy", "several"], "argument --strategy: invalid choice: 'several'"),
    ],
)
@pytest.mark.parametrize("command", ["scan", "revive", "prune"])
def test_bad_strategy_flags_exit_2_in_one_line(run_cli, model_file, monkeypatch, command, flags, message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    out = model_file / f"out_{command}.keras"
    extra = ["-o", out] if command != "scan" else []
    code, _stdout, err = run_cli([command, model_file / "m.keras", "--data", model_file / "x.npz", *extra, *flags])
    lines = [line for line in err.splitlines() if line.startswith("deadrelu: error:")]
    assert code == 2, err
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err and not out.exists()


def test_strategy_flags_in_help_without_tensorflow():
    code = (
        "import sys, deadrelu.cli as c\n"
        "try: c.main(['scan', '--help'])\n"
        "except SystemExit: pass\n"
        "assert 'tensorflow' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--strategy {mirrored,multi-worker}" in result.stdout and "--devices N" in result.stdout


# -- several devices, several machines (subprocesses) ---------------------------------------------


def test_mirrored_on_2_and_3_logical_cpus():
    """tests/distributed in a process with 3 logical CPUs: scan, datasets, the monitor, revive, prune."""
    env = {**os.environ, "DEADRELU_DISTRIBUTED_TESTS": "1", "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "pytest", str(TESTS / "distributed"), "-q", "-p", "no:cacheprovider", "-x"]
    (done,) = run_at_once([command], envs=[env], cwd=REPO, timeout=240, merge_stderr=True)
    out = done.stdout
    if done.returncode is None:
        pytest.fail(f"tests/distributed did not finish in 240 s:\n{out[-3000:]}")
    assert done.returncode == 0, out[-6000:]
    assert " passed" in out and " skipped" not in out, out[-2000:]


@pytest.fixture(scope="module")
def cluster_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(4, 3, activation="relu", name="conv"),
            L.Flatten(),
            L.Dense(10, activation="relu", name="dense"),
            L.Dense(3, name="out"),
        ],
        name="cluster_cnn",
    )
    for name in ("conv", "dense"):
        bias = np.zeros(model.get_layer(name).bias.shape, "float32")
        bias[::2] = -100.0
        model.get_layer(name).bias.assign(bias)
    model.save(folder / "m.keras")
    x = np.random.default_rng(1).normal(size=(77, 8, 8, 1)).astype("float32")  # 77 = 4·16 + 13: uneven
    np.savez(folder / "x.npz", x=x)
    reference = deadrelu.scan(deadrelu.load_model(str(folder / "m.keras")), x, batch_size=16)
    return folder, reference


def _same_statistics(got: dict, expected: dict) -> None:
    assert got["data"]["samples"] == expected["data"]["samples"] == 77
    assert got["summary"] == expected["summary"]
    for a, b in zip(expected["sites"], got["sites"], strict=True):
        assert (a["path"], a["dead"], a["dying"]) == (b["path"], b["dead"], b["dying"])
        assert a["active_rate"] == b["active_rate"] and a["sample_active_rate"] == b["sample_active_rate"]
        np.testing.assert_allclose(b["mean_abs"], a["mean_abs"], rtol=1e-6, atol=0)


def test_two_worker_cluster_cli_scan_only_the_chief_writes(cluster_files):
    folder, reference = cluster_files
    workers = [folder / "w0", folder / "w1"]
    for path in workers:
        path.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "deadrelu", "scan", str(folder / "m.keras"), "--data", str(folder / "x.npz")]
    command += ["--batch-size", "16", "--strategy", "multi-worker", "--json", "scan.json", "--plot", "dead.png"]
    results = run_cluster(command, workers=2, cwd=workers, timeout=150)
    for result in results:
        assert result.returncode == 0, f"worker {result.index}:\n{result.stderr[-3000:]}"
        assert "strategy: MultiWorkerMirroredStrategy, 2 replicas on 2 workers" in result.stderr
    assert sorted(p.name for p in workers[0].iterdir()) == ["dead.png", "scan.json"]
    assert list(workers[1].iterdir()) == []  # worker 1 wrote nothing
    assert "worker 1 is not the chief: it writes nothing (--json, --plot" in results[1].stderr
    _same_statistics(json.loads((workers[0] / "scan.json").read_text()), reference.to_dict())
    # Every worker printed the same table: the same report.
    assert results[0].stdout == results[1].stdout and "77 samples" in results[0].stdout


def test_two_worker_cluster_same_report_and_same_revival(cluster_files):
    folder, reference = cluster_files
    script = [sys.executable, str(TESTS / "distributed" / "worker.py"), str(folder / "m.keras")]
    results = run_cluster([*script, str(folder / "x.npz"), "16"], workers=2, cwd=REPO, timeout=150)
    lines = []
    for result in results:
        assert result.returncode == 0, f"worker {result.index}:\n{result.stderr[-3000:]}"
        lines.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert [(line["worker"], line["chief"]) for line in lines] == [(0, True), (1, False)]
    for line in lines:
        _same_statistics(line["report"], reference.to_dict())
    assert lines[0]["revived"] == lines[1]["revived"] and lines[0]["revived"]
    # The output check ran on the whole of the report's data file in each worker.
    assert lines[0]["check"] == lines[1]["check"] and lines[0]["check"]["samples"] == 77
    assert lines[0]["check"]["passed"]
    assert lines[0]["digest"] == lines[1]["digest"]  # seed=None: the same new weights on both workers

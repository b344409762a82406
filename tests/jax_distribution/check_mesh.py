"""Run by tests/test_jax_distribution.py in a process of its own: deadrelu under `keras.distribution`
on JAX with N host CPU devices, against the same work on one device. Prints one JSON line of findings.

Usage: check_mesh.py N FOLDER — FOLDER holds model.keras (a Dense ReLU model with dead units planted)
and data.npz (x, y), both made by the test. XLA_FLAGS is not set: the first thing this process does is
the command line's `scan --distribution data-parallel --devices N`, which asks XLA for N host devices
itself (JAX has not started yet). Then, in Python:

- one device (no distribution): scan with gradients, revive (seed 0), prune: the references;
- `DataParallel` over the N devices: the same scan, revive and prune, and a `fit` with a
  `DeadReluMonitor` whose last check is compared with a one-device scan of the fitted weights; every
  batch each of them runs is recorded where `deadrelu.engine.mesh.place` puts it;
- N = 4: `ModelParallel` on a mesh of 2 × 2 (batches split over "batch", the hidden kernel over
  "model"): a scan, a revive, and a prune whose smaller kernel the layout cannot split (refused in
  one line);
- N = 2: `prune(dormant=...)`, whose loss before and after Keras's `evaluate` measures on batches
  that do not split over the devices (refused in one line); the command line's revive and prune
  (with its timing of Keras's `predict`) with `--distribution data-parallel --devices 2`;
- the command line's refusal of more devices than JAX has.

The two processes share the work that needs no second device count, so that each takes about as long.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time

os.environ["KERAS_BACKEND"] = "jax"

import numpy as np

from deadrelu.cli import main as cli  # imports no JAX: the command line starts it, with the devices asked for

N = int(sys.argv[1])
FOLDER = sys.argv[2]
MODEL, DATA = os.path.join(FOLDER, "model.keras"), os.path.join(FOLDER, "data.npz")
found: dict = {"seconds": {}}
_last = [time.process_time()]


def lap(name: str) -> None:
    """Records the seconds since the previous lap under `name` (to see where the test's time goes)."""
    now = time.process_time()
    found["seconds"][name] = round(now - _last[0], 2)
    _last[0] = now


def run_cli(*argv: str) -> tuple[int, str]:
    """The command line in this process: its exit code and the end of what it wrote to stderr."""
    with tempfile.TemporaryFile() as err, contextlib.redirect_stdout(io.StringIO()):
        saved = os.dup(2)  # the command line writes to descriptor 2 (see deadrelu.native_log)
        os.dup2(err.fileno(), 2)
        try:
            code = cli(list(argv))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        return code, err.read().decode()[-3000:]


# -- the command line first: JAX starts here, with the devices deadrelu asked for -----------------
dp_flags = ("--distribution", "data-parallel", "--devices", str(N), "--batch-size", "25")
found["xla_flags_before"] = os.environ.get("XLA_FLAGS")
code, err = run_cli("scan", MODEL, "--data", DATA, *dp_flags, "--json", os.path.join(FOLDER, "scan.json"))
found["cli_scan"] = [code, err]

import jax  # noqa: E402
import keras  # noqa: E402

import deadrelu  # noqa: E402
from deadrelu.engine import mesh  # noqa: E402
from deadrelu.engine.probe import probe_for  # noqa: E402

found["devices"] = len(jax.devices())
with open(os.path.join(FOLDER, "scan.json")) as file:
    found["cli_settings"] = {k: v for k, v in json.load(file)["settings"].items() if k in ("distribution", "devices")}

placed: list = []  # per batch placed on the mesh: [devices holding its rows, distinct row slices]
_place = mesh.place


def recording_place(arrays):
    out = _place(arrays)
    shards = keras.tree.flatten(out)[0].addressable_shards
    placed.append((len({shard.device for shard in shards}), len({str(shard.index) for shard in shards})))
    return out


mesh.place = recording_place

data = np.load(DATA)
x, y = data["x"], data["y"]
LOSS = "categorical_crossentropy"


def load():
    return deadrelu.load_model(MODEL)


def scan(model, inputs=x, **options):
    return deadrelu.scan(model, inputs, batch_size=25, **options)


def compare(a, b) -> dict:
    """Two reports site by site: counts exactly; each float statistic as its largest difference over
    the site's largest value of it (float32 sums added in another order differ by a few ulps)."""
    counts = ("fires", "dead", "dying", "non_finite_outputs")
    fields = ("mean_abs", "max_output", "margin", "preact_mean", "preact_std", "preact_min", "grad_mean_abs")
    rel = {}
    for sa, sb in zip(a.sites, b.sites):
        for f in fields:
            va, vb = getattr(sa, f, None), getattr(sb, f, None)
            if va is not None and vb is not None:
                scale = max(float(np.max(np.abs(va), initial=0.0)), 1e-30)
                rel[f] = max(rel.get(f, 0.0), float(np.max(np.abs(np.subtract(va, vb)), initial=0.0)) / scale)
    return {
        "counts_equal": all(
            np.array_equal(np.asarray(getattr(sa, f)), np.asarray(getattr(sb, f)))
            for sa, sb in zip(a.sites, b.sites)
            for f in counts
        ),
        "dead": [[list(s.dead) for s in a.sites], [list(s.dead) for s in b.sites]],
        "samples": [a.data["samples"], b.data["samples"]],
        "fields": sorted(rel),
        "max_rel": max(rel.values(), default=float("nan")),
    }


def weights_diff(a, b) -> float:
    wa, wb = a.get_weights(), b.get_weights()
    if [w.shape for w in wa] != [w.shape for w in wb]:
        return float("inf")
    return max(float(np.max(np.abs(p - q), initial=0.0)) for p, q in zip(wa, wb))


def on_devices(model) -> int:
    return len(model.trainable_variables[0].value.sharding.device_set)


def outputs(model):
    return np.asarray(mesh.call_placed(lambda batch: model(batch, training=False), x))


def recorded(what):
    """Runs `what()`; returns its result and the distinct [devices, row slices] of the batches it placed."""
    placed.clear()
    result = what()
    return result, sorted(set(placed))


lap("start_and_cli_scan")
# -- one device: the references --------------------------------------------------------------------
plain = load()
one = scan(plain, labels=y, gradients=True, loss=LOSS)
one_revived = deadrelu.revive_model(plain, one, data=x, seed=0, batch_size=25)
one_pruned = deadrelu.prune(plain, one, data=x, batch_size=25)
one_outputs = outputs(one_pruned)
found["one_device_placed"] = sorted(set(placed))  # no distribution: nothing placed

lap("one_device")
# -- DataParallel -----------------------------------------------------------------------------------
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
model = load()
report, found["scan_placed"] = recorded(lambda: scan(model, labels=y, gradients=True, loss=LOSS))
found["settings"] = {k: report.settings.get(k) for k in ("distribution", "devices", "mesh", "batch_axis")}
found["scan"] = compare(one, report)
step = probe_for(model, gradients=True, loss=LOSS)._step  # the compiled step, on a batch placed as a scan places it
rows = -(-step._size // N) * N
hlo = step._fn.lower(
    [v.value for v in model.trainable_variables],
    [v.value for v in model.non_trainable_variables],
    step._weight_sums,
    *_place((x[:rows], y[:rows], np.ones(rows, np.float32))),
).compile()
found["collective"] = any(op in hlo.as_text() for op in ("all-reduce", "all-gather", "reduce-scatter"))

lap("dp_scan")
revived, found["revive_placed"] = recorded(lambda: deadrelu.revive_model(model, report, data=x, seed=0, batch_size=25))
found["revive"] = {
    "revived": [one_revived.revived, revived.revived],
    "weights_diff": weights_diff(one_revived.model, revived.model),
    "passed": revived.check.passed,
    "on_devices": on_devices(revived.model),
}
lap("dp_revive")
x_even, even_batch = mesh.whole_batches(x, 25)
found["whole_batches"] = [len(x_even), even_batch]
pruned, found["prune_placed"] = recorded(lambda: deadrelu.prune(model, report, data=x, batch_size=25))
found["prune"] = {
    "shapes": [[list(w.shape) for w in m.get_weights()] for m in (one_pruned, pruned)],
    "weights_diff": weights_diff(one_pruned, pruned),
    "outputs_diff": float(np.max(np.abs(outputs(pruned) - one_outputs))),
    "on_devices": on_devices(pruned),
}

lap("dp_prune")
if N == 2:  # Keras's evaluate (prune's loss before and after) on batches of 25 over 2 devices: refused
    try:
        deadrelu.prune(model, report, data=x, labels=y, dormant=0.5, loss=LOSS, batch_size=25)
        found["dormant_prune"] = "pruned"
    except deadrelu.UsageError as error:
        found["dormant_prune"] = str(error)
    lap("dormant_prune")

# The monitor in a fit: its check of the fitted weights against a one-device scan of them.
monitor = deadrelu.DeadReluMonitor(x[:50], batch_size=25, on_dead=None, verbose=0)
model.compile(optimizer="sgd", loss=LOSS)
placed.clear()
model.fit(x[: 20 * N], y[: 20 * N], batch_size=10 * N, epochs=1, callbacks=[monitor], verbose=0)
found["monitor_placed"] = sorted(set(placed))
fitted = model.get_weights()
keras.distribution.set_distribution(None)
plain.set_weights(fitted)
found["monitor"] = compare(scan(plain, x[:50]), monitor.last_report)

lap("monitor")
# -- 4 devices: ModelParallel, a mesh of 2 × 2 (batches split over "batch", the hidden kernel over "model")
if N == 4:
    grid = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], jax.devices())
    layouts = keras.distribution.LayoutMap(grid)
    layouts["hidden/kernel"] = (None, "model")
    keras.distribution.set_distribution(keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="batch"))
    model = load()
    report, found["mp_scan_placed"] = recorded(lambda: scan(model, labels=y, gradients=True, loss=LOSS))
    found["mp_settings"] = {k: report.settings.get(k) for k in ("distribution", "devices", "mesh")}
    found["mp_kernel_split"] = str(model.get_layer("hidden").kernel.value.sharding.spec)
    found["mp_scan"] = compare(one, report)
    lap("mp_scan")
    revived = deadrelu.revive_model(model, report, data=x, seed=0, batch_size=25)
    found["mp_revive"] = {
        "weights_diff": weights_diff(one_revived.model, revived.model),
        "passed": revived.check.passed,
    }
    lap("mp_revive")
    try:
        deadrelu.prune(model, report, data=x, batch_size=25)
        found["mp_prune"] = "pruned"
    except deadrelu.UsageError as error:
        found["mp_prune"] = str(error)
    keras.distribution.set_distribution(None)
    lap("mp_prune")

# -- 2 devices: the command line's revive and prune (its timing of Keras's predict too) ------------
if N == 2:
    out = os.path.join(FOLDER, "revived.keras")
    code, err = run_cli("revive", MODEL, "--data", DATA, *dp_flags, "--seed", "0", "-o", out)
    found["cli_revive"] = [code, err, weights_diff(one_revived.model, deadrelu.load_model(out))]
    lap("cli_revive")
    out = os.path.join(FOLDER, "pruned.keras")
    code, err = run_cli("prune", MODEL, "--data", DATA, *dp_flags, "--timing-rounds", "1", "-o", out)
    found["cli_prune"] = [code, err, weights_diff(one_pruned, deadrelu.load_model(out))]
    lap("cli_prune")

# -- the command line's refusal of more devices than JAX has -----------------------------------------
found["cli_too_many"] = run_cli("scan", MODEL, "--data", DATA, *dp_flags[:3], str(N + 1))
print(json.dumps(found))

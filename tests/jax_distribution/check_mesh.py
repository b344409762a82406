"""Run by tests/test_jax_distribution.py in a process of its own (JAX, 2 host CPU devices): a scan
under `keras.distribution` against the same scan without it. Prints one JSON line of findings."""

from __future__ import annotations

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax
import keras
import numpy as np

import deadrelu
from deadrelu.engine.probe import probe_for
from deadrelu.engine.steps import _on_the_mesh

L = keras.layers


def build():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = L.Dense(16, activation="relu", name="hidden")
    model = keras.Model(inputs, L.Dense(3, activation="softmax", name="head")(hidden(inputs)))
    weights = hidden.get_weights()
    weights[1][[2, 9]] = -50.0  # two dead units, planted
    hidden.set_weights(weights)
    return model


def scan(model, x, y):
    return deadrelu.scan(model, x, labels=y, gradients=True, loss="categorical_crossentropy", batch_size=25)


def main() -> int:
    mode = sys.argv[1]
    x = np.random.default_rng(0).normal(size=(101, 6)).astype("float32")  # 101: batches do not divide
    y = keras.utils.to_categorical(np.arange(101) % 3, 3)
    plain = scan(build(), x, y)
    devices = jax.devices()
    if mode == "data":
        distribution = keras.distribution.DataParallel(devices=devices)
    else:  # model parallel: the hidden kernel split over the mesh's "model" axis, the batch over "batch"
        mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"], devices)
        layouts = keras.distribution.LayoutMap(mesh)
        layouts["hidden/kernel"] = (None, "model")
        distribution = keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="batch")
    keras.distribution.set_distribution(distribution)
    model = build()
    report = scan(model, x, y)
    step = probe_for(model, gradients=True, loss="categorical_crossentropy")._step
    # The compiled step, on a batch placed as the scan places it: it spans both devices.
    n = -(-step._size // 2) * 2  # as the step fills a batch up: a whole slice per device
    placed_x, placed_y, placed_valid = _on_the_mesh((x[:n], y[:n], np.ones(n, np.float32)))
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    lowered = step._fn.lower(trainable, non_trainable, step._weight_sums, placed_x, placed_y, placed_valid)
    hlo = lowered.compile().as_text()
    a, b = plain.site("hidden"), report.site("hidden")
    print(
        json.dumps(
            {
                "devices": len(devices),
                "settings": report.settings.get("distribution"),
                "x_devices": sorted(d.id for d in placed_x.sharding.device_set),
                "collective": any(op in hlo for op in ("all-reduce", "all-gather", "reduce-scatter")),
                "fires_equal": bool(np.array_equal(a.fires, b.fires)),
                "dead": [plain.site("hidden").dead, report.site("hidden").dead],
                "max_rel": float(
                    max(
                        np.max(np.abs(np.subtract(getattr(a, f), getattr(b, f))) / (np.abs(getattr(a, f)) + 1e-12))
                        for f in ("mean_abs", "grad_mean_abs", "margin", "preact_mean")
                    )
                ),
                "samples": [plain.data["samples"], report.data["samples"]],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

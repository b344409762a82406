"""Benchmark of the ways to find op-level sites (a script, not a pytest test).

Op-level sites are ReLUs applied as function calls inside a layer's or a model's `call`. Three ways
to find them were weighed:

  keras   wrap the functions every Keras spelling ends in (`deadrelu.engine.interception`; any backend);
  tf-ops  a TensorFlow op-creation callback that sees every `Relu` / `Relu6` op (TensorFlow only);
  graph   trace, then look for `Relu` / `Relu6` ops in the traced graph (TensorFlow only).

The engine uses keras + tf-ops together ("both"). This script measures, on the same models:

  1. what each way finds, spelling by spelling (one custom layer applying the ReLU in `call`);
  2. the cost of finding: a fresh probe's first pass (one eager sample, then the trace of the step)
     with each way switched on, against "off" (no interception at all: the engine before op-level
     sites); "graph" is "off" plus a walk over the traced graph's ops — and measuring what it finds
     would need a second trace, since the reductions must be traced into the step. The same
     residual network written with ReLU layers and with `keras.ops.relu` in a custom layer shows
     what op-level sites cost against layer-level ones;
  3. the scan itself once traced: for models without op-level sites the traced step holds the same
     ops with and without interception (so no batch costs more); and the same residual network
     measured through op-level sites and through layer-level ones.

Usage (from the repository root):
    python tests/bench/bench_op_sites.py               # 5 repeats
    python tests/bench/bench_op_sites.py --repeats 3
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # before TensorFlow is imported anywhere

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

MODES = ("off", "keras", "tf-ops", "both")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per mode and model (default 5)")
    p.add_argument("--samples", type=int, default=2000, help="samples of the steady-state scan (default 2000)")
    return p.parse_args(argv)


@contextlib.contextmanager
def mode(name: str):
    """Switches the engine to one way of finding op-level sites (monkeypatched, put back after)."""
    import deadrelu.engine.interception as op_sites
    import deadrelu.engine.probe as probe

    saved = (
        probe.intercept_relus,
        op_sites.relu_functions,
        op_sites.add_tf_op_callback,
        op_sites.remove_tf_op_callback,
    )

    @contextlib.contextmanager
    def nothing(*args, **kwargs):
        yield op_sites.Interception(None, set(), lambda: False)

    try:
        if name == "off":
            probe.intercept_relus = nothing
        elif name == "keras":
            op_sites.add_tf_op_callback = op_sites.remove_tf_op_callback = lambda callback: None
        elif name == "tf-ops":
            op_sites.relu_functions = list
        yield
    finally:
        (
            probe.intercept_relus,
            op_sites.relu_functions,
            op_sites.add_tf_op_callback,
            op_sites.remove_tf_op_callback,
        ) = saved


# -- models ----------------------------------------------------------------------------------------


def spellings() -> dict:
    import keras
    import tensorflow as tf
    from keras import ops

    found = {
        "keras.ops.relu": ops.relu,
        "keras.ops.nn.relu": ops.nn.relu,
        "keras.activations.relu": keras.activations.relu,
        "keras.activations.relu(threshold=0.5)": lambda t: keras.activations.relu(t, threshold=0.5),
        "keras.activations.relu(max_value=2)": lambda t: keras.activations.relu(t, max_value=2.0),
        "keras.ops.relu6": ops.relu6,
        "keras.activations.relu6": keras.activations.relu6,
        "tf.nn.relu": tf.nn.relu,
        "tf.nn.relu6": tf.nn.relu6,
        "tf.keras.activations.relu (Keras 3)": tf.keras.activations.relu,
    }
    try:
        import tf_keras

        found["tf_keras.backend.relu"] = tf_keras.backend.relu
        found["tf_keras.backend.relu(max_value=2)"] = lambda t: tf_keras.backend.relu(t, max_value=2.0)
        found["tf_keras.backend.relu(threshold=0.5)"] = lambda t: tf_keras.backend.relu(t, threshold=0.5)
    except ImportError:
        pass
    found["tf.maximum(x, 0)"] = lambda t: tf.maximum(t, 0.0)
    found["keras.ops.maximum(x, 0)"] = lambda t: ops.maximum(t, 0.0)
    found["x * (x > 0)"] = lambda t: t * ops.cast(t > 0, t.dtype)
    return found


def custom_model(fn):
    import keras

    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(8)

        def call(self, x):
            return fn(self.dense(x))

    inp = keras.Input((5,))
    return keras.Model(inp, keras.layers.Dense(2)(Block(name="block")(inp)))


def residual(blocks: int = 8, *, custom: bool):
    """Residual blocks applying ReLU twice each: `keras.ops.relu` in a custom layer's `call` (16 op-level
    sites), or the same function with `ReLU` layers in a Functional graph (16 layer-level sites)."""
    import keras
    from keras import ops

    L = keras.layers

    class Residual(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.a, self.b = L.Conv2D(16, 3, padding="same"), L.Conv2D(16, 3, padding="same")

        def call(self, x):
            return ops.relu(x + self.b(ops.relu(self.a(x))))

    keras.utils.set_random_seed(0)
    inp = keras.Input((28, 28, 1))
    h = L.Conv2D(16, 3, padding="same")(inp)
    for i in range(blocks):
        if custom:
            h = Residual(name=f"res_{i}")(h)
        else:
            inner = L.ReLU()(L.Conv2D(16, 3, padding="same")(h))
            h = L.ReLU()(L.Add()([h, L.Conv2D(16, 3, padding="same")(inner)]))
    out = L.Dense(10, activation="softmax")(L.GlobalAveragePooling2D()(h))
    return keras.Model(inp, out, name="residual_custom" if custom else "residual_layers")


def mobilenet():
    import keras

    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(input_shape=(128, 128, 3), alpha=0.35, weights=None, classes=10)


# -- measurements ---------------------------------------------------------------------------------


def relu_ops(probe) -> int:
    """Relu / Relu6 ops in the traced step (what a graph inspection sees)."""
    graph = probe._step._fn.get_concrete_function().graph
    return sum(op.type in ("Relu", "Relu6") for op in graph.get_operations())


def coverage() -> list[tuple]:
    import numpy as np

    from deadrelu.engine.probe import Probe

    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    rows = []
    for spelling, fn in spellings().items():
        model = custom_model(fn)
        cells = []
        for name in ("keras", "tf-ops", "both"):
            with mode(name):
                found = [s for s in Probe(model).trace(x[:1]).sites if s.op_level]
            cells.append(", ".join(s.kind for s in found) or "—")
        with mode("off"):
            probe = Probe(model)
            probe.trace(x[:1])
            cells.append(str(relu_ops(probe)))
        rows.append((spelling, *cells))
    return rows


def first_pass_seconds(model, x, repeats: int) -> tuple[dict, dict, dict, float]:
    """Per mode: CPU seconds of a fresh probe's eager pass + trace (every round, modes rotated) and
    sites found; the ratio to "off" within each round (median); and the seconds of one graph walk.

    CPU time (all threads of this process), not wall time: the machine may be shared, and the
    other processes' load inflates wall times at random.
    """
    from deadrelu.engine.probe import Probe

    def once(name: str) -> tuple[float, int]:
        with mode(name):
            probe = Probe(model)
            start = time.process_time()
            found = probe.trace(x[:1])
            return time.process_time() - start, len(found.sites)

    for name in MODES:  # warm-up: the first trace of a model pays Keras's one-off costs
        once(name)
    rounds: list[dict] = []
    sites = {}
    for r in range(repeats):
        order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
        seconds = {}
        for name in order:
            seconds[name], sites[name] = once(name)
        rounds.append(seconds)
    medians = {name: statistics.median(round_[name] for round_ in rounds) for name in MODES}
    ratios = {name: statistics.median(round_[name] / round_["off"] for round_ in rounds) for name in MODES}
    with mode("off"):
        probe = Probe(model)
        probe.trace(x[:1])
        start = time.perf_counter()
        relu_ops(probe)
        walk = time.perf_counter() - start
    return medians, ratios, sites, walk


def step_ops(model, x, name: str) -> list[str]:
    """The sorted op types of the traced step: equal lists mean the same work on every batch."""
    from deadrelu.engine.probe import Probe

    with mode(name):
        probe = Probe(model)
        probe.trace(x[:1])
    graph = probe._step._fn.get_concrete_function().graph
    return sorted(op.type for op in graph.get_operations())


def steady_seconds(contenders: dict, repeats: int) -> dict:
    """Median CPU seconds of each contender's pass over its data once traced; rounds interleaved."""
    for run in contenders.values():
        run()  # traced once, untimed
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.process_time()
            contenders[name]()
            times[name].append(time.process_time() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None) -> None:
    import keras
    import numpy as np
    import tensorflow as tf

    import deadrelu

    args = parse_args(argv)
    print(
        f"# op-level site finding: tensorflow {tf.__version__}, keras {keras.__version__}, "
        f"deadrelu {deadrelu.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )

    print("\n## What each way finds (one custom layer: `return SPELLING(self.dense(x))`)\n")
    rows = coverage()
    print("| spelling | keras | tf-ops | both (the engine) | graph: Relu/Relu6 ops |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(f"`{row[0]}`" if i == 0 else cell for i, cell in enumerate(row)) + " |")

    x_mnist, _, _ = C.load_inputs(args.samples)
    rng = np.random.default_rng(0)
    models = {
        "mnist_cnn (3 layer-level sites)": (C.mnist_cnn(), x_mnist),
        "MobileNetV2 0.35 (35 layer-level sites)": (mobilenet(), rng.uniform(size=(64, 128, 128, 3)).astype("float32")),
        "residual_layers (16 layer-level sites)": (residual(custom=False), x_mnist),
        "residual_custom (the same, 16 op-level sites)": (residual(custom=True), x_mnist),
    }
    print(
        f"\n## First pass of a fresh probe: one eager sample + the trace (CPU seconds, median of {args.repeats} "
        "rounds, modes rotated; × = median ratio to off within a round)\n"
    )
    print("| model | " + " | ".join(MODES) + " | graph walk | sites found (off → both) |")
    print("|---|" + "---|" * (len(MODES) + 2))
    for label, (model, x) in models.items():
        medians, ratios, sites, walk = first_pass_seconds(model, x, args.repeats)
        cells = [f"{medians[name]:.2f} s" + ("" if name == "off" else f" ({ratios[name]:.2f}×)") for name in MODES]
        print(f"| {label} | " + " | ".join(cells) + f" | {1000 * walk:.1f} ms | {sites['off']} → {sites['both']} |")

    print("\n## The traced step of a model without op-level sites: the same ops with and without interception\n")
    print("| model | ops in the step, off | ops, both | the same op types |")
    print("|---|---|---|---|")
    for label, (model, x) in models.items():
        if "op-level" in label:
            continue
        off, both = step_ops(model, x, "off"), step_ops(model, x, "both")
        print(f"| {label} | {len(off)} | {len(both)} | {'yes' if off == both else 'NO'} |")

    print(
        f"\n## The same residual network measured through op-level and through layer-level sites, once traced "
        f"({args.samples} samples, batch 250; CPU seconds, median of {args.repeats} interleaved rounds)\n"
    )
    from deadrelu.engine.probe import Probe

    runs = {}
    for label, (model, x) in models.items():
        if label.startswith("residual"):
            name = label.split(" ")[0]
            batches = [x[i : i + 250] for i in range(0, len(x), 250)]
            probe = Probe(model)
            runs[f"predict {name}"] = lambda m=model, x=x: m.predict(x, batch_size=250, verbose=0)
            runs[f"scan {name}"] = lambda p=probe, b=batches: p.run(b)
    print("| contender | CPU s |")
    print("|---|---|")
    for name, value in steady_seconds(runs, args.repeats).items():
        print(f"| {name} | {value:.3f} |")


if __name__ == "__main__":
    main()

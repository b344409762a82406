"""Shared helpers for the benchmark scripts in tests/bench/ (not collected by pytest).

Keep this module cheap to import: TensorFlow/Keras are imported inside the functions that need
them, so a parent process can spawn measurement children before it loads TensorFlow itself.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[2]
MNIST = Path(__file__).resolve().parents[3] / "shared/data/mnist.npz"
SEED = 0


# -- model ---------------------------------------------------------------------------------


def mnist_cnn(seed: int = SEED):
    """The reference "MNIST CNN" of docs/benchmarks.md with ReLU (untrained: weights from a fixed seed)."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(32, (3, 3), activation="relu"),
            L.MaxPooling2D(2),
            L.Dropout(0.25),
            L.Conv2D(64, (3, 3), activation="relu"),
            L.MaxPooling2D(2),
            L.Dropout(0.25),
            L.Flatten(),
            L.Dense(256, activation="relu"),
            L.Dense(10, activation="softmax"),
        ],
        name="mnist_cnn",
    )


def application(name: str, input_shape: tuple = (96, 96, 3), seed: int = SEED, **kwargs):
    """A `keras.applications` network with Keras's random initialisation (`weights=None`: nothing is
    downloaded), 10 classes, built from a fixed seed."""
    import keras

    keras.utils.set_random_seed(seed)
    return getattr(keras.applications, name)(weights=None, input_shape=input_shape, classes=10, **kwargs)


def uniform_images(n: int, shape: tuple, seed: int = SEED) -> np.ndarray:
    """`n` float32 images of `shape`, uniform in [0, 1), filled in chunks (no float64 temporary)."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, *shape), np.float32)
    for start in range(0, n, 256):
        stop = min(start + 256, n)
        x[start:stop] = rng.random((stop - start, *shape), dtype=np.float32)
    return x


def forward_loop(model, x: np.ndarray, batch_size: int) -> Callable[[], None]:
    """The floor a scan is measured against: the model's own compiled forward pass over the batches.

    `tf.function(lambda b: model(b, training=False))` called on `tf.constant(x[i:i+B])` for each
    batch, outputs discarded — no data adapter, no callbacks, no output conversion.
    """
    import tensorflow as tf

    forward = tf.function(lambda batch: model(batch, training=False))

    def run() -> None:
        for start in range(0, len(x), batch_size):
            forward(tf.constant(x[start : start + batch_size]))

    return run


def site_outputs(model) -> list:
    """The symbolic outputs of every ReLU site deadrelu finds in `model` (layer-level sites of the
    top model: fused activations, `Activation` and `ReLU` layers — all the benchmark models have)."""
    from deadrelu.engine.sites import find_sites

    sites = list(find_sites(model))
    nested = [site.path for site in sites if site.op_level or "/" in site.path]
    if nested:
        raise ValueError(f"site_outputs: nested or op-level sites have no symbolic output here: {nested[:3]}")
    return [site.layer.output for site in sites]


def materialise_loop(model, x: np.ndarray, batch_size: int) -> Callable[[], None]:
    """The floor of observing: the compiled forward loop that also reads every ReLU site's output once.

    One `tf.function` over a multi-output `keras.Model(model.inputs, [model output, site outputs…])`
    (the same layers, each run once) returning the model's output and `tf.reduce_sum` of each site
    output, called on `tf.constant(x[i:i+B])` per batch. A full `reduce_sum` is the cheapest op that
    forces every element of the activation to exist and be read once: any exact per-unit statistic
    has to read each element at least once, and a full sum is one streaming pass with a scalar
    result (no per-unit output, no second pass), which no compiler can drop or answer from part of
    the tensor. A one-element slice (`a[0, 0, 0, 0]`) would be cheaper but observes nothing: XLA
    computes that element alone and fuses the ReLU into its next consumer, and on TensorFlow (whose
    fused conv + bias + ReLU output is written anyway, as the next op's input) it measures one op's
    dispatch. What this loop costs over the bare forward loop is what merely observing the
    activations costs; the scan pays that plus its statistics.
    """
    import keras
    import tensorflow as tf

    sites = site_outputs(model)
    observed = keras.Model(model.inputs, [*model.outputs, *sites])
    outputs = len(model.outputs)

    @tf.function
    def step(batch):
        values = observed(batch, training=False)
        return values[:outputs], [tf.reduce_sum(a) for a in values[outputs:]]

    def run() -> None:
        for start in range(0, len(x), batch_size):
            step(tf.constant(x[start : start + batch_size]))

    return run


def materialise_preact_loop(model, x: np.ndarray, batch_size: int, y: np.ndarray | None = None) -> Callable[[], None]:
    """The floor of observing pre-activations: the compiled forward loop (with one-hot labels `y`:
    the train step of `train_step_loop`) that also reads every ReLU site's input z and output once.

    Like `materialise_loop`, but each site's nonlinearity (a fused or `Activation` layer's
    `activation`, a `ReLU` layer's `call`) is wrapped while the step is traced so that its input z
    and its output are kept, and the step returns `tf.reduce_sum` of each. z is then a tensor of its
    own: for a fused Conv2D/Dense + ReLU this breaks TensorFlow's fusion of the bias and ReLU into
    the convolution, as any exact per-unit statistic of z must (margins, pre-activation mean and
    std). What this loop costs over the bare forward loop is what observing z and the output costs.
    """
    import contextlib

    import tensorflow as tf

    from deadrelu.engine.sites import KIND_RELU_LAYER, find_sites

    sites = list(find_sites(model))
    if any(site.op_level or "/" in site.path for site in sites):
        raise ValueError("materialise_preact_loop: layer-level sites of the top model only")
    seen: list = []

    def keeping(fn):
        def kept(z, *args, **kwargs):
            out = fn(z, *args, **kwargs)
            seen.extend([z, out])
            return out

        return kept

    @contextlib.contextmanager
    def hooks():
        saved = []
        for site in sites:
            name = "call" if site.kind == KIND_RELU_LAYER else "activation"
            saved.append((site.layer, name, site.layer.__dict__.get(name)))
            object.__setattr__(site.layer, name, keeping(getattr(site.layer, name)))
        try:
            yield
        finally:
            for layer, name, before in saved:
                if before is None:
                    layer.__dict__.pop(name, None)
                else:
                    object.__setattr__(layer, name, before)

    def step(batch):
        seen.clear()
        out = model(batch, training=False)
        return out, [tf.reduce_sum(t) for t in seen]

    def train_step(batch, labels):
        import keras

        seen.clear()
        with tf.GradientTape() as tape:
            total = keras.losses.CategoricalCrossentropy(reduction="sum")(labels, model(batch, training=False))
        return tape.gradient(total, model.trainable_variables), [tf.reduce_sum(t) for t in seen]

    specs = [tf.TensorSpec((None, *x.shape[1:]), tf.as_dtype(x.dtype))]
    if y is not None:
        specs.append(tf.TensorSpec((None, *y.shape[1:]), tf.as_dtype(y.dtype)))
    with hooks():  # only while tracing: the graph keeps the reads, the model is left as it was
        concrete = tf.function(step if y is None else train_step).get_concrete_function(*specs)

    def run() -> None:
        for start in range(0, len(x), batch_size):
            rows = slice(start, start + batch_size)
            concrete(*[tf.constant(a[rows]) for a in ((x,) if y is None else (x, y))])

    return run


def train_step_loop(model, x: np.ndarray, y: np.ndarray, batch_size: int) -> Callable[[], None]:
    """The floor of a gradient scan: a compiled train step without optimizer over the batches.

    One `tf.function`: forward in inference mode (as the scan runs it, so Dropout is off), the
    summed categorical cross-entropy (one-hot `y`), and `GradientTape.gradient` with respect to
    every trainable weight; the gradients are returned and discarded (no optimizer update, so the
    weights do not move).
    """
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.CategoricalCrossentropy(reduction="sum")

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            total = loss_fn(yb, model(xb, training=False))
        return tape.gradient(total, model.trainable_variables)

    def run() -> None:
        for start in range(0, len(x), batch_size):
            step(tf.constant(x[start : start + batch_size]), tf.constant(y[start : start + batch_size]))

    return run


def relu_outputs(model) -> list:
    """The symbolic outputs of the layers with a fused ReLU (the naive user's site list)."""
    import keras

    relu = (keras.activations.relu, "relu")
    return [layer.output for layer in model.layers if getattr(layer, "activation", None) in relu]


# -- data ----------------------------------------------------------------------------------


def load_inputs(n: int, *, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, str]:
    """`n` MNIST images as float32 (n, 28, 28, 1) in [0, 1] with one-hot labels, or random data.

    MNIST test images come first, then training images (70,000 in all; repeated beyond that).
    The float array is filled chunk by chunk so no float64 temporary of the whole set is made
    (which would raise the process's peak RSS before a memory measurement starts).

    Returns:
        (x, y_onehot, description of the source)
    """
    x = np.empty((n, 28, 28, 1), np.float32)
    y = np.zeros((n, 10), np.float32)
    if MNIST.exists():
        with np.load(MNIST) as archive:
            images = [archive["x_test"], archive["x_train"]]
            labels = [archive["y_test"], archive["y_train"]]
        pool = sum(len(a) for a in images)
        filled = 0
        while filled < n:
            for xs, ys in zip(images, labels):
                take = min(len(xs), n - filled)
                for start in range(0, take, 5000):
                    stop = min(start + 5000, take)
                    x[filled + start : filled + stop, ..., 0] = xs[start:stop] / np.float32(255.0)
                y[np.arange(filled, filled + take), ys[:take].astype(np.int64)] = 1.0
                filled += take
                if filled >= n:
                    break
        del images, labels
        source = f"MNIST ({MNIST}), first {n} of test+train" + (" (repeated)" if n > pool else "")
    else:
        rng = np.random.default_rng(seed)
        for start in range(0, n, 5000):
            stop = min(start + 5000, n)
            x[start:stop] = rng.random((stop - start, 28, 28, 1), dtype=np.float32)
        y[np.arange(n), rng.integers(0, 10, n)] = 1.0
        source = f"random uniform [0, 1) inputs, random labels ({MNIST} not found)"
    gc.collect()
    return x, y, source


# -- memory --------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (`ru_maxrss`, KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark to the current RSS (Linux ≥ 4.0), so a later
    `ru_maxrss` shows only what happens after this point. Returns whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- timing --------------------------------------------------------------------------------


class Timing:
    """Wall and process-CPU times of one contender over repetitions."""

    def __init__(self, name: str):
        self.name = name
        self.wall: list[float] = []
        self.cpu: list[float] = []

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def best(self) -> float:
        return min(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    def spread(self) -> str:
        return ", ".join(f"{t:.2f}" for t in self.wall)


def time_interleaved(
    contenders: dict[str, Callable[[], object]],
    repeats: int,
    log: Callable[[str], None] = print,
    groups: list[list[str]] | None = None,
) -> dict[str, Timing]:
    """Warms every contender up once (untimed: tracing/compilation excluded), then times them
    `repeats` times, interleaved.

    `groups` (default: one per contender) are contenders that are compared with each other:
    a group's members always run back to back, their order alternating every round, and the
    order of the groups rotates every round, so drift in the machine's load hits all alike.
    """
    names = list(contenders)
    groups = groups or [[name] for name in names]
    for name in names:
        start = time.perf_counter()
        contenders[name]()
        log(f"  warm-up {name}: {time.perf_counter() - start:.2f} s (not counted)")
    timings = {name: Timing(name) for name in names}
    for r in range(repeats):
        shift = r % len(groups)
        order = [name for group in groups[shift:] + groups[:shift] for name in (group if r % 2 == 0 else group[::-1])]
        for name in order:
            gc.collect()
            c0, t0 = time.process_time(), time.perf_counter()
            contenders[name]()
            t1, c1 = time.perf_counter(), time.process_time()
            timings[name].wall.append(t1 - t0)
            timings[name].cpu.append(c1 - c0)
        log(f"  round {r + 1}/{repeats}: " + ", ".join(f"{n} {timings[n].wall[-1]:.2f}s" for n in order))
    return timings


def time_process(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Runs `cmd` to completion (output discarded) and returns its (wall, CPU) seconds, the CPU time
    of the child and its own children (user + system). Raises when it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def paired_ratio(num: Timing, den: Timing) -> float:
    """Median over rounds of num/den measured in the same round (adjacent in time, so both saw
    about the same machine load) — steadier than a ratio of medians on a noisy machine."""
    return statistics.median(a / b for a, b in zip(num.wall, den.wall))


def load_average() -> str:
    """The machine's load averages, to be printed beside every timing."""
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg()) + f" (1/5/15 min, {os.cpu_count()} CPUs)"
    except OSError:
        return "unknown"


def revision() -> str:
    """The repository's commit, with '+dirty' when deadrelu/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "deadrelu"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"


def wait_for_idle(max_seconds: float, log: Callable[[str], None] = print) -> None:
    """Waits up to `max_seconds` for the 1-minute load average to drop below half the CPUs + 0.2."""
    if max_seconds <= 0 or not hasattr(os, "getloadavg"):
        return
    limit = (os.cpu_count() or 1) / 2 + 0.2
    start = time.time()
    while os.getloadavg()[0] > limit and time.time() - start < max_seconds:
        time.sleep(5)
    log(f"  waited {time.time() - start:.0f} s for load < {limit:.1f} (now {os.getloadavg()[0]:.2f})")


# -- output --------------------------------------------------------------------------------


def markdown_table(rows: list[tuple[str, str, str, str]]) -> str:
    header = ("measurement", "value", "target", "met?")
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(4)]

    def line(cells) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(row) for row in rows])


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")

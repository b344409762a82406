"""JAX: full batches of a forward scan run in groups, each group one compiled `jax.lax.scan`.

On XLA's CPU backend one compiled call over a whole group of batches costs less than the same
batches called one by one (docs/benchmarks.md, issue 28): `JaxStep` holds back its full batches and
runs them here as one array `[G, batch, ...]` through `jax.lax.scan`, whose body is the step's own
per-batch body (`JaxStep._forward`), so every batch is measured exactly as it would be alone.

- A group holds G full batches, G a power of two up to `MAX_GROUP` and to `GROUP_BYTES` of input
  (256 MB); the batches held when the data ends run as smaller power-of-two groups of at least
  `MIN_GROUP` (so at most one compiled program per size), fewer through the per-batch step: a
  group's program is compiled once per probe, which a scan of a few batches would not earn back.
  Short batches (the last one) always take the per-batch step.
- The scan returns each batch's packed statistics stacked (`[G, n]` per statistic), not running
  totals in its carry: the host adds them in float64 one batch at a time, as it adds the per-batch
  step's, so the totals are those of the per-batch path (on JAX without x64 a batch's sums are
  float32, and float32 running totals on the device would drift from them).
- Not used with gradients (the per-batch gradient step is at its floor) nor under a
  `keras.distribution` (the per-batch step places every batch on the mesh).

`jit` compiles the forward step and the groups' scan with `COMPILER_OPTIONS` where XLA takes them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: The most batches one group holds.
MAX_GROUP = 64
#: The fewest batches run as a group (fewer take the per-batch step: no program of their own).
MIN_GROUP = 4
#: The most input bytes one group holds (its batches are stacked into one array).
GROUP_BYTES = 256 * 2**20


_FUSIONS = "INDIVIDUAL_DOT", "INDIVIDUAL_CONVOLUTION", "REDUCE", "ELTWISE"
#: XLA's CPU compiler options of the forward step: YNNPACK's elementwise fusions besides the dot,
#: convolution and reduce ones XLA uses by default, so that a layer's bias and ReLU and the step's
#: statistics run inside YNNPACK's kernels (a scan of the MNIST CNN: 0.83× the time; docs/backends.md,
#: tests/bench/ab_jax_fusions.py). The numbers are the default compile's bit for bit on ReLU and
#: BatchNormalization models; after a tanh, sigmoid, GELU… YNNPACK's own approximations round
#: differently (1e-7 relative). The gradient step keeps the defaults (its backward pass would round
#: differently, and it is at its floor without them).
COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ",".join(f"LIBRARY_FUSION_TYPE_{t}" for t in _FUSIONS)}


def jit(fn: Callable) -> Callable:
    """`jax.jit(fn)`, with `COMPILER_OPTIONS` on a CPU whose XLA takes them (older ones do not), unless
    `DEADRELU_KERNEL=off` (deadrelu's own fast paths off: `jax.jit`'s defaults, as on TensorFlow its ops).

    Raises:
        UsageError: `DEADRELU_KERNEL` is neither "auto" nor "off".
    """
    import jax

    import deadrelu.kernel as kernel

    if kernel.mode() == "off" or not _takes_options():
        return jax.jit(fn)
    return jax.jit(fn, compiler_options=COMPILER_OPTIONS)


@functools.cache
def _takes_options() -> bool:
    import jax

    if jax.default_backend() != "cpu":
        return False
    try:
        jax.jit(lambda v: v + 1, compiler_options=COMPILER_OPTIONS).lower(np.float32(0)).compile()
    except (RuntimeError, TypeError, ValueError):  # XLA rejects the option (JaxRuntimeError), jax.jit lacks it
        return False
    return True


@dataclass
class Grouped:
    """The packed statistics of a group's batches, stacked: `{statistic: [batches, n]}` (device arrays)."""

    stats: dict

    def fetch(self) -> list[dict]:
        """One dict of numpy arrays per batch, in order."""
        import jax

        host = {name: np.asarray(value) for name, value in jax.device_get(self.stats).items()}
        batches = len(next(iter(host.values()))) if host else 0
        return [{name: value[i] for name, value in host.items()} for i in range(batches)]


class BatchGroups:
    """The full batches a `JaxStep` holds back, and the compiled `lax.scan` that runs them.

    Args:
        step: The `JaxStep` whose per-batch body the scan runs (`_forward`) and whose per-batch call
            takes a batch left alone (`run_batch`).
        example: One batch of the size the step was built for (fixes the group size).
    """

    def __init__(self, step, example):
        import jax

        self._step = step
        self._held: list = []
        self.traces = 0  # traces of the scan (its own compiled programs, apart from the step's)
        leaves = jax.tree_util.tree_leaves(example)
        batch_bytes = max(1, sum(np.asarray(a).nbytes for a in leaves))
        fits = max(1, min(MAX_GROUP, GROUP_BYTES // batch_bytes))
        self.size = 1 << (fits.bit_length() - 1)  # a power of two
        self._fn = jit(self._scan)

    def reset(self) -> None:
        """Drops the batches held (a pass that stopped half-way)."""
        self._held = []

    def hold(self, x) -> Grouped | None:
        """Holds full batch `x`; a full group runs at once (its statistics returned), else None."""
        self._held.append(x)
        if len(self._held) < self.size:
            return None
        group, self._held = self._held, []
        return self._run(group)

    def flush(self) -> list:
        """Runs the batches still held; returns their statistics (`Grouped`s and per-batch dicts)."""
        held, self._held = self._held, []
        out = []
        while len(held) >= MIN_GROUP:
            size = 1 << (len(held).bit_length() - 1)
            out.append(self._run(held[:size]))
            held = held[size:]
        out += [self._step.run_batch(x, None) for x in held]
        return out

    def _run(self, group: list) -> Grouped:
        import jax

        xs = jax.tree_util.tree_map(lambda *parts: np.stack([np.asarray(p) for p in parts]), *group)
        model = self._step.probe.model
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        valid = np.ones(self._step.size, np.float32)
        return Grouped(self._fn(trainable, non_trainable, xs, valid))

    def _scan(self, trainable, non_trainable, xs, valid):
        import jax

        self.traces += 1
        step = self._step
        before = step.traces  # the step's count is of its per-batch program

        def body(carry, x):
            # The same all-ones `valid` as the per-batch step's: the same program, the same numbers
            # (valid=None is another fusion, whose float sums differ in the last bits).
            return carry, step._forward(trainable, non_trainable, x, valid)

        _, stats = jax.lax.scan(body, (), xs)
        step.traces = before
        return stats

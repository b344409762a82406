"""Where a JAX scan's time goes above its floor: statistics formulations, one jitted step each (a script).

Issue 28. On the reference MNIST CNN (JAX backend, 5,000 MNIST images, batch 500), each variant
is one `jax.jit` of the model's `stateless_call` that also returns reductions of every ReLU site,
called per batch; every variant is warmed up once, then `--repeats` rounds interleaved (order
alternating), ratios are paired medians against the floor:

  floor          one scalar `jnp.sum` of each site output (the issue's floor of observing)
  output stats   per unit: fires (sum of sign), sum, max of the output — what the scan takes of it
  + z, sum       and z (the ReLU's input) kept, one scalar sum of it
  + z, 2 passes  and z's per-unit max, min and sums of d, d² with d = z − the batch's midrange
                 (the engine's formulation: the midrange needs a pass before the sums)
  + z, 1 pass    and z's per-unit max, min, sums of z, z² (no shift: loses the variance of a unit
                 far from zero in float32 — an upper bound on what one pass could gain)
  + z, first     and the sums shifted by each sample's first value (one pass, per-sample shift)
  + c, 2 passes  the layer's output before its bias (c, z = c + b) kept instead of z: the bias is
                 taken out of the layer (`use_bias=False` while traced) and added in the wrapper

Usage (from the repository root):
    python tests/bench/jax_floor_formulations.py --repeats 7
    python tests/bench/jax_floor_formulations.py --repeats 7 --deadrelu-options   # compiled as deadrelu's step
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C

VARIANTS = ("floor", "output stats", "+ z, sum", "+ z, 2 passes", "+ z, 1 pass", "+ z, first", "+ c, 2 passes")


def output_stats(a, axes) -> list:
    import jax.numpy as jnp

    return [jnp.sum(jnp.sign(a), axis=axes), jnp.sum(a, axis=axes), jnp.max(a, axis=axes)]


def z_stats(variant: str, z, axes) -> list:
    import jax.numpy as jnp

    if variant == "+ z, sum":
        return [jnp.sum(z)]
    high, low = jnp.max(z, axis=axes), jnp.min(z, axis=axes)
    if variant == "+ z, 1 pass":
        return [high, low, jnp.sum(z, axis=axes), jnp.sum(z * z, axis=axes)]
    if variant == "+ z, first":
        rows = z.reshape(z.shape[0], -1, z.shape[-1])
        first = rows[:, :1, :]
        d = rows - first
        return [high, low, jnp.sum(d, axis=1), jnp.sum(d * d, axis=1), first]
    d = z - (0.5 * high + 0.5 * low)  # "+ z, 2 passes" and "+ c, 2 passes"
    return [high, low, jnp.sum(d, axis=axes), jnp.sum(d * d, axis=axes)]


def make_step(model, variant: str, compiler_options: dict | None = None):
    """One jitted step: the model's forward, and the variant's reductions of each ReLU site."""
    import jax
    import keras

    layers = [layer for layer in model.layers if getattr(layer, "activation", None) is keras.activations.relu]
    before_bias = variant.startswith("+ c")

    def step(trainable, non_trainable, x):
        kept = []  # (what the statistics of z read, the site output)

        def wrap(layer, relu):
            def applied(value):
                z = value + layer.bias if before_bias else value
                a = relu(z)
                kept.append((value, a))
                return a

            return applied

        for layer in layers:
            layer.activation = wrap(layer, keras.activations.relu)
            layer.use_bias = not before_bias
        try:
            y, _ = model.stateless_call(trainable, non_trainable, x, training=False)
        finally:
            for layer in layers:
                layer.activation, layer.use_bias = keras.activations.relu, True
        reductions = []
        for z, a in kept:
            axes = tuple(range(a.ndim - 1))
            if variant == "floor":
                reductions.append(jax.numpy.sum(a))
                continue
            reductions += output_stats(a, axes)
            if variant != "output stats":
                reductions += z_stats(variant, z, axes)
        return y, reductions

    return jax.jit(step, compiler_options=compiler_options)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument(
        "--deadrelu-options",
        action="store_true",
        help="compile every variant as deadrelu compiles its step (steps_jax.COMPILER_OPTIONS)",
    )
    args = p.parse_args()

    import jax

    from deadrelu.engine import steps_jax

    model = C.mnist_cnn()
    x, _, source = C.load_inputs(args.samples)
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    batch = args.batch_size
    options = steps_jax.COMPILER_OPTIONS if args.deadrelu_options else None
    steps = {variant: make_step(model, variant, options) for variant in VARIANTS}

    def run(step) -> None:
        jax.block_until_ready([step(trainable, non_trainable, x[s : s + batch]) for s in range(0, len(x), batch)])

    print(f"deadrelu {C.revision()}; JAX {jax.__version__}; {source}; batch {batch}; compiler options {options}")
    print(f"load average before: {C.load_average()}")
    contenders = {variant: (lambda step=step: run(step)) for variant, step in steps.items()}
    times = C.time_interleaved(contenders, args.repeats, log=lambda line: None, groups=[list(contenders)])
    print(f"load average after: {C.load_average()}\n")
    print("| variant | seconds (median) | / floor (paired) |\n|---|---:|---:|")
    for variant, timing in times.items():
        print(f"| {variant} | {timing.median:.3f} | {C.paired_ratio(timing, times['floor']):.2f}× |")


if __name__ == "__main__":
    main()

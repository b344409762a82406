"""A/B of the JAX step's compiler options (issue 28; a script, not a pytest test).

In one process (KERAS_BACKEND=jax), on the same model and batches: the floor of observing compiled
as `jax.jit` compiles by default and compiled with deadrelu's options (YNNPACK's elementwise
fusions, `deadrelu.engine.steps_jax.COMPILER_OPTIONS`), `deadrelu.scan` as it is, and the same scan
of a copy of the model whose step is compiled with `jax.jit`'s defaults (a gradient scan's step
keeps the defaults: under those fusions its backward pass rounds differently). Each is warmed up once, then
`--repeats` rounds interleaved; ratios are paired medians. Before timing, the two scans' reports
are checked equal, number for number.

Usage (from the repository root):
    python tests/bench/ab_jax_fusions.py --repeats 7
    python tests/bench/ab_jax_fusions.py --models MobileNetV2,DenseNet121 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C
from bench_backends import cpu_model, floor_loop


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="cnn", help="cnn and/or MobileNetV2, DenseNet121 (comma-separated)")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()

    import keras

    import deadrelu
    from deadrelu.engine import steps_jax

    options = steps_jax.COMPILER_OPTIONS
    if not steps_jax._takes_options():
        sys.exit("this XLA does not take deadrelu's compiler options: nothing to compare")
    print(f"deadrelu {C.revision()}; CPU: {cpu_model()}; options: {options}")
    print(f"load average before: {C.load_average()}")
    rows = []
    for name in args.models.split(","):
        if name == "cnn":
            model, (x, _, source), batch = C.mnist_cnn(), C.load_inputs(5000), 500
        else:
            model, x, batch = C.application(name), C.uniform_images(128, (96, 96, 3)), 32
            source = "128 uniform 96×96×3 images"
        plain = keras.models.clone_model(model)
        plain.set_weights(model.get_weights())

        def scan(m, defaults=False, x=x, batch=batch):
            steps_jax.COMPILER_OPTIONS = {} if defaults else options
            try:
                return deadrelu.scan(m, x, batch_size=batch, verbose=0)
            finally:
                steps_jax.COMPILER_OPTIONS = options

        a, b = scan(model), scan(plain, defaults=True)  # the same numbers both ways (this also builds both steps)
        assert [s.to_dict() for s in a.sites] == [s.to_dict() for s in b.sites], f"{name}: reports differ"
        contenders = {
            "floor": floor_loop(model, x, batch),
            "floor_options": floor_loop(model, x, batch, options),
            "scan": lambda m=model: scan(m),
            "scan_defaults": lambda m=plain: scan(m, defaults=True),
        }
        groups = [list(contenders)]
        t = C.time_interleaved(contenders, args.repeats, log=lambda line: print(line, file=sys.stderr), groups=groups)
        label = "MNIST CNN" if name == "cnn" else name
        ratio = C.paired_ratio
        rows.append(f"| {label}: floor, deadrelu's options / floor | {ratio(t['floor_options'], t['floor']):.2f}× |")
        rows.append(f"| {label}: scan / floor | {ratio(t['scan'], t['floor']):.2f}× |")
        rows.append(f"| {label}: scan, jax.jit's defaults / floor | {ratio(t['scan_defaults'], t['floor']):.2f}× |")
        rows.append(f"| {label}: scan / scan, jax.jit's defaults | {ratio(t['scan'], t['scan_defaults']):.2f}× |")
        rows.append(f"| {label}: scan / floor, deadrelu's options | {ratio(t['scan'], t['floor_options']):.2f}× |")
        print(f"{name}: {source}, batch {batch}; load average now {C.load_average()}", flush=True)
    print(f"load average after: {C.load_average()}\n")
    print("| measurement (paired medians of " + f"{args.repeats} rounds) | ratio |\n|---|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

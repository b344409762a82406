"""Benchmark of a one-off `deadrelu scan` from the command line, as whole processes (a script, not a test).

What a user pays for one scan from a shell, against the plain script they would otherwise write:

  * plain: `python plain.py MODEL DATA` — `import keras`, `keras.models.load_model(MODEL)`,
    `np.load(DATA)["x"]`, `model.predict(x, batch_size=256)` (the CLI's default batch size);
  * cli: `deadrelu scan MODEL --data DATA` (table to stdout, discarded) — target ≤ 1.05 × plain;
  * help: `deadrelu --help` — target ≤ 0.3 s;

for the sample (`samples/dying_mlp.keras` on `samples/probe.npz`, 1,000 images) and a real file,
`../shared/models/moonflower_mnist_cnn_k311.keras` (a Keras 3.1 MNIST CNN) on the 10,000 MNIST test
images (x/255, written to a temporary .npz both read). Processes run interleaved (plain, cli,
cli, plain, ...), each pair back to back; the verdict is the paired median of cli / plain, with
the ratio of medians and of CPU times (user + system of the child) beside it, and the load average
before and after. Every process starts cold apart from the OS file cache, which the first,
untimed round warms.

Usage (from the repository root):
    python tests/bench/bench_cli.py                 # 7 rounds
    python tests/bench/bench_cli.py --repeats 3     # quicker
    python tests/bench/bench_cli.py --wait-idle 900 # on a shared machine: wait for a quiet moment
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import numpy as np

CLI_VS_PLAIN = 1.05
HELP_SECONDS = 0.3
BATCH_SIZE = 256  # `deadrelu scan`'s default --batch-size, given to predict too
REAL_MODEL = C.REPO.parent / "shared/models/moonflower_mnist_cnn_k311.keras"

PLAIN = """\
import sys

import keras
import numpy as np

model = keras.models.load_model(sys.argv[1])
with np.load(sys.argv[2]) as data:
    x = data["x"]
model.predict(x, batch_size=int(sys.argv[3]), verbose=0)
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before timing, wait up to this long for the machine's load to drop (default 0)",
    )
    return p.parse_args(argv)


def deadrelu_command() -> list[str]:
    """The installed console script, as a user runs it (else `python -m deadrelu`)."""
    script = shutil.which("deadrelu")
    return [script] if script else [sys.executable, "-m", "deadrelu"]


def cases(folder: Path) -> list[tuple[str, str, str]]:
    """(label, model path, data path) of every comparison this machine can run."""
    found = [
        (
            "sample dying_mlp.keras, 1,000 images",
            str(C.REPO / "samples/dying_mlp.keras"),
            str(C.REPO / "samples/probe.npz"),
        )
    ]
    if REAL_MODEL.exists() and C.MNIST.exists():
        with np.load(C.MNIST) as archive:
            x = (archive["x_test"][..., None] / np.float32(255.0)).astype(np.float32)
        data = folder / "mnist_test.npz"
        np.savez(data, x=x)
        found.append((f"real {REAL_MODEL.name}, {len(x):,} MNIST images", str(REAL_MODEL), str(data)))
    else:
        print(f"  ({REAL_MODEL} or {C.MNIST} not found: the real-file case is skipped)")
    return found


def main(argv=None) -> int:
    args = parse_args(argv)
    cli = deadrelu_command()
    env = dict(os.environ)
    print(
        f"# deadrelu CLI benchmark (whole processes; {os.cpu_count()} CPUs; {args.repeats} rounds; "
        f"deadrelu at {C.revision()})"
    )
    print(f"  command: {' '.join(cli)}; started at load {C.load_average()}")

    with tempfile.TemporaryDirectory(prefix="deadrelu-bench-") as tmp:
        folder = Path(tmp)
        plain_script = folder / "plain.py"
        plain_script.write_text(PLAIN)
        runs = {}
        for label, model, data in cases(folder):
            runs[label] = {
                "plain": [sys.executable, str(plain_script), model, data, str(BATCH_SIZE)],
                "cli": [*cli, "scan", model, "--data", data],
            }
        help_cmd = [*cli, "--help"]

        # One untimed round: the OS file cache (Python, TensorFlow's shared libraries, the files).
        for commands in runs.values():
            for cmd in commands.values():
                C.time_process(cmd, env)
        C.time_process(help_cmd, env)

        C.wait_for_idle(args.wait_idle)
        print(f"  load average before: {C.load_average()}")
        timings = {label: {name: C.Timing(name) for name in commands} for label, commands in runs.items()}
        help_timing = C.Timing("help")
        for r in range(args.repeats):
            for label, commands in runs.items():
                order = list(commands) if r % 2 == 0 else list(commands)[::-1]
                for name in order:
                    wall, cpu = C.time_process(commands[name], env)
                    timings[label][name].wall.append(wall)
                    timings[label][name].cpu.append(cpu)
            wall, cpu = C.time_process(help_cmd, env)
            help_timing.wall.append(wall)
            help_timing.cpu.append(cpu)
            print(
                f"  round {r + 1}/{args.repeats}: "
                + "; ".join(
                    f"{label.split(',')[0]}: plain {t['plain'].wall[-1]:.2f} s, cli {t['cli'].wall[-1]:.2f} s"
                    for label, t in timings.items()
                )
                + f"; --help {help_timing.wall[-1]:.2f} s"
            )
        print(f"  load average after: {C.load_average()}")

    print(
        "\n| case | plain load + predict | `deadrelu scan` | cli / plain (paired) | target | met? "
        "| cli / plain, medians | cli / plain, CPU |"
    )
    print("|---|---:|---:|---:|---|---|---:|---:|")
    for label, t in timings.items():
        paired = C.paired_ratio(t["cli"], t["plain"])
        print(
            f"| {label} | {t['plain'].median:.2f} s | {t['cli'].median:.2f} s | {paired:.2f}× | ≤ {CLI_VS_PLAIN}× "
            f"| {C.verdict(paired <= CLI_VS_PLAIN)} | {t['cli'].median / t['plain'].median:.2f}× "
            f"| {t['cli'].cpu_median / t['plain'].cpu_median:.2f}× |"
        )
    help_median = statistics.median(help_timing.wall)
    print(
        f"| `deadrelu --help` | | {help_median:.2f} s (best {help_timing.best:.2f} s) | | ≤ {HELP_SECONDS} s "
        f"| {C.verdict(help_median <= HELP_SECONDS)} | | |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m deadrelu.kernel build|status`: build the fused statistics kernel ahead of time, or say where it stands.

`build` is for images and CI: it builds the library into the cache now (trying again even after a
recorded failure) and loads it once to prove it works; exit 0 when it is built (now or before),
exit 2 with one line saying why when it cannot be. `status` prints one `name: value` line per fact
and builds nothing. Neither needs a Keras model; `--help` imports no TensorFlow.

Example:
    $ python -m deadrelu.kernel build
    built: /root/.cache/deadrelu/site_stats-9fa93a65d20caea7-5c1e0b7a.so
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import deadrelu.kernel as kernel
import deadrelu.kernel.build as build

EXIT_CANNOT = 2
EXIT_INTERRUPTED = 130


def parser() -> argparse.ArgumentParser:
    """The command line of `python -m deadrelu.kernel`."""
    top = argparse.ArgumentParser(
        prog="python -m deadrelu.kernel",
        description="deadrelu's fused statistics kernel (TensorFlow CPU ops compiled on this machine).",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="{build,status}")
    commands.add_parser(
        "build",
        help="build it now into the cache (for images and CI), even after a recorded failure; "
        "exit 0 when built, 2 when it cannot be",
        description="Builds the kernel into the cache now and loads it once. Exit 0: built (now or "
        "before); exit 2: it cannot be built (one line says why; the failure is recorded).",
    )
    commands.add_parser(
        "status",
        help="print where it stands, one line per fact; builds nothing",
        description="Prints the cache folder, the cache key, the compiler, TensorFlow, whether the "
        "library is built (or why its build failed), DEADRELU_KERNEL and what scans use.",
    )
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `python -m deadrelu.kernel` with `argv`; returns the exit status."""
    args = parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    from deadrelu.native_log import quiet_native_stderr

    warnings.filterwarnings("ignore")  # TensorFlow's and Keras's import-time warnings
    with quiet_native_stderr(True):
        try:
            return run_build() if args.command == "build" else run_status()
        except KeyboardInterrupt:
            sys.stderr.write("deadrelu: interrupted\n")
            return EXIT_INTERRUPTED


def run_build() -> int:
    """`build`: exit 0 with "built: PATH" or "already built: PATH", else exit 2 with one line."""
    try:
        import tensorflow  # noqa: F401 — the kernel is TensorFlow's: say so before anything else
    except ImportError as error:
        sys.stderr.write(f"deadrelu: the kernel cannot be built: TensorFlow does not import ({error})\n")
        return EXIT_CANNOT
    try:
        loaded = kernel.load(retry=True)
    except (OSError, build.BuildError) as error:
        where = f" (recorded in {error.record})" if getattr(error, "record", None) else ""
        sys.stderr.write(f"deadrelu: the kernel cannot be built: {first_line(error)}{where}\n")
        return EXIT_CANNOT
    print(f"{'built' if loaded.built else 'already built'}: {loaded.path}")
    return 0


def run_status() -> int:
    """`status`: one `name: value` line per fact; exit 0 (a fact may be that something is missing)."""
    print(f"cache: {build.cache_dir()}")
    try:
        import tensorflow as tf
    except ImportError as error:
        print(f"tensorflow: does not import ({error}); the kernel is TensorFlow's")
        print(f"DEADRELU_KERNEL: {setting()}")
        return 0
    parts = build.key_parts(tf)
    key = build.cache_key(parts)
    print(f"key: {key}")
    compiler = parts["compiler"]
    print(f"compiler: {compiler} ({parts['compiler_version']})")
    print(f"tensorflow: {parts['tensorflow']}")
    library, record = build.library_path(key), build.read_record(key)
    other = build.built_by_another_compiler(key) if compiler == "none" else None
    if library.is_file():
        state = f"built, {library}"
    elif other is not None:
        state = f"built by another compiler, {other}"
    elif record is not None:
        state = (
            f"failed at {record.get('time', '?')}: {record['reason']} (record {build.record_path(key)}); "
            f"{build.RETRY_HINT}"
        )
    elif compiler == "none":
        state = f"not built, and no compiler to build it ({parts['compiler_version']})"
    else:
        state = "not built (the first scan on TensorFlow builds it, or `python -m deadrelu.kernel build`)"
    print(f"library: {state}")
    print(f"DEADRELU_KERNEL: {setting()}")
    built, failed = library.is_file() or other is not None, record is not None or compiler == "none"
    print(f"scans use: {scans_use(built, failed)}")
    return 0


def setting() -> str:
    """`DEADRELU_KERNEL` as set, and whether it is valid."""
    value = os.environ.get("DEADRELU_KERNEL")
    if value is None:
        return "auto (not set)"
    try:
        return kernel.mode()
    except ValueError as error:
        return f"{value!r}, invalid: a scan stops with exit 2 ({error})"


def scans_use(built: bool, failed: bool) -> str:
    """What a scan in this environment computes its statistics with, and why."""
    try:
        off = kernel.off_reason()
    except ValueError:
        return "nothing: DEADRELU_KERNEL is invalid"
    if off is not None:
        return f"TensorFlow's ops ({off})"
    if built:
        return "the kernel"
    if failed:
        return "TensorFlow's ops (the library cannot be built; see library)"
    return "the kernel, once the first scan has built it"


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())

"""The fused statistics kernel: deadrelu's own TensorFlow CPU ops, built once on the user's machine.

On TensorFlow, a site's per-unit statistics written with TensorFlow's ops take four or five passes
over the activations (a sign, two sums over positions, a max-pool; more for gradients), and on a
CPU those passes cost a scan about a third of a forward pass. `site_stats.cc` computes them all in
one pass. It is compiled against the installed TensorFlow with the machine's C++ compiler the
first time a scan needs it (once: about 10 s on 2 cores), then loaded from the cache.

Without a compiler, or when the build fails, deadrelu says so once (a `RuntimeWarning`; the command
line prints it after its work) and uses TensorFlow's ops: the same numbers, slower — a NaN or ±inf
output (a diverged model) included: both count it in `non_finite` and read it as zero everywhere else. The kernel is
used on CPUs only (no GPU visible to TensorFlow), and never on the JAX and PyTorch backends (their
steps reduce with `keras.ops`).

Environment:
    DEADRELU_KERNEL: "auto" (build and use it when possible) or "off" (TensorFlow's ops only).
        Defaults to "auto".
    DEADRELU_CACHE_DIR: Where the built library is kept. Defaults to `$XDG_CACHE_HOME/deadrelu`,
        else `~/.cache/deadrelu`.
    CXX: The C++ compiler. Defaults to `c++`, else `g++`, else `clang++`, whichever is found.

Example:
    >>> from deadrelu import kernel
    >>> kernel.status()
    'built: /home/me/.cache/deadrelu/site_stats-3f2a….so'
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("site_stats.cc")
_MODES = ("auto", "off")
_BUILD_TIMEOUT_S = 300


def enabled() -> bool:
    """Whether the kernel should be used: TensorFlow is the backend and `DEADRELU_KERNEL` is not "off".

    Cheap (builds nothing): the probe calls it to decide, `ops()` then builds or loads.

    Raises:
        UsageError: `DEADRELU_KERNEL` is neither "auto" nor "off".
    """
    mode = os.environ.get("DEADRELU_KERNEL", "auto").strip().lower() or "auto"
    if mode not in _MODES:
        from deadrelu.errors import UsageError

        raise UsageError(f"DEADRELU_KERNEL={mode!r} is not one of {', '.join(_MODES)}: unset it or set it to 'off'")
    if mode == "off":
        return False
    import keras

    return keras.backend.backend() == "tensorflow"


def ops() -> Any | None:
    """The loaded op module (`deadrelu_site_stats`, `deadrelu_grad_stats`), or None.

    None when `enabled()` is false, when TensorFlow sees a GPU (the ops are CPU ops), or when
    the kernel could not be built (`status()` says why; a `RuntimeWarning` says it once).
    """
    if _off_reason() is not None:
        return None
    return _load()[0]


def status() -> str:
    """One line on the kernel: "built: PATH", "off: …" or "unavailable: …", with the reason.

    Example:
        >>> kernel.status()
        'off: DEADRELU_KERNEL=off (TensorFlow's ops are used)'
    """
    off = _off_reason()
    if off is not None:
        return f"off: {off} (TensorFlow's ops are used)"
    module, reason = _load()
    return f"built: {reason}" if module is not None else f"unavailable: {reason}"


def _off_reason() -> str | None:
    """Why the kernel is not to be used here, or None."""
    if not enabled():
        import keras

        backend = keras.backend.backend()
        return "DEADRELU_KERNEL=off" if backend == "tensorflow" else f"the Keras backend is {backend}"
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        return "TensorFlow sees a GPU, and the kernel is for CPUs"
    return None


# Once per process: TensorFlow registers the ops process-wide when the library is loaded.
@functools.cache
def _load() -> tuple[Any | None, str]:
    """Loads the kernel, building it first if the cache has none: (module or None, path or reason)."""
    import tensorflow as tf

    try:
        library = _library_path(tf)
        if library.exists():
            try:
                return tf.load_op_library(str(library)), str(library)
            except tf.errors.OpError:
                library.unlink(missing_ok=True)  # a damaged file in the cache: build it anew
        _build(tf, library)
        return tf.load_op_library(str(library)), str(library)
    except (OSError, RuntimeError, subprocess.SubprocessError, tf.errors.OpError) as error:
        # Any failure leaves TensorFlow's ops, which give the same numbers. The command line says
        # so after its work (`failure`), so that an error of the user's input stays one line.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(f"deadrelu: {unavailable_note(reason)}", RuntimeWarning, stacklevel=2)
        return None, reason


def failure() -> str | None:
    """Why this process could not build or load the kernel, if a scan tried to; else None.

    Never builds anything (the command line asks after its work, to print `unavailable_note`).
    """
    if _load.cache_info().currsize == 0:
        return None
    module, reason = _load()
    return None if module is not None else reason


def unavailable_note(reason: str) -> str:
    """The one line that tells a user the scan ran on TensorFlow's ops, and why."""
    return (
        f"the fused statistics kernel is unavailable ({reason}); the scan used TensorFlow's ops "
        "(the same numbers, slower). DEADRELU_KERNEL=off silences this"
    )


def _compiler() -> str:
    configured = os.environ.get("CXX")
    if configured:
        if not shutil.which(configured):
            raise RuntimeError(f"CXX={configured!r} is not an executable")
        return configured
    for candidate in ("c++", "g++", "clang++"):
        if shutil.which(candidate):
            return candidate
    raise RuntimeError("no C++ compiler found (install g++, or set CXX)")


def _flags(tf) -> list[str]:
    # -march=native: the library is built where it runs; its cache key names the CPU.
    return [
        "-shared",
        "-fPIC",
        "-O3",
        "-march=native",
        "-w",
        *tf.sysconfig.get_compile_flags(),
        *tf.sysconfig.get_link_flags(),
    ]


def _cache_dir() -> Path:
    configured = os.environ.get("DEADRELU_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "deadrelu"


def _library_path(tf) -> Path:
    """The cached library for this source, TensorFlow, compiler flags and CPU."""
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), tf.__version__, " ".join(_flags(tf)), platform.machine(), _cpu_model()):
        digest.update(part if isinstance(part, bytes) else part.encode())
    return _cache_dir() / f"site_stats-{digest.hexdigest()[:16]}.so"


def _cpu_model() -> str:
    """The CPU's model and instruction-set flags (the library is built with -march=native)."""
    wanted, found = ("model name", "flags", "Features"), {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key = line.split(":", 1)[0].strip()
                if key in wanted:
                    found.setdefault(key, line)
    except OSError:
        pass
    return "".join(found.values()) or platform.processor()


def _build(tf, library: Path) -> None:
    """Compiles `SOURCE` into `library`: into a temporary file first, renamed when complete, so a
    concurrent or interrupted build never leaves a broken library in the cache."""
    compiler = _compiler()
    library.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"deadrelu: building its statistics kernel for TensorFlow {tf.__version__} (once; cached in {library.parent})",
        file=sys.stderr,
    )
    handle, partial = tempfile.mkstemp(prefix=library.stem, suffix=".so.part", dir=library.parent)
    os.close(handle)
    try:
        done = subprocess.run(
            [compiler, str(SOURCE), "-o", partial, *_flags(tf)],
            capture_output=True,
            text=True,
            timeout=_BUILD_TIMEOUT_S,
        )
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "error" in line]
            raise RuntimeError(f"{compiler} failed: {(errors or done.stderr.splitlines() or ['?'])[0].strip()}")
        os.replace(partial, library)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)

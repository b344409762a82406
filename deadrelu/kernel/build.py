"""Building the fused statistics kernel: the compiler, the cache and its key, the lock, the failure record.

The library is compiled from `site_stats.cc` against the installed TensorFlow with the machine's C++
compiler and kept in the cache folder (`cache_dir()`) as `site_stats-<key>.so`. The key is a digest
of everything the library depends on (`key_parts`): the source, TensorFlow's version, build and
flags, the Python ABI, the CPU (it is built with `-march=native`), and the compiler's identity. It
has two halves, `<everything but the compiler>-<the compiler>`, so that a machine without a
compiler (an image whose build stage had one) still finds a library built for it by another.

Two processes that need the library at once build it once: the build holds a lock on
`site_stats-<key>.lock` (`fcntl.flock`; `msvcrt.locking` on Windows; none where the file system has
no locks), the other waits up to `LOCK_WAIT_S` and then loads what the first built. The library is
written to a temporary file and renamed into place, so the cache never holds half of one.

A build that fails leaves `site_stats-<key>.failed.json` (the reason, the compiler's last lines, the
key's parts, the time): later processes read it and do not try again — a failing build costs
about 10 s — until the key changes (another source, compiler or TensorFlow), or until
`python -m deadrelu.kernel build` retries (`ensure_built(retry=True)`).

Nothing here imports TensorFlow: the functions that need it take the module as an argument.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # everywhere else
    msvcrt = None

SOURCE = Path(__file__).with_name("site_stats.cc")
# A compile takes about 10 s on 2 cores; one that has not finished in 5 minutes never will.
BUILD_TIMEOUT_S = 300
# How long a process waits for another one's build before it goes on with TensorFlow's ops.
LOCK_WAIT_S = 120.0
# The compiler's last lines kept in the failure record.
RECORD_LINES = 20
RETRY_HINT = "`python -m deadrelu.kernel build` tries again"


class BuildError(RuntimeError):
    """The kernel could not be built or loaded; `str()` is the one-line reason.

    Attributes:
        output: The compiler's last lines, when it ran.
        record: The failure record that says so, when there is one.
    """

    def __init__(self, reason: str, *, output: str = "", record: Path | None = None):
        super().__init__(reason)
        self.output = output
        self.record = record


# -- the cache and its key ----------------------------------------------------------------------


def cache_dir() -> Path:
    """The cache folder: `$DEADRELU_CACHE_DIR`, else `$XDG_CACHE_HOME/deadrelu`, else `~/.cache/deadrelu`."""
    configured = os.environ.get("DEADRELU_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "deadrelu"


def find_compiler() -> tuple[list[str] | None, str]:
    """The C++ compiler: `$CXX` (which may carry arguments, "ccache g++"), else `c++`, `g++`, `clang++`.

    Returns:
        (the command, the first line of its `--version`), or (None, why there is none).
    """
    configured = os.environ.get("CXX", "").strip()
    if configured:
        try:
            command = shlex.split(configured)
        except ValueError:  # unbalanced quotes
            command = []
        if not command or not shutil.which(command[0]):
            return None, f"CXX={configured!r} is not an executable"
    else:
        found = next((name for name in ("c++", "g++", "clang++") if shutil.which(name)), None)
        if found is None:
            return None, "no C++ compiler found (install g++, or set CXX)"
        command = [found]
    command = [shutil.which(command[0]) or command[0], *command[1:]]
    try:
        done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"{command[0]} does not run ({error})"
    lines = [line.strip() for line in (done.stdout or done.stderr).splitlines() if line.strip()]
    return command, lines[0] if lines else f"no version (`--version` exited {done.returncode})"


def compile_flags(tf: ModuleType) -> list[str]:
    """The compiler's flags: a shared library against TensorFlow's headers and framework library."""
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


def key_parts(tf: ModuleType) -> dict[str, str]:
    """What the library depends on, by name; `cache_key` digests it, the failure record lists it."""
    command, version = find_compiler()
    build_info = json.dumps(dict(tf.sysconfig.get_build_info()), sort_keys=True, default=str)
    version_module = getattr(tf, "version", None)
    return {
        "source": hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16],
        "tensorflow": f"{tf.__version__} ({getattr(version_module, 'GIT_VERSION', '?')})",
        "tensorflow_build": f"{build_info}; compiler {getattr(version_module, 'COMPILER_VERSION', '?')}",
        "flags": " ".join(compile_flags(tf)),
        "python_abi": sysconfig.get_config_var("SOABI") or sys.implementation.cache_tag,
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "compiler": shlex.join(command) if command else "none",
        "compiler_version": version,
    }


def cache_key(parts: dict[str, str]) -> str:
    """`<digest of all but the compiler>-<digest of the compiler>`: 16 and 8 hex digits."""

    def digest(names) -> str:
        return hashlib.sha256("\0".join(f"{name}={parts[name]}" for name in names).encode()).hexdigest()

    compiler = ("compiler", "compiler_version")
    return f"{digest(n for n in parts if n not in compiler)[:16]}-{digest(compiler)[:8]}"


def library_path(key: str) -> Path:
    """The library of `key` in the cache."""
    return cache_dir() / f"site_stats-{key}.so"


def record_path(key: str) -> Path:
    """The failure record of `key` in the cache."""
    return cache_dir() / f"site_stats-{key}.failed.json"


def lock_path(key: str) -> Path:
    """The lock file that one build of `key` holds."""
    return cache_dir() / f"site_stats-{key}.lock"


def built_by_another_compiler(key: str) -> Path | None:
    """The newest library for the same source, TensorFlow and CPU built with another compiler, if any."""
    first_half = key.split("-")[0]
    found = [path for path in cache_dir().glob(f"site_stats-{first_half}-*.so") if path.is_file()]
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


def cpu_model() -> str:
    """The CPU's model and a digest of its instruction-set flags (the library is built with -march=native)."""
    wanted, found = ("model name", "flags", "Features"), {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                name, _, value = line.partition(":")
                if name.strip() in wanted:
                    found.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    if not found:
        return platform.processor()
    flags = found.get("flags", found.get("Features", ""))
    return f"{found.get('model name', '?')} (flags {hashlib.sha256(flags.encode()).hexdigest()[:12]})"


# -- the failure record -------------------------------------------------------------------------


def read_record(key: str) -> dict[str, Any] | None:
    """The failure record of `key`, or None (a damaged record counts as none: the build is tried again)."""
    try:
        record = json.loads(record_path(key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("reason"), str) else None


def write_record(key: str, parts: dict[str, str], error: BuildError) -> Path | None:
    """Writes the failure record of `key` (atomically); returns its path, or None when the cache takes no files."""
    from deadrelu.errors import DeadReluError
    from deadrelu.io.files import write_json

    path = record_path(key)
    record = {
        "reason": str(error),
        "compiler_output": error.output.splitlines()[-RECORD_LINES:],
        "key": key,
        "parts": parts,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        write_json(path, record)
    except (OSError, DeadReluError):
        return None  # a read-only cache: every process tries again, as before the record existed
    return path


def recorded_error(key: str, record: dict[str, Any]) -> BuildError:
    """The error a recorded failure stands for: its reason and when it happened."""
    return BuildError(
        f"its build failed at {record.get('time', '?')}: {record['reason']}; not tried again until the "
        "source, the compiler or TensorFlow changes",
        output="\n".join(record.get("compiler_output") or []),
        record=record_path(key),
    )


# -- the lock -----------------------------------------------------------------------------------


def _try_lock(handle) -> bool:
    """Takes the lock on `handle` if it is free: True when taken, or when this system has no locks."""
    if fcntl is not None:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another process holds it
        except OSError:
            return True  # a file system without locks (some NFS): unlocked, the rename keeps the cache whole
        return True
    if msvcrt is not None:
        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
    return True


def _unlock(handle) -> None:
    with contextlib.suppress(OSError):
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        elif msvcrt is not None:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)


@contextlib.contextmanager
def build_lock(path: Path, wait: float = LOCK_WAIT_S) -> Iterator[None]:
    """Holds the lock file `path` for the block, waiting up to `wait` seconds for another process.

    Raises:
        BuildError: The lock file cannot be created, or another process held it for over `wait` seconds.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+b")  # noqa: SIM115 — closed below, after the unlock
    except OSError as error:
        raise BuildError(f"the cache folder {path.parent} takes no files ({error.strerror or error})") from None
    with handle:
        deadline = time.monotonic() + wait
        said = False
        while not _try_lock(handle):
            if time.monotonic() >= deadline:
                raise BuildError(f"another process has been building it for over {wait:g} s (lock {path})")
            if not said:
                print("deadrelu: waiting for another process to build the statistics kernel", file=sys.stderr)
                said = True
            time.sleep(0.1)
        try:
            yield
        finally:
            _unlock(handle)


# -- building -----------------------------------------------------------------------------------


def ensure_built(tf: ModuleType, *, retry: bool = False, wait: float = LOCK_WAIT_S) -> tuple[Path, bool]:
    """The library for this machine, built first when the cache has none.

    Args:
        tf: The `tensorflow` module.
        retry: Build even when a failure is recorded for this key (`python -m deadrelu.kernel build`).
        wait: Seconds to wait for another process's build.

    Returns:
        (the library's path, whether this call built it).

    Raises:
        BuildError: No compiler, the compiler failed (now or before, as recorded), the cache takes no
            files, or another process's build took over `wait` seconds.
    """
    parts = key_parts(tf)
    key = cache_key(parts)
    library = library_path(key)
    if library.is_file():
        return library, False
    if parts["compiler"] == "none":
        other = built_by_another_compiler(key)
        if other is not None:
            return other, False
    record = read_record(key)
    if record is not None and not retry:
        raise recorded_error(key, record)
    with build_lock(lock_path(key), wait):
        if library.is_file():  # built by the process that held the lock
            return library, False
        record = read_record(key)
        if record is not None and not retry:  # that process failed: so would this one
            raise recorded_error(key, record)
        try:
            compile_library(tf, parts, library)
        except BuildError as error:
            error.record = write_record(key, parts, error)
            raise
        with contextlib.suppress(OSError):
            record_path(key).unlink(missing_ok=True)
        return library, True


def compile_library(tf: ModuleType, parts: dict[str, str], library: Path) -> None:
    """Compiles `SOURCE` into `library` with the compiler of `parts`, through a temporary file.

    Raises:
        BuildError: No compiler, the compiler failed or timed out, or the cache takes no files.
    """
    from deadrelu.errors import DeadReluError
    from deadrelu.io.files import atomic_output

    if parts["compiler"] == "none":
        raise BuildError(parts["compiler_version"])
    command = shlex.split(parts["compiler"])
    name = os.path.basename(command[0])
    print(
        f"deadrelu: building its statistics kernel for TensorFlow {tf.__version__} (once; cached in {library.parent})",
        file=sys.stderr,
    )
    try:
        with atomic_output(str(library), suffix=".so") as partial:
            try:
                done = subprocess.run(
                    [*command, str(SOURCE), "-o", partial, *compile_flags(tf)],
                    capture_output=True,
                    text=True,
                    timeout=BUILD_TIMEOUT_S,
                )
            except subprocess.TimeoutExpired:
                raise BuildError(f"{name} took over {BUILD_TIMEOUT_S} s") from None
            except OSError as error:
                raise BuildError(f"{name} does not run ({error.strerror or error})") from None
            if done.returncode != 0:
                output = (done.stderr or done.stdout).strip()
                errors = [line for line in output.splitlines() if "error" in line]
                first = (errors or output.splitlines() or ["no output"])[0].strip()
                raise BuildError(f"{name} failed (exit {done.returncode}): {first}", output=output)
    except (OSError, DeadReluError) as error:  # the cache folder takes no files
        raise BuildError(f"the library cannot be written to {library.parent} ({error})") from None

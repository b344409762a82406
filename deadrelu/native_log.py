"""What native code writes to stderr: kept off the terminal, shown when the process crashes.

TensorFlow's C++ runtime (and JAX's, PyTorch's) writes start-up lines to file descriptor 2 even
with `TF_CPP_MIN_LOG_LEVEL` set: oneDNN, cudart, absl. The command line keeps them off the
user's terminal (`quiet_native_stderr`), and Python's own `sys.stderr` — deadrelu's messages,
tracebacks — keeps pointing at the terminal. But a process that dies in native code (a
TensorFlow `CHECK` failure, an abort, a segmentation fault) writes its last words to descriptor 2
too, and runs no Python code afterwards. So descriptor 2 goes into a pipe read by a small watcher
process instead of to /dev/null:

- the watcher keeps the last 64 KiB it reads;
- when the command ends in Python — normally, with an error, on Ctrl-C or SIGTERM — it writes a
  random token into the pipe before taking descriptor 2 back, and the watcher drops what it kept;
- when the pipe closes without the token (the process died in native code, or was killed), the
  watcher writes a line saying so and what it kept to the real stderr;
- `faulthandler` writes the Python traceback of a fatal signal (SIGSEGV, SIGABRT, SIGFPE,
  SIGBUS, SIGILL) to the real stderr at once.

The watcher runs in its own session, so Ctrl-C in the terminal does not stop it before the
command has unwound. Where it cannot start, descriptor 2 goes to /dev/null as before, with
`faulthandler` still on the real stderr.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import subprocess
import sys
from collections.abc import Iterator

# What the watcher keeps of the native output (the end of it: a crash's last words).
KEEP_BYTES = 1 << 16

_WATCHER = r"""
import os, sys
token, keep = sys.argv[1].encode(), int(sys.argv[2])
tail, clean = b"", False
while True:
    chunk = os.read(0, 1 << 16)
    if not chunk:
        break
    tail = (tail + chunk)[-(keep + len(token)):]
    clean = clean or token in tail
if not clean:
    out = sys.stderr.buffer
    out.write(b"deadrelu: the process ended abnormally, in native code (TensorFlow, a backend, or deadrelu's "
              b"kernel) or killed; what it wrote to stderr follows. Please report it with this output.\n")
    out.write(tail[-keep:])
    if tail and not tail.endswith(b"\n"):
        out.write(b"\n")
    out.flush()
"""


@contextlib.contextmanager
def quiet_native_stderr(enabled: bool) -> Iterator[None]:
    """Keeps native output on file descriptor 2 off the terminal, and shows it if the process crashes.

    Python's `sys.stderr` keeps writing to the real stderr, so deadrelu's messages and any
    traceback still show. See the module docstring for how a crash stays visible.

    Args:
        enabled: False does nothing (`--verbose`: everything goes to the terminal).

    Example:
        >>> with quiet_native_stderr(True):
        ...     import tensorflow  # its start-up lines are kept, and dropped at the end
    """
    if not enabled:
        yield
        return
    # Level 2 keeps INFO and WARNING out of the kept output; errors and fatal lines stay in it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    real_stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8", errors="replace")
    token = os.urandom(16).hex()
    watcher = _start_watcher(saved, token)
    old_sys_stderr = sys.stderr
    handler = not faulthandler.is_enabled()  # leave one set up by others (pytest, PYTHONFAULTHANDLER) alone
    if handler:
        faulthandler.enable(file=real_stderr, all_threads=True)
    sys.stderr = real_stderr
    try:
        yield
    finally:
        sys.stderr.flush()
        if watcher is not None:
            with contextlib.suppress(OSError):  # the watcher may be gone: nothing to tell it
                os.write(2, token.encode())
        os.dup2(saved, 2)  # the pipe's last write end closes: the watcher reads to its end
        os.close(saved)
        if handler:
            faulthandler.disable()
        sys.stderr = old_sys_stderr
        real_stderr.close()
        if watcher is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                watcher.wait(timeout=5)


def _start_watcher(real_stderr: int, token: str) -> subprocess.Popen | None:
    """Points descriptor 2 at a pipe read by the watcher (or at /dev/null when it cannot start)."""
    read, write = os.pipe()
    try:
        watcher = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHER, token, str(KEEP_BYTES)],
            stdin=read,
            stdout=subprocess.DEVNULL,
            stderr=real_stderr,
            start_new_session=True,  # Ctrl-C in the terminal reaches the command, not the watcher
        )
    except (OSError, ValueError):  # no interpreter to start (an embedded Python): drop the output
        os.close(read)
        os.close(write)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        return None
    os.close(read)
    os.dup2(write, 2)
    os.close(write)
    return watcher

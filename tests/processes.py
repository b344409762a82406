"""Subprocesses for tests: started together, bounded in time, always killed and reaped.

Each process runs in its own session, so a kill reaches everything it started (pytest and its
workers, a scan and its compiler). Output goes to unnamed temporary files, not pipes: a process
blocked on a full pipe would hold up the others (the workers of a cluster wait for each other).

Example:
    >>> (done,) = run_at_once([[sys.executable, "-m", "pytest", "tests/backends"]], envs=[env], cwd=ROOT, timeout=300)
    >>> done.returncode   # None: killed at the deadline
    0
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


@dataclasses.dataclass
class Finished:
    """What one process did: its exit code (None if killed at the deadline), stdout and stderr (with
    `merge_stderr`, stderr is in stdout and this is "")."""

    returncode: int | None
    stdout: str
    stderr: str


def run_at_once(
    argvs: Sequence[Sequence[str]],
    *,
    envs: Sequence[dict],
    cwd: Path | Sequence[Path],
    timeout: float,
    merge_stderr: bool = False,
) -> list[Finished]:
    """Starts every argv at once and waits for all within one deadline.

    Args:
        argvs: One command per process.
        envs: One complete environment per process.
        cwd: The working folder of every process, or one per process.
        timeout: Seconds for all of them; those still running then are killed.
        merge_stderr: Send each process's stderr into its stdout (one interleaved log).

    Returns:
        One `Finished` per process, in order; a killed one's log ends with "[killed after N s]".
    """
    folders = [Path(cwd)] * len(argvs) if isinstance(cwd, (str, os.PathLike)) else [Path(c) for c in cwd]
    logs = [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in argvs]  # noqa: SIM115
    processes: list[subprocess.Popen] = []
    try:
        for argv, env, folder, (out, err) in zip(argvs, envs, folders, logs):
            processes.append(
                subprocess.Popen(
                    list(argv),
                    cwd=folder,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT if merge_stderr else err,
                    text=True,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + timeout
        codes = []
        for process in processes:
            try:
                codes.append(process.wait(timeout=max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                kill(process)
                codes.append(None)
        results = []
        for (out, err), code in zip(logs, codes):
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
            if code is None:
                note = f"\n[killed after {timeout:g} s]"
                stdout, stderr = (stdout + note, stderr) if merge_stderr else (stdout, stderr + note)
            results.append(Finished(code, stdout, stderr))
        return results
    finally:
        for process in processes:
            kill(process)
        for out, err in logs:
            out.close()
            err.close()


def kill(process: subprocess.Popen) -> None:
    """Kills the process's whole session (it and anything it started) and reaps it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)

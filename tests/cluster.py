"""A real `MultiWorkerMirroredStrategy` cluster on localhost, for tests: worker subprocesses with `TF_CONFIG`.

Each worker is a new process in its own session (so a kill reaches everything it started), on free
127.0.0.1 ports, told its place by `TF_CONFIG` as TensorFlow reads it. `run_cluster` waits for all
of them within one time bound, and always kills and reaps every worker, even on a failure or a
timeout.

Example:
    >>> results = run_cluster([sys.executable, "-m", "deadrelu", "scan", "m.keras", "--strategy",
    ...                        "multi-worker"], workers=2, cwd=tmp_path, timeout=120)
    >>> [r.returncode for r in results]
    [0, 0]
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


@dataclasses.dataclass
class WorkerResult:
    """What one worker did: its index, exit code (None if killed on timeout), stdout, stderr."""

    index: int
    returncode: int | None
    stdout: str
    stderr: str


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 now (bound together, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_config(ports: Sequence[int], index: int) -> str:
    """The `TF_CONFIG` of worker `index` in a cluster of workers on `ports` (worker 0 is the chief)."""
    workers = [f"127.0.0.1:{port}" for port in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def run_cluster(
    command: Sequence[str] | Sequence[Sequence[str]],
    *,
    workers: int = 2,
    cwd: Path | Sequence[Path],
    timeout: float = 120.0,
    env: dict | None = None,
) -> list[WorkerResult]:
    """Runs `command` on `workers` worker processes of one localhost cluster and waits for all.

    Args:
        command: The argv every worker runs, or one argv per worker.
        workers: How many workers.
        cwd: The working folder of every worker, or one per worker.
        timeout: Seconds for the whole cluster; workers still running then are killed (their
            `returncode` is None).
        env: Extra environment variables (TensorFlow's logs are silenced, GPUs hidden).

    Returns:
        One `WorkerResult` per worker, in index order.
    """
    argvs = [list(command)] * workers if isinstance(command[0], str) else [list(c) for c in command]
    folders = [Path(cwd)] * workers if isinstance(cwd, (str, os.PathLike)) else [Path(c) for c in cwd]
    ports = free_ports(workers)
    base = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    processes: list[subprocess.Popen] = []
    # Output goes to unnamed temporary files, not pipes: a worker blocked on a full pipe would hold
    # up the whole cluster (its peers wait for it in every collective).
    logs = [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in range(workers)]  # noqa: SIM115
    try:
        for index in range(workers):
            processes.append(
                subprocess.Popen(
                    argvs[index],
                    cwd=folders[index],
                    env={**base, "TF_CONFIG": tf_config(ports, index)},
                    stdout=logs[index][0],
                    stderr=logs[index][1],
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
                _kill(process)
                codes.append(None)
        results = []
        for index, ((out, err), code) in enumerate(zip(logs, codes)):
            out.seek(0)
            err.seek(0)
            note = "" if code is not None else f"\n[killed after {timeout:g} s]"
            results.append(WorkerResult(index, code, out.read(), err.read() + note))
        return results
    finally:
        for process in processes:
            _kill(process)
        for out, err in logs:
            out.close()
            err.close()


def _kill(process: subprocess.Popen) -> None:
    """Kills the worker's whole session (it and anything it started) and reaps it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)

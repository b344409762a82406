"""A real `MultiWorkerMirroredStrategy` cluster on localhost, for tests: worker subprocesses with `TF_CONFIG`.

Each worker is a new process (started by `processes.run_at_once`: in its own session, bounded in
time, always killed and reaped, even on a failure or a timeout), on free 127.0.0.1 ports, told its
place by `TF_CONFIG` as TensorFlow reads it.

Example:
    >>> results = run_cluster([sys.executable, "-m", "deadrelu", "scan", "m.keras", "--strategy",
    ...                        "multi-worker"], workers=2, cwd=tmp_path, timeout=120)
    >>> [r.returncode for r in results]
    [0, 0]
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from processes import run_at_once


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
    ports = free_ports(workers)
    base = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    envs = [{**base, "TF_CONFIG": tf_config(ports, index)} for index in range(workers)]
    done = run_at_once(argvs, envs=envs, cwd=cwd, timeout=timeout)
    return [WorkerResult(index, d.returncode, d.stdout, d.stderr) for index, d in enumerate(done)]

"""Output files: written to a temporary file beside the target, then renamed into place."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

from deadrelu.errors import UsageError


def check_output_path(path: str, *, force: bool = True) -> str:
    """Checks that `path` can be written; returns it as a string.

    Raises:
        UsageError: The folder does not exist, or the file exists and `force` is False.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"output folder does not exist: {folder}; create it or choose another path")
    if not force and os.path.exists(path):
        raise UsageError(f"{path} exists; choose another output path or pass --force to overwrite it")
    return path


@contextlib.contextmanager
def atomic_output(path: str, *, suffix: str | None = None) -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it onto `path` when the block succeeds.

    The temporary file keeps `path`'s extension (or `suffix`), since writers such as Keras and
    matplotlib choose the format from it. On failure the temporary file is removed and `path` is
    left as it was.

    Example:
        >>> with atomic_output("report.json") as tmp:
        ...     write_json(tmp)
    """
    path = check_output_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    ext = suffix if suffix is not None else os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".deadrelu-", suffix=ext, dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

"""Output files: written to a temporary file beside the target, then renamed into place."""

from __future__ import annotations

import contextlib
import json
import math
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
        raise UsageError(f"{path} exists; choose another output path or pass `force=True` to overwrite it")
    return path


def check_output_folder(folder: str, *, create: bool = False) -> str:
    """Checks that `folder` is, or can become, a folder to write files into; returns it as a string.

    The check of `--plot-dir`: run once when the flag is parsed (before any work, creating
    nothing) and again with `create=True` just before the figures are written.

    Args:
        folder: The folder: an existing one, or a new one whose parent folder exists.
        create: Also create the folder when it does not exist yet.

    Returns:
        `folder` as a string.

    Raises:
        UsageError: Something other than a folder (a file, a broken link) has that name, or the
            parent folder does not exist.
    """
    folder = os.fspath(folder)
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise UsageError(f"{folder} exists and is not a folder; give a folder (an existing one, or a new one "
                         "to create)")
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(parent):
        raise UsageError(f"cannot create the folder {folder}: its parent folder {parent} does not exist; "
                         "create it or choose another path")
    if create:
        os.makedirs(folder, exist_ok=True)
    return folder


@contextlib.contextmanager
def atomic_output(path: str, *, suffix: str | None = None) -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it onto `path` when the block succeeds.

    The temporary file keeps `path`'s extension (or `suffix`), since writers such as Keras and
    matplotlib choose the format from it. On failure the temporary file is removed and `path` is
    left as it was.

    Example:
        >>> with atomic_output("model.keras") as tmp:
        ...     model.save(tmp)
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


def write_json(path, obj) -> None:
    """Writes `obj` as JSON to `path`, atomically (see `atomic_output`).

    NaN and infinities (a diverged loss, say) are written as `null`: the file stays valid JSON,
    which has no NaN, for every reader.
    """
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(_finite(obj), f, indent=1, allow_nan=False)


def _finite(obj):
    """`obj` with every non-finite float replaced by None (dicts, lists and tuples walked)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    return obj

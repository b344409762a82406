"""Files: where outputs may go, how they are written, and which paths name the same file.

Every output is written to a temporary file beside its target and renamed into place, so an
interrupted write leaves the target as it was. The temporary file is named
`.deadrelu-tmp-<pid>-<random>-<target name>`: a run killed with SIGKILL leaves one behind, and the
next write into that folder removes it once process `<pid>` is gone.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Iterator

from deadrelu.errors import UsageError

TEMP_PREFIX = ".deadrelu-tmp-"
_TEMP_NAME = re.compile(r"^\.deadrelu-tmp-(\d+)-")


# -- which file a path names -----------------------------------------------------------------


def same_file(a: str, b: str) -> bool:
    """Whether `a` and `b` name the same file or folder.

    Compared after resolving symbolic links and relative spellings (`./x`, `dir/../x`), and by
    device and inode when both exist (hard links, case-insensitive file systems).
    """
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def is_inside(path: str, folder: str) -> bool:
    """Whether `path` lies inside `folder` (at any depth), symbolic links resolved."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path != folder and os.path.commonpath([path, folder]) == folder


def data_file(spec: str) -> str:
    """The file or folder a data argument reads: 'x.npz:key' → 'x.npz', 'f.h5:group/ds' → 'f.h5'.

    The same rule as the data readers: a path that exists as it is (a name may hold ':'), else
    the shortest prefix before a ':' that is a file, else the part before the first ':' when it
    names an `.npz`/HDF5 file that does not exist; anything else as it is.
    """
    spec = os.fspath(spec)
    if os.path.exists(spec):
        return spec
    index = spec.find(":")
    while index != -1:
        if os.path.isfile(spec[:index]):
            return spec[:index]
        index = spec.find(":", index + 1)
    head, sep, _ = spec.partition(":")
    if sep and head.lower().endswith((".npz", ".h5", ".hdf5")):
        return head
    return spec


def file_kind(path: str) -> str | None:
    """What `path` is when it is neither a regular file nor a folder ("a FIFO", "a socket", ...), else None.

    Symbolic links are followed; a path that does not exist gives None.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kinds = (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


# -- where outputs may go --------------------------------------------------------------------


def check_output_path(path: str, *, force: bool = True) -> str:
    """Checks that a file can be written at `path`; returns it as a string.

    Nothing is written except a probe file, created and removed at once, that proves the folder
    takes new files (permissions alone cannot tell, e.g. for root or in /proc).

    Args:
        path: The output file.
        force: Whether an existing file at `path` may be replaced.

    Raises:
        UsageError: `path` is a folder or a special file (a device, a FIFO), its folder does not
            exist or takes no new files, or the file exists and `force` is False.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UsageError(f"{path} is a folder; give the path of a file to write")
    kind = file_kind(path)
    if kind is None and _in_system_folder(path):
        kind = "in a system folder (/dev, /proc, /sys)"
    if kind is not None:
        raise UsageError(
            f"{path} is {kind}, not a regular file; deadrelu writes a new file and renames it into "
            "place, which would replace that entry: give the path of a regular file"
        )
    _check_folder_takes_files(os.path.dirname(os.path.abspath(path)))
    if not force and os.path.lexists(path):
        raise UsageError(f"{path} exists; choose another output path or pass `force=True` to overwrite it")
    return path


def check_output_folder(folder: str, *, create: bool = False) -> str:
    """Checks that `folder` is, or can become, a folder to write files into; returns it as a string.

    The check of `--plot-dir`: run once before any work (creating nothing) and again with
    `create=True` just before the figures are written.

    Args:
        folder: The folder: an existing one, or a new one whose parent folder exists.
        create: Also create the folder when it does not exist yet.

    Returns:
        `folder` as a string.

    Raises:
        UsageError: Something other than a folder (a file, a broken link) has that name, or the
            parent folder does not exist, or the folder (or its parent) takes no new files.
    """
    folder = os.fspath(folder)
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise UsageError(
            f"{folder} exists and is not a folder; give a folder (an existing one, or a new one to create)"
        )
    if os.path.isdir(folder):
        _check_folder_takes_files(folder)
    else:
        parent = os.path.dirname(os.path.abspath(folder))
        if not os.path.isdir(parent):
            raise UsageError(
                f"cannot create the folder {folder}: its parent folder {parent} does not exist; "
                "create it or choose another path"
            )
        _check_folder_takes_files(parent)
        if create:
            os.makedirs(folder, exist_ok=True)
    return folder


# Pseudo file systems: renaming onto /dev/stdout would replace the link itself (as root, for everyone).
_SYSTEM_FOLDERS = ("/dev", "/proc", "/sys")


def _in_system_folder(path: str) -> bool:
    """Whether `path`, as given or where its links lead, lies in /dev, /proc or /sys (POSIX)."""
    if os.name != "posix":
        return False
    return any(
        p == root or p.startswith(root + "/")
        for p in {os.path.abspath(path), os.path.realpath(path)}
        for root in _SYSTEM_FOLDERS
    )


def _check_folder_takes_files(folder: str) -> None:
    """Raises UsageError unless a new file can be created in `folder` (tried with a probe file)."""
    if not os.path.isdir(folder):
        blocker = folder
        while blocker and not os.path.lexists(blocker):
            blocker = os.path.dirname(blocker)
        if blocker and not os.path.isdir(blocker):
            raise UsageError(f"output folder {folder} cannot exist: {blocker} is a file; choose another path")
        raise UsageError(f"output folder does not exist: {folder}; create it or choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix="-probe", dir=folder)
    except OSError as exc:
        raise UsageError(f"cannot create files in {folder} ({exc.strerror or exc}); choose another folder") from None
    os.close(fd)
    os.remove(probe)


# -- writing ---------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(path: str, *, suffix: str | None = None, force: bool = True) -> Iterator[str]:
    """Yields a temporary path beside `path`; moves it to `path` when the block succeeds.

    The temporary file keeps `path`'s extension (or `suffix`), since writers such as Keras and
    matplotlib choose the format from it. On failure, Ctrl-C or SIGTERM (see `deadrelu.cli`) it
    is removed and `path` is left as it was; stale temporary files of processes that are gone
    (killed with SIGKILL) are removed from the folder first.

    Without `force`, whether `path` exists is decided at the last moment, atomically: the file is
    hard-linked to `path`, which fails if another process wrote `path` in the meantime.

    Args:
        path: The file to write.
        suffix: The extension of the temporary file, when it is not `path`'s.
        force: Replace `path` if it exists.

    Raises:
        UsageError: `path` cannot be written (see `check_output_path`), or it exists and `force`
            is False (also when another process created it while the block ran).

    Example:
        >>> with atomic_output("model.keras") as tmp:
        ...     model.save(tmp)
    """
    path = check_output_path(path, force=force)
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(folder)
    name = os.path.basename(path)
    ext = suffix if suffix is not None else os.path.splitext(path)[1]
    tail = name if name.endswith(ext) else name + ext
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=f"-{tail[-120:]}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if force:
            os.replace(tmp, path)
        else:
            _move_exclusive(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def _move_exclusive(tmp: str, path: str) -> None:
    """Moves `tmp` to `path` unless `path` exists, deciding atomically (no check-then-rename race)."""
    exists = UsageError(
        f"{path} exists (written while this run worked); choose another output path or pass "
        "`force=True` to overwrite it"
    )
    try:
        os.link(tmp, path)  # fails if `path` exists, whoever created it
    except FileExistsError:
        raise exists from None
    except OSError:  # a file system without hard links: reserve the name, then rename onto it
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            raise exists from None
        os.replace(tmp, path)
    else:
        os.remove(tmp)


def remove_stale_temporaries(folder: str) -> list[str]:
    """Removes deadrelu's temporary files in `folder` whose process is gone; returns their paths.

    Only names of the form `.deadrelu-tmp-<pid>-...` are touched, and only when no process
    `<pid>` runs (a run killed with SIGKILL leaves its temporary file behind).
    """
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return []
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            match = _TEMP_NAME.match(entry.name)
            if match and not _process_alive(int(match[1])) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(entry.path)
                    removed.append(entry.path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as another user
        return True
    return True


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

"""Which files a checkpoint scan reads, in which order, and the epoch of each.

`keras.callbacks.ModelCheckpoint` leaves a folder of files such as `epoch_01.keras … epoch_30.keras`
or `weights.05-0.43.h5`. `checkpoint_files` turns what the user gave — a folder, a glob pattern, or
files listed one by one — into `CheckpointFile`s in order:

* a folder (one that is not itself a SavedModel) or a glob pattern: its model files — `.keras`,
  `.h5` and `.hdf5` files and SavedModel folders (with a `saved_model.pb`); hidden files and others
  are left out — sorted by the epoch in their names, then naturally by name (`epoch_2` before
  `epoch_10`); files whose names hold no number come last;
* files listed one by one: the order given (a folder or a pattern among them is expanded in place).

A file's epoch is the number after "epoch" in its name (`model_epoch10-loss0.5.keras` → 10), else
the first number in its name (`weights.05-0.43.h5` → 5, `ckpt-3.keras` → 3), else its position in
the order (1, 2, ...). Standard library only.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Sequence

from deadrelu.errors import UsageError

MODEL_EXTENSIONS = (".keras", ".h5", ".hdf5")
_EPOCH_WORD = re.compile(r"epoch[\s_.\-]*(\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"\d+")


@dataclasses.dataclass(frozen=True)
class CheckpointFile:
    """One checkpoint to scan.

    Attributes:
        path: The file (or SavedModel folder), as found or given.
        epoch: The epoch its name says (see the module docstring), or its position (1-based) when
            the name holds no number.
        numbered: Whether `epoch` comes from the name (False: from the position).
    """

    path: str
    epoch: int
    numbered: bool = True


def is_savedmodel(path: str) -> bool:
    """Whether `path` is a SavedModel folder (a folder holding `saved_model.pb` or `.pbtxt`)."""
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, name)) for name in ("saved_model.pb", "saved_model.pbtxt")
    )


def is_checkpoint_set(paths: Sequence[str]) -> bool:
    """Whether the MODEL arguments of `deadrelu scan` name checkpoints rather than one model.

    Several paths, a folder that is not a SavedModel, or a glob pattern that is not an existing
    path do; one model file or one SavedModel folder does not.
    """
    if len(paths) != 1:
        return True
    path = os.fspath(paths[0])
    if os.path.isdir(path):
        return not is_savedmodel(path)
    return not os.path.exists(path) and glob.has_magic(path)


def epoch_from_name(path: str) -> int | None:
    """The epoch a checkpoint's name says, or None when it holds no number.

    Args:
        path: The file or folder; only its name (extension dropped) is read.

    Returns:
        The number after "epoch" in the name, else the first number in it, else None.

    Example:
        >>> epoch_from_name("ckpt/weights.05-0.43.h5")
        5
    """
    name = os.path.basename(os.path.normpath(os.fspath(path)))
    stem = name[: -len(ext)] if (ext := _extension(name)) else name
    match = _EPOCH_WORD.search(stem) or _NUMBER.search(stem)
    return int(match.group(1) if match.re is _EPOCH_WORD else match.group(0)) if match else None


def checkpoint_files(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[CheckpointFile]:
    """The checkpoints `paths` names, in order, each with its epoch (see the module docstring).

    Args:
        paths: A folder of checkpoints, a glob pattern (`"ckpt/*.keras"`), one file, or a list of
            files (kept in the order given; a folder or a pattern in it is expanded in place, and a
            `CheckpointFile` is kept as it is).

    Returns:
        The `CheckpointFile`s, in the order they are scanned.

    Raises:
        UsageError: A folder or a pattern holds no model file, or a path does not exist.

    Example:
        >>> [c.epoch for c in checkpoint_files("ckpt/")]
        [1, 2, 3]
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise UsageError("`paths` is empty; pass a folder of checkpoints, a pattern such as 'ckpt/*.keras', or files")
    found: list[str | CheckpointFile] = []
    for item in items:
        if isinstance(item, CheckpointFile):  # resolved already (the command line checks them first)
            found.append(item)
            continue
        item = os.fspath(item)
        if os.path.isdir(item) and not is_savedmodel(item):
            found += _sorted(_model_entries(item, os.listdir(item)), item, "holds")
        elif not os.path.exists(item) and glob.has_magic(item):
            matches = [m for m in glob.glob(item) if _is_model_entry(m)]
            found += _sorted(matches, item, "matches")
        elif os.path.exists(item):
            found.append(item)
        else:
            raise UsageError(f"checkpoint not found: {item}; check the path")
    files = []
    for position, path in enumerate(found, start=1):
        if isinstance(path, CheckpointFile):
            files.append(path)
            continue
        epoch = epoch_from_name(path)
        files.append(CheckpointFile(path, position if epoch is None else epoch, numbered=epoch is not None))
    return files


def _extension(name: str) -> str:
    lower = name.lower()
    return next((ext for ext in MODEL_EXTENSIONS if lower.endswith(ext)), "")


def _is_model_entry(path: str) -> bool:
    """A model file by its extension (hidden files and deadrelu's temporary files are not), or a SavedModel."""
    name = os.path.basename(os.path.normpath(path))
    if name.startswith("."):
        return False
    return (os.path.isfile(path) and bool(_extension(name))) or is_savedmodel(path)


def _model_entries(folder: str, names: list[str]) -> list[str]:
    return [path for path in (os.path.join(folder, name) for name in names) if _is_model_entry(path)]


def _sorted(paths: list[str], where: str, verb: str) -> list[str]:
    """Model files sorted by the epoch in their names, then naturally; refuses an empty list."""
    if not paths:
        what = "folder" if verb == "holds" else "pattern"
        raise UsageError(
            f"the {what} {where} {verb} no model file (.keras, .h5, .hdf5 or a SavedModel folder); pass the "
            "folder keras.callbacks.ModelCheckpoint writes into, a pattern such as 'ckpt/*.keras', or the files"
        )

    def key(path: str):
        epoch = epoch_from_name(path)
        name = os.path.basename(os.path.normpath(path))
        natural = [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name)]
        return (epoch is None, epoch or 0, natural, name)

    return sorted(paths, key=key)

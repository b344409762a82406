"""Readers: in-memory values and data files made into arrays, before any adaptation to the model.

In memory: tensors become numpy arrays, lists of numbers one array; lists and dicts of arrays stay
structures. Files: `.npy` (memory-mapped), `.npz[:key]`, `.h5`/`.hdf5[:dataset]` (read slice by
slice, after `deadrelu.io.safety.check_hdf5`), `.csv` and folders of images. A multi-array file
gives the array asked for and the labels stored beside it; labels there that cannot be read are an
`Unreadable`, said only if they are used. Nothing here runs pickle.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings

import numpy as np

from deadrelu.data.arrays import is_array
from deadrelu.data.checks import ACCEPTED, first_sentence, verb
from deadrelu.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# -- in-memory data ------------------------------------------------------------------------


def as_arrays(value, count: int, what: str):
    """In-memory data as arrays: tensors → numpy, lists of numbers → one array; lists and dicts of
    arrays (one per model input or output) stay structures. `count`: the model's inputs (outputs)."""
    if isinstance(value, dict):
        return {key: as_array(item, f"{what} '{key}'") for key, item in value.items()}
    if isinstance(value, (list, tuple)) and (count > 1 or (value and all(is_array(item) for item in value))):
        return [as_array(item, what) for item in value]
    return as_array(value, what)


def as_array(value, what: str):
    """One in-memory value as an array: numpy arrays and HDF5 datasets as they are, tensors via `.numpy()`."""
    if isinstance(value, np.ndarray) or type(value).__module__.startswith("h5py"):
        return value  # memory maps and HDF5 datasets stay lazy
    if hasattr(value, "numpy") and callable(value.numpy):  # TensorFlow / PyTorch tensors
        value = value.numpy()
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"the {what} cannot be made into one array ({first_sentence(exc)}); rows must all have "
            "the same length: pad them first (e.g. keras.utils.pad_sequences)"
        ) from None
    if array.dtype == object and array.ndim == 0:
        raise DataError(f"the {what} {verb(what, 'is')} a {type(value).__name__}; pass {ACCEPTED}")
    return array


# -- files ---------------------------------------------------------------------------------


def _split_key(path: str) -> tuple[str, str | None]:
    """'file.npz:key' → ('file.npz', 'key'). HDF5 keys may hold '/' (group/dataset)."""
    if os.path.exists(path):
        return path, None
    index = path.find(":")
    while index != -1:
        if os.path.isfile(path[:index]):
            return path[:index], path[index + 1 :] or None
        index = path.find(":", index + 1)
    head, sep, tail = path.partition(":")
    if sep and head.lower().endswith((".npz", ".h5", ".hdf5")):
        return head, tail or None  # the file is missing; report it without the key
    return path, None


def read_path(
    path,
    *,
    for_labels: bool,
    input_names: list | None = None,
    output_names: list | None = None,
    notes: list[str] | None = None,
):
    """Reads a data file. Returns (array-or-folder, labels found in the same file or None).

    For a model with several inputs (outputs), an .npz or HDF5 file holding one array per input
    (output), named after it, gives a dict of them.
    """
    notes = [] if notes is None else notes
    path, key = _split_key(os.fspath(path))
    what = "labels" if for_labels else "data"
    if not os.path.exists(path):
        raise DataError(f"{what} file not found: {path}; check the path")
    if os.path.isdir(path):
        if for_labels:
            raise DataError(f"`labels` must be a file, not a folder: {path}")
        return path, None
    if not os.path.isfile(path):
        raise DataError(f"{what} {path} is not a regular file (a FIFO, socket or device); pass a data file")
    lower = path.lower()
    if key is not None and lower.endswith((".npy", ".csv")):
        raise DataError(f"{path} holds one array, so it takes no ':{key}'; pass {path} alone")
    if lower.endswith((".npy", ".npz", ".h5", ".hdf5", ".csv")) and os.path.getsize(path) == 0:
        raise DataError(f"{what} file {path} is empty (0 bytes); write the data again")
    try:
        if lower.endswith(".npy"):
            return _read_npy(path), None
        if lower.endswith(".npz"):
            return _read_npz(path, key, for_labels, input_names, output_names, notes)
        if lower.endswith((".h5", ".hdf5")):
            return _read_h5(path, key, for_labels, input_names, output_names, notes)
        if lower.endswith(".csv"):
            return _read_csv(path), None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"cannot read {what} file {path} ({first_sentence(exc)}); check that it is a complete "
            f"{os.path.splitext(path)[1]} file"
        ) from exc
    raise DataError(
        f"unsupported {what} format: {path}; use .npy, .npz[:key], .h5[:dataset], .csv or a folder of images"
    )


_NPY_MAGIC = b"\x93NUMPY"


def _read_npy(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            raise DataError(f"{path} is not a valid .npy file (it lacks the .npy header); save arrays with np.save")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "object" in str(exc).lower() or "pickle" in str(exc).lower():
            raise DataError(_objects_message(path)) from None
        if "mmap length" in str(exc):
            raise DataError(f"{path} is truncated: it holds less data than its header says; save it again") from None
        raise


def _objects_message(path: str) -> str:
    return (
        f"{path} holds Python objects (dtype object), which deadrelu does not load (loading them would run "
        "pickle); save an array of numbers (ragged rows: pad them to one length first)"
    )


def _pick(keys: list[str], key: str | None, preferred: tuple[str, ...], path: str, notes: list[str], what: str) -> str:
    if key is not None:
        if key not in keys:
            raise DataError(f"no array named '{key}' in {path}; it holds {', '.join(keys) or 'nothing'}")
        return key
    for name in preferred:
        if name in keys:
            return name
    if not keys:
        raise DataError(f"{path} holds no arrays")
    if len(keys) == 1:
        notes.append(f"{what}: used '{keys[0]}', the only array in {path}")
        return keys[0]
    raise DataError(
        f"{path} holds {len(keys)} arrays ({', '.join(keys)}) and none is named '{preferred[0]}'; "
        f"name the one to use after a colon, e.g. {path}:{keys[0]}"
    )


_X_KEYS = ("x", "x_test", "x_val", "x_train", "images", "data", "inputs")
_Y_KEYS = ("y", "y_test", "y_val", "y_train", "labels", "targets")


def _read_npz(path: str, key: str | None, for_labels: bool, input_names, output_names, notes):
    import zipfile

    if not zipfile.is_zipfile(path):
        raise DataError(
            f"{path} is not a valid .npz archive (an .npz is a zip of .npy files, as np.savez writes "
            "it); check the file, or save the arrays again"
        )
    archive = np.load(path, allow_pickle=False)
    return _select(
        _NpzMembers(archive, path), list(archive.files), key, for_labels, path, input_names, output_names, notes
    )


class _NpzMembers:
    """An .npz archive whose members, read on access, fail with a `DataError` that says why."""

    def __init__(self, archive, path: str):
        self.archive, self.path = archive, path

    def __getitem__(self, name: str) -> np.ndarray:
        import zipfile

        try:
            return self.archive[name]
        except ValueError as exc:
            if "pickle" in str(exc).lower() or "object" in str(exc).lower():
                raise DataError(_objects_message(f"{self.path}:{name}")) from None
            raise DataError(f"cannot read '{name}' in {self.path} ({first_sentence(exc)}); save it again") from None
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise DataError(
                f"{self.path} is damaged ({first_sentence(exc)} in '{name}'); save the arrays again"
            ) from None


def _select(
    container,
    keys: list[str],
    key: str | None,
    for_labels: bool,
    path: str,
    input_names: list | None = None,
    output_names: list | None = None,
    notes: list[str] | None = None,
):
    """The wanted array of a multi-array file, and (for inputs) the labels stored beside it.

    Models with several inputs read one array per input name; with several outputs, labels are
    one array per output name when the file holds them all."""
    notes = [] if notes is None else notes
    by_output = (
        output_names
        and len(output_names) > 1
        and all(name in keys for name in output_names)
        and not (key and for_labels)
    )
    if for_labels and by_output:
        return {name: container[name] for name in output_names}, None
    if not for_labels and key is None and input_names and len(input_names) > 1:
        missing = [name for name in input_names if name not in keys]
        if missing:
            raise DataError(
                f"the model has {len(input_names)} inputs ({', '.join(input_names)}) but {path} has no array "
                f"named '{missing[0]}'; store one array per input under the input's name, e.g. "
                f"np.savez('x.npz', {', '.join(f'{n}=...' for n in input_names)})"
            )
        partner = next((c for c in ("y", "labels") if c in keys), None)
        labels = (
            {n: container[n] for n in output_names} if by_output else _beside(container, partner) if partner else None
        )
        return {name: container[name] for name in input_names}, labels
    name = _pick(keys, key, _Y_KEYS if for_labels else _X_KEYS, path, notes, "labels" if for_labels else "data")
    if by_output and not for_labels:
        return container[name], {n: container[n] for n in output_names}
    partner = None if for_labels else _partner_label_key(name, keys)
    return container[name], (_beside(container, partner) if partner else None)


@dataclasses.dataclass
class Unreadable:
    """Labels stored beside the data that cannot be read: why, said only if they are used."""

    message: str


def _beside(container, name: str):
    """The labels array `name` found beside the data, or `Unreadable` when it cannot be read."""
    try:
        return container[name]
    except DataError as error:
        return Unreadable(str(error))


def _partner_label_key(name: str, keys: list[str]) -> str | None:
    """The labels that go with an input array: x → y, x_test → y_test."""
    candidates = [name.replace("x", "y", 1)] if name.startswith("x") else []
    candidates += ["y", "labels"]
    return next((c for c in candidates if c in keys and c != name), None)


def _read_h5(path: str, key: str | None, for_labels: bool, input_names, output_names, notes):
    import h5py

    if not h5py.is_hdf5(path):
        raise DataError(f"{path} is not an HDF5 file (it lacks the HDF5 signature); check the file")
    import deadrelu.io.safety as safety

    handle = h5py.File(path, "r")  # kept open: datasets are read lazily, batch by batch
    try:
        safety.check_hdf5(handle, path=path, error=DataError)  # no links or storage outside the file
    except DataError:
        handle.close()
        raise
    keys: list[str] = []
    handle.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
    if "model_config" in handle.attrs or "model_weights" in handle:
        raise DataError(f"{path} is a Keras model file, not data; pass the data with `data=`")
    if key is not None and key not in keys and isinstance(handle.get(key.strip("/")), h5py.Group):
        inside = [k for k in keys if k.startswith(key.strip("/") + "/")]
        raise DataError(
            f"'{key}' in {path} is a group, not a dataset; name a dataset inside it, e.g. "
            f"{path}:{inside[0] if inside else key + '/NAME'}"
        )
    return _select(handle, keys, key.strip("/") if key else key, for_labels, path, input_names, output_names, notes)


def _read_csv(path: str) -> np.ndarray:
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of the header
            first = f.readline()
            f.read()  # the whole file must be text
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text .csv file (it is not UTF-8); pass a .csv of numbers") from None
    try:
        [float(v) for v in first.strip().split(",")]
        skip = 0
    except ValueError:
        skip = 1  # a header line
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns about an empty file; the check below says it
            array = np.loadtxt(path, delimiter=",", skiprows=skip, dtype=np.float32, ndmin=2, encoding="utf-8-sig")
    except ValueError as exc:
        raise DataError(
            f"{path}: {_csv_problem(str(exc), skip)}; a .csv must hold numbers only, separated by "
            "commas, as many on every row, with at most one header line"
        ) from None
    if array.shape[0] == 0:
        raise DataError(f"{path} holds no rows of numbers; pass a .csv with at least one row")
    return array


def _csv_problem(message: str, skip: int) -> str:
    """numpy's loadtxt message with the line numbered as in the file."""
    match = re.search(r"could not convert string '(.*)' to \w+ at row (\d+), column (\d+)", message)
    if match:
        cell = match[1] or "an empty cell"
        return (
            f"line {int(match[2]) + 1 + skip}, column {match[3]} is {cell!r} rather than a number"
            if match[1]
            else f"line {int(match[2]) + 1 + skip}, column {match[3]} is empty"
        )
    match = re.search(r"number of columns changed from (\d+) to (\d+) at row (\d+)", message)
    if match:
        return f"line {int(match[3]) + skip} has {match[2]} cells where the lines before have {match[1]}"
    return first_sentence(ValueError(message))


def read_images(folder: str, input_shapes, *, skip_bad: bool, limit: int | None, notes: list[str]) -> np.ndarray:
    """The images of a folder (and its subfolders), in path order, read at the model's input size as uint8.

    Args:
        folder: The folder.
        input_shapes: The model's input shapes: one (height, width, channels) input is needed.
        skip_bad: Skip unreadable images (a note says how many) instead of refusing the folder.
        limit: Read at most this many images, or None.
        notes: The notes for the user.

    Returns:
        An array of shape (images, height, width, channels).

    Raises:
        DataError: No images, a model that does not take one image input of a fixed size, or an
            unreadable image (without `skip_bad`, or when none can be read).
    """
    from PIL import Image

    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}")
    shape = input_shapes[0] if input_shapes and len(input_shapes) == 1 else None
    if shape is None or len(shape) != 3:
        raise DataError(
            f"a folder of images needs a model with one image input (height, width, channels); "
            f"this model takes {shape if shape is not None else input_shapes}; pass an array instead"
        )
    height, width, channels = shape
    if height is None or width is None:
        raise DataError(
            f"the model takes images of any size {tuple(shape)}, so deadrelu cannot choose one; "
            "resize the images yourself and pass them as an array"
        )
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels, "RGB")
    images, bad = [], []
    for file in files:
        if limit is not None and len(images) >= limit:
            break
        try:
            with Image.open(file) as image:
                image = image.convert(mode).resize((width, height))
                array = np.asarray(image, dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001 - any unreadable image: damaged, empty, not an image
            if not skip_bad:
                reason = "an empty file" if os.path.getsize(file) == 0 else first_sentence(exc)
                raise DataError(
                    f"cannot read the image {file} ({reason}); remove or replace it, or pass "
                    "`skip_bad_images=True` to skip unreadable images"
                ) from None
            bad.append(file)
            continue
        images.append(array.reshape(height, width, -1))
    if bad:
        notes.append(
            f"skipped {len(bad)} unreadable image{'s' if len(bad) != 1 else ''} in {folder} "
            f"(first: {os.path.relpath(bad[0], folder)})"
        )
    if not images:
        raise DataError(
            f"none of the {len(bad)} images in folder {folder} can be read (first: {bad[0]}); check the files"
        )
    return np.stack(images)

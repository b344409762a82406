"""Sources → batches: arrays, files, datasets, generators and folders of images, adapted to the model input.

Everything here streams: a `.npy` is memory-mapped and an HDF5 dataset is read slice by slice,
so probing 50,000 samples holds one batch in memory, not the whole file.

Every problem with the data is a `DataError` whose message says what to change. It is raised
before the model runs wherever the data can be inspected up front (arrays and files: their type,
shape and sample count; a `tf.data.Dataset`: its element spec and cardinality), and otherwise at
the first batch that shows it (a generator's strings, a NaN in batch 7).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import itertools
import os
import re
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import deadrelu.validation as validation
from deadrelu.errors import DataError, UsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

ACCEPTED = (
    "a numpy array, a list or dict of arrays, a tf.data.Dataset, a keras.utils.PyDataset, a generator, "
    "or a path (.npy, .npz, .h5, .csv, a folder of images)"
)


@dataclasses.dataclass
class ProbeData:
    """Inputs (and optional labels) ready to be batched for a model.

    Attributes:
        x: An indexable array, or a list/dict of them for multi-input models; or None when
            `stream` is set.
        y: Labels (indexable), or None.
        samples: Number of samples; for a stream, at most this many (None: unknown, read to its end).
        source: Where the data came from, for the report.
        notes: One-line descriptions of the adaptations applied (said to the user). Reading a
            stream or the first batch may add some.
        synthetic: True when the inputs are random stand-ins for real data.
        stream: For a `tf.data.Dataset`, `PyDataset` or generator: a factory of `(x, y)` batch
            iterators, given the batch size (used only to batch a stream of single samples).
        distributed: True for a `tf.distribute.DistributedDataset`: its batches are `PerReplica`
            values, yielded as they are for the probe to run on each replica (not adapted, not
            checked, counted over the local replicas).
        shard: Under a multi-worker strategy, `(worker index, workers)`: this worker reads only
            every `workers`-th batch, from batch `worker index` on (the union over the workers is
            every sample once, whatever the timing); `samples` stays the count of all workers.
            None: every batch.
    """

    x: object
    y: object = None
    samples: int | None = None
    source: str = "in-memory"
    notes: list[str] = dataclasses.field(default_factory=list)
    synthetic: bool = False
    stream: Callable[[int], Iterator[tuple]] | None = None
    distributed: bool = False
    shard: tuple[int, int] | None = None
    _transform: Callable | None = dataclasses.field(default=None, repr=False)
    _inputs: Any = dataclasses.field(default=None, repr=False)
    _rescale: float | None = dataclasses.field(default=None, repr=False)
    # Why the labels found beside the data (a file's `y`) cannot be used; raised only when they are.
    _label_problem: str | None = dataclasses.field(default=None, repr=False)
    # The stream reads its shard itself (`tf.data`'s `shard`): `batches` keeps every batch it yields.
    _sharded_stream: bool = dataclasses.field(default=False, repr=False)

    def batches(self, batch_size: int, *, labels: bool = False) -> Iterator:
        """Yields batches (`x`, or `(x, y)` with `labels=True`) as float arrays, checked for NaN/inf.

        A stream yields its own batches, cut at `samples`; arrays are sliced `batch_size` at a time.
        With a `shard`, only this worker's batches are yielded; a distributed dataset's batches are
        yielded as they are.
        """
        batch_size = validation.positive_int(batch_size, "batch_size")
        if labels and self._label_problem:
            raise DataError(self._label_problem)
        if self.distributed:
            yield from self._distributed(labels)
            return
        pairs = self.stream(batch_size) if self.stream is not None else self._slices(batch_size)
        if self.shard is not None and self.stream is not None and not self._sharded_stream:
            pairs = _keep_shard(pairs, *self.shard)
        seen = 0
        for index, (x, y) in enumerate(pairs):
            if self.stream is not None:
                _check_kind(x, "data")
            if self._transform is None:  # a stream is adapted like an array, from its first batch
                self._transform = _adapter(x, self._inputs or _Inputs(), self._rescale, self.notes)
            x = self._transform(x)
            _check_finite(x, "data", seen)
            if index == 0:
                self._check_scale(x)
            if labels:
                if y is None:
                    raise UsageError(
                        "`gradients=True` needs labels: the dataset or generator must yield (inputs, labels) pairs"
                    )
                _check_kind(y, "labels")
                _check_finite(y, "labels", seen)
            seen += count_samples(x)
            yield (x, y) if labels else x

    def _slices(self, batch_size: int) -> Iterator[tuple]:
        index, workers = self.shard or (0, 1)
        for start in range(index * batch_size, self.samples, batch_size * workers):
            rows = slice(start, min(start + batch_size, self.samples))
            x = map_arrays(lambda a, rows=rows: np.asarray(a[rows]), self.x)
            yield x, None if self.y is None else map_arrays(lambda a, rows=rows: np.asarray(a[rows]), self.y)

    def _check_scale(self, x) -> None:
        """Warns when `rescale` shrinks inputs that already lie in [-1, 1] (checked on the first batch)."""
        if self._rescale is None or self._rescale >= 1 or not getattr(self._transform, "rescales", False):
            return
        floats = [np.asarray(a) for a in _leaves(x) if np.issubdtype(np.asarray(a).dtype, np.floating)]
        if not floats:
            return
        largest = max(float(np.max(np.abs(a), initial=0.0)) for a in floats)
        note = (
            f"max input after rescale is {largest:.2g}: the data may already be scaled; "
            "drop `rescale` if it lies in [0, 1] already"
        )
        if largest <= self._rescale * (1 + 1e-6) and note not in self.notes:
            self.notes.append(note)

    def _distributed(self, labels: bool) -> Iterator:
        for element in self.stream(0):
            x, y = _split_element(element)
            if labels and y is None:
                raise UsageError(
                    "`gradients=True` needs labels: the distributed dataset must yield (inputs, labels) pairs"
                )
            yield (x, y) if labels else x

    def local_samples(self, batch_size: int) -> int | None:
        """Samples this process reads: `samples`, or its shard's part of them (None: unknown)."""
        if self.shard is None or self.samples is None or self.stream is not None:
            return None if self.distributed else self.samples
        index, workers = self.shard
        return sum(
            min(batch_size, self.samples - start)
            for start in range(index * batch_size, self.samples, batch_size * workers)
        )

    @property
    def has_labels(self) -> bool:
        return self.y is not None or self._label_problem is not None


def load_data(
    data,
    model,
    *,
    labels=None,
    samples: int | None = None,
    rescale: float | None = None,
    skip_bad_images: bool = False,
    synthetic_samples: int = 256,
    strategy: Any = None,
) -> ProbeData:
    """Resolves any supported data source into `ProbeData` adapted to `model`.

    Args:
        data: numpy array; list/dict of arrays; `tf.data.Dataset`; `keras.utils.PyDataset`; a
            generator or other iterator of batches; a path (.npy, .npz[:key], .h5/.hdf5[:dataset],
            a folder of images, .csv); or None for synthetic inputs of the model's input shape.
            Datasets, PyDatasets and generators yield inputs or `(inputs, labels)` batches; a
            `tf.data.Dataset` (or a generator) of single samples is batched here.
        model: The model the data is for (its input shape and dtype drive the adaptation).
        labels: Labels as an array or a path (same formats); default the data file's `y` entry.
            Streams carry their own labels.
        samples: Use only the first `samples` samples (required for an infinite dataset).
        rescale: Multiply inputs by this factor (e.g. 1/255) after converting to float.
        skip_bad_images: Skip the images of a folder that cannot be read (say how many) instead
            of refusing the folder.
        synthetic_samples: How many random samples to make when `data` is None.
        strategy: The `tf.distribute.Strategy` the data is for (from
            `deadrelu.distribute.resolve_strategy`). Under several workers each reads only its
            shard: arrays and files every `workers`-th batch, a `tf.data.Dataset` through
            `dataset.shard`. A `tf.distribute.DistributedDataset` needs one. Defaults to None
            (one process reads everything).

    Returns:
        A `ProbeData`.

    Raises:
        DataError: The data cannot be read, is not numbers, or does not fit the model.
        UsageError: An argument is out of range.

    Example:
        >>> probe_data = load_data("x.npz:x_test", model, samples=1000)
    """
    samples = validation.positive_int(samples, "samples", optional=True)
    rescale = validation.positive_number(rescale, "rescale", optional=True, example="1/255")
    skip_bad_images = validation.boolean(skip_bad_images, "skip_bad_images")
    inputs = _Inputs.of(model)
    output_names = _model_output_names(model)
    from deadrelu.distribute import shard_of

    shard = shard_of(strategy)
    if data is None:
        return dataclasses.replace(
            _synthetic(inputs.shapes, synthetic_samples if samples is None else samples), shard=shard
        )

    if _is_distributed_dataset(data):
        return _distributed_data(data, strategy, labels=labels, samples=samples, rescale=rescale)
    notes: list[str] = []
    stream = _as_stream(data, inputs, samples, notes, shard)
    if stream is not None:
        if labels is not None:
            raise DataError(
                f"a {_kind_name(data)} brings its own labels: yield (inputs, labels) pairs from it "
                "instead of passing `labels`"
            )
        return ProbeData(
            x=None,
            samples=samples,
            source=_kind_name(data),
            notes=notes,
            stream=stream,
            shard=shard,
            _inputs=inputs,
            _rescale=rescale,
            _sharded_stream=shard is not None and _is_tf_dataset(data) and samples is None,
        )

    is_path = isinstance(data, (str, os.PathLike))
    source = os.fspath(data) if is_path else "in-memory"
    if is_path:
        x, y_in_file = _read_path(
            data, for_labels=False, input_names=inputs.names, output_names=output_names, notes=notes
        )
    else:
        x, y_in_file = _as_arrays(data, len(inputs.shapes or []), "data"), None
    y = labels
    if isinstance(labels, (str, os.PathLike)):
        y, _ = _read_path(labels, for_labels=True, output_names=output_names, notes=notes)
    elif labels is not None:
        y = _as_arrays(labels, len(output_names or []), "labels")
    label_problem = None
    if y is None:
        y = y_in_file
        if isinstance(y, _Unreadable):
            y, label_problem = None, y.message
    folder = isinstance(x, str)
    if folder:  # a folder of images, read at the model's size
        x = _read_images(x, inputs.shapes, skip_bad=skip_bad_images, limit=samples, notes=notes)

    what = f"the data in {source}" if is_path else "the data"
    count = _count(x, what)
    if count == 0:
        raise DataError(f"{what} holds no samples (its first axis is empty); pass at least one sample")
    _check_kind(x, "data")
    if samples is not None:
        count = min(count, samples)
    if y is not None:
        label_count = _count(y, "the labels")
        # Every sample needs its label; more labels than samples mean the two do not belong together,
        # unless the samples were cut (a folder of images read up to `samples`).
        if label_count < count or (label_count != _count(x, what) and not (folder and samples)):
            label_problem = (
                f"there are {label_count:,} labels for {_count(x, what):,} samples; pass one label per sample"
            )
            if labels is not None:  # asked for: wrong now; found beside the data: wrong once used
                raise DataError(label_problem)
            y = None
    transform = _adapter(x, inputs, rescale, notes)
    return ProbeData(
        x=x,
        y=y,
        samples=count,
        source=source,
        notes=notes,
        shard=shard,
        _transform=transform,
        _inputs=inputs,
        _rescale=rescale,
        _label_problem=label_problem,
    )


# -- in-memory data ------------------------------------------------------------------------


def _as_arrays(value, count: int, what: str):
    """In-memory data as arrays: tensors → numpy, lists of numbers → one array; lists and dicts of
    arrays (one per model input or output) stay structures. `count`: the model's inputs (outputs)."""
    if isinstance(value, dict):
        return {key: _as_array(item, f"{what} '{key}'") for key, item in value.items()}
    if isinstance(value, (list, tuple)) and (count > 1 or (value and all(_is_array(item) for item in value))):
        return [_as_array(item, what) for item in value]
    return _as_array(value, what)


def _is_array(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _as_array(value, what: str):
    if isinstance(value, np.ndarray) or type(value).__module__.startswith("h5py"):
        return value  # memory maps and HDF5 datasets stay lazy
    if hasattr(value, "numpy") and callable(value.numpy):  # TensorFlow / PyTorch tensors
        value = value.numpy()
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"the {what} cannot be made into one array ({_first_sentence(exc)}); rows must all have "
            "the same length: pad them first (e.g. keras.utils.pad_sequences)"
        ) from None
    if array.dtype == object and array.ndim == 0:
        raise DataError(f"the {what} {_verb(what, 'is')} a {type(value).__name__}; pass {ACCEPTED}")
    return array


def _count(x, what: str) -> int:
    """Samples in the data: the length of the first axis of each array, which must agree."""
    counts = []
    for key, array in _named_leaves(x):
        shape = getattr(array, "shape", None)
        if shape is None:
            raise DataError(f"{what} {_verb(what, 'is')} a {type(array).__name__}; pass {ACCEPTED}")
        if len(shape) == 0:
            raise DataError(
                f"{what}{key} {_verb(what, 'is')} a single value (a 0-d array), not samples; pass an "
                "array whose first axis runs over the samples"
            )
        counts.append(int(shape[0]))
    if len(set(counts)) > 1:
        raise DataError(
            f"the arrays of {what} hold different numbers of samples ({', '.join(map(str, counts))}); "
            f"pass the same samples for every {'output' if 'labels' in what else 'input'}"
        )
    return counts[0] if counts else 0


_KINDS = {
    "U": "text",
    "S": "text",
    "O": "Python objects",
    "c": "complex numbers",
    "M": "dates",
    "m": "time spans",
    "V": "records of a structured array",
}


def _check_kind(x, what: str) -> None:
    """Refuses arrays that are not real numbers: text, objects, complex numbers, dates, records."""
    for key, array in _named_leaves(x):
        dtype = getattr(array, "dtype", None)
        if dtype is None:
            continue
        dtype = np.dtype(dtype) if not hasattr(dtype, "as_numpy_dtype") else np.dtype(dtype.as_numpy_dtype)
        kind = _KINDS.get(dtype.kind)
        if kind is None:
            continue
        label = f"the {what}{key}"
        if dtype.kind in "US" and what == "labels":
            fix = "encode them as class ids, e.g. `classes, y = np.unique(y, return_inverse=True)`"
        elif dtype.kind in "USO":
            fix = (
                "convert it to numbers first (an array of numbers of dtype object: `x.astype('float32')`; "
                "ragged rows: pad them to one length)"
                if dtype.kind == "O"
                else "convert it to numbers first (e.g. encode categories as integers)"
            )
        elif dtype.kind == "c":
            fix = (
                "deadrelu does not drop the imaginary part silently: pass real numbers, e.g. np.abs(x) or "
                "np.stack([x.real, x.imag], axis=-1)"
            )
        elif dtype.kind == "V":
            fix = "pass one plain numeric array, e.g. np.stack([x[name] for name in x.dtype.names], axis=-1)"
        else:
            fix = "convert them to numbers first (e.g. x.astype('int64'))"
        raise DataError(f"{label} {_verb(label, 'holds')} {kind} (dtype {dtype}), not real numbers; {fix}")


def _check_finite(x, what: str, first_sample: int) -> None:
    """Refuses NaN and inf, naming the first sample that holds one (`first_sample`: the batch's first)."""
    for key, array in _named_leaves(x):
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            rows = np.isfinite(array).reshape(len(array), -1).all(axis=1) if array.ndim else np.array([False])
            bad = first_sample + int(np.argmax(~rows))
            extra = "" if what == "labels" else " (values beyond the float32 range become inf too)"
            raise DataError(
                f"the {what}{key} {_verb(what, 'holds')} NaN or inf values, first at sample {bad}; clean "
                f"or impute them first{extra}"
            )


def _verb(subject: str, verb: str) -> str:
    """'holds' → 'hold' (and 'is' → 'are') when the subject is the labels."""
    if not subject.removeprefix("the ").startswith("labels"):
        return verb
    return "are" if verb == "is" else verb.removesuffix("s")


def _named_leaves(x) -> list[tuple[str, Any]]:
    """(" 'name'" or "", array) per array of a structure, for messages."""
    if isinstance(x, dict):
        return [(f" '{key}'", value) for key, value in x.items()]
    if isinstance(x, (list, tuple)):
        return [(f" [{i}]" if len(x) > 1 else "", value) for i, value in enumerate(x)]
    return [("", x)]


def _leaves(x) -> list:
    return [value for _, value in _named_leaves(x)]


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0].rstrip(".")[:200]


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


def _read_path(
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
            f"cannot read {what} file {path} ({_first_sentence(exc)}); check that it is a complete "
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
            raise DataError(f"cannot read '{name}' in {self.path} ({_first_sentence(exc)}); save it again") from None
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise DataError(
                f"{self.path} is damaged ({_first_sentence(exc)} in '{name}'); save the arrays again"
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
class _Unreadable:
    """Labels stored beside the data that cannot be read: why, said only if they are used."""

    message: str


def _beside(container, name: str):
    """The labels array `name` found beside the data, or `_Unreadable` when it cannot be read."""
    try:
        return container[name]
    except DataError as error:
        return _Unreadable(str(error))


def _partner_label_key(name: str, keys: list[str]) -> str | None:
    """The labels that go with an input array: x → y, x_test → y_test."""
    candidates = [name.replace("x", "y", 1)] if name.startswith("x") else []
    candidates += ["y", "labels"]
    return next((c for c in candidates if c in keys and c != name), None)


def _read_h5(path: str, key: str | None, for_labels: bool, input_names, output_names, notes):
    import h5py

    if not h5py.is_hdf5(path):
        raise DataError(f"{path} is not an HDF5 file (it lacks the HDF5 signature); check the file")
    import deadrelu.safety as safety

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
    return _first_sentence(ValueError(message))


def _read_images(folder: str, input_shapes, *, skip_bad: bool, limit: int | None, notes: list[str]) -> np.ndarray:
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
                reason = "an empty file" if os.path.getsize(file) == 0 else _first_sentence(exc)
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


# -- adaptation ----------------------------------------------------------------------------


def _adapter(x, inputs: _Inputs, rescale: float | None, notes: list[str]) -> Callable:
    """Builds the per-batch transform that makes the data fit the model, and says what it does.

    Each input array is checked against its model input (by position, or by name in a dict): a
    missing trailing channel axis is added; for inputs the model takes as floats, integers and
    float64 become float32 and `rescale` multiplies (integer inputs such as token ids are left
    alone). With several inputs, the notes name the input.
    """
    # Without arrays to inspect (a stream), adapt every array alike: as floats unless the model
    # takes integers (token ids).
    default = _Plan(as_float=not inputs.dtypes or all("float" in dtype for dtype in inputs.dtypes))
    plans = (
        {}
        if x is None
        else {
            key: _plan(array, shape, dtype, label, notes, hint=rescale is None)
            for key, array, shape, dtype, label in _pair_inputs(x, inputs)
        }
    )
    rescales = rescale is not None and any(plan.as_float for plan in (plans.values() if plans else [default]))
    if rescale is not None:
        notes.append(
            f"inputs multiplied by {rescale:g}" if rescales else "`rescale` ignored: the model takes integer inputs"
        )

    def adapt(array, plan: _Plan):
        array = np.asarray(array)
        if plan.expand:
            array = array[..., None]
        if plan.as_float:
            if not np.issubdtype(array.dtype, np.floating) or array.dtype == np.float64:
                with np.errstate(over="ignore"):  # values beyond float32 become inf, which is refused next
                    array = array.astype(np.float32)
            if rescale is not None:
                array = array * np.float32(rescale)
        return array

    def transform(batch):
        if isinstance(batch, dict):
            return {k: adapt(v, plans.get(k, default)) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return [adapt(v, plans.get(i, default)) for i, v in enumerate(batch)]
        return adapt(batch, plans.get(0, default))

    transform.rescales = rescales
    return transform


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How one input array is adapted: add a trailing channel axis; treat it as float data."""

    expand: bool = False
    as_float: bool = True


def _pair_inputs(x, inputs: _Inputs) -> list[tuple]:
    """(key in x, array, model input shape, model input dtype, label for messages) per input array;
    shape and dtype are None where unknown."""
    count = len(inputs.shapes) if inputs.shapes else None
    input_names = inputs.names

    def model_input(index):
        if index is None or not inputs.shapes:
            return None, None
        return inputs.shapes[index], inputs.dtypes[index]

    if isinstance(x, dict):
        names = input_names or []
        unknown = [key for key in x if key not in names]
        if names and unknown:
            raise DataError(
                f"the data names the input '{unknown[0]}', but the model's inputs are "
                f"{', '.join(repr(n) for n in names)}; key the arrays by input name"
            )
        if names and count and count > 1:
            missing = [name for name in names if name not in x]
            if missing:
                raise DataError(
                    f"no data for the model input '{missing[0]}'; give one array per input, "
                    f"keyed by the input names ({', '.join(names)})"
                )
        return [(k, v, *model_input(names.index(k) if k in names else None), f"input '{k}': ") for k, v in x.items()]
    if isinstance(x, (list, tuple)):
        if count and len(x) != count:
            raise DataError(
                f"the data has {len(x)} arrays but the model has {count} input{'s' if count != 1 else ''}; "
                "give one array per model input"
            )
        return [
            (i, v, *model_input(i), f"input '{input_names[i]}': " if input_names and len(x) > 1 else "")
            for i, v in enumerate(x)
        ]
    if count and count > 1:
        raise DataError(
            f"the model has {count} inputs ({', '.join(input_names or [])}) but the data is one array; "
            "pass one array per input (an .npz holding arrays named after the inputs)"
        )
    return [(0, x, *model_input(0), "")]


def _plan(array, want, want_dtype, label: str, notes: list[str], *, hint: bool) -> _Plan:
    """Checks one input array against its model input and says how it will be adapted.

    `hint`: suggest `rescale` for 8-bit pixels (when no rescale was asked for)."""
    expand = False
    have = tuple(array.shape[1:]) if hasattr(array, "shape") else None
    if want is not None and have is not None and not _shape_fits(have, want):
        if have == ():
            target = ", ".join("N" if w is None else str(w) for w in want)
            raise DataError(
                f"{label}data is one-dimensional ({array.shape[0]} values) but the model takes samples "
                f"of shape {tuple(want)}; pass an array of shape (samples, {target})"
            )
        if not _shape_fits(have + (1,), want):
            raise DataError(
                f"{label}data samples have shape {have} but the model takes {tuple(want)}; "
                "reshape the data to match the model input"
            )
        expand = True
        notes.append(f"{label}data shape {have} → {have + (1,)}: added the trailing channel axis the model expects")
    as_float = want_dtype is None or "float" in str(want_dtype)
    dtype = _dtype_of(array)
    if as_float and dtype is not None and not np.issubdtype(dtype, np.floating):
        note = f"{label}data is {dtype}; converted to float32"
        if hint and dtype == np.uint8:
            note += " (pixels kept 0–255; pass `rescale=1/255` if the model was trained on [0, 1])"
        notes.append(note)
    return _Plan(expand=expand, as_float=as_float)


def _shape_fits(have: tuple, want: tuple) -> bool:
    return len(have) == len(want) and all(w is None or h == w for h, w in zip(have, want))


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """What the data is adapted to: the model's input shapes (without the batch axis), names and
    dtypes, in input order (None each for a subclassed model, which has no symbolic inputs)."""

    shapes: list | None = None
    names: list | None = None
    dtypes: list | None = None

    @classmethod
    def of(cls, model) -> _Inputs:
        try:
            inputs = list(model.inputs)
        except Exception:  # noqa: BLE001 - subclassed models have no symbolic inputs
            return cls()
        return cls([tuple(t.shape[1:]) for t in inputs], [t.name for t in inputs], [str(t.dtype) for t in inputs])


def _model_output_names(model) -> list[str] | None:
    names = getattr(model, "output_names", None)
    return list(names) if names else None


def _synthetic(input_shapes, count: int) -> ProbeData:
    if not input_shapes or any(d is None for shape in input_shapes for d in shape):
        raise DataError("no `data` given and the model's input shape is not fully known; pass real data with `data=`")
    rng = np.random.default_rng(0)
    arrays = [rng.uniform(0.0, 1.0, size=(count,) + tuple(shape)).astype(np.float32) for shape in input_shapes]
    x = arrays[0] if len(arrays) == 1 else arrays
    return ProbeData(x=x, samples=count, source=f"synthetic uniform [0, 1), {count} samples", synthetic=True)


# -- streams -------------------------------------------------------------------------------
#
# A stream is read batch by batch and cut at `samples`: the last batch is shortened so exactly
# `samples` samples are scanned. A stream that never ends needs `samples`: an infinite
# `tf.data.Dataset` (`.repeat()`) or a `PyDataset` whose `num_batches` is None is refused up
# front without it. A generator's length is unknown: without `samples` it is read to its end.
# Elements without a batch axis (`Dataset.from_tensor_slices(x)` without `.batch`) are batched
# here, `batch_size` at a time, and a note says so: Keras would refuse them, but what they mean
# is never in doubt — friendlier than asking for `.batch(N)`.

# Generators can be read once: the batches already read are kept per generator (weakly), so a
# second pass over the same generator (revive's check, the monitor's next check) replays them.
_READ_ONCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _kind_name(data) -> str:
    if _is_tf_dataset(data):
        return "tf.data.Dataset"
    if _is_py_dataset(data):
        return "PyDataset"
    return "generator" if isinstance(data, collections.abc.Generator) else type(data).__name__


def _is_tf_dataset(data) -> bool:
    return "tensorflow" in type(data).__module__ and hasattr(data, "element_spec") and hasattr(data, "cardinality")


def _is_py_dataset(data) -> bool:
    kind = type(data)  # not the instance: a PyDataset's `num_batches` may raise when read
    return (
        hasattr(kind, "__getitem__")
        and hasattr(kind, "on_epoch_end")
        and not isinstance(data, np.ndarray)
        and (hasattr(kind, "__len__") or hasattr(kind, "num_batches"))
    )


def _as_stream(
    data, inputs: _Inputs, samples: int | None, notes: list[str], shard: tuple[int, int] | None = None
) -> Callable | None:
    """A factory `batch_size → iterator of (x, y) batches` for datasets and generators, else None.

    With a `shard` and no `samples`, a `tf.data.Dataset` reads only its shard (`dataset.shard`);
    every other stream is read whole and `ProbeData.batches` keeps the shard's batches (the cut at
    `samples` counts the samples of every worker).
    """
    if _is_tf_dataset(data):
        return _dataset_stream(data, inputs, samples, notes, shard if samples is None else None)
    if _is_py_dataset(data):
        try:
            batches = data.num_batches
        except NotImplementedError:
            raise DataError("the PyDataset defines neither `__len__` nor `num_batches`; define one of them") from None
        if batches is None and samples is None:
            raise DataError(
                "the PyDataset is infinite (`num_batches` is None); pass `samples` to scan that many samples of it"
            )
        indices = range(batches) if batches is not None else itertools.count()
        return _elements_stream(lambda: (data[i] for i in indices), inputs, samples, notes, "PyDataset")
    if isinstance(data, collections.abc.Iterator):
        return _elements_stream(_replay(data), inputs, samples, notes, _kind_name(data))
    if (
        isinstance(data, (str, os.PathLike, np.ndarray, list, tuple, dict))
        or _is_array(data)
        or isinstance(data, (int, float, complex, np.generic))
    ):
        return None
    if isinstance(data, collections.abc.Iterable) or hasattr(data, "__array__"):
        return None  # e.g. a pandas DataFrame: read as an array
    raise DataError(f"deadrelu cannot read data of type {type(data).__name__}; pass {ACCEPTED}")


def _dataset_stream(
    dataset, inputs: _Inputs, samples: int | None, notes: list[str], shard: tuple[int, int] | None = None
) -> Callable:
    import tensorflow as tf

    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY and samples is None:
        raise DataError(
            "the dataset is infinite (it repeats); pass `samples` to scan that many samples of it, "
            "or drop its .repeat()"
        )
    spec = dataset.element_spec
    x_spec = _split_element(spec)[0]
    for key, leaf in _named_leaves(x_spec) if not isinstance(x_spec, tf.TypeSpec) else [("", x_spec)]:
        if not isinstance(leaf, tf.TensorSpec):
            raise DataError(
                f"the dataset yields {type(leaf).__name__.replace('Spec', '')}s{key}, which deadrelu "
                "does not read; yield dense tensors (e.g. dataset.padded_batch(N) or .to_tensor())"
            )
        _check_kind(
            np.empty(0, dtype=leaf.dtype.as_numpy_dtype) if leaf.dtype != tf.string else np.empty(0, dtype=str),
            "data" + key,
        )
    first = _first_leaf(x_spec, inputs)
    unbatched = first is not None and _is_unbatched(tuple(first[0].shape), first[1], first_known=True)

    def batches(batch_size: int) -> Iterator[tuple]:
        if unbatched:
            _note_batching(notes, "dataset", batch_size)
        batched = dataset.batch(batch_size) if unbatched else dataset
        if shard is not None:  # every `workers`-th batch, from this worker's index on
            batched = batched.shard(shard[1], shard[0])
        return _limit((_split_element(element) for element in batched.as_numpy_iterator()), samples)

    return batches


def _elements_stream(
    elements: Callable[[], Iterator], inputs: _Inputs, samples: int | None, notes: list[str], kind: str
) -> Callable:
    """Batches from a PyDataset or generator: numpy `(x, y)` pairs; single samples are stacked into batches."""

    def batches(batch_size: int) -> Iterator[tuple]:
        pairs = ((_numpy(x), _numpy(y)) for x, y in map(_split_element, elements()))
        first = next(pairs, None)
        if first is None:
            return iter(())
        pairs = itertools.chain([first], pairs)
        leaf = _first_leaf(first[0], inputs)
        if leaf is not None and _is_unbatched(tuple(np.shape(leaf[0])), leaf[1], first_known=False):
            _note_batching(notes, kind, batch_size)
            pairs = _stacked(pairs, batch_size)
        return _limit(pairs, samples)

    return batches


def _note_batching(notes: list[str], kind: str, batch_size: int) -> None:
    note = f"the {kind} yields single samples (no batch axis); deadrelu batched them, {batch_size} at a time"
    if note not in notes:
        notes.append(note)


def _replay(iterator: Iterator) -> Callable[[], Iterator]:
    """Elements of a read-once iterator: those read before (by any pass), then the rest."""
    try:
        record = _READ_ONCE.setdefault(iterator, [])
    except TypeError:  # not weakly referenceable (e.g. a list iterator): replayed within this ProbeData only
        record = []

    def elements() -> Iterator:
        yield from list(record)
        for element in iterator:
            record.append(element)
            yield element

    return elements


def _limit(pairs: Iterator[tuple], samples: int | None) -> Iterator[tuple]:
    """Stops after `samples` samples, cutting the last batch."""
    seen = 0
    for x, y in pairs:
        if samples is not None:
            n = count_samples(x)
            if seen + n > samples:
                head = slice(0, samples - seen)
                x = map_arrays(lambda a, head=head: a[head], x)
                y = None if y is None else map_arrays(lambda a, head=head: a[head], y)
            seen += min(n, samples - seen)
        yield x, y
        if samples is not None and seen >= samples:
            return


def _keep_shard(pairs: Iterator[tuple], index: int, workers: int) -> Iterator[tuple]:
    """This worker's batches of a stream every worker reads whole: every `workers`-th, from `index` on."""
    for position, pair in enumerate(pairs):
        if position % workers == index:
            yield pair


def _is_distributed_dataset(data) -> bool:
    if "tensorflow" not in type(data).__module__:
        return False
    import tensorflow as tf

    return isinstance(data, tf.distribute.DistributedDataset)


def _distributed_data(data, strategy, *, labels, samples, rescale) -> ProbeData:
    """A `tf.distribute.DistributedDataset`: its `PerReplica` batches go to the probe as they are."""
    if strategy is None:
        raise UsageError(
            "the data is a distributed dataset (from strategy.experimental_distribute_dataset) but the model "
            "was not built under a strategy: build or load the model inside `with strategy.scope():`, or pass "
            "`strategy=` (the strategy that distributed the data)"
        )
    own = getattr(data, "_strategy", None)  # not public; checked where TensorFlow exposes it
    if own is not None and own is not strategy:
        raise UsageError(
            f"the distributed dataset was distributed by another strategy than `strategy` "
            f"({type(own).__name__} vs {type(strategy).__name__}); distribute it with the model's strategy"
        )
    for name, value, fix in (
        ("labels", labels, "yield (inputs, labels) pairs from the dataset before distributing it"),
        ("samples", samples, "cut the dataset before distributing it (`dataset.take(n)`)"),
        ("rescale", rescale, "scale it before distributing it (`dataset.map(lambda x: x / 255)`)"),
    ):
        if value is not None:
            raise UsageError(f"`{name}` does not apply to a distributed dataset: {fix}")
    return ProbeData(
        x=None, source="tf.distribute.DistributedDataset", stream=lambda _batch_size: iter(data), distributed=True
    )


def _stacked(pairs: Iterator[tuple], batch_size: int) -> Iterator[tuple]:
    """Single `(x, y)` samples → batches of `batch_size`."""
    while True:
        group = list(itertools.islice(pairs, batch_size))
        if not group:
            return
        xs, ys = zip(*group)
        yield _stack(list(xs)), None if ys[0] is None else _stack(list(ys))


def _stack(items: list):
    if isinstance(items[0], dict):
        return {key: _stack([item[key] for item in items]) for key in items[0]}
    if isinstance(items[0], (list, tuple)):
        return [_stack([item[i] for item in items]) for i in range(len(items[0]))]
    try:
        return np.stack([np.asarray(item) for item in items])
    except ValueError as exc:
        raise DataError(
            f"the samples the data yields differ in shape ({_first_sentence(exc)}); yield samples of "
            "one shape, or batches"
        ) from None


def _split_element(element) -> tuple:
    """Keras's convention: a tuple is (x,), (x, y) or (x, y, sample_weight); anything else is x."""
    if isinstance(element, tuple) and 1 <= len(element) <= 3:
        return element[0], element[1] if len(element) > 1 else None
    return element, None


def _numpy(value):
    if value is None:
        return None
    if isinstance(value, dict):
        return {key: _numpy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)) and value and _is_array(value[0]):
        return [_numpy(item) for item in value]
    if hasattr(value, "numpy") and callable(value.numpy):
        return value.numpy()
    return _as_array(value, "data")


def _first_leaf(x, inputs: _Inputs):
    """(first array or spec of `x`, the model input shape it is for), or None when unknown."""
    if not inputs.shapes:
        return None
    if isinstance(x, dict):
        names = inputs.names or []
        key = next((name for name in names if name in x), None)
        return (x[key], inputs.shapes[names.index(key)]) if key is not None else None
    if isinstance(x, (list, tuple)):
        return (x[0], inputs.shapes[0]) if x else None
    return x, inputs.shapes[0]


def _is_unbatched(shape: tuple, want: tuple, *, first_known: bool) -> bool:
    """Whether an element of `shape` is one sample of the model input `want` rather than a batch.

    An element one axis longer than `want` is a batch; one of `want`'s own shape is a sample — or
    a batch missing the trailing channel axis when `want` ends in 1 (or None), which is read as a
    batch, as Keras would, unless the first axis is fixed in a dataset's spec (`.batch` leaves it
    None) and `first_known` says that counts as a sample.
    """
    want = tuple(want)
    if len(shape) == len(want) + 1:
        return False
    channel_less = want and want[-1] in (None, 1)
    if len(shape) == len(want):
        fits = _compatible(shape, want)
        as_batch = channel_less and _compatible(shape[1:] + (1,), want)
        if fits and as_batch:
            return first_known and shape[0] is not None
        return fits
    if len(shape) == len(want) - 1:
        return bool(channel_less) and _compatible(shape + (1,), want)
    return False


def _compatible(have: tuple, want: tuple) -> bool:
    return len(have) == len(want) and all(h is None or w is None or h == w for h, w in zip(have, want))


# -- small helpers -------------------------------------------------------------------------


def map_arrays(fn, x):
    """`fn` applied to an array, or to each array of a list or dict (several inputs or outputs)."""
    if isinstance(x, dict):
        return {k: fn(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [fn(v) for v in x]
    return fn(x)


def count_samples(x) -> int:
    """Samples in an array, or in the first array of a list or dict; for a `PerReplica` batch (from
    a distributed dataset), in its local replicas together."""
    if hasattr(x, "values") and type(x).__name__ == "PerReplica":
        return sum(count_samples(part) for part in x.values)
    if isinstance(x, dict):
        x = next(iter(x.values()))
    if isinstance(x, (list, tuple)):
        x = x[0]
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    return int(x.shape[0]) if len(x.shape) else 0


def _dtype_of(x):
    dtype = getattr(x, "dtype", None)
    return np.dtype(dtype.as_numpy_dtype) if hasattr(dtype, "as_numpy_dtype") else dtype

"""Sources → batches: arrays, files, datasets and folders of images, adapted to the model input.

Everything here streams: a `.npy` is memory-mapped and an HDF5 dataset is read slice by slice,
so probing 50,000 samples holds one batch in memory, not the whole file.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterator

import numpy as np

from deadrelu.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclasses.dataclass
class ProbeData:
    """Inputs (and optional labels) ready to be batched for a model.

    Attributes:
        x: An indexable array, or a list/dict of them for multi-input models; or None when
            `stream` is set.
        y: Labels (indexable), or None.
        samples: Number of samples (None for a stream of unknown length).
        source: Where the data came from, for the report.
        notes: One-line descriptions of the adaptations applied (said to the user).
        synthetic: True when the inputs are random stand-ins for real data.
        stream: For `tf.data.Dataset` / `PyDataset`: a factory of batch iterators.
    """

    x: object
    y: object = None
    samples: int | None = None
    source: str = "in-memory"
    notes: list[str] = dataclasses.field(default_factory=list)
    synthetic: bool = False
    stream: Callable[[], Iterator] | None = None
    _transform: Callable = dataclasses.field(default=lambda a: a, repr=False)

    def batches(self, batch_size: int, *, labels: bool = False) -> Iterator:
        """Yields batches (`x`, or `(x, y)` with `labels=True`) as float arrays, checked for NaN/inf."""
        if self.stream is not None:
            for index, item in enumerate(self.stream()):
                x, y = item if isinstance(item, tuple) else (item, None)
                x = self._transform(_to_numpy(x))
                _check_finite(x, index)
                yield (x, _to_numpy(y)) if labels else x
            return
        for start in range(0, self.samples, batch_size):
            stop = min(start + batch_size, self.samples)
            x = self._transform(map_arrays(lambda a: np.asarray(a[start:stop]), self.x))
            _check_finite(x, start // batch_size, start)
            if labels:
                yield x, map_arrays(lambda a: np.asarray(a[start:stop]), self.y)
            else:
                yield x

    @property
    def has_labels(self) -> bool:
        return self.y is not None


def load_data(data, model, *, labels=None, samples: int | None = None, rescale: float | None = None,
              synthetic_samples: int = 256) -> ProbeData:
    """Resolves any supported data source into `ProbeData` adapted to `model`.

    Args:
        data: numpy array; list/dict of arrays; `tf.data.Dataset`; `keras.utils.PyDataset`; a path
            (.npy, .npz[:key], .h5/.hdf5[:dataset], a folder of images, .csv); or None for
            synthetic inputs of the model's input shape.
        model: The model the data is for (its input shape and dtype drive the adaptation).
        labels: Labels as an array or a path (same formats); default the data file's `y` entry.
        samples: Use only the first `samples` samples.
        rescale: Multiply inputs by this factor (e.g. 1/255) after converting to float.
        synthetic_samples: How many random samples to make when `data` is None.

    Returns:
        A `ProbeData`.

    Example:
        >>> probe_data = load_data("x.npz:x_test", model, samples=1000)
    """
    if samples is not None and samples < 1:
        raise DataError(f"`samples` must be at least 1 (got {samples})")
    inputs = _Inputs.of(model)
    output_names = _model_output_names(model)
    if data is None:
        return _synthetic(inputs.shapes, synthetic_samples if samples is None else samples)

    stream = _as_stream(data)
    if stream is not None:
        return ProbeData(x=None, source=type(data).__name__, stream=stream,
                         _transform=_adapter(None, inputs, rescale, []))

    source = data if isinstance(data, str) else "in-memory"
    x, y_in_file = (_read_path(data, for_labels=False, input_names=inputs.names, output_names=output_names)
                    if isinstance(data, (str, os.PathLike)) else (data, None))
    if isinstance(data, os.PathLike):
        source = os.fspath(data)
    y = labels
    if isinstance(labels, (str, os.PathLike)):
        y, _ = _read_path(labels, for_labels=True, output_names=output_names)
    if y is None:
        y = y_in_file
    if isinstance(x, str):  # a folder of images, read at the model's size
        x = _read_images(x, inputs.shapes)

    count = count_samples(x)
    if count == 0:
        raise DataError(f"the data in {source} holds no samples; pass a file with at least one sample")
    if y is not None and count_samples(y) < count:
        raise DataError(f"there are {count_samples(y)} labels for {count} samples; pass one label per sample")
    if samples is not None:
        count = min(count, samples)
    notes: list[str] = []
    transform = _adapter(x, inputs, rescale, notes)
    return ProbeData(x=x, y=y, samples=count, source=source, notes=notes, _transform=transform)


# -- files ---------------------------------------------------------------------------------

def _split_key(path: str) -> tuple[str, str | None]:
    """'file.npz:key' → ('file.npz', 'key'). HDF5 keys may hold '/' (group/dataset)."""
    if os.path.exists(path):
        return path, None
    index = path.find(":")
    while index != -1:
        if os.path.isfile(path[:index]):
            return path[:index], path[index + 1:] or None
        index = path.find(":", index + 1)
    head, sep, tail = path.partition(":")
    if sep and head.lower().endswith((".npz", ".h5", ".hdf5")):
        return head, tail or None  # the file is missing; report it without the key
    return path, None


def _read_path(path, *, for_labels: bool, input_names: list | None = None, output_names: list | None = None):
    """Reads a data file. Returns (array-or-folder, labels found in the same file or None).

    For a model with several inputs (outputs), an .npz or HDF5 file holding one array per input
    (output), named after it, gives a dict of them.
    """
    path, key = _split_key(os.fspath(path))
    what = "labels" if for_labels else "data"
    if not os.path.exists(path):
        raise DataError(f"{what} file not found: {path}; check the path")
    if os.path.isdir(path):
        if for_labels:
            raise DataError(f"`labels` must be a file, not a folder: {path}")
        return path, None
    lower = path.lower()
    try:
        if lower.endswith(".npy"):
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        if lower.endswith(".npz"):
            return _read_npz(path, key, for_labels, input_names, output_names)
        if lower.endswith((".h5", ".hdf5")):
            return _read_h5(path, key, for_labels, input_names, output_names)
        if lower.endswith(".csv"):
            return _read_csv(path), None
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - unreadable file
        raise DataError(f"cannot read {what} file {path}: {exc}") from exc
    raise DataError(f"unsupported {what} format: {path}; use .npy, .npz[:key], .h5[:dataset], .csv "
                    "or a folder of images")


def _pick(keys: list[str], key: str | None, preferred: tuple[str, ...], path: str) -> str:
    if key is not None:
        if key not in keys:
            raise DataError(f"no array named '{key}' in {path}; it holds {', '.join(keys) or 'nothing'}")
        return key
    for name in preferred:
        if name in keys:
            return name
    if not keys:
        raise DataError(f"{path} holds no arrays")
    return keys[0]


_X_KEYS = ("x", "x_test", "x_val", "x_train", "images", "data", "inputs")
_Y_KEYS = ("y", "y_test", "y_val", "y_train", "labels", "targets")


def _read_npz(path: str, key: str | None, for_labels: bool, input_names, output_names):
    archive = np.load(path, allow_pickle=False)
    return _select(archive, list(archive.files), key, for_labels, path, input_names, output_names)


def _select(container, keys: list[str], key: str | None, for_labels: bool, path: str,
            input_names: list | None = None, output_names: list | None = None):
    """The wanted array of a multi-array file, and (for inputs) the labels stored beside it.

    Models with several inputs read one array per input name; with several outputs, labels are
    one array per output name when the file holds them all."""
    by_output = (output_names and len(output_names) > 1 and all(name in keys for name in output_names)
                 and not (key and for_labels))
    if for_labels and by_output:
        return {name: container[name] for name in output_names}, None
    if not for_labels and key is None and input_names and len(input_names) > 1:
        missing = [name for name in input_names if name not in keys]
        if missing:
            raise DataError(
                f"the model has {len(input_names)} inputs ({', '.join(input_names)}) but {path} has no array "
                f"named '{missing[0]}'; store one array per input under the input's name, e.g. "
                f"np.savez('x.npz', {', '.join(f'{n}=...' for n in input_names)})")
        partner = next((c for c in ("y", "labels") if c in keys), None)
        labels = {n: container[n] for n in output_names} if by_output else (container[partner] if partner else None)
        return {name: container[name] for name in input_names}, labels
    name = _pick(keys, key, _Y_KEYS if for_labels else _X_KEYS, path)
    if by_output and not for_labels:
        return container[name], {n: container[n] for n in output_names}
    partner = None if for_labels else _partner_label_key(name, keys)
    return container[name], (container[partner] if partner else None)


def _partner_label_key(name: str, keys: list[str]) -> str | None:
    """The labels that go with an input array: x → y, x_test → y_test."""
    candidates = [name.replace("x", "y", 1)] if name.startswith("x") else []
    candidates += ["y", "labels"]
    return next((c for c in candidates if c in keys and c != name), None)


def _read_h5(path: str, key: str | None, for_labels: bool, input_names, output_names):
    import h5py

    handle = h5py.File(path, "r")  # kept open: datasets are read lazily, batch by batch
    keys: list[str] = []
    handle.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
    if "model_config" in handle.attrs or "model_weights" in handle:
        raise DataError(f"{path} is a Keras model file, not data; pass the data with `data=`")
    return _select(handle, keys, key, for_labels, path, input_names, output_names)


def _read_csv(path: str) -> np.ndarray:
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    try:
        [float(v) for v in first.strip().split(",")]
        skip = 0
    except ValueError:
        skip = 1  # a header line
    array = np.loadtxt(path, delimiter=",", skiprows=skip, dtype=np.float32, ndmin=2)
    return array


def _read_images(folder: str, input_shapes) -> np.ndarray:
    from PIL import Image

    files = sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                   for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}")
    shape = input_shapes[0] if input_shapes and len(input_shapes) == 1 else None
    if shape is None or len(shape) != 3 or shape[0] is None or shape[1] is None:
        raise DataError(f"a folder of images needs a model with an image input (height, width, channels); "
                        f"this model takes {shape}")
    height, width, channels = shape
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels, "RGB")
    images = []
    for file in files:
        with Image.open(file) as image:
            image = image.convert(mode).resize((width, height))
            array = np.asarray(image, dtype=np.uint8)
        images.append(array.reshape(height, width, -1))
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
    plans = {} if x is None else {key: _plan(array, shape, dtype, label, notes, hint=rescale is None)
                                  for key, array, shape, dtype, label
                                  in _pair_inputs(x, inputs)}
    if rescale is not None:
        if any(plan.as_float for plan in (plans.values() if plans else [default])):
            notes.append(f"inputs multiplied by {rescale:g}")
        else:
            notes.append("`rescale` ignored: the model takes integer inputs")

    def adapt(array, plan: _Plan):
        array = np.asarray(array)
        if plan.expand:
            array = array[..., None]
        if plan.as_float:
            if not np.issubdtype(array.dtype, np.floating) or array.dtype == np.float64:
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
        if names and count and count > 1:
            missing = [name for name in names if name not in x]
            if missing:
                raise DataError(f"no data for the model input '{missing[0]}'; give one array per input, "
                                f"keyed by the input names ({', '.join(names)})")
        return [(k, v, *model_input(names.index(k) if k in names else None), f"input '{k}': ")
                for k, v in x.items()]
    if isinstance(x, (list, tuple)):
        if count and len(x) != count:
            raise DataError(f"the data has {len(x)} arrays but the model has {count} input{'s' if count != 1 else ''}; "
                            "give one array per model input")
        return [(i, v, *model_input(i), f"input '{input_names[i]}': " if input_names and len(x) > 1 else "")
                for i, v in enumerate(x)]
    if count and count > 1:
        raise DataError(f"the model has {count} inputs ({', '.join(input_names or [])}) but the data is one array; "
                        "pass one array per input (an .npz holding arrays named after the inputs)")
    return [(0, x, *model_input(0), "")]


def _plan(array, want, want_dtype, label: str, notes: list[str], *, hint: bool) -> _Plan:
    """Checks one input array against its model input and says how it will be adapted.

    `hint`: suggest `rescale` for 8-bit pixels (when no rescale was asked for)."""
    expand = False
    have = tuple(array.shape[1:]) if hasattr(array, "shape") else None
    if want is not None and have is not None and not _shape_fits(have, want):
        if not _shape_fits(have + (1,), want):
            raise DataError(f"{label}data samples have shape {have} but the model takes {tuple(want)}; "
                            "reshape the data to match the model input")
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
    def of(cls, model) -> "_Inputs":
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

def _as_stream(data) -> Callable | None:
    """A batch-iterator factory for `tf.data.Dataset` and `keras.utils.PyDataset`, else None."""
    module = type(data).__module__
    if "tensorflow" in module and hasattr(data, "as_numpy_iterator"):
        return data.as_numpy_iterator
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and hasattr(data, "on_epoch_end") \
            and not isinstance(data, np.ndarray):
        def iterate():
            for index in range(len(data)):
                yield data[index]
        return iterate
    return None


# -- small helpers -------------------------------------------------------------------------

def map_arrays(fn, x):
    """`fn` applied to an array, or to each array of a list or dict (several inputs or outputs)."""
    if isinstance(x, dict):
        return {k: fn(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [fn(v) for v in x]
    return fn(x)


def count_samples(x) -> int:
    """Samples in an array, or in the first array of a list or dict."""
    if isinstance(x, dict):
        x = next(iter(x.values()))
    if isinstance(x, (list, tuple)):
        x = x[0]
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    return int(x.shape[0]) if len(x.shape) else 0


def _dtype_of(x):
    return getattr(x, "dtype", None)


def _to_numpy(value):
    if value is None:
        return None
    if hasattr(value, "numpy"):
        return value.numpy()
    return value


def _check_finite(x, batch_index: int, first_sample: int | None = None) -> None:
    for array in (x.values() if isinstance(x, dict) else x if isinstance(x, list) else [x]):
        if np.issubdtype(np.asarray(array).dtype, np.floating) and not np.isfinite(array).all():
            bad = int(np.argmax(~np.isfinite(array).reshape(len(array), -1).all(axis=1)))
            where = f"sample {first_sample + bad}" if first_sample is not None else f"batch {batch_index}"
            raise DataError(f"the data holds NaN or inf values (first at {where}); clean or impute them first")

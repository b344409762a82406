"""Streams: `tf.data.Dataset`s, `keras.utils.PyDataset`s and generators, read batch by batch.

A stream is a factory `batch_size → iterator of (x, y) numpy batches`. It is cut at `samples`,
single samples are batched here, a read-once generator is replayed on a second pass, and under
several workers a stream read whole keeps only its worker's batches (`keep_shard`).
"""

from __future__ import annotations

import collections.abc
import itertools
import os
import weakref
from collections.abc import Callable, Iterator

import numpy as np

from deadrelu.data.adaptation import Inputs
from deadrelu.data.arrays import count_samples, is_array, map_arrays, named_leaves
from deadrelu.data.checks import ACCEPTED, check_kind, first_sentence
from deadrelu.data.readers import as_array
from deadrelu.errors import DataError

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


def kind_name(data) -> str:
    """What a stream is, for messages: "tf.data.Dataset", "PyDataset", "generator" or its type's name."""
    if is_tf_dataset(data):
        return "tf.data.Dataset"
    if _is_py_dataset(data):
        return "PyDataset"
    return "generator" if isinstance(data, collections.abc.Generator) else type(data).__name__


def is_tf_dataset(data) -> bool:
    """Whether `data` is a `tf.data.Dataset` (told without importing TensorFlow)."""
    return "tensorflow" in type(data).__module__ and hasattr(data, "element_spec") and hasattr(data, "cardinality")


def _is_py_dataset(data) -> bool:
    kind = type(data)  # not the instance: a PyDataset's `num_batches` may raise when read
    return (
        hasattr(kind, "__getitem__")
        and hasattr(kind, "on_epoch_end")
        and not isinstance(data, np.ndarray)
        and (hasattr(kind, "__len__") or hasattr(kind, "num_batches"))
    )


def as_stream(
    data, inputs: Inputs, samples: int | None, notes: list[str], shard: tuple[int, int] | None = None
) -> Callable | None:
    """A factory `batch_size → iterator of (x, y) batches` for datasets and generators, else None.

    With a `shard` and no `samples`, a `tf.data.Dataset` reads only its shard (`dataset.shard`);
    every other stream is read whole and `ProbeData.batches` keeps the shard's batches (the cut at
    `samples` counts the samples of every worker).
    """
    if is_tf_dataset(data):
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
        return _elements_stream(_replay(data), inputs, samples, notes, kind_name(data))
    if (
        isinstance(data, (str, os.PathLike, np.ndarray, list, tuple, dict))
        or is_array(data)
        or isinstance(data, (int, float, complex, np.generic))
    ):
        return None
    if isinstance(data, collections.abc.Iterable) or hasattr(data, "__array__"):
        return None  # e.g. a pandas DataFrame: read as an array
    raise DataError(f"deadrelu cannot read data of type {type(data).__name__}; pass {ACCEPTED}")


def _dataset_stream(
    dataset, inputs: Inputs, samples: int | None, notes: list[str], shard: tuple[int, int] | None = None
) -> Callable:
    import tensorflow as tf

    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY and samples is None:
        raise DataError(
            "the dataset is infinite (it repeats); pass `samples` to scan that many samples of it, "
            "or drop its .repeat()"
        )
    spec = dataset.element_spec
    x_spec = split_element(spec)[0]
    for key, leaf in named_leaves(x_spec) if not isinstance(x_spec, tf.TypeSpec) else [("", x_spec)]:
        if not isinstance(leaf, tf.TensorSpec):
            raise DataError(
                f"the dataset yields {type(leaf).__name__.replace('Spec', '')}s{key}, which deadrelu "
                "does not read; yield dense tensors (e.g. dataset.padded_batch(N) or .to_tensor())"
            )
        check_kind(
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
        return _limit((split_element(element) for element in batched.as_numpy_iterator()), samples)

    return batches


def _elements_stream(
    elements: Callable[[], Iterator], inputs: Inputs, samples: int | None, notes: list[str], kind: str
) -> Callable:
    """Batches from a PyDataset or generator: numpy `(x, y)` pairs; single samples are stacked into batches."""

    def batches(batch_size: int) -> Iterator[tuple]:
        pairs = ((_numpy(x), _numpy(y)) for x, y in map(split_element, elements()))
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


def keep_shard(pairs: Iterator[tuple], index: int, workers: int) -> Iterator[tuple]:
    """This worker's batches of a stream every worker reads whole: every `workers`-th, from `index` on."""
    for position, pair in enumerate(pairs):
        if position % workers == index:
            yield pair


def is_distributed_dataset(data) -> bool:
    """Whether `data` is a `tf.distribute.DistributedDataset` (TensorFlow imported only for TensorFlow objects)."""
    if "tensorflow" not in type(data).__module__:
        return False
    import tensorflow as tf

    return isinstance(data, tf.distribute.DistributedDataset)


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
            f"the samples the data yields differ in shape ({first_sentence(exc)}); yield samples of "
            "one shape, or batches"
        ) from None


def split_element(element) -> tuple:
    """Keras's convention: a tuple is (x,), (x, y) or (x, y, sample_weight); anything else is x."""
    if isinstance(element, tuple) and 1 <= len(element) <= 3:
        return element[0], element[1] if len(element) > 1 else None
    return element, None


def _numpy(value):
    if value is None:
        return None
    if isinstance(value, dict):
        return {key: _numpy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)) and value and is_array(value[0]):
        return [_numpy(item) for item in value]
    if hasattr(value, "numpy") and callable(value.numpy):
        return value.numpy()
    return as_array(value, "data")


def _first_leaf(x, inputs: Inputs):
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

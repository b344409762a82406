"""`ProbeData` and `load_data`: any data source resolved for a model, then read as checked batches.

`load_data` picks the reader (`readers`), the stream (`streams`) or synthetic inputs, checks the
sample counts and labels (`checks`) and plans the adaptation (`adaptation`); `ProbeData.batches`
yields the adapted batches, checked for NaN/inf, this worker's share under a multi-worker strategy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import deadrelu.validation as validation
from deadrelu.data.adaptation import Inputs, adapter, model_output_names
from deadrelu.data.arrays import count_samples, leaves, map_arrays
from deadrelu.data.checks import check_finite, check_kind, checked_count
from deadrelu.data.ranges import InputRanges
from deadrelu.data.readers import Unreadable, as_arrays, read_images, read_path
from deadrelu.data.streams import as_stream, is_distributed_dataset, is_tf_dataset, keep_shard, kind_name, split_element
from deadrelu.errors import DataError, UsageError


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
    # The range and scale of each input over the batches of the last pass of `batches`.
    _ranges: InputRanges | None = dataclasses.field(default=None, repr=False)

    def batches(self, batch_size: int, *, labels: bool = False) -> Iterator:
        """Yields batches (`x`, or `(x, y)` with `labels=True`) as float arrays, checked for NaN/inf.

        A stream yields its own batches, cut at `samples`; arrays are sliced `batch_size` at a time.
        With a `shard`, only this worker's batches are yielded; a distributed dataset's batches are
        yielded as they are. Each pass measures the range of every input anew (`input_ranges`).
        """
        batch_size = validation.positive_int(batch_size, "batch_size")
        if labels and self._label_problem:
            raise DataError(self._label_problem)
        if self.distributed:
            yield from self._distributed(labels)
            return
        pairs = self.stream(batch_size) if self.stream is not None else self._slices(batch_size)
        if self.shard is not None and self.stream is not None and not self._sharded_stream:
            pairs = keep_shard(pairs, *self.shard)
        seen = 0
        self._ranges = ranges = InputRanges(self._inputs.names if self._inputs is not None else None)
        for index, (x, y) in enumerate(pairs):
            if self.stream is not None:
                check_kind(x, "data")
            if self._transform is None:  # a stream is adapted like an array, from its first batch
                self._transform = adapter(x, self._inputs or Inputs(), self._rescale, self.notes)
            x = self._transform(x)
            check_finite(x, "data", seen)
            ranges.add(x)
            if index == 0:
                self._check_scale(x)
            if labels:
                if y is None:
                    raise UsageError(
                        "`gradients=True` needs labels: the dataset or generator must yield (inputs, labels) pairs"
                    )
                check_kind(y, "labels")
                check_finite(y, "labels", seen)
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
        floats = [np.asarray(a) for a in leaves(x) if np.issubdtype(np.asarray(a).dtype, np.floating)]
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
            x, y = split_element(element)
            if labels and y is None:
                raise UsageError(
                    "`gradients=True` needs labels: the distributed dataset must yield (inputs, labels) pairs"
                )
            yield (x, y) if labels else x

    def input_ranges(self) -> list[dict]:
        """The range and scale of each input over the batches the last pass of `batches` yielded.

        Measured on the data as the model receives it (after conversion to float and `rescale`),
        in float64, NaN and ±inf left out and counted. Under several workers none: each worker
        reads its own share, and every worker must return the same report.

        Returns:
            One dict per input, in input order: `name`, `min`, `max`, `mean`, `std`,
            `integer_valued`, `values`, `non_finite` (see `deadrelu.data.ranges.InputRanges.to_list`);
            `[]` before any batch was read, for a distributed dataset (its batches stay on the
            replicas) and under several workers.

        Example:
            >>> probe_data.input_ranges()[0]["max"]
            255.0
        """
        if self._ranges is None or (self.shard is not None and self.shard[1] > 1):
            return []
        return self._ranges.to_list()

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
            `deadrelu.engine.distribute.resolve_strategy`). Under several workers each reads only its
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
    inputs = Inputs.of(model)
    output_names = model_output_names(model)
    from deadrelu.engine.distribute import shard_of

    shard = shard_of(strategy)
    if data is None:
        return dataclasses.replace(
            _synthetic(inputs.shapes, synthetic_samples if samples is None else samples), shard=shard, _inputs=inputs
        )

    if is_distributed_dataset(data):
        return _distributed_data(data, strategy, labels=labels, samples=samples, rescale=rescale)
    notes: list[str] = []
    stream = as_stream(data, inputs, samples, notes, shard)
    if stream is not None:
        if labels is not None:
            raise DataError(
                f"a {kind_name(data)} brings its own labels: yield (inputs, labels) pairs from it "
                "instead of passing `labels`"
            )
        return ProbeData(
            x=None,
            samples=samples,
            source=kind_name(data),
            notes=notes,
            stream=stream,
            shard=shard,
            _inputs=inputs,
            _rescale=rescale,
            _sharded_stream=shard is not None and is_tf_dataset(data) and samples is None,
        )

    is_path = isinstance(data, (str, os.PathLike))
    source = os.fspath(data) if is_path else "in-memory"
    if is_path:
        x, y_in_file = read_path(
            data, for_labels=False, input_names=inputs.names, output_names=output_names, notes=notes
        )
    else:
        x, y_in_file = as_arrays(data, len(inputs.shapes or []), "data"), None
    y = labels
    if isinstance(labels, (str, os.PathLike)):
        y, _ = read_path(labels, for_labels=True, output_names=output_names, notes=notes)
    elif labels is not None:
        y = as_arrays(labels, len(output_names or []), "labels")
    label_problem = None
    if y is None:
        y = y_in_file
        if isinstance(y, Unreadable):
            y, label_problem = None, y.message
    folder = isinstance(x, str)
    if folder:  # a folder of images, read at the model's size
        x = read_images(x, inputs.shapes, skip_bad=skip_bad_images, limit=samples, notes=notes)

    what = f"the data in {source}" if is_path else "the data"
    count = checked_count(x, what)
    if count == 0:
        raise DataError(f"{what} holds no samples (its first axis is empty); pass at least one sample")
    check_kind(x, "data")
    if samples is not None:
        count = min(count, samples)
    if y is not None:
        label_count = checked_count(y, "the labels")
        # Every sample needs its label; more labels than samples mean the two do not belong together,
        # unless the samples were cut (a folder of images read up to `samples`).
        if label_count < count or (label_count != checked_count(x, what) and not (folder and samples)):
            label_problem = (
                f"there are {label_count:,} labels for {checked_count(x, what):,} samples; pass one label per sample"
            )
            if labels is not None:  # asked for: wrong now; found beside the data: wrong once used
                raise DataError(label_problem)
            y = None
    transform = adapter(x, inputs, rescale, notes)
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


def _synthetic(input_shapes, count: int) -> ProbeData:
    """Random stand-ins for real data, uniform in [0, 1), of the model's input shapes (seeded: the same every time)."""
    if not input_shapes or any(d is None for shape in input_shapes for d in shape):
        raise DataError("no `data` given and the model's input shape is not fully known; pass real data with `data=`")
    rng = np.random.default_rng(0)
    arrays = [rng.uniform(0.0, 1.0, size=(count,) + tuple(shape)).astype(np.float32) for shape in input_shapes]
    x = arrays[0] if len(arrays) == 1 else arrays
    return ProbeData(x=x, samples=count, source=f"synthetic uniform [0, 1), {count} samples", synthetic=True)


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

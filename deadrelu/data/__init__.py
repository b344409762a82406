"""Sources → batches: arrays, files, datasets, generators and folders of images, adapted to the model input.

Everything here streams: a `.npy` is memory-mapped and an HDF5 dataset is read slice by slice,
so probing 50,000 samples holds one batch in memory, not the whole file.

Every problem with the data is a `DataError` whose message says what to change. It is raised
before the model runs wherever the data can be inspected up front (arrays and files: their type,
shape and sample count; a `tf.data.Dataset`: its element spec and cardinality), and otherwise at
the first batch that shows it (a generator's strings, a NaN in batch 7).

The modules, in the order data flows through them:

- `probe_data`: `load_data` (a source resolved for a model) and `ProbeData` (its checked batches).
- `readers`: in-memory values and files (.npy, .npz, .h5, .csv, folders of images) made into arrays.
- `streams`: `tf.data.Dataset`s, `PyDataset`s and generators, batched, cut at `samples`, replayed.
- `adaptation`: arrays fitted to the model's inputs (channel axis, dtype, `rescale`), with notes.
- `checks`: sample counts, real numbers, no NaN/inf — and the wording of their messages.
- `arrays`: helpers over one array or a list/dict of them (`map_arrays`, `count_samples`).
"""

from __future__ import annotations

from deadrelu.data.arrays import count_samples, map_arrays
from deadrelu.data.checks import ACCEPTED
from deadrelu.data.probe_data import ProbeData, load_data
from deadrelu.data.readers import IMAGE_EXTENSIONS

__all__ = ["ACCEPTED", "IMAGE_EXTENSIONS", "ProbeData", "count_samples", "load_data", "map_arrays"]

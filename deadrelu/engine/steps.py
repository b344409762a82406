"""The probe's compiled step, once per Keras backend: how one batch is run and its numbers fetched.

The probe (`deadrelu.engine.probe`) owns everything backend-neutral: the hooks that record site outputs,
the per-unit reductions (`keras.ops`, in `deadrelu.engine.reductions`) and the totals. A step only says
how to run the model on one batch and differentiate it:

- TensorFlow: one `tf.function` (no AutoGraph); gradients by `GradientTape`. Under a
  `tf.distribute.Strategy` each global batch is split across the local replicas and run with
  `strategy.run`; each replica returns its own numbers, which the host adds, and several workers
  gather their totals at the end of a pass.
- JAX: one `jax.jit` over the model called in a `keras.StatelessScope` (weights passed as
  arrays); ∂ℓ/∂z at every site by `jax.grad` with respect to a zero added to each site output.
  Shapes are static under `jit`, so a short last batch is filled up with copies of its own
  samples, which count nowhere. A forward scan holds its full batches back and runs them in
  groups, one `jax.lax.scan` each (`deadrelu.engine.steps_jax`).
- PyTorch: eager; gradients by `torch.autograd.grad`.

Under a strategy, and on JAX, every batch a replica (or `jit`) sees has the same number of rows;
the rows that only fill it up are left out of every count by a 0/1 `valid` vector.

Every step returns one batch's packed statistics (`Totals.pack`) as device tensors; `fetch`
brings them to numpy. Summed weight gradients stay on the device across batches.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from deadrelu.engine.instrumentation import Record
from deadrelu.engine.sites import KIND_FUSED
from deadrelu.errors import UsageError


def make_step(probe, strategy=None):
    """The step for the active Keras backend.

    Args:
        probe: The `deadrelu.engine.probe.Probe` whose model and hooks the step runs.
        strategy: A `tf.distribute.Strategy` (TensorFlow only) or None.

    Returns:
        A `TensorFlowStep`, `JaxStep` or `TorchStep`.
    """
    import keras

    from deadrelu.engine.distribute import resolve_strategy

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return TensorFlowStep(probe, strategy)
    resolve_strategy(strategy, probe.model)  # refuses a strategy on the other backends, in one line
    if backend == "jax":
        return JaxStep(probe)
    if backend == "torch":
        return TorchStep(probe)
    raise UsageError(
        f"deadrelu runs on the TensorFlow, JAX and PyTorch Keras backends, not {backend!r}; "
        "set KERAS_BACKEND to tensorflow, jax or torch"
    )


def _leaves(x) -> list:
    import keras

    return keras.tree.flatten(x)


def _batch_size(x) -> int:
    return int(_leaves(x)[0].shape[0])


class _Step:
    """What every backend's step shares: the weight-gradient sums and the trace count."""

    #: Exceptions of the model's own call that mean "the data does not fit the model".
    data_errors: tuple = (ValueError, TypeError)

    def __init__(self, probe):
        self.probe = probe
        self.traces = 0  # how many times the Python body ran to build a compiled step (eager: 1)
        self._weight_sums: list = []

    def _weight_variables(self) -> list:
        return [v for group in self.probe.weight_groups for v in group.variables]

    def example(self, x):
        """A plain (not distributed) batch structure like `x`: what the probe learns shapes from."""
        return x

    def samples(self, x) -> int:
        """The number of samples in batch `x`."""
        return _batch_size(x)

    def is_distributed(self, x) -> bool:
        """Whether `x` is already split across replicas (an element of a `DistributedDataset`)."""
        return False

    def weight_sums(self) -> list[list[np.ndarray]]:
        """Per weight group, the summed gradient of each variable over the pass (float64)."""
        flat = [np.asarray(self._to_numpy(s), np.float64) for s in self._weight_sums]
        out, start = [], 0
        for group in self.probe.weight_groups:
            out.append(flat[start : start + len(group.variables)])
            start += len(group.variables)
        return out

    def combine(self, totals, samples: int) -> int:
        """Adds the other workers' totals to `totals` (several workers only); returns all samples."""
        return samples

    def flush(self) -> list:
        """Runs the batches the step held back (JAX's groups); returns their statistics (to `fetch`)."""
        return []

    def _to_numpy(self, value):
        return np.asarray(value)


class TensorFlowStep(_Step):
    """The step as one `tf.function`, on one device or across a `tf.distribute.Strategy`."""

    def __init__(self, probe, strategy=None):
        import tensorflow as tf

        from deadrelu.engine.distribute import resolve_strategy

        super().__init__(probe)
        self.data_errors = (ValueError, TypeError, tf.errors.InvalidArgumentError)
        self.strategy = resolve_strategy(strategy, probe.model)
        strategy = self.strategy
        self._fn = None
        self._per_replica = None  # rows per replica, fixed by the first batch
        self._replicas = 1
        self._workers = 1
        if strategy is not None:
            self._workers = max(1, strategy.num_replicas_in_sync // max(1, len(strategy.extended.worker_devices)))
            self._replicas = strategy.num_replicas_in_sync // self._workers

    # -- building ---------------------------------------------------------------------------

    def build(self, x, y) -> None:
        import tensorflow as tf

        self._fn = None
        x_spec = tf.nest.map_structure(_tensor_spec, x)
        y_spec = None if y is None else tf.nest.map_structure(_tensor_spec, y)
        variables = self._weight_variables()
        body = self._gradient if self.probe.gradients else self._forward
        if self.strategy is None:
            w_spec = [tf.TensorSpec(v.shape, tf.float32) for v in variables]
            signature = [w_spec, x_spec, y_spec] if self.probe.gradients else [x_spec]
            # No AutoGraph: the step has no data-dependent Python control flow, and Keras's own train
            # and predict steps are not converted either (converting ours took most of a one-off trace).
            self._fn = tf.function(body, input_signature=signature, autograph=False)
        else:
            strategy = self.strategy

            def distributed(*args):
                return strategy.run(body, args=args)

            # Batches arrive as per-replica values of one size (see `_distribute`): one trace.
            self._fn = tf.function(distributed, autograph=False, reduce_retracing=True)

    def trace(self, x) -> None:
        """Traces the step for `x` without running it (finds the op-level sites)."""
        if self.strategy is None:
            self._fn.get_concrete_function()
        else:
            self(x, None)

    def start(self) -> None:
        """Zeroes the summed weight gradients before a pass."""
        import tensorflow as tf

        variables = self._weight_variables()
        if self.strategy is None:
            self._weight_sums = [tf.zeros(v.shape, tf.float32) for v in variables]
        else:
            self._weight_sums = self.strategy.experimental_distribute_values_from_function(
                lambda _: [tf.zeros(v.shape, tf.float32) for v in variables]
            )

    # -- the bodies (traced) ---------------------------------------------------------------------

    def _forward(self, x, valid=None):
        self.traces += 1
        # One read of z per plain layer-level ReLU: the kernel applies it and measures it (`fuse`).
        # Not under a strategy: its replicas may see batches of different (even zero) sizes, traced
        # apart, and their statistics must line up site by site.
        _, records = self.probe.recorded_call(
            lambda: self.probe.model(x, training=False), anchor=x, fuse=self.strategy is None, valid=valid
        )
        return self.probe.measure(records, valid=valid)

    def _gradient(self, weight_sums, x, y, valid=None):
        import tensorflow as tf

        self.traces += 1
        variables = self._weight_variables()
        with tf.GradientTape() as tape:
            y_pred, records = self.probe.recorded_call(
                lambda: self.probe.model(x, training=False),
                anchor=x,
                watch=tape.watch,
                fuse=self.strategy is None,
                valid=valid,
            )
            per_sample = self.probe.per_sample_loss(y, y_pred)
            total = tf.reduce_sum(per_sample if valid is None else per_sample * valid)
        outputs = [record.output for record in records]
        grads = tape.gradient(total, outputs + variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        stats = self.probe.measure(records, grads[: len(outputs)], valid=valid, loss=total)
        # IndexedSlices (embeddings) → dense.
        sums = [s + tf.convert_to_tensor(g) for s, g in zip(weight_sums, grads[len(outputs) :])]
        return stats, sums

    # -- running ---------------------------------------------------------------------------

    def __call__(self, x, y):
        """Runs one batch; returns its packed statistics (device tensors, per replica)."""
        import tensorflow as tf

        valid = None
        if self.strategy is not None and not _is_distributed(x):
            x, y, valid = self._distribute(x, y)
        elif y is not None and self.strategy is None:
            y = tf.nest.map_structure(tf.convert_to_tensor, y)
        masked = () if valid is None else (valid,)
        if not self.probe.gradients:
            return self._fn(x, *masked)
        stats, self._weight_sums = self._fn(self._weight_sums, x, y, *masked)
        return stats

    def fetch(self, stats) -> list[dict]:
        """One batch's statistics as numpy arrays: one dict per local replica."""
        if self.strategy is None:
            return [{name: value.numpy() for name, value in stats.items()}]
        return [
            {name: value.numpy() for name, value in replica.items()} for replica in _local_dicts(self.strategy, stats)
        ]

    def _distribute(self, x, y) -> tuple:
        """A global numpy batch → per-replica slices of one size, and which rows are real.

        Every replica gets `ceil(batch / replicas)` rows of the first batch (so the step is traced
        once); a replica whose slice is short or empty is filled up with copies of the batch's own
        samples, which its `valid` vector leaves out of every count and sum.
        """
        import tensorflow as tf

        replicas = self._replicas
        n = _batch_size(x)
        if self._per_replica is None:
            self._per_replica = math.ceil(n / replicas)
        per = max(self._per_replica, math.ceil(n / replicas))

        def rows_for(context):
            i = context.replica_id_in_sync_group % replicas
            real = np.arange(i * per, min((i + 1) * per, n))
            fill = np.arange(per - len(real)) % n
            return np.concatenate([real, fill]), (np.arange(per) < len(real)).astype(np.float32)

        def part(structure):
            def value_for(context):
                rows, valid = rows_for(context)
                if valid.all():  # a whole slice: a view, not a copy
                    return tf.nest.map_structure(lambda a: a[rows[0] : rows[0] + per], structure)
                return tf.nest.map_structure(lambda a: np.asarray(a)[rows], structure)

            return self.strategy.experimental_distribute_values_from_function(value_for)

        valid = self.strategy.experimental_distribute_values_from_function(lambda c: rows_for(c)[1])
        return part(x), None if y is None else part(y), valid

    def is_distributed(self, x) -> bool:
        return _is_distributed(x)

    def example(self, x):
        if not _is_distributed(x):
            return x
        import tensorflow as tf

        return tf.nest.map_structure(lambda v: self.strategy.experimental_local_results(v)[0], x)

    def samples(self, x) -> int:
        if not _is_distributed(x):
            return _batch_size(x)
        first = _leaves_distributed(x)[0]
        return sum(int(part.shape[0]) for part in self.strategy.experimental_local_results(first))

    def weight_sums(self) -> list[list[np.ndarray]]:
        if self.strategy is not None and self._weight_sums:
            import tensorflow as tf

            self._weight_sums = [
                self.strategy.reduce(tf.distribute.ReduceOp.SUM, s, axis=None) for s in self._weight_sums
            ]
        return super().weight_sums()

    def _to_numpy(self, value):
        return value.numpy()

    def combine(self, totals, samples: int) -> int:
        if self._workers == 1:
            return samples
        # Each worker measured its own shard: gather every worker's totals and combine them here,
        # identically on every worker.
        arrays = totals.arrays()
        for name in list(arrays):
            arrays[name][...] = totals.combine(name, self._gather(arrays[name], totals.neutral(name)))
        return int(self._gather(np.array([samples], np.int64), 0).sum())

    def _gather(self, array: np.ndarray, neutral) -> np.ndarray:
        """[n] on this worker → [replicas in sync, n]: the first local replica carries the array, the
        others `neutral` (what adds nothing to the total: 0, -inf for a maximum, +inf for a minimum)."""
        import tensorflow as tf

        placeholder = np.full_like(array, neutral)[None]
        replicas = self._replicas

        def value_for(context):
            first = context.replica_id_in_sync_group % replicas == 0
            return tf.constant(array[None] if first else placeholder)

        values = self.strategy.experimental_distribute_values_from_function(value_for)
        return self.strategy.gather(values, axis=0).numpy()

    def unmeasurable(self, output, anchor, per_sample: int) -> str | None:
        """Why an op-level site's traced output cannot be measured, or None when it can."""
        graph = _leaves(anchor)[0].graph
        if getattr(output, "graph", graph) is not graph:
            return "inside a loop or a conditional (while_loop, cond, scan): not measured"
        shape = getattr(output, "shape", None)
        if shape is not None and shape.rank is not None and shape.is_fully_defined():
            # Traced with a free batch size, an output that depends on the input has one too;
            # per replica (under a strategy) the batch size is fixed, and the sizes tell.
            batch = _leaves(anchor)[0].shape[0]
            if batch is None or shape.num_elements() != batch * per_sample:
                return _INPUT_INDEPENDENT
        return None


def _tensor_spec(array):
    """A `tf.TensorSpec` like `array`'s, with a free batch dimension."""
    import tensorflow as tf

    array = array if hasattr(array, "dtype") else np.asarray(array)
    return tf.TensorSpec((None,) + tuple(array.shape[1:]), tf.as_dtype(array.dtype))


_INPUT_INDEPENDENT = "applied to a tensor that does not depend on the input (e.g. weights): no unit output"


def _is_distributed(x) -> bool:
    return bool(_leaves_distributed(x)) and type(_leaves_distributed(x)[0]).__name__ in ("PerReplica", "Mirrored")


def _leaves_distributed(x) -> list:
    import tensorflow as tf

    return tf.nest.flatten(x, expand_composites=False)


def _local_dicts(strategy, stats) -> list[dict]:
    """Per local replica, the dict of statistics a `strategy.run` returned."""
    names = list(stats)
    parts = {name: strategy.experimental_local_results(stats[name]) for name in names}
    return [{name: parts[name][i] for name in names} for i in range(len(parts[names[0]]))] if names else [{}]


class JaxStep(_Step):
    """The step as one `jax.jit` over the model, its weights passed in as arrays."""

    def __init__(self, probe):
        super().__init__(probe)
        self._fn = None
        self._size = None  # the compiled batch size: shorter batches are filled up to it
        self._groups = None  # full batches held back to run as one `lax.scan` (`steps_jax`)

    @property
    def size(self) -> int:
        """The compiled batch size."""
        return self._size

    def build(self, x, y) -> None:
        import jax

        from deadrelu.engine.steps_jax import MIN_GROUP, BatchGroups, jit

        self._size = _batch_size(x)
        groups = None if self.probe.gradients else BatchGroups(self, x)
        self._groups = groups if groups is not None and groups.size >= MIN_GROUP else None
        model = self.probe.model
        position = {id(v): i for i, v in enumerate(model.trainable_variables)}
        try:
            self._positions = [position[id(v)] for v in self._weight_variables()]
        except KeyError:
            raise UsageError("a layer's trainable weight is not among the model's trainable variables") from None
        # The gradient step keeps jax.jit's defaults: under `COMPILER_OPTIONS` its backward pass rounds
        # differently (gradient sums moved by 3e-8 relative, one zero count by one, on the MNIST CNN).
        self._fn = jax.jit(self._gradient) if self.probe.gradients else jit(self._forward)

    def start(self) -> None:
        import jax.numpy as jnp

        self._weight_sums = [jnp.zeros(v.shape, "float32") for v in self._weight_variables()]
        if self._groups is not None:
            self._groups.reset()

    def trace(self, x) -> None:
        self.run_batch(x, None)

    def flush(self) -> list:
        return [] if self._groups is None else self._groups.flush()

    def _call(self, trainable, non_trainable, x):
        import keras

        model = self.probe.model

        def call():
            # What `model.stateless_call` does, but through `__call__`: Keras then drops the
            # `training` argument for a `call` that does not take it, and casts and masks as usual.
            mapping = list(zip(model.trainable_variables, trainable)) + list(
                zip(model.non_trainable_variables, non_trainable)
            )
            with keras.StatelessScope(state_mapping=mapping):
                return model(x, training=False)

        return call

    def _forward(self, trainable, non_trainable, x, valid):
        self.traces += 1
        _, records = self.probe.recorded_call(self._call(trainable, non_trainable, x), anchor=x)
        return self.probe.measure(records, valid=valid)

    def _gradient(self, trainable, non_trainable, weight_sums, x, y, valid):
        import jax
        import jax.numpy as jnp

        self.traces += 1
        # A plain pass tells the site outputs' shapes (XLA drops its computation: only shapes are used).
        _, plain = self.probe.recorded_call(self._call(trainable, non_trainable, x), anchor=x)
        indices = [record.index for record in plain]
        zeros = [jnp.zeros(record.output.shape, record.output.dtype) for record in plain]

        def loss(perturbations, weights):
            y_pred, records = self.probe.recorded_call(
                self._call(weights, non_trainable, x), anchor=x, perturb=perturbations
            )
            per_sample = self.probe.per_sample_loss(y, y_pred)
            # The site outputs and pre-activations leave the differentiated function as its aux.
            return jnp.sum(per_sample * valid), [(record.output, record.preact) for record in records]

        (total, recorded), (site_grads, weight_grads) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
            zeros, trainable
        )
        records = [Record(index, output, preact) for index, (output, preact) in zip(indices, recorded)]
        stats = self.probe.measure(records, site_grads, valid=valid, loss=total)
        sums = [s + weight_grads[k] for s, k in zip(weight_sums, self._positions)]
        return stats, sums

    def __call__(self, x, y):
        """Runs one batch, or holds a full one back for a group (returns None; `flush` runs the rest)."""
        from deadrelu.engine import mesh

        if self._groups is not None and _batch_size(x) == self._size and mesh.active() is None:
            return self._groups.hold(x)
        return self.run_batch(x, y)

    def run_batch(self, x, y):
        """Runs one batch through the per-batch step; returns its packed statistics."""
        import jax

        from deadrelu.engine import mesh

        n = _batch_size(x)
        size = max(self._size, n)
        shards = mesh.batch_shards()
        size = -(-size // shards) * shards  # a whole slice per device of the batch axis
        valid = (np.arange(size) < n).astype(np.float32)
        if n < size:  # fill up with copies of the batch's own samples (a maximum cannot change)
            rows = np.arange(size) % n
            x = jax.tree_util.tree_map(lambda a: np.asarray(a)[rows], x)
            y = None if y is None else jax.tree_util.tree_map(lambda a: np.asarray(a)[rows], y)
        if mesh.active() is not None:  # keras.distribution: split over the mesh as Keras's trainer does
            x, y, valid = mesh.place((x, y, valid))
        model = self.probe.model
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        if not self.probe.gradients:
            return self._fn(trainable, non_trainable, x, valid)
        stats, self._weight_sums = self._fn(trainable, non_trainable, self._weight_sums, x, y, valid)
        return stats

    def fetch(self, stats) -> list[dict]:
        import jax

        from deadrelu.engine.steps_jax import Grouped

        if isinstance(stats, Grouped):
            return stats.fetch()
        return [{name: np.asarray(value) for name, value in jax.device_get(stats).items()}]

    def unmeasurable(self, output, anchor, per_sample: int) -> str | None:
        from deadrelu._keras_compat import jax_trace

        if jax_trace(output) is not jax_trace(_leaves(anchor)[0]):
            return "inside a loop or a conditional (lax.scan, fori_loop, cond): not measured"
        if int(np.prod(output.shape)) != _batch_size(anchor) * per_sample:
            return _INPUT_INDEPENDENT
        return None


class TorchStep(_Step):
    """The step run eagerly on PyTorch."""

    data_errors = (ValueError, TypeError, RuntimeError, IndexError)

    def build(self, x, y) -> None:
        pass

    def start(self) -> None:
        self._weight_sums = [None for _ in self._weight_variables()]

    def trace(self, x) -> None:
        self(x, None)

    def __call__(self, x, y):
        import torch

        self.traces = 1
        # TensorFlow and XLA flush subnormal floats to zero on the CPU; PyTorch does so only on the
        # thread that asks (`set_flush_denormal`, put back after the batch), so gradients that vanish
        # on the other backends would keep a trace of 1e-40 here. Work on PyTorch's other threads
        # is covered by `deadrelu.engine.reductions_torch`, which reads a subnormal gradient as zero.
        flushed_before = _flushes_subnormals()
        torch.set_flush_denormal(True)
        try:
            if not self.probe.gradients:
                return self._forward(_tensors(x))
            return self._gradient(_tensors(x), _tensors(y))
        finally:
            torch.set_flush_denormal(flushed_before)

    def _forward(self, x):
        import torch

        with torch.no_grad():
            _, records = self.probe.recorded_call(lambda: self.probe.model(x, training=False), anchor=x)
            return self.probe.measure(records)

    def _gradient(self, x, y):
        import torch

        model = self.probe.model
        variables = [v.value for v in self._weight_variables()]
        # A site output that no trainable weight feeds (a frozen feature extractor) is outside
        # autograd's graph until asked for, like a tape's `watch`.
        y_pred, records = self.probe.recorded_call(lambda: model(x, training=False), anchor=x, watch=_track)
        total = torch.sum(self.probe.per_sample_loss(y, y_pred))
        # ∂ℓ/∂z where autograd computes it anyway (a Keras layer's own ReLU): it is ∂ℓ/∂output
        # where the unit passes gradient and 0 elsewhere, so the statistics need no mask.
        passed = {i for i, record in enumerate(records) if _relu_of_preact(self.probe.site(record.index), record)}
        targets = [record.preact if i in passed else record.output for i, record in enumerate(records)] + variables
        wanted = [t for t in targets if t.requires_grad]
        found = iter(torch.autograd.grad(total, wanted, allow_unused=True) if wanted else [])
        grads = [next(found) if t.requires_grad else None for t in targets]
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads)]
        with torch.no_grad():
            k = len(records)
            # (A subnormal gradient computed on one of PyTorch's worker threads is read as the zero
            # it is on the other backends by `deadrelu.engine.reductions_torch`.)
            detached = [
                Record(r.index, r.output.detach(), None if r.preact is None else r.preact.detach()) for r in records
            ]
            stats = self.probe.measure(detached, grads[:k], loss=total.detach(), passed=passed)
            self._weight_sums = [g if s is None else s + g for s, g in zip(self._weight_sums, grads[k:])]
        return stats

    def fetch(self, stats) -> list[dict]:
        return [{name: value.detach().cpu().numpy() for name, value in stats.items()}]

    def _to_numpy(self, value):
        if value is None:
            return np.zeros(0, np.float32)
        return value.detach().cpu().numpy()

    def weight_sums(self) -> list[list[np.ndarray]]:
        variables = self._weight_variables()
        self._weight_sums = [
            s if s is not None else _zeros_like_variable(v) for s, v in zip(self._weight_sums, variables)
        ]
        return super().weight_sums()

    def unmeasurable(self, output, anchor, per_sample: int) -> str | None:
        if int(np.prod(tuple(output.shape))) != _batch_size(anchor) * per_sample:
            return _INPUT_INDEPENDENT
        return None


def _flushes_subnormals() -> bool:
    """Whether PyTorch flushes subnormal floats to zero on this thread (it has a setter, no getter)."""
    import torch

    return float(torch.tensor([1e-39], dtype=torch.float32).mul(1.0).item()) == 0.0


def _relu_of_preact(site, record) -> bool:
    """Whether a PyTorch site output is `torch.relu` of the recorded z, inside a Keras layer.

    Then z feeds only that ReLU (Keras's own layers apply their activation to z and nothing else),
    so ∂ℓ/∂z, which autograd's ReLU backward computes in any case, is ∂ℓ/∂output masked to where
    the unit passes gradient. A user's layer might read z again: its sites keep ∂ℓ/∂output.
    """
    z, fn = record.preact, getattr(record.output, "grad_fn", None)
    if z is None or fn is None or z.grad_fn is None or site.kind != KIND_FUSED or site.op_level:
        return False
    if site.capped or site.threshold or site.recurrent is not None:
        return False
    if not type(site.layer).__module__.startswith("keras."):
        return False
    return type(fn).__name__ == "ReluBackward0" and fn.next_functions[0][0] is z.grad_fn


def _track(tensor) -> None:
    """Makes a float tensor outside autograd's graph part of it (a leaf that requires grad)."""
    if not tensor.requires_grad and tensor.is_floating_point():
        tensor.requires_grad_(True)


def _tensors(x) -> Any:
    import keras
    from keras import ops

    def tensor(a):
        if isinstance(a, np.ndarray) and a.dtype.byteorder not in "=|":
            a = a.astype(a.dtype.newbyteorder("="))  # PyTorch reads native byte order only
        return ops.convert_to_tensor(a)

    return keras.tree.map_structure(tensor, x)


def _zeros_like_variable(variable):
    import torch

    return torch.zeros(tuple(variable.shape), dtype=torch.float32)

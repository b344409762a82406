"""Sites + batches → per-unit statistics: the one engine shared by scan, retrain and the callback.

How it works: for the duration of each step call, every layer-level site's nonlinearity is wrapped so that its output,
and its input (the pre-activation z), are handed to a recorder, and ReLUs applied as function calls are intercepted
too and become op-level sites (`deadrelu.engine.instrumentation`, `deadrelu.engine.interception`). The step
(`deadrelu.engine.steps`: a `tf.function`, a `jax.jit` or eager PyTorch) runs the model in inference mode and reduces
every site output and its z to per-unit sums, maxima and minima (`keras.ops`, in `deadrelu.engine.reductions`), which
the host adds to its totals batch after batch; at the end of the pass they become a `ProbeResult`
(`deadrelu.engine.statistics`). Nothing of size samples × units is ever kept, so memory is O(units). The wrappers are
removed after every call — a compiled step keeps the recording, the user's model object is left exactly as it was.

Op-level sites are found by the first, eager pass on one sample (which also learns every site's
shape) and measured by the trace, so the complete list of sites is known after the first trace
(`Probe.found`; `find_all_sites` traces without measuring). A ReLU that runs but cannot be
measured (inside a loop or a conditional, or on a tensor that does not depend on the input) is
listed with the reason and said in one note.

With `gradients=True` the same step also takes the per-sample loss (`deadrelu.engine.losses`; sum
reduction, so numbers do not depend on the batch size) and measures ∂ℓₙ/∂z at every site and the
weight gradient of every layer.

Data the model cannot run on is a `DataError` (exit 2) only when Keras or the backend raise what
they raise for it (the step's `data_errors`: `ValueError`, `TypeError`, and TensorFlow's
`InvalidArgumentError` or PyTorch's `RuntimeError`, `IndexError`); anything else, and any error of
deadrelu's own code inside the call (`deadrelu.engine.instrumentation.own_code`), is a bug and
propagates (exit 3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import weakref
from collections.abc import Callable, Iterable

import numpy as np

import deadrelu.kernel as kernel
from deadrelu._keras_compat import child_layers, inputs_structure
from deadrelu.engine.instrumentation import (
    Record,
    Recorder,
    capturing_input,
    hooked,
    how_applied,
    op_layout,
    op_site,
    output_activation,
    own_code,
    plain_relu,
    unwrapped,
)
from deadrelu.engine.interception import Application, intercept_relus
from deadrelu.engine.losses import per_sample_loss
from deadrelu.engine.reductions import Totals, fused_grad_stats, fused_relu_stats, site_batch_stats
from deadrelu.engine.sites import UNKNOWN_REASON, OtherActivation, Site, SiteMap, find_sites
from deadrelu.engine.statistics import (
    ProbeResult,
    WeightGroup,
    layer_gradients,
    non_finite_weights,
    site_statistics,
    weight_groups,
)
from deadrelu.engine.steps import make_step
from deadrelu.errors import DataError, InternalError, UsageError


@contextlib.contextmanager
def _own_traces_unreported():
    """Keeps TensorFlow from calling probes "excessive retracing".

    Every probe traces its step once, but TensorFlow counts traces per Python function, so a loop
    scanning several models (one probe each) would read as retracing of one function; under a
    strategy, the replicas of a short last batch take one more trace on purpose.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        yield
        return
    import tensorflow as tf

    def keep(record) -> bool:
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message and ("Probe." in message or "Step." in message))

    logger = tf.get_logger()
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


class Probe:
    """Streams batches through a model once and accumulates per-unit statistics of every site.

    A `Probe` is compiled once (one trace, on the first batch) and can be `run` again and again
    (the training callback does so every epoch) without retracing, as long as batches keep the
    same structure and non-batch shapes. It runs on the TensorFlow, JAX and PyTorch backends of
    Keras (`deadrelu.engine.steps`), and on TensorFlow across the replicas of a `tf.distribute.Strategy`.

    Args:
        model: A `keras.Model`.
        site_map: The layer-level sites to measure. Defaults to `find_sites(model)`; op-level
            sites are found by the first pass and measured too (`found` lists them all).
        gradients: Also measure gradients; batches must then be `(x, y)` pairs. Defaults to False.
        loss: With gradients: a Keras loss name, function or `keras.losses.Loss`. Defaults to
            the model's compiled loss.
        weak: Hold the model by a weak reference only (for caches of probes). Defaults to False.
        strategy: A `tf.distribute.Strategy` to run every batch across its replicas (TensorFlow
            only). Defaults to None: the strategy the model was built under, if any.

    Example:
        >>> probe = Probe(model)
        >>> result = probe.run(batches)   # batches: iterable of numpy arrays
    """

    def __init__(
        self,
        model,
        site_map: SiteMap | None = None,
        *,
        gradients: bool = False,
        loss=None,
        weak: bool = False,
        strategy=None,
    ):
        self._model = weakref.ref(model) if weak else (lambda: model)
        site_map = site_map if site_map is not None else find_sites(model)
        if any(site.op_level for site in site_map.sites):  # a complete map: its op-level sites are found again
            site_map = dataclasses.replace(site_map, sites=[site for site in site_map.sites if not site.op_level])
        self.site_map = site_map
        self.gradients = gradients
        self.strategy = strategy
        self._loss = loss
        self.loss_fn = None
        self.weight_groups: list[WeightGroup] = []
        self._recorder = Recorder()
        self._step = None  # a `deadrelu.engine.steps` step, built for `_spec`
        self._spec = None  # (x, y) specs the step was built for
        self._totals = None
        self._layout = None  # per site: (calls, positions, units)
        self._sites: list[Site] = list(self.site_map.sites)  # layer-level, then op-level once found
        self._op_keys: dict[tuple[int, int], int] = {}  # (id(layer), index in its call) → site index
        self._calls_known = False  # whether a traced (or eager) body has run once since `_build`
        self._traced_calls: dict[int, int] = {}  # op-level site index → calls seen by the first body
        self._unmeasured: dict[int, str | None] = {}  # op-level site index → why it is not measured (None:
        # another site of the same layer says why already)
        self._strays: dict[str, OtherActivation] = {}  # ReLUs the trace ran that the eager pass did not
        self._found: SiteMap | None = None
        self._output_activation = None  # with gradients: the output layer whose softmax/sigmoid input is kept
        self._output_activation_name = ""
        self._logits = None
        self._kernel = None  # deadrelu.kernel's fused ops, or None for the backend's own (set by `_build`)
        self._no_preact: set[int] = set()  # sites recorded without their pre-activation (see `measure`)

    @property
    def model(self):
        """The probed `keras.Model`."""
        model = self._model()
        if model is None:
            raise ReferenceError("the model of this probe no longer exists")
        return model

    @property
    def found(self) -> SiteMap | None:
        """Every site measured — layer-level, then op-level — with the activations listed but not
        measured and notes on ReLUs no site covers; None before the step is first traced."""
        if self._found is None and self._calls_known:
            self._found = self._complete_map()
        return self._found

    def site(self, index: int) -> Site:
        """The site a `Record` of the step names by its index."""
        return self._sites[index]

    @property
    def traces(self) -> int:
        """How many times the step's body was traced (on PyTorch, which runs eagerly: 1 once run)."""
        return 0 if self._step is None else self._step.traces

    def trace(self, x) -> SiteMap:
        """Builds and traces the step for inputs like `x` without measuring anything.

        Args:
            x: A batch of inputs (one sample is enough).

        Returns:
            `found`: every site, op-level ones included.
        """
        if self.gradients:
            raise UsageError("`trace` is for probes without gradients")
        x = self._structured(x)
        spec = structure_spec(x, None), self._weights_key()
        if spec != self._spec:
            self._build(x, None)
            self._spec = spec
        with hooked(self.site_map, self._recorder), _own_traces_unreported():
            self._step.start()
            self._step.trace(x)
        return self.found

    # -- public ---------------------------------------------------------------------------

    def run(self, batches: Iterable, *, on_batch: Callable[[int], None] | None = None) -> ProbeResult:
        """Streams `batches` through the model and returns the accumulated statistics.

        Args:
            batches: Iterable of inputs (array, list or dict of arrays), or of `(x, y)` pairs
                when the probe measures gradients; under a strategy also batches already
                distributed (the elements of a `DistributedDataset`).
            on_batch: Called with each batch's sample count after it has been processed.

        Returns:
            A `ProbeResult`.
        """
        # The probe's hooks and totals live on the model's layers and on this object: two scans of
        # one model at once (two threads) take turns; scans of different models run side by side.
        with model_lock(self._model()), _own_traces_unreported():
            samples = self._run(batches, on_batch)
            if self._step is not None:
                samples = self._step.combine(self._totals, samples)
            if samples == 0:
                raise DataError("the data holds no samples; pass a file or array with at least one sample")
            return self._result(samples)

    def _run(self, batches: Iterable, on_batch) -> int:
        """One pass over `batches` (see `run`); returns the number of samples."""
        samples = 0
        pending = None  # the previous batch's numbers, fetched once the next batch is under way
        for batch in batches:
            x, y = self._split(batch)
            if samples == 0:
                if self._step is None:
                    self._step = make_step(self, self.strategy)  # errors on a wrong backend early
                example = self._step.example(x)
                spec = structure_spec(example, None if y is None else self._step.example(y)), self._weights_key()
                if spec != self._spec:  # first run, or data of another shape or dtype: (re)build
                    self._build(example, None if y is None else self._step.example(y))
                    self._spec = spec
                self._totals.reset()
                self._step.start()
            if y is not None and not self._step.is_distributed(y):
                self.loss_fn.check_labels(y)
            with hooked(self.site_map, self._recorder):
                try:
                    stats = self._step(x, y)
                except InternalError as exc:  # a bug of deadrelu's own code in the step (`own_code`), not the data
                    raise unwrapped(exc) from exc
                except self._step.data_errors as exc:
                    raise DataError(
                        f"the model failed on the data ({_first_line(exc)}); check the shape and "
                        "type of the data and labels against the model's input and output"
                    ) from exc
            if pending is not None:
                self._add(pending)
            pending = stats
            n = self._step.samples(x)
            samples += n
            if on_batch is not None:
                on_batch(n)
        with hooked(self.site_map, self._recorder):  # batches the step held back (JAX: `lax.scan` groups)
            held = [] if self._step is None else self._step.flush()
        for stats in [pending, *held]:
            if stats is not None:
                self._add(stats)
        return samples

    def _add(self, stats) -> None:
        for replica in self._step.fetch(stats):
            self._totals.add(replica)

    # -- building -------------------------------------------------------------------------

    def _weights_key(self) -> tuple:
        """With gradients, which weights train (the step differentiates those): freezing or
        unfreezing a layer between runs rebuilds the step."""
        return tuple(id(v) for v in self.model.trainable_variables) if self.gradients else ()

    def _split(self, batch):
        if self.gradients:
            if not (isinstance(batch, tuple) and len(batch) == 2):
                raise UsageError("`gradients=True` needs labels: pass `labels` with the data")
            return self._structured(batch[0]), batch[1]
        if isinstance(batch, tuple) and len(batch) == 2 and not self._expects_two_inputs():
            return self._structured(batch[0]), None
        return self._structured(batch), None

    def _structured(self, x):
        """Wraps a single array in a list when the model was built with a one-element input list
        (Keras 2 functional files), as Keras would otherwise warn on every call."""
        struct = inputs_structure(self.model)
        if isinstance(struct, list) and len(struct) == 1 and not isinstance(x, (list, tuple, dict)):
            return [x]
        return x

    def _expects_two_inputs(self) -> bool:
        inputs = getattr(self.model, "inputs", None)
        return bool(inputs) and len(inputs) == 2

    def _build(self, x, y) -> None:
        """Learns each site's layout from one eager call, creates the totals, builds the step."""
        self._step = make_step(self, self.strategy)  # first: it knows what errors bad data raises
        self._layout = self._discover_layout(x)
        self._traced_calls, self._unmeasured, self._strays, self._found = {}, {}, {}, None
        self._no_preact = set()
        self._calls_known = False
        self._totals = Totals(self._sites, self._layout, self.gradients)
        if self.gradients:
            self.loss_fn = per_sample_loss(self.model, self._loss, y)
            self.weight_groups = weight_groups(self.model)
            self._output_activation = output_activation(self.model)
            self._output_activation_name = getattr(getattr(self._output_activation, "activation", None), "__name__", "")
        self._kernel = kernel.ops()
        self._step.build(x, y)

    def _discover_layout(self, x) -> list[tuple[int, int, int]]:
        """Runs one sample eagerly with hooks: builds the model, checks the input, finds the
        op-level sites and every site's shape."""
        one = _first_samples(x, 1)
        layer_level = list(self.site_map.sites)
        op_sites: list[Site] = []
        self._op_keys = {}
        taken = {site.path for site in layer_level} | set(self.site_map.layer_paths.values())

        @own_code("naming an op-level site")
        def discovered(application: Application, output):
            key = (id(application.layer), application.index)
            index = self._op_keys.get(key)
            if index is None:
                index = self._op_keys[key] = len(layer_level) + len(op_sites)
                op_sites.append(op_site(application, index, self.site_map, taken))
            return self._recorder.record(index, output, application.input)

        try:
            # Unhooked first if the model is not built yet: building it traces `call` symbolically,
            # and those symbolic outputs must not be counted as calls.
            if not getattr(self.model, "built", False):
                self.model(one, training=False)
            with (
                hooked(self.site_map, self._recorder),
                self._recorder.recording() as records,
                self._intercepting(discovered) as interception,
            ):
                self.model(one, training=False)
        except InternalError as exc:  # a bug of deadrelu's own code inside the call (`own_code`), not the data
            raise unwrapped(exc) from exc
        except self._step.data_errors as exc:  # what Keras and the backend raise for data that does not fit
            raise DataError(
                f"the model cannot run on this data ({_first_line(exc)}); "
                f"check the data's shape against the model input {_input_shape(self.model)}"
            ) from exc
        self._sites = layer_level + [how_applied(site, interception, self.site_map) for site in op_sites]
        layout = []
        for site in self._sites:
            outputs = [record.output for record in records if record.index == site.index]
            if not outputs:
                # A site the forward pass never reaches (e.g. an unused branch).
                layout.append((0, 1, _units_from_layer(site)))
                continue
            shape = tuple(outputs[0].shape)
            if site.op_level:
                layout.append((len(outputs),) + op_layout(shape, site.channel_axis))
                continue
            axis = site.channel_axis % len(shape)
            units = int(shape[axis])
            positions = int(np.prod([d for i, d in enumerate(shape) if i not in (0, axis)], dtype=np.int64))
            layout.append((len(outputs), positions, units))
        return layout

    def _intercepting(self, on_apply):
        """Op-level interception for one forward pass (see `deadrelu.engine.interception.intercept_relus`)."""
        known = self.site_map.layer_paths
        layers = {
            id(layer): layer for layer in [self.model] + child_layers(self.model, recursive=True) if id(layer) in known
        }
        callables = [(layers[key], attribute) for key, attribute in self.site_map.callables.items() if key in layers]
        return intercept_relus(
            on_apply,
            layers.values(),
            callables=callables,
            quiet_layers=self.site_map.quiet_layers,
            quiet=self._recorder.is_quiet,
        )

    def _traced_op(self, anchor):
        """While the step's body runs: records each measurable op-level site's output.

        The first body run (a trace; on PyTorch the first eager batch) decides which sites can be
        measured and counts their calls; later runs (retraces, eager batches, the gradient pass)
        record the same sites.
        """

        @own_code("measuring an op-level site")
        def traced(application: Application, output):
            index = self._op_keys.get((id(application.layer), application.index))
            if self._calls_known:
                if index is None or index in self._unmeasured:
                    return output
                return self._recorder.record(index, output, application.input)
            if index is None:
                # Ran when traced but not in the eager pass (code that branches on the mode).
                site = op_site(application, -1, self.site_map, set())
                self._strays.setdefault(
                    site.path,
                    OtherActivation(
                        site.path, site.layer_class, site.activation, "ran only in graph mode: not measured"
                    ),
                )
                return output
            _, positions, units = self._layout[index]
            reason = self._step.unmeasurable(output, anchor, positions * units)
            if reason is not None:
                self._unmeasured[index] = reason
                return output
            self._traced_calls[index] = self._traced_calls.get(index, 0) + 1
            return self._recorder.record(index, output, application.input)

        return traced

    def _complete_map(self) -> SiteMap:
        """The layer-level map with the op-level sites the trace measured, and what it could not."""
        site_map = self.site_map
        for site in self._sites:
            if site.op_level and site.index not in self._unmeasured and not self._traced_calls.get(site.index):
                # Ran in the eager pass only: a loop run eagerly applies its ReLU once per iteration,
                # the trace once, inside the loop (said once already); else code that branches on the mode.
                inside = any(other.layer is site.layer for other in self._sites if self._unmeasured.get(other.index))
                self._unmeasured[site.index] = None if inside else "ran in the eager pass only, not when traced"
        measured = [site for site in self._sites if site.index not in self._unmeasured]
        unmeasured = [
            OtherActivation(site.path, site.layer_class, site.activation, self._unmeasured[site.index])
            for site in self._sites
            if self._unmeasured.get(site.index)
        ] + list(self._strays.values())
        # An unknown activation whose ReLUs are now measured is no longer "not measured".
        applied_by = {site_map.layer_paths.get(id(site.layer)) for site in measured if site.op_level}
        others = [
            other for other in site_map.others if not (other.reason == UNKNOWN_REASON and other.path in applied_by)
        ] + unmeasured
        notes = list(site_map.notes)
        if unmeasured:
            listed = "; ".join(f"{o.path} ({o.layer_class}): {o.reason}" for o in unmeasured[:3])
            more = f"; and {len(unmeasured) - 3} more" if len(unmeasured) > 3 else ""
            notes.append(
                f"{len(unmeasured)} ReLU{'s' if len(unmeasured) > 1 else ''} ran that no site covers: {listed}{more}"
            )
        return dataclasses.replace(site_map, sites=measured, others=others, notes=notes)

    # -- what the steps call while their body runs -------------------------------------------

    def recorded_call(
        self, call: Callable[[], object], *, anchor, watch=None, perturb=None, fuse: bool = False, valid=None
    ) -> tuple:
        """Runs `call()` (the model on a batch) with every site's output recorded.

        Args:
            call: Runs the model; its result is returned.
            anchor: The batch's inputs (where the step's graph or trace is read from).
            watch: Called on each recorded output (TensorFlow: `GradientTape.watch`).
            perturb: Zeros added to the recorded outputs, in order (JAX gradients).
            fuse: TensorFlow's steps: where the kernel has `deadrelu_relu_site_stats`, a
                layer-level site's plain ReLU is applied and measured by it in one read of z
                (`deadrelu.engine.reductions.fused_relu_stats`); its record carries its statistics.
                Under a tape (`watch`) only ReLUs without threshold or cap are (see `plain_relu`).
            valid: With `fuse`, the batch's `valid` vector (None: every row counts).

        Returns:
            `(call(), [Record(site index, output, pre-activation, statistics or None), ...])`.
        """
        self._logits = None
        fuser = None
        if fuse and getattr(self._kernel, "deadrelu_relu_site_stats", None) is not None:

            def fuser(index: int, fn, z):
                site = self._sites[index]
                if not plain_relu(site, fn, under_tape=watch is not None):
                    return None
                return fused_relu_stats(self._kernel, site, z, valid)

        with (
            self._recorder.recording(watch=watch, perturb=perturb, fuse=fuser) as records,
            self._intercepting(self._traced_op(anchor)),
            self._capturing_logits(),
        ):
            result = call()
        self._calls_known = True
        return result, list(records)

    def _capturing_logits(self):
        """With gradients, keeps the input of the model's output softmax or sigmoid (its logits)."""
        if self._output_activation is None:
            return contextlib.nullcontext()

        def keep(x) -> None:
            self._logits = x

        return capturing_input(self._output_activation, keep)

    def per_sample_loss(self, y, y_pred):
        """Each sample's loss for the batch `recorded_call` just ran.

        A crossentropy on the probabilities of an output softmax or sigmoid is computed from that
        activation's input (its logits), as Keras's TensorFlow backend does: so the gradients do
        not vanish where a probability rounds to 0 or 1, and are the same on every backend.
        """
        logits = None if self._logits is None else (self._output_activation_name, self._logits)
        return self.loss_fn(y, y_pred, logits=logits)

    @own_code("reducing a batch's site outputs")
    def measure(self, records: list, grads: list | None = None, *, valid=None, loss=None, passed=()) -> dict:
        """One batch's packed statistics (`Totals.pack`) from the recorded `Record`s (and gradients;
        `passed`: positions in `records` whose gradient is ∂ℓ/∂z, see `site_batch_stats`)."""
        grads = grads if grads is not None else [None] * len(records)
        stats = []
        for position, (record, grad) in enumerate(zip(records, grads)):
            if record.preact is None:  # z not observed: the site's pre-activation statistics are None
                self._no_preact.add(record.index)
            if record.stats is not None:  # measured by the kernel as it applied the ReLU
                site_stats = dict(record.stats)
                if grad is not None:
                    site_stats.update(
                        fused_grad_stats(self._kernel, self._sites[record.index], record.output, grad, valid)
                    )
                stats.append((record.index, site_stats))
                continue
            stats.append((record.index, self._site_stats(record, grad, valid, position in passed)))
        return self._totals.pack(stats, loss=loss)

    def _site_stats(self, record: Record, grad, valid, grad_passed: bool = False) -> dict:
        site = self._sites[record.index]
        shape = {"grad_passed": grad_passed}
        if site.op_level:  # ReLUs on reshaped tensors: per sample, as found
            _, shape["positions"], shape["units"] = self._layout[record.index]
        return site_batch_stats(
            site, record.output, grad, preact=record.preact, valid=valid, kernel=self._kernel, **shape
        )

    # -- results --------------------------------------------------------------------------

    def _result(self, samples: int) -> ProbeResult:
        """The pass's `ProbeResult` from the totals (`deadrelu.engine.statistics`)."""
        values = self._totals.read()
        found = self.found
        bad_layers, bad_units = non_finite_weights(self.model, self._sites, self._layout)
        stats = site_statistics(
            self._sites,
            self._layout,
            values["sites"],
            samples,
            skip=self._unmeasured,
            op_calls=self._traced_calls,
            non_finite_units=bad_units,
            no_preact=self._no_preact,
        )
        result = ProbeResult(
            sites=stats, samples=samples, others=found.others, notes=list(found.notes), non_finite_layers=bad_layers
        )
        if self.gradients:
            result.mean_loss = values["loss"] / samples
            result.layer_gradients = layer_gradients(self.weight_groups, self._step.weight_sums(), samples)
        return result


# Probes already traced, per live model: scanning the same model again (a notebook loop, a sweep
# over data sets) reuses the traced step instead of paying for a new trace. Keys are weak, and a
# cached probe holds its model weakly, so the cache never keeps a model alive.
_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()  # guards both dictionaries


def model_lock(model) -> threading.RLock:
    """The lock a scan of `model` holds while it runs (re-entrant: a scan may trace a nested one).

    Args:
        model: A `keras.Model`.

    Returns:
        One `threading.RLock` per live model.
    """
    with _REGISTRY_LOCK:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def probe_for(model, *, gradients: bool = False, loss=None, strategy=None) -> Probe:
    """Returns a `Probe` of `model`, reusing the one traced by an earlier call when possible.

    A cached probe is reused while the model's sites, the loss and the data's specs stay the same
    (a different input shape or dtype retraces it on its next run).

    Args:
        model: A `keras.Model`.
        gradients: Whether the probe measures gradients.
        loss: Loss for gradients; None uses the model's compiled loss.
        strategy: A `tf.distribute.Strategy`, or None for the model's own (see `Probe`).

    Returns:
        A `Probe` whose statistics are reset on every `run`.
    """
    site_map = find_sites(model)
    # The compiled loss is looked up when the probe is built, so a recompiled model needs a new one.
    loss_key = loss if isinstance(loss, str) else id(loss if loss is not None else getattr(model, "loss", None))
    key = (gradients, loss_key, id(strategy) if strategy is not None else None, kernel.enabled())
    with _REGISTRY_LOCK:
        probes = _PROBES.setdefault(model, {})
        probe = probes.get(key)
        if probe is None or not _same_sites(probe.site_map, site_map):
            probe = Probe(model, site_map, gradients=gradients, loss=loss, weak=True, strategy=strategy)
            probes[key] = probe
    return probe


def _same_sites(a: SiteMap, b: SiteMap) -> bool:
    return a.sites == b.sites and all(x.layer is y.layer for x, y in zip(a.sites, b.sites))


def find_all_sites(model, data=None) -> SiteMap:
    """Every site of a model, op-level ones included, without measuring anything.

    Runs one sample (of `data`, or a synthetic one) through the model and traces the probe's step,
    as a scan's first batch does.

    Args:
        model: A `keras.Model`.
        data: Inputs the model accepts (anything `deadrelu.scan` takes); None makes one synthetic sample.

    Returns:
        The complete `SiteMap` (`Probe.found`).

    Raises:
        DataError: The model does not run on the sample.
    """
    from deadrelu.data import load_data

    probe_data = load_data(data, model, samples=1, synthetic_samples=1)
    probe = Probe(model)
    return probe.trace(next(iter(probe_data.batches(1))))


# -- helpers -------------------------------------------------------------------------------


def structure_spec(x, y) -> tuple:
    """Input and label specs with a free batch dimension (what a built step is specialised to)."""
    import keras

    return keras.tree.map_structure(_batch_spec, x), None if y is None else keras.tree.map_structure(_batch_spec, y)


def _batch_spec(array) -> tuple:
    dtype = getattr(array, "dtype", None)
    if dtype is None:
        array = np.asarray(array)
        dtype = array.dtype
    return (None,) + tuple(array.shape[1:]), str(np.dtype(dtype)) if not hasattr(dtype, "name") else dtype.name


def _first_samples(x, n: int):
    """The first `n` samples of an input structure."""
    import keras

    return keras.tree.map_structure(lambda a: a[:n], x)


def _units_from_layer(site: Site) -> int:
    shape = getattr(site.layer, "output_shape", None) or getattr(getattr(site.layer, "output", None), "shape", None)
    try:
        return int(shape[site.channel_axis])
    except Exception:  # noqa: BLE001
        return 0


def _input_shape(model) -> str:
    try:
        shapes = [tuple(t.shape) for t in model.inputs]
        return str(shapes[0]) if len(shapes) == 1 else str(shapes)
    except Exception:  # noqa: BLE001
        return "(unknown)"


def _first_line(exc: BaseException) -> str:
    """The informative line of an exception (for TensorFlow's graph errors, the last one)."""
    import re

    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("Graph execution error"):
        # The op's own message follows the Python stack of where the op was defined.
        noise = ("[[", "File ", "Detected at", "Graph execution", "self.", "return ", "outputs = ")
        lines = [line for line in lines if not line.startswith(noise)][-1:] or lines[-1:]
    return re.sub(r"\s*\[\[.*$|\s*\[Op:.*$", "", lines[0])[:300]

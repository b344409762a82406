"""Scanning a folder of checkpoints: when did the units die?

`scan_checkpoints` scans every checkpoint of a training run (`keras.callbacks.ModelCheckpoint`'s
folder, a glob pattern, or files) on the same data, in epoch order (`deadrelu.io.checkpoints`),
and builds the timeline `DeadReluMonitor` would have recorded had it watched the training: the same
`deadrelu.timeline.Check`s, made by the same `make_check`, so `newly_dead` and `recovered` per epoch
are those of the monitor, unit for unit.

Every file is opened by `deadrelu.io.loading.load`, with its checks of untrusted files
(`deadrelu.io.safety`), exactly as `deadrelu scan FILE` opens it. A file whose architecture is the
previous one's has its weights copied into the model already scanned, so the scan's traced step
is reused: one trace for a whole run. A file with another architecture is said in
`Checkpoint.changes` (which layers were added, removed or changed) and scanned as a new model; at
that check the timeline compares only the sites found in both files with the same number of units
(matched by path), and `newly_dead` / `recovered` leave out the others.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from deadrelu.errors import UsageError
from deadrelu.io.checkpoints import CheckpointFile, checkpoint_files
from deadrelu.timeline import Check, Timeline, make_check

if TYPE_CHECKING:
    from deadrelu.report import Report

SCHEMA = "deadrelu/checkpoints@2"


@dataclasses.dataclass(repr=False)
class Checkpoint:
    """One scanned checkpoint.

    Attributes:
        file: The file (or SavedModel folder), as found or given.
        epoch: The epoch its name says, or its position (1-based) when the name holds no number
            (`deadrelu.io.checkpoints`).
        report: Its scan `Report`, as `deadrelu.scan` (and `deadrelu scan FILE --json`) gives it.
        check: Its entry of the timeline (`Check.epoch` is `epoch`: both count from 1, as
            `ModelCheckpoint` names its files).
        changes: What differs in its architecture from the previous checkpoint's, one line per
            difference; None when it is the same (or for the first checkpoint).

    Unpacks as `(file, epoch, report)`.
    """

    file: str
    epoch: int
    report: Report
    check: Check
    changes: list[str] | None = None

    def __iter__(self):
        return iter((self.file, self.epoch, self.report))

    def __repr__(self) -> str:
        changed = ", architecture changed" if self.changes else ""
        dead = f"{self.report.dead_fraction:.1%} dead"
        return f"<Checkpoint {os.path.basename(self.file)} (epoch {self.epoch}): {dead}{changed}>"

    def to_dict(self) -> dict:
        """`{"file", "epoch", "step", "architecture_change", "report"}` (the report as `Report.to_dict()`)."""
        return {
            "file": self.file,
            "epoch": self.epoch,
            "step": self.check.step,
            "architecture_change": self.changes,
            "report": self.report.to_dict(),
        }


@dataclasses.dataclass(repr=False)
class CheckpointScan:
    """The scans of a run's checkpoints, in order, and their timeline.

    Attributes:
        checkpoints: One `Checkpoint` per file, in the order scanned.
        timeline: The monitor's timeline of those scans (`deadrelu.timeline.Timeline`: one `Check`
            per checkpoint, with `newly_dead`, `recovered` and `persistence` against the previous one).
        notes: One-line remarks: architecture changes, files named alike.
        traces: How many times a scan step was traced: 1 when every file has the same architecture
            (on PyTorch, which runs eagerly: 1 per architecture as well).

    Iterating gives the checkpoints, each unpacking as `(file, epoch, report)`; `repr` is one line;
    a notebook shows the timeline table and figure (`_repr_html_`).

    Example:

    ```python
    result = deadrelu.scan_checkpoints("ckpt/", "x_val.npz")
    for file, epoch, report in result:
        print(epoch, report.dead_fraction)
    result.timeline[3].newly_dead      # per site, the units that died between the 3rd and 4th file
    result.to_json("timeline.json")
    ```
    """

    checkpoints: list[Checkpoint]
    timeline: Timeline
    notes: list[str] = dataclasses.field(default_factory=list)
    traces: int = 0

    def __len__(self) -> int:
        return len(self.checkpoints)

    def __iter__(self):
        return iter(self.checkpoints)

    def __getitem__(self, index: int) -> Checkpoint:
        return self.checkpoints[index]

    @property
    def reports(self) -> list[Report]:
        """The reports, in order."""
        return [c.report for c in self.checkpoints]

    def __repr__(self) -> str:
        from deadrelu.views.notebook import timeline_summary

        return f"<CheckpointScan {len(self.checkpoints)} files: {timeline_summary(self.timeline)}>"

    def _repr_html_(self) -> str:
        from deadrelu.views.checkpoints import checkpoints_fragment

        return checkpoints_fragment(self)

    def to_dict(self) -> dict:
        """The JSON document of `deadrelu scan FOLDER --json` (schema `deadrelu/checkpoints@2`).

        Returns:
            `{"schema", "tool", "checkpoints": [one `Checkpoint.to_dict()` per file, in order],
            "timeline": [one `Check.to_dict()` per file], "notes"}`.
        """
        from deadrelu.report import tool_info

        return {
            "schema": SCHEMA,
            "tool": tool_info(),
            "checkpoints": [c.to_dict() for c in self.checkpoints],
            "timeline": [c.to_dict() for c in self.timeline],
            "notes": list(self.notes),
        }

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Writes `to_dict()` as JSON (atomically: a temporary file renamed into place)."""
        from deadrelu.io.files import write_json

        write_json(os.fspath(path), self.to_dict())

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Saves the timeline figure (each site's dead share per checkpoint), as `DeadReluMonitor.plot`."""
        from deadrelu.views.plots.curves import plot_timeline

        name = self.checkpoints[0].report.model.get("name") if self.checkpoints else "model"
        plot_timeline(self.timeline, os.fspath(path), title=f"{name}: dead units per checkpoint")

    def write_html(self, path: str | os.PathLike[str]) -> None:
        """Writes one self-contained HTML page: the timeline and each checkpoint's report (atomically)."""
        from deadrelu.views.checkpoints import write_checkpoints_html

        write_checkpoints_html(self, os.fspath(path))


def scan_checkpoints(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    data: Any = None,
    labels: Any = None,
    *,
    batch_size: int = 256,
    gradients: bool = False,
    loss: Any = None,
    samples: int | None = None,
    rescale: float | None = None,
    skip_bad_images: bool = False,
    dying_threshold: float = 0.01,
    flag_threshold: float = 0.10,
    dormant: float | None = None,
    custom_objects: Any = None,
    architecture: str | os.PathLike[str] | None = None,
    unsafe: bool = False,
    input_shape: tuple | str | None = None,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
    strategy: Any = None,
) -> CheckpointScan:
    """Scans every checkpoint of a training run on the same data and says when units died.

    Each file is loaded and checked as `deadrelu.load_model` does, then scanned as `deadrelu.scan`
    does; files with the same architecture share one model (their weights are copied in) and one
    traced scan step. The timeline is the one `DeadReluMonitor(data, check_freq="epoch")` would
    have recorded on the same data during the training that wrote the files.

    Args:
        paths: A folder of checkpoints (its `.keras`, `.h5`, `.hdf5` files and SavedModel folders,
            sorted by the epoch in their names, then naturally), a glob pattern (`"ckpt/*.keras"`,
            sorted the same way), or a list of files (scanned in the order given). See
            `deadrelu.io.checkpoints` for how epochs are read from names.
        data: Probe inputs, as `deadrelu.scan` takes them; not a generator (it is read once per
            checkpoint). None uses synthetic inputs, which cannot give a real verdict.
        labels: Labels, for `gradients=True` (as `deadrelu.scan`).
        batch_size: Samples per step. Defaults to `256`.
        gradients: Also measure gradient flow in every checkpoint. Defaults to False.
        loss: Loss for `gradients`. Defaults to the loss stored in the first file.
        samples: Use only the first `samples` samples. Defaults to None (all).
        rescale: Multiply inputs by this factor (e.g. `1/255`). Defaults to None.
        skip_bad_images: With a folder of images: skip unreadable images. Defaults to False.
        dying_threshold: Active rate under which a live unit is dying. Defaults to `0.01`.
        flag_threshold: Dead share from which a site is flagged. Defaults to `0.10`.
        dormant: ReDo's τ: also list τ-dormant units in every report and check. Defaults to None.
        custom_objects: Custom classes for every file (a dict, or a `.py` file), as
            `deadrelu.load_model`. Defaults to None.
        architecture: A Keras JSON config for weights-only files (`ModelCheckpoint(...,
            save_weights_only=True)` writes `.weights.h5`). Defaults to None.
        unsafe: Run code stored in the files (Lambda layers); only for files you trust.
            Defaults to False.
        input_shape: Input shape for Sequential models saved without one. Defaults to None.
        on_checkpoint: Called with each `Checkpoint` once it is scanned (progress).
        strategy: A `tf.distribute.Strategy` to scan on its replicas (load under its scope).
            Defaults to None.

    Returns:
        A `CheckpointScan`.

    Raises:
        UsageError: `paths` names no model file, or `data` is a generator.
        ModelLoadError: A file cannot be loaded or is refused as untrusted (nothing of it runs).
        DataError: The data does not fit a model.

    Example:
        >>> result = deadrelu.scan_checkpoints("ckpt/", x_val[:1000])  # the sample recipe, 10 epochs
        >>> [sum(map(len, c.newly_dead.values())) for c in result.timeline]
        [0, 4, 6, 13, 19, 8, 7, 9, 4, 5]
    """
    from deadrelu.engine.scanner import describe_loaded, scan
    from deadrelu.io.loading import load

    if isinstance(data, collections.abc.Iterator):
        raise UsageError(
            "`data` is a generator or iterator, which can be read only once, and every checkpoint is scanned "
            "on it: pass an array, a file or a tf.data.Dataset"
        )
    files = checkpoint_files(paths)
    options = {
        "custom_objects": custom_objects,
        "architecture": architecture,
        "unsafe": unsafe,
        "input_shape": input_shape,
    }
    scan_options = {
        "batch_size": batch_size,
        "gradients": gradients,
        "loss": loss,
        "samples": samples,
        "rescale": rescale,
        "skip_bad_images": skip_bad_images,
        "dying_threshold": dying_threshold,
        "flag_threshold": flag_threshold,
        "dormant": dormant,
        "verbose": 0,
        "strategy": strategy,
    }
    checkpoints: list[Checkpoint] = []
    timeline = Timeline()
    notes: list[str] = []
    model = shape = None  # the model scanned, and its architecture
    previous_file: CheckpointFile | None = None
    traces = 0
    for file in files:
        loaded = load(file.path, **options)
        info = describe_loaded(loaded)  # the file's own provenance, as `deadrelu scan FILE` records it
        described = architecture_of(loaded.model)
        changes = None
        if model is not None and described == shape and _copy_weights(loaded.model, model):
            pass  # same architecture: the traced step of `model` is reused
        else:
            if model is not None:
                traces += _traces(model, gradients, loss, strategy)
                changes = architecture_changes(shape, described)
                notes.append(
                    f"{file.path}: the architecture differs from {previous_file.path}'s ({'; '.join(changes)}); "
                    "scanned as a new model, and the timeline compares only the sites both have"
                )
            model, shape = loaded.model, described
        loaded = None  # its weights are in `model` now (or it is `model`)
        report = scan(model, data, labels, model_info=info, **scan_options)
        previous = timeline[-1] if timeline else None
        check = _check(report, previous, epoch=file.epoch, step=stored_step(file.path), changed=changes is not None)
        timeline.append(check)
        checkpoint = Checkpoint(file.path, file.epoch, report, check, changes)
        checkpoints.append(checkpoint)
        previous_file = file
        if on_checkpoint is not None:
            on_checkpoint(checkpoint)
    traces += _traces(model, gradients, loss, strategy)
    epochs = [c.epoch for c in checkpoints]
    repeated = sorted({e for e in epochs if epochs.count(e) > 1})
    if repeated:
        notes.append(
            f"several files have the same epoch in their names ({', '.join(map(str, repeated))}): they are "
            "scanned one after the other, each with its own check"
        )
    return CheckpointScan(checkpoints, timeline, notes, traces)


def _copy_weights(source, target) -> bool:
    """Copies every weight of `source` into `target` (same architecture); False when the shapes differ."""
    values = source.get_weights()
    shapes = [tuple(v.shape) for v in target.weights]
    if [tuple(v.shape) for v in values] != shapes:
        return False
    target.set_weights(values)
    return True


def _traces(model, gradients: bool, loss: Any, strategy: Any) -> int:
    from deadrelu.engine.probe import probe_for

    return probe_for(model, gradients=gradients, loss=loss, strategy=strategy).traces if model is not None else 0


def _check(report, previous: Check | None, *, epoch: int, step: int, changed: bool) -> Check:
    """`make_check`, and after an architecture change a diff over the sites both models have alike."""
    if previous is None or not changed:
        return make_check(report, previous, epoch=epoch, step=step)
    units = {site.path: site.units for site in report.sites}
    alike = {path for path, count in previous.units.items() if units.get(path) == count}
    kept = dataclasses.replace(
        previous,
        dead={path: dead for path, dead in previous.dead.items() if path in alike},
        units={path: count for path, count in previous.units.items() if path in alike},
    )
    check = make_check(report, kept, epoch=epoch, step=step)
    check.newly_dead = {path: units for path, units in check.newly_dead.items() if path in alike}
    check.recovered = {path: units for path, units in check.recovered.items() if path in alike}
    return check


# -- architectures ------------------------------------------------------------------------------


def architecture_of(model) -> dict[str, tuple]:
    """Per layer (nested models' layers by "outer/inner" path), its class, configuration and weight shapes.

    Two files with equal descriptions hold the same architecture: the weights of one fit the other.

    Args:
        model: A `keras.Model`.

    Returns:
        `{layer path: (class name, configuration as sorted JSON without the name, weight shapes)}`,
        in model order, with the model's inputs under `"<inputs>"`.
    """
    described: dict[str, tuple] = {
        "<inputs>": (type(model).__name__, json.dumps(_input_shapes(model), default=repr), ()),
    }
    stack = [("", layer) for layer in reversed(getattr(model, "layers", []))]
    while stack:
        prefix, layer = stack.pop()
        path = f"{prefix}{layer.name}"
        try:
            config = dict(layer.get_config())
            config.pop("name", None)
            text = json.dumps(config, sort_keys=True, default=repr)
        except Exception:  # noqa: BLE001 - a custom layer without get_config: class and weights only
            text = ""
        shapes = tuple(tuple(int(d) for d in w.shape) for w in layer.weights)
        described[path] = (type(layer).__name__, text, shapes)
        stack += [(f"{path}/", inner) for inner in reversed(getattr(layer, "layers", []) or [])]
    return described


def architecture_changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """What differs between two `architecture_of` descriptions, one short line per difference.

    Example:
        >>> architecture_changes(architecture_of(a), architecture_of(b))
        ['hidden_2: Dense units 64 → 32', 'layer hidden_4 added']
    """
    lines = []
    for path, (kind, config, shapes) in after.items():
        if path not in before:
            lines.append(f"layer {path} ({kind}) added")
            continue
        old_kind, old_config, old_shapes = before[path]
        if path == "<inputs>":
            if config != old_config:
                lines.append(f"inputs {old_config} → {config}")
        elif kind != old_kind:
            lines.append(f"{path}: {old_kind} → {kind}")
        elif config != old_config:
            lines.append(f"{path}: {kind} {_config_difference(old_config, config)}")
        elif shapes != old_shapes:
            lines.append(f"{path}: weight shapes {list(old_shapes)} → {list(shapes)}")
    lines += [f"layer {path} ({before[path][0]}) removed" for path in before if path not in after]
    return lines or ["the configuration differs"]


def _config_difference(old: str, new: str) -> str:
    """The settings that differ between two layer configurations: "units 64 → 32, activation relu → tanh"."""
    try:
        a, b = json.loads(old or "{}"), json.loads(new or "{}")
    except json.JSONDecodeError:
        return "configuration differs"
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    shown = [f"{k} {_short(a.get(k))} → {_short(b.get(k))}" for k in keys[:3]]
    return ", ".join(shown) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "") or "configuration differs"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def _input_shapes(model) -> list:
    inputs = getattr(model, "inputs", None) or []
    try:
        return [list(getattr(x, "shape", ())) for x in inputs]
    except TypeError:
        return []


# -- the training step a file stores --------------------------------------------------------------


def stored_step(path: str) -> int:
    """The optimizer's iteration count stored in a checkpoint, as `DeadReluMonitor` records it.

    Read from the weights of a `.keras` archive (`optimizer/vars/0`) or of an HDF5 file
    (`optimizer_weights/.../iteration`); 0 when the file stores no optimizer state (weights-only
    files, `include_optimizer=False`, SavedModel folders). Called on files `load` has checked.

    Args:
        path: The checkpoint.

    Returns:
        The training step, or 0.
    """
    import zipfile

    import h5py

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if "model.weights.h5" not in archive.namelist():
                    return 0
                with archive.open("model.weights.h5") as entry, h5py.File(entry, "r") as f:
                    return _iterations(f.get("optimizer/vars/0"))
        if os.path.isfile(path) and h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                group = f.get("optimizer_weights")
                if group is None:
                    return 0
                found: list = []
                group.visititems(
                    lambda name, obj: (
                        found.append(obj)
                        if isinstance(obj, h5py.Dataset)
                        and name.rsplit("/", 1)[-1].split(":")[0] in ("iteration", "iter")
                        else None
                    )
                )
                return _iterations(found[0] if found else None)
    except (OSError, ValueError, KeyError):
        return 0
    return 0


def _iterations(dataset) -> int:
    """An integer scalar dataset's value (the iteration count), else 0."""
    if dataset is None or getattr(dataset, "shape", None) != () or dataset.dtype.kind not in "iu":
        return 0
    return int(dataset[()])

"""`keras.distribution` on JAX: the distribution deadrelu runs under, and how a batch goes on its mesh.

On JAX, Keras's own distribution API takes the place of `tf.distribute`: a `DataParallel` or
`ModelParallel` distribution (a `DeviceMesh`, and for `ModelParallel` a `LayoutMap` of the
variables) set with `keras.distribution.set_distribution` or entered with `distribution.scope()`.
deadrelu honours the active one with no argument: `scan`, `revive`, `prune` and `DeadReluMonitor`
place each batch as Keras's JAX trainer does in `fit` (`place`), so their compiled step spans the
mesh and XLA's collectives sum the statistics; the copies `revive` and `prune` make are built under
it, so their variables get its layouts.

The command line makes a `DataParallel` from `--distribution data-parallel --devices N`
(`distribution_from_flags`). On a CPU, JAX has one device unless `XLA_FLAGS` asks for more before
JAX starts; the command line imports JAX only when it needs it, so it can ask itself
(`ask_for_host_devices`).

Importing this module is cheap: JAX and Keras are imported inside the functions.

Example:
    >>> distribution = distribution_from_flags("data-parallel", devices=2)
    >>> with distribution.scope():
    ...     report = deadrelu.scan(model, x)
    >>> report.settings["distribution"], report.settings["devices"]
    ('DataParallel', 2)
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from deadrelu.errors import UsageError

#: The distributions `--distribution` names.
DISTRIBUTIONS = ("data-parallel",)

_HOST_DEVICES = re.compile(r"--xla_force_host_platform_device_count=(\d+)")
# JAX's IndivisibleError: "... axis 1 is partitioned 2 times, but the dimension size is 13 (full shape: (6, 13), ..."
_INDIVISIBLE = re.compile(r"axis (\d+) is partitioned (\d+) times.*?size is (\d+) \(full shape: (\([^)]*\))")


def active() -> Any:
    """The `keras.distribution` set for this process (JAX: `DataParallel`, `ModelParallel`), or None.

    Returns:
        The active `keras.distribution.Distribution` when Keras runs on JAX, else None (without
        one, on the other backends, and on a Keras without the API).
    """
    import keras

    if keras.backend.backend() != "jax":
        return None
    try:
        return keras.distribution.distribution()
    except (AttributeError, NotImplementedError):
        return None


def batch_shards() -> int:
    """How many devices the batch axis of the active distribution splits a batch over (1 without one).

    Returns:
        The size of the mesh's batch dimension, or 1.
    """
    distribution = active()
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    name = getattr(distribution, "batch_dim_name", None)
    if name is None or name not in mesh.axis_names:
        return 1
    return int(mesh.shape[list(mesh.axis_names).index(name)])


def place(arrays: Any) -> Any:
    """A batch's arrays placed as the active distribution lays data out.

    Split along the batch axis over the mesh's batch dimension, replicated over its other axes —
    what Keras's JAX trainer does in `fit` — so a compiled step given them runs on every device.

    Args:
        arrays: A structure of arrays whose first axis is the batch, a multiple of
            `batch_shards()` long; None leaves stay None.

    Returns:
        The same structure of `jax.Array`s on the mesh.
    """
    import keras
    from keras.src.backend.jax import distribution_lib

    distribution = active()

    def put(a):
        if a is None:
            return None
        layout = distribution.get_data_layout(np.shape(a))
        return distribution_lib.distribute_data_input(np.asarray(a), layout, distribution.batch_dim_name)

    return keras.tree.map_structure(put, arrays)


def settings() -> dict:
    """The report's settings for the active distribution; `{}` without one.

    Returns:
        `{"distribution": "DataParallel", "devices": 2, "mesh": {"batch": 2}, "batch_axis": "batch"}`:
        the distribution's class, how many devices its mesh holds, the mesh (axis name → devices)
        and the axis batches are split over.
    """
    distribution = active()
    if distribution is None:
        return {}
    mesh = distribution.device_mesh
    return {
        "distribution": type(distribution).__name__,
        "devices": int(np.prod(mesh.shape)),
        "mesh": dict(zip(mesh.axis_names, (int(d) for d in mesh.shape))),
        "batch_axis": getattr(distribution, "batch_dim_name", None),
    }


def describe() -> str:
    """One line for the command line: "distribution: DataParallel over 2 cpu devices"; "" without one."""
    distribution = active()
    if distribution is None:
        return ""
    devices = list(np.ravel(distribution.device_mesh.devices))
    platform = getattr(devices[0], "platform", "") if devices else ""
    return (
        f"distribution: {type(distribution).__name__} over {len(devices)} {platform} device{'s' * (len(devices) != 1)}"
    )


def ask_for_host_devices(devices: int, environ: dict | None = None) -> bool:
    """Asks XLA for `devices` host (CPU) devices, when JAX has not started yet.

    XLA reads `XLA_FLAGS` once, when JAX starts its backend: this sets
    `--xla_force_host_platform_device_count` there (raising a smaller count given already) if JAX
    is not imported yet. It changes nothing on GPUs and TPUs, whose devices JAX lists first.

    Args:
        devices: How many host devices are wanted.
        environ: The environment to change. Defaults to None (`os.environ`).

    Returns:
        Whether JAX will start with at least `devices` host devices; False when JAX is imported
        already (then only a new process can have more).

    Example:
        >>> ask_for_host_devices(4)   # before anything imports jax
        True
    """
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    found = _HOST_DEVICES.search(flags)
    if found is not None and int(found[1]) >= devices:
        return True
    if "jax" in sys.modules:
        return False
    wanted = f"--xla_force_host_platform_device_count={devices}"
    environ["XLA_FLAGS"] = _HOST_DEVICES.sub(wanted, flags) if found else f"{flags} {wanted}".strip()
    return True


def distribution_from_flags(name: str, devices: int | None = None) -> Any:
    """A `keras.distribution` from the command line's `--distribution NAME` and `--devices N` (JAX).

    Call it before JAX starts to have `devices` CPU devices on a host without accelerators: it
    asks XLA for them (`ask_for_host_devices`).

    Args:
        name: `"data-parallel"`: a `keras.distribution.DataParallel` over the first `devices`
            devices JAX lists (each batch split across them, the variables replicated).
        devices: How many devices. Defaults to None (every device JAX lists).

    Returns:
        The `DataParallel` distribution (not set: enter `distribution.scope()`).

    Raises:
        UsageError: an unknown name; Keras runs on another backend than JAX; more devices than
            JAX has (the message says how to get more on a CPU).

    Example:
        >>> distribution = distribution_from_flags("data-parallel", devices=2)
        >>> distribution.device_mesh.shape
        (2,)
    """
    import deadrelu.validation as validation
    from deadrelu.backends import DEFAULT, JAX, TENSORFLOW, loaded, requested

    name = validation.one_of(name, "distribution", DISTRIBUTIONS)
    devices = validation.positive_int(devices, "devices", optional=True)
    # Known without importing Keras: on JAX, importing Keras starts JAX, and with it its devices.
    backend = loaded() or requested() or DEFAULT
    if backend != JAX:
        instead = ""
        if backend == TENSORFLOW:
            instead = '; on TensorFlow, `strategy="mirrored"` with `devices` runs on several devices (tf.distribute)'
        raise UsageError(
            f'`distribution="{name}"` is Keras\'s JAX distribution API (keras.distribution), and Keras runs on '
            f"{backend}: rerun with KERAS_BACKEND=jax{instead}"
        )
    asked = devices is not None and ask_for_host_devices(devices)
    import jax
    import keras

    found = jax.devices()
    if devices is not None and devices > len(found):
        platform = found[0].platform
        how = f"XLA_FLAGS=--xla_force_host_platform_device_count={devices}"
        if platform != "cpu":
            how = f"JAX_PLATFORMS=cpu {how}"
        when = "set before JAX starts (in Python, before the first `import keras` or `import jax`)"
        if not asked:
            when += "; JAX had started already, so deadrelu could not ask for them itself"
        raise UsageError(
            f"`devices={devices}` but JAX has {len(found)} {platform} device{'s' * (len(found) != 1)}: pass at "
            f"most {len(found)}, or for {devices} CPU devices run with {how} {when}"
        )
    return keras.distribution.DataParallel(devices=found[: devices or len(found)])


@contextlib.contextmanager
def layouts_fit(what: str) -> Iterator[None]:
    """Turns "this weight cannot be split over the mesh" into a `UsageError` naming the fix.

    A `ModelParallel` `LayoutMap` splits a variable's axis over a mesh axis; a copy whose variable
    has fewer entries on that axis than a multiple of the mesh axis's devices (a pruned layer)
    cannot be laid out. Without an active distribution, nothing is caught.

    Args:
        what: The copy being built, for the message ("the pruned model").

    Raises:
        UsageError: JAX refused to split a variable of the copy over the mesh.
    """
    try:
        yield
    except ValueError as error:
        if active() is None or type(error).__name__ != "IndivisibleError":
            raise
        found = re.search(
            r"axis (\d+) is partitioned (\d+) times.*?size is (\d+) \(full shape: (\([^)]*\))", str(error)
        )
        where = (
            f"it splits axis {found[1]} of a {found[4]} weight over {found[2]} devices, and {found[3]} is not a "
            f"multiple of {found[2]}"
            if found
            else "a weight's split axis is not a multiple of the devices it is split over"
        )
        raise UsageError(
            f"{what} does not fit the layouts of the active keras.distribution ({type(active()).__name__}): "
            f"{where}; leave that layer out (`sites=` / `layers=`), or build {what} without the distribution "
            "(`keras.distribution.set_distribution(None)`) and lay it out yourself"
        ) from None


def call_placed(fn: Any, x: Any) -> Any:
    """`fn(x)` with the batch `x` on the active distribution's mesh, as a scan places it; `fn(x)` without one.

    A batch that does not split evenly over the mesh's batch axis is filled up with copies of its
    own samples, and the outputs of those rows are cut off again.

    Args:
        fn: A callable of a batch, e.g. `lambda x: model(x, training=False)`.
        x: A batch: an array, or a structure of arrays sharing their first axis.

    Returns:
        `fn`'s outputs for the rows of `x`.
    """
    if active() is None:
        return fn(x)
    import keras

    n = int(np.shape(keras.tree.flatten(x)[0])[0])
    shards = batch_shards()
    size = -(-n // shards) * shards
    if size != n:
        rows = np.arange(size) % n
        x = keras.tree.map_structure(lambda a: np.asarray(a)[rows], x)
    outputs = fn(place(x))
    return outputs if size == n else keras.tree.map_structure(lambda a: a[:n], outputs)


def whole_batches(x: Any, batch_size: int) -> tuple[Any, int]:
    """`x` and `batch_size` cut so that every batch of Keras's `predict` splits evenly over the mesh.

    Keras's JAX trainer refuses a batch (the last one too) whose rows do not split evenly over the
    mesh's batch axis; deadrelu's own steps fill such a batch up, Keras's `predict` does not.
    Without an active distribution, both are returned as they are.

    Args:
        x: Inputs: an array, or a structure of arrays sharing their first axis.
        batch_size: The batch size wanted.

    Returns:
        `(x, batch_size)`: the first samples of `x`, a multiple of the batch axis's devices (at
        least one per device), and `batch_size` rounded up to such a multiple.
    """
    shards = batch_shards()
    if shards == 1:
        return x, batch_size
    import keras

    n = int(np.shape(keras.tree.flatten(x)[0])[0])
    keep = max(shards, n - n % shards)
    if keep != n:
        rows = np.arange(keep) % n
        x = keras.tree.map_structure(lambda a: np.asarray(a)[rows], x)
    return x, -(-batch_size // shards) * shards


@contextlib.contextmanager
def keras_batches_split(what: str) -> Iterator[None]:
    """Turns Keras's refusal of a batch that does not split over the mesh into a `UsageError`.

    Under a distribution, Keras's own trainer (`fit`, `evaluate`, `predict`) takes only batches
    whose rows split evenly over the mesh's batch axis, the last one included; deadrelu's own steps
    fill such a batch up, Keras does not. Without an active distribution, nothing is caught.

    Args:
        what: What runs Keras's trainer, for the message ("Keras's `evaluate` of the loss and metrics").

    Raises:
        UsageError: JAX refused to split a batch over the mesh.
    """
    try:
        yield
    except ValueError as error:
        if active() is None or type(error).__name__ != "IndivisibleError":
            raise
        shards = batch_shards()
        raise UsageError(
            f"{what} needs batches that split evenly over the {shards} devices of the active keras.distribution "
            f"({type(active()).__name__}), as Keras's own trainer does under it: pass a `batch_size` and a number "
            f"of samples (`samples`) that are multiples of {shards}"
        ) from None

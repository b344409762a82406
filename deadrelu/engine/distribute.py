"""`tf.distribute` strategies: which one a model runs under, making one from flags, and who writes.

deadrelu measures a model built under a `tf.distribute.Strategy` on all the strategy's replicas
(`deadrelu.engine.probe.Probe(..., strategy=...)`). This module resolves the strategy every entry point
takes (`strategy=`, default: the one the model was built under), makes one from the command
line's `--strategy` / `--devices`, and answers the questions the rest of the code asks about it:
is this process the chief (only the chief writes files), which worker is it and how many are
there (each worker reads only its shard of the data), and how to say it in one line.

TensorFlow is imported only by the functions that need it, and only on the TensorFlow backend.

Example:
    >>> strategy = strategy_from_flags("mirrored", devices=2)   # 2 logical CPUs on a CPU host
    >>> with strategy.scope():
    ...     model = deadrelu.load_model("model.keras")
    >>> report = deadrelu.scan(model, x)                          # on both replicas
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from typing import Any

import numpy as np

from deadrelu.errors import UsageError

STRATEGIES = ("mirrored", "multi-worker")

_SCOPE_FIX = (
    "build or load the model inside `with strategy.scope():` (e.g. `with strategy.scope(): "
    'model = deadrelu.load_model("model.keras")`), or pass `strategy=None` to scan on one device'
)


def _backend() -> str:
    import keras

    return keras.backend.backend()


def _is_default(strategy) -> bool:
    """Whether `strategy` is TensorFlow's default (no-op) strategy, the one outside every scope."""
    return type(strategy).__name__ in ("_DefaultDistributionStrategy", "_DefaultDistributionStrategyV1")


def resolve_strategy(strategy: Any, model) -> Any:
    """The strategy to measure `model` under, checked: a `tf.distribute.Strategy` or None (one device).

    Args:
        strategy: A `tf.distribute.Strategy`, or None for the strategy the model was built under
            (`model.distribute_strategy`), if it is not TensorFlow's default one.
        model: The `keras.Model` to measure.

    Returns:
        The strategy, or None for the plain path (no strategy, or the default one).

    Raises:
        UsageError: `strategy` is not a `tf.distribute.Strategy`; it is given on a Keras backend
            other than TensorFlow; or the model's variables were not created in its scope.

    Example:
        >>> with strategy.scope():
        ...     model = build()
        >>> resolve_strategy(None, model) is strategy
        True
    """
    if strategy is None:
        if "tensorflow" not in sys.modules or _backend() != "tensorflow":
            return None
        own = getattr(model, "distribute_strategy", None)
        return None if own is None or _is_default(own) else own
    if _backend() != "tensorflow":
        raise UsageError(
            f"`strategy` is a tf.distribute strategy, which needs the TensorFlow backend (Keras runs on "
            f"{_backend()}); pass `strategy=None`, or set KERAS_BACKEND=tensorflow"
        )
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.Strategy):
        raise UsageError(
            f"`strategy` must be a tf.distribute.Strategy (e.g. tf.distribute.MirroredStrategy()) or None, "
            f"got {type(strategy).__name__}"
        )
    if _is_default(strategy):
        return None
    outside = [v for v in getattr(model, "variables", []) if not _created_in(strategy, v)]
    if outside:
        raise UsageError(
            f"the model's variables (e.g. {getattr(outside[0], 'path', outside[0].name)}) were not created "
            f"under the scope of `strategy` ({strategy_name(strategy)}); {_SCOPE_FIX}"
        )
    return strategy


def _created_in(strategy, variable) -> bool:
    value = getattr(variable, "value", variable)  # a Keras variable wraps the TensorFlow one
    try:
        return bool(strategy.extended.variable_created_in_scope(value))
    except (AttributeError, TypeError, ValueError):
        return True  # not a TensorFlow variable: nothing to check


def strategy_from_flags(name: str, devices: int | None = None) -> Any:
    """A strategy from the command line's `--strategy NAME` and `--devices N`.

    Call it before TensorFlow runs anything: `--devices` splits the CPU into logical devices,
    which TensorFlow allows only before it initialises its devices, and a
    `MultiWorkerMirroredStrategy` must be created before any other TensorFlow operation.

    Args:
        name: `"mirrored"`: every local GPU — with `devices`, the first `devices` of them, or on
            a machine without GPUs the CPU split into `devices` logical devices — under a
            `MirroredStrategy`. `"multi-worker"`: a `MultiWorkerMirroredStrategy` over the
            cluster `TF_CONFIG` describes (as TensorFlow reads it).
        devices: How many devices (only with `"mirrored"`). Defaults to None (every GPU, or the
            one CPU).

    Returns:
        The `tf.distribute.Strategy`.

    Raises:
        UsageError: an unknown name; `devices` < 1, or given with `"multi-worker"`; more
            devices than GPUs; logical devices asked for after TensorFlow started its devices;
            `TF_CONFIG` missing or invalid for `"multi-worker"`.

    Example:
        >>> strategy = strategy_from_flags("mirrored", devices=2)
        >>> strategy.num_replicas_in_sync
        2
    """
    import deadrelu.validation as validation

    name = validation.one_of(name, "strategy", STRATEGIES)
    devices = validation.positive_int(devices, "devices", optional=True)
    if name == "multi-worker":
        if devices is not None:
            raise UsageError(
                '`devices` goes with `strategy="mirrored"` only; a multi-worker strategy uses every device '
                "of every worker TF_CONFIG lists"
            )
        check_tf_config()
        import tensorflow as tf

        return tf.distribute.MultiWorkerMirroredStrategy()
    import tensorflow as tf

    if devices is None:
        return tf.distribute.MirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if devices > len(gpus):
            raise UsageError(f"`devices` is {devices} but this machine has {len(gpus)} GPUs; pass at most {len(gpus)}")
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(devices)])
    split_cpu(devices)
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(devices)])


def split_cpu(devices: int) -> None:
    """Splits the CPU into `devices` logical devices (for a `MirroredStrategy` on a CPU host).

    Raises:
        UsageError: TensorFlow has initialised its devices already with another split.
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == devices:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have == devices:
            return
        raise UsageError(
            f"`devices={devices}` splits the CPU into logical devices, which TensorFlow allows only before it "
            f"starts (it runs on {have} CPU device{'s' if have != 1 else ''} already): split it first thing "
            "in the program, with deadrelu.engine.distribute.split_cpu or tf.config.set_logical_device_configuration"
        ) from None
    # TensorFlow initialises the devices lazily; initialise them now so a later split fails here, not later.
    tf.config.list_logical_devices("CPU")


def check_tf_config() -> dict:
    """The cluster of the `TF_CONFIG` environment variable, checked: `{"cluster": ..., "task": ...}`.

    Raises:
        UsageError: `TF_CONFIG` is missing, not JSON, or lacks a cluster or this process's task.
    """
    how = (
        'set TF_CONFIG to e.g. \'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\' on every worker (its own index on each)'
    )
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        raise UsageError(f'`strategy="multi-worker"` needs the TF_CONFIG environment variable, which is not set; {how}')
    try:
        config = json.loads(text)
    except ValueError:
        raise UsageError(f"TF_CONFIG is not valid JSON; {how}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise UsageError(f"TF_CONFIG has no 'cluster' of workers; {how}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise UsageError(f"TF_CONFIG has no 'task' (this process's type and index); {how}")
    tasks = cluster.get(task["type"])
    if not isinstance(tasks, list) or not isinstance(task["index"], int) or not 0 <= task["index"] < len(tasks):
        raise UsageError(
            f"TF_CONFIG's task {task['type']} {task['index']} is not in its cluster "
            f"({', '.join(f'{k}: {len(v)}' for k, v in cluster.items() if isinstance(v, list))}); {how}"
        )
    return config


# -- who is who ----------------------------------------------------------------------------------


def _cluster(strategy) -> tuple[dict, str | None, int | None]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return {}, None, None
    try:
        cluster = resolver.cluster_spec().as_dict()
    except Exception:  # noqa: BLE001 - a resolver without a cluster: one worker
        return {}, None, None
    return cluster, resolver.task_type, resolver.task_id


def num_workers(strategy) -> int:
    """How many worker processes run the strategy (1 without a strategy or on one machine)."""
    if strategy is None:
        return 1
    cluster, _, _ = _cluster(strategy)
    count = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
    return max(count, 1)


def worker_index(strategy) -> int:
    """This process's place among the workers, 0 to `num_workers - 1`; the chief is 0."""
    if num_workers(strategy) == 1:
        return 0
    cluster, task_type, task_id = _cluster(strategy)
    chiefs = len(cluster.get("chief", []))
    return int(task_id or 0) + (chiefs if task_type == "worker" else 0)


def is_chief(strategy) -> bool:
    """Whether this process writes the outputs: always, except on the non-chief workers of a cluster."""
    if num_workers(strategy) == 1:
        return True
    _, task_type, task_id = _cluster(strategy)
    if task_type == "chief":
        return True
    return worker_index(strategy) == 0 and task_type in (None, "worker") and not task_id


def shard_of(strategy) -> tuple[int, int] | None:
    """`(worker_index, num_workers)` when the data must be split between several workers, else None."""
    count = num_workers(strategy)
    return (worker_index(strategy), count) if count > 1 else None


def replicas(strategy) -> int:
    """Replicas in sync (1 without a strategy)."""
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def describe(strategy) -> str:
    """One line: the strategy and its replicas, e.g. `strategy: MirroredStrategy, 2 replicas on 2 devices`.

    Example:
        >>> describe(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
        'strategy: MirroredStrategy, 2 replicas on 2 devices'
    """
    if strategy is None:
        return "strategy: none, 1 replica on one device"
    name = strategy_name(strategy)
    count = replicas(strategy)
    local = len(getattr(strategy.extended, "worker_devices", ()) or ()) or count
    text = f"strategy: {name}, {count} replica{'s' if count != 1 else ''}"
    workers = num_workers(strategy)
    if workers > 1:
        role = "the chief" if is_chief(strategy) else "not the chief: it writes no file"
        each = f"{local} device{'s' if local != 1 else ''} each"
        return f"{text} on {workers} workers ({each}; this is worker {worker_index(strategy)}, {role})"
    return f"{text} on {local} device{'s' if local != 1 else ''}"


def settings(strategy) -> dict | None:
    """What a report records about the strategy: name, replicas and workers (None without one)."""
    if strategy is None:
        return None
    return {"name": strategy_name(strategy), "replicas": replicas(strategy), "workers": num_workers(strategy)}


def strategy_name(strategy) -> str:
    """The name users know the strategy by: its public `tf.distribute` name (a
    `MultiWorkerMirroredStrategy` is a `CollectiveAllReduceStrategy` inside)."""
    import tensorflow as tf

    public = {}
    for module in (tf.distribute, tf.distribute.experimental):
        for name in dir(module):
            value = getattr(module, name, None)
            if isinstance(value, type):
                public.setdefault(value, name)
    return next((public[cls] for cls in type(strategy).__mro__ if cls in public), type(strategy).__name__)


def scope(strategy):
    """`strategy.scope()`, or a no-op without a strategy (or when its scope is already entered)."""
    if strategy is None:
        return contextlib.nullcontext()
    import tensorflow as tf

    if tf.distribute.has_strategy() and tf.distribute.get_strategy() is strategy:
        return contextlib.nullcontext()
    return strategy.scope()


def shared_seed(report, model) -> int:
    """A seed every worker derives alike: a digest of the dead units of `report` and of the weights.

    Under a multi-worker strategy, `revive(seed=None)` must draw the same new weights on every
    worker; the workers hold the same weights and the same (combined) report, so this digest is
    the same everywhere and differs from one revival to the next (the weights change).
    """
    digest = hashlib.sha256()
    for site in report.sites:
        digest.update(site.path.encode())
        digest.update(np.asarray(sorted(site.dead), dtype=np.int64).tobytes())
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return int.from_bytes(digest.digest()[:4], "little") & 0x7FFFFFFF

"""The initialisation baseline: how dead each site is when the model is freshly initialised.

A unit can be dead because training killed it, or because the architecture and its initialisers
make it dead from the start (Lu et al. 2019, "Dying ReLU and Initialization": deep, narrow ReLU
stacks are born dead; so are units behind a negative bias initialiser). To tell the two apart the
cause analysis (`deadrelu.diagnosis.causes`) compares each site's dead fraction now with the dead
fraction of the same architecture at initialisation, measured here:

1. a copy of the model (`deadrelu.fixes.model_utils.copy_model`; the user's model is never
   touched) has every weight re-drawn from the initialiser its layer configured for it —
   `kernel_initializer` for the kernel, `bias_initializer`, `recurrent_initializer`,
   `gamma`/`beta`/`moving_mean`/`moving_variance` initialisers of a BatchNormalization,
   depthwise and pointwise kernels, embeddings, a PReLU's `alpha`, … (an attribute
   `<name>_initializer` of a layer draws its variable `<name>` or `<name>_kernel`, a
   DepthwiseConv's `depthwise_initializer` its `kernel`); an LSTM with
   `unit_forget_bias` gets its forget-gate biases of 1 back. A weight whose layer configures no
   initialiser for it (a `Normalization` layer's adapted mean and variance, a custom layer's
   weights) keeps its value and is named in a note;
2. the draws are seeded per seed and per variable path (`variable_seed`), so the baseline is the
   same on every run;
3. the copy is scanned for each seed (`SEEDS`: 0, 1, 2) on the first `min(samples, BASELINE_SAMPLES)`
   samples of the scan's own data, by ONE probe traced once: the weights are re-drawn in place
   between the passes, which the compiled step reads at every call. The copy and its probe are
   kept while the model lives (`_COPIES`), so scanning the same model again costs the passes only.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
import zlib
from collections.abc import Iterable, Iterator

import numpy as np

SEEDS = (0, 1, 2)
BASELINE_SAMPLES = 256  # per seed: 3 × 256 samples cost ~8% of a 10,000-sample scan

# Per live model: its baseline copy and the copy's draw plan (see `_Copy`). Weak keys: the cache
# never keeps a model alive, and a copy holds nothing of the original.
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COPIES_LOCK = threading.Lock()


@dataclasses.dataclass
class InitBaseline:
    """Dead fractions of every site of a freshly initialised copy of the model, per seed.

    Attributes:
        seeds: The seeds of the draws.
        samples: Samples each seed's pass read (the first of the scan's data).
        dead_fraction: Per site path, the site's dead fraction for each seed (a unit is dead
            when it never fires on those samples, as in a scan).
        trained_dead_fraction: Per site path, the trained model's dead fraction on the same samples:
            what the born-dead rule compares with (fewer samples leave more units silent, so both
            sides are counted on the same ones).
        notes: What the baseline could not re-initialise (weights kept as they are); the
            analysis adds them to the report's notes.
    """

    seeds: list[int]
    samples: int
    dead_fraction: dict[str, list[float]]
    notes: list[str] = dataclasses.field(default_factory=list)
    trained_dead_fraction: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        """The `why.init_baseline` object of the JSON report."""
        return {
            "seeds": list(self.seeds),
            "samples": self.samples,
            "dead_fraction": self.dead_fraction,
            "trained_dead_fraction": self.trained_dead_fraction,
        }


@dataclasses.dataclass
class Draw:
    """One weight of the copy and how to re-draw it.

    Attributes:
        variable: The copy's variable.
        initializer: The initialiser its layer configured for it (name, config or object).
        forget_units: For an LSTM cell with `unit_forget_bias`: its units (the bias's second
            quarter is set to 1 after the draw, as Keras does); else None.
    """

    variable: object
    initializer: object
    forget_units: int | None = None


@dataclasses.dataclass
class _Copy:
    model: object  # the copy
    draws: list[Draw]
    kept: list[str]  # paths of the weights kept as they are
    signature: tuple  # (path, shape) of the original's weights when copied


def variable_seed(seed: int, path: str) -> int:
    """The seed of one variable's draw: a hash of the baseline's seed and the variable's path.

    Args:
        seed: One of the baseline's seeds.
        path: The variable's path (e.g. "dense_1/kernel").

    Returns:
        A non-negative 31-bit integer, the same in every process.

    Example:
        >>> variable_seed(0, "dense/kernel") == variable_seed(0, "dense/kernel")
        True
    """
    return zlib.crc32(f"{seed}:{path}".encode()) & 0x7FFFFFFF


def draw_plan(model) -> tuple[list[Draw], list[str]]:
    """Which initialiser draws each weight of `model`.

    Args:
        model: A `keras.Model`.

    Returns:
        `(draws, kept)`: a `Draw` per weight with a configured initialiser, in model order, and
        the paths of the weights without one (they keep their values).
    """
    from deadrelu._keras_compat import child_layers

    owner: dict[int, Draw] = {}
    for layer in [model] + child_layers(model, recursive=True):
        for name, initializer in vars(layer).items():
            if not name.endswith("_initializer") or initializer is None:
                continue
            stem = name[: -len("_initializer")]
            # DepthwiseConv keeps its depthwise kernel as `kernel`.
            for attribute in (stem, f"{stem}_kernel") + (("kernel",) if stem == "depthwise" else ()):
                variable = getattr(layer, attribute, None) if _has_attribute(layer, attribute) else None
                if variable is None or not hasattr(variable, "assign") or id(variable) in owner:
                    continue
                forget = None
                if stem == "bias" and getattr(layer, "unit_forget_bias", False):
                    forget = int(layer.units)
                owner[id(variable)] = Draw(variable, initializer, forget)
                break
    draws, kept = [], []
    for variable in model.weights:
        draw = owner.get(id(variable))
        if draw is not None:
            draws.append(draw)
        else:
            kept.append(variable.path)
    return draws, kept


def _has_attribute(layer, name: str) -> bool:
    try:
        return hasattr(layer, name)
    except Exception:  # noqa: BLE001 - a property that raises (e.g. an unbuilt or quantised layer)
        return False


def redraw(draws: Iterable[Draw], seed: int) -> None:
    """Re-draws the weights in place from their seeded initialisers.

    Args:
        draws: The plan (`draw_plan`) of the model to re-initialise (never the user's model).
        seed: The baseline's seed; each variable's own seed is `variable_seed(seed, path)`.
    """
    import keras

    for draw in draws:
        variable = draw.variable
        initializer = seeded(draw.initializer, variable_seed(seed, variable.path))
        value = initializer(tuple(variable.shape), dtype=variable.dtype)
        if draw.forget_units is not None:
            value = np.array(keras.ops.convert_to_numpy(value))
            value[draw.forget_units : 2 * draw.forget_units] = 1.0
        variable.assign(value)


def seeded(initializer, seed: int):
    """A copy of a Keras initialiser drawing from `seed` (the initialiser itself if it takes no seed).

    Args:
        initializer: A name, config or `keras.initializers.Initializer` (or a plain function).
        seed: The seed.

    Returns:
        A callable `(shape, dtype) -> values`.
    """
    import keras

    init = keras.initializers.get(initializer)
    try:
        config = init.get_config()
        if "seed" not in config:
            return init  # zeros, ones, constant: nothing to seed
        return type(init).from_config({**config, "seed": seed})
    except Exception:  # noqa: BLE001 - a plain function or a custom class without a usable config
        return init


def _signature(model) -> tuple:
    return tuple((v.path, tuple(v.shape)) for v in model.weights)


def _copy_of(model) -> _Copy:
    """The cached baseline copy of `model`, made (or remade, if its weights changed layout) as needed."""
    from deadrelu.fixes.model_utils import copy_model

    signature = _signature(model)
    with _COPIES_LOCK:
        cached = _COPIES.get(model)
    if cached is not None and cached.signature == signature:
        return cached
    copy = copy_model(model)
    draws, kept = draw_plan(copy)
    cached = _Copy(copy, draws, kept, signature)
    with _COPIES_LOCK:
        _COPIES[model] = cached
    return cached


def first_samples(batches: Iterable, limit: int) -> Iterator:
    """The batches up to `limit` samples, the last one cut.

    Args:
        batches: Batches (an array, or a list or dict of arrays, each).
        limit: Samples to keep.

    Yields:
        The batches, together holding at most `limit` samples.
    """
    from deadrelu.data.arrays import count_samples, map_arrays

    seen = 0
    for x in batches:
        n = count_samples(x)
        if seen + n > limit:
            head = limit - seen
            x = map_arrays(lambda a, head=head: a[:head], x)
            n = head
        seen += n
        yield x
        if seen >= limit:
            return


def init_baseline(
    model,
    probe_data,
    *,
    batch_size: int,
    seeds: Iterable[int] = SEEDS,
    samples: int = BASELINE_SAMPLES,
) -> InitBaseline:
    """Scans freshly initialised copies of `model` on the first samples of the data (see the module docstring).

    Args:
        model: The user's `keras.Model` (left untouched).
        probe_data: The scan's `deadrelu.data.ProbeData`.
        batch_size: Samples per step.
        seeds: Seeds of the draws. Defaults to `SEEDS`.
        samples: Samples per pass, at most. Defaults to `BASELINE_SAMPLES`.

    Returns:
        The `InitBaseline`.

    Raises:
        UnsupportedModelError: The model cannot be copied.
    """
    from deadrelu.engine.probe import model_lock, probe_for
    from deadrelu.report import Thresholds, site_report

    baseline = _copy_of(model)
    copy = baseline.model
    seeds = [int(s) for s in seeds]
    data = dataclasses.replace(probe_data, shard=None) if probe_data.shard is not None else probe_data
    fractions: dict[str, list[float]] = {}
    read = 0
    with model_lock(copy):  # the draws and the pass that reads them go together
        probe = probe_for(copy)
        for seed in seeds:
            redraw(baseline.draws, seed)
            result = probe.run(first_samples(data.batches(batch_size), samples))
            read = result.samples
            for stats in result.sites:
                site = site_report(stats, Thresholds())
                fractions.setdefault(site.path, []).append(site.dead_fraction)
    # The trained model on the same first samples (its probe is the scan's, already traced).
    trained_fractions = {}
    for stats in probe_for(model).run(first_samples(data.batches(batch_size), samples)).sites:
        site = site_report(stats, Thresholds())
        trained_fractions[site.path] = site.dead_fraction
    notes = []
    kept = baseline.kept
    if kept:
        listed = ", ".join(kept[:5]) + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
        several = len(kept) > 1
        notes.append(
            f"init baseline: {len(kept)} weight{'s' if several else ''} without a configured initialiser "
            f"kept {'their' if several else 'its'} trained value{'s' if several else ''} ({listed})"
        )
    return InitBaseline(
        seeds=seeds, samples=read, dead_fraction=fractions, notes=notes, trained_dead_fraction=trained_fractions
    )

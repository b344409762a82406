"""Retrain model variants the same way and compare them: what helped?

Each variant (e.g. "as is", "patched to PReLU", "revived") is recompiled like the original file
(its loss, metrics and optimizer class and configuration, with fresh optimizer state), fitted with
the same data, epochs and seed, and scanned before and after on the validation data. The seed is
set for each fit (`keras.utils.set_random_seed`), and the process's global random state — Python's
`random`, NumPy's, Keras's and the backend's — is put back afterwards (`preserved_random_state`),
so a caller's own draws go on as if `retrain` had not run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator

import numpy as np

from deadrelu._keras_compat import child_layers
from deadrelu.data import count_samples, map_arrays
from deadrelu.engine.losses import compile_config, match_labels
from deadrelu.errors import UsageError


@dataclasses.dataclass
class VariantResult:
    """Before/after numbers of one retrained variant.

    Attributes:
        name: The variant's label.
        units: ReLU units in the model.
        dead_before, dying_before, dead_after, dying_after: Unit counts from scans of the
            validation data before and after training.
        before, after: Validation loss and each compiled metric (`model.evaluate`).
        history: Per-epoch training curves (`History.history`).
    """

    name: str
    units: int
    dead_before: int
    dying_before: int
    dead_after: int
    dying_after: int
    before: dict[str, float]
    after: dict[str, float]
    history: dict[str, list[float]]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Comparison:
    """The retraining of several variants under one budget."""

    variants: list[VariantResult]
    settings: dict

    def to_dict(self) -> dict:
        return {
            "schema": "deadrelu/retrain@1",
            "settings": self.settings,
            "variants": [v.to_dict() for v in self.variants],
            "verdicts": self.verdicts(),
        }

    def verdicts(self, metric: str | None = None) -> list[str]:
        """One computed sentence per variant against the baseline (a variant named "baseline" or
        "… (baseline)"): better, no better or worse, on which validation metric, by how much, and
        its dead units before → after training (revived units that die again show here).

        Args:
            metric: The metric to judge by; defaults to the first compiled metric (e.g. accuracy),
                else the (data) loss.

        Returns:
            The sentences; empty without a baseline among the variants.

        Example:
            >>> comparison.verdicts()  # schematic
            ["revived: better than the baseline on val accuracy (A vs B), +3.2 points; dead units D → D'"]
        """
        from deadrelu.fixes.fix_rules import lower_is_better

        base = next((v for v in self.variants if "baseline" in v.name), None)
        if base is None or not base.after:
            return []
        metric = metric or next((m for m in base.after if m not in ("loss", "penalty")), "loss")
        if metric not in base.after:
            return []
        lower = lower_is_better(metric)
        out = []
        for v in self.variants:
            if v is base or metric not in v.after:
                continue
            mine, theirs = v.after[metric], base.after[metric]
            gap = mine - theirs
            shown = f"val {metric} ({mine:.4f} vs {theirs:.4f})"
            if not (math.isfinite(mine) and math.isfinite(theirs)):
                judged = f"not comparable with the baseline on {shown}"
            elif abs(gap) <= 1e-9 * max(1.0, abs(theirs)):
                judged = f"no better than the baseline on {shown}"
            else:
                better = gap < 0 if lower else gap > 0
                amount = f"{gap * 100:+.1f} points" if "acc" in metric else f"{gap:+.4g}"
                judged = f"{'better' if better else 'worse'} than the baseline on {shown}, {amount}"
            dead = f"; dead units {v.dead_before:,} → {v.dead_after:,}" if v.units else ""
            out.append(f"{v.name}: {judged}{dead}")
        return out

    def to_json(self, path: str) -> None:
        from deadrelu.io.files import write_json

        write_json(path, self.to_dict())


def compile_like(
    model,
    source,
    *,
    loss=None,
    optimizer: str | None = None,
    learning_rate: float | None = None,
    learning_rate_scale: float = 1.0,
) -> None:
    """Compiles `model` as `source` was compiled, with fresh optimizer state.

    Args:
        model: The model to compile.
        source: The original model (its compile configuration is reused when it has one).
        loss: Overrides the loss (a Keras loss name).
        optimizer: Overrides the optimizer class (a Keras optimizer name such as "adam").
        learning_rate: Overrides the learning rate.
        learning_rate_scale: Multiplies the learning rate (the stored one, or `learning_rate`);
            `deadrelu.fix`'s `lr` candidates use 0.1.

    Raises:
        UsageError: Neither `source` nor the arguments give a loss; `learning_rate_scale` is not 1
            and the optimizer's learning rate is a schedule (not a number to scale).
    """
    import keras

    config = compile_config(source)
    if loss is None and not config.get("loss"):
        raise UsageError(
            'the model file stores no loss; pass one with `loss=` (e.g. `loss="categorical_crossentropy"`)'
        )
    if optimizer is not None:
        opt = keras.optimizers.get(optimizer)
    elif config.get("optimizer") is not None:
        opt = keras.optimizers.deserialize(config["optimizer"])
    else:
        opt = keras.optimizers.Adam()
    if learning_rate is not None:
        opt.learning_rate = learning_rate
    if learning_rate_scale != 1.0:
        rate = base_learning_rate(opt)
        if rate is None:
            raise UsageError(
                f"the optimizer's learning rate is a schedule ({type(opt._learning_rate).__name__}); it cannot be "
                "scaled: pass a number with `learning_rate=`"
            )
        opt.learning_rate = rate * learning_rate_scale
    model.compile(
        optimizer=opt,
        loss=loss if loss is not None else _deserialize(config["loss"]),
        metrics=_deserialize(config.get("metrics")),
        loss_weights=config.get("loss_weights"),
    )


def _deserialize(value):
    """Turns the serialised objects of a compile config (dicts with "class_name") back into objects."""
    import keras

    if isinstance(value, dict) and "class_name" in value:
        return keras.saving.deserialize_keras_object(value)
    if isinstance(value, list):
        return [_deserialize(v) for v in value]
    if isinstance(value, dict):
        return {k: _deserialize(v) for k, v in value.items()}
    return value


def base_learning_rate(optimizer) -> float | None:
    """The optimizer's learning rate as a number, or None when it is a schedule."""
    import keras

    # `learning_rate` evaluates a schedule at the current step; `_learning_rate` is what was set.
    rate = getattr(optimizer, "_learning_rate", optimizer.learning_rate)
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) or callable(rate):
        return None
    return float(np.asarray(rate))


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Puts back the process's global random state when the block ends.

    `keras.utils.set_random_seed` seeds Python's `random`, NumPy's global generator, TensorFlow
    (whenever it is installed), PyTorch on its backend, and drops Keras's global `SeedGenerator`.
    This saves each of them and restores it, as far as each library allows: TensorFlow's eager
    seed and the generator of its operation seeds are restored, but the state of a stateful
    random op compiled in the block is not.

    Example:
        >>> with preserved_random_state():
        ...     keras.utils.set_random_seed(0)
        >>> np.random.rand()  # as if the seed had not been set
    """
    import random

    import keras

    from deadrelu._keras_compat import global_random_state, set_global_random_state

    python_state, numpy_state, global_state = random.getstate(), np.random.get_state(), global_random_state()
    torch_state = None
    if keras.backend.backend() == "torch":
        import torch

        torch_state = torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        set_global_random_state(global_state)
        if torch_state is not None:
            import torch

            torch.set_rng_state(torch_state)


@preserved_random_state()  # the caller's draws go on as if retrain had not run
def retrain(
    variants: dict,
    source,
    x,
    y,
    *,
    epochs: int,
    batch_size: int = 32,
    validation_data=None,
    validation_split: float | None = None,
    seed: int = 0,
    loss=None,
    optimizer: str | None = None,
    learning_rate: float | None = None,
    probe_samples: int = 2000,
    on_epoch: Callable[[str, int, dict], None] | None = None,
    strategy=None,
) -> Comparison:
    """Fits every variant with the same data, epochs and seed, and scans each before and after.

    Args:
        variants: Label → `keras.Model` (each is compiled here; pass copies you can spare).
        source: The original model, whose compile configuration the variants inherit.
        x, y: Training data (numpy arrays).
        epochs: Epochs per variant.
        batch_size: Training batch size.
        validation_data: `(x_val, y_val)`; else the last `validation_split` of `x`, `y` is held out.
        validation_split: Share of the training data held out when `validation_data` is None.
        seed: Seed set before each fit, so every variant sees the same shuffles and dropout.
        loss, optimizer, learning_rate: Overrides of the stored compile configuration.
        probe_samples: Validation samples used for the dead-unit scans.
        on_epoch: Called with (variant, epoch, logs) after each epoch (progress).
        strategy: A `tf.distribute.Strategy` whose scope holds every variant's variables: the
            scans before and after run on all its replicas (`fit` follows the models' own strategy).
            Defaults to None: the strategy each variant was built under, if any.

    Returns:
        A `Comparison`.

    Example:
        >>> comparison = retrain({"as is": clone, "prelu": patched}, model, x, y, epochs=2,
        ...                      validation_split=0.2)
    """
    from deadrelu.engine.scanner import scan

    x_train, y_train, x_val, y_val = split_data(x, y, validation_data, validation_split)
    probe = map_arrays(lambda a: a[:probe_samples], x_val)
    results = []
    for name, model in variants.items():
        compile_like(model, source, loss=loss, optimizer=optimizer, learning_rate=learning_rate)
        fit_y, val_y = match_labels(y_train, model), match_labels(y_val, model)
        scan_before = scan(model, probe, strategy=strategy)
        before = split_loss(model, evaluate(model, x_val, val_y, batch_size))
        fitted = fit_variant(
            model,
            x_train,
            fit_y,
            validation_data=(x_val, val_y),
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            on_epoch=None if on_epoch is None else (lambda epoch, logs, name=name: on_epoch(name, epoch, logs)),
        )
        scan_after = scan(model, probe, strategy=strategy)
        after = split_loss(model, evaluate(model, x_val, val_y, batch_size))
        results.append(
            VariantResult(
                name=name,
                units=scan_before.summary["units"],
                dead_before=scan_before.summary["dead"],
                dying_before=scan_before.summary["dying"],
                dead_after=scan_after.summary["dead"],
                dying_after=scan_after.summary["dying"],
                before=before,
                after=after,
                history=fitted.history,
            )
        )
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "train_samples": count_samples(x_train),
        "validation_samples": count_samples(x_val),
        "probe_samples": count_samples(probe),
        "validation": "given" if validation_data is not None else f"last {validation_split:g} of the data",
    }
    return Comparison(variants=results, settings=settings)


@dataclasses.dataclass
class Fitted:
    """What one `fit_variant` call measured.

    Attributes:
        history: Per-epoch curves (`History.history`), as floats.
        seconds: Wall time of `model.fit` alone (tracing, training and its per-epoch validation).
    """

    history: dict[str, list[float]]
    seconds: float


def fit_variant(
    model,
    x,
    y,
    *,
    validation_data: tuple,
    epochs: int,
    batch_size: int,
    seed: int,
    steps: int | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> Fitted:
    """Fits one compiled variant under the shared budget: the one training loop of every comparison.

    The global seed is set and every layer's random state reset from `seed` first, so that each
    variant given the same data sees the same shuffles and the same dropout masks
    (`reseed_layers`). Call it inside `preserved_random_state()` to keep the caller's draws.

    Args:
        model: A compiled `keras.Model` (e.g. by `compile_like`).
        x, y: Training data, labels already matched to the model (`match_labels`).
        validation_data: `(x_val, y_val)`, evaluated after each epoch.
        epochs: Epochs (ignored when `steps` is given).
        batch_size: Training batch size.
        seed: The seed of the shuffles and of every random layer.
        steps: Train exactly this many batches instead of `epochs` epochs: one pass cut short
            (`steps_per_epoch`), validated once at the end. At most one epoch's batches.
        on_epoch: Called with (epoch, logs) after each epoch (progress); it may raise
            `KeyboardInterrupt` to stop.

    Returns:
        A `Fitted`.

    Raises:
        UsageError: `steps` is more than one pass over `x` (use `epochs`).

    Example:
        >>> compile_like(copy, model)
        >>> fit_variant(copy, x, y, validation_data=(xv, yv), epochs=2, batch_size=32, seed=0).history
    """
    import time

    import keras

    options = {"epochs": epochs}
    if steps is not None:
        batches = -(-count_samples(x) // batch_size)
        if steps > batches:
            raise UsageError(
                f"`steps={steps}` is more than one pass over the training data ({batches} batches of "
                f"{batch_size}): pass `epochs=` for longer budgets"
            )
        options = {"epochs": 1, "steps_per_epoch": steps}
    keras.utils.set_random_seed(seed)
    reseed_layers(model, seed)
    callbacks = [keras.callbacks.LambdaCallback(on_epoch_end=on_epoch)] if on_epoch else []
    start = time.perf_counter()
    history = model.fit(
        x,
        y,
        batch_size=batch_size,
        verbose=0,
        validation_data=validation_data,
        callbacks=callbacks,
        **options,
    )
    seconds = time.perf_counter() - start
    return Fitted({k: [float(v) for v in values] for k, values in history.history.items()}, seconds)


def reseed_layers(model, seed: int) -> None:
    """Resets the random state of every layer (Dropout, noise) from `seed`.

    Keras layers draw their own seeds when they are built, so a clone or a patched copy would
    drop different units than the original even under the same global seed. The i-th generator of
    every variant gets the same state, so all variants train under identical randomness.
    """
    import keras

    generators = []
    for layer in child_layers(model, recursive=True):
        generators += [value for value in vars(layer).values() if isinstance(value, keras.random.SeedGenerator)]
    for i, generator in enumerate(generators):
        generator.state.assign(np.array([seed + i, 0], dtype=generator.state.dtype))


def split_data(x, y, validation_data, validation_split) -> tuple:
    """`(x_train, y_train, x_val, y_val)`: `validation_data`, else the last `validation_split` of `x`, `y`.

    Raises:
        UsageError: Neither is given, or the split leaves one side empty.
    """
    if validation_data is not None:
        x_val, y_val = validation_data
        return x, y, x_val, y_val
    if not validation_split or not 0 < validation_split < 1:
        raise UsageError("retraining needs validation data: pass `validation_data=` or `validation_split=0.2`")
    cut = round(count_samples(x) * (1 - validation_split))
    if cut < 1 or cut >= count_samples(x):
        raise UsageError(f"`validation_split={validation_split:g}` leaves no training or no validation samples")
    head, tail = (lambda a: a[:cut]), (lambda a: a[cut:])
    return map_arrays(head, x), map_arrays(head, y), map_arrays(tail, x), map_arrays(tail, y)


def weight_penalty(model) -> float | None:
    """The sum of the weights' regularisation penalties (L1/L2 on kernels…), as Keras adds them to
    the loss it reports; None when a layer has an activity regulariser (its penalty depends on the data).

    Args:
        model: A `keras.Model`.

    Returns:
        The penalty (0.0 without regularisers), or None.
    """
    from deadrelu._keras_compat import child_layers

    if any(getattr(layer, "activity_regularizer", None) is not None for layer in child_layers(model, recursive=True)):
        return None
    total = 0.0
    for variable in model.trainable_weights:
        regularizer = getattr(variable, "regularizer", None)
        if regularizer is not None:
            total += float(np.asarray(regularizer(variable)))
    return total


def split_loss(model, values: dict[str, float]) -> dict[str, float]:
    """`evaluate`'s numbers with the loss split: `loss` the data loss, `penalty` beside it.

    The loss Keras reports adds the weights' regularisation penalties, which depend on the weights
    and not on the fit: a revived unit's fresh weights add theirs before a single output has
    changed. For a model with weight regularisers, `loss` here is Keras's loss minus the penalty
    and `penalty` is the penalty; without any (or with an activity regulariser, whose penalty
    depends on the data and cannot be taken out), the numbers are Keras's as they are.

    Args:
        model: The evaluated model.
        values: What `evaluate` returned for it.

    Returns:
        A new dict.
    """
    penalty = weight_penalty(model)
    if not penalty or "loss" not in values:
        return dict(values)
    out = dict(values)
    out["loss"] = values["loss"] - penalty
    out["penalty"] = penalty
    return out


def evaluate(model, x, y, batch_size: int) -> dict[str, float]:
    """`model.evaluate` as a dict of floats (batches of at least 256: the numbers do not depend on it)."""
    values = model.evaluate(x, y, batch_size=max(batch_size, 256), verbose=0, return_dict=True)
    return {k: float(v) for k, v in values.items()}

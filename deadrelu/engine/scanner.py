"""`deadrelu.scan`: model + data → probe → report. The one entry point the CLI and users share."""

from __future__ import annotations

import os
from collections.abc import Callable

import deadrelu.validation as validation
from deadrelu.errors import UsageError
from deadrelu.progress import Progress, resolve_verbose
from deadrelu.report import Report, Thresholds, build_report

DEFAULT_BATCH_SIZE = 256


def scan(
    model,
    data=None,
    labels=None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    gradients: bool = False,
    why: bool = False,
    loss=None,
    samples: int | None = None,
    rescale: float | None = None,
    skip_bad_images: bool = False,
    dying_threshold: float = 0.01,
    flag_threshold: float = 0.10,
    saturated_threshold: float = 0.99,
    dormant: float | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_start: Callable[[int | None], None] | None = None,
    model_info: dict | None = None,
    verbose: int | str = "auto",
    strategy=None,
) -> Report:
    """Measures every ReLU site of a model on data and returns the verdicts.

    Repeated calls on the same model object reuse its traced probe step (see
    `deadrelu.engine.probe.probe_for`); the model itself is never modified.

    Args:
        model: A `keras.Model`, or a path to a model file (loaded with `deadrelu.load_model`).
        data: Inputs: numpy array(s), `tf.data.Dataset`, `keras.utils.PyDataset`, a generator or a
            path (see `deadrelu.data.load_data`). None uses synthetic inputs, which cannot give a
            real verdict.
        labels: Labels (array or path), needed with `gradients=True` unless the data file has `y`
            (a dataset or generator yields `(inputs, labels)` pairs instead).
        batch_size: Samples per step; results do not depend on it.
        gradients: Also measure ∂ℓₙ/∂z per unit and the weight gradient per layer.
        why: Also say why each dead unit died (`deadrelu.diagnosis`): its cause (starved,
            output_relu, born_dead, killed_in_training or data_dependent) with the evidence,
            in the sites' `dead_causes`, `causes` and `cause_evidence` and the report's `why`
            (findings, training configuration, recommendations). Scans freshly initialised
            copies of the model on the first 512 samples for 3 seeds (the copy and its traced
            step are kept while the model lives). Defaults to False.
        loss: Loss for gradients (Keras name, function or `Loss`); default the model's compiled loss.
        samples: Use only the first `samples` samples; a stream stops there (an infinite dataset
            needs it).
        rescale: Multiply inputs by this factor after converting them to float.
        skip_bad_images: For a folder of images: skip unreadable images (counted in a note)
            instead of refusing the folder.
        dying_threshold: Active rate under which a live unit is dying.
        flag_threshold: Dead share at which a site is flagged.
        saturated_threshold: Share of outputs at the cap from which a capped unit is saturated.
        dormant: ReDo's τ: also list each site's τ-dormant units (dormancy ≤ τ, dead units
            included; `deadrelu.engine.dormancy.dormant_units`) in its `dormant`, and count them in the
            summary (`dormant`, `dormant_fraction`). Defaults to None (not listed).
        on_batch: Called with each batch's sample count (progress).
        on_start: Called once with the number of samples to come (None if unknown).
        model_info: Provenance to record instead of the in-memory description.
        verbose: Progress, as in Keras: 0 silent, 1 a progress bar (a terminal's, or an HTML bar
            in a notebook; plain lines every 10 s in a pipe), 2 one line per batch. "auto" is 1 in
            a notebook or an interactive session and 0 elsewhere (scripts, tests, the command
            line, which shows its own). Defaults to "auto".
        strategy: A `tf.distribute.Strategy` to measure on all its replicas: each global batch of
            `batch_size` samples is split across the replicas, a `tf.distribute.DistributedDataset`
            is taken as it is, and under several workers each reads only its shard of the data;
            the statistics are those of a single-device scan, and every worker returns the same
            report. The model must have been built or loaded in its scope. Defaults to None: the
            strategy the model was built under, if any.

    Returns:
        A `Report`.

    Raises:
        UsageError: An argument is out of range (named as the keyword: `samples`),
            `gradients=True` has no labels, or `strategy` does not hold the model's variables.
        DataError: The data cannot be read, is not numbers, or does not fit the model.

    Example:
        >>> report = deadrelu.scan(model, x_test, batch_size=500)
        >>> print(report.summary)
    """
    from deadrelu.data import load_data
    from deadrelu.engine.distribute import resolve_strategy
    from deadrelu.engine.distribute import settings as strategy_settings
    from deadrelu.engine.mesh import settings as distribution_settings
    from deadrelu.engine.probe import probe_for

    batch_size = validation.positive_int(batch_size, "batch_size")
    samples = validation.positive_int(samples, "samples", optional=True)
    rescale = validation.positive_number(rescale, "rescale", optional=True, example="1/255")
    gradients = validation.boolean(gradients, "gradients")
    why = validation.boolean(why, "why")
    thresholds = Thresholds(
        dying=validation.fraction(dying_threshold, "dying_threshold"),
        flag=validation.fraction(flag_threshold, "flag_threshold"),
        saturated=validation.fraction(saturated_threshold, "saturated_threshold"),
        dormant=dormant_threshold(dormant),
    )
    verbose = resolve_verbose(verbose)
    if isinstance(model, (str, os.PathLike)):
        from deadrelu.io.loading import load

        loaded = load(os.fspath(model))
        model = loaded.model
        model_info = model_info or describe_loaded(loaded)
    validation.model(model)
    strategy = resolve_strategy(strategy, model)
    probe_data = load_data(
        data,
        model,
        labels=labels,
        samples=samples,
        rescale=rescale,
        skip_bad_images=skip_bad_images,
        strategy=strategy,
    )
    if gradients and not probe_data.has_labels and probe_data.stream is None:
        raise UsageError("`gradients=True` needs labels: pass `labels=\"y.npy\"` (or a data file with a 'y' array)")
    with Progress("scanning", verbose=verbose, unit="samples") as progress:
        expected = probe_data.local_samples(batch_size)
        progress.start(expected)
        if on_start is not None:
            on_start(expected)

        def advance(count: int) -> None:
            progress.advance(count)
            if on_batch is not None:
                on_batch(count)

        probe = probe_for(model, gradients=gradients, loss=loss, strategy=strategy)
        result = probe.run(probe_data.batches(batch_size, labels=gradients), on_batch=advance)

    notes = list(probe_data.notes) + list(result.notes)
    if probe_data.synthetic:
        notes.append("no data given: measured on synthetic inputs; pass real data (`data=`) for a real verdict")
    settings = {
        "batch_size": batch_size,
        "gradients": gradients,
        "samples_limit": samples,
        "rescale": rescale,
        "inference_mode": True,
    }
    if gradients:
        settings["loss"] = _loss_name(loss, model)
    if strategy is not None:
        settings["strategy"] = strategy_settings(strategy)
    if _backend() == "jax":  # keras.distribution: "distribution": "DataParallel", "devices": 2, ...
        settings.update(distribution_settings())
    data_info = {"source": probe_data.source, "samples": result.samples, "synthetic": probe_data.synthetic}
    data_info["inputs"] = probe_data.input_ranges()
    report = build_report(
        result,
        thresholds=thresholds,
        model=model_info or {"path": None, "name": model.name, "sha256": None, "format": "in-memory"},
        data=data_info,
        settings=settings,
        notes=notes,
    )
    if why:
        from deadrelu.diagnosis.analyse import analyse

        analyse(report, model, probe_data, batch_size=batch_size)
    return report


def dormant_threshold(value) -> float | None:
    """`dormant=` checked: None, or a finite number ≥ 0 (UsageError naming `dormant` otherwise)."""
    if value is None:
        return None
    return validation.finite_number(value, "dormant", minimum=0.0, example="0.1")


def describe_loaded(loaded) -> dict:
    """Model provenance for the report, from a `LoadedModel`."""
    return {
        "path": loaded.path,
        "name": loaded.model.name,
        "sha256": loaded.sha256,
        "format": loaded.format,
        "repairs": list(loaded.repairs),
    }


def _loss_name(loss, model) -> str:
    """The loss as the report names it; per output ("cls: mse, reg: mae") for several outputs."""
    loss = loss if loss is not None else getattr(model, "loss", None)
    if isinstance(loss, dict):
        return ", ".join(f"{name}: {_loss_name(value, model)}" for name, value in loss.items() if value is not None)
    if isinstance(loss, (list, tuple)):
        return ", ".join(_loss_name(value, model) for value in loss if value is not None)
    if isinstance(loss, str):
        return loss
    return getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__


def _backend() -> str:
    import keras

    return keras.backend.backend()

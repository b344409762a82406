"""`deadrelu.fix`: which repair works on this model? Train them side by side and keep the best.

Each candidate is a copy of the model built by the exact machinery of the other verbs — `baseline`
(unchanged), `leaky` and `prelu` (`deadrelu.fixes.patch.patch_model`), `revive`
(`deadrelu.fixes.revive.revive_model`), `prune` (`deadrelu.fixes.prune.prune_model`), whose output
checks still run, and `lr` / `revive+lr` (the learning rate divided by 10). Every candidate is then
trained by the one training loop of every comparison (`deadrelu.fixes.retrain.fit_variant`) under
the same budget: compiled like the model (`compile_like`: its loss, metrics and optimizer class and
configuration, with fresh optimizer state), the same training and validation data, the same seed
set before each fit (the same shuffled batches in the same order, the same dropout masks:
`reseed_layers`), the same epochs or steps. The model itself is never changed.

The verdict ranks the trained candidates by one number measured on the validation data after
training (`metric`): by default the data loss — the compiled loss as Keras reports it minus the
penalties of the weights' regularisers, which differ between candidates whose weights differ
(re-initialised units, removed units) and say nothing about the fit to the data. See
docs/fixing.md#which-fix-works for the rules.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from deadrelu.errors import OutputCheckError, UnsupportedModelError, UsageError
from deadrelu.fixes.fix_rules import (
    LR_FACTOR,
    REPAIR,
    default_candidates,
    lower_is_better,
    parse_candidates,
)
from deadrelu.fixes.fix_rules import verdict as judge

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from deadrelu.fixes.retrain import Comparison

DATA_LOSS = "data_loss"
"""The default ranking metric: the validation loss without the weights' regularisation penalties."""


@dataclasses.dataclass(repr=False)
class Candidate:
    """One repair tried by `fix`: how it was made, and what training it gave.

    Attributes:
        name: The label (`kind`, or the label of a `label=kind` entry).
        kind: One of `CANDIDATES`.
        skipped: Why the candidate could not be built (None when it was trained).
        before: Validation loss (`loss`, as Keras reports it), `data_loss` and each compiled metric
            before training.
        after: The same after training (the last epoch's validation values of `fit`).
        dead_fraction_after: Share of the candidate's ReLU units dead on the probe data after
            training (a scan); None when it has no ReLU site left.
        dead_after, units_after: Those dead units and all ReLU units.
        params: Parameters of the candidate model.
        learning_rate: The learning rate it trained with (None for a schedule).
        seconds: Wall time of the whole candidate: building, its checks, the scans, training.
        fit_seconds: Wall time of `model.fit` alone.
        history: Per-epoch curves (`History.history`).
        check: The repair's own output check, described (`OutputCheck.describe()`): the slope-0
            check of `leaky`/`prelu`, the output comparison of `revive`/`prune`; None for the others.
        notes: What the building step said (e.g. sites skipped).
        model: The trained model (not in `to_dict()`); None when skipped.
    """

    name: str
    kind: str
    skipped: str | None = None
    before: dict[str, float] = dataclasses.field(default_factory=dict)
    after: dict[str, float] = dataclasses.field(default_factory=dict)
    dead_fraction_after: float | None = None
    dead_after: int | None = None
    units_after: int | None = None
    params: int | None = None
    learning_rate: float | None = None
    seconds: float = 0.0
    fit_seconds: float = 0.0
    history: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    check: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    model: Any = None

    @property
    def trained(self) -> bool:
        return self.skipped is None

    def __repr__(self) -> str:
        if not self.trained:
            return f"<Candidate {self.name}: skipped ({self.skipped})>"
        return f"<Candidate {self.name}: val data_loss {self.after.get(DATA_LOSS, math.nan):.4f}>"

    def to_dict(self) -> dict:
        """`name`, `kind`, `status`, then `val_<metric>` after training, `before`, the scan, the costs."""
        out: dict = {"name": self.name, "kind": self.kind, "status": "trained" if self.trained else "skipped"}
        if not self.trained:
            return {**out, "reason": self.skipped, "notes": self.notes}
        out.update({f"val_{key}": value for key, value in self.after.items()})
        out["before"] = {f"val_{key}": value for key, value in self.before.items()}
        out.update(
            dead_fraction_after=self.dead_fraction_after,
            dead_after=self.dead_after,
            units_after=self.units_after,
            params=self.params,
            learning_rate=self.learning_rate,
            seconds=self.seconds,
            fit_seconds=self.fit_seconds,
            history=self.history,
            check=self.check,
            notes=self.notes,
        )
        return out


@dataclasses.dataclass(repr=False)
class FixResult:
    """What `fix` found: every candidate, the ranking metric, the best, and the verdict.

    Attributes:
        candidates: Every candidate tried, in training order (skipped ones with their reason).
        metric: The ranking metric (`"data_loss"`, `"loss"` or a compiled metric's name).
        higher_is_better: Its direction.
        best: The chosen candidate's name (None when none was trained, or when interrupted).
        ties: Names of the trained candidates whose metric equals the best's (the best included)
            when there are several, else empty.
        verdict: One sentence: the best and by how much it beats `baseline`, or that nothing does.
        settings: The budget and the data (epochs or steps, batch size, seed, samples, probe).
        dead_fraction_before: The model's dead fraction on the probe data before any change.
        causes: Dead units per cause, when the why-analysis ran (it chose the default candidates).
        interrupted: Training stopped on Ctrl-C; `candidates` holds those that finished.
        notes: One-line remarks for the user.

    `.model` is the best candidate's trained model. `repr` is one line; a notebook and a rich
    console show the table.
    """

    candidates: list[Candidate]
    metric: str
    higher_is_better: bool
    best: str | None
    ties: list[str]
    verdict: str
    settings: dict
    dead_fraction_before: float | None = None
    causes: dict[str, int] | None = None
    interrupted: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def model(self) -> keras.Model | None:
        """The best candidate's trained model (None without a best)."""
        return None if self.best is None else self.candidate(self.best).model

    def candidate(self, name: str) -> Candidate:
        """The candidate called `name`.

        Raises:
            KeyError: No candidate has that name.
        """
        for candidate in self.candidates:
            if candidate.name == name:
                return candidate
        raise KeyError(f"no candidate {name!r}; the candidates are {', '.join(c.name for c in self.candidates)}")

    def __repr__(self) -> str:
        return f"<FixResult {self.verdict}>"

    def _repr_html_(self) -> str:
        from deadrelu.views.fix_tables import fix_html

        return fix_html(self)

    def __rich__(self):
        from deadrelu.views.fix_tables import fix_renderable

        return fix_renderable(self)

    def comparison(self) -> Comparison:
        """The trained candidates as a `deadrelu.fixes.retrain.Comparison` (for `plot_curves`)."""
        from deadrelu.fixes.retrain import Comparison, VariantResult

        variants = [
            VariantResult(
                name=c.name,
                units=c.units_after or 0,
                dead_before=0,
                dying_before=0,
                dead_after=c.dead_after or 0,
                dying_after=0,
                before=c.before,
                after=c.after,
                history=c.history,
            )
            for c in self.candidates
            if c.trained
        ]
        return Comparison(variants=variants, settings=self.settings)

    def to_dict(self) -> dict:
        """The JSON body of `deadrelu fix --json` (docs/fixing.md#which-fix-works)."""
        return {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "best": self.best,
            "ties": self.ties,
            "verdict": self.verdict,
            "interrupted": self.interrupted,
            "dead_fraction_before": self.dead_fraction_before,
            "causes": self.causes,
            "settings": self.settings,
            "candidates": [c.to_dict() for c in self.candidates],
            "notes": self.notes,
        }


class FixInterrupted(KeyboardInterrupt):
    """Ctrl-C during `fix`: `.result` holds the candidates that finished (`interrupted=True`)."""

    def __init__(self, result: FixResult):
        super().__init__("interrupted")
        self.result = result


def fix(
    model: keras.Model | str | os.PathLike,
    x: Any,
    y: Any = None,
    *,
    candidates: Sequence[str] | str | None = None,
    validation_data: tuple | None = None,
    validation_split: float | None = None,
    epochs: int = 2,
    steps: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    metric: str | None = None,
    loss: Any = None,
    learning_rate: float | None = None,
    probe_samples: int = 2000,
    on_start: Callable[[int], None] | None = None,
    on_epoch: Callable[[str, int, dict | None], None] | None = None,
    verbose: int | str = "auto",
) -> FixResult:
    """Trains every candidate repair of `model` under the same budget and picks the one that trains best.

    Args:
        model: A compiled `keras.Model` (or a model file); it is left unchanged.
        x: Training inputs (arrays), or a path or anything `deadrelu.scan` reads (with labels).
        y: Training labels. Defaults to None: the labels of `x` (a data file's 'y').
        candidates: Kinds from `CANDIDATES`, or `label=kind` entries (a list, or one string
            split at commas). Defaults to None: chosen from a why-scan's causes
            (`default_candidates`).
        validation_data: `(x_val, y_val)`. Defaults to None: the last `validation_split` of `x`.
        validation_split: Share of `x` held out when `validation_data` is None. Defaults to None
            (0.2 when `validation_data` is None too).
        epochs: Epochs per candidate. Defaults to `2`.
        steps: Train this many batches per candidate instead (at most one pass over `x`).
            Defaults to None.
        batch_size: Training batch size. Defaults to `32`.
        seed: Seed of every fit (shuffles, dropout) and of `revive`'s new weights. Defaults to `0`.
        metric: What ranks the candidates, on the validation data after training: `"data_loss"`
            (the loss without regularisation penalties), `"loss"` (as Keras reports it), or a
            compiled metric (`"accuracy"`; a `val_` prefix is allowed). Defaults to None
            (`"data_loss"`).
        loss: The loss, when the model stores none (or to override it). Defaults to None.
        learning_rate: Overrides the stored learning rate (then `lr` divides this one). Defaults
            to None.
        probe_samples: Validation samples scanned for dead units (and the fixes' output checks).
            Defaults to `2000`.
        on_start: Called once with the number of candidate-epochs to come (progress).
        on_epoch: Called with (candidate, epoch, logs) after each epoch; for a skipped candidate
            once per epoch of its budget with `logs` None. It may raise `KeyboardInterrupt`.
        verbose: 0 silent, 1 a progress bar over candidates × epochs, "auto" (a bar in a
            notebook or an interactive session). Defaults to `"auto"`.

    Returns:
        A `FixResult`; `.model` is the best candidate's trained model.

    Raises:
        UsageError: No labels, no loss, an unknown candidate or metric, a bad budget.
        FixInterrupted: Ctrl-C (a `KeyboardInterrupt`); its `.result` holds the finished candidates.

    Example:
        >>> result = deadrelu.fix(model, x_train, y_train, validation_split=0.1, epochs=2)
        >>> result.best, result.verdict
        >>> result.model.save("fixed.keras")
    """
    import deadrelu.validation as validation
    from deadrelu.engine.losses import compile_config
    from deadrelu.fixes.retrain import preserved_random_state, split_data
    from deadrelu.progress import Progress, resolve_verbose

    if isinstance(model, (str, os.PathLike)):
        from deadrelu.io.loading import load_model

        model = load_model(model)
    validation.model(model)
    epochs = validation.positive_int(epochs, "epochs")
    steps = validation.positive_int(steps, "steps", optional=True)
    batch_size = validation.positive_int(batch_size, "batch_size")
    probe_samples = validation.positive_int(probe_samples, "probe_samples")
    seed = validation.non_negative_int(seed, "seed")
    if loss is None and not compile_config(model).get("loss"):
        raise UsageError(
            'the model stores no loss, and every candidate is trained with it: pass `loss=` (e.g. `loss="mse"`)'
        )
    pairs = None if candidates is None else parse_candidates(candidates)
    metric = _metric_name(metric)
    x, y = _arrays(x, y, model)
    if validation_data is None and validation_split is None:
        validation_split = 0.2
    if validation_data is not None:
        validation_data = _arrays(validation_data[0], validation_data[1], model, what="validation_data")
    x_train, y_train, x_val, y_val = split_data(x, y, validation_data, validation_split)
    budget = 1 if steps is not None else epochs

    with preserved_random_state(), Progress("fix", verbose=resolve_verbose(verbose), unit="epochs") as bar:
        tournament = _Tournament(
            model,
            (x_train, y_train, x_val, y_val),
            probe_samples=probe_samples,
            epochs=epochs,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            loss=loss,
            learning_rate=learning_rate,
            metric=metric,
        )
        chosen, why = tournament.start(pairs)
        tournament.plan(chosen)
        total = budget * len(chosen)
        bar.start(total)
        if on_start is not None:
            on_start(total)

        def epoch_done(name: str, epoch: int, logs: dict | None) -> None:
            bar.advance(1)
            if on_epoch is not None:
                on_epoch(name, epoch, logs)

        try:
            for label, kind in chosen:
                tournament.run(label, kind, budget, epoch_done)
        except KeyboardInterrupt as exc:
            raise FixInterrupted(tournament.result(why, interrupted=True)) from exc
    return tournament.result(why)


class _Tournament:
    """The state of one `fix` call: the data, the first scan, the finished candidates."""

    def __init__(self, model, split, *, probe_samples, epochs, steps, batch_size, seed, loss, learning_rate, metric):
        from deadrelu.data import count_samples, map_arrays

        self.model = model
        self.x_train, self.y_train, self.x_val, self.y_val = split
        self.probe = map_arrays(lambda a: a[:probe_samples], self.x_val)
        self.epochs, self.steps, self.batch_size, self.seed = epochs, steps, batch_size, seed
        self.loss, self.learning_rate, self.metric = loss, learning_rate, metric
        self.done: list[Candidate] = []
        self.shared: set[str] = set()
        self.built: dict[str, list] = {}  # repair → [untrained model, check, notes, skipped, before]
        self.report = None
        self.notes: list[str] = []
        self.settings = {
            "epochs": None if steps is not None else epochs,
            "steps": steps,
            "batch_size": batch_size,
            "seed": seed,
            "train_samples": count_samples(self.x_train),
            "validation_samples": count_samples(self.x_val),
            "probe_samples": count_samples(self.probe),
        }

    def start(self, pairs) -> tuple[list[tuple[str, str]], str]:
        """Scans the model on the probe data (with the why-analysis when the candidates are not
        given) and returns the candidates and why they were chosen."""
        from deadrelu.engine.scanner import scan

        self.report = scan(self.model, self.probe, why=pairs is None, verbose=0)
        if pairs is not None:
            return pairs, "as asked"
        kinds, why = default_candidates(self.report)
        return [(kind, kind) for kind in kinds], why

    def plan(self, chosen: list[tuple[str, str]]) -> None:
        """Notes the repairs built more than once (`lr` is `baseline`'s, `revive+lr` is `revive`'s):
        each is built and checked once, and later candidates start from a copy of it."""
        repairs = [REPAIR[kind] for _, kind in chosen]
        self.shared = {repair for repair in repairs if repairs.count(repair) > 1}

    def run(self, label: str, kind: str, budget: int, epoch_done) -> None:
        """Builds, compiles, trains and scans one candidate; appends it to `done`."""
        from deadrelu.engine.losses import match_labels
        from deadrelu.engine.scanner import scan
        from deadrelu.fixes.retrain import base_learning_rate, compile_like, evaluate, fit_variant

        start = time.perf_counter()
        candidate = Candidate(name=label, kind=kind)
        repair = REPAIR[kind]
        cached = self.built.get(repair)
        if cached is not None:  # the same repair again: a copy of the checked model, the same "before"
            from deadrelu.fixes.model_utils import copy_model

            model, candidate.check, notes, candidate.skipped, before = cached
            candidate.notes = list(notes)
            built = None if model is None else copy_model(model)
        else:
            built, before = self._build(kind, candidate), None
            if repair in self.shared:
                from deadrelu.fixes.model_utils import copy_model

                keep = None if built is None else copy_model(built)
                self.built[repair] = [keep, candidate.check, list(candidate.notes), candidate.skipped, None]
        scale = LR_FACTOR if kind in ("lr", "revive+lr") else 1.0
        if built is not None:
            try:
                compile_like(
                    built, self.model, loss=self.loss, learning_rate=self.learning_rate, learning_rate_scale=scale
                )
            except UsageError as error:
                if scale == 1.0 or "schedule" not in str(error):
                    raise
                candidate.skipped, built = str(error).split(";")[0], None
        if built is None:
            for epoch in range(budget):
                epoch_done(label, epoch, None)
            candidate.seconds = time.perf_counter() - start
            self.done.append(candidate)
            return
        fit_y, val_y = match_labels(self.y_train, built), match_labels(self.y_val, built)
        if before is None:
            before = self._with_data_loss(built, evaluate(built, self.x_val, val_y, max(self.batch_size, 256)))
            if repair in self.built:
                self.built[repair][4] = before
        candidate.before = dict(before)
        self._check_metric(candidate.before)
        candidate.learning_rate = base_learning_rate(built.optimizer)
        fitted = fit_variant(
            built,
            self.x_train,
            fit_y,
            validation_data=(self.x_val, val_y),
            epochs=self.epochs,
            batch_size=self.batch_size,
            seed=self.seed,
            steps=self.steps,
            on_epoch=lambda epoch, logs: epoch_done(label, epoch, dict(logs or {})),
        )
        candidate.history, candidate.fit_seconds = fitted.history, fitted.seconds
        last = {key[4:]: values[-1] for key, values in fitted.history.items() if key.startswith("val_")}
        candidate.after = self._with_data_loss(built, last)
        after = scan(built, self.probe, verbose=0)
        candidate.units_after, candidate.dead_after = after.summary["units"], after.summary["dead"]
        candidate.dead_fraction_after = after.summary["dead_fraction"] if candidate.units_after else None
        candidate.params = int(built.count_params())
        candidate.model = built
        candidate.seconds = time.perf_counter() - start
        self.done.append(candidate)

    def _build(self, kind: str, candidate: Candidate):
        """The candidate's model (a new one), or None with `candidate.skipped` saying why."""
        from deadrelu.fixes.model_utils import copy_model

        try:
            if kind in ("baseline", "lr"):
                return copy_model(self.model)
            if kind in ("leaky", "prelu"):
                from deadrelu.fixes.patch import patch_model

                patched = patch_model(self.model, kind, data=self.probe)
                candidate.notes += patched.notes
                candidate.check = patched.check.describe() if patched.check is not None else None
                if not patched.changed:
                    candidate.skipped = "no ReLU site can be rewritten" + (
                        f" ({next(iter(patched.skipped.values()))})" if patched.skipped else ""
                    )
                    return None
                return patched.model
            if kind in ("revive", "revive+lr"):
                from deadrelu.fixes.revive import revive_model

                revived = revive_model(self.model, self.report, data=self.probe, seed=self.seed)
                candidate.check = revived.check.describe() if revived.check is not None else None
                if not revived.units_revived:
                    candidate.skipped = "no dead unit to revive"
                    return None
                return revived.model
            from deadrelu.fixes.prune import prune_model

            pruned = prune_model(self.model, self.report, data=self.probe)
            candidate.check = pruned.check.describe() if pruned.check is not None else None
            if pruned.model is None:
                reason = next(iter(pruned.skipped.values()), None) if pruned.skipped else None
                candidate.skipped = f"no dead unit can be removed ({reason})" if reason else "no dead unit to remove"
                return None
            return pruned.model
        except (UnsupportedModelError, OutputCheckError) as error:
            candidate.skipped = str(error).split("\n")[0]
            return None

    def _with_data_loss(self, model, values: dict[str, float]) -> dict[str, float]:
        """`values` with `data_loss`: `loss` minus the weights' regularisation penalties (None
        when an activity regulariser adds a penalty that depends on the data)."""
        out = dict(values)
        from deadrelu.fixes.retrain import weight_penalty

        penalty = weight_penalty(model)
        out[DATA_LOSS] = None if penalty is None or "loss" not in values else values["loss"] - penalty
        return out

    def _check_metric(self, before: dict) -> None:
        if self.metric not in before:
            names = ", ".join(sorted(before))
            raise UsageError(f"`metric={self.metric!r}` is not measured on this model; choose from {names}")

    def result(self, why: str, *, interrupted: bool = False) -> FixResult:
        """The verdict over the finished candidates."""
        metric, notes = self.metric, list(self.notes)
        if metric == DATA_LOSS and any(c.trained and c.after.get(DATA_LOSS) is None for c in self.done):
            metric = "loss"
            notes.append(
                "an activity regulariser adds a penalty that depends on the data: ranked by the loss as Keras "
                "reports it (penalties included)"
            )
        higher = not lower_is_better(metric)
        best, ties, verdict = (None, [], "") if interrupted else judge(self.done, metric, higher)
        if interrupted:
            finished = sum(c.trained for c in self.done)
            verdict = f"interrupted after {len(self.done)} candidate(s) ({finished} trained): no best chosen"
        summary = self.report.summary if self.report is not None else {}
        return FixResult(
            candidates=list(self.done),
            metric=metric,
            higher_is_better=higher,
            best=best,
            ties=ties,
            verdict=verdict,
            settings={**self.settings, "chosen": why},
            dead_fraction_before=summary.get("dead_fraction"),
            causes=summary.get("causes"),
            interrupted=interrupted,
            notes=notes,
        )


def _metric_name(metric: str | None) -> str:
    if metric is None:
        return DATA_LOSS
    if not isinstance(metric, str) or not metric.strip():
        raise UsageError(f'`metric` must be a metric name such as "accuracy" or "loss", got {metric!r}')
    metric = metric.strip()
    return metric[4:] if metric.startswith("val_") else metric


def _arrays(x, y, model, *, what: str = "x") -> tuple:
    """`(x, y)` as arrays: given arrays as they are, anything else read with its labels."""
    if y is not None and _is_arrays(x):
        return x, y
    from deadrelu.data import load_data

    data = load_data(x, model, labels=y)
    if not data.has_labels:
        raise UsageError(
            f"`{what}` has no labels, and fix trains every candidate: pass `y=` (or data with a 'y' array)"
            if what == "x"
            else "`validation_data` needs labels: pass `(x_val, y_val)`"
        )
    import keras

    xs, ys = zip(*data.batches(4096, labels=True))
    join = lambda parts: keras.tree.map_structure(lambda *arrays: np.concatenate(arrays), *parts)  # noqa: E731
    return join(xs), join(ys)


def _is_arrays(x) -> bool:
    if isinstance(x, np.ndarray):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(a, np.ndarray) for a in x)
    if isinstance(x, dict) and x:
        return all(isinstance(a, np.ndarray) for a in x.values())
    return False

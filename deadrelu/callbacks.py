"""`DeadReluMonitor`: the scan as a Keras callback, watching units die while a model trains.

The monitor wraps the same `Probe` as `deadrelu.scan`. The probe is traced once, at the first
check, and reused for every later one: a check costs one inference pass over the probe data.
"""

from __future__ import annotations

import numbers
import os
import sys
from typing import Any

import keras

import deadrelu.validation as validation
from deadrelu._keras_compat import fit_callbacks
from deadrelu.engine.scanner import dormant_threshold
from deadrelu.errors import UsageError
from deadrelu.report import Report, Thresholds, build_report
from deadrelu.timeline import Check, FitSummary, Timeline, count, make_check, summarize_fit
from deadrelu.views.tensorboard import SummaryWriter, require_tensorboard

_ACTIONS = (None, "warn", "stop", "revive")

# Models with at most this many sites log every site's dead fraction from the first check on, so
# `CSVLogger` (which fixes its columns at the first epoch) gets a column per site; larger models
# log a site once it is flagged, to keep the logs readable.
LOG_EVERY_SITE_UP_TO = 32


class DeadReluMonitor(keras.callbacks.Callback):
    """Scans the model on probe data during training and acts when units die.

    At the end of every epoch (or every `check_freq` batches) the monitor measures the probe data
    in inference mode and writes into the epoch's `logs`: `deadrelu/dead_fraction`; with
    `dormant=τ` `deadrelu/dormant_fraction` (ReDo's τ-dormant units, dead ones included, over all
    units); with `on_dead="revive"` `deadrelu/revived` (units re-initialised at the check),
    `deadrelu/revived_alive` and `deadrelu/revived_alive_fraction` (of the units revived at the
    previous check, how many and which share are alive at this one; NaN when it revived none); and
    with `log_details=True` also `deadrelu/dying_fraction`, `deadrelu/non_finite_fraction` (units
    whose outputs or own weights are NaN or ±inf) and `deadrelu/<path>/dead_fraction` for every
    site (for models with more than 32 sites: for each site from its first flag on, and `CSVLogger`
    only keeps the columns of the first epoch) — so `History`, `CSVLogger` and `TensorBoard`
    record them with no extra code. List the monitor before `TensorBoard`/`CSVLogger` in `callbacks=[...]`: Keras runs
    callbacks in order, and those read the logs when their turn comes.

    With a `keras.callbacks.TensorBoard` in the same `callbacks` list (in any order), or with
    `tensorboard="logs"`, the monitor also writes at each check, into the run `<logdir>/deadrelu`:
    the dead and dying fractions (model and per site), a histogram of each site's unit active
    rates (`deadrelu/<path>/active_rate`) and the unit map image (`deadrelu/unit_map`) — whatever
    the order of the callbacks (see `deadrelu.views.tensorboard`).

    When a fit ends after two checks or more (or after an action), the monitor keeps a computed
    verdict in `summary` (a `deadrelu.timeline.FitSummary`) and, with `verbose=1`, prints its line:
    the dead share at the first and the last check, better / no better / worse, the revivals and
    how many revived units were alive at the next check, and the validation loss when the logs
    have one. When most units revived at a check are dead again at the next one, it says so once
    per fit, with the likely reason and what to try.

    Epochs are counted from 1 in everything the monitor prints and records (`Check.epoch`, the
    lines, tables and figures); TensorBoard steps are Keras's, from 0 (see `tensorboard`).

    One monitor can serve several `fit` calls: everything it records about a fit (timeline,
    warnings already given, patience, revivals, summary) starts afresh at each `on_train_begin`.

    Args:
        data: Probe inputs: anything `deadrelu.scan` accepts (array, path, `tf.data.Dataset`,
            ...). A few hundred to a few thousand samples are plenty.
        check_freq: `"epoch"` or integer. With `"epoch"`, the monitor checks at the end of each
            epoch. With an integer, it checks at the end of every this many training batches
            (counted from the start of each `fit`; epoch logs then carry the latest check).
            Checking by batches makes Keras call a batch hook, which turns off its asynchronous
            dispatch for the whole fit. Defaults to `"epoch"`.
        batch_size: Probe batch size. Defaults to `256`.
        samples: Use only the first `samples` probe samples; `None` uses them all. Defaults to
            `None`.
        rescale: Multiply the probe inputs by this factor (e.g. `1/255`), as `deadrelu.scan`
            does: for data stored unscaled that the model is trained on scaled. Defaults to `None`.
        on_dead: What to do when units die: `None` (only record), `"warn"` (one line per newly
            flagged site), `"stop"` (end training, like `EarlyStopping`) or `"revive"`
            (re-initialise the dead units in place — ReDo, `deadrelu.revive_model(model, report,
            in_place=True)`, checked on the probe data — and reset the optimizer's moment slots
            for the re-initialised entries). Whatever it is, a check that finds NaN or ±inf
            in the weights or the site outputs says once that the model has diverged, and where
            (verbose 1); then `"stop"` ends training at once, and `"revive"` revives nothing while
            the model holds them. Defaults to `"warn"`.
        max_dead_fraction: `"stop"` and `"revive"` act when the model's dead fraction exceeds
            this for more than `patience` consecutive checks. Defaults to `0.10`.
        patience: Checks over `max_dead_fraction` to tolerate before acting. Defaults to `0`.
        dying_threshold: Active rate under which a live unit is dying. Defaults to `0.01`.
        flag_threshold: Dead share from which a site is flagged. Defaults to `0.10`.
        dormant: ReDo's τ. With a number, `on_dead` acts on the τ-dormant units (dormancy ≤ τ,
            dead units included: `deadrelu.engine.dormancy.dormant_units`) instead of the dead ones:
            `"warn"` flags a site whose dormant share reaches `flag_threshold`, `"stop"` and
            `"revive"` compare the model's dormant fraction with `max_dead_fraction`, and
            `"revive"` re-initialises the dormant units (`revive_model(..., dormant=τ)`; the
            outputs then change by their contribution, which is measured and not refused). The
            logs also get `deadrelu/dormant_fraction`. Defaults to `None` (dead units only).
        seed: Seed for the re-initialisation of revived units; `None` draws a fresh one.
            Defaults to `None`.
        verbose: Verbosity mode, 0 or 1. Mode 0 is silent, mode 1 prints one line per event
            (a site flagged, training stopped, units revived). `True`/`False` mean 1/0.
            Defaults to `1`.
        tensorboard: Where to write TensorBoard summaries: a log folder (as given to
            `keras.callbacks.TensorBoard`; they go into its `deadrelu` run), `None` for the log
            folder of a `keras.callbacks.TensorBoard` in the fit's callbacks (none without one),
            or `False` for none. Steps are epochs with `check_freq="epoch"`, training steps
            otherwise. Needs the `tensorboard` package (`pip install 'deadrelu[tensorboard]'`).
            The epoch steps are Keras's own (from 0: a check at the end of epoch `Check.epoch` is
            written at step `Check.epoch - 1`, Keras's step for that epoch's `epoch_loss`), so the
            curves line up. Defaults to `None`.
        strategy: A `tf.distribute.Strategy` to check on all its replicas (each worker reads its
            shard of `data`; every worker gets the same check, so `"stop"` stops them all at the
            same epoch and `"revive"` draws the same new weights on every worker — with
            `seed=None`, from a seed derived from the dead units and the weights — and assigns
            them, and resets the optimizer slots, on every replica). Defaults to None: the
            strategy the model was built under, if any.
        log_details: Also write the dying and non-finite fractions and each site's dead fraction
            into the epoch logs (the progress bar, `History`, `CSVLogger`). Defaults to `False`:
            the model's dead fraction only (and the dormant and revival keys), so Keras's
            progress line stays short.

    Attributes:
        timeline: The checks of the current (or last) `fit`, in order: one `Check` per scan,
            with its epoch, step, dead units per site, what changed since the previous check
            and the action taken. Emptied when a new `fit` begins.
        last_report: The `Report` of the latest check, or `None` before the first one.
        revivals: How many times the monitor revived units during the current (or last) `fit`.
        summary: The `deadrelu.timeline.FitSummary` of the last `fit` that ran two checks or more
            (or acted); None before, or after a fit with fewer checks.

    Example:

    ```python
    monitor = deadrelu.DeadReluMonitor(x_val[:1000], on_dead="revive")
    model.fit(x, y, epochs=10, callbacks=[monitor])
    monitor.timeline[-1].dead_fraction   # the model's dead share at the last check
    monitor.plot("dead_units.png")

    # Check every 100 batches instead of every epoch:
    monitor = deadrelu.DeadReluMonitor(x_val[:1000], check_freq=100)
    ```
    """

    def __init__(
        self,
        data: Any,
        *,
        check_freq: str | int = "epoch",
        batch_size: int = 256,
        samples: int | None = None,
        rescale: float | None = None,
        on_dead: str | None = "warn",
        max_dead_fraction: float = 0.10,
        patience: int = 0,
        dying_threshold: float = 0.01,
        flag_threshold: float = 0.10,
        dormant: float | None = None,
        seed: int | None = None,
        verbose: int | bool = 1,
        tensorboard: str | os.PathLike[str] | bool | None = None,
        strategy: Any = None,
        log_details: bool = False,
    ) -> None:
        super().__init__()
        on_dead = validation.one_of(on_dead, "on_dead", _ACTIONS)
        self.data = data
        self.check_freq = check_freq
        self.batch_size = validation.positive_int(batch_size, "batch_size")
        self.samples = validation.positive_int(samples, "samples", optional=True)
        self.rescale = validation.positive_number(rescale, "rescale", optional=True, example="1/255")
        self.on_dead = on_dead
        self.max_dead_fraction = validation.fraction(max_dead_fraction, "max_dead_fraction")
        self.patience = validation.non_negative_int(patience, "patience")
        self.dormant = dormant_threshold(dormant)
        self.thresholds = Thresholds(
            dying=validation.fraction(dying_threshold, "dying_threshold"),
            flag=validation.fraction(flag_threshold, "flag_threshold"),
            dormant=self.dormant,
        )
        self.seed = validation.seed(seed)
        self.verbose = _verbosity(verbose)
        self.tensorboard = _tensorboard_option(tensorboard)
        self.strategy = strategy
        self.log_details = validation.boolean(log_details, "log_details")
        self._strategy = None  # resolved against the model of the fit
        self._probe = None  # the model's cached probe, kept across fits: traced once
        self._probe_data = None
        self._summaries: SummaryWriter | None = None  # open during a fit with a TensorBoard log folder
        self._reset()

    @property
    def check_freq(self) -> str | int:
        """`"epoch"` or a number of batches: when the monitor checks (see the class docstring)."""
        return self._check_freq

    @check_freq.setter
    def check_freq(self, value: str | int) -> None:
        self._check_freq = _validate_check_freq(value)
        if self._check_freq == "epoch":
            self.__dict__.pop("on_train_batch_end", None)
        else:
            # Defined only when needed: Keras gives up asynchronous dispatch for the whole fit
            # when any callback overrides a batch hook.
            self.on_train_batch_end = self._check_on_batch

    def _reset(self) -> None:
        """Forgets everything recorded about a fit (called at each `on_train_begin`)."""
        self.timeline = Timeline()
        self.last_report: Report | None = None
        self.revivals = 0
        self.summary: FitSummary | None = None
        self._relapse_warning: str | None = None  # said once per fit: revived units died again
        self._val_losses: list[float] = []  # the epoch logs' `val_loss`, in order
        self._logged_sites: list[str] = []  # sites with a per-site series in the logs
        self._flagged: set[str] = set()  # sites flagged at any check of this fit (warned once)
        self._diverged = False  # whether a check of this fit found NaN/inf (said once)
        self._strikes = 0  # consecutive checks over max_dead_fraction
        self._epoch = 0
        self._batches_since_check = 0
        self._last_batch: int | None = None

    # -- Keras hooks ----------------------------------------------------------------------

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._reset()
        self._prepare()
        self._open_summaries()

    def _prepare(self) -> None:
        """Loads the probe data for the model, and traces the probe unless it is this model's already."""
        from deadrelu.data import load_data
        from deadrelu.engine.distribute import resolve_strategy
        from deadrelu.engine.probe import probe_for

        strategy = resolve_strategy(self.strategy, self.model)
        self._probe_data = load_data(
            self.data, self.model, samples=self.samples, rescale=self.rescale, strategy=strategy
        )
        if self._probe is None or self._probe.model is not self.model or strategy is not self._strategy:
            # The model's cached probe: a new monitor on a model already scanned or watched reuses its
            # traced (on JAX: compiled) step, instead of compiling it again in the first check.
            self._probe = probe_for(self.model, strategy=strategy)
        self._strategy = strategy

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._summaries is not None:
            self._summaries.close()
            self._summaries = None
        if len(self.timeline) >= 2 or any(c.action for c in self.timeline):
            self.summary = summarize_fit(
                self.timeline,
                val_losses=self._val_losses,
                measure="dead" if self.dormant is None else "dormant",
                warning=self._relapse_warning,
            )
            self._say(self.summary.line)

    def _open_summaries(self) -> None:
        """Opens the TensorBoard writer: `tensorboard`'s folder, or a TensorBoard callback's."""
        if self._summaries is not None:
            self._summaries.close()
            self._summaries = None
        logdir = self.tensorboard
        if logdir is None:  # the log folder of a TensorBoard callback of this fit, in any order
            logdir = next((c.log_dir for c in fit_callbacks(self) if isinstance(c, keras.callbacks.TensorBoard)), None)
        if logdir:
            self._summaries = SummaryWriter(logdir)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch

    def _check_on_batch(self, batch: int, logs: dict | None = None) -> None:
        # `batch` restarts at 0 each epoch and, with `steps_per_execution`, advances by more than
        # one between calls: count the batches it stands for.
        if self._last_batch is None or batch <= self._last_batch:
            self._batches_since_check += batch + 1
        else:
            self._batches_since_check += batch - self._last_batch
        self._last_batch = batch
        if self._batches_since_check >= self._check_freq:
            self._batches_since_check = 0
            self.check()

    def _steps(self) -> int:
        """Training steps taken so far (the optimizer counts them, across fits)."""
        iterations = getattr(getattr(self.model, "optimizer", None), "iterations", None)
        return int(iterations.numpy()) if iterations is not None else 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self._check_freq == "epoch":
            self.check()
        if logs is not None and self.timeline:
            logs.update(self._log_values(self.timeline[-1]))
        if logs is not None and isinstance(logs.get("val_loss"), numbers.Real):
            self._val_losses.append(float(logs["val_loss"]))

    # -- the check ------------------------------------------------------------------------

    def check(self, model: keras.Model | None = None) -> Check:
        """Scans the probe data now, records a `Check` in `timeline`, and acts on it.

        Called by the Keras hooks at the frequency `check_freq` sets; call it yourself for a check
        at another moment: during `fit`, or outside one on the model given by `model` (or by
        `set_model`).

        Args:
            model: The model to check; it becomes the monitor's model (`set_model`). Defaults to
                None: the monitor's model (the model of the `fit`).

        Returns:
            The new `Check`.

        Raises:
            RuntimeError: The monitor has no model: it is not in a `fit`, and none was given.

        Example:
            >>> monitor = deadrelu.DeadReluMonitor(x_val[:500], on_dead=None)
            >>> monitor.check(model=model).dead_fraction
        """
        if model is not None and model is not self.model:
            self.set_model(model)
        if self.model is None:
            raise RuntimeError(
                "DeadReluMonitor.check() has no model to scan: call it once `fit` has begun (or after "
                "`monitor.set_model(model)`), or pass the model: `monitor.check(model=model)`"
            )
        if self._probe is None or self._probe_data is None or self._probe.model is not self.model:
            self._prepare()
        # Mid-epoch, JAX's `fit` keeps the weights outside the model: put them back (`fit` reads
        # them again at its next batch, revived units included). Elsewhere a no-op.
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        result = self._probe.run(self._probe_data.batches(self.batch_size))
        report = build_report(
            result,
            thresholds=self.thresholds,
            model={"path": None, "name": self.model.name, "sha256": None, "format": "in-memory"},
            data={
                "source": self._probe_data.source,
                "samples": result.samples,
                "inputs": self._probe_data.input_ranges(),
            },
            settings={"batch_size": self.batch_size},
            notes=result.notes,
        )
        previous = self.timeline[-1] if self.timeline else None
        check = make_check(report, previous, epoch=self._epoch + 1, step=self._steps())
        newly_flagged = [s.path for s in report.sites if self._site_flagged(s) and s.path not in self._flagged]
        self._flagged.update(newly_flagged)
        if not self._logged_sites and len(report.sites) <= LOG_EVERY_SITE_UP_TO:
            self._logged_sites = [s.path for s in report.sites]  # fixed columns from the first check
        else:
            self._logged_sites += [path for path in newly_flagged if path not in self._logged_sites]
        self.timeline.append(check)
        self.last_report = report
        self._check_relapse(check)
        which = "dead" if self.dormant is None else f"dormant (≤ {self.dormant:g})"
        if self.on_dead == "warn":
            for path in newly_flagged:
                site = report.site(path)
                n = len(site.dead) if self.dormant is None else len(site.dormant or ())
                share = n / site.units if site.units else 0.0
                self._say(f"epoch {check.epoch}: {path} flagged, {n}/{site.units} units {which} ({share:.0%})")
        if check.diverged:
            self._on_divergence(check, report)
        else:
            self._act(check, report, which)
        if self._summaries is not None:  # after the action: the revival scalars are the check's
            step = check.epoch - 1 if self._check_freq == "epoch" else check.step
            self._summaries.write(report, step=step, check=check if self.on_dead == "revive" else None)
        return check

    def _act(self, check: Check, report: Report, which: str) -> None:
        """`"stop"` or `"revive"` once the dead (dormant) share has been over the limit long enough."""
        fraction = check.dead_fraction if self.dormant is None else (check.dormant_fraction or 0.0)
        self._strikes = self._strikes + 1 if fraction > self.max_dead_fraction else 0
        if self._strikes > self.patience and self.on_dead in ("stop", "revive"):
            check.action = self.on_dead
            if self.on_dead == "stop":
                self._say(
                    f"epoch {check.epoch}: {fraction:.1%} of units {which} "
                    f"(> {self.max_dead_fraction:.0%}); stopping training"
                )
                self.model.stop_training = True
            else:
                self._revive(check, report)
            self._strikes = 0

    def _site_flagged(self, site) -> bool:
        """A site's flag for the monitor: the report's (dead share), or with `dormant` its dormant share."""
        if self.dormant is None:
            return site.flagged
        return bool(site.units) and len(site.dormant or ()) / site.units >= self.thresholds.flag

    def _on_divergence(self, check: Check, report: Report) -> None:
        """A check that found NaN or ±inf: said once per fit whatever `on_dead`; "stop" ends training;
        "revive" does not act (re-initialising dead units cannot repair non-finite weights)."""
        from deadrelu.engine.non_finite import divergence_text

        if self.on_dead == "stop":
            check.action = "stop"
            self.model.stop_training = True
        if not self._diverged or self.on_dead == "stop":
            then = {"stop": "; stopping training", "revive": "; no unit is revived while it holds NaN/inf"}
            self._say(f"epoch {self._epoch + 1}: {divergence_text(report.summary)}{then.get(self.on_dead, '')}")
        self._diverged = True
        self._strikes = 0

    def _revive(self, check: Check, report: Report) -> None:
        from deadrelu.fixes.revive import revive_model

        # In place, on the probe data the report was measured on: a second draw for units that
        # still do not fire, the outputs checked, the optimizer's slots of the changed entries reset.
        result = revive_model(
            self.model,
            report,
            data=self.data,
            seed=self.seed,
            dormant=self.dormant,
            in_place=True,
            batch_size=self.batch_size,
            samples=self.samples,
            rescale=self.rescale,
            strategy=self._strategy,
        )
        self.revivals += 1
        check.revived = {path: list(units) for path, units in result.revived.items() if units}
        which = "dead" if self.dormant is None else f"dormant (≤ {self.dormant:g})"
        changed = ""
        if self.dormant is not None and result.check is not None:
            changed = f"; outputs changed by max |Δ| = {result.check.max_abs_diff:.2g}"
        self._say(
            f"epoch {self._epoch + 1}: revived {result.units_revived} {which} units (ReDo); reset "
            f"{result.optimizer_entries_reset} optimizer slot entries{changed}"
        )

    def _check_relapse(self, check: Check) -> None:
        """Says once per fit when most units revived at the previous check are dead again at this one."""
        share = check.revived_alive_fraction
        if share is None or share >= 0.5 or self._relapse_warning is not None:
            return
        revived = count(self.timeline[-2].revived)
        again = revived - count(check.revived_alive)
        self._relapse_warning = (
            f"epoch {check.epoch}: {again:,} of the {revived:,} units revived at epoch {self.timeline[-2].epoch} "
            f"are dead again ({again / revived:.0%}): reviving does not stick. Training kills them again "
            f"(the why-analysis's killed_in_training), most often with a learning rate too high"
            f"{_learning_rate_text(self.model)}. Try a lower learning rate, `deadrelu patch --to leaky` "
            "(leaky units cannot die), or `deadrelu fix` to compare the fixes"
        )
        self._say(self._relapse_warning)

    def _log_values(self, check: Check) -> dict:
        values = {"deadrelu/dead_fraction": check.dead_fraction}
        if check.dormant_fraction is not None:
            values["deadrelu/dormant_fraction"] = check.dormant_fraction
        if self.on_dead == "revive":
            share = check.revived_alive_fraction
            values["deadrelu/revived"] = count(check.revived)
            values["deadrelu/revived_alive"] = count(check.revived_alive)
            values["deadrelu/revived_alive_fraction"] = float("nan") if share is None else share
        if self.log_details:
            values["deadrelu/dying_fraction"] = check.dying_fraction
            values["deadrelu/non_finite_fraction"] = check.non_finite_fraction
            for path in self._logged_sites:
                values[f"deadrelu/{path}/dead_fraction"] = check.site_dead_fraction(path)
        return values

    def _say(self, message: str) -> None:
        if self.verbose:
            print(f"deadrelu: {message}", file=sys.stdout, flush=True)

    # -- outputs --------------------------------------------------------------------------

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Saves a figure of each site's dead share over the checks of the last `fit`.

        The figure has a dashed line at `max_dead_fraction` (with `on_dead="stop"` or `"revive"`;
        else at `flag_threshold`), and a y axis from 0 to a little above the largest share.

        Args:
            path: Where to write the figure; the format follows the extension (PNG by default).
        """
        from deadrelu.views.plots.curves import plot_timeline  # matplotlib only when a figure is asked for

        acts = self.on_dead in ("stop", "revive")
        plot_timeline(
            self.timeline,
            path,
            title=f"{self.model.name}: dead units during training",
            threshold=self.max_dead_fraction if acts else self.thresholds.flag,
            threshold_label=f"max_dead_fraction: {self.on_dead} above"
            if acts
            else "flag_threshold: a site flagged from",
        )


def _learning_rate_text(model) -> str:
    """ " (this model's: SGD at 0.5, 50× its default 0.01)", or "" when the optimizer does not say."""
    from deadrelu.diagnosis.training import training_config

    try:
        config = training_config(model)
    except Exception:  # noqa: BLE001 — a hint only: an optimizer we cannot read gives none
        return ""
    if not config or config.get("learning_rate") is None:
        return ""
    text = f" (this model's: {config['optimizer']} at {config['learning_rate']:g}"
    if config.get("learning_rate_ratio"):
        text += f", {config['learning_rate_ratio']:g}× its default {config['default_learning_rate']:g}"
    return text + ")"


def _validate_check_freq(value: Any) -> str | int:
    if isinstance(value, str) and value == "epoch":
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return int(value)
    raise UsageError(
        f'`check_freq` must be "epoch" or a positive int (a number of batches), got {value!r}; pass '
        '`check_freq="epoch"` to check at the end of each epoch, or e.g. `check_freq=100` to check '
        "every 100 training batches"
    )


def _tensorboard_option(value: Any) -> str | bool | None:
    """`tensorboard` checked: None (a TensorBoard callback's folder), False (none), or a folder."""
    if value is None or value is False:
        return value
    if isinstance(value, (str, os.PathLike)) and os.fspath(value):
        require_tensorboard("`tensorboard`")
        return os.fspath(value)
    raise UsageError(
        f'`tensorboard` must be a log folder (e.g. "logs"), None (the folder of a '
        f"keras.callbacks.TensorBoard in the callbacks) or False (no summaries), got {value!r}"
    )


def _verbosity(value: Any) -> int:
    if isinstance(value, numbers.Integral) and value >= 0:  # bools too: True is 1, False is 0
        return int(value)
    raise UsageError(f"`verbose` must be an int, 0 (silent) or 1 (one line per event), got {value!r}")

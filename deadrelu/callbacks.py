"""`DeadReluMonitor`: the scan as a Keras callback, watching units die while a model trains.

The monitor wraps the same `Probe` as `deadrelu.scan`. The probe is traced once, at the first
check, and reused for every later one: a check costs one inference pass over the probe data.
"""

from __future__ import annotations

import sys

import keras
import numpy as np

from deadrelu._keras_compat import optimizer_tracked_variables
from deadrelu.report import Report, Thresholds, build_report
from deadrelu.timeline import Check, make_check, plot_timeline

_ACTIONS = (None, "warn", "stop", "revive")

# Models with at most this many sites log every site's dead fraction from the first check on, so
# `CSVLogger` (which fixes its columns at the first epoch) gets a column per site; larger models
# log a site once it is flagged, to keep the logs readable.
LOG_EVERY_SITE_UP_TO = 32


class DeadReluMonitor(keras.callbacks.Callback):
    """Scans the model on probe data during training and acts when units die.

    Every `every` epochs (or every `every_steps` batches) the monitor measures the probe data in
    inference mode and writes into the epoch's `logs`:
    `deadrelu/dead_fraction`, `deadrelu/dying_fraction` and `deadrelu/<path>/dead_fraction` for
    every site (for models with more than 32 sites: for each site from its first flag on, and
    `CSVLogger` only keeps the columns of the first epoch) — so `History`, `CSVLogger` and
    `TensorBoard` record them with no extra code. List the monitor before `TensorBoard`/`CSVLogger`
    in `callbacks=[...]`: Keras runs callbacks in order, and those read the logs when their turn comes.

    Args:
        data: Probe inputs: anything `deadrelu.scan` accepts (array, path, `tf.data.Dataset`, ...).
            A few hundred to a few thousand samples are plenty.
        every: Check every this many epochs.
        every_steps: Check every this many training batches instead (epoch logs then carry the
            latest check).
        batch_size: Probe batch size.
        samples: Use only the first `samples` probe samples.
        on_dead: None, "warn" (one line per newly flagged site), "stop" (end training, like
            `EarlyStopping`) or "revive" (re-initialise the dead units in place — ReDo — and reset
            the optimizer's moment slots for the re-initialised entries).
        max_dead_fraction: "stop" and "revive" act when the model's dead fraction exceeds this
            for more than `patience` consecutive checks.
        patience: Checks over the limit to tolerate before acting.
        dying_threshold: Active rate under which a live unit is dying.
        flag_threshold: Dead share from which a site is flagged.
        seed: Seed for the re-initialisation of revived units.
        verbose: Print the monitor's one-line messages.

    Example:
        >>> monitor = deadrelu.DeadReluMonitor(x_val[:1000], on_dead="revive")
        >>> model.fit(x, y, epochs=10, callbacks=[monitor])
        >>> monitor.timeline[-1].dead_fraction
        >>> monitor.plot("dead_units.png")
    """

    def __init__(self, data, *, every: int = 1, every_steps: int | None = None, batch_size: int = 256,
                 samples: int | None = None, on_dead: str | None = "warn", max_dead_fraction: float = 0.10,
                 patience: int = 0, dying_threshold: float = 0.01, flag_threshold: float = 0.10,
                 seed: int | None = None, verbose: bool = True):
        super().__init__()
        if on_dead not in _ACTIONS:
            raise ValueError(f"on_dead must be one of {_ACTIONS}, got {on_dead!r}")
        if every < 1 or (every_steps is not None and every_steps < 1):
            raise ValueError("every and every_steps must be at least 1")
        self.data = data
        self.every = every
        self.every_steps = every_steps
        self.batch_size = batch_size
        self.samples = samples
        self.on_dead = on_dead
        self.max_dead_fraction = max_dead_fraction
        self.patience = patience
        self.thresholds = Thresholds(dying=dying_threshold, flag=flag_threshold)
        self.seed = seed
        self.verbose = verbose
        self.timeline: list[Check] = []
        self.last_report: Report | None = None
        self._probe = None
        self._probe_data = None
        self._logged_sites: list[str] = []  # sites with a per-site series in the logs
        self._flagged: set[str] = set()      # sites flagged at any check so far (warned once)
        self._strikes = 0
        self._epoch = 0
        self.revivals = 0
        if every_steps is not None:
            # Defined only when needed: Keras gives up asynchronous dispatch for the whole fit
            # when any callback overrides a batch hook.
            self.on_train_batch_end = self._check_every_steps

    # -- Keras hooks ----------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        from deadrelu.data import load_data
        from deadrelu.probe import Probe

        self._probe_data = load_data(self.data, self.model, samples=self.samples)
        if self._probe is None or self._probe.model is not self.model:
            self._probe = Probe(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _check_every_steps(self, batch, logs=None):
        if self._steps() % self.every_steps == 0:
            self.check()

    def _steps(self) -> int:
        """Training steps taken so far (the optimizer counts them)."""
        iterations = getattr(getattr(self.model, "optimizer", None), "iterations", None)
        return int(iterations.numpy()) if iterations is not None else 0

    def on_epoch_end(self, epoch, logs=None):
        if self.every_steps is None and (epoch + 1) % self.every == 0:
            self.check()
        if logs is not None and self.timeline:
            logs.update(self._log_values(self.timeline[-1]))

    # -- the check ------------------------------------------------------------------------

    def check(self) -> Check:
        """Scans the probe data now, records a `Check`, and acts on it. Returns the check."""
        result = self._probe.run(self._probe_data.batches(self.batch_size))
        report = build_report(result, thresholds=self.thresholds,
                              model={"path": None, "name": self.model.name, "sha256": None, "format": "in-memory"},
                              data={"source": self._probe_data.source, "samples": result.samples},
                              settings={"batch_size": self.batch_size})
        previous = self.timeline[-1] if self.timeline else None
        check = make_check(report, previous, epoch=self._epoch, step=self._steps())
        newly_flagged = [s.path for s in report.sites if s.flagged and s.path not in self._flagged]
        self._flagged.update(newly_flagged)
        if not self._logged_sites and len(report.sites) <= LOG_EVERY_SITE_UP_TO:
            self._logged_sites = [s.path for s in report.sites]  # fixed columns from the first check
        else:
            self._logged_sites += [path for path in newly_flagged if path not in self._logged_sites]
        self.timeline.append(check)
        self.last_report = report
        if self.on_dead == "warn":
            for path in newly_flagged:
                site = report.site(path)
                self._say(f"epoch {self._epoch + 1}: {path} flagged, {len(site.dead)}/{site.units} units dead "
                          f"({site.dead_fraction:.0%})")
        self._strikes = self._strikes + 1 if check.dead_fraction > self.max_dead_fraction else 0
        if self._strikes > self.patience and self.on_dead in ("stop", "revive"):
            check.action = self.on_dead
            if self.on_dead == "stop":
                self._say(f"epoch {self._epoch + 1}: {check.dead_fraction:.1%} of units dead "
                          f"(> {self.max_dead_fraction:.0%}); stopping training")
                self.model.stop_training = True
            else:
                self._revive(report)
            self._strikes = 0
        return check

    def _revive(self, report: Report) -> None:
        from deadrelu.reviver import revive_in_place

        result = revive_in_place(self.model, report, seed=self.seed, data=self.data, batch_size=self.batch_size,
                                 scan_options={"samples": self.samples})
        reset = reset_optimizer_slots(getattr(self.model, "optimizer", None), result.reinitialized,
                                      result.variables)
        self.revivals += 1
        revived = sum(len(units) for units in result.revived.values())
        self._say(f"epoch {self._epoch + 1}: revived {revived} dead units (ReDo); "
                  f"reset {reset} optimizer slot entries")

    def _log_values(self, check: Check) -> dict:
        values = {"deadrelu/dead_fraction": check.dead_fraction, "deadrelu/dying_fraction": check.dying_fraction}
        for path in self._logged_sites:
            values[f"deadrelu/{path}/dead_fraction"] = check.site_dead_fraction(path)
        return values

    def _say(self, message: str) -> None:
        if self.verbose:
            print(f"deadrelu: {message}", file=sys.stdout, flush=True)

    # -- outputs --------------------------------------------------------------------------

    def plot(self, path: str) -> None:
        """Saves a figure of each site's dead share over training."""
        plot_timeline(self.timeline, path, title=f"{self.model.name}: dead units during training")


def reset_optimizer_slots(optimizer, masks: dict[str, np.ndarray], variables: dict[str, object]) -> int:
    """Zeroes the optimizer's per-variable slots (moments, velocities) where `masks` is True.

    A re-initialised weight must not inherit the running moments of the dead unit it replaces:
    Adam would otherwise keep stepping it with stale statistics.

    Args:
        optimizer: A Keras 3 optimizer (or None: nothing to do).
        masks: Key → boolean mask of the entries to reset.
        variables: Key → the model variable the mask belongs to (`ReviveResult.variables`).

    Returns:
        How many slot entries were reset.
    """
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    tracked = optimizer_tracked_variables(optimizer)
    if not tracked or not masks:
        return 0
    index = {id(v): i for i, v in enumerate(tracked)}  # by identity: paths can repeat
    # Slots are lists aligned with the trainable variables (Adam: _momentums, _velocities, ...).
    slot_lists = [value for name, value in vars(optimizer).items()
                  if value is not tracked and isinstance(value, list) and len(value) == len(tracked)
                  and all(hasattr(slot, "assign") for slot in value)]
    reset = 0
    for key, mask in masks.items():
        i = index.get(id(variables.get(key)))
        if i is None:
            continue
        for slots in slot_lists:
            slot = slots[i]
            if tuple(slot.shape) != tuple(mask.shape):
                continue
            value = np.array(slot.numpy())
            value[mask] = 0
            slot.assign(value)
            reset += int(mask.sum())
    return reset

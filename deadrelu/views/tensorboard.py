"""A report's summaries in TensorBoard, for the monitor and for `deadrelu scan --tensorboard`.

Written with `tf.summary` into `<logdir>/deadrelu`: a run of its own beside the `train` and
`validation` runs that `keras.callbacks.TensorBoard(logdir)` writes, so `tensorboard --logdir`
shows deadrelu's charts next to the training curves. Tags, at each step:

- `deadrelu/dead_fraction`, `deadrelu/dying_fraction`, `deadrelu/non_finite_fraction`: scalars,
  over the model's units (the last: units whose outputs or own weights are NaN or ±inf);
- `deadrelu/dormant_fraction`: a scalar, for a report scanned with `dormant=τ` (the monitor's
  `dormant=`, `deadrelu scan --dormant`);
- `deadrelu/<site path>/dead_fraction`: a scalar per site;
- `deadrelu/<site path>/active_rate`: a histogram of the active rates of the site's units (sites
  the data reached), with buckets of its own (`active_rate_buckets`): the dead units alone in a
  zero-width bucket at 0, the dying ones in (0, dying threshold), the rest in ten equal buckets up
  to 1;
- `deadrelu/unit_map`: an image of every unit, one row per site
  (`deadrelu.views.plots.unit_map_figure`);
- from the training monitor with `on_dead="revive"`, at each check: `deadrelu/revived` (units
  re-initialised after the check), and after a check that revived units, `deadrelu/revived_alive`
  and `deadrelu/revived_alive_fraction` (how many of them, and which share, are alive at this one).

Every tag carries a description (TensorBoard shows it beside the chart).

`tf.summary` comes with TensorFlow, but its histogram, image and scalar ops live in the
`tensorboard` package, which TensorFlow 2.21 no longer installs: `pip install 'deadrelu[tensorboard]'`.
"""

from __future__ import annotations

import importlib.util
import os
from types import TracebackType
from typing import TYPE_CHECKING, Any

from deadrelu.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from deadrelu.report import Report
    from deadrelu.timeline import Check

RUN = "deadrelu"
"""The run (sub-folder of the log folder) the summaries go into."""

DESCRIPTIONS = {
    "dead_fraction": "Dead units (never positive on the probe data) / all units.",
    "dying_fraction": "Dying units (live, active on fewer than the dying threshold of the pairs) / all units.",
    "non_finite_fraction": "Units whose outputs or own weights are NaN or ±inf / all units: 0 until training diverges.",
    "dormant_fraction": "τ-dormant units (mean |output| / the site's mean ≤ τ, dead ones included) / all units.",
    "site_dead_fraction": "Dead units / units of this site.",
    "active_rate": (
        "Active rates of this site's units (share of the probe's sample-position pairs where the unit is "
        "positive). Buckets: [0, 0] the dead units alone; (0, dying threshold) the dying ones; then ten equal "
        "buckets up to 1."
    ),
    "unit_map": "Every unit, one row per site, sorted by active rate; dead units in red.",
    "revived": "Units deadrelu re-initialised (ReDo) after this check; 0 when it revived none.",
    "revived_alive": "Of the units revived at the previous check, those alive at this one.",
    "revived_alive_fraction": (
        "Share of the units revived at the previous check that are alive at this one; under 0.5, most "
        "revived units died again (often a learning rate too high)."
    ),
}
"""The description of each tag (by its last part), written with it."""


def summary_dir(logdir: str | os.PathLike[str]) -> str:
    """The folder the summaries of the log folder `logdir` are written into: `<logdir>/deadrelu`."""
    return os.path.join(os.fspath(logdir), RUN)


def require_tensorboard(what: str = "`tensorboard`") -> None:
    """Raises `UsageError` with the fix when the `tensorboard` package is not installed."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UsageError(
            f"{what} needs the `tensorboard` package, which TensorFlow no longer installs: "
            "pip install 'deadrelu[tensorboard]' (or pip install tensorboard)"
        )


def site_tag(path: str, name: str) -> str:
    """The tag of a per-site summary, e.g. `deadrelu/block_1/conv/active_rate`."""
    return f"{RUN}/{path}/{name}"


class SummaryWriter:
    """Writes reports into `<logdir>/deadrelu` as TensorBoard summaries (the tags of the module docstring).

    The event file is created at the first `write`; each write is flushed, so TensorBoard shows
    it at once. Use it as a context manager, or call `close`.

    Args:
        logdir: The log folder, as given to `keras.callbacks.TensorBoard`.
        images: Also write the unit map (a figure drawn per write). Defaults to `True`.

    Example:

    ```python
    with SummaryWriter("logs") as writer:
        writer.write(deadrelu.scan(model, x), step=0)
    ```
    """

    def __init__(self, logdir: str | os.PathLike[str], *, images: bool = True) -> None:
        require_tensorboard()
        self.logdir = os.fspath(logdir)
        self.path = summary_dir(logdir)
        self.images = images
        self._writer: Any = None

    def write(self, report: Report, step: int, *, check: Check | None = None) -> None:
        """Writes the scalars, the per-site histograms and the unit map of `report` at `step`.

        Args:
            report: The scan to write.
            step: The TensorBoard step.
            check: The monitor's `Check` of this scan when it revives units: also writes
                `deadrelu/revived` and, after a check that revived units, `deadrelu/revived_alive`
                and `deadrelu/revived_alive_fraction`. Defaults to `None`.
        """
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.path)
        summary = report.summary
        units = summary["units"]
        dying = float(report.settings.get("dying_threshold") or 0.01)
        with self._writer.as_default(step=int(step)):
            _scalar("dead_fraction", summary["dead_fraction"])
            _scalar("dying_fraction", summary["dying"] / units if units else 0.0)
            _scalar("non_finite_fraction", summary["non_finite"] / units if units else 0.0)
            if "dormant_fraction" in summary:  # scanned with `dormant=τ`
                _scalar("dormant_fraction", summary["dormant_fraction"])
            for site in report.sites:
                tag, text = site_tag(site.path, "dead_fraction"), DESCRIPTIONS["site_dead_fraction"]
                tf.summary.scalar(tag, site.dead_fraction, description=text)
                if site.reached and site.units:
                    _histogram(site_tag(site.path, "active_rate"), active_rate_buckets(site, dying))
            if self.images and report.sites:
                tf.summary.image(f"{RUN}/unit_map", unit_map_rgba(report)[None], description=DESCRIPTIONS["unit_map"])
            if check is not None:
                from deadrelu.timeline import count

                _scalar("revived", count(check.revived))
                if check.revived_alive_fraction is not None:
                    _scalar("revived_alive", count(check.revived_alive))
                    _scalar("revived_alive_fraction", check.revived_alive_fraction)
        self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file (a later `write` opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def active_rate_buckets(site, dying_threshold: float):
    """A site's active rates as TensorBoard histogram buckets, the dead units in a bucket of their own.

    Args:
        site: A `deadrelu.report.SiteReport` the data reached.
        dying_threshold: The active rate under which a live unit is dying.

    Returns:
        A float64 array of rows (left edge, right edge, count): `[0, 0]` the dead units, `[0, d]`
        the live units with an active rate under `d` (the dying threshold), then ten equal buckets
        over `[d, 1]` (each holding rates from its left edge up to its right one; the last its right
        edge too). Non-finite units are left out.
    """
    import numpy as np

    rates = np.asarray(site.active_rate, dtype=np.float64)
    dead = np.zeros(rates.shape, bool)
    dead[list(site.dead)] = True
    finite = np.isfinite(rates)
    finite[list(site.non_finite)] = False
    live = rates[finite & ~dead]
    d = min(max(float(dying_threshold), 0.0), 1.0)
    edges = np.linspace(d, 1.0, 11)
    counts, _ = np.histogram(live[live >= d], bins=edges)
    rows = [(0.0, 0.0, float(dead.sum())), (0.0, d, float((live < d).sum()))]
    rows += [(float(left), float(right), float(n)) for left, right, n in zip(edges[:-1], edges[1:], counts)]
    return np.array(rows, dtype=np.float64)


def _scalar(name: str, value: float) -> None:
    import tensorflow as tf

    tf.summary.scalar(f"{RUN}/{name}", value, description=DESCRIPTIONS[name])


def _histogram(tag: str, buckets) -> None:
    """Writes prepared buckets (rows of left edge, right edge, count) as a TensorBoard histogram."""
    import tensorflow as tf
    from tensorboard.plugins.histogram import metadata

    tf.summary.write(
        tag, tf.constant(buckets), metadata=metadata.create_summary_metadata(tag, DESCRIPTIONS["active_rate"])
    )


def unit_map_rgba(report: Report):
    """The unit map of `report` (`deadrelu.views.plots.unit_map_figure`) as an RGBA array, height × width × 4, uint8."""
    import tensorflow as tf

    from deadrelu.views.plots import figure_png, unit_map_figure

    return tf.io.decode_png(figure_png(unit_map_figure(report)), channels=4).numpy()

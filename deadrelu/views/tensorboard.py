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
  the data reached);
- `deadrelu/unit_map`: an image of every unit, one row per site
  (`deadrelu.views.plots.unit_map_figure`).

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

RUN = "deadrelu"
"""The run (sub-folder of the log folder) the summaries go into."""


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

    def write(self, report: Report, step: int) -> None:
        """Writes the scalars, the per-site histograms and the unit map of `report` at `step`."""
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.path)
        summary = report.summary
        units = summary["units"]
        with self._writer.as_default(step=int(step)):
            tf.summary.scalar(f"{RUN}/dead_fraction", summary["dead_fraction"])
            tf.summary.scalar(f"{RUN}/dying_fraction", summary["dying"] / units if units else 0.0)
            tf.summary.scalar(f"{RUN}/non_finite_fraction", summary["non_finite"] / units if units else 0.0)
            if "dormant_fraction" in summary:  # scanned with `dormant=τ`
                tf.summary.scalar(f"{RUN}/dormant_fraction", summary["dormant_fraction"])
            for site in report.sites:
                tf.summary.scalar(site_tag(site.path, "dead_fraction"), site.dead_fraction)
                if site.reached and site.units:
                    tf.summary.histogram(site_tag(site.path, "active_rate"), site.active_rate)
            if self.images and report.sites:
                tf.summary.image(f"{RUN}/unit_map", unit_map_rgba(report)[None])
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


def unit_map_rgba(report: Report):
    """The unit map of `report` (`deadrelu.views.plots.unit_map_figure`) as an RGBA array, height × width × 4, uint8."""
    import tensorflow as tf

    from deadrelu.views.plots import figure_png, unit_map_figure

    return tf.io.decode_png(figure_png(unit_map_figure(report)), channels=4).numpy()

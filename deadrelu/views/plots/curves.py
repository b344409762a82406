"""Training curves: the monitor's dead share per epoch and the retrained variants' validation curves.

`timeline_figure` and `plot_timeline` draw a `DeadReluMonitor` timeline, `plot_curves` a
`deadrelu.fixes.retrain.Comparison`.
Like every figure of the package these are plain `Figure` objects: no pyplot, so no backend is
switched in the caller's session. The file format follows the path's extension (PNG by default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from deadrelu.views.terminal import shorten

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from deadrelu.fixes.retrain import Comparison
    from deadrelu.timeline import Check

CURVES_DPI = 110
"""Resolution of the training-curve files."""
REVIVED, STOPPED, THRESHOLD = "#27ae60", "#c0392b", "#7f8c8d"


def plot_timeline(
    checks: list[Check],
    path: str,
    *,
    title: str = "dead units during training",
    threshold: float | None = None,
    threshold_label: str = "threshold",
) -> None:
    """Saves `timeline_figure(checks, ...)` (atomically; the folder of `path` must exist)."""
    _save(timeline_figure(checks, title=title, threshold=threshold, threshold_label=threshold_label), path)


def timeline_figure(
    checks: list[Check],
    *,
    title: str = "dead units during training",
    threshold: float | None = None,
    threshold_label: str = "threshold",
) -> Figure:
    """Each site's dead share over training (and the model's, in black).

    Epochs where the monitor revived units get a green dotted line, the epoch where it stopped
    training a red dashed one. With more than 20 sites the sites are drawn but not named. The y axis
    starts at 0 (with a margin of 2 % of its height below) and ends 15 % above the largest share
    drawn, the threshold included (at most 100 %), so small shares are not flattened against a
    fixed 0–100 % axis.

    Args:
        checks: The monitor's checks (`deadrelu.timeline.Check`), in order; the x axis is
            `Check.epoch` (counted from 1).
        title: Figure title.
        threshold: A share to draw as a horizontal dashed line (e.g. the monitor's
            `max_dead_fraction`), or None for none. Defaults to `None`.
        threshold_label: The legend entry of that line. Defaults to `"threshold"`.

    Returns:
        The figure.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    fig = Figure(figsize=(8.5, 4.8))
    ax = fig.add_subplot()
    top = threshold or 0.0
    if checks:
        x = [c.epoch for c in checks]
        paths = list(checks[-1].units)
        cmap = colormaps["tab20"]
        for i, site_path in enumerate(paths):
            shares = [c.site_dead_fraction(site_path) for c in checks]
            top = max(top, *shares)
            ax.plot(
                x,
                shares,
                marker=".",
                lw=1.2,
                color=cmap(i % 20),
                label=shorten(site_path, 30) if len(paths) <= 20 else None,
            )
        ax.plot(x, [c.dead_fraction for c in checks], color="black", lw=2.4, label="whole model")
        for c in checks:
            if c.action == "revive":
                ax.axvline(c.epoch, color=REVIVED, ls=":", lw=1)
            elif c.action == "stop":
                ax.axvline(c.epoch, color=STOPPED, ls="--", lw=1)
        if any(c.action == "revive" for c in checks):
            ax.plot([], [], color=REVIVED, ls=":", lw=1, label="revived (ReDo)")
        if any(c.action == "stop" for c in checks):
            ax.plot([], [], color=STOPPED, ls="--", lw=1, label="stopped")
        ax.set_xticks(np.unique(x))
    if threshold is not None:
        ax.axhline(threshold, color=THRESHOLD, ls="--", lw=1.2, label=f"{threshold_label} ({threshold:.0%})")
    if checks or threshold is not None:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    top = min(1.02, top * 1.15) if top > 0 else 0.05
    ax.set_ylim(-0.02 * top, top)  # 0 at the bottom, a margin so that lines at 0 are not cut in half
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
    ax.set_xlabel("epoch")
    ax.set_ylabel("share of units dead")
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_curves(comparison: Comparison, path: str) -> None:
    """Saves training curves: validation loss (and the first metric) per epoch, one line per variant.

    Epoch 0 is each variant's value before retraining. The loss axis turns logarithmic when the
    values span more than a factor of 50 (a patched model can start orders of magnitude off).

    Args:
        comparison: What `deadrelu.fixes.retrain.retrain` returned.
        path: Where to write the figure (atomically; its folder must exist).
    """
    from matplotlib.figure import Figure

    keys = ["val_loss"]
    first = comparison.variants[0].history if comparison.variants else {}
    keys += [k for k in first if k.startswith("val_") and k != "val_loss"][:1]
    fig = Figure(figsize=(5.2 * len(keys), 3.8))
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for variant in comparison.variants:
            values = variant.history.get(key, [])
            start = variant.before.get(key[4:] if key != "val_loss" else "loss")
            xs = np.arange(0, len(values) + 1)
            ax.plot(xs, [start] + values, marker="o", lw=1.6, label=variant.name)
        ax.set_xlabel("epoch (0: before retraining)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        lows = [min(v.history.get(key, [np.inf])) for v in comparison.variants]
        highs = [max([v.before.get("loss", 0.0)] + v.history.get(key, [])) for v in comparison.variants]
        if key == "val_loss" and min(lows) > 0 and max(highs) / min(lows) > 50:
            ax.set_yscale("log")  # a patched model can start orders of magnitude off
        ax.set_title(key.replace("val_", "validation "), fontsize=10, loc="left")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Figure, path: str) -> None:
    """Writes `fig` atomically at `CURVES_DPI`, in the format of `path`'s extension.

    Args:
        fig: The figure.
        path: Where to write it.
    """
    from deadrelu.io.files import atomic_output

    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=CURVES_DPI)

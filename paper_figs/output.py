"""Saving matplotlib figures the same way for every entry (PNG for docs, PDF for print)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def save_figure(fig, out_dir: Path, stem: str,
                note: Callable[[str], None] | None = None) -> list[Path]:
    """Save ``fig`` as ``out_dir/stem.png`` (150 dpi) and ``.pdf``, close it, return the paths.

    Any :func:`paper_figs.axescheck.axes_problems` (data off the axes, fractional epoch ticks)
    goes to ``note`` (printed with the entry) so that a bad figure never passes silently.
    """
    import matplotlib.pyplot as plt

    from paper_figs.axescheck import axes_problems

    for problem in axes_problems(fig):
        if note is not None:
            note(f"{stem}: {problem}")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def epoch_axis(ax) -> None:
    """Label the x axis 'epoch' with whole-number ticks only, also for a one-epoch run (whose
    axis spans less than one epoch: MaxNLocator would fall back to fractions there)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    lo, hi = ax.get_xlim()
    if hi - lo < 2:  # one epoch: one tick in the middle of a one-epoch-wide axis
        mid = round((lo + hi) / 2)
        ax.set_xlim(mid - 1, mid + 1)


def zoom_start(last_epoch: int) -> int:
    """The first epoch of the overfitting view: 10 (the paper's 200 epochs; the LR is still
    high and the loss falls steeply before), a fifth of a shorter run; 1 (no zoom) below 10."""
    return min(10, last_epoch // 5) if last_epoch >= 10 else 1


def data_range(axes, from_x: float, pad: float = 0.05) -> tuple[float, float] | None:
    """(low, high) of the y values drawn on ``axes`` at x >= ``from_x`` (lines and bands),
    padded by ``pad`` of the span; None without data there."""
    from paper_figs.axescheck import drawn_points

    chunks = [p[p[:, 0] >= from_x, 1] for ax in axes for p in [drawn_points(ax)]]
    values = np.concatenate(chunks) if chunks else np.zeros(0)
    if not values.size:
        return None
    low, high = float(values.min()), float(values.max())
    span = (high - low) or max(abs(high), 1.0)
    return low - pad * span, high + pad * span


def zoom_axes(axes, from_epoch: int, crop: bool = False) -> None:
    """Fit the shared y range of ``axes`` to their data from ``from_epoch`` on (the
    overfitting region) and declare the zoom, so that
    :func:`paper_figs.axescheck.axes_problems` allows earlier points off the axes and no
    others. ``crop``: the x axis starts at ``from_epoch``; else the earlier epochs stay in view,
    shaded, and may run off the top or bottom."""
    from paper_figs.axescheck import declare_zoom

    limits = data_range(axes, from_epoch)
    for ax in axes:
        x0, x1 = ax.get_xlim()
        if limits is not None:
            ax.set_ylim(*limits)
        if crop:
            ax.set_xlim(from_epoch - 0.5, x1)
        else:
            ax.axvspan(x0, from_epoch - 0.5, color="0.92", lw=0, zorder=0)
            ax.set_xlim(x0, x1)  # the shading must not widen the axis
        declare_zoom(ax, from_epoch)


def seed_band(ax, runs, key: str, transform=lambda v: v, **style) -> tuple[list, list]:
    """Draw ``key`` against epoch over the seed runs ``runs``: the mean as a line and, with
    more than one seed, the min-max over seeds as a band. Returns (epochs, means).

    Only epochs every seed has are drawn (a seed still training does not bend the mean).
    """
    series = [dict(zip(*run.series(key), strict=True)) for run in runs]
    epochs = sorted(set.intersection(*(set(s) for s in series))) if series else []
    if not epochs:
        return [], []
    values = np.array([[transform(s[e]) for e in epochs] for s in series])
    mean = values.mean(axis=0)
    if len(epochs) == 1:  # a line through one point is invisible: mark it
        style = {"marker": "o", **style}
    line = ax.plot(epochs, mean, **style)[0]
    if len(runs) > 1:
        ax.fill_between(epochs, values.min(axis=0), values.max(axis=0),
                        color=line.get_color(), alpha=0.2, lw=0)
    return epochs, list(mean)


def plain_log_ticks(axis) -> None:
    """Ticks of a log axis at 1, 2, 5 x 10^n written as plain numbers (0.05, not 5x10^-2)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())

"""Saving matplotlib figures the same way for every entry (PNG for docs, PDF for print)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


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
    """Label the x axis 'epoch' with whole-number ticks only."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def seed_band(ax, runs, key: str, transform=lambda v: v, **style) -> tuple[list, list]:
    """Draw ``key`` against epoch over the seed runs ``runs``: the mean as a line and, with
    more than one seed, the min-max over seeds as a band. Returns (epochs, means).

    Only epochs every seed has are drawn (a seed still training does not bend the mean).
    """
    import numpy as np

    series = [dict(zip(*run.series(key), strict=True)) for run in runs]
    epochs = sorted(set.intersection(*(set(s) for s in series))) if series else []
    if not epochs:
        return [], []
    values = np.array([[transform(s[e]) for e in epochs] for s in series])
    mean = values.mean(axis=0)
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

"""Figure 2 of the paper: f, f', f'' side by side (also used for Figures 5 and 6 by paper_figs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from curvtools.activations import Activation
from curvtools.errors import BadInput


def _numpy_fn(x, expr):
    import sympy as sp

    fn = sp.lambdify(x, expr, ["scipy", "numpy"])
    return lambda t: np.asarray(fn(t), dtype=float) * np.ones_like(t)


def plot_activation_derivatives(activations: Sequence[Activation], path: str | Path,
                                x_range: tuple[float, float] = (-5.0, 5.0),
                                points: int = 1001) -> Path:
    """Draw f, f' and f'' of each activation in three panels and save to ``path`` (.png/.pdf).

    The curves come from the sympy derivatives (:mod:`curvtools.symbolic`); for piecewise
    activations f'' is drawn away from the kink (f'' is undefined there).

    Example::

        >>> plot_activation_derivatives([resolve("silu"), resolve("mish")], "fig2.png")
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from curvtools.symbolic import _breakpoints, derivatives

    path = Path(path)
    if path.suffix.lower() not in (".png", ".pdf"):
        raise BadInput(f"figure path {str(path)!r} must end in .png or .pdf")
    lo, hi = float(x_range[0]), float(x_range[1])
    if not lo < hi:
        raise BadInput(f"x_range {x_range} must have lower < upper")
    t = np.linspace(lo, hi, points)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    titles = ("$f(x)$", "$f'(x)$", "$f''(x)$")
    for act in activations:
        d = derivatives(act)
        # a NaN at each breakpoint (kink) breaks the line there instead of drawing a jump
        cuts = [c for c in _breakpoints(d.f, d.x) if lo < c < hi]
        ts = np.sort(np.concatenate([t, cuts]))
        for ax, expr in zip(axes, (d.f, d.f1, d.f2), strict=True):
            with np.errstate(all="ignore"):
                y = _numpy_fn(d.x, expr)(ts)
            y[np.isin(ts, cuts)] = np.nan
            ax.plot(ts, y, label=act.label, lw=1.6)
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.axhline(0, color="0.7", lw=0.6)
        ax.axvline(0, color="0.7", lw=0.6)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

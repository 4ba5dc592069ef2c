"""Figure 2 of the paper: f, f', f'' side by side (also used for Figures 5 and 6 by paper_figs).

Made to stay readable with many activations: each curve has its own colour, line style and
marker; a curve identical to an earlier one (SiLU and PSwish(beta=1)) is drawn on top of it as
a dashed overlay and named "= earlier" in the legend; the legend sits below the panels, outside
the axes; each panel's limits hold every plotted point.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from curvtools.activations import Activation
from curvtools.clirun import PLOT_SUFFIXES
from curvtools.errors import BadInput

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22", "#000000", "#393b79")
LINESTYLES = ("-", (0, (6, 2)), "-.", (0, (1, 1.5)), (0, (8, 2, 1, 2, 1, 2)))
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p")


def _numpy_fn(x, expr):
    import sympy as sp

    fn = sp.lambdify(x, expr, ["scipy", "numpy"])
    return lambda t: np.asarray(fn(t), dtype=float) * np.ones_like(t)


def _curves(act: Activation, lo: float, hi: float, points: int):
    """``(t, [f, f', f''])`` sampled on [lo, hi], NaN at kinks (breaks the line there)."""
    from curvtools.symbolic import _breakpoints, derivatives

    d = derivatives(act)
    t = np.linspace(lo, hi, points)
    cuts = [c for c in _breakpoints(d.f, d.x) if lo < c < hi]
    ts = np.sort(np.concatenate([t, cuts]))
    ys = []
    for expr in (d.f, d.f1, d.f2):
        with np.errstate(all="ignore"):
            y = _numpy_fn(d.x, expr)(ts)
        y[np.isin(ts, cuts)] = np.nan
        ys.append(y)
    return ts, ys


def _same(a: tuple, b: tuple) -> bool:
    (ta, ya), (tb, yb) = a, b
    return ta.shape == tb.shape and np.allclose(ta, tb) and all(
        np.allclose(u, v, rtol=1e-9, atol=1e-12, equal_nan=True) for u, v in zip(ya, yb,
                                                                                 strict=True))


def activation_figure(activations: Sequence[Activation],
                      x_range: tuple[float, float] = (-5.0, 5.0), points: int = 1001):
    """The Figure (three panels f, f', f'' and a legend below them) for ``activations``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = float(x_range[0]), float(x_range[1])
    if not lo < hi:
        raise BadInput(f"x_range {x_range} must have lower < upper")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    drawn: list[tuple[str, tuple]] = []
    every = max(1, points // 10)
    for i, act in enumerate(activations):
        data = _curves(act, lo, hi, points)
        twin = next((label for label, other in drawn if _same(data, other)), None)
        drawn.append((act.label, data))
        ts, ys = data
        style = {"color": COLOURS[i % len(COLOURS)], "marker": MARKERS[i % len(MARKERS)],
                 "markevery": (i * every // max(1, len(activations)), every), "markersize": 4}
        if twin is None:
            style |= {"linestyle": LINESTYLES[i % len(LINESTYLES)], "lw": 1.6,
                      "label": act.label}
        else:  # coincides with an earlier curve: a dashed overlay keeps both visible
            style |= {"linestyle": (0, (3, 3)), "lw": 2.4, "zorder": 3,
                      "label": f"{act.label} (= {twin})"}
        for ax, y in zip(axes, ys, strict=True):
            ax.plot(ts, y, **style)
    for k, (ax, title) in enumerate(zip(axes, ("$f(x)$", "$f'(x)$", "$f''(x)$"), strict=True)):
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.axhline(0, color="0.7", lw=0.6, zorder=0)
        ax.axvline(0, color="0.7", lw=0.6, zorder=0)
        ax.grid(alpha=0.3)
        ys = np.concatenate([data[1][k] for _, data in drawn] or [np.zeros(1)])
        ys = ys[np.isfinite(ys)]
        bottom, top = (float(ys.min()), float(ys.max())) if ys.size else (-1.0, 1.0)
        pad = 0.05 * (top - bottom) or 0.5
        ax.set_xlim(lo, hi)
        ax.set_ylim(bottom - pad, top + pad)
    handles, labels = axes[0].get_legend_handles_labels()
    ncol = min(5, max(1, len(labels)))
    rows = -(-len(labels) // ncol)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.06 * rows + 0.02, 1, 1))
    return fig


def plot_activation_derivatives(activations: Sequence[Activation], path: str | Path,
                                x_range: tuple[float, float] = (-5.0, 5.0),
                                points: int = 1001) -> Path:
    """Draw f, f' and f'' of each activation in three panels and save to ``path``
    (.png/.pdf/.svg).

    The curves come from the sympy derivatives (:mod:`curvtools.symbolic`); for piecewise
    activations f'' is drawn away from the kink (f'' is undefined there).

    Example::

        >>> plot_activation_derivatives([resolve("silu"), resolve("mish")], "fig2.png")
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise BadInput(f"figure path {str(path)!r} must end in {' or '.join(PLOT_SUFFIXES)}")
    fig = activation_figure(activations, x_range, points)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path

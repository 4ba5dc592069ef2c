"""Figure 2 of the paper: f, f', f'' side by side (also used for Figures 5 and 6 by paper_figs).

Made to stay readable with many activations: each curve has its own colour, line style and
marker; a curve that would hide an earlier one -- identical to it (SiLU and PSwish(beta=1)) or
within 1% of the panel's height of it everywhere (LeakyReLU with k = 0.01 over ReLU) -- is drawn
on top of it as a thin dashed overlay, so that the earlier curve shows between the dashes, and
is named "= earlier" or "~ earlier" in the legend; the legend sits below the panels, outside the
axes; each panel's limits hold every plotted point.
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


NEAR = 0.01  # a curve within this share of every panel's height of an earlier one hides it


def _gap(a: tuple, b: tuple, spans: list[float]) -> float:
    """The largest distance between two sampled curves in any panel, as a share of the panel's
    height (inf when they are sampled differently or break at different points)."""
    (ta, ya), (tb, yb) = a, b
    if ta.shape != tb.shape or not np.allclose(ta, tb):
        return float("inf")
    worst = 0.0
    for u, v, span in zip(ya, yb, spans, strict=True):
        if not np.array_equal(np.isnan(u), np.isnan(v)):
            return float("inf")
        both = np.isfinite(u) & np.isfinite(v)
        diff = float(np.max(np.abs(u[both] - v[both]))) if both.any() else 0.0
        worst = max(worst, diff / span if span > 0 else (0.0 if diff == 0 else float("inf")))
    return worst


def _limits(values: list[np.ndarray]) -> tuple[float, float]:
    ys = np.concatenate(values or [np.zeros(1)])
    ys = ys[np.isfinite(ys)]
    bottom, top = (float(ys.min()), float(ys.max())) if ys.size else (-1.0, 1.0)
    pad = 0.05 * (top - bottom) or 0.5
    return bottom - pad, top + pad


def activation_figure(activations: Sequence[Activation],
                      x_range: tuple[float, float] = (-5.0, 5.0), points: int = 1001):
    """The Figure (three panels f, f', f'' and a legend below them) for ``activations``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = float(x_range[0]), float(x_range[1])
    if not lo < hi:
        raise BadInput(f"x_range {x_range} must have lower < upper")
    data = [_curves(act, lo, hi, points) for act in activations]
    limits = [_limits([d[1][k] for d in data]) for k in range(3)]
    spans = [top - bottom for bottom, top in limits]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    every = max(1, points // 10)
    for i, (act, curve) in enumerate(zip(activations, data, strict=True)):
        gaps = [_gap(curve, data[j], spans) for j in range(i)]
        near = min(range(i), key=lambda j: gaps[j], default=None)
        ts, ys = curve
        style = {"color": COLOURS[i % len(COLOURS)], "marker": MARKERS[i % len(MARKERS)],
                 "markevery": (i * every // max(1, len(activations)), every), "markersize": 4}
        if near is None or gaps[near] > NEAR:
            style |= {"linestyle": LINESTYLES[i % len(LINESTYLES)], "lw": 1.6,
                      "label": act.label}
        else:  # it would hide an earlier curve: a thin dashed overlay keeps both visible
            twin = activations[near].label
            sign = "=" if gaps[near] <= 1e-9 else "~"
            style |= {"linestyle": (0, (3, 3)), "lw": 1.4, "zorder": 3,
                      "label": f"{act.label} ({sign} {twin})"}
        for ax, y in zip(axes, ys, strict=True):
            ax.plot(ts, y, **style)
    for ax, title, (bottom, top) in zip(axes, ("$f(x)$", "$f'(x)$", "$f''(x)$"), limits,
                                        strict=True):
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.axhline(0, color="0.7", lw=0.6, zorder=0)
        ax.axvline(0, color="0.7", lw=0.6, zorder=0)
        ax.grid(alpha=0.3)
        ax.set_xlim(lo, hi)
        ax.set_ylim(bottom, top)
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

"""Figures 2, 5 and 6: activation shapes with f' and f'' (no runs needed).

All three call ``curvtools.figures.plot_activation_derivatives(activations, path)``; when that
function is not available the entries report themselves unavailable instead of failing.
"""

from __future__ import annotations

from pathlib import Path

from curvtools.activations import resolve
from paper_figs.runsets import Context

FIGURES = {
    "fig2": ("fig2_activations", [("relu", {}), ("lisht", {}), ("gelu", {}), ("mish", {}),
                                  ("silu", {})]),
    "fig5": ("fig5_pswish", [("pswish", {"beta": b}) for b in (0.5, 1.0, 2.0, 4.0, 10.0)]),
    "fig6": ("fig6_leakyrelu", [("leakyrelu", {"k": k}) for k in (0.5, 0.3, 0.2, 0.0, -0.2)]),
}


class Unavailable(RuntimeError):
    """A figure cannot be made in this installation (a missing optional piece)."""


def plot_function():
    """``curvtools.figures.plot_activation_derivatives`` or raise :class:`Unavailable`."""
    try:
        from curvtools.figures import plot_activation_derivatives
    except ImportError as err:
        raise Unavailable(f"curvtools.figures.plot_activation_derivatives not available ({err})"
                          ) from None
    return plot_activation_derivatives


def shape_figure(ctx: Context, name: str) -> list[Path]:
    """Draw one of fig2/fig5/fig6 into ``ctx.out_dir`` as PNG and PDF."""
    plot = plot_function()
    stem, entries = FIGURES[name]
    activations = [resolve(act, **params) for act, params in entries]
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix in (".png", ".pdf"):
        path = ctx.out_dir / f"{stem}{suffix}"
        plot(activations, path)
        paths.append(path)
    return paths

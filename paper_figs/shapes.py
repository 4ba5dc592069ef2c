"""Figures 2, 5 and 6: activation shapes with f' and f'' (no runs needed).

Figures 2 and 5 call ``curvtools.figures.plot_activation_derivatives(activations, path)``; when
that function is not available the entries report themselves unavailable instead of failing.
Figure 6 (LeakyReLU) is drawn here: its f'' is 0 everywhere but the kink, where it is the
Dirac delta (1 - k) delta(x), so an f'' panel would be an empty zero line. Its third panel
shows instead the kink's curvature |1 - k| per slope k, the paper's approximate curvature.
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


FIG6_KS = (0.5, 0.3, 0.2, 0.0, -0.2)


def build_figure6(ks: tuple[float, ...] = FIG6_KS):
    """Figure 6: LeakyReLU f and f' (from the registry's torch module, autograd) and the kink
    curvature |1 - k| that the paper uses for non-smooth activations."""
    import numpy as np
    import torch

    from paper_figs.output import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    x = torch.linspace(-3, 3, 601, dtype=torch.float64, requires_grad=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, k in enumerate(ks):
        act = resolve("leakyrelu", k=k)
        y = act.module().double()(x)
        (dy,) = torch.autograd.grad(y.sum(), x)
        xs, ys, dys = x.detach().numpy(), y.detach().numpy(), dy.numpy()
        dys = np.where(xs == 0, np.nan, dys)  # f' jumps from k to 1 at the kink
        color = colors[i % len(colors)]
        axes[0].plot(xs, ys, color=color, lw=1.6, label=f"k = {k:g}")
        axes[1].plot(xs, dys, color=color, lw=1.6, label=f"k = {k:g}")
        axes[2].bar(i, abs(1 - k), color=color)
        axes[2].annotate(f"{abs(1 - k):g}", (i, abs(1 - k)), ha="center", va="bottom",
                         fontsize=8)
    axes[0].set_title("$f(x)$")
    axes[1].set_title("$f'(x)$ (jumps from $k$ to 1 at $x=0$)")
    axes[2].set_title("kink curvature $|1-k|$\n($f''(x) = (1-k)\\,\\delta(x)$, 0 elsewhere)")
    axes[2].set_xticks(range(len(ks)), [f"k = {k:g}" for k in ks])
    axes[2].set_ylim(0, 1.2 * max(abs(1 - k) for k in ks))
    for ax in axes[:2]:
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel("x")
        ax.legend(fontsize=8)
    fig.suptitle("Figure 6: LeakyReLU with slope k")
    fig.tight_layout()
    return fig


def shape_figure(ctx: Context, name: str) -> list[Path]:
    """Draw one of fig2/fig5/fig6 into ``ctx.out_dir`` as PNG and PDF."""
    if name == "fig6":
        from paper_figs.output import save_figure

        return save_figure(build_figure6(), ctx.out_dir, FIGURES[name][0],
                           lambda line: ctx.note(name, line))
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

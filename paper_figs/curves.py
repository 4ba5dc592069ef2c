"""Figures 1 and 4: learning curves of the Table 1 CIFAR-10 runs (metrics.jsonl only)."""

from __future__ import annotations

import math
from pathlib import Path

from paper_figs.output import pyplot, save_figure
from paper_figs.runsets import ACT_LABELS, Context

SPEC = "table1-cifar10"
# Figure 4's column order: ReLU (the non-smooth baseline), then by decreasing curvature.
FIG4_ORDER = ("relu", "lisht", "gelu", "mish", "silu")
COLORS = {"relu": "tab:red", "silu": "tab:blue", "lisht": "tab:purple", "gelu": "tab:orange",
          "mish": "tab:green"}


def _loaded(ctx: Context, entry: str, names: tuple[str, ...]):
    runs = ctx.runs(SPEC)
    out = {}
    for name in names:
        run = runs.get(name, (None, None))[1]
        if run is None:
            ctx.note_missing(entry, SPEC, name)
        else:
            out[name] = run
    return out


def _zoom_past_first_epochs(ax, curves: list[tuple[list[int], list[float]]]) -> None:
    """Set the y range from epochs > 3: the first epochs' large losses would squash the rest."""
    settled = [v for epochs, values in curves
               for e, v in zip(epochs, values, strict=True) if e > 3 and math.isfinite(v)]
    if settled:
        low, high = min(settled), max(settled)
        pad = 0.05 * (high - low) or 0.05
        ax.set_ylim(low - pad, high + pad)


def figure1(ctx: Context) -> list[Path]:
    """Robust test loss against epoch, ReLU vs SiLU; the best-validation epoch is marked."""
    runs = _loaded(ctx, "fig1", ("relu", "silu"))
    if not runs:
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    curves = []
    for name, run in runs.items():
        epochs, loss = run.series("test_robust_loss")
        curves.append((epochs, loss))
        ax.plot(epochs, loss, color=COLORS[name], label=f"{ACT_LABELS[name]} (test)")
        best = run.best_val_row
        if best is not None and "test_robust_loss" in best:
            ax.scatter([best["epoch"]], [best["test_robust_loss"]], color=COLORS[name],
                       marker="o", zorder=3, label=f"{ACT_LABELS[name]} best-val checkpoint")
    _zoom_past_first_epochs(ax, curves)
    ax.set_xlabel("epoch")
    ax.set_ylabel("robust test loss")
    ax.set_title(f"Figure 1: robust test loss ({ctx.scale} scale)")
    ax.legend(fontsize=8)
    return save_figure(fig, ctx.out_dir, "fig1_robust_test_loss")


def figure4(ctx: Context) -> list[Path]:
    """Grid per activation: top error (%) and bottom loss, standard/robust x train/test."""
    runs = _loaded(ctx, "fig4", FIG4_ORDER)
    if not runs:
        return []
    plt = pyplot()
    fig, axes = plt.subplots(2, len(runs), figsize=(3.2 * len(runs), 5.5), squeeze=False,
                             sharex=True)
    curves = [("train", "clean", "tab:blue", "--"), ("test", "clean", "tab:blue", "-"),
              ("train", "robust", "tab:red", "--"), ("test", "robust", "tab:red", "-")]
    for col, (name, run) in enumerate(runs.items()):
        top, bottom = axes[0][col], axes[1][col]
        losses = []
        for part, kind, color, style in curves:
            label = f"{'standard' if kind == 'clean' else 'robust'} {part}"
            epochs, acc = run.series(f"{part}_{kind}_acc")
            top.plot(epochs, [100 * (1 - a) for a in acc], color=color, ls=style, label=label)
            epochs, loss = run.series(f"{part}_{kind}_loss")
            bottom.plot(epochs, loss, color=color, ls=style, label=label)
            losses.append((epochs, loss))
        _zoom_past_first_epochs(bottom, losses)
        top.set_title(ACT_LABELS[name])
        bottom.set_xlabel("epoch")
    axes[0][0].set_ylabel("error (%)")
    axes[1][0].set_ylabel("loss")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Figure 4: learning curves, CIFAR-10 ({ctx.scale} scale)")
    return save_figure(fig, ctx.out_dir, "fig4_learning_curves")

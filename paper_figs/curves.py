"""Figures 1 and 4: learning curves of the Table 1 CIFAR-10 runs (metrics.jsonl only).

With several seeds of a run the line is the mean over seeds and a band spans their min-max.
Every point is inside the axes (no zoom that cuts the first epochs) and epoch ticks are whole.
"""

from __future__ import annotations

from pathlib import Path

from paper_figs.output import epoch_axis, pyplot, save_figure, seed_band
from paper_figs.runsets import ACT_LABELS, Context

SPEC = "table1-cifar10"
# Figure 4's column order: ReLU (the non-smooth baseline), then by decreasing curvature.
FIG4_ORDER = ("relu", "lisht", "gelu", "mish", "silu")
COLORS = {"relu": "tab:red", "silu": "tab:blue", "lisht": "tab:purple", "gelu": "tab:orange",
          "mish": "tab:green"}


def _loaded(ctx: Context, entry: str, names: tuple[str, ...]):
    """``{run name: [seed runs]}`` of the wanted runs that exist; the others noted missing."""
    groups = {g.name: g for g in ctx.groups(SPEC, entry)}
    out = {}
    for name in names:
        group = groups.get(name)
        if group is None or not group.runs:
            ctx.note_missing(entry, SPEC, name)
        else:
            out[name] = group.runs
    return out


def _seeds_label(runs) -> str:
    return f"n={len(runs)} seed" + ("s, band min-max" if len(runs) > 1 else "")


def build_figure1(ctx: Context):
    """The Figure 1 matplotlib figure, or None when neither run exists."""
    runs = _loaded(ctx, "fig1", ("relu", "silu"))
    if not runs:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, seed_runs in runs.items():
        seed_band(ax, seed_runs, "test_robust_loss", color=COLORS[name],
                  label=f"{ACT_LABELS[name]} test ({_seeds_label(seed_runs)})")
        best = [(r.best_val_row["epoch"], r.best_val_row["test_robust_loss"]) for r in seed_runs
                if r.best_val_row is not None and "test_robust_loss" in r.best_val_row]
        if best:
            ax.scatter([b[0] for b in best], [b[1] for b in best], color=COLORS[name],
                       marker="o", edgecolor="black", zorder=3,
                       label=f"{ACT_LABELS[name]} best-val checkpoint")
    epoch_axis(ax)
    ax.set_ylabel("robust test loss")
    ax.set_title(f"Figure 1: robust test loss ({ctx.scale} scale)")
    ax.legend(fontsize=7)
    return fig


def figure1(ctx: Context) -> list[Path]:
    """Robust test loss against epoch, ReLU vs SiLU; the best-validation epoch is marked."""
    fig = build_figure1(ctx)
    if fig is None:
        return []
    return save_figure(fig, ctx.out_dir, "fig1_robust_test_loss",
                       lambda line: ctx.note("fig1", line))


def build_figure4(ctx: Context):
    """The Figure 4 matplotlib figure, or None when no run exists."""
    runs = _loaded(ctx, "fig4", FIG4_ORDER)
    if not runs:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(2, len(runs), figsize=(3.2 * len(runs), 5.8), squeeze=False,
                             sharex=True)
    curves = [("train", "clean", "tab:blue", "--"), ("test", "clean", "tab:blue", "-"),
              ("train", "robust", "tab:red", "--"), ("test", "robust", "tab:red", "-")]
    for col, (name, seed_runs) in enumerate(runs.items()):
        top, bottom = axes[0][col], axes[1][col]
        for part, kind, color, style in curves:
            label = f"{'standard' if kind == 'clean' else 'robust'} {part}"
            seed_band(top, seed_runs, f"{part}_{kind}_acc", lambda a: 100 * (1 - a),
                      color=color, ls=style, label=label)
            seed_band(bottom, seed_runs, f"{part}_{kind}_loss", color=color, ls=style,
                      label=label)
        top.set_title(f"{ACT_LABELS[name]} ({_seeds_label(seed_runs)})", fontsize=9)
        epoch_axis(bottom)
        top.xaxis.set_tick_params(labelbottom=False)
    axes[0][0].set_ylabel("error (%)")
    axes[1][0].set_ylabel("loss")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=0.16)  # room for the legend under the panels, off the data
    fig.suptitle(f"Figure 4: learning curves, CIFAR-10 ({ctx.scale} scale)")
    return fig


def figure4(ctx: Context) -> list[Path]:
    """Grid per activation: top error (%) and bottom loss, standard/robust x train/test."""
    fig = build_figure4(ctx)
    if fig is None:
        return []
    return save_figure(fig, ctx.out_dir, "fig4_learning_curves",
                       lambda line: ctx.note("fig4", line))

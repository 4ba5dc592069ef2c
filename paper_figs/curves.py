"""Figures 1 and 4: learning curves of the Table 1 CIFAR-10 runs (metrics.jsonl only).

With several seeds of a run the line is the mean over seeds and a band spans their min-max.
Both figures show the overfitting region: Figure 1 draws every epoch in its left panel and, on
the right, the epochs from ~10 on with the axes fitted to them; Figure 4's y range is fitted
to the epochs from ~10 on and shared by the panels of a row (the earlier epochs, shaded, may run
off the top; :func:`paper_figs.axescheck.declare_zoom` says so to the figure check). Epoch
ticks are whole numbers. Figure 4 shows every run of the spec that has data (the paper's five
first, in its order, then any other, e.g. a plugin activation, labelled from its name).
"""

from __future__ import annotations

from pathlib import Path

from paper_figs.actnames import act_label, colors_for
from paper_figs.output import epoch_axis, pyplot, save_figure, seed_band, zoom_axes, zoom_start
from paper_figs.runsets import Context

SPEC = "table1-cifar10"
# Figure 4's column order: ReLU (the non-smooth baseline), then by decreasing curvature.
FIG4_ORDER = ("relu", "lisht", "gelu", "mish", "silu")


def _loaded(ctx: Context, entry: str, names: tuple[str, ...] | None):
    """``{run name: (activation name, [seed runs])}`` of the wanted runs that exist (every run
    of the spec when ``names`` is None: the paper's order first); the others noted missing."""
    groups = {g.name: g for g in ctx.groups(SPEC, entry)}
    wanted = list(names) if names is not None else \
        [n for n in FIG4_ORDER if n in groups] + [n for n in groups if n not in FIG4_ORDER]
    if names is None:
        wanted += [n for n in FIG4_ORDER if n not in wanted]  # named missing below
    out = {}
    for name in wanted:
        group = groups.get(name)
        if group is None or not group.runs:
            ctx.note_missing(entry, SPEC, name)
        else:
            out[name] = (str(group.paper.get("act") or name), group.runs)
    return out


def _seeds_label(runs) -> str:
    return f"n={len(runs)} seed" + ("s, band min-max" if len(runs) > 1 else "")


def _last_epoch(runs) -> int:
    return max(r.epochs_done for _, seed_runs in runs.values() for r in seed_runs)


def build_figure1(ctx: Context):
    """The Figure 1 matplotlib figure, or None when neither run exists."""
    runs = _loaded(ctx, "fig1", ("relu", "silu"))
    if not runs:
        return None
    plt = pyplot()
    start = zoom_start(_last_epoch(runs))
    panels = 2 if start > 1 else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.9), squeeze=False)
    axes = list(axes[0])
    colors = colors_for(act for act, _ in runs.values())
    for ax in axes:
        for act, seed_runs in runs.values():
            seed_band(ax, seed_runs, "test_robust_loss", color=colors[act],
                      label=f"{act_label(act)} test ({_seeds_label(seed_runs)})")
            best = [(r.best_val_row["epoch"], r.best_val_row["test_robust_loss"])
                    for r in seed_runs
                    if r.best_val_row is not None and "test_robust_loss" in r.best_val_row]
            if best:
                ax.scatter([b[0] for b in best], [b[1] for b in best], color=colors[act],
                           marker="o", edgecolor="black", zorder=3,
                           label=f"{act_label(act)} best-val checkpoint")
        epoch_axis(ax)
        ax.set_ylabel("robust test loss")
    axes[0].set_title("every epoch", fontsize=9)
    if panels == 2:
        zoom_axes([axes[1]], start, crop=True)
        axes[1].set_title(f"from epoch {start} on: robust overfitting is a rising loss",
                          fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"Figure 1: robust test loss ({ctx.scale} scale)")
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig


def figure1(ctx: Context) -> list[Path]:
    """Robust test loss against epoch, ReLU vs SiLU; the best-validation epoch is marked."""
    fig = build_figure1(ctx)
    if fig is None:
        return []
    return save_figure(fig, ctx.out_dir, "fig1_robust_test_loss",
                       lambda line: ctx.note("fig1", line))


CURVES = (("train", "clean", "tab:blue", "--"), ("test", "clean", "tab:blue", "-"),
          ("train", "robust", "tab:red", "--"), ("test", "robust", "tab:red", "-"))


def build_figure4(ctx: Context):
    """The Figure 4 matplotlib figure, or None when no run exists."""
    runs = _loaded(ctx, "fig4", None)
    if not runs:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(2, len(runs), figsize=(3.2 * len(runs), 6.2), squeeze=False,
                             sharex=True, sharey="row")
    for col, (act, seed_runs) in enumerate(runs.values()):
        top, bottom = axes[0][col], axes[1][col]
        for part, kind, color, style in CURVES:
            label = f"{'standard' if kind == 'clean' else 'robust'} {part}"
            seed_band(top, seed_runs, f"{part}_{kind}_acc", lambda a: 100 * (1 - a),
                      color=color, ls=style, label=label)
            seed_band(bottom, seed_runs, f"{part}_{kind}_loss", color=color, ls=style,
                      label=label)
        top.set_title(f"{act_label(act)} ({_seeds_label(seed_runs)})", fontsize=9)
        epoch_axis(bottom)
        top.xaxis.set_tick_params(labelbottom=False)
    start = zoom_start(_last_epoch(runs))
    note = ""
    if start > 1:
        for row in axes:
            zoom_axes(list(row), start)
        note = (f"; y ranges fitted to epochs >= {start} and shared along each row (earlier "
                "epochs, shaded, may run off the top)")
    axes[0][0].set_ylabel("error (%)")
    axes[1][0].set_ylabel("loss")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"Figure 4: learning curves, CIFAR-10 ({ctx.scale} scale){note}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def figure4(ctx: Context) -> list[Path]:
    """Grid per activation: top error (%) and bottom loss, standard/robust x train/test."""
    fig = build_figure4(ctx)
    if fig is None:
        return []
    return save_figure(fig, ctx.out_dir, "fig4_learning_curves",
                       lambda line: ctx.note("fig4", line))

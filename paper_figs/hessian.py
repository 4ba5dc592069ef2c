"""Figure 3: the input Hessian's largest eigenvalue over training, per smooth activation.

Reads ``hessian_curve.json`` (``curvtools hessian --ckpt RUNDIR``) when present and not older
than the run's metrics, else the metrics key ``hessian_lambda_max_mean`` written by training
with ``--hessian-every`` (see :func:`paper_figs.rundir.hessian_points`). A stale curve file is
named in the output. Several seeds: the mean line and a min-max band over the seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from paper_figs.curves import COLORS
from paper_figs.output import epoch_axis, plain_log_ticks, pyplot, save_figure
from paper_figs.rundir import hessian_points
from paper_figs.runsets import ACT_LABELS, Context

SPEC = "table1-cifar10"
SMOOTH = ("lisht", "gelu", "mish", "silu")  # decreasing curvature, as in the paper


def hessian_curves(ctx: Context) -> dict[str, tuple[list[int], np.ndarray, str]]:
    """``{run: (epochs every seed measured, values [seeds x epochs], sources)}``."""
    groups = {g.name: g for g in ctx.groups(SPEC, "fig3")}
    curves = {}
    for name in SMOOTH:
        group = groups.get(name)
        runs = group.runs if group else []
        points = []
        for run in runs:
            if run.stale_hessian:
                ctx.note("fig3", f"{run.path.name}: {run.stale_hessian}")
            pts = hessian_points(run)
            if pts is not None:
                points.append(pts)
        if not points:
            reason = "" if not runs else " (run has no hessian_lambda_max_mean / " \
                                         "hessian_curve.json)"
            ctx.missing.setdefault("fig3", []).append(
                f"{Path(ctx.runs_dir) / ctx.scale / SPEC / name}{reason}")
            continue
        common = sorted(set.intersection(*(set(p[0]) for p in points)))
        if not common:
            continue
        values = np.array([[dict(zip(p[0], p[1], strict=True))[e] for e in common]
                           for p in points])
        curves[name] = (common, values, "+".join(sorted({p[2] for p in points})))
    return curves


def build_figure3(ctx: Context):
    """The Figure 3 matplotlib figure, or None without any lambda_max data."""
    curves = hessian_curves(ctx)
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, (epochs, values, source) in curves.items():
        n = len(values)
        ax.plot(epochs, values.mean(axis=0), marker="o", ms=3, color=COLORS[name],
                label=f"{ACT_LABELS[name]} ({source}, n={n} seed{'s' if n > 1 else ''})")
        if n > 1:
            ax.fill_between(epochs, values.min(axis=0), values.max(axis=0), color=COLORS[name],
                            alpha=0.2, lw=0)
    epoch_axis(ax)
    last = max(max(epochs) for epochs, _, _ in curves.values())
    ax.set_xlim(0, 1.05 * last + 1)  # training starts at epoch 0, even with one point
    ax.set_ylabel(r"$\lambda_{\max}$ of the input Hessian (mean)")
    if all((v > 0).all() for _, v, _ in curves.values()):
        ax.set_yscale("log")  # the curves span orders of magnitude across activations
        plain_log_ticks(ax.yaxis)
    ax.set_title(f"Figure 3: input-Hessian maximum eigenvalue ({ctx.scale} scale)")
    ax.legend(fontsize=7)
    return fig


def figure3(ctx: Context) -> list[Path]:
    """lambda_max (mean over a batch of test examples) against epoch."""
    fig = build_figure3(ctx)
    if fig is None:
        return []
    return save_figure(fig, ctx.out_dir, "fig3_hessian_lambda_max",
                       lambda line: ctx.note("fig3", line))

"""Figure 3: the input Hessian's largest eigenvalue over training, per smooth activation.

Reads ``hessian_curve.json`` (``curvtools hessian --ckpt RUNDIR``) when present, else the
metrics key ``hessian_lambda_max_mean`` written by training with ``--hessian-every``
(see :func:`paper_figs.rundir.hessian_points`).
"""

from __future__ import annotations

from pathlib import Path

from paper_figs.curves import COLORS
from paper_figs.output import pyplot, save_figure
from paper_figs.rundir import hessian_points
from paper_figs.runsets import ACT_LABELS, Context

SPEC = "table1-cifar10"
SMOOTH = ("lisht", "gelu", "mish", "silu")  # decreasing curvature, as in the paper


def figure3(ctx: Context) -> list[Path]:
    """lambda_max (mean over a batch of test examples) against epoch."""
    runs = ctx.runs(SPEC)
    curves = {}
    for name in SMOOTH:
        run = runs.get(name, (None, None))[1]
        points = None if run is None else hessian_points(run)
        if points is None:
            reason = "" if run is None else " (run has no hessian_lambda_max_mean / " \
                                            "hessian_curve.json)"
            ctx.missing.setdefault("fig3", []).append(
                f"{ctx.runs_dir / ctx.scale / SPEC / name}{reason}")
        else:
            curves[name] = points
    if not curves:
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, (epochs, values, source) in curves.items():
        ax.plot(epochs, values, marker="o", ms=3, color=COLORS[name],
                label=f"{ACT_LABELS[name]} ({source})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"$\lambda_{\max}$ of the input Hessian (mean)")
    if all(v > 0 for _, values, _ in curves.values() for v in values):
        ax.set_yscale("log")  # the curves span orders of magnitude across activations
    ax.set_title(f"Figure 3: input-Hessian maximum eigenvalue ({ctx.scale} scale)")
    ax.legend(fontsize=8)
    return save_figure(fig, ctx.out_dir, "fig3_hessian_lambda_max")

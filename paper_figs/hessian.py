"""Figure 3: the input Hessian's largest eigenvalue over training, for every activation with data.

Reads ``hessian_curve.json`` (``curvtools hessian --ckpt RUNDIR``) when present and not older
than the run's metrics, else the metrics key ``hessian_lambda_max_mean`` written by training
with ``--hessian-every`` (see :func:`paper_figs.rundir.hessian_points`). A stale curve file is
named in the output.

The first panel compares the activations (mean over images, then over seeds; the paper's
figure). Then one panel per activation shows the spread: one thin line per seed and, where
``hessian_curve.json`` gives them, the 25-75% quantiles of lambda_max over the test images as a
band per seed (``metrics.jsonl`` holds only the mean and median over images: the panel says so).
All panels share the y scale: log when every value is positive, else symmetric-log (a ReLU
network's input Hessian is 0 almost everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from paper_figs.actnames import act_label, colors_for
from paper_figs.output import epoch_axis, plain_log_ticks, pyplot, save_figure
from paper_figs.rundir import hessian_image_spread, hessian_points
from paper_figs.runsets import Context

SPEC = "table1-cifar10"
PAPER_ORDER = ("relu", "lisht", "gelu", "mish", "silu")  # then any other run of the spec


@dataclass
class Curves:
    """One activation's lambda_max: per seed (epochs, means) and the image spread if known."""

    act: str
    seeds: list[tuple[list[int], list[float]]] = field(default_factory=list)
    spread: list[tuple[list[int], list[float], list[float]]] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)

    def mean_over_seeds(self) -> tuple[list[int], np.ndarray]:
        """Epochs every seed measured and the mean over seeds there."""
        common = sorted(set.intersection(*(set(e) for e, _ in self.seeds)))
        values = np.array([[dict(zip(e, v, strict=True))[t] for t in common]
                           for e, v in self.seeds])
        return common, values.mean(axis=0) if common else np.zeros(0)


def hessian_curves(ctx: Context) -> dict[str, Curves]:
    """``{run name: Curves}`` of every run of the spec with lambda_max data, in the paper's
    order and then the spec's; runs without data are reported missing."""
    groups = {g.name: g for g in ctx.groups(SPEC, "fig3")}
    order = [n for n in PAPER_ORDER if n in groups] + [n for n in groups if n not in PAPER_ORDER]
    curves = {}
    for name in order:
        group = groups[name]
        found = Curves(str(group.paper.get("act") or name))
        for run in group.runs:
            if run.stale_hessian:
                ctx.note("fig3", f"{run.path.name}: {run.stale_hessian}")
            pts = hessian_points(run)
            if pts is None:
                continue
            found.seeds.append((pts[0], pts[1]))
            found.sources.add(pts[2])
            spread = hessian_image_spread(run) if pts[2] == "hessian_curve.json" else None
            if spread is not None:
                found.spread.append(spread)
        if not found.seeds:
            reason = "" if not group.runs else \
                " (run has no hessian_lambda_max_mean / hessian_curve.json)"
            ctx.missing.setdefault("fig3", []).append(
                f"{Path(ctx.runs_dir) / ctx.scale / SPEC / name}{reason}")
            continue
        curves[name] = found
    return curves


def _y_scale(axes, curves: dict[str, Curves]) -> None:
    values = np.concatenate([np.asarray(v, float) for c in curves.values() for _, v in c.seeds]
                            + [np.asarray(s[i], float) for c in curves.values()
                               for s in c.spread for i in (1, 2)])
    positive = values[values > 0]
    for ax in axes:
        if values.size and (values > 0).all():
            ax.set_yscale("log")  # the curves span orders of magnitude across activations
            plain_log_ticks(ax.yaxis)
        elif positive.size:  # a 0 (ReLU): linear below the decade of the smallest positive
            from matplotlib.ticker import FuncFormatter

            ax.set_yscale("symlog", linthresh=10 ** np.floor(np.log10(positive.min())))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def build_figure3(ctx: Context):
    """The Figure 3 matplotlib figure, or None without any lambda_max data."""
    curves = hessian_curves(ctx)
    if not curves:
        return None
    plt = pyplot()
    n = 1 + len(curves)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False,
                             sharex=True, sharey=True)
    axes = list(grid.flat)
    colors = colors_for(c.act for c in curves.values())
    overview = axes[0]
    for c in curves.values():
        epochs, mean = c.mean_over_seeds()
        k = len(c.seeds)
        overview.plot(epochs, mean, marker="o", ms=3, color=colors[c.act],
                      label=f"{act_label(c.act)} (n={k} seed{'s' if k > 1 else ''})")
    overview.set_title("mean over test images, then over seeds", fontsize=9)
    overview.legend(fontsize=7)
    for ax, c in zip(axes[1:], curves.values(), strict=False):
        color = colors[c.act]
        for i, (epochs, values) in enumerate(c.seeds):
            ax.plot(epochs, values, color=color, lw=1, marker=".", ms=3, alpha=0.9,
                    label="mean over images, one line per seed" if i == 0 else None)
        for i, (epochs, q25, q75) in enumerate(c.spread):
            ax.fill_between(epochs, q25, q75, color=color, alpha=0.18, lw=0,
                            label="25-75% of images, per seed" if i == 0 else None)
        source = " + ".join(sorted(c.sources))
        what = "" if c.spread else "\nno spread over images (metrics.jsonl: mean/median only)"
        if all(v == 0 for _, values in c.seeds for v in values):
            what += "\nlambda_max = 0 at every measured epoch"
        ax.set_title(f"{act_label(c.act)}: {len(c.seeds)} seed(s), {source}{what}", fontsize=8)
        ax.legend(fontsize=6, loc="best")
    for ax in axes[n:]:
        ax.set_visible(False)
    _y_scale(axes[:n], curves)
    last = max(max(e) for c in curves.values() for e, _ in c.seeds)
    for ax in axes[:n]:
        ax.set_xlim(0, 1.05 * last + 1)  # training starts at epoch 0, even with one point
        epoch_axis(ax)
    for row in grid:
        row[0].set_ylabel(r"input-Hessian $\lambda_{\max}$")
    fig.suptitle(f"Figure 3: input-Hessian maximum eigenvalue ({ctx.scale} scale)")
    fig.tight_layout()
    return fig


def figure3(ctx: Context) -> list[Path]:
    """lambda_max against epoch: activations compared, then each with its spread."""
    fig = build_figure3(ctx)
    if fig is None:
        return []
    return save_figure(fig, ctx.out_dir, "fig3_hessian_lambda_max",
                       lambda line: ctx.note("fig3", line))

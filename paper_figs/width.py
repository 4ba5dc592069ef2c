"""Figure 7: robust test error against Wide ResNet width factor, ReLU vs SiLU."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from paper_figs.actnames import act_label, colors_for
from paper_figs.output import pyplot, save_figure
from paper_figs.runsets import Context

SPEC = "fig7-width"
LAST_EPOCHS = 3  # "Each data point shows the average for last 3 epochs."


def width_points(ctx: Context) -> dict[str, list[tuple[int, float, float]]]:
    """``{act: [(width factor, robust test error %, robust train error %)]}`` sorted by width.

    Each point is the mean over the run's last 3 epochs. The width factor is read from the run's
    paper-scale arch (``wrn-28-W``), so a scale that changes depth keeps the paper's label.
    """
    points: dict[str, list[tuple[int, float, float]]] = {}
    for name, (cfg, run) in ctx.runs(SPEC).items():
        if run is None:
            ctx.note_missing("fig7", SPEC, name)
            continue
        match = re.fullmatch(r"wrn-\d+-(\d+)", str(cfg.get("arch", "")))
        test = run.mean_last("test_robust_acc", LAST_EPOCHS)
        train = run.mean_last("train_robust_acc", LAST_EPOCHS)
        if match is None or test is None:
            continue
        train_err = float("nan") if train is None else 100 * (1 - train)
        points.setdefault(cfg["act"], []).append((int(match.group(1)), 100 * (1 - test),
                                                  train_err))
    return {act: sorted(pts) for act, pts in points.items()}


def figure7(ctx: Context) -> list[Path]:
    """Plot robust test error (solid) and train error (dashed) against width; also a CSV."""
    points = width_points(ctx)
    if not points:
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    colors = colors_for(points)
    for act, pts in points.items():
        widths = [p[0] for p in pts]
        color = colors[act]
        ax.plot(widths, [p[1] for p in pts], marker="o", color=color,
                label=f"{act_label(act)} test")
        ax.plot(widths, [p[2] for p in pts], marker=".", ls="--", color=color,
                label=f"{act_label(act)} train")
    ax.set_xlabel("width factor")
    ax.set_ylabel(f"robust error (%), mean of last {LAST_EPOCHS} epochs")
    ax.set_title(f"Figure 7: width sweep ({ctx.scale} scale)")
    ax.legend(fontsize=8)
    paths = save_figure(fig, ctx.out_dir, "fig7_width")
    csv_path = ctx.out_dir / "fig7_width.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["act", "width_factor", "robust_test_error_pct", "robust_train_error_pct"])
        for act, pts in points.items():
            writer.writerows([act, w, f"{te:.4f}", f"{tr:.4f}"] for w, te, tr in pts)
    return [*paths, csv_path]

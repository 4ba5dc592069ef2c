"""Beyond the paper: does the generalization gap follow the activation's curvature?

Over every CIFAR-10 run that exists at the scale (Tables 1-3 and the curvature sweep, every
seed a point), the robust and standard generalization gap (train minus test accuracy, at the
last epoch and at the best-validation epoch) and the input-Hessian lambda_max (the last value
measured) are set against the activation's curvature: the certified max f'' from
``curvtools.certified.curvature`` for smooth activations, the paper's |1 - k| for LeakyReLU
(ReLU = LeakyReLU with k = 0: curvature 1). For each it reports Spearman's rank correlation and a
bootstrap 95% confidence interval (runs resampled with replacement, fixed seed), over all runs
and over the runs that fitted the training set (not ``underfit``: a run that never fits has a
small gap because it learned little, not because it generalizes). Each point's marker shows its
regime: size grows with the final train robust accuracy, underfit runs are hollow.

Writes ``synthesis.png``/``.pdf``, ``synthesis.json`` and ``synthesis.md``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paper_figs.output import plain_log_ticks, pyplot, save_figure
from paper_figs.rundir import RunData, hessian_points
from paper_figs.runsets import Context, settings_of
from paper_figs.tables import fit_regime

SPECS = ("table1-cifar10", "table2-pswish", "table3-leakyrelu", "curvature-sweep")
METRICS = {
    "robust_gap_last": "robust gap, last epoch (pp)",
    "robust_gap_best": "robust gap, best-val epoch (pp)",
    "standard_gap_last": "standard gap, last epoch (pp)",
    "standard_gap_best": "standard gap, best-val epoch (pp)",
    "lambda_max_last": "input-Hessian lambda_max, last measured",
}
BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0


@dataclass
class Point:
    """One run directory: its activation, curvature, regime and the gaps."""

    run: str
    act: str
    params: dict[str, float]
    curvature: float
    regime: str
    train_robust_acc: float | None
    train_clean_acc: float | None
    robust_gap_last: float | None
    robust_gap_best: float | None
    standard_gap_last: float | None
    standard_gap_best: float | None
    lambda_max_last: float | None


def activation_of(run: RunData, fallback: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """(name, parameters) of a run's activation from config.json (model_config or settings)."""
    model = run.config.get("model_config")
    if isinstance(model, dict) and isinstance(model.get("act"), dict):
        act = model["act"]
        return str(act.get("name")), {k: float(v) for k, v in (act.get("params") or {}).items()
                                      if isinstance(v, int | float)}
    s = {**fallback, **settings_of(run.config)}
    params = {k: float(s[k]) for k in ("k", "beta") if isinstance(s.get(k), int | float)}
    return str(s.get("act")), params


def curvature_of(act: str, params: dict[str, float]) -> float:
    """The paper's curvature: |1 - k| for LeakyReLU (ReLU: k = 0), else the certified max f''."""
    if act == "relu":
        return 1.0
    if act == "leakyrelu":
        return abs(1.0 - params.get("k", 0.0))
    from curvtools.activations import resolve
    from curvtools.certified import curvature

    return float(curvature(resolve(act, **params)).max_value)


def _pct_gap(row: dict[str, Any] | None, kind: str) -> float | None:
    if not row:
        return None
    train, test = row.get(f"train_{kind}_acc"), row.get(f"test_{kind}_acc")
    if not isinstance(train, int | float) or not isinstance(test, int | float):
        return None
    return 100.0 * (train - test)


def run_point(name: str, run: RunData, fallback: dict[str, Any]) -> Point:
    act, params = activation_of(run, fallback)
    last = run.rows[-1]
    hess = hessian_points(run)
    clean = run.final("train_clean_acc")
    robust = run.final("train_robust_acc")
    return Point(name, act, params, curvature_of(act, params),
                 fit_regime(None if clean is None else 100 * clean),
                 None if robust is None else 100 * robust, None if clean is None else 100 * clean,
                 _pct_gap(last, "robust"), _pct_gap(run.best_val_row, "robust"),
                 _pct_gap(last, "clean"), _pct_gap(run.best_val_row, "clean"),
                 hess[1][-1] if hess else None)


def collect(ctx: Context) -> list[Point]:
    """Every run of :data:`SPECS` at the scale with metrics, each seed a point."""
    points = []
    for spec in SPECS:
        for group in ctx.groups(spec, "synthesis"):
            for run in group.runs:
                name = f"{spec}/{run.path.name}"
                points.append(run_point(name, run, group.paper))
    return points


def spearman_ci(x: list[float], y: list[float], n_boot: int = BOOTSTRAP,
                seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """Spearman's rho of (x, y) and a percentile bootstrap 95% CI (pairs resampled).

    ``rho`` is None with fewer than 3 points or a constant variable; resamples whose rank
    correlation is undefined (a constant resample) are dropped and counted.
    """
    from scipy.stats import spearmanr

    n = len(x)
    out: dict[str, Any] = {"n": n, "rho": None, "ci95": None, "bootstrap": n_boot,
                           "bootstrap_seed": seed, "undefined_resamples": 0}
    if n < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return out
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    out["rho"] = float(spearmanr(xa, ya).statistic)
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        xs, ys = xa[idx], ya[idx]
        if np.ptp(xs) == 0 or np.ptp(ys) == 0:
            out["undefined_resamples"] += 1
            continue
        rhos.append(spearmanr(xs, ys).statistic)
    rhos = [r for r in rhos if math.isfinite(r)]
    if rhos:
        out["ci95"] = [float(np.percentile(rhos, 2.5)), float(np.percentile(rhos, 97.5))]
    return out


def statistics_of(points: list[Point]) -> dict[str, dict[str, Any]]:
    """``{metric: {"all": spearman_ci, "fitted": spearman_ci over non-underfit runs}}``."""
    stats = {}
    for key in METRICS:
        have = [p for p in points if getattr(p, key) is not None]
        fitted = [p for p in have if p.regime != "underfit"]
        stats[key] = {
            "all": spearman_ci([p.curvature for p in have], [getattr(p, key) for p in have]),
            "fitted": spearman_ci([p.curvature for p in fitted],
                                  [getattr(p, key) for p in fitted])}
    return stats


def _fmt(s: dict[str, Any]) -> str:
    if s["rho"] is None:
        return f"n={s['n']}: too few runs"
    ci = "CI —" if s["ci95"] is None else f"95% CI [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]"
    return f"rho={s['rho']:.2f}, {ci}, n={s['n']}"


def to_markdown(points: list[Point], stats: dict[str, dict[str, Any]], scale: str) -> str:
    out = [f"## Synthesis: generalization gap and lambda_max against curvature ({scale} scale)",
           "", "Spearman's rank correlation with the activation's curvature (max f'' from "
           "curvtools for smooth activations, |1-k| for LeakyReLU, ReLU = 1); 95% CI from "
           f"{BOOTSTRAP} bootstrap resamples of the runs (seed {BOOTSTRAP_SEED}). 'fitted' "
           "leaves out runs whose final train clean accuracy is below 60% (underfit). Train "
           "accuracy is the last epoch's running accuracy on the training attack's examples "
           "(as Table 1's Final Train); test accuracy is the per-epoch evaluation of "
           "metrics.jsonl.", "",
           "| Quantity | all runs | fitted runs only |", "|---|---|---|"]
    for key, title in METRICS.items():
        out.append(f"| {title} | {_fmt(stats[key]['all'])} | {_fmt(stats[key]['fitted'])} |")
    out += ["", "| Run | Activation | Curvature | Regime | Train clean / robust | Robust gap "
            "last / best-val | Standard gap last / best-val | lambda_max |",
            "|---|---|---|---|---|---|---|---|"]

    def f(v: float | None, digits: int = 1) -> str:
        return "—" if v is None else f"{v:.{digits}f}"

    for p in sorted(points, key=lambda p: p.curvature):
        params = ", ".join(f"{k}={v:g}" for k, v in p.params.items())
        out.append(f"| {p.run} | {p.act}{f'({params})' if params else ''} | {p.curvature:.3g} | "
                   f"{p.regime} | {f(p.train_clean_acc)} / {f(p.train_robust_acc)} | "
                   f"{f(p.robust_gap_last)} / {f(p.robust_gap_best)} | "
                   f"{f(p.standard_gap_last)} / {f(p.standard_gap_best)} | "
                   f"{f(p.lambda_max_last, 3)} |")
    return "\n".join(out) + "\n"


def _short(p: Point) -> str:
    params = ",".join(f"{k}={v:g}" for k, v in p.params.items())
    return f"{p.act}({params})" if params else p.act


def build_figure(points: list[Point], stats: dict[str, dict[str, Any]], scale: str):
    """Six panels: the five quantities against curvature, then the regime (train robust acc)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    panels = [*METRICS, "train_robust_acc"]
    for ax, key in zip(axes.flat, panels, strict=True):
        have = [p for p in points if getattr(p, key) is not None]
        for p in have:
            size = 20 + 1.5 * (p.train_robust_acc or 0.0)
            hollow = p.regime == "underfit"
            ax.scatter([p.curvature], [getattr(p, key)], s=size,
                       facecolors="none" if hollow else "tab:blue", edgecolors="tab:blue")
            if len(have) <= 30:
                ax.annotate(_short(p), (p.curvature, getattr(p, key)), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("activation curvature (max f'', LeakyReLU |1-k|)")
        ax.margins(0.15)
        if have and all(p.curvature > 0 for p in have):
            ax.set_xscale("log")
            plain_log_ticks(ax.xaxis)
        if key == "train_robust_acc":
            ax.set_title("regime: final train robust accuracy (%)", fontsize=9)
        else:
            ax.set_title(f"{METRICS[key]}\nall: {_fmt(stats[key]['all'])}", fontsize=8)
        values = [getattr(p, key) for p in have]
        if key == "lambda_max_last" and values and min(values) > 0 and \
                max(values) > 20 * min(values):  # log only when it spans orders of magnitude
            ax.set_yscale("log")
            plain_log_ticks(ax.yaxis)
    fig.suptitle(f"Synthesis ({scale} scale): gaps vs curvature, {len(points)} runs; marker "
                 "size = train robust accuracy, hollow = underfit (train clean < 60%)")
    fig.tight_layout()
    return fig


def synthesis(ctx: Context) -> list[Path]:
    """Write synthesis.png/.pdf/.json/.md into ``ctx.out_dir``; [] when no run exists."""
    points = collect(ctx)
    if not points:
        ctx.missing.setdefault("synthesis", []).append(
            f"no runs of {', '.join(SPECS)} at scale {ctx.scale!r}")
        return []
    stats = statistics_of(points)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    paths = save_figure(build_figure(points, stats, ctx.scale), ctx.out_dir, "synthesis",
                        lambda line: ctx.note("synthesis", line))
    js, md = ctx.out_dir / "synthesis.json", ctx.out_dir / "synthesis.md"
    js.write_text(json.dumps({"scale": ctx.scale, "specs": list(SPECS),
                              "statistics": stats, "points": [asdict(p) for p in points]},
                             indent=2) + "\n")
    md.write_text(to_markdown(points, stats, ctx.scale))
    return [*paths, js, md]

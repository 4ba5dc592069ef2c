"""The synthesis entry: writes synthesis.png/.pdf, .json and .md. The figure has one row per
analysed spec and one panel per outcome (gap_paper, gap_like, test_robust) against
x = log2(curvature).

Each training seed has its own colour, marker and line through its runs (hollow markers: the
run underfit, final train clean < 60%); a seed that is not a complete block is drawn grey and
dotted and named "not in the test". Black: the fitted model of the complete blocks (the pooled
within-seed slope through the mean; for test_robust also the quadratic of the interior-peak
test, its vertex marked). Each panel's title states the estimate, its 95% CI, p, and the
number of seeds and runs; a caption under the panels states the method.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

from paper_figs.output import pyplot, save_figure
from paper_figs.runsets import Context
from paper_figs.stats import BOOTSTRAP, PERMUTATIONS
from paper_figs.synthesis import (
    ANALYSES,
    PEAK_OUTCOME,
    TREND_OUTCOMES,
    SpecAnalysis,
    analyse_all,
    ci_text,
    p_text,
    to_json,
    to_markdown,
)

SEED_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
               "tab:pink", "tab:olive", "tab:cyan", "#393b79")
SEED_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
PANEL_TITLES = {"gap_paper": "gap_paper (pp)", "gap_like": "gap_like (pp)",
                "test_robust": "test robust accuracy (%)"}


def _title(a: SpecAnalysis, outcome: str) -> str:
    """The panel's result in two or three lines: estimate and CI; p; seeds and runs."""
    if outcome in a.not_tested:
        return f"{PANEL_TITLES[outcome]}: not tested\n({a.not_tested[outcome]})"
    t = a.trends[outcome]
    n = f"{t.n_seeds} seed{'s' if t.n_seeds != 1 else ''}, {t.n_runs} runs"
    if outcome != PEAK_OUTCOME:
        return (f"{PANEL_TITLES[outcome]}: slope {t.slope:+.2f} per doubling, 95% CI "
                f"{ci_text(t.ci95_bootstrap)} (seeds resampled)\n"
                f"p = {p_text(t.p_greater)} (one-sided), Page's L p = "
                f"{p_text(t.page_p_greater)}; {n}")
    pk = a.peak
    vertex = "no maximum" if pk.vertex is None else \
        f"vertex x* = {pk.vertex:.2f}, 95% CI {ci_text(pk.vertex_ci95)}"
    return (f"{PANEL_TITLES[outcome]}: b2 = {pk.b2:+.2f}, Freedman-Lane p = "
            f"{p_text(pk.p_concave)} (one-sided)\n{vertex}: interior peak "
            f"{'yes' if pk.interior_peak else 'no'}\n"
            f"trend slope {t.slope:+.2f}, p = {p_text(t.p_two_sided)} (two-sided); {n}")


def _draw_seeds(ax, a: SpecAnalysis, outcome: str) -> None:
    used = set(a.blocks[outcome].seeds)
    seeds = sorted({r.seed for r in a.placed()})
    for i, seed in enumerate(seeds):
        mine = sorted((r for r in a.placed() if r.seed == seed and
                       getattr(r, outcome) is not None), key=lambda r: r.x)
        if not mine:
            continue
        xs = [r.x for r in mine]
        ys = [getattr(r, outcome) for r in mine]
        tested = seed in used
        color = SEED_COLORS[i % len(SEED_COLORS)] if tested else "0.6"
        marker = SEED_MARKERS[i % len(SEED_MARKERS)]
        label = f"seed {seed}" + ("" if tested else " (not a complete block: not in the test)")
        ax.plot(xs, ys, color=color, lw=0.9, ls="-" if tested else ":", alpha=0.8,
                label=label)
        for r, y in zip(mine, ys, strict=True):
            hollow = r.regime == "underfit"
            ax.scatter([r.x], [y], marker=marker, s=28, zorder=3, edgecolors=color,
                       facecolors="none" if hollow else color, linewidths=1.1)


def _draw_fit(ax, a: SpecAnalysis, outcome: str) -> None:
    if outcome not in a.trends:
        return
    b = a.blocks[outcome]
    grid = np.linspace(b.x.min(), b.x.max(), 100)
    t = a.trends[outcome]
    mean_y, mean_x = float(b.y.mean()), float(b.x.mean())
    peak = outcome == PEAK_OUTCOME
    ax.plot(grid, mean_y + t.slope * (grid - mean_x), color="black", lw=2,
            ls="--" if peak else "-",
            label="within-seed OLS slope" + (" (dashed here)" if peak else ""))
    if outcome == PEAK_OUTCOME and a.peak is not None:
        pk = a.peak
        x2 = b.x ** 2
        intercept = mean_y - pk.b1 * mean_x - pk.b2 * float(x2.mean())
        ax.plot(grid, intercept + pk.b1 * grid + pk.b2 * grid ** 2, color="black", lw=2,
                label="quadratic (seed effects averaged)")
        if pk.vertex is not None and b.x.min() <= pk.vertex <= b.x.max():
            ax.axvline(pk.vertex, color="black", lw=0.8, ls=":")


def _axis(ax, a: SpecAnalysis) -> None:
    xs = [lv["x"] for lv in a.levels]
    ax.set_xticks(xs, [f"{lv['label']}\n{lv['x']:.2g}" for lv in a.levels], fontsize=7)
    ax.set_xlabel("level and x = log2 curvature (max f''; approx. curvature if not smooth)",
                  fontsize=8)
    if xs:
        span = (max(xs) - min(xs)) or 1.0
        ax.set_xlim(min(xs) - 0.08 * span, max(xs) + 0.08 * span)
    ax.grid(alpha=0.3)
    ax.margins(y=0.12)


def build_figure(analyses: list[SpecAnalysis], scale: str):
    """Rows = specs, columns = gap_paper, gap_like, test_robust."""
    plt = pyplot()
    outcomes = (*TREND_OUTCOMES, PEAK_OUTCOME)
    fig, grid = plt.subplots(len(analyses), 3, figsize=(19, 5.0 * len(analyses)),
                             squeeze=False)
    for row, a in zip(grid, analyses, strict=True):
        for ax, outcome in zip(row, outcomes, strict=True):
            _draw_seeds(ax, a, outcome)
            _draw_fit(ax, a, outcome)
            _axis(ax, a)
            ax.set_title(f"{a.spec} ({a.status})\n{_title(a, outcome)}", fontsize=8,
                         loc="left")
            if not ax.has_data():
                ax.text(0.5, 0.5, "no run has this outcome yet\n(see synthesis.md: Missing)",
                        ha="center", va="center", transform=ax.transAxes, fontsize=9)
        handles, labels = row[0].get_legend_handles_labels()
        h2, l2 = row[2].get_legend_handles_labels()
        extra = [(h, lab) for h, lab in zip(h2, l2, strict=True) if lab not in labels]
        if handles or extra:  # beside the row, off the data
            row[2].legend([*handles, *(h for h, _ in extra)],
                          [*labels, *(lab for _, lab in extra)], fontsize=7,
                          loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    caption = (f"Synthesis ({scale} scale). Points: runs, one colour, marker and line per "
               "training seed; hollow = underfit (final train clean < 60%); grey dotted = a "
               "seed that is not a complete block (not in the test). Black: fit to the "
               "complete blocks with seed fixed effects. p: permutations of x within seeds "
               f"(exact, or {PERMUTATIONS:,} random); CI: 95% percentile bootstrap over whole "
               f"seeds ({BOOTSTRAP:,}). Regime and missing files per run: synthesis.md.")
    fig.text(0.01, 0.005, textwrap.fill(caption, 190), fontsize=8, va="bottom")
    fig.tight_layout(rect=(0, 0.05 / len(analyses) + 0.02, 1, 1))
    return fig


def synthesis(ctx: Context) -> list[Path]:
    """Write synthesis.png/.pdf/.json/.md into ``ctx.out_dir``; [] when no spec has runs."""
    analyses = analyse_all(ctx)
    if not analyses:
        ctx.missing.setdefault("synthesis", []).append(
            f"no runs of {', '.join(ANALYSES)} at scale {ctx.scale!r}")
        return []
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    paths = save_figure(build_figure(analyses, ctx.scale), ctx.out_dir, "synthesis",
                        lambda line: ctx.note("synthesis", line))
    js, md = ctx.out_dir / "synthesis.json", ctx.out_dir / "synthesis.md"
    js.write_text(json.dumps(to_json(analyses, ctx.scale), indent=2) + "\n")
    md.write_text(to_markdown(analyses, ctx.scale))
    for a in analyses:
        for outcome, why in a.not_tested.items():
            ctx.note("synthesis", f"{a.spec} {outcome}: not tested ({why})")
    return [*paths, js, md]

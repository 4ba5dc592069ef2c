"""Beyond the paper: does the generalization gap grow with the activation's curvature?

The pre-registered analysis (:mod:`paper_figs.stats`) of each curvature experiment that has
runs at the scale: the PSwish beta sweep ``pswish-curvature`` (beta in {0.5, ..., 20}, 4+ seeds)
and Table 1's activations ``table1-cifar10`` (and, with the same analysis but not
pre-registered, Tables 2-3 and the older curvature sweep). Each spec is its own design: its runs
are the levels, ``x = log2(curvature)`` from the activation registry
(:mod:`paper_figs.outcomes`), its training seeds are the blocks.

* ``gap_paper`` and ``gap_like``: the trend test (pooled within-seed slope, permutation p,
  Page's L, seed-bootstrap and t CIs);
* ``test_robust``: the Freedman-Lane interior-peak test (the claim that test robust accuracy
  peaks at max f'' 4-10) and the trend test with its two-sided p.

Only complete seed blocks enter a test; every other run is listed, never dropped silently, and
no run is dropped by its regime (shown beside its numbers). Writes ``synthesis.png``/``.pdf``
(:mod:`paper_figs.synthesis_render`), ``synthesis.json`` and ``synthesis.md``.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from paper_figs.outcomes import RunOutcome, run_outcome
from paper_figs.runsets import Context
from paper_figs.stats import (
    BOOTSTRAP,
    PERMUTATIONS,
    RNG_SEED,
    Blocks,
    PeakResult,
    TrendResult,
    complete_blocks,
    detectable_slope,
    peak_test,
    trend_test,
)

# spec -> its status in the plan; the order of the sections
ANALYSES = {"pswish-curvature": "pre-registered", "table1-cifar10": "pre-registered",
            "table2-pswish": "same analysis, not pre-registered",
            "table3-leakyrelu": "same analysis, not pre-registered",
            "curvature-sweep": "same analysis, not pre-registered (mixes PSwish and LeakyReLU)"}
TREND_OUTCOMES = ("gap_paper", "gap_like")
PEAK_OUTCOME = "test_robust"
OUTCOME_TITLES = {
    "gap_paper": "gap_paper: train robust (training attack, mean of last 5 epochs) - Final "
                 "Test robust (pp)",
    "gap_like": "gap_like: robust acc. on the run's training images - on test images, same "
                "eval attack (pp)",
    "test_robust": "test_robust: Final Test robust accuracy (%, eval_last.json)",
}
SECONDARY = ("test_robust_best", "clean_gap_paper", "clean_gap_like", "lambda_max_last")


@dataclass
class SpecAnalysis:
    """One spec's design, runs and tests."""

    spec: str
    status: str
    runs: list[RunOutcome]
    levels: list[dict[str, Any]]  # {"level", "label", "x", "curvature", "source"} by x
    seeds_listed: list[int]  # the manifest's seeds (or those on disk)
    blocks: dict[str, Blocks] = field(default_factory=dict)
    trends: dict[str, TrendResult] = field(default_factory=dict)
    peak: PeakResult | None = None
    not_tested: dict[str, str] = field(default_factory=dict)  # outcome -> why no test

    def placed(self) -> list[RunOutcome]:
        """The runs on the curvature axis (x known)."""
        return [r for r in self.runs if r.x is not None]


def short_label(runs: list[RunOutcome], level: str) -> str:
    """A level's axis label: the parameters when every level has the same activation
    (``beta=4``), else the activation's label (``SiLU``); the run name without either."""
    mine = next((r for r in runs if r.level == level), None)
    if mine is None:
        return level
    if len({r.act for r in runs}) == 1 and mine.params:
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in mine.params.items())
    return mine.label


def collect(ctx: Context, spec: str) -> tuple[list[RunOutcome], list[int]]:
    """Every run of ``spec`` at the scale with metrics (each seed one), and the seeds the
    manifest lists (plus any seed on disk)."""
    found = ctx.spec_runs(spec, "synthesis")
    runs = [run_outcome(spec, g.name, seed, run, g.paper)
            for g in ctx.groups(spec, "synthesis") for seed, run in sorted(g.seeds.items())]
    listed = [s for s in (found.manifest or {}).get("seeds", []) if isinstance(s, int)]
    return runs, sorted(set(listed) | {r.seed for r in runs})


def analyse(ctx: Context, spec: str, *, permutations: int = PERMUTATIONS,
            bootstrap: int = BOOTSTRAP, rng_seed: int = RNG_SEED) -> SpecAnalysis | None:
    """The analysis of one spec, or None when it has no runs at the scale."""
    runs, seeds = collect(ctx, spec)
    if not runs:
        return None
    result = SpecAnalysis(spec, ANALYSES.get(spec, "same analysis"), runs, [], seeds)
    placed = result.placed()
    for level in dict.fromkeys(r.level for r in placed):
        first = next(r for r in placed if r.level == level)
        result.levels.append({"level": level, "label": short_label(placed, level),
                              "x": first.x, "curvature": first.curvature,
                              "source": first.curvature_source})
    result.levels.sort(key=lambda lv: (lv["x"], lv["level"]))
    options = {"permutations": permutations, "bootstrap": bootstrap, "rng_seed": rng_seed}
    for outcome in (*TREND_OUTCOMES, PEAK_OUTCOME):
        rows = [(r.level, r.x, r.seed, getattr(r, outcome)) for r in placed]
        have = {(r.level, r.seed) for r in placed}
        rows += [(lv["level"], lv["x"], s, None) for s in seeds for lv in result.levels
                 if (lv["level"], s) not in have]  # a listed seed without the run: reported
        blocks = complete_blocks(rows)
        result.blocks[outcome] = blocks
        distinct = len({lv["x"] for lv in result.levels})
        need = 3 if outcome == PEAK_OUTCOME else 2
        if blocks.n_seeds == 0:
            result.not_tested[outcome] = "no complete seed block"
        elif distinct < need:
            result.not_tested[outcome] = f"{distinct} curvature level(s); the test needs {need}"
        elif outcome == PEAK_OUTCOME:
            result.peak = peak_test(blocks, **options)
            result.trends[outcome] = result.peak.trend
        else:
            result.trends[outcome] = trend_test(blocks, **options)
    return result


def analyse_all(ctx: Context) -> list[SpecAnalysis]:
    """:func:`analyse` of every spec in :data:`ANALYSES` that has runs at the scale."""
    return [a for spec in ANALYSES if (a := analyse(ctx, spec)) is not None]


# --- Markdown and JSON ------------------------------------------------------------------------


def _f(v: float | None, digits: int = 2, sign: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def ci_text(ci: tuple[float, float] | None, digits: int = 2) -> str:
    """``[low, high]`` or a dash."""
    return "—" if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def p_text(p: float) -> str:
    """A p-value in 4 decimals (scientific below 1e-4)."""
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def _blocks_text(b: Blocks) -> str:
    used = f"seeds {', '.join(map(str, b.seeds))}" if b.seeds else "none"
    return used + ("; left out: " + "; ".join(b.left_out) if b.left_out else "")


def result_rows(a: SpecAnalysis) -> list[list[str]]:
    """The tests table of one spec: outcome, test, statistic, p, CI, seeds, runs, blocks."""
    rows = []
    for outcome in (*TREND_OUTCOMES, PEAK_OUTCOME):
        b = a.blocks[outcome]
        if outcome in a.not_tested:
            rows.append([outcome, "—", "not tested: " + a.not_tested[outcome], "—", "—",
                         str(b.n_seeds), str(b.n_runs), _blocks_text(b)])
            continue
        t = a.trends[outcome]
        two = outcome == PEAK_OUTCOME
        rows.append([outcome, "trend: within-seed OLS slope (pp per doubling of curvature)",
                     _f(t.slope, sign=True),
                     (f"{p_text(t.p_two_sided)} (two-sided)" if two else
                      f"{p_text(t.p_greater)} (one-sided, slope > 0)") + f", {t.method} "
                     f"{t.permutations:,} permutations",
                     f"{ci_text(t.ci95_bootstrap)} seed bootstrap; {ci_text(t.ci95_t)} t",
                     str(t.n_seeds), str(t.n_runs), _blocks_text(b)])
        if not two:
            rows.append([outcome, "Page's L (within-seed ranks, increasing curvature)",
                         f"L = {t.page_L:g} (null mean {t.page_L_null_mean:g})",
                         f"{p_text(t.page_p_greater)} (one-sided)", "—", str(t.n_seeds),
                         str(t.n_runs), _blocks_text(b)])
        else:
            pk = a.peak
            vertex = "none (b2 >= 0)" if pk.vertex is None else f"{pk.vertex:.2f}"
            rows.append([outcome, "interior peak: y = a_seed + b1 x + b2 x^2, Freedman-Lane",
                         f"b2 = {pk.b2:+.3f}, b1 = {pk.b1:+.3f}, vertex x* = {vertex}",
                         f"{p_text(pk.p_concave)} (one-sided, b2 < 0)",
                         f"vertex {ci_text(pk.vertex_ci95)} seed bootstrap "
                         f"({pk.vertex_no_maximum} of {pk.bootstrap} resamples without a "
                         f"maximum); interior peak: {'yes' if pk.interior_peak else 'no'}",
                         str(pk.n_seeds), str(pk.n_runs), _blocks_text(b)])
    return rows


def level_rows(a: SpecAnalysis) -> list[list[str]]:
    """Per level: mean +- sd over seeds and n of the outcomes, and the regime counts."""
    rows = []
    for lv in a.levels:
        mine = [r for r in a.placed() if r.level == lv["level"]]
        cells = [lv["label"], f"{lv['x']:.3g}", str(len(mine))]
        for key in ("gap_paper", "gap_like", "test_robust", "test_robust_best"):
            vals = [getattr(r, key) for r in mine if getattr(r, key) is not None]
            if not vals:
                cells.append("— (n=0)")
                continue
            sd = f" ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else ""
            cells.append(f"{statistics.fmean(vals):.2f}{sd} (n={len(vals)})")
        counts = {g: sum(r.regime == g for r in mine) for g in dict.fromkeys(
            r.regime for r in mine)}
        cells.append(", ".join(f"{g} {n}" for g, n in counts.items()))
        rows.append(cells)
    return rows


def run_rows(a: SpecAnalysis) -> list[list[str]]:
    """Per run: where it sits, its regime and every outcome, and what is missing."""
    rows = []
    for r in sorted(a.runs, key=lambda r: (r.x is None, r.x or 0.0, r.level, r.seed)):
        rows.append([r.folder, r.label, "—" if r.x is None else f"{r.x:.3g}", str(r.seed),
                     r.regime, r.epochs, _f(r.train_clean_final, 1), _f(r.gap_paper),
                     _f(r.gap_like), _f(r.test_robust), _f(r.test_robust_best),
                     f"{_f(r.clean_gap_paper)} / {_f(r.clean_gap_like)}",
                     "—" if r.lambda_max_last is None else
                     f"{r.lambda_max_last:.3g} (epoch {r.lambda_max_epoch})",
                     "; ".join(r.missing) or "—"])
    return rows


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows)]


def power_line(a: SpecAnalysis) -> str:
    """The slope this design detects with 80% power (one-sided 0.05), from gap_paper's
    residual sd (or gap_like's)."""
    for outcome in TREND_OUTCOMES:
        t = a.trends.get(outcome)
        if t is not None and t.residual_sd and t.n_levels >= 2:
            xs = a.blocks[outcome].x
            now = detectable_slope(t.residual_sd, xs, t.n_seeds)
            more = ", ".join(f"{s} seeds {detectable_slope(t.residual_sd, xs, s):.2f}"
                             for s in (4, 8, 16) if s != t.n_seeds)
            return (f"Power (normal approximation): with the residual sd of {outcome} "
                    f"({t.residual_sd:.2f} pp) this design ({t.n_levels} levels, "
                    f"{t.n_seeds} seeds) detects a slope of {now:.2f} pp per doubling with "
                    f"80% power at one-sided alpha 0.05 ({more}).")
    return "Power: needs a trend test with a residual sd (2+ levels, 2+ runs per seed)."


def spec_markdown(a: SpecAnalysis) -> list[str]:
    levels = ", ".join(f"{lv['label']} (x = {lv['x']:.3g}, {lv['source']})" for lv in a.levels)
    unplaced = sorted({r.level for r in a.runs if r.x is None})
    out = [f"### {a.spec} ({a.status})", "",
           f"Levels by curvature (x = log2 curvature): {levels or 'none'}."
           + (f" Not on the axis (curvature unknown): {', '.join(unplaced)}." if unplaced
              else ""),
           f"Seeds: {', '.join(map(str, a.seeds_listed))}. Only complete seed blocks enter a "
           "test; a block missing a run (or its outcome) is listed under 'complete blocks "
           "used', never used. No run is left out for its regime.", "",
           *_table(["Outcome", "Test", "Statistic", "p", "95% CI", "Seeds", "Runs",
                    "Complete blocks used"], result_rows(a)), "", power_line(a), "",
           "Per level (mean ± sd over seeds, n):", "",
           *_table(["Level", "x", "Runs", "gap_paper", "gap_like", "test_robust",
                    "Best-Val test robust", "Regimes"], level_rows(a)), "",
           "Per run (pp; regime from the final train clean accuracy):", "",
           *_table(["Run", "Activation", "x", "Seed", "Regime", "Epochs", "Train clean",
                    "gap_paper", "gap_like", "test_robust", "Best-Val test robust",
                    "clean gap paper / like", "lambda_max", "Missing"], run_rows(a)), ""]
    return out


def to_markdown(analyses: list[SpecAnalysis], scale: str) -> str:
    """synthesis.md: the method in words, then one section per spec."""
    head = [f"## Synthesis: generalization gap against activation curvature ({scale} scale)", "",
            "Outcomes (percentage points): " + "; ".join(OUTCOME_TITLES.values()) + ". "
            "x = log2 of the activation's curvature from the registry (certified max f'' of "
            "a smooth activation, its approximate curvature otherwise). Trend: OLS slope with "
            "seed fixed effects (pooled within-seed slope); p from permuting x within each "
            f"seed (exact when (k!)^S <= {PERMUTATIONS:,}, else {PERMUTATIONS:,} random "
            f"permutations, RNG seed {RNG_SEED}); CI: 95% percentile bootstrap over whole "
            f"seeds ({BOOTSTRAP:,} resamples) and the t-interval of the per-seed slopes (with few "
            "seeds the percentile bootstrap is too narrow: read the t-interval beside it). "
            "Interior peak: Freedman-Lane permutation of the reduced model's residuals within "
            "seeds; 'interior peak' only when p < 0.05 and the vertex's bootstrap CI lies "
            "inside the range of x. Regimes: underfit if final train clean < 60%, "
            "interpolates if >= 95%, else partial fit.", ""]
    for a in analyses:
        head += spec_markdown(a)
    return "\n".join(head) + "\n"


def to_json(analyses: list[SpecAnalysis], scale: str) -> dict[str, Any]:
    """synthesis.json: per spec its levels, runs (x, seed, outcomes, regime) and tests."""
    out = []
    for a in analyses:
        tests: dict[str, Any] = {}
        for outcome in (*TREND_OUTCOMES, PEAK_OUTCOME):
            b = a.blocks[outcome]
            entry: dict[str, Any] = {"complete_blocks_used": list(b.seeds),
                                     "left_out": list(b.left_out), "n_seeds": b.n_seeds,
                                     "n_runs": b.n_runs,
                                     "not_tested": a.not_tested.get(outcome)}
            if outcome in a.trends:
                entry["trend"] = a.trends[outcome].to_dict()
            if outcome == PEAK_OUTCOME and a.peak is not None:
                entry["peak"] = {k: v for k, v in a.peak.to_dict().items() if k != "trend"}
            tests[outcome] = entry
        out.append({"spec": a.spec, "status": a.status, "seeds_listed": a.seeds_listed,
                    "levels": a.levels, "runs": [asdict(r) for r in a.runs], "tests": tests,
                    "power": power_line(a)})
    return {"scale": scale, "permutations": PERMUTATIONS, "bootstrap": BOOTSTRAP,
            "rng_seed": RNG_SEED, "analyses": out}

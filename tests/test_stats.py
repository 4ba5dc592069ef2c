"""paper_figs.stats on simulated data with known answers.

Tolerances: every simulation uses a fixed RNG seed, so each test is deterministic; the bands
below are what a CORRECT implementation passes with high probability over seeds (so a seed was
not hunted for), and what a wrong one (a biased p, resampling runs, a wrong SE) fails.
* uniformity: Kolmogorov-Smirnov p > 0.001 over N_SETS p-values;
* rejection rate at alpha = 0.05: inside the central 99.9% binomial interval for N_SETS sets;
* power: the Monte Carlo rate within 3 binomial standard errors plus 0.03 of the normal
  approximation (the permutation test does not know sigma: it behaves like a t test with
  S(k-1)-1 = 19 df, a little below the z test the power function uses).
Few permutations per simulated set (199) keep the file to seconds; with M = 199 the test at
0.05 rejects when at most 9 permuted statistics reach the observed one, an exact 5% level.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from paper_figs.stats import (
    Blocks,
    complete_blocks,
    detectable_slope,
    peak_test,
    seeds_for_power,
    slope_power,
    t_quantile,
    trend_test,
    within_ranks,
)

X = np.log2(np.array([0.5, 1, 2, 4, 10, 20]) / 2)  # PSwish max f'' = beta / 2
SEEDS = 4
N_SETS = 400
M = 199


def simulate(rng, slope=0.0, quad=0.0, sigma=1.0, seeds=SEEDS, x=X, vertex=0.0) -> Blocks:
    """Seed effects (sd 5) + slope x + quad (x - vertex)^2 + N(0, sigma^2) noise."""
    effects = rng.normal(0, 5, (seeds, 1))
    y = effects + slope * x + quad * (x - vertex) ** 2 + rng.normal(0, sigma, (seeds, len(x)))
    return Blocks(np.asarray(x, float), y, tuple(range(seeds)), tuple(map(str, x)))


def binomial_band(n: int, p: float = 0.05) -> tuple[int, int]:
    return int(sps.binom.ppf(0.0005, n, p)), int(sps.binom.ppf(0.9995, n, p))


def null_pvalues(key: str, seed: int, **kw) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(N_SETS):
        blocks = simulate(rng, **kw)
        if key == "peak":
            out.append(peak_test(blocks, permutations=M, bootstrap=0, rng_seed=i).p_concave)
        else:
            r = trend_test(blocks, permutations=M, bootstrap=0, rng_seed=i)
            out.append(r.p_greater if key == "trend" else r.page_p_greater)
    return np.array(out)


def test_trend_p_is_uniform_under_the_null_and_rejects_about_5_percent():
    p = null_pvalues("trend", 1)
    assert sps.kstest(p, "uniform").pvalue > 0.001
    lo, hi = binomial_band(N_SETS)
    assert lo <= int((p <= 0.05).sum()) <= hi


def test_page_p_is_never_below_uniform_under_the_null_and_rejects_at_most_about_5_percent():
    # L takes few distinct values (integer ranks), so its p is discrete and conservative: the
    # empirical CDF may lie below the uniform one but never clearly above it
    p = null_pvalues("page", 2)
    assert sps.kstest(p, "uniform", alternative="greater").pvalue > 0.001
    lo, hi = binomial_band(N_SETS)
    assert int((p <= 0.05).sum()) <= hi
    assert int((p <= 0.05).sum()) >= lo  # conservative, not blind


def test_the_trend_test_detects_a_known_slope_at_the_power_the_power_function_states():
    sigma, target = 1.0, 0.7
    delta = detectable_slope(sigma, X, SEEDS, power=target)
    assert slope_power(delta, sigma, X, SEEDS) == pytest.approx(target)
    rng = np.random.default_rng(3)
    hits = sum(trend_test(simulate(rng, slope=delta, sigma=sigma), permutations=M,
                          bootstrap=0, rng_seed=i).p_greater <= 0.05 for i in range(N_SETS))
    rate = hits / N_SETS
    assert abs(rate - target) <= 3 * math.sqrt(target * (1 - target) / N_SETS) + 0.03


def test_freedman_lane_keeps_5_percent_under_a_linear_trend_with_nonzero_b1():
    p = null_pvalues("peak", 4, slope=3.0)
    lo, hi = binomial_band(N_SETS)
    assert lo <= int((p <= 0.05).sum()) <= hi
    assert sps.kstest(p, "uniform").pvalue > 0.001


def test_freedman_lane_detects_a_known_concave_quadratic_and_locates_its_vertex():
    rng = np.random.default_rng(5)
    peak_at = 1.5  # inside (x_min, x_max) = (-2, 3.32)
    result = peak_test(simulate(rng, quad=-1.0, vertex=peak_at, sigma=0.5),
                       permutations=2000, bootstrap=2000)
    assert result.b2 == pytest.approx(-1.0, abs=0.2) and result.p_concave < 0.01
    lo, hi = result.vertex_ci95
    assert lo < peak_at < hi and result.interior_peak
    assert result.vertex == pytest.approx(peak_at, abs=0.3)


def test_a_concave_curve_whose_vertex_lies_outside_the_range_is_no_interior_peak():
    rng = np.random.default_rng(6)
    result = peak_test(simulate(rng, quad=-0.3, vertex=8.0, sigma=0.2),  # saturating rise
                       permutations=2000, bootstrap=2000)
    assert result.p_concave < 0.05 and result.vertex > X.max()
    assert not result.interior_peak


def test_a_straight_line_has_no_interior_peak_and_a_two_sided_trend():
    rng = np.random.default_rng(7)
    result = peak_test(simulate(rng, slope=-2.0, sigma=0.5), permutations=2000, bootstrap=2000)
    assert not result.interior_peak
    assert result.trend.slope < 0 and result.trend.p_two_sided < 0.01
    assert result.trend.p_greater > 0.9


def test_with_zero_noise_the_slope_and_its_intervals_are_exact():
    x, slope = X, 2.5
    y = np.array([[7.0], [-3.0], [0.5]]) + slope * x
    r = trend_test(Blocks(x, y, (0, 1, 2), tuple(map(str, x))), permutations=999)
    assert r.slope == pytest.approx(slope, abs=1e-12)
    assert r.per_seed_slopes == pytest.approx([slope] * 3, abs=1e-12)
    assert r.ci95_bootstrap == pytest.approx((slope, slope), abs=1e-12)
    assert r.ci95_t == pytest.approx((slope, slope), abs=1e-12)
    assert r.residual_sd == pytest.approx(0.0, abs=1e-9)
    assert r.p_greater == pytest.approx(1 / 1000)  # nothing reaches it but itself
    assert r.page_L == pytest.approx(3 * sum(j * j for j in range(1, 7)))  # ranks = positions


def brute_force_p(x: np.ndarray, y: np.ndarray) -> float:
    """The exact one-sided p, the slow obvious way: every within-seed permutation of x."""
    observed = trend_test(Blocks(x, y, tuple(range(len(y))), ()), bootstrap=0).slope
    k, count, total = len(x), 0, 0
    for perms in itertools.product(itertools.permutations(range(k)), repeat=len(y)):
        xs = np.array([x[list(p)] for p in perms])
        xc = xs - xs.mean(axis=1, keepdims=True)
        yc = y - y.mean(axis=1, keepdims=True)
        slope = (xc * yc).sum() / (xc ** 2).sum()
        count += slope >= observed - 1e-12
        total += 1
    return count / total


def test_exact_enumeration_matches_brute_force_and_random_permutations_agree():
    rng = np.random.default_rng(8)
    x = np.array([0.0, 1.0, 2.5])
    y = rng.normal(0, 1, (3, 3)) + 0.4 * x
    blocks = Blocks(x, y, (0, 1, 2), ("a", "b", "c"))
    exact = trend_test(blocks, bootstrap=0)  # (3!)^3 = 216 <= 20,000: enumerated
    assert exact.method == "exact" and exact.permutations == 216
    assert exact.p_greater == pytest.approx(brute_force_p(x, y))
    m = 20_000
    rand = trend_test(blocks, bootstrap=0, method="random", permutations=m)
    assert rand.method == "random" and rand.permutations == m
    se = math.sqrt(exact.p_greater * (1 - exact.p_greater) / m)
    assert abs(rand.p_greater - exact.p_greater) <= 4 * se + 1 / m
    assert abs(rand.page_p_greater - exact.page_p_greater) <= 0.02


def test_the_bootstrap_resamples_whole_seeds_never_runs():
    # zero noise, per-seed slopes 1, 2 and 4: a whole-seed resample's slope is the mean of
    # three of them; resampling runs (points) would give other slopes
    x = np.array([0.0, 1.0, 2.0, 3.0])
    y = np.array([[0.0], [5.0], [-2.0]]) + np.array([[1.0], [2.0], [4.0]]) * x
    r = trend_test(Blocks(x, y, (0, 1, 2), ()), bootstrap=3000)
    possible = {round(sum(c) / 3, 9) for c in itertools.combinations_with_replacement(
        (1.0, 2.0, 4.0), 3)}
    assert {round(float(b), 9) for b in r.bootstrap_slopes} <= possible
    assert len({round(float(b), 9) for b in r.bootstrap_slopes}) == len(possible)
    assert r.ci95_bootstrap[0] >= 1.0 and r.ci95_bootstrap[1] <= 4.0


def test_results_are_deterministic_given_the_rng_seed():
    blocks = simulate(np.random.default_rng(9), slope=0.3)
    a, b = (trend_test(blocks, permutations=500, bootstrap=500, rng_seed=11) for _ in range(2))
    assert a == b and np.array_equal(a.bootstrap_slopes, b.bootstrap_slopes)
    c = trend_test(blocks, permutations=500, bootstrap=500, rng_seed=12)
    assert c.slope == a.slope and c.ci95_bootstrap != a.ci95_bootstrap


def test_page_l_uses_within_seed_ranks_with_average_ranks_for_ties():
    assert within_ranks(np.array([[3.0, 1.0, 1.0, 7.0]])).tolist() == [[3.0, 1.5, 1.5, 4.0]]
    y = np.array([[1.0, 3.0, 2.0], [5.0, 5.0, 9.0]])
    r = trend_test(Blocks(np.array([0.0, 1.0, 2.0]), y, (0, 1), ()), bootstrap=0)
    # ranks: seed 0 [1, 3, 2], seed 1 [1.5, 1.5, 3] -> R = [2.5, 4.5, 5]; L = 2.5 + 9 + 15
    assert r.page_L == pytest.approx(26.5)
    assert r.page_L_null_mean == pytest.approx(2 * 3 * 16 / 4)


def test_complete_blocks_leave_out_a_seed_missing_a_run_and_say_so():
    def row(beta, seed, y):
        return f"beta{beta:g}", float(np.log2(beta / 2)), seed, y

    rows = [row(b, s, 10.0 * s + b) for s in range(4) for b in (2, 0.5, 1)
            if (s, b) != (1, 2)]  # seed 1 has no beta2 run
    rows = [r if r[2:] != (2, 21.0) else row(1, 2, None) for r in rows]  # no outcome
    rows = [r if r[2:] != (3, 30.5) else row(0.5, 3, float("nan")) for r in rows]
    blocks = complete_blocks(rows)
    assert blocks.seeds == (0,) and blocks.levels == ("beta0.5", "beta1", "beta2")
    assert blocks.y.tolist() == [[0.5, 1.0, 2.0]] and blocks.n_runs == 3
    assert blocks.left_out == ("seed 1: no value at beta2", "seed 2: no value at beta1",
                               "seed 3: no value at beta0.5")


def test_t_quantile_matches_scipy():
    for df in range(1, 12):
        assert t_quantile(0.975, df) == pytest.approx(sps.t.ppf(0.975, df), rel=1e-9)
        assert t_quantile(0.1, df) == pytest.approx(sps.t.ppf(0.1, df), rel=1e-9)


def test_power_functions_agree_with_each_other():
    sigma = 2.0
    assert slope_power(0.0, sigma, X, 4) == pytest.approx(0.05)
    assert slope_power(0.0, sigma, X, 4, two_sided=True) == pytest.approx(0.05)
    d = detectable_slope(sigma, X, 6, power=0.8)
    assert slope_power(d, sigma, X, 6) == pytest.approx(0.8)
    n = seeds_for_power(d, sigma, X, power=0.8)
    assert n == 6 and slope_power(d, sigma, X, n - 1) < 0.8
    se = sigma / math.sqrt(4 * ((X - X.mean()) ** 2).sum())
    assert slope_power(1.0, sigma, X, 4) == pytest.approx(
        1 - sps.norm.cdf(sps.norm.ppf(0.95) - 1.0 / se))

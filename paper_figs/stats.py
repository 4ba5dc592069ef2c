"""The pre-registered statistics of the curvature experiments (numpy and the standard library).

The design: ``k`` levels of an activation's curvature, ``x = log2(curvature)``, each trained with
the same ``S`` training seeds on a fixed data subset, so every seed is a paired block of ``k``
runs. Only complete blocks enter a test (:func:`complete_blocks` reports the others).

* :func:`trend_test`: the OLS slope of y on x with seed fixed effects (the pooled within-seed
  slope, points per doubling of curvature); p from permuting x within each seed independently
  (all ``(k!)^S`` permutations when that is at most ``permutations``, else that many random
  ones, ``p = (1 + #{T* >= T}) / (1 + M)``); Page's L on within-seed ranks with p from the same
  permutations; a 95% percentile bootstrap CI resampling whole seeds and the t-interval of the
  per-seed slopes.
* :func:`peak_test`: ``y = a_seed + b1 x + b2 x^2``; one-sided Freedman-Lane p for ``b2 < 0``
  (permute the residuals of the reduced model ``a_seed + b1 x`` within seeds), the vertex
  ``-b1 / (2 b2)`` with a seed-bootstrap CI, and the trend test on the same data.
* :func:`slope_power`, :func:`seeds_for_power`, :func:`detectable_slope`: the design's power
  (normal approximation, ``SE = sigma / sqrt(S * sum (x - xbar)^2)``).

Every function is deterministic given ``rng_seed``.

Example::

    >>> blocks = complete_blocks([("b1", 0.0, 0, 1.0), ("b2", 1.0, 0, 3.0),
    ...                           ("b1", 0.0, 1, 2.0), ("b2", 1.0, 1, 4.5)])
    >>> trend_test(blocks).slope
    2.25
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from curvtools.errors import BadInput

PERMUTATIONS = 20_000
BOOTSTRAP = 10_000
RNG_SEED = 0
EXACT_LIMIT = 5_000_000  # a forced exact enumeration larger than this would exhaust memory
_REL_TOL = 1e-9  # a permuted statistic within this (relative) of the observed one counts as tied


@dataclass(frozen=True)
class Blocks:
    """Complete seed blocks: ``y[s, j]`` is seed ``seeds[s]``'s outcome at level ``levels[j]``.

    Levels are sorted by ``x`` (increasing curvature); ``left_out`` says which seeds were not
    complete (one line each) and ``n_runs`` counts the runs in complete blocks.
    """

    x: np.ndarray
    y: np.ndarray
    seeds: tuple[int, ...]
    levels: tuple[str, ...]
    left_out: tuple[str, ...] = ()

    @property
    def n_seeds(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_runs(self) -> int:
        return int(self.y.size)


def complete_blocks(observations: Iterable[tuple[str, float, int, float | None]]) -> Blocks:
    """:class:`Blocks` from ``(level, x, seed, y)`` rows; ``y`` None or NaN = missing.

    A seed that lacks any level (or has it twice) is left out and named in ``left_out``; every
    level must have one ``x``. Raises :class:`BadInput` when a level has two different x.
    """
    rows = list(observations)
    xs: dict[str, float] = {}
    cells: dict[int, dict[str, list[float]]] = {}
    for level, x, seed, y in rows:
        level = str(level)
        if level in xs and not math.isclose(xs[level], float(x), rel_tol=1e-12, abs_tol=1e-12):
            raise BadInput(f"level {level}: two x values ({xs[level]:g} and {float(x):g})")
        xs[level] = float(x)
        got = cells.setdefault(int(seed), {}).setdefault(level, [])
        if y is not None and math.isfinite(float(y)):
            got.append(float(y))
    levels = sorted(xs, key=lambda name: (xs[name], name))
    used, left_out, table = [], [], []
    for seed in sorted(cells):
        have = cells[seed]
        missing = [lv for lv in levels if len(have.get(lv, [])) == 0]
        twice = [lv for lv in levels if len(have.get(lv, [])) > 1]
        if missing or twice:
            why = ([f"no value at {', '.join(missing)}"] if missing else []) + \
                  ([f"two values at {', '.join(twice)}"] if twice else [])
            left_out.append(f"seed {seed}: {'; '.join(why)}")
            continue
        used.append(seed)
        table.append([have[lv][0] for lv in levels])
    y = np.array(table, dtype=float).reshape(len(used), len(levels))
    return Blocks(np.array([xs[lv] for lv in levels], dtype=float), y, tuple(used),
                  tuple(levels), tuple(left_out))


# --- the permutation machinery ----------------------------------------------------------------


def _all_permutations(k: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(k))), dtype=np.intp).reshape(-1, k)


def _plan(k: int, n_seeds: int, permutations: int, method: str) -> str:
    if method not in ("auto", "exact", "random"):
        raise BadInput(f"method {method!r}: use auto, exact or random")
    total = math.factorial(k) ** n_seeds
    if method == "exact" and total > EXACT_LIMIT:
        raise BadInput(f"exact enumeration of {k}!^{n_seeds} permutations is too many "
                       f"(limit {EXACT_LIMIT:,}); use random")
    if method != "auto":
        return method
    return "exact" if total <= permutations else "random"


def _permuted_sums(pairs: list[tuple[np.ndarray, np.ndarray]], method: str, permutations: int,
                   rng_seed: int) -> list[np.ndarray]:
    """For each ``(a [k], data [S, k])``: ``sum_s sum_j a[pi_s(j)] * data[s, j]`` over the
    within-block permutations ``pi`` (all of them, identity included, or ``permutations``
    random ones from ``rng_seed``; the same permutations for every pair)."""
    n_seeds, k = pairs[0][1].shape
    if method == "exact":
        table = _all_permutations(k)
        out = []
        for a, data in pairs:
            dist = np.zeros(1)
            for s in range(n_seeds):  # per block its k! contributions; the sum over blocks
                dist = (dist[:, None] + (a[table] @ data[s])[None, :]).ravel()
            out.append(dist)
        return out
    rng = np.random.default_rng([rng_seed, 0])
    base = np.broadcast_to(np.arange(k), (permutations, n_seeds, k))
    perms = rng.permuted(base, axis=2)
    return [np.einsum("msk,sk->m", a[perms], data) for a, data in pairs]


def _p_value(null: np.ndarray, observed: float, method: str, side: str, scale: float) -> float:
    """Permutation p: exact = share of the distribution at least as extreme; random =
    (1 + count) / (1 + M). ``side``: greater, less or two-sided (|T*| >= |T|)."""
    tol = _REL_TOL * max(scale, 1e-300)
    if side == "greater":
        hits = int(np.count_nonzero(null >= observed - tol))
    elif side == "less":
        hits = int(np.count_nonzero(null <= observed + tol))
    else:
        hits = int(np.count_nonzero(np.abs(null) >= abs(observed) - tol))
    if method == "exact":
        return hits / null.size
    return (1 + hits) / (1 + null.size)


def within_ranks(y: np.ndarray) -> np.ndarray:
    """Ranks 1..k within each row of ``y`` [S, k], ties given their average rank."""
    y = np.asarray(y, dtype=float)
    ranks = np.empty_like(y)
    for s, row in enumerate(y):
        order = np.argsort(row, kind="stable")
        r = np.empty(len(row))
        r[order] = np.arange(1, len(row) + 1)
        for value in np.unique(row):  # average ranks for ties
            tied = row == value
            r[tied] = r[tied].mean()
        ranks[s] = r
    return ranks


# --- small-sample quantiles without scipy -----------------------------------------------------


def t_cdf(t: float, df: int) -> float:
    """Student's t distribution function for an integer ``df`` >= 1 (closed form,
    Abramowitz & Stegun 26.7.3-4)."""
    if df < 1:
        raise BadInput(f"t distribution needs df >= 1, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        series, term = 0.0, math.cos(theta)
        for i in range(1, (df - 1) // 2 + 1):
            series += term
            term *= c2 * (2 * i) / (2 * i + 1)
        inside = 2 / math.pi * (theta + s * series)
    else:
        series, term = 0.0, 1.0
        for i in range(1, df // 2 + 1):
            series += term
            term *= c2 * (2 * i - 1) / (2 * i)
        inside = s * series
    return 0.5 + math.copysign(0.5 * min(inside, 1.0), t)


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with integer ``df`` (bisection on :func:`t_cdf`)."""
    if not 0 < q < 1:
        raise BadInput(f"quantile level {q} must be in (0, 1)")
    if q < 0.5:
        return -t_quantile(1 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
    return 0.5 * (lo + hi)


# --- the trend test ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrendResult:
    """The pooled within-seed slope of y on x and its tests (see :func:`trend_test`)."""

    slope: float  # y units per unit of x (points per doubling of curvature)
    p_greater: float  # one-sided, slope > 0
    p_two_sided: float  # |T*| >= |T|
    page_L: float  # sum_j j * R_j over levels in increasing x, R_j the summed within-seed ranks
    page_L_null_mean: float  # S * k * (k + 1)^2 / 4
    page_p_greater: float  # same permutations, L* >= L
    method: str  # "exact" (all (k!)^S permutations) or "random"
    permutations: int  # how many permuted statistics the p-values count
    rng_seed: int
    ci95_bootstrap: tuple[float, float] | None  # percentile, whole seeds resampled
    bootstrap: int
    ci95_t: tuple[float, float] | None  # mean +- t_{S-1} sd / sqrt(S) of the per-seed slopes
    per_seed_slopes: tuple[float, ...]
    residual_sd: float | None  # of the seed-FE + slope model, df = S(k-1) - 1
    n_seeds: int
    n_runs: int
    n_levels: int
    seeds: tuple[int, ...]
    left_out: tuple[str, ...]
    bootstrap_slopes: np.ndarray = field(repr=False, compare=False, default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able numbers (the bootstrap replicates left out)."""
        return _plain({k: v for k, v in self.__dict__.items() if k != "bootstrap_slopes"})


def _checked(blocks: Blocks, min_levels: int) -> None:
    if blocks.n_seeds < 1:
        raise BadInput("no complete seed block: " + ("; ".join(blocks.left_out) or "no runs"))
    if len(np.unique(blocks.x)) < min_levels:
        raise BadInput(f"{len(np.unique(blocks.x))} distinct x levels; the test needs "
                       f"{min_levels}")


def _percentile_ci(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def trend_test(blocks: Blocks, *, permutations: int = PERMUTATIONS, bootstrap: int = BOOTSTRAP,
               rng_seed: int = RNG_SEED, method: str = "auto") -> TrendResult:
    """The pre-registered trend test of ``blocks`` (see the module docstring).

    ``method``: ``auto`` enumerates all ``(k!)^S`` within-seed permutations when there are at
    most ``permutations`` of them, else draws ``permutations`` random ones; ``exact`` or
    ``random`` force one. Example: 4 seeds x 6 levels -> 720^4 permutations, so 20,000 random.
    """
    _checked(blocks, 2)
    x, y = blocks.x, blocks.y
    n_seeds, k = y.shape
    xc = x - x.mean()
    sxx = float(xc @ xc)
    yc = y - y.mean(axis=1, keepdims=True)
    per_seed = yc @ xc / sxx
    slope = float(per_seed.mean())
    positions = within_ranks(x[None, :])[0]  # level order by x, ties averaged
    ranks = within_ranks(y)
    plan = _plan(k, n_seeds, permutations, method)
    t_null, l_null = _permuted_sums([(xc, yc), (positions, ranks)], plan, permutations,
                                     rng_seed)
    t_null = t_null / (n_seeds * sxx)
    t_scale = float(np.abs(xc).sum() * np.abs(yc).sum() / (n_seeds * sxx)) or 1.0
    page = float((ranks * positions).sum())
    resid = yc - per_seed.mean() * xc
    df = n_seeds * (k - 1) - 1
    boot, ci_boot, ci_t = None, None, None
    if n_seeds >= 2:
        half = t_quantile(0.975, n_seeds - 1) * per_seed.std(ddof=1) / math.sqrt(n_seeds)
        ci_t = (slope - half, slope + half)
        if bootstrap > 0:
            rng = np.random.default_rng([rng_seed, 1])
            boot = per_seed[rng.integers(0, n_seeds, (bootstrap, n_seeds))].mean(axis=1)
            ci_boot = _percentile_ci(boot)
    return TrendResult(
        slope=slope, p_greater=_p_value(t_null, slope, plan, "greater", t_scale),
        p_two_sided=_p_value(t_null, slope, plan, "two-sided", t_scale),
        page_L=page, page_L_null_mean=n_seeds * k * (k + 1) ** 2 / 4,
        page_p_greater=_p_value(l_null, page, plan, "greater", page),
        method=plan, permutations=int(t_null.size), rng_seed=rng_seed, ci95_bootstrap=ci_boot,
        bootstrap=bootstrap if boot is not None else 0, ci95_t=ci_t,
        per_seed_slopes=tuple(float(b) for b in per_seed),
        residual_sd=float(math.sqrt((resid ** 2).sum() / df)) if df > 0 else None,
        n_seeds=n_seeds, n_runs=blocks.n_runs, n_levels=k, seeds=blocks.seeds,
        left_out=blocks.left_out, bootstrap_slopes=boot)


# --- the interior-peak test -------------------------------------------------------------------


@dataclass(frozen=True)
class PeakResult:
    """``y = a_seed + b1 x + b2 x^2``: Freedman-Lane p for ``b2 < 0`` and the vertex."""

    b1: float
    b2: float
    p_concave: float  # one-sided, b2 < 0 (Freedman-Lane)
    vertex: float | None  # -b1 / (2 b2), None when b2 >= 0 (no maximum)
    vertex_ci95: tuple[float, float]  # seed bootstrap; +-inf ends when > 2.5% have no maximum
    vertex_no_maximum: int  # bootstrap resamples with b2 >= 0
    x_range: tuple[float, float]
    interior_peak: bool  # p < alpha and the vertex CI inside (x_min, x_max)
    alpha: float
    method: str
    permutations: int
    bootstrap: int
    rng_seed: int
    trend: TrendResult  # the same data's trend test (its two-sided p answers "no trend")
    n_seeds: int
    n_runs: int
    seeds: tuple[int, ...]
    left_out: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able numbers, the trend test nested."""
        out = {k: v for k, v in self.__dict__.items() if k != "trend"}
        return _plain({**out, "trend": self.trend.to_dict()})


def quadratic_weights(x: np.ndarray) -> np.ndarray:
    """The [2, k] matrix H with ``(b1, b2) = H @ (y - mean(y))`` for one block: the OLS of
    y on x and x^2 with an intercept (same design in every block)."""
    design = np.column_stack([x - x.mean(), x ** 2 - (x ** 2).mean()])
    return np.linalg.pinv(design)


def peak_test(blocks: Blocks, *, permutations: int = PERMUTATIONS, bootstrap: int = BOOTSTRAP,
              rng_seed: int = RNG_SEED, method: str = "auto", alpha: float = 0.05
              ) -> PeakResult:
    """The pre-registered interior-peak test of ``blocks`` (see the module docstring).

    Freedman-Lane: the reduced model (seed effects + b1 x) is fitted, its residuals are
    permuted within each seed and added back, the full model is refitted; ``p = (1 + #{b2* <=
    b2}) / (1 + M)`` (exact: the share). Because every seed has the same design, b2* is the
    b2-weights of the full fit applied to the permuted residuals (the fitted part has b2 = 0).
    """
    _checked(blocks, 3)
    x, y = blocks.x, blocks.y
    n_seeds, k = y.shape
    weights = quadratic_weights(x)
    yc = y - y.mean(axis=1, keepdims=True)
    coef = yc @ weights.T  # [S, 2] per-seed (b1, b2); the pooled fit is their mean
    b1, b2 = (float(v) for v in coef.mean(axis=0))
    xc = x - x.mean()
    reduced_slope = float((yc @ xc).sum() / (n_seeds * (xc @ xc)))
    resid = yc - reduced_slope * xc
    plan = _plan(k, n_seeds, permutations, method)
    (null,) = _permuted_sums([(weights[1], resid)], plan, permutations, rng_seed)
    null = null / n_seeds
    scale = float(np.abs(weights[1]).sum() * np.abs(resid).sum() / n_seeds) or 1.0
    p = _p_value(null, b2, plan, "less", scale)
    vertex = -b1 / (2 * b2) if b2 < 0 else None
    low, high, no_max = -np.inf, np.inf, 0
    if n_seeds >= 2 and bootstrap > 0:  # one seed has no between-seed spread to resample
        rng = np.random.default_rng([rng_seed, 2])
        boot = coef[rng.integers(0, n_seeds, (bootstrap, n_seeds))].mean(axis=1)  # [B, 2]
        has_max = boot[:, 1] < 0
        no_max = int((~has_max).sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            vertices = -boot[:, 0] / (2 * boot[:, 1])
        # a resample without a maximum counts against both ends: the CI is conservative
        # and "lower"/"higher" never interpolate towards an infinite end
        low = np.percentile(np.where(has_max, vertices, -np.inf), 2.5, method="lower")
        high = np.percentile(np.where(has_max, vertices, np.inf), 97.5, method="higher")
    x_range = (float(x.min()), float(x.max()))
    inside = bool(x_range[0] < low and high < x_range[1])
    return PeakResult(b1=b1, b2=b2, p_concave=p, vertex=vertex,
                      vertex_ci95=(float(low), float(high)),
                      vertex_no_maximum=no_max, x_range=x_range,
                      interior_peak=bool(p < alpha and vertex is not None and inside),
                      alpha=alpha, method=plan, permutations=int(null.size),
                      bootstrap=bootstrap if n_seeds >= 2 else 0, rng_seed=rng_seed,
                      trend=trend_test(blocks, permutations=permutations, bootstrap=bootstrap,
                                       rng_seed=rng_seed, method=method),
                      n_seeds=n_seeds, n_runs=blocks.n_runs, seeds=blocks.seeds,
                      left_out=blocks.left_out)


# --- power ------------------------------------------------------------------------------------


def _sxx(x: Iterable[float]) -> float:
    xs = np.asarray(list(x), dtype=float)
    sxx = float(((xs - xs.mean()) ** 2).sum()) if xs.size else 0.0
    if sxx <= 0:
        raise BadInput("the x levels must differ for a slope")
    return sxx


def slope_power(delta: float, sigma: float, x: Iterable[float], seeds: int, alpha: float = 0.05,
                two_sided: bool = False) -> float:
    """Power of the trend test for a true slope ``delta`` with run noise sd ``sigma``, levels
    ``x`` and ``seeds`` complete blocks: normal approximation of the within-seed OLS slope,
    ``SE = sigma / sqrt(seeds * sum (x - xbar)^2)``. One-sided (slope > 0) unless ``two_sided``.

    Example: ``slope_power(1.0, 2.0, np.log2([0.25, 0.5, 1, 2, 5, 10]), 4)`` -> about 0.90.
    """
    if sigma <= 0 or seeds < 1:
        raise BadInput(f"sigma {sigma} must be > 0 and seeds {seeds} >= 1")
    se = sigma / math.sqrt(seeds * _sxx(x))
    normal = NormalDist()
    if two_sided:
        z = normal.inv_cdf(1 - alpha / 2)
        return 1 - normal.cdf(z - delta / se) + normal.cdf(-z - delta / se)
    return 1 - normal.cdf(normal.inv_cdf(1 - alpha) - delta / se)


def detectable_slope(sigma: float, x: Iterable[float], seeds: int, power: float = 0.8,
                     alpha: float = 0.05) -> float:
    """The smallest slope the one-sided test detects with ``power``: ``(z_{1-alpha} +
    z_power) * SE``."""
    normal = NormalDist()
    se = sigma / math.sqrt(seeds * _sxx(x))
    return (normal.inv_cdf(1 - alpha) + normal.inv_cdf(power)) * se


def seeds_for_power(delta: float, sigma: float, x: Iterable[float], power: float = 0.8,
                    alpha: float = 0.05) -> int:
    """The fewest complete seed blocks that give the one-sided test ``power`` for ``delta``."""
    if delta <= 0:
        raise BadInput(f"slope {delta} must be > 0 to be detected by the one-sided test")
    normal = NormalDist()
    need = ((normal.inv_cdf(1 - alpha) + normal.inv_cdf(power)) * sigma / delta) ** 2 / _sxx(x)
    return max(1, math.ceil(need - 1e-12))


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and tuples as JSON-able Python values (inf as a string)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value

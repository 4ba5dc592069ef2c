"""The certified maximum curvature against a brute-force dense grid and known closed forms."""

import math
import sys

import numpy as np
import pytest
import sympy as sp

from curvtools.activations import resolve, symbol_x
from curvtools.certified import curvature
from curvtools.interval import interval_function
from curvtools.symbolic import Piece, certified_extremum, derivatives

SMOOTH = [("lisht", {}), ("gelu", {}), ("mish", {}), ("silu", {}), ("tanh", {}),
          ("softplus", {"beta": 1.0}), ("pswish", {"beta": 2.0}), ("elu", {"alpha": 1.5}),
          ("expr", {"expr": "x*atan(x)"})]


def _dense_grid_extrema(act):
    d = derivatives(act)
    t = np.linspace(-30, 30, 600_001)
    values = []
    for piece in (d.f2,):
        fn = sp.lambdify(d.x, piece, ["scipy", "numpy"])
        with np.errstate(all="ignore"):
            v = np.asarray(fn(t), dtype=float) * np.ones_like(t)
        values.append(v[np.isfinite(v)])
    v = np.concatenate(values)
    return float(v.max()), float(v.min())


@pytest.mark.parametrize("name,params", SMOOTH, ids=[n for n, _ in SMOOTH])
def test_certified_extrema_enclose_and_dominate_the_dense_grid_extrema(name, params):
    act = resolve(name, **params)
    c = curvature(act)
    grid_max, grid_min = _dense_grid_extrema(act)
    assert c.certified
    assert c.max_lower <= c.max_upper and c.max_upper - c.max_lower <= 2e-9
    assert c.max_upper >= grid_max - 1e-12  # a true upper bound of every sampled value
    assert c.max_value == pytest.approx(grid_max, abs=1e-8)  # and the grid gets close
    assert c.min_lower <= grid_min + 1e-12
    if abs(c.argmin) < 30:  # an infimum approached as |x| -> inf lies outside the grid
        assert c.min_value == pytest.approx(grid_min, abs=1e-8)


@pytest.mark.parametrize("name,params,value,exact", [
    ("lisht", {}, 2.0, "2"),
    ("gelu", {}, math.sqrt(2 / math.pi), "sqrt(2)/sqrt(pi)"),
    ("silu", {}, 0.5, "1/2"),
    ("pswish", {"beta": 0.5}, 0.25, "1/4"),
    ("pswish", {"beta": 4.0}, 2.0, "2"),
    ("softplus", {"beta": 1.0}, 0.25, "1/4"),
])
def test_maximum_is_at_zero_with_the_known_closed_form(name, params, value, exact):
    c = curvature(resolve(name, **params))
    assert c.max_value == pytest.approx(value, abs=1e-12)
    assert c.max_exact == exact and c.argmax_exact == "0"
    assert c.max_lower - 1e-12 <= value <= c.max_upper + 1e-12


def test_mish_maximum_is_not_at_zero_and_exceeds_f2_at_zero():
    c = curvature(resolve("mish"))
    d = derivatives(resolve("mish"))
    f2_at_0 = float(d.f2.subs(d.x, 0))
    assert c.argmax == pytest.approx(-0.08793, abs=1e-4)
    assert c.max_lower > f2_at_0 + 1e-4  # certified: the max beats f''(0) = 0.64
    assert c.max_value == pytest.approx(0.6442046, abs=1e-6)


def test_elu_reports_the_supremum_alpha_over_the_pieces():
    c = curvature(resolve("elu", alpha=1.0))
    assert c.curvature == pytest.approx(1.0, abs=1e-12) and "pieces" in c.kind
    assert any("C1 but not C2" in n for n in c.notes)
    # alpha != 1: f'(0-) = alpha but f'(0+) = 1, so ELU is not even C1; the sup is still alpha
    c = curvature(resolve("elu", alpha=1.5))
    assert c.curvature == pytest.approx(1.5, abs=1e-12)
    assert any("f' jumps at x=0 (by -0.5)" in n for n in c.notes)


def test_leakyrelu_and_relu_use_the_papers_approximate_curvature():
    for k in (0.5, 0.3, 0.2, 0.0, -0.2):
        c = curvature(resolve("leakyrelu", k=k))
        assert c.curvature == pytest.approx(abs(1 - k)) and c.kind.startswith("approximate")
    assert curvature(resolve("relu")).curvature == 1.0


def test_papers_ranking_lisht_gelu_mish_silu_comes_out_of_the_computation():
    values = {n: curvature(resolve(n)).curvature for n in ("silu", "mish", "lisht", "gelu")}
    assert sorted(values, key=values.get, reverse=True) == ["lisht", "gelu", "mish", "silu"]


def test_user_piecewise_linear_expression_gets_the_same_approximation_as_leakyrelu():
    user = curvature(resolve("expr", expr="Max(x, 0.3*x)"))
    assert user.curvature == pytest.approx(curvature(resolve("leakyrelu", k=0.3)).curvature)
    assert user.kind.startswith("approximate")


def test_unbounded_second_derivative_is_reported_uncertified_with_infinite_upper_bound():
    c = curvature(resolve("expr", expr="x**3"))
    assert not c.certified and math.isinf(c.max_upper) and c.max_lower >= 6 * 1024 - 1e-6


def test_unbounded_second_derivative_enclosures_are_proper_on_both_sides():
    c = curvature(resolve("expr", expr="x**3"))
    assert c.max_lower <= c.max_upper and c.min_lower <= c.min_upper
    assert math.isinf(c.min_lower) and c.min_upper <= -6 * 1024 + 1e-6


def test_interval_ends_beyond_the_double_range_round_outward_not_to_infinity():
    x = symbol_x()
    lo, hi = interval_function(x, 2 / x**3)(1e-103, 1e-103)  # 2e309: above the largest double
    assert lo == sys.float_info.max and hi == math.inf  # float() would give lo = inf
    lo, hi = interval_function(x, -2 / x**3)(1e-103, 1e-103)
    assert lo == -math.inf and hi == -sys.float_info.max
    lo, hi = interval_function(x, -(x**2))(1e-200, 1e-200)  # -1e-400 underflows
    assert lo < 0 <= -hi  # float() would give lo = -0.0, above the true value


# (f'', maximize): the extremum on the side of the pole (inf of 2/x**3 at 0+, ...)
POLE_SIDES = [("2/x**3", True), ("2/x**3", False), ("-1/x**2", False), ("1/x**2", True)]


@pytest.mark.parametrize("f2,maximize", POLE_SIDES)
def test_pole_of_f2_is_never_certified_and_its_enclosure_is_never_inverted(f2, maximize):
    x = symbol_x()
    e = sp.sympify(f2, locals={"x": x})
    ext = certified_extremum(x, [Piece(-math.inf, math.inf, e, sp.diff(e, x))],
                             maximize=maximize)  # the default budget: it overflowed before
    assert not ext.certified
    assert ext.lower <= ext.upper, (ext.lower, ext.upper)
    assert math.isfinite(ext.value)  # f'' at a real point: a float end, never an overflowed inf


@pytest.mark.parametrize("f2,maximize", [("-1/x**2", True), ("1/x**2", False)])
def test_the_bound_away_from_a_pole_is_its_exact_limit_at_infinity(f2, maximize):
    x = symbol_x()  # sup of -1/x**2 is 0, approached as |x| -> inf: the pole is irrelevant
    e = sp.sympify(f2, locals={"x": x})
    ext = certified_extremum(x, [Piece(-math.inf, math.inf, e, sp.diff(e, x))],
                             maximize=maximize)
    assert ext.certified and ext.lower == ext.upper == ext.value == 0.0
    assert ext.limit == 0 and math.isinf(ext.argbest) and ext.at_infinity


def test_f2_unbounded_at_a_kink_reports_an_infinite_sup_uncertified():
    c = curvature(resolve("expr", expr="Abs(x)**1.5"))  # f'' = 0.75 / sqrt(|x|)
    assert c.max_lower == c.max_upper == math.inf and c.curvature == math.inf
    assert not c.certified and any("unbounded" in n for n in c.notes)
    assert c.min_lower <= c.min_upper


def test_integer_valued_float_power_is_enclosed_like_the_integer_power():
    x = symbol_x()
    # x**3.0 = exp(3.0 log x) would be undefined for x < 0 and give the whole line
    assert interval_function(x, x**3.0)(-2.0, -1.0) == interval_function(x, x**3)(-2.0, -1.0)
    assert interval_function(x, x**3)(-2.0, -1.0) == (-8.0, -1.0)


@pytest.mark.parametrize("name,beta,value", [("pswish", 1e4, 5e3), ("pswish", 12345.5, 6172.75),
                                             ("softplus", 1e6, 2.5e5)])
def test_any_registry_beta_finishes_in_seconds_and_certifies_the_max(name, beta, value):
    # sympy factored exp(beta x) as a degree-beta polynomial in exp(x): minutes for 1e4
    import time

    start = time.perf_counter()
    c = curvature(resolve(name, beta=beta))
    assert time.perf_counter() - start < 20  # ~2 s here; generous for a loaded machine
    assert c.max_certified and c.max_lower <= value <= c.max_upper


def _silu_f2(t):
    s = 1 / (1 + np.exp(-t))
    return s * (1 - s) * (2 + t * (1 - 2 * s))


def test_small_beta_pswish_minimum_is_beta_times_the_silu_minimum_far_outside_1024():
    from scipy.optimize import minimize_scalar

    # f_beta''(x) = beta f_1''(beta x), f_1 = SiLU: independent float minimum of f_1''
    t = np.linspace(-20, 20, 400_001)
    t0 = t[np.argmin(_silu_f2(t))]
    res = minimize_scalar(_silu_f2, bounds=(t0 - 1e-3, t0 + 1e-3), method="bounded",
                          options={"xatol": 1e-12})
    beta = 0.001
    c = curvature(resolve("pswish", beta=beta))
    assert c.min_value == pytest.approx(beta * res.fun, rel=1e-6)  # -3.69e-5
    assert abs(c.argmin) == pytest.approx(abs(res.x) / beta, rel=1e-4)  # 3436 > 1024
    assert c.min_lower - 1e-15 <= beta * res.fun <= c.min_upper + 1e-15
    assert c.min_certified and not c.argmin_at_infinity


@pytest.mark.parametrize("name,params", [("softplus", {"beta": 0.05}),
                                         ("expr", {"expr": "sqrt(x**2+1)"})])
def test_infimum_approached_at_infinity_is_its_exact_limit_certified(name, params):
    c = curvature(resolve(name, **params))  # inf f'' = 0, approached as |x| -> inf
    assert c.min_lower == c.min_upper == c.min_value == c.min_limit == 0.0
    assert c.argmin_at_infinity and c.min_certified and c.min_exact == "0"


@pytest.mark.parametrize("b", [1, 4, 100, 0.01])
def test_a_user_activation_whose_f2_vanishes_at_both_infinities_gets_one_verdict_for_every_b(b):
    # squareplus: f'' = b / (2 (x^2 + b)^(3/2)); at the window's edge 1.9e-9 for b = 4, above
    # the tolerance: the report said "inf 1.86e-09" and NOT certified for b = 4, "inf 0" for 1
    c = curvature(resolve("expr", expr=f"(x + sqrt(x**2 + {b}))/2"))
    assert c.min_lower == c.min_upper == c.min_value == c.min_limit == 0.0
    assert c.min_certified and c.max_certified and c.certified
    assert c.argmin_at_infinity and not any("NOT certified" in n for n in c.notes)
    assert c.max_value == pytest.approx(1 / (2 * math.sqrt(b)), rel=1e-9)


def test_softplus_infimum_is_exactly_zero_not_a_denormal_in_the_table_and_computed():
    from curvtools.certified_table import lookup
    from curvtools.symbolic import compute_curvature

    for c in (lookup(resolve("softplus")), compute_curvature(resolve("softplus", beta=3.0))):
        assert c.min_lower == c.min_upper == c.min_value == 0.0 and c.min_certified
        assert c.argmin == -math.inf


def test_extremum_taken_on_a_whole_half_line_is_reported_attained_inside_it():
    c = curvature(resolve("expr", expr="x*abs(x)"))  # f'' = -2 on x < 0, 2 on x > 0
    assert c.min_value == -2 and c.argmin < 0 and not c.argmin_at_infinity
    assert c.max_value == 2 and c.argmax > 0 and not c.argmax_at_infinity
    c = curvature(resolve("elu", alpha=1.0))  # min 0 on x > 0
    assert c.min_value == 0 and c.argmin > 0 and not c.argmin_at_infinity
    assert not any("as |x| -> inf" in n for n in c.notes)

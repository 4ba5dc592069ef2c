"""The certified maximum curvature against a brute-force dense grid and known closed forms."""

import math

import numpy as np
import pytest
import sympy as sp

from curvtools.activations import resolve
from curvtools.symbolic import curvature, derivatives

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

"""Edge cases of Lemma 1's bounds (curvtools.lemma.lemma1_bounds)."""

import math

import numpy as np

from curvtools.lemma import lemma1_bounds


def _textbook(c, a, nu):
    return a / nu * (math.sqrt(1 + 2 * nu * c / a**2) - 1)


def test_bounds_equal_the_papers_formula_in_the_regular_case():
    lo, up = lemma1_bounds(0.7, 2.0, 1.5, -0.4)
    assert math.isclose(float(lo), _textbook(0.7, 2.0, 1.5), rel_tol=1e-12)
    assert math.isclose(float(up), _textbook(0.7, 0.4, 1.5), rel_tol=1e-12)


def test_zero_margin_gives_zero_bounds():
    lo, up = lemma1_bounds([0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.5, 0.0])
    assert np.all(lo == 0) and np.all(up == 0)


def test_negative_margin_already_misclassified_gives_zero():
    lo, up = lemma1_bounds(-1.0, 1.0, 1.0, 1.0)
    assert lo == 0 and up == 0


def test_nu_to_zero_limit_is_linear_model_without_cancellation():
    lo, up = lemma1_bounds(1e-3, 2.0, 1e-30, 0.5)
    assert math.isclose(float(lo), 1e-3 / 2.0, rel_tol=1e-12)
    assert math.isclose(float(up), 1e-3 / 0.5, rel_tol=1e-12)
    lo0, up0 = lemma1_bounds(1e-3, 2.0, 0.0, 0.5)
    assert float(lo0) == 1e-3 / 2.0 and float(up0) == 1e-3 / 0.5
    # tiny nu where the textbook form cancels catastrophically
    lo_t, _ = lemma1_bounds(1.0, 1.0, 1e-17, 1.0)
    assert math.isclose(float(lo_t), 1.0, rel_tol=1e-12)


def test_orthogonal_gradient_upper_bound_is_sqrt_2c_over_nu_or_infinite():
    _, up = lemma1_bounds(2.0, 1.0, 4.0, 0.0)
    assert math.isclose(float(up), 1.0, rel_tol=1e-14)
    _, up0 = lemma1_bounds(2.0, 1.0, 0.0, 0.0)
    _, upn = lemma1_bounds(2.0, 1.0, -1.0, 0.0)
    assert math.isinf(up0) and math.isinf(upn)


def test_negative_nu_gives_valid_extended_bounds_or_infinity():
    lo, up = lemma1_bounds(1.0, 2.0, -1.0, 1.5)
    # smallest roots of -1 + a t - t^2/2
    assert math.isclose(float(lo), 2.0 - math.sqrt(2.0), rel_tol=1e-12)
    assert math.isclose(float(up), 1.5 - math.sqrt(1.5**2 - 2), rel_tol=1e-12)
    lo_inf, up_inf = lemma1_bounds(1.0, 1.0, -1.0, 1.0)  # a^2 + 2 nu c < 0
    assert math.isinf(lo_inf) and math.isinf(up_inf)


def test_vectorised_broadcasting_and_nan_propagation():
    c = np.array([[0.5], [1.0]])
    lo, up = lemma1_bounds(c, np.array([1.0, 2.0, np.nan]), 0.3, 0.5)
    assert lo.shape == (2, 3) and up.shape == (2, 3)
    assert np.isnan(lo[:, 2]).all() and np.all(lo[:, :2] <= up[:, :2])

"""Eq. 2 against torch.func.hessian; Lemma 1 against the exact quadratic-model perturbation."""

import math

import numpy as np
import pytest
import torch

from curvtools.activations import resolve
from curvtools.lemma import lemma1_bounds
from curvtools.twolayer import (
    TwoLayerNet,
    gradient_eq2,
    hessian_eq2,
    minimal_perturbation_exact,
    minimal_perturbation_slsqp,
)

SMOOTH = [("silu", {}), ("gelu", {}), ("mish", {}), ("lisht", {}), ("tanh", {}),
          ("pswish", {"beta": 4.0}), ("softplus", {"beta": 2.0}), ("expr", {"expr": "x*atan(x)"})]


@pytest.mark.parametrize("name,params", SMOOTH, ids=[n for n, _ in SMOOTH])
def test_eq2_hessian_and_gradient_equal_torch_func_of_the_same_net(name, params):
    act = resolve(name, **params)
    g = torch.Generator().manual_seed(1)
    d, h, B = 5, 7, 4
    W1 = torch.randn(h, d, generator=g, dtype=torch.float64)
    w2 = torch.randn(h, generator=g, dtype=torch.float64)
    x = 2 * torch.randn(B, d, generator=g, dtype=torch.float64)
    net = TwoLayerNet(act, W1, w2).double()
    H_ref = torch.stack([torch.func.hessian(net)(xi) for xi in x]).detach()
    g_ref = torch.stack([torch.func.grad(net)(xi) for xi in x]).detach()
    H = hessian_eq2(act, W1, w2, x)
    assert H.shape == (B, d, d)
    torch.testing.assert_close(H, H_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gradient_eq2(act, W1, w2, x), g_ref, rtol=1e-10, atol=1e-12)


def _random_problem(rng, d):
    A = rng.standard_normal((d, d))
    H = (A + A.T) / 2 * rng.uniform(0.1, 3)
    g = rng.standard_normal(d) * rng.uniform(0.05, 2)
    c = rng.uniform(0.01, 2)
    return c, g, H


def test_exact_minimal_perturbation_lies_between_lemma1_bounds_on_random_instances():
    rng = np.random.default_rng(0)
    for _ in range(300):
        d = int(rng.integers(1, 7))
        c, g, H = _random_problem(rng, d)
        lam, V = np.linalg.eigh(H)
        res = minimal_perturbation_exact(c, g, H)
        lo, up = lemma1_bounds(c, np.linalg.norm(g), lam[-1], g @ V[:, -1])
        assert lo * (1 - 1e-9) <= res.norm <= up * (1 + 1e-9) or (math.isinf(res.norm)
                                                                   and math.isinf(up))
        if math.isfinite(res.norm):
            q = -c + g @ res.delta + 0.5 * res.delta @ H @ res.delta
            assert abs(q) <= 1e-9 * max(1, c)


def test_exact_solution_agrees_with_independent_multistart_slsqp():
    rng = np.random.default_rng(1)
    for _ in range(15):
        c, g, H = _random_problem(rng, 4)
        exact = minimal_perturbation_exact(c, g, H).norm
        slsqp = minimal_perturbation_slsqp(c, g, H, starts=15, seed=0)
        assert slsqp >= exact * (1 - 1e-6)  # no feasible point is shorter than the exact one
        if math.isfinite(exact):
            assert math.isclose(slsqp, exact, rel_tol=1e-5)


def test_hard_case_gradient_orthogonal_to_top_eigenvector():
    H = np.diag([2.0, -1.0])
    g = np.array([0.0, 0.1])
    res = minimal_perturbation_exact(1.0, g, H)
    assert res.hard_case
    q = -1.0 + g @ res.delta + 0.5 * res.delta @ H @ res.delta
    assert abs(q) < 1e-10
    assert math.isclose(res.norm, minimal_perturbation_slsqp(1.0, g, H, starts=30), rel_tol=1e-5)


def test_concave_model_that_never_flips_reports_infinity():
    res = minimal_perturbation_exact(1.0, np.array([0.5]), np.array([[-1.0]]))
    assert math.isinf(res.norm)  # max of -1 + 0.5 t - t^2/2 is -0.875 < 0


def test_random_instances_have_a_strictly_positive_margin_even_with_one_relu_unit():
    from curvtools.twolayer import random_instance

    act = resolve("relu")
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):  # f = w2 relu(w x): 0 for half of the x, or >= 0 for every x
        inst = random_instance(act, 1, 1, gen, slsqp_starts=1)
        assert inst.c > 0 and inst.g_norm > 0 and inst.exact > 0


def test_net_that_is_zero_at_every_drawn_point_is_bad_input():
    from curvtools.errors import BadInput
    from curvtools.twolayer import random_instance

    dead = resolve("expr", expr="Max(x - 100, 0)")  # W1 x never reaches 100
    with pytest.raises(BadInput, match="f\\(x\\) = 0 at all 1000"):
        random_instance(dead, 1, 1, torch.Generator().manual_seed(0), slsqp_starts=1)

"""sympy f', f'' (compiled to torch) against autograd of the torch module used in training."""

import pytest
import torch

from curvtools.activations import BadInput, resolve
from curvtools.twolayer import sigma_derivatives

CASES = (
    [("relu", {}), ("silu", {}), ("gelu", {}), ("mish", {}), ("lisht", {}), ("tanh", {})]
    + [("leakyrelu", {"k": k}) for k in (0.5, 0.3, 0.2, 0.0, -0.2)]
    + [("pswish", {"beta": b}) for b in (0.5, 1.0, 2.0, 4.0, 10.0)]
    + [("softplus", {"beta": b}) for b in (0.5, 1.0, 3.0, 10.0)]
    + [("elu", {"alpha": a}) for a in (0.5, 1.0, 2.0)]
    + [("expr", {"expr": e}) for e in ("x*tanh(x)", "x*sigmoid(2*x)", "softplus(x) - log(2)")]
)

# wide range (|x| = 60 keeps beta*x <= 600 < 709, where float64 exp overflows), and points
# 1e-6 either side of the kink at 0
X = torch.cat([torch.linspace(-60.0, 60.0, 4801, dtype=torch.float64),
               torch.tensor([1e-6, -1e-6, 1e-3, -1e-3], dtype=torch.float64)])
X = X[X != 0]  # f'' does not exist at the kink of the piecewise ones


def _autograd_derivatives(module, x):
    x = x.clone().requires_grad_(True)
    y = module(x)
    (d1,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x, allow_unused=True)
    if d2 is None:  # piecewise-linear: autograd sees no second-order dependence
        d2 = torch.zeros_like(x)
    return d1.detach(), d2.detach()


@pytest.mark.parametrize("name,params", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_sympy_derivatives_compiled_to_torch_match_autograd_of_training_module(name, params):
    act = resolve(name, **params)
    d1_sym, d2_sym = sigma_derivatives(act)
    d1_ref, d2_ref = _autograd_derivatives(act.module().double(), X)
    s1, s2 = d1_sym(X), d2_sym(X)
    assert torch.isfinite(s1).all() and torch.isfinite(s2).all()
    assert torch.isfinite(d1_ref).all() and torch.isfinite(d2_ref).all()
    torch.testing.assert_close(s1, d1_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s2, d2_ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("bad", [
    dict(name="nosuch"), dict(name="leakyrelu", k="abc"), dict(name="pswish", beta=0),
    dict(name="pswish", beta=-1), dict(name="softplus", beta=0), dict(name="elu", alpha=0),
    dict(name="expr", expr="y+1"), dict(name="expr", expr="3"), dict(name="expr", expr="import os"),
    dict(name="expr", expr="x+("), dict(name="expr", expr="__import__('os')"),
    dict(name="silu", k=0.3),
])
def test_registry_rejects_bad_input_with_one_line_bad_input(bad):
    name = bad.pop("name")
    with pytest.raises(BadInput) as info:
        resolve(name, **bad)
    assert "\n" not in str(info.value)


def test_unknown_activation_lists_the_known_names():
    with pytest.raises(BadInput, match="known: .*mish.*lisht"):
        resolve("swishy")

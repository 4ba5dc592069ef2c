"""sympy f', f'' (compiled to torch) against autograd of the torch module used in training."""

import pytest
import torch

from curvtools.activations import BadInput, from_config, resolve
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


@pytest.mark.parametrize("text,where", [
    ("1/x", "at x = 0"), ("log(x)", "for x <= 0"), ("sqrt(x)", "for x < 0"),
    ("x**(1/3)", "for x < 0"), ("1/tanh(x)", "at x = 0"), ("sin(x)/x", "at x = 0"),
    ("x**x", "for x <= 0"), ("1/(x**2 - 2)", "at x = -sqrt(2), sqrt(2)"),
    ("Piecewise((1/x, x > -1), (0, True))", "at x = 0"),
    ("1/(x - cos(x))", "at x = 0.739085"),  # sympy cannot solve it: found by the float scan
    ("x + log(-1)", "at x = 0"),  # no partial operation on x: caught by the numeric probe
])
def test_expression_not_real_and_finite_on_all_reals_is_refused_naming_where(text, where):
    with pytest.raises(BadInput) as info:
        resolve("expr", expr=text)
    message = str(info.value)
    assert "\n" not in message and repr(text) in message and where in message, message
    assert "must be real and finite for every real x" in message


@pytest.mark.parametrize("text", [
    "x*atan(x)", "1/(1 + x**2)", "exp(x**2)", "x**2.0", "Abs(x)**1.5", "sqrt(x**2 + 1)",
    "Piecewise((log(x), x > 0), (0, True))",  # log only where its branch is selected
    "1/(sign(x) + 1/2)",  # the denominator jumps from -1/2 to 1/2 at 0 but is never 0
    "log(cosh(x))", "Max(x, 0.3*x)",
    "Piecewise((1/(x - cos(x)), x < 0), (0, True))",  # its pole 0.739 lies in the other branch
])
def test_expression_real_and_finite_on_all_reals_is_accepted(text):
    assert resolve("expr", expr=text).label == f"expr(expr={text})"


def test_training_and_saved_configs_go_through_the_same_domain_check():
    with pytest.raises(BadInput, match="not defined for x <= 0"):
        from_config({"name": "expr", "params": {"expr": "log(x)"}})


def test_curvature_cli_refuses_1_over_x_with_one_line_and_writes_no_json(tmp_path, capsys):
    from curvtools.cli import main

    out = tmp_path / "x.json"
    with pytest.raises(SystemExit) as info:
        main(["curvature", "--act", "expr", "--expr", "1/x", "--json", str(out)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and "Traceback" not in err
    assert err.startswith("error: --expr '1/x' is not defined at x = 0"), err
    assert not out.exists()


def test_a_tiny_parameter_stays_nonzero_in_the_exact_expression():
    import sympy as sp

    for name in ("pswish", "softplus"):
        f = resolve(name, beta=1e-100).expr()
        x = sorted(f.free_symbols, key=str)[0]
        assert sp.diff(f, x, 2).subs(x, 0) != 0, name  # beta/2 or beta/4, not 0
    f = resolve("leakyrelu", k=1e-100).expr()
    x = sorted(f.free_symbols, key=str)[0]
    assert f.subs(x, -1) != 0

"""Turn a sympy expression in one variable into an elementwise torch function.

A small compiler over the expression tree, so that the result is built only from torch ops
(autograd, torch.func and CUDA all work) and never falls back to numpy or to ``eval`` of text.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import reduce

import sympy as sp
import torch

_UNARY: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {
    sp.exp: torch.exp,
    sp.log: torch.log,
    sp.tanh: torch.tanh,
    sp.sinh: torch.sinh,
    sp.cosh: torch.cosh,
    sp.sin: torch.sin,
    sp.cos: torch.cos,
    sp.atan: torch.atan,
    sp.erf: torch.erf,
    sp.erfc: torch.erfc,
    sp.Abs: torch.abs,
    sp.sign: torch.sign,
}

_RELATIONS = {
    sp.GreaterThan: operator.ge,
    sp.StrictGreaterThan: operator.gt,
    sp.LessThan: operator.le,
    sp.StrictLessThan: operator.lt,
}


def lambdify_torch(x: sp.Symbol, expr: sp.Expr) -> Callable[[torch.Tensor], torch.Tensor]:
    """Compile ``expr`` (a function of ``x``) into ``f(t: Tensor) -> Tensor``, elementwise.

    Example::

        >>> f = lambdify_torch(x, x * sp.tanh(x))
        >>> f(torch.tensor([1.0]))  # tensor([0.7616])
    """
    return _compile(x, expr)


def _compile(x: sp.Symbol, e) -> Callable:
    if e == x:
        return lambda t: t
    if e is sp.true or e is sp.S.true:
        return lambda t: torch.ones_like(t, dtype=torch.bool)
    if e is sp.false or e is sp.S.false:  # a Piecewise branch sympy proved never taken
        return lambda t: torch.zeros_like(t, dtype=torch.bool)
    if e.is_Number or e.is_NumberSymbol:
        value = float(e)
        return lambda t: torch.full_like(t, value)
    if isinstance(e, sp.Add):
        parts = [_compile(x, a) for a in e.args]
        return lambda t: reduce(operator.add, (p(t) for p in parts))
    if isinstance(e, sp.Mul):
        parts = [_compile(x, a) for a in e.args]
        return lambda t: reduce(operator.mul, (p(t) for p in parts))
    if isinstance(e, sp.Pow):
        base = _compile(x, e.base)
        if e.exp.is_Number:
            p = float(e.exp)
            if p == 0.5:
                return lambda t: torch.sqrt(base(t))
            if p == -1:
                return lambda t: torch.reciprocal(base(t))
            return lambda t: torch.pow(base(t), p)
        if e.base == sp.E:
            ex = _compile(x, e.exp)
            return lambda t: torch.exp(ex(t))
        ex = _compile(x, e.exp)
        return lambda t: torch.pow(base(t), ex(t))
    if type(e) in _UNARY or e.func in _UNARY:
        fn = _UNARY[e.func]
        arg = _compile(x, e.args[0])
        return lambda t: fn(arg(t))
    if isinstance(e, (sp.Max, sp.Min)):
        pick = torch.maximum if isinstance(e, sp.Max) else torch.minimum
        parts = [_compile(x, a) for a in e.args]
        return lambda t: reduce(pick, (p(t) for p in parts))
    if isinstance(e, sp.Heaviside):
        arg = _compile(x, e.args[0])
        half = float(e.args[1]) if len(e.args) > 1 else 0.5
        return lambda t: torch.heaviside(arg(t), torch.full_like(t, half))
    if type(e) in _RELATIONS:
        op = _RELATIONS[type(e)]
        lhs, rhs = _compile(x, e.lhs), _compile(x, e.rhs)
        return lambda t: op(lhs(t), rhs(t))
    if isinstance(e, (sp.And, sp.Or)):
        parts = [_compile(x, a) for a in e.args]
        combine = torch.logical_and if isinstance(e, sp.And) else torch.logical_or
        return lambda t: reduce(combine, (p(t) for p in parts))
    if isinstance(e, sp.Piecewise):
        branches = [(_compile(x, val), _compile(x, cond)) for val, cond in e.args]

        def piecewise(t):
            out = branches[-1][0](t)
            for val, cond in reversed(branches[:-1]):
                out = torch.where(cond(t), val(t), out)
            return out

        return piecewise
    raise ValueError(f"cannot evaluate {e.func.__name__} with torch")

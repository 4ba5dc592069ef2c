"""The one activation registry of the project.

Every activation is a :class:`ActivationSpec`: its parameters (with validation), its sympy
expression in ``x`` and a factory for the torch module used in training. Everything else in the
project (symbolic curvature, the two-layer Hessian, model building, the CLIs) goes through
:func:`resolve`, so no other module switches on activation names.

Importing this module imports neither torch nor sympy; they are loaded on first use, which keeps
``curvtools curvature`` fast to start.

Example::

    >>> act = resolve("leakyrelu", k=0.3)
    >>> act.label
    'leakyrelu(k=0.3)'
    >>> act.config()
    {'name': 'leakyrelu', 'params': {'k': 0.3}}
    >>> module = act.module()          # torch.nn.LeakyReLU(negative_slope=0.3)
    >>> expr = act.expr()              # sympy Piecewise((x, x >= 0), (0.3*x, True))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from curvtools.errors import BadInput


@dataclass(frozen=True)
class ParamSpec:
    """One numeric (or, for ``expr``, string) parameter of an activation."""

    name: str
    default: Any
    help: str
    check: Callable[[Any], str | None] = lambda v: None  # returns an error text or None
    kind: type = float


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _finite(v: float) -> str | None:
    return None if math.isfinite(v) else "must be a finite number"


def _positive_finite(v: float) -> str | None:
    return _finite(v) or _positive(v)


@dataclass(frozen=True)
class ActivationSpec:
    """A registered activation.

    ``sympy_expr(x, **params)`` returns the sympy expression; ``torch_module(**params)`` returns a
    fresh ``torch.nn.Module`` (one per use in a network). ``smooth`` is True when f is twice
    differentiable everywhere (curvature = max f''); for the others ``approx_curvature`` gives the
    paper's approximate curvature (difference of slopes for LeakyReLU).
    """

    name: str
    description: str
    sympy_expr: Callable[..., Any]
    torch_module: Callable[..., Any]
    params: tuple[ParamSpec, ...] = ()
    smooth: bool = True
    approx_curvature: Callable[..., float] | None = None
    aliases: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Activation:
    """A registered activation with resolved, validated parameters."""

    spec: ActivationSpec
    params: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def label(self) -> str:
        """Human-readable name with parameters, e.g. ``pswish(beta=4)``."""
        if not self.params:
            return self.name
        inner = ", ".join(f"{k}={_fmt(v)}" for k, v in self.params.items())
        return f"{self.name}({inner})"

    @property
    def smooth(self) -> bool:
        return self.spec.smooth

    def config(self) -> dict[str, Any]:
        """JSON-able dict that :func:`from_config` turns back into this activation."""
        return {"name": self.name, "params": dict(self.params)}

    def expr(self):
        """The sympy expression f(x) (x is ``sympy.Symbol('x', real=True)``)."""
        return self.spec.sympy_expr(symbol_x(), **self.params)

    def module(self):
        """A fresh torch module computing f elementwise."""
        return self.spec.torch_module(**self.params)

    def approx_curvature(self) -> float | None:
        """The paper's approximate curvature for a non-smooth activation, else None."""
        if self.spec.approx_curvature is None:
            return None
        return float(self.spec.approx_curvature(**self.params))


def _fmt(v: Any) -> str:
    if isinstance(v, float) and math.isfinite(v) and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return str(v)


def symbol_x():
    """The real symbol ``x`` every registered expression is written in."""
    import sympy

    return sympy.Symbol("x", real=True)


# --- sympy expressions -------------------------------------------------------------------------


def _sp():
    import sympy

    return sympy


def _exact(value: float):
    """The parameter as an exact rational (0.3 -> 3/10); ``rational=True`` keeps tiny values
    such as 1e-100 (plain ``nsimplify`` rounds them to 0 and the activation collapses)."""
    return _sp().nsimplify(value, rational=True)


def _relu_expr(x):
    sp = _sp()
    return sp.Piecewise((x, x >= 0), (0, True))


def _leakyrelu_expr(x, k):
    sp = _sp()
    return sp.Piecewise((x, x >= 0), (_exact(k) * x, True))


def _sigmoid(z):
    sp = _sp()
    return 1 / (1 + sp.exp(-z))


def _silu_expr(x):
    return x * _sigmoid(x)


def _pswish_expr(x, beta):
    return x * _sigmoid(_exact(beta) * x)


def _gelu_expr(x):
    sp = _sp()
    return x * (1 + sp.erf(x / sp.sqrt(2))) / 2


def _mish_expr(x):
    sp = _sp()
    return x * sp.tanh(sp.log(1 + sp.exp(x)))


def _lisht_expr(x):
    return x * _sp().tanh(x)


def _softplus_expr(x, beta):
    sp = _sp()
    b = _exact(beta)
    return sp.log(1 + sp.exp(b * x)) / b


def _elu_expr(x, alpha):
    sp = _sp()
    return sp.Piecewise((x, x > 0), (_exact(alpha) * (sp.exp(x) - 1), True))


def _tanh_expr(x):
    return _sp().tanh(x)


def _user_expr(x, expr):
    return parse_user_expression(expr)


# --- torch modules (torch built-ins where they exist) ------------------------------------------


def _relu_module():
    import torch.nn as nn

    return nn.ReLU()


def _leakyrelu_module(k):
    import torch.nn as nn

    if k == 0:
        return nn.ReLU()
    return nn.LeakyReLU(negative_slope=k)


def _silu_module():
    import torch.nn as nn

    return nn.SiLU()


def _pswish_module(beta):
    from curvtools.torch_activations import PSwish

    return PSwish(beta)


def _gelu_module():
    import torch.nn as nn

    return nn.GELU(approximate="none")


def _mish_module():
    import torch.nn as nn

    return nn.Mish()


def _lisht_module():
    from curvtools.torch_activations import LiSHT

    return LiSHT()


def _softplus_module(beta):
    from curvtools.torch_activations import Softplus

    return Softplus(beta)


def _elu_module(alpha):
    import torch.nn as nn

    return nn.ELU(alpha=alpha)


def _tanh_module():
    import torch.nn as nn

    return nn.Tanh()


def _user_module(expr):
    from curvtools.torch_activations import SympyActivation

    return SympyActivation(expr)


def _check_user_expr(text: str) -> str | None:
    parse_user_expression(text)  # its BadInput already names --expr and the text: let it out
    return None


REGISTRY: dict[str, ActivationSpec] = {}


def register(spec: ActivationSpec) -> ActivationSpec:
    """Add an activation to the registry (names and aliases must be new)."""
    for key in (spec.name, *spec.aliases):
        if key in REGISTRY:
            raise ValueError(f"activation name {key!r} is already registered")
        REGISTRY[key] = spec
    return spec


_K = ParamSpec("k", 0.01, "negative-side slope (any real; 0 is ReLU, negative allowed)", _finite)
_BETA_PSWISH = ParamSpec("beta", 1.0, "fixed (not learned) slope inside the sigmoid, > 0",
                         _positive_finite)
_BETA_SOFTPLUS = ParamSpec("beta", 1.0, "sharpness, > 0", _positive_finite)
_ALPHA_ELU = ParamSpec("alpha", 1.0, "negative saturation value, > 0", _positive_finite)
_EXPR = ParamSpec("expr", "x*tanh(x)", "sympy expression in x", _check_user_expr, kind=str)

register(ActivationSpec("relu", "max(0, x)", _relu_expr, _relu_module, smooth=False,
                        approx_curvature=lambda: 1.0))
register(ActivationSpec("leakyrelu", "x for x >= 0, k*x for x < 0", _leakyrelu_expr,
                        _leakyrelu_module, (_K,), smooth=False,
                        approx_curvature=lambda k: abs(1.0 - k)))
register(ActivationSpec("silu", "x * sigmoid(x) (Swish-1)", _silu_expr, _silu_module,
                        aliases=("swish",)))
register(ActivationSpec("pswish", "x * sigmoid(beta * x), beta fixed", _pswish_expr,
                        _pswish_module, (_BETA_PSWISH,)))
register(ActivationSpec("gelu", "x * Phi(x), exact erf form", _gelu_expr, _gelu_module))
register(ActivationSpec("mish", "x * tanh(softplus(x))", _mish_expr, _mish_module))
register(ActivationSpec("lisht", "x * tanh(x)", _lisht_expr, _lisht_module))
register(ActivationSpec("softplus", "log(1 + exp(beta * x)) / beta", _softplus_expr,
                        _softplus_module, (_BETA_SOFTPLUS,)))
register(ActivationSpec("elu", "x for x > 0, alpha*(exp(x) - 1) for x <= 0", _elu_expr,
                        _elu_module, (_ALPHA_ELU,), smooth=False))
register(ActivationSpec("tanh", "tanh(x)", _tanh_expr, _tanh_module))
register(ActivationSpec("expr", "user-defined f(x) from a sympy expression (--expr)",
                        _user_expr, _user_module, (_EXPR,)))


def names() -> list[str]:
    """Registered activation names (no aliases), in registration order."""
    seen: list[str] = []
    for spec in REGISTRY.values():
        if spec.name not in seen:
            seen.append(spec.name)
    return seen


def builtin_names() -> list[str]:
    """Registered names that need no user expression (what ``--act all`` covers)."""
    return [n for n in names() if n != "expr"]


def resolve(name: str, **given: Any) -> Activation:
    """Look up ``name`` and validate its parameters.

    Parameters that the activation does not take must be None (so a CLI can pass all of its
    options through); missing ones take their defaults. Raises :class:`BadInput` with one line
    naming the problem and what is allowed.
    """
    key = name.strip().lower()
    if key not in REGISTRY:
        raise BadInput(f"unknown activation {name!r}; known: {', '.join(names())}")
    spec = REGISTRY[key]
    allowed = {p.name: p for p in spec.params}
    params: dict[str, Any] = {}
    for pname, value in given.items():
        if value is None:
            continue
        if pname not in allowed:
            takes = ", ".join(allowed) or "no parameters"
            raise BadInput(f"activation {spec.name!r} takes {takes}, not {pname!r}")
    for p in spec.params:
        value = given.get(p.name)
        if value is None:
            value = p.default
        if p.kind is float:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise BadInput(
                    f"{spec.name}: {p.name}={value!r} is not a number ({p.help})") from None
            if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
                value = float(int(value))
        problem = p.check(value)
        if problem:
            raise BadInput(f"{spec.name}: {p.name}={_fmt(value)} {problem} ({p.help})")
        params[p.name] = value
    return Activation(spec, params)


def from_config(config: Mapping[str, Any]) -> Activation:
    """Inverse of :meth:`Activation.config` (validates again: configs may come from files)."""
    if not isinstance(config, Mapping) or "name" not in config:
        raise BadInput("activation config must be a mapping with a 'name'")
    params = config.get("params") or {}
    if not isinstance(params, Mapping):
        raise BadInput("activation config 'params' must be a mapping")
    return resolve(str(config["name"]), **dict(params))


# --- user expressions --------------------------------------------------------------------------

# Names a user expression may use; everything else is rejected (sympify would otherwise accept
# arbitrary Python). Maps to sympy objects.
_ALLOWED_FUNCTIONS = (
    "exp", "log", "sqrt", "tanh", "sinh", "cosh", "sin", "cos", "atan", "erf", "erfc",
    "Abs", "Max", "Min", "sign", "pi", "E", "Piecewise", "Heaviside",
)


def parse_user_expression(text: str):
    """Parse a user activation such as ``"x*tanh(x)"`` into a sympy expression in real ``x``.

    Also accepts ``sigmoid(z)`` and ``softplus(z)``. Raises :class:`BadInput` when the text does
    not parse, uses unknown names, is not a function of ``x`` alone, or is not real and finite
    at every real x (``1/x``, ``log(x)``, ``sqrt(x)``: an activation sees every real input).
    """
    sp = _sp()
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication,
        parse_expr,
        standard_transformations,
    )

    if not isinstance(text, str) or not text.strip():
        raise BadInput("--expr must be a non-empty expression in x, e.g. 'x*tanh(x)'")
    x = symbol_x()
    local = {name: getattr(sp, name) for name in _ALLOWED_FUNCTIONS}
    local.update({
        "x": x,
        "sigmoid": lambda z: 1 / (1 + sp.exp(-z)),
        "softplus": lambda z: sp.log(1 + sp.exp(z)),
        "ln": sp.log,
        "abs": sp.Abs,
    })
    transformations = standard_transformations + (convert_xor, implicit_multiplication)
    try:
        expr = parse_expr(text, local_dict=local, global_dict={"Integer": sp.Integer,
                          "Float": sp.Float, "Rational": sp.Rational, "Symbol": sp.Symbol,
                          "Function": sp.Function},
                          transformations=transformations, evaluate=True)
    except Exception as err:  # sympy raises many kinds (SyntaxError, TokenError, TypeError)
        raise BadInput(f"--expr {text!r} does not parse: {type(err).__name__}") from None
    if not isinstance(expr, sp.Expr):
        raise BadInput(f"--expr {text!r} is not an expression in x")
    undefined = [f for f in expr.atoms(sp.Function) if isinstance(f, sp.core.function.AppliedUndef)]
    if undefined:
        raise BadInput(f"--expr {text!r} uses unknown function {undefined[0].func}; "
                       f"allowed: {', '.join(_ALLOWED_FUNCTIONS)}, sigmoid, softplus")
    free = expr.free_symbols
    if free != {x}:
        other = sorted(str(s) for s in free - {x})
        if other:
            raise BadInput(
                f"--expr {text!r} must be a function of x only, found {', '.join(other)}")
        raise BadInput(f"--expr {text!r} does not depend on x")
    _require_real_and_finite(expr, text)
    return expr


# --- where a user expression is defined --------------------------------------------------------
# An activation is applied to every real pre-activation, so f must be real and finite on all of
# R. The symbolic walk below finds the sets where a partial operation (division, log, a
# fractional power) leaves the reals; a numeric probe is the backstop for what sympy cannot
# solve in closed form.

def _bad_sets(e, x, domain):
    """Yield ``(set, why)``: subsets of ``domain`` where ``e`` is not real and finite."""
    sp = _sp()
    if not e.has(x):
        return
    if isinstance(e, sp.Piecewise):
        remaining = domain
        for value, cond in e.args:
            try:  # a branch only needs to be defined where it is selected
                where = remaining.intersect(cond.as_set())
                remaining = remaining - where
            except Exception:  # a condition sympy cannot turn into a set: stay conservative
                where = remaining
            yield from _bad_sets(value, x, where)
        return
    for arg in e.args:
        yield from _bad_sets(arg, x, domain)
    if isinstance(e, sp.Pow):
        base, power = e.args
        integral = power.is_Number and float(power).is_integer()  # x**2.0 too
        if integral and power < 0:
            yield _solve(sp.Eq(base, 0), x, domain), "division by zero"
        elif not power.is_Number:  # b**g(x) = exp(g log b): real only for b > 0
            yield _solve(base <= 0, x, domain), f"power {_show(power)} of a number <= 0"
        elif not integral and power < 0:
            yield _solve(base <= 0, x, domain), f"power {_show(power)} of a number <= 0"
        elif not integral:
            yield _solve(base < 0, x, domain), f"power {_show(power)} of a negative number"
    elif isinstance(e, sp.log):
        yield _solve(e.args[0] <= 0, x, domain), "log of a number <= 0"


def _solve(condition, x, domain):
    """The subset of ``domain`` where ``condition`` holds.

    When sympy cannot solve it (a ConditionSet, e.g. for ``x = cos(x)``), a float scan of
    [-50, 50] (:func:`_scan`) looks for a point of ``domain`` where it holds and returns that
    point; if the scan finds none the ConditionSet is returned (left to the numeric probe).
    """
    sp = _sp()
    try:
        solved = sp.solveset(condition, x, domain)
    except Exception:  # NotImplementedError and friends
        solved = sp.ConditionSet(x, condition, domain)
    if not solved.has(sp.ConditionSet):
        return solved
    for point in _scan(condition, x):
        if domain.contains(point) is not sp.false:
            return sp.FiniteSet(point)
    return solved


def _scan(condition, x):
    """Floats (sympy Floats) where ``condition`` (``g = 0``, ``g < 0`` or ``g <= 0``) holds on
    a grid of [-50, 50], or, for ``g = 0``, roots bracketed by a sign change of g."""
    import numpy as np
    from scipy.optimize import brentq

    sp = _sp()
    g = condition.lhs - condition.rhs
    grid = np.arange(-5000, 5001) / 100.0
    try:
        fn = sp.lambdify(x, g, ["scipy", "numpy"])
        with np.errstate(all="ignore"):
            v = np.asarray(fn(grid), dtype=float) * np.ones_like(grid)
    except Exception:
        return
    if not isinstance(condition, sp.Eq):
        for i in np.flatnonzero(v <= 0 if isinstance(condition, sp.Le) else v < 0)[:20]:
            yield sp.Float(grid[i])
        return
    for i in np.flatnonzero(v == 0)[:20]:
        yield sp.Float(grid[i])
    for i in np.flatnonzero(np.sign(v[:-1]) * np.sign(v[1:]) < 0)[:20]:
        try:
            root = brentq(lambda t: float(fn(t)), grid[i], grid[i + 1])
        except (ValueError, RuntimeError):  # NaN inside the bracket, no convergence
            continue
        # a jump (sign(x) + 1/2) changes sign without a zero: only a true root counts
        if abs(float(fn(root))) < 1e-9:
            yield sp.Float(root, 6)


def _describe(bad, x) -> str | None:
    """"at x = 0" / "for x <= 0" for a non-empty set, None for an empty or unsolved one."""
    sp = _sp()
    if bad.is_empty or bad.has(sp.ConditionSet):
        return None
    if bad == sp.S.Reals:
        return "for any real x"
    if isinstance(bad, sp.FiniteSet):
        points = sorted(bad, key=float)[:3]
        return "at x = " + ", ".join(_show(p) for p in points)
    try:
        return f"for {bad.as_relational(x)}"
    except Exception:  # periodic solutions (ImageSet) have no relational form: name one
        pass
    try:
        return f"at x = {next(iter(bad))} (and others)"
    except Exception:
        return f"on {bad}"


def _show(v) -> str:
    """A sympy number for a message: floats to 6 digits, exact numbers as they are."""
    return f"{float(v):.6g}" if v.is_Float else str(v)


def _numeric_probe(expr, x) -> str | None:
    """First probe point where f is not a finite real, confirmed exactly by sympy; else None.

    A float grid on [-50, 50] (step 1/100, exact 0 included) finds candidates fast; each
    candidate is re-evaluated by sympy so that a float overflow (exp(x**2) at x = 30) is not
    mistaken for a pole.
    """
    import numpy as np

    sp = _sp()
    grid = np.arange(-5000, 5001) / 100.0
    try:
        fn = sp.lambdify(x, expr, ["scipy", "numpy"])
        with np.errstate(all="ignore"):
            values = np.asarray(fn(grid)) * np.ones_like(grid)
        suspects = grid[~np.isfinite(values) | (np.imag(values) != 0)]
    except Exception:  # no numpy translation: probe a few points with sympy only
        suspects = np.array([0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    for t in sorted(suspects, key=abs)[:8]:  # near 0 first: far out it is often overflow
        point = sp.Rational(int(round(t * 100)), 100)
        value = sp.N(expr.subs(x, point), 20)
        if not (value.is_real and value.is_finite):
            return f"at x = {point}"
    return None


@lru_cache(maxsize=128)  # solveset takes tenths of a second; resolve, expr() and module() repeat it
def _require_real_and_finite(expr, text: str) -> None:
    """Raise :class:`BadInput` unless ``expr`` is real and finite at every real x."""
    sp = _sp()
    x = symbol_x()
    for bad, why in _bad_sets(expr, x, sp.S.Reals):
        where = _describe(bad, x)
        if where is not None:
            raise BadInput(f"--expr {text!r} is not defined {where} ({why}); "
                           "an activation must be real and finite for every real x")
    where = _numeric_probe(expr, x)
    if where is not None:
        raise BadInput(f"--expr {text!r} is not a finite real number {where}; "
                       "an activation must be real and finite for every real x")

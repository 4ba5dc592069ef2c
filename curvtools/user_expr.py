"""User-defined activations: parse ``--expr`` text into a sympy expression in real ``x`` and
refuse any expression that is not real and finite at every real x.

The text is data (it may come from a downloaded checkpoint or spec): it is read by the
whitelist parser :mod:`curvtools.expr_parser`, never evaluated as Python.

Imports nothing else of curvtools except the error type and the parser, so that both the registry
(:mod:`curvtools.activations`) and the torch modules (:mod:`curvtools.torch_activations`) can
use it without importing each other. sympy is imported on first use.

Example::

    >>> parse_user_expression("x*tanh(x)")
    x*tanh(x)
    >>> parse_user_expression("log(x)")   # BadInput: not defined for x <= 0 (log of a number <= 0)
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from curvtools.errors import BadInput, shown


def symbol_x():
    """The real symbol ``x`` every registered expression is written in."""
    import sympy

    return sympy.Symbol("x", real=True)


def _sp():
    import sympy

    return sympy


def check_user_expr(text: str) -> str | None:
    """The registry's check of the ``expr`` parameter: None, or :class:`BadInput` raised by
    :func:`parse_user_expression` (its message already names --expr and the text)."""
    parse_user_expression(text)
    return None


# --- parsing -------------------------------------------------------------------------------------

def parse_user_expression(text: str, params: Mapping[str, float] | None = None):
    """Parse a user activation such as ``"x*tanh(x)"`` into a sympy expression in real ``x``.

    The text is read by the whitelist parser :mod:`curvtools.expr_parser` (never evaluated as
    Python): numbers, ``x``, the names in ``params`` (an activation's own parameters, as exact
    numbers), ``+ - * / ** ^``, juxtaposition, the functions ``exp log ln sqrt tanh sinh cosh sin
    cos atan erf erfc Abs abs Max Min sign Heaviside sigmoid softplus Piecewise`` and the
    constants ``pi``, ``E``. Raises :class:`BadInput` when the text does not parse, uses unknown
    names, is too long or too large, is not a function of ``x``, or is not real and finite at
    every real x (``1/x``, ``log(x)``, ``sqrt(x)``: an activation sees every real input).
    """
    if not isinstance(text, str):
        raise BadInput(f"--expr {shown(text)} must be text, an expression in x such as "
                       "'x*tanh(x)'")
    return _parse_checked(text, tuple(sorted((params or {}).items())))


@lru_cache(maxsize=256)  # resolve(), expr() and module() parse the same text again and again
def _parse_checked(text: str, params: tuple[tuple[str, float], ...]):
    sp = _sp()
    from curvtools.expr_parser import parse_expression

    x = symbol_x()
    symbols = {name: sp.nsimplify(value, rational=True) for name, value in params}
    expr = parse_expression(text, x, symbols)
    if not isinstance(expr, sp.Expr):
        raise BadInput(f"--expr {shown(text)} is not an expression in x")
    if x not in expr.free_symbols:
        raise BadInput(f"--expr {shown(text)} does not depend on x")
    try:
        _require_real_and_finite(expr, text)
    except (ArithmeticError, RecursionError) as err:  # e.g. float() of x**(10**200)
        raise BadInput(f"--expr {shown(text)} cannot be checked for every real x "
                       f"({type(err).__name__}); write it with smaller numbers") from None
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
            raise BadInput(f"--expr {shown(text)} is not defined {where} ({why}); "
                           "an activation must be real and finite for every real x")
    where = _numeric_probe(expr, x)
    if where is not None:
        raise BadInput(f"--expr {shown(text)} is not a finite real number {where}; "
                       "an activation must be real and finite for every real x")

"""Rigorous interval enclosures of sympy expressions in one variable (mpmath.iv underneath).

``interval_function(x, expr)`` compiles ``expr`` into ``F(a, b) -> (lo, hi)`` such that for every
real ``t`` in ``[a, b]`` (endpoints may be +-inf) the true value ``expr(t)`` lies in ``[lo, hi]``.
mpmath's interval context rounds outward, so the enclosure holds in exact arithmetic, not only up
to floating-point error. Functions that ``mpmath.iv`` lacks are enclosed through monotonicity
(tanh, sinh, atan, erf are increasing; cosh is decreasing then increasing), evaluating the
endpoints with the C library's functions widened by 1e-13 relative + 1e-300 absolute (glibc
documents them as accurate to a few ulp, 1e-13 is about 450 ulp).

This is the workhorse of :mod:`curvtools.symbolic`'s certified maximum curvature.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import mpmath
import sympy as sp
from mpmath import iv
from mpmath.libmp import to_float

Interval = Callable[[float, float], tuple[float, float]]

def _whole():
    return iv.mpf(["-inf", "inf"])


_FLOAT_MAX = sys.float_info.max
_FLOAT_MIN_NORMAL = sys.float_info.min


def _down(raw) -> float:
    """The largest float <= the raw mpf ``raw``: a lower end that stays rigorous in floats.

    mpmath's endpoints have an unbounded exponent; a plain ``float()`` rounds 2e309 to inf
    (a lower bound above every real number) and -1e-400 to -0.0 (above the value).
    """
    if not raw[1]:  # zero, +-inf, nan: exact
        return to_float(raw)
    v = to_float(raw, rnd="f")
    if v == math.inf:  # a finite value beyond the double range
        return _FLOAT_MAX
    if raw[0] and v == 0.0:  # a negative value that underflowed to -0.0
        return -math.ulp(0.0)
    if 0.0 < abs(v) < _FLOAT_MIN_NORMAL:  # gradual underflow rounds to nearest, not down
        return math.nextafter(v, -math.inf)
    return v


def _up(raw) -> float:
    """The smallest float >= the raw mpf ``raw`` (the mirror image of :func:`_down`)."""
    if not raw[1]:
        return to_float(raw)
    return -_down((raw[0] ^ 1, *raw[1:]))


def _lo(z) -> float:
    return _down(z._mpi_[0])


def _hi(z) -> float:
    return _up(z._mpi_[1])


_NAN = mpmath.libmp.fnan


def _sane(z):
    """Replace an enclosure with NaN endpoints by the whole line (still rigorous)."""
    lo, hi = z._mpi_  # raw endpoints: much cheaper than converting to floats on every node
    if lo == _NAN or hi == _NAN:
        return _whole()
    return z


# glibc documents tanh/sinh/cosh/erf/atan as accurate to a few ulp; widening by 1e-13 relative
# (about 450 ulp) plus 1e-300 absolute makes the endpoint enclosures safe by a wide margin and
# is ten times faster than evaluating them through interval exponentials.
_REL = 1e-13


def _libm_point(fn, v: float):
    if math.isinf(v):
        value = fn(v)
        return iv.mpf([value, value])
    try:
        value = fn(v)
    except OverflowError:
        return iv.mpf(["-inf", "inf"]) if fn is math.sinh else iv.mpf([1e308, "inf"])
    slack = abs(value) * _REL + 1e-300
    return iv.mpf([value - slack, value + slack])


def _tanh_point(v):
    return _libm_point(math.tanh, v)


def _sinh_point(v):
    if abs(v) > 700:
        return iv.mpf(["-inf", -1e300]) if v < 0 else iv.mpf([1e300, "inf"])
    return _libm_point(math.sinh, v)


def _cosh_point(v):
    if abs(v) > 700:
        return iv.mpf([1e300, "inf"])
    return _libm_point(math.cosh, v)


def _monotone(point_fn, z):
    """Enclosure of an increasing function on the interval z from its endpoint enclosures."""
    return iv.mpf([_lo(point_fn(_lo(z))), _hi(point_fn(_hi(z)))])


def _erf(z):
    return _monotone(lambda v: _libm_point(math.erf, v), z)


def _atan(z):
    return _monotone(lambda v: _libm_point(math.atan, v), z)


def _tanh(z):
    return _monotone(_tanh_point, z)


def _sinh(z):
    return _monotone(_sinh_point, z)


def _cosh(z):
    a, b = _lo(z), _hi(z)
    hi = max(_hi(_cosh_point(a)), _hi(_cosh_point(b)))
    if a <= 0 <= b:
        return iv.mpf([1, hi])
    near = a if a > 0 else b
    return iv.mpf([_lo(_cosh_point(near)), hi])


def _abs(z):
    a, b = _lo(z), _hi(z)
    if a >= 0:
        return z
    if b <= 0:
        return -z
    return iv.mpf([0, max(-a, b)])


def _sign(z):
    a, b = _lo(z), _hi(z)
    return iv.mpf([-1 if a < 0 else (0 if a == 0 else 1), 1 if b > 0 else (0 if b == 0 else -1)])


_UNARY = {
    sp.exp: lambda z: iv.exp(z),
    sp.log: lambda z: iv.log(z),
    sp.tanh: _tanh,
    sp.sinh: _sinh,
    sp.cosh: _cosh,
    sp.sin: lambda z: iv.sin(z),
    sp.cos: lambda z: iv.cos(z),
    sp.atan: _atan,
    sp.erf: _erf,
    sp.erfc: lambda z: 1 - _erf(z),
    sp.Abs: _abs,
    sp.sign: _sign,
}


def _constant(e):
    if e.is_Integer:
        return iv.mpf(int(e))
    if e.is_Rational:
        return iv.mpf(int(e.p)) / iv.mpf(int(e.q))
    if e.is_Float:
        v = mpmath.mpf(e._mpf_)
        return iv.mpf([v, v])
    if e is sp.pi:
        return iv.pi
    if e is sp.E:
        return iv.e
    raise ValueError(f"no interval constant for {e}")


def _build(x, e) -> Callable:
    if e == x:
        return lambda z: z
    if e.is_Number or e.is_NumberSymbol:
        c = _constant(e)
        return lambda z: c
    if isinstance(e, (sp.Add, sp.Mul)):
        parts = [_build(x, a) for a in e.args]
        is_add = isinstance(e, sp.Add)

        def combine(z):
            acc = parts[0](z)
            for p in parts[1:]:
                acc = _sane(acc + p(z) if is_add else acc * p(z))
            return acc

        return combine
    if isinstance(e, sp.Pow):
        base = _build(x, e.base)
        if e.exp.is_Integer or (e.exp.is_Float and float(e.exp).is_integer()):  # x**3.0 too
            n = int(e.exp)
            return lambda z: _sane(base(z) ** n)
        if e.exp.is_Rational and e.exp.q == 2:
            n = int(e.exp.p)
            return lambda z: _sane(iv.sqrt(base(z)) ** n)
        ex = _build(x, e.exp)
        return lambda z: _sane(iv.exp(ex(z) * iv.log(base(z))))
    if e.func in _UNARY:
        fn = _UNARY[e.func]
        arg = _build(x, e.args[0])
        return lambda z: _sane(fn(arg(z)))
    raise ValueError(f"no interval rule for {e.func.__name__}")


def interval_function(x: sp.Symbol, expr: sp.Expr) -> Interval:
    """Compile ``expr`` (smooth, no Piecewise) to ``F(a, b) -> (lo, hi)``, a rigorous enclosure.

    Example::

        >>> F = interval_function(x, x * sp.exp(-x))
        >>> F(3.0, float("inf"))   # (0.0, 0.149...) up to outward rounding
    """
    fn = _build(x, expr)

    def enclose(a: float, b: float) -> tuple[float, float]:
        try:
            z = _sane(fn(iv.mpf([a, b])))
        except (ZeroDivisionError, ValueError, OverflowError):
            return -math.inf, math.inf
        return _lo(z), _hi(z)

    return enclose

"""Symbolic derivatives of activations and their certified maximum curvature max_x f''(x).

The paper (Sec. 4) defines the curvature of a smooth activation as ``max_x f''(x)``. This module
computes f', f'', f''' with sympy and encloses the *global* maximum and minimum of f'' over the
whole real line by interval branch and bound (:mod:`curvtools.branch_bound`):

* Every box ``[a, b]`` (also the unbounded tail boxes ``[L, inf)`` and ``(-inf, -L]``) gets an
  upper bound ``U`` of f'' from rigorous interval arithmetic (:mod:`curvtools.interval`): the
  natural extension, intersected on finite boxes with the mean-value form
  ``f''(m) + f'''([a, b]) * ([a, b] - m)`` (second-order tight near a smooth maximum).
* Every box midpoint gives a rigorous lower bound ``f''(m) >= lo(m)`` of the maximum.
* The box of the window ``[-1024 s, 1024 s]`` with the largest ``U`` is split in halves; boxes
  whose ``U`` is below the best lower bound are dropped. It stops when
  ``max U - best lower <= tol``; the two tails beyond the window are bounded once each. The
  global maximum then lies in ``[best lower, max(max U, tail bound)]``, for every real x. If
  the budget runs out first the (wider) enclosure is still rigorous and the result says
  ``certified=False``.
* An extremum approached as ``|x| -> inf`` and never attained (the best point is the window's
  edge: Softplus' infimum 0 as x -> -inf) takes sympy's exact limit of f'' there as its value,
  a bound as good as any attained one (:mod:`curvtools.branch_bound`): 0, not f'' at the edge.
* Lengths scale with f'': the window and the rest use the :func:`natural_scale` s (1/beta for
  PSwish and Softplus), so every beta costs the same work.

Piecewise activations are split at their breakpoints and each piece is bounded on its closed
interval (the supremum over an open piece is the maximum of the continuous extension over its
closure), so for ELU the supremum alpha is found as the limit x -> 0-.

An exact closed form is reported when a simple candidate (0, or sympy's ``nsimplify`` of the
numeric argmax) is inside the certified argmax enclosure, makes f''' vanish exactly, and its
value lies inside the certified value enclosure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import sympy as sp

from curvtools.activations import Activation, symbol_x
from curvtools.branch_bound import (  # noqa: F401  (Piece, certified_extremum: public here too)
    WINDOW,
    Extremum,
    Piece,
    _inside,
    certified_extremum,
    natural_scale,
)
from curvtools.curvature_result import Curvature
from curvtools.errors import BadInput


@dataclass(frozen=True)
class Derivatives:
    """f and its first three derivatives (sympy, in the real symbol x)."""

    x: sp.Symbol
    f: sp.Expr
    f1: sp.Expr
    f2: sp.Expr
    f3: sp.Expr
    f1_simple: sp.Expr
    f2_simple: sp.Expr


def _simplify(e: sp.Expr) -> sp.Expr:
    """A readable form; plain ``simplify`` is a few tenths of a second on the built-ins."""
    if sp.count_ops(e) > 16:  # simplify can take seconds on Mish; a cheap tidy-up instead
        s = sp.factor_terms(sp.together(e))
        return s if sp.count_ops(s) <= sp.count_ops(e) else e
    try:
        s = sp.simplify(e)
    except Exception:  # sympy may fail on exotic user expressions: keep the raw derivative
        return e
    return s if sp.count_ops(s) <= sp.count_ops(e) else e


def _prepare(f: sp.Expr) -> sp.Expr:
    """Rewrite Abs/Max/Min/sign/Heaviside as Piecewise so that pieces can be separated."""
    if f.has(sp.Abs, sp.Max, sp.Min, sp.sign, sp.Heaviside):
        f = sp.piecewise_fold(f.rewrite(sp.Piecewise))
    return f


@lru_cache(maxsize=64)
def _derivatives_cached(f: sp.Expr) -> Derivatives:
    x = symbol_x()
    f = _prepare(f)
    f1 = sp.diff(f, x)
    f2 = sp.diff(f1, x)
    f3 = sp.diff(f2, x)
    return Derivatives(x, f, f1, f2, f3, _simplify(f1), _simplify(f2))


def derivatives(act: Activation) -> Derivatives:
    """f, f', f'', f''' of a registered activation (cached per expression).

    Example::

        >>> d = derivatives(resolve("lisht"))
        >>> d.f2_simple   # -2*x*tanh(x)/cosh(x)**2 - 2*tanh(x)**2 + 2
    """
    return _derivatives_cached(act.expr())


# --- pieces ------------------------------------------------------------------------------------


def _breakpoints(e: sp.Expr, x: sp.Symbol) -> list[float]:
    points: set[float] = set()
    for pw in e.atoms(sp.Piecewise):
        for _, cond in pw.args:
            for rel in cond.atoms(sp.Rel):
                sol = sp.solve(sp.Eq(rel.lhs, rel.rhs), x)
                for s in sol:
                    if s.is_real:
                        points.add(float(s))
    return sorted(points)


def _piece_at(e: sp.Expr, x: sp.Symbol, t: float) -> sp.Expr:
    """The branch of a (nested) Piecewise that holds at x = t."""
    if not e.has(sp.Piecewise):
        return e

    def pick(node):
        if isinstance(node, sp.Piecewise):
            for val, cond in node.args:
                if bool(cond.subs(x, t)):
                    return pick(val)
            return sp.nan
        if not node.args:
            return node
        return node.func(*[pick(a) for a in node.args])

    return pick(e)


def pieces(d: Derivatives) -> list[Piece]:
    """Split f'' into smooth pieces between the breakpoints of f (one piece if there are none)."""
    x = d.x
    cuts = _breakpoints(d.f, x)
    edges = [-math.inf, *cuts, math.inf]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        probe = _inside(lo, hi)
        f2 = _piece_at(d.f2, x, probe)
        f3 = _piece_at(d.f3, x, probe)
        out.append(Piece(lo, hi, f2, f3))
    return out


def slope_jumps(d: Derivatives) -> list[tuple[float, float]]:
    """``(x0, f'(x0+) - f'(x0-))`` at each breakpoint where f' jumps (a kink of f)."""
    x = d.x
    jumps = []
    for x0 in _breakpoints(d.f, x):
        # each side's branch, continued to x0 (one-sided limit of a continuous piece)
        right = _piece_at(d.f1, x, x0 + 1e-9).subs(x, x0)
        left = _piece_at(d.f1, x, x0 - 1e-9).subs(x, x0)
        jump = float(right - left)
        if abs(jump) > 0:
            jumps.append((x0, jump))
    return jumps


# --- exact closed forms ------------------------------------------------------------------------


def _exact_value(d: Derivatives, piece: Piece, ext: Extremum) -> tuple[Any, Any] | None:
    """(argmax, value) in closed form when a simple candidate is provably the critical point."""
    x = d.x
    if not math.isfinite(ext.argbest) or piece.f2.is_number:  # a constant: no critical point
        return None
    candidates = [sp.Integer(0)]
    try:
        guess = sp.nsimplify(round(ext.argbest, 12), [sp.pi, sp.E], tolerance=1e-10)
        candidates.append(guess)
    except Exception:
        pass
    for edge in (piece.lo, piece.hi):  # sup at a piece boundary: the one-sided limit
        if math.isfinite(edge) and abs(ext.argbest - edge) < 1e-12:
            c = sp.nsimplify(edge)
            value = sp.simplify(piece.f2.subs(x, c))
            if ext.lower - 1e-9 <= float(value) <= ext.upper + 1e-9:
                return c, value
    for c in candidates:
        cf = float(c)
        if not (ext.arg_lo - 1e-12 <= cf <= ext.arg_hi + 1e-12 and piece.lo < cf < piece.hi):
            continue
        # only a structural zero counts (sympy's automatic evaluation, then expand): a
        # numerically tiny f''' is not a proof, and full simplify can take minutes
        slope = piece.f3.subs(x, c)
        if slope != 0 and sp.expand(slope) != 0:
            continue
        value = piece.f2.subs(x, c)
        if sp.count_ops(value) < 40:
            value = sp.simplify(value)
        fv = float(value)
        if ext.lower - 1e-9 <= fv <= ext.upper + 1e-9:
            return c, value
    return None


# --- the report --------------------------------------------------------------------------------


def compute_curvature(act: Activation, tol: float = 1e-9) -> Curvature:
    """Run the branch and bound for ``act`` (no table, no cache): seconds per activation."""
    d = derivatives(act)
    parts = pieces(d)
    try:
        top = certified_extremum(d.x, parts, maximize=True, tol=tol)
        bottom = certified_extremum(d.x, parts, maximize=False, tol=tol)
    except ValueError as err:  # a function the interval compiler has no rule for
        raise BadInput(f"{act.label}: cannot bound f'' rigorously ({err})") from None
    notes: list[str] = []
    exact = None
    piece_of_max = next((p for p in parts if p.lo <= top.argbest <= p.hi), parts[0])
    exact = _exact_value(d, piece_of_max, top)
    jumps = slope_jumps(d) if len(parts) > 1 else []
    linear = bool(jumps) and top.upper == bottom.lower  # one constant f'' off the kinks (LeakyReLU)
    approx = act.approx_curvature()
    if approx is not None and linear:
        kind = "approximate: slope difference at the kink (the paper's)"
        value = approx
        notes.append(f"non-smooth: f'' is {top.value + 0.0:g} away from the kink and undefined at "
                     f"it; the paper's approximate curvature is used")
    elif approx is not None:  # e.g. a SmeLU-like plugin: f'' is not 0 everywhere
        kind = "approximate: the activation's approx_curvature"
        value = approx
        shape = _shape_note(parts, jumps)
        notes.append((f"{shape}; " if shape else "")
                     + f"the activation's approx_curvature ({approx:g}) is used as its "
                       f"curvature, not sup f'' ({top.value:g})")
    elif linear:
        # piecewise linear (a user LeakyReLU-like expression): the paper's slope difference
        kind = "approximate: slope difference at the kink (the paper's)"
        value = max(abs(j) for _, j in jumps)
        notes.append("piecewise linear: f'' is constant away from the kinks; the largest slope "
                     "jump is used as the paper's approximate curvature")
    elif len(parts) > 1:
        kind = "sup of f'' over the smooth pieces"
        value = top.value
        notes.append(_shape_note(parts, jumps))
    else:
        kind = "max f'' (certified)" if top.certified else "max f'' (NOT certified, see bounds)"
        value = top.value if exact is None else float(exact[1])
    for ext, what in ((top, "max"), (bottom, "min")):
        if not ext.tails_certified:
            notes.append(f"{what}: enclosed by interval B&B on [-{ext.window:g}, {ext.window:g}]"
                         f"; interval arithmetic could not bound |x| > {ext.window:g} in one "
                         f"box, which is left to the decay of f'' (see docs/theory.md)")
        if math.isinf(ext.value):  # a finite value would be an interval end, never inf
            notes.append(f"{what}: f'' is unbounded ({ext.value:g}) as x -> {ext.argbest:g}")
        if ext.at_infinity:
            towards = "-inf" if ext.argbest < 0 else "inf"
            notes.append(f"{what}: not attained; approached as x -> {towards}")
        if not ext.certified:
            notes.append(f"{what}: NOT certified to tolerance: the enclosure is still rigorous "
                         f"but wider")
    max_limit, min_limit = _finite_limit(top), _finite_limit(bottom)
    return Curvature(
        label=act.label, smooth=len(parts) == 1 and act.smooth, f=str(d.f),
        f1=str(d.f1_simple), f2=str(d.f2_simple),
        max_value=top.value if exact is None else float(exact[1]),
        max_lower=top.lower, max_upper=top.upper, argmax=_arg(top),
        max_exact=(str(exact[1]) if exact is not None
                   else None if max_limit is None else str(max_limit)),
        argmax_exact=None if exact is None else str(exact[0]),
        min_value=bottom.value,
        min_lower=bottom.lower, min_upper=bottom.upper,
        argmin=_arg(bottom), certified=top.certified and bottom.certified,
        curvature=value, kind=kind, notes=notes,
        max_certified=top.certified, min_certified=bottom.certified,
        argmax_at_infinity=top.at_infinity, argmin_at_infinity=bottom.at_infinity,
        window=top.window,
        max_limit=None if max_limit is None else float(max_limit),
        min_limit=None if min_limit is None else float(min_limit),
        min_exact=None if min_limit is None else str(min_limit),
    )


def _shape_note(parts: list[Piece], jumps: list[tuple[float, float]]) -> str:
    """What f'' is like at the breakpoints of a piecewise f ("" for one smooth piece)."""
    if jumps:
        return ("f' jumps at " + ", ".join(f"x={a:g} (by {j:g})" for a, j in jumps)
                + ": f'' has a Dirac mass there, ignored")
    if len(parts) > 1:
        return ("C1 but not C2: f'' is discontinuous at "
                + ", ".join(f"{p.hi:g}" for p in parts[:-1])
                + "; the supremum is approached at a piece boundary, maybe not attained")
    return ""


def _finite_limit(ext: Extremum):
    """The exact finite limit of f'' at +-inf where ``ext`` is approached (the branch and
    bound's :attr:`Extremum.limit`, e.g. Softplus' infimum 0 as x -> -inf); None otherwise
    (attained, no limit found, or an infinite one: the value is then inf itself)."""
    if ext.limit is None or ext.limit in (sp.oo, -sp.oo):
        return None
    return ext.limit


def _arg(ext: Extremum) -> float:
    """The argument of an extremum: +-inf when it is approached as x -> +-inf (the window's
    edge is where the search stopped, not where f'' takes the value)."""
    if ext.at_infinity:
        return math.inf if ext.argbest > 0 else -math.inf
    return ext.argbest

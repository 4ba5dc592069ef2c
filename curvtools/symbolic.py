"""Symbolic derivatives of activations and their certified maximum curvature max_x f''(x).

The paper (Sec. 4) defines the curvature of a smooth activation as ``max_x f''(x)``. This module
computes f', f'', f''' with sympy and encloses the *global* maximum and minimum of f'' over the
whole real line by interval branch and bound (:func:`certified_extremum`):

* Every box ``[a, b]`` (also the unbounded tail boxes ``[L, inf)`` and ``(-inf, -L]``) gets an
  upper bound ``U`` of f'' from rigorous interval arithmetic (:mod:`curvtools.interval`): the
  natural extension, intersected on finite boxes with the mean-value form
  ``f''(m) + f'''([a, b]) * ([a, b] - m)`` (second-order tight near a smooth maximum).
* Every box midpoint gives a rigorous lower bound ``f''(m) >= lo(m)`` of the maximum.
* The box with the largest ``U`` is split (finite boxes in halves, a tail ``[a, inf)`` into
  ``[a, 2a]`` and ``[2a, inf)``); boxes whose ``U`` is below the best lower bound are dropped.
  It stops when ``max U - best lower <= tol``: the global maximum then lies in
  ``[best lower, max U]``, for every real x, tails included. If the budget runs out first the
  (wider) enclosure is still rigorous and the result says ``certified=False``.
* Lengths scale with f'': the window ``[-1024 s, 1024 s]`` and the rest use the
  :func:`natural_scale` s (1/beta for PSwish and Softplus), so every beta costs the same work.

Piecewise activations are split at their breakpoints and each piece is bounded on its closed
interval (the supremum over an open piece is the maximum of the continuous extension over its
closure), so for ELU the supremum alpha is found as the limit x -> 0-.

An exact closed form is reported when a simple candidate (0, or sympy's ``nsimplify`` of the
numeric argmax) is inside the certified argmax enclosure, makes f''' vanish exactly, and its
value lies inside the certified value enclosure.
"""

from __future__ import annotations

import heapq
import json
import math
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import sympy as sp

from curvtools.activations import Activation, symbol_x
from curvtools.curvature_result import WINDOW, Curvature
from curvtools.errors import BadInput
from curvtools.interval import interval_function

TAIL_START = 8.0  # beyond |x| > 8 s intersect several algebraic forms (dependency effects)
# WINDOW: branch and bound on [-WINDOW s, WINDOW s]; beyond it one unbounded box per side
# (s = natural_scale(...): 1 for every built-in with default parameters)
FACTOR_MAX_DEGREE = 1024  # sp.factor of a polynomial in exp(x/q) above this degree takes minutes


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


@dataclass(frozen=True)
class Piece:
    """One smooth piece of a piecewise f'': ``expr`` holds on the open interval (lo, hi)."""

    lo: float
    hi: float
    f2: sp.Expr
    f3: sp.Expr


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


# --- branch and bound --------------------------------------------------------------------------


@dataclass
class Extremum:
    """A rigorous enclosure ``lower <= max <= upper`` (or of the min) over a set of pieces."""

    lower: float
    upper: float
    argbest: float
    certified: bool
    boxes: int
    arg_lo: float = field(default=math.nan)  # the surviving boxes' hull: contains every argmax
    arg_hi: float = field(default=math.nan)
    tails_certified: bool = False  # the interval bound of |x| > window settled the tails
    tail_bound: float = math.nan  # that bound (an upper bound of the tails for a max)

    maximize: bool = True
    window: float = WINDOW  # the branch and bound covered [-window, window]

    @property
    def value(self) -> float:
        """f'' at ``argbest``: attained, and within the tolerance of the extremum if certified."""
        return self.lower if self.maximize else self.upper

    @property
    def at_infinity(self) -> bool:
        """The best point is the window's edge: the extremum is approached as |x| -> inf."""
        return abs(self.argbest) >= self.window


def _rates(e: sp.Expr, x: sp.Symbol) -> list[sp.Expr]:
    """The constant rates k of every exp/sinh/cosh/tanh(k x + d) in ``e`` (symbolic numbers)."""
    rates = []
    for atom in e.atoms(sp.exp, sp.sinh, sp.cosh, sp.tanh):
        k = sp.diff(atom.args[0], x)
        if k.is_number and k != 0:
            rates.append(k)
    return rates


def natural_scale(x: sp.Symbol, exprs: list[sp.Expr]) -> float:
    """``1 / min |k|`` over the rates k of exp/sinh/cosh/tanh(k x + d) in ``exprs`` (else 1).

    The length on which f'' varies and decays: PSwish and Softplus with slope beta have
    f''(x) = beta f_1''(beta x), f_1'' stretched by 1/beta (the minimum of PSwish's f'' sits at
    x = +-3.44/beta), so the search window, the switch to the tail forms and the float scan
    are all scaled by it: the branch and bound then does the same work for every beta. 1 for
    every built-in with its default parameters.

    Example::

        >>> natural_scale(x, [exp(-x/1000) / (1 + exp(-x/1000))**2])   # 1000.0
    """
    rates = [abs(float(k)) for e in exprs for k in _rates(e, x)]
    return 1.0 / min(rates) if rates else 1.0


def _cheap_to_factor(e: sp.Expr, x: sp.Symbol) -> bool:
    """Whether ``sp.factor(e)`` stays fast.

    sympy writes every exp(p_i/q_i x) as a power of one generator exp(x/L), L = lcm(q_i), and
    factors a polynomial of degree max |p_i| L/q_i in it: 20000 for PSwish beta = 1e4 written
    in x (minutes, mostly cyclotomic factors of 1 + exp(x)**10000).
    """
    rates = [sp.nsimplify(k) if k.is_Float else k for k in _rates(e, x)]
    if not all(k.is_Rational for k in rates):  # exp(pi x): its own generator, no big powers
        return True
    lcm = math.lcm(1, *(int(k.q) for k in rates))
    return all(abs(k.p) * lcm // k.q <= FACTOR_MAX_DEGREE for k in rates)


def _factored(e: sp.Expr, x: sp.Symbol) -> sp.Expr | None:
    """``sp.factor(e)``, done in the variable u = k0 x (k0 the slowest exact rational rate).

    In u, PSwish and Softplus with any beta read like beta = 1 (exp(-u), exp(-2u)): a degree-2
    polynomial in exp(u) instead of one of degree 2 beta in exp(x). The result is substituted
    back, so it is the same function of x. With no rate, or a float one (inexact to scale by),
    u = x. None when even that would be a huge polynomial.
    """
    rates = _rates(e, x)
    k0 = sp.Integer(1)
    if rates and all(k.is_Rational for k in rates):
        k0 = min((abs(k) for k in rates), key=float)
    u = sp.Dummy("u", real=True)
    g = e.subs(x, u / k0)
    if not _cheap_to_factor(g, u):
        return None
    return sp.factor(g).subs(u, k0 * x)


def certified_extremum(x: sp.Symbol, parts: list[Piece], *, maximize: bool = True,
                       tol: float = 1e-9, window: float | None = None,
                       max_boxes: int = 20000) -> Extremum:
    """Enclose ``sup`` (or ``inf``) of f'' over the union of ``parts`` by interval B&B.

    The branch and bound runs on ``[-window, window]`` (default ``WINDOW`` times the
    :func:`natural_scale` of f''); the two tails beyond it are single unbounded boxes bounded
    once by interval arithmetic (``tails_certified`` says whether that bound settled them; when it
    did, the bound is folded into the enclosure). Returns ``lower <= sup <= upper``;
    ``certified`` is True when ``upper - lower <= tol`` (absolute, or relative for values above 1)
    was reached.
    """
    sign = 1.0 if maximize else -1.0
    if window is None:
        window = WINDOW * natural_scale(x, [p.f2 for p in parts])
    tail_start = TAIL_START * window / WINDOW
    heap: list[tuple[float, float, float, int]] = []
    best, best_x = -math.inf, math.nan
    compiled = []
    for p in parts:
        f2 = interval_function(x, sign * p.f2)
        alternatives = [f2]
        for alt in {_factored(p.f2, x), sp.together(p.f2)} - {p.f2, None}:
            try:
                alternatives.append(interval_function(x, sign * alt))
            except ValueError:
                pass
        compiled.append((f2, alternatives, interval_function(x, sign * p.f3)))

    def slack() -> float:  # 0 while best is infinite: inf - inf would be NaN and prune all
        return tol * max(1.0, abs(best)) if math.isfinite(best) else 0.0

    def upper(a: float, b: float, i: int) -> float:
        f2, alternatives, f3 = compiled[i]
        if math.isinf(a) or math.isinf(b) or max(abs(a), abs(b)) > tail_start:
            # far out, dependency effects differ between algebraic forms: intersect them all
            return min(F(a, b)[1] for F in alternatives)
        u = f2(a, b)[1]
        if b > a:
            m = (a + b) / 2
            d_lo, d_hi = f3(a, b)
            u = min(u, f2(m, m)[1] + max(abs(d_lo), abs(d_hi)) * (b - a) / 2)
        return u

    def probe(t: float, i: int) -> None:
        nonlocal best, best_x
        v = compiled[i][0](t, t)[0]
        if v > best:
            best, best_x = v, t

    tails: list[tuple[float, float, int]] = []
    for i, p in enumerate(parts):
        lo, hi = max(p.lo, -window), min(p.hi, window)
        if p.lo < -window:
            tails.append((p.lo, -window, i))
        if p.hi > window:
            tails.append((window, p.hi, i))
        if lo >= hi:
            continue
        if p.f2.is_number:  # attained on the whole open piece: report a point inside it
            probe(_inside(p.lo, p.hi), i)
        else:
            reach = 40.0 * window / WINDOW
            for t in (lo, hi, (lo + hi) / 2,
                      *_float_candidates(x, sign * p.f2, lo, hi, reach)):
                probe(t, i)
        for a, b in _initial_boxes(lo, hi):
            heapq.heappush(heap, (-upper(a, b, i), a, b, i))
    boxes = 0
    top = best
    while heap:
        neg_u, a, b, i = heapq.heappop(heap)
        top = -neg_u
        # best at the double range's end (or inf: a pole at a piece's end): no finite
        # enclosure can come out of further splitting
        if top - best <= slack() or boxes >= max_boxes or best >= sys.float_info.max:
            heapq.heappush(heap, (neg_u, a, b, i))
            break
        for ca, cb in ((a, (a + b) / 2), ((a + b) / 2, b)):
            boxes += 1
            probe((ca + cb) / 2, i)
            cu = upper(ca, cb, i)
            if cu >= best - slack():
                heapq.heappush(heap, (-cu, ca, cb, i))
    else:
        top = best
    top = max(top, best)  # best = +inf: a pole at a piece's end, the sup is truly infinite
    live = [(a, b) for neg_u, a, b, _ in heap if -neg_u >= best - slack()]
    arg_lo = min((a for a, _ in live), default=best_x)
    arg_hi = max((b for _, b in live), default=best_x)
    tail_upper = max((upper(a, b, i) for a, b, i in tails), default=-math.inf)
    tails_certified = tail_upper <= best + slack()
    if tails_certified:
        # the enclosure covers the tails too: a sup approached as |x| -> inf (the infimum 0 of
        # Softplus' f'') lies between the tail bound and the window's best, not above it
        top = max(top, tail_upper)
    elif abs(best_x) >= window:
        # still rising at the window's edge and the tails are unbounded by intervals: nothing
        # finite is proven (e.g. f = x**3); report the rigorous [best, inf)
        top = tail_upper
    # only a proper, finite enclosure certifies anything (a pole of f'' gives best or top inf)
    certified = math.isfinite(best) and math.isfinite(top) and best <= top <= best + slack()
    if sign > 0:
        return Extremum(best, top, best_x, certified, boxes, arg_lo, arg_hi, tails_certified,
                        tail_upper, window=window)
    return Extremum(-top, -best, best_x, certified, boxes, arg_lo, arg_hi, tails_certified,
                    -tail_upper, maximize=False, window=window)


def _inside(lo: float, hi: float) -> float:
    """A point strictly inside the piece (lo, hi), either end possibly infinite."""
    if math.isinf(lo) and math.isinf(hi):
        return 0.0
    if math.isinf(lo):
        return hi - 1.0
    if math.isinf(hi):
        return lo + 1.0
    return (lo + hi) / 2


def _float_candidates(x: sp.Symbol, f2: sp.Expr, lo: float, hi: float,
                      reach: float = 40.0) -> list[float]:
    """Approximate maximizers from a float grid on ``[lo, hi]`` and ``|x| <= reach``, refined.

    Only a head start: a good incumbent lets the branch and bound prune most boxes at once.
    Correctness never depends on it (candidates are re-evaluated in interval arithmetic).
    """
    import numpy as np
    from scipy.optimize import minimize_scalar

    fn = sp.lambdify(x, f2, ["scipy", "numpy"])
    a, b = max(lo, -reach), min(hi, reach)
    if a >= b:
        return []
    grid = np.linspace(a, b, 16001)
    with np.errstate(all="ignore"):
        values = np.asarray(fn(grid), dtype=float) * np.ones_like(grid)
    values[~np.isfinite(values)] = -np.inf
    k = int(np.argmax(values))
    step = grid[1] - grid[0]
    left, right = max(a, grid[k] - step), min(b, grid[k] + step)
    if right <= left:
        return [float(grid[k])]
    with np.errstate(all="ignore"):
        res = minimize_scalar(lambda t: -float(fn(t)), bounds=(left, right), method="bounded",
                              options={"xatol": 1e-12})
    return [float(grid[k]), float(res.x)]


def _initial_boxes(lo: float, hi: float) -> list[tuple[float, float]]:
    """Unit boxes near 0, then dyadic boxes outwards: few boxes for a wide window."""
    cuts = {lo, hi}
    edge = 1.0
    while edge < max(abs(lo), abs(hi)):
        cuts.update(c for c in (edge, -edge) if lo < c < hi)
        edge *= 2
    cuts.update(float(c) for c in range(-8, 9) if lo < c < hi)
    ordered = sorted(cuts)
    return list(zip(ordered[:-1], ordered[1:], strict=True))


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


def curvature(act: Activation, tol: float = 1e-9) -> Curvature:
    """Certified max/min of f'' for ``act`` (plus the paper's approximation for kinks).

    Built-in activations at the default tolerance come from the stored table
    (:mod:`curvtools.certified_table`, generated by and tested against
    :func:`compute_curvature`); everything else is computed once per process.

    Example::

        >>> c = curvature(resolve("gelu"))
        >>> c.max_exact, round(c.max_value, 4)     # ('sqrt(2)/sqrt(pi)', 0.7978)
    """
    from curvtools.certified_table import lookup

    stored = lookup(act, tol)
    if stored is not None:
        return stored
    key = (json.dumps(act.config(), sort_keys=True), tol)
    if key not in _CACHE:  # the computation takes seconds; the doc, CLI and tests share it
        _CACHE[key] = compute_curvature(act, tol)
    return _CACHE[key]


_CACHE: dict[tuple[str, float], Curvature] = {}


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
    approx = act.approx_curvature()
    if approx is not None:
        kind = "approximate: slope difference at the kink (the paper's)"
        value = approx
        notes.append("non-smooth: f'' is 0 away from the kink and undefined at it; the paper's "
                     "approximate curvature is used")
    elif jumps and top.upper == bottom.lower:
        # piecewise linear (a user LeakyReLU-like expression): the paper's slope difference
        kind = "approximate: slope difference at the kink (the paper's)"
        value = max(abs(j) for _, j in jumps)
        notes.append("piecewise linear: f'' is constant away from the kinks; the largest slope "
                     "jump is used as the paper's approximate curvature")
    elif len(parts) > 1:
        kind = "sup of f'' over the smooth pieces"
        value = top.value
        if jumps:
            notes.append("f' jumps at " + ", ".join(f"x={a:g} (by {j:g})" for a, j in jumps)
                         + ": f'' has a Dirac mass there, ignored")
        else:
            notes.append("C1 but not C2: f'' is discontinuous at "
                         + ", ".join(f"{p.hi:g}" for p in parts[:-1])
                         + "; the supremum is approached at a piece boundary, maybe not attained")
    else:
        kind = "max f'' (certified)" if top.certified else "max f'' (NOT certified, see bounds)"
        value = top.value if exact is None else float(exact[1])
    limits = {what: _limit_at_infinity(d, parts, ext) for ext, what in ((top, "max"),
                                                                         (bottom, "min"))}
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
    if not (top.certified and bottom.certified):
        notes.append("NOT certified to tolerance: the enclosure is still rigorous but wider")
    max_limit, min_limit = limits["max"], limits["min"]
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


def _arg(ext: Extremum) -> float:
    """The argument of an extremum: +-inf when it is approached as x -> +-inf (the window's
    edge is where the search stopped, not where f'' takes the value)."""
    if ext.at_infinity:
        return math.inf if ext.argbest > 0 else -math.inf
    return ext.argbest


def _limit_at_infinity(d: Derivatives, parts: list[Piece], ext: Extremum):
    """The exact limit of f'' as x -> +-inf when the extremum is approached there (e.g. the
    infimum 0 of Softplus' f'' as x -> -inf), if sympy finds it and it lies in the certified
    enclosure; else None (the enclosure alone is then reported)."""
    if not (ext.at_infinity and ext.tails_certified):
        return None
    piece = parts[-1] if ext.argbest > 0 else parts[0]
    try:
        value = sp.limit(piece.f2, d.x, sp.oo if ext.argbest > 0 else -sp.oo)
    except Exception:  # sympy's limit gives up on some expressions (NotImplementedError, ...)
        return None
    if not (value.is_number and value.is_finite and value.is_real):
        return None
    return value if ext.lower <= float(value) <= ext.upper else None

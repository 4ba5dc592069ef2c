"""Interval branch and bound: a rigorous enclosure of the global max (or min) of f'' over the
whole real line, for f'' given as smooth sympy pieces (:class:`Piece`).

* Every box ``[a, b]`` (also the unbounded tail boxes ``[L, inf)`` and ``(-inf, -L]``) gets an
  upper bound ``U`` of f'' from rigorous interval arithmetic (:mod:`curvtools.interval`): the
  natural extension, intersected on finite boxes with the mean-value form
  ``f''(m) + f'''([a, b]) * ([a, b] - m)`` (second-order tight near a smooth maximum).
* Every box midpoint gives a rigorous lower bound ``f''(m) >= lo(m)`` of the maximum.
* The box with the largest ``U`` is split; boxes whose ``U`` is below the best lower bound are
  dropped. It stops when ``max U - best lower <= tol``.
* Lengths scale with f'': the window ``[-1024 s, 1024 s]`` uses the :func:`natural_scale` s.
* When the best point found is the window's edge, the extremum may be approached as
  ``|x| -> inf`` and never attained (Softplus' infimum 0, ``1/(x^2+1)^(3/2)``'s): sympy's
  exact limit of f'' there (:func:`_limit_at_infinity`) is then a lower bound of the max (upper
  of the min) too, once the tail's interval bound agrees with it. So such an extremum gets the
  exact limit (0, not f'' at the window's edge, which underflows to a denormal or sits above
  the tolerance) and a certified enclosure, for every parameter alike.

Used by :mod:`curvtools.symbolic` (which builds the pieces and the report). Example::

    >>> ext = certified_extremum(x, [Piece(-math.inf, math.inf, f2, f3)], maximize=True)
    >>> ext.lower, ext.upper      # ext.lower <= max f'' <= ext.upper
"""

from __future__ import annotations

import heapq
import math
import sys
from dataclasses import dataclass, field

import sympy as sp

from curvtools.curvature_result import WINDOW
from curvtools.interval import interval_function

__all__ = ["WINDOW", "Extremum", "Piece", "certified_extremum", "natural_scale"]

TAIL_START = 8.0  # beyond |x| > 8 s intersect several algebraic forms (dependency effects)
# WINDOW: branch and bound on [-WINDOW s, WINDOW s]; beyond it one unbounded box per side
# (s = natural_scale(...): 1 for every built-in with default parameters)
FACTOR_MAX_DEGREE = 1024  # sp.factor of a polynomial in exp(x/q) above this degree takes minutes


# --- the input: smooth pieces of f'' -----------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """One smooth piece of a piecewise f'': ``expr`` holds on the open interval (lo, hi)."""

    lo: float
    hi: float
    f2: sp.Expr
    f3: sp.Expr


# --- the search --------------------------------------------------------------------------------


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
    # the extremum is approached as x -> argbest = +-inf: the exact limit of f'' there (sympy),
    # which is then the enclosure's end on the incumbent side (value); None otherwise
    limit: sp.Expr | None = None

    @property
    def value(self) -> float:
        """f'' at ``argbest`` (attained), or its :attr:`limit` when ``argbest`` is +-inf; within
        the tolerance of the extremum if certified."""
        return self.lower if self.maximize else self.upper

    @property
    def at_infinity(self) -> bool:
        """The best point is the window's edge or beyond: the extremum is approached as
        |x| -> inf (``argbest`` is +-inf when :attr:`limit` holds it)."""
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
    tail_uppers = {(a, b): upper(a, b, i) for a, b, i in tails}
    tail_upper = max(tail_uppers.values(), default=-math.inf)
    limit = None
    if abs(best_x) >= window:  # still best at the window's edge: maybe approached at +-inf
        found = _limit_incumbent(x, parts, sign, best, tail_uppers)
        if found is not None:
            best, best_x, limit = found
    top = max(top, best)  # best = +inf: a pole at a piece's end, the sup is truly infinite
    live = [(a, b) for neg_u, a, b, _ in heap if -neg_u >= best - slack()]
    arg_lo = min((a for a, _ in live), default=best_x)
    arg_hi = max((b for _, b in live), default=best_x)
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
                        tail_upper, window=window, limit=limit)
    return Extremum(-top, -best, best_x, certified, boxes, arg_lo, arg_hi, tails_certified,
                    -tail_upper, maximize=False, window=window, limit=limit)


def _limit_at_infinity(x: sp.Symbol, piece: Piece, towards: float) -> sp.Expr | None:
    """The exact limit of the piece's f'' as x -> ``towards`` (+-inf): a real number, +-oo, or
    None when sympy finds none (or gives up)."""
    try:
        value = sp.limit(piece.f2, x, sp.oo if towards > 0 else -sp.oo)
    except Exception:  # sympy's limit gives up on some expressions (NotImplementedError, ...)
        return None
    if value in (sp.oo, -sp.oo):
        return value
    if not (value.is_number and value.is_finite and value.is_real):
        return None  # an oscillating f'' (AccumBounds), or a value sympy cannot decide
    return value


def _limit_incumbent(x: sp.Symbol, parts: list[Piece], sign: float, best: float,
                     tail_uppers: dict[tuple[float, float], float]
                     ) -> tuple[float, float, sp.Expr] | None:
    """``(lower bound of sup g, argbest +-inf, exact limit of f'')`` when ``g = sign * f''``
    tends to a limit of at least ``best`` as x -> +-inf: a sup is at least every limit of the
    function, so the limit becomes the incumbent. The float is the limit rounded outward
    (:mod:`curvtools.interval`); a limit above its tail's rigorous interval bound would
    contradict that bound and is not used. None when no side qualifies."""
    found = None
    for towards, piece in ((-math.inf, parts[0]), (math.inf, parts[-1])):
        if (piece.lo if towards < 0 else piece.hi) != towards:
            continue
        exact = _limit_at_infinity(x, piece, towards)
        if exact is None:
            continue
        if exact in (sp.oo, -sp.oo):
            low = sign * (math.inf if exact == sp.oo else -math.inf)
        else:
            try:
                lo, hi = interval_function(x, exact)(0.0, 0.0)
            except ValueError:  # a constant the interval compiler has no rule for
                continue
            low = lo if sign > 0 else -hi
        bound = next((u for (a, b), u in tail_uppers.items() if towards in (a, b)), math.inf)
        if best <= low <= bound and (found is None or low > found[0]):
            found = (low, towards, exact)
    return found


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

"""Lemma 1 (Eq. 1 of the paper; Moosavi-Dezfooli et al., CVPR 2019): bounds on ||delta*||.

For the quadratic model ``q(delta) = -c + g^T delta + 1/2 delta^T H delta`` of a binary classifier
at a point with ``c = -f(x) >= 0``, ``g`` the input gradient, ``nu = lambda_max(H)`` with unit
eigenvector ``u``, the smallest flipping perturbation ``delta* = argmin ||delta|| s.t. q >= 0``
satisfies::

    ||g||/nu (sqrt(1 + 2 nu c/||g||^2) - 1) <= ||delta*||
                                            <= |g^T u|/nu (sqrt(1 + 2 nu c/(g^T u)^2) - 1)

Both sides are evaluated in the cancellation-free form ``2c / (a + sqrt(a^2 + 2 nu c))``
(multiply by the conjugate), with ``a = ||g||`` resp. ``|g^T u|``. Why the bounds hold:

* lower: for ``||delta|| = r``, ``q(delta) <= -c + ||g|| r + nu r^2 / 2`` (Cauchy-Schwarz and
  ``delta^T H delta <= nu r^2``), so q can reach 0 only once r is at least the smallest
  non-negative root of the right side;
* upper: ``delta = t sign(g^T u) u`` is feasible at the smallest non-negative root t of
  ``-c + |g^T u| t + nu t^2 / 2``.

Neither argument uses ``nu >= 0``; the lemma's assumption only makes a root always exist. The
cases, all handled elementwise:

* ``c = 0``: delta = 0 already reaches the boundary: both bounds 0.
* ``c < 0``: the point is already on the other side (misclassified): ``delta* = 0``, both 0.
* ``nu -> 0``: the form above tends to ``c/||g||`` and ``c/|g^T u|`` (the linear model), with no
  0/0 and no cancellation.
* ``g^T u = 0`` (or ``||g|| = 0``): ``a = 0`` gives ``sqrt(2c/nu)`` for ``nu > 0``; for
  ``nu <= 0`` there is no root: ``inf`` (moving along u never flips; nothing better is known).
* ``nu < 0`` (outside the lemma; H negative definite): both arguments still hold where the
  discriminant ``a^2 + 2 nu c >= 0``; where it is negative the quadratic bound never reaches 0:
  the lower bound is ``inf`` (no perturbation of any size flips the quadratic model, so
  ``||delta*|| = inf``) and so is the upper one. We return these valid bounds, not NaN.
* NaN inputs give NaN.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _smallest_root(c: np.ndarray, a: np.ndarray, nu: np.ndarray) -> np.ndarray:
    """Smallest t >= 0 with ``-c + a t + nu t^2 / 2 = 0`` for c > 0, a >= 0 (inf if none)."""
    disc = a * a + 2.0 * nu * c
    with np.errstate(divide="ignore", invalid="ignore"):
        root = 2.0 * c / (a + np.sqrt(np.where(disc >= 0, disc, np.nan)))
    root = np.where(disc < 0, np.inf, root)
    # a = 0 and nu = 0: -c = 0 has no root; 2c/0 already gives inf, keep it explicit
    return np.where((a == 0) & (nu == 0), np.inf, root)


def lemma1_bounds(c: ArrayLike, g_norm: ArrayLike, nu: ArrayLike,
                  g_dot_u: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of Lemma 1 on the minimal l2 flipping perturbation.

    Args (broadcast together, any shapes): ``c = -f(x)``, ``g_norm = ||grad f(x)||``,
    ``nu = lambda_max(Hessian)``, ``g_dot_u = g^T u`` (u the unit top eigenvector).
    Returns ``(lower, upper)`` as float64 arrays of the broadcast shape; see the module
    docstring for every edge case.

    Example::

        >>> lemma1_bounds(1.0, 2.0, 0.0, 1.0)      # linear model: c/||g||, c/|g^T u|
        (array(0.5), array(1.))
    """
    c, a, nu, b = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64)
                                        for v in (c, g_norm, nu, g_dot_u)))
    a, b = np.abs(a), np.abs(b)
    positive = c > 0
    cs = np.where(positive, c, 1.0)  # dummy value where c <= 0, replaced below
    lower = np.where(positive, _smallest_root(cs, a, nu), 0.0)
    upper = np.where(positive, _smallest_root(cs, b, nu), 0.0)
    bad = np.isnan(c) | np.isnan(a) | np.isnan(nu) | np.isnan(b)
    lower = np.where(bad, np.nan, lower)
    upper = np.where(bad, np.nan, upper)
    return lower, upper

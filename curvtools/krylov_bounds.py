"""Probabilistic bounds on the extreme eigenvalues from one random start vector.

Why they are needed: a Ritz pair's residual r bounds the distance from the Ritz value theta to
SOME eigenvalue (``|theta - lambda_j| <= r``), not to the largest one. A larger eigenvalue whose
eigenvector is (nearly) orthogonal to the Krylov space is invisible to every a-posteriori test,
and with a deterministic start vector nothing can be said about it (Kuczynski & Wozniakowski,
SIAM J. Matrix Anal. Appl. 13(4), 1992). With a start vector drawn uniformly from the unit
sphere, as :func:`curvtools.spectra.input_hessian_eigenvalues` draws it, the chance of such a
miss can be bounded.

The bound used here (the "Lanczos polynomial" bound of van Dorsselaer, Hochstenbach & van der
Vorst, SIAM J. Matrix Anal. Appl. 22(3), 2000, in Kuczynski & Wozniakowski's random-start model):

1. After k Lanczos steps from the unit vector q_1, the monic characteristic polynomial chi_k of
   the tridiagonal T_k satisfies ``chi_k(A) q_1 = b_1 ... b_k q_{k+1}`` (b_j: the norms of the
   Lanczos residuals), so ``||chi_k(A) q_1|| = b_1 ... b_k``.
2. Write ``q_1 = sum_j g_j u_j`` (u_j: eigenvectors of A). Then
   ``g_1^2 chi_k(lambda_max)^2 <= sum_j g_j^2 chi_k(lambda_j)^2 = (b_1 ... b_k)^2``.
3. chi_k's roots are the Ritz values, all <= theta_max, so chi_k increases above theta_max and
   ``lambda_max <= U`` where ``U > theta_max`` solves ``chi_k(U) = b_1 ... b_k / |g_1|``.
4. For q_1 uniform on the sphere of R^n, ``P(|g_1| < c) <= 2 c Gamma(n/2) / (sqrt(pi)
   Gamma((n-1)/2))`` (the density of one coordinate is at most its value at 0; for n >= 3). With
   ``c = c(n, delta)`` making the right side delta, ``lambda_max <= U(c)`` holds with
   probability at least ``1 - delta``, for ANY symmetric A: no gap, no spectrum assumption. (If
   lambda_max is repeated, the norm of q_1's projection on its eigenspace replaces |g_1|; that
   norm is stochastically larger, so the bound still holds.)

The price of needing no assumption: near convergence ``U - theta_max ~ r |s_1| / c`` (r: the
residual, s_1: the first component of the top eigenvector of T_k, about 1/sqrt(n)), so the
bound is about ``0.6 r / delta`` -- some 60 residuals at delta = 1e-2. A hidden eigenvalue just
above theta whose eigenvector has a somewhat small component is indistinguishable from none.
The a-priori counterpart (Kuczynski & Wozniakowski 1992, Lanczos with a random start: failure
probability at most about ``1.648 sqrt(n) exp(-sqrt(eps) (2k - 1))`` for relative error eps of a
positive definite matrix) says the same thing in advance: for n = 3072, eps = 1e-3 and
failure 1e-3 it needs k of about 180 products whatever the spectrum.

After a breakdown restart the later blocks start from vectors that are no longer uniform on the
sphere, so only the first Krylov block (the one grown from q_1) is used. Everything holds in
exact arithmetic for the operator the products compute; in float64 the rounding is far below the
bounds reported.
"""

from __future__ import annotations

import math

import torch

BISECTION_STEPS = 64
# The root is searched in log(U - theta_max) over this many e-folds below its a-priori maximum.
SEARCH_EFOLDS = 120.0


def start_component_quantile(n: int, delta: float) -> float:
    """c such that ``P(|g| < c) <= delta`` for one coordinate g of a vector drawn uniformly from
    the unit sphere of R^n (also for the norm of its projection on any nonzero subspace)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta={delta} must be in (0, 1)")
    if n <= 1:
        return 1.0
    if n == 2:  # g = cos(phi): P(|g| < c) = (2/pi) arcsin(c)
        return math.sin(math.pi * delta / 2)
    log_ratio = math.lgamma((n - 1) / 2) - math.lgamma(n / 2)
    return min(1.0, delta * math.sqrt(math.pi) / 2 * math.exp(log_ratio))


def first_block_length(beta: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """[B] length of the first Krylov block: 1 + the first step whose beta is 0 (a breakdown
    restart), or ``m`` (the Krylov dimension of each example) when there was none."""
    steps = torch.arange(beta.shape[1], device=beta.device)
    broke = (beta == 0) & (steps[None] < m[:, None])
    first = torch.where(broke, steps[None], torch.full_like(broke, beta.shape[1],
                                                            dtype=torch.long)).amin(dim=1)
    return torch.minimum(first + 1, m)


def polynomial_upper_bounds(alpha: torch.Tensor, beta: torch.Tensor, dropped: torch.Tensor,
                            m: torch.Tensor, n: int, delta: float) -> torch.Tensor:
    """Upper bound on the largest eigenvalue per example, valid with probability >= 1 - delta
    over the random start vector (module docstring).

    ``alpha``, ``beta``, ``dropped`` [B, M] float64: the Lanczos recurrence of each example
    (``beta[:, j]`` the norm kept at step j, 0 at a breakdown, ``dropped[:, j]`` the norm a
    breakdown discarded); ``m`` [B] int64: the steps taken (<= M); ``n``: the dimension. Apply
    it to ``-alpha`` for a lower bound on the smallest eigenvalue. Returns [B] float64.
    """
    f64 = torch.float64
    alpha, beta, dropped = alpha.to(f64), beta.to(f64), dropped.to(f64)
    bsz, width = alpha.shape
    steps = torch.arange(width, device=alpha.device)
    k1 = first_block_length(beta, m)
    inside = steps[None] < k1[:, None]  # [B, M] rows/columns of the first block
    # The first block as a [B, M, M] tridiagonal matrix padded with decoupled diagonal entries
    # below every eigenvalue of the block (Gershgorin), so that they sort first and are masked.
    a_in = torch.where(inside, alpha, torch.zeros_like(alpha))
    b_in = torch.where(inside[:, 1:], beta[:, :-1], torch.zeros_like(beta[:, :-1]))
    b_max = b_in.abs().amax(dim=1) if width > 1 else torch.zeros_like(alpha[:, 0])
    radius = a_in.abs().amax(dim=1) + 2 * b_max + 1.0
    diag = torch.where(inside, alpha, (-2 * radius)[:, None].expand(-1, width))
    t = torch.diag_embed(diag)
    if width > 1:
        off = torch.diag_embed(b_in, offset=1)
        t = t + off + off.transpose(1, 2)
    theta = torch.linalg.eigvalsh(t)  # ascending; the first M - k1 are padding
    real = steps[None] >= (width - k1)[:, None]
    top = theta[:, -1]
    gaps = torch.where(real, (top[:, None] - theta).clamp_min(0), torch.ones_like(theta))
    # log of b_1 ... b_k / c: the last factor is whatever the last step of the block produced
    last = (beta + dropped).gather(1, (k1 - 1)[:, None]).squeeze(1)
    kept = torch.where(inside & (steps[None] < (k1 - 1)[:, None]), beta, torch.ones_like(beta))
    log_target = (kept.log().sum(dim=1) + last.log()
                  - math.log(start_component_quantile(n, delta)))
    count = k1.to(f64)
    hi = log_target / count  # chi(top + e^hi) >= e^(k1 * hi) = target: the root is below
    lo = hi - SEARCH_EFOLDS
    weight = real.to(f64)
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        value = ((gaps + mid.exp()[:, None]).log() * weight).sum(dim=1)
        above = value >= log_target
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    # an exactly invariant first block (last norm 0): the bound is the top Ritz value itself
    eta = torch.where(torch.isfinite(log_target), hi.exp(), torch.zeros_like(hi))
    return top + eta


def kw_failure_probability(n: int, steps: int, eps: float) -> float:
    """The a-priori bound quoted in the module docstring, ``min(1, 1.648 sqrt(n) exp(-sqrt(eps)
    (2k - 1)))``: the probability that Lanczos from a random start leaves a relative error of at
    least ``eps`` in the largest eigenvalue of a positive semi-definite matrix (for any symmetric
    one: relative to the spectral width, Lanczos being shift-invariant). Kuczynski & Wozniakowski
    count k in products beyond the start vector; ``k = steps - 1`` here (a Krylov space of
    dimension ``steps``), the cautious reading. Quoted, not re-derived: the tests check it
    empirically on small matrices."""
    k = max(steps - 1, 0)
    return min(1.0, 1.648 * math.sqrt(n) * math.exp(-math.sqrt(eps) * (2 * k - 1)))

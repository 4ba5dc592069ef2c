"""The a-posteriori analysis of a recorded Lanczos relation: Ritz pairs, their error bounds, the
former estimate rule's test (the derivations: :mod:`curvtools.lanczos`, "Error bound").

:func:`ritz_pairs` takes the recorded relation of the active examples (:class:`Relation`: T's
diagonal and off-diagonal, the remainders breakdowns discarded, the coefficient mismatch M, the
running scale, the products' estimated error) after m steps and returns the requested Ritz
pairs with their bounds and both stop rules' verdicts (:class:`RitzPairs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EIGENVALUE_SAFETY = 0.5  # the "eigenvalue" rule stops at estimate <= EIGENVALUE_SAFETY * tol
ROUNDING_FACTOR = 2.0  # the relation's own rounding: ROUNDING_FACTOR * sqrt(m) * eps * scale


def tridiagonal(alpha: torch.Tensor, beta: torch.Tensor, m: int) -> torch.Tensor:
    """[B, m, m] symmetric tridiagonal matrix from alpha [B, >=m] and beta [B, >=m-1]."""
    t = torch.diag_embed(alpha[:, :m])
    if m > 1:
        off = torch.diag_embed(beta[:, : m - 1], offset=1)
        t = t + off + off.transpose(1, 2)
    return t


@dataclass
class RitzPairs:
    """The requested pairs at one check: values [B, k] / [B], absolute bounds, relative
    residual, estimate, bound and rounding part (max over the pairs), the two rules' verdicts,
    ``limited`` and the eigenvectors of T of the top pairs [B, m, k]."""

    top: torch.Tensor
    smallest: torch.Tensor
    residual: torch.Tensor
    estimate: torch.Tensor
    ok_eigenvalue: torch.Tensor
    top_coeffs: torch.Tensor
    top_bound: torch.Tensor
    smallest_bound: torch.Tensor
    error_bound: torch.Tensor
    rounding: torch.Tensor
    ok_bound: torch.Tensor
    limited: torch.Tensor


def ritz_gaps(theta: torch.Tensor, abs_res: torch.Tensor) -> torch.Tensor:
    """Guarded gap of each Ritz value (ascending theta [B, m], absolute residuals [B, m]) to its
    neighbours: ``theta_i - (theta_{i-1} + r_{i-1})`` below and ``(theta_{i+1} - r_{i+1}) -
    theta_i`` above, the smaller of the two, clamped at 0 (an unconverged neighbour, whose
    eigenvalue may lie anywhere within its residual, does not count as a gap). The extreme ones
    have one neighbour only; 0 where there is none (m == 1). A zero gap makes the estimate fall
    back to the residual r."""
    big = torch.full_like(theta[:, :1], float("inf"))
    below = torch.cat([big, theta[:, 1:] - theta[:, :-1] - abs_res[:, :-1]], dim=1)
    above = torch.cat([theta[:, 1:] - abs_res[:, 1:] - theta[:, :-1], big], dim=1)
    gap = torch.minimum(below, above)
    return torch.where(torch.isinf(gap), torch.zeros_like(gap), gap.clamp_min(0))


@dataclass
class Relation:
    """The recorded Lanczos relation of the active rows (float64): T's diagonal and
    off-diagonal, the remainders discarded at breakdowns, the coefficient discrepancy M [B, M,
    M] (module docstring), the running scale, and the caller's product-error estimate."""

    alpha: torch.Tensor
    beta: torch.Tensor
    dropped: torch.Tensor
    mismatch: torch.Tensor
    scale: torch.Tensor
    product_error: torch.Tensor

    def take(self, keep: torch.Tensor, m: int) -> Relation:
        """The relation of the rows ``keep`` after m steps (M copied in its written corner)."""
        mismatch = self.mismatch.new_zeros((keep.numel(), *self.mismatch.shape[1:]))
        mismatch[:, :m, :m] = self.mismatch[keep, :m, :m]
        return Relation(self.alpha[keep], self.beta[keep], self.dropped[keep], mismatch,
                        self.scale[keep], self.product_error[keep])


def ritz_pairs(st: Relation, m: int, k: int, want_min: bool, tol: float, eps: float) -> RitzPairs:
    """Ritz values, residuals r, bounds and estimates from m Lanczos steps (module docstring;
    ``dropped``: the norm of the remainder a breakdown discarded at step j, 0 where none)."""
    alpha, beta, dropped = st.alpha, st.beta, st.dropped
    theta, s = torch.linalg.eigh(tridiagonal(alpha, beta, m))  # ascending
    bsz = theta.shape[0]
    rho = theta.abs().amax(dim=1, keepdim=True)
    lost = dropped[:, :m].clone()
    lost[:, m - 1] += beta[:, m - 1]
    abs_res = torch.einsum("bj,bji->bi", lost, s.abs())  # [B, m]
    floor = torch.maximum(theta.abs(), max(1e-6, eps / tol) * rho)
    floor = floor.clamp_min(torch.finfo(theta.dtype).tiny)
    rel_res = abs_res / floor
    gap = ritz_gaps(theta, abs_res)
    quad = torch.where(gap > 0, abs_res.square() / gap.clamp_min(torch.finfo(gap.dtype).tiny),
                       torch.full_like(gap, float("inf")))
    est = torch.minimum(abs_res, quad) / floor
    ok = (est <= EIGENVALUE_SAFETY * tol) & (rel_res <= tol**0.5)
    kk = min(k, m)
    idx = torch.arange(m - 1, m - 1 - kk, -1, device=theta.device)
    # the bound, for the requested pairs only: [top kk..., smallest]
    sel = torch.cat([idx, idx.new_zeros(1)]) if want_min else idx
    s_sel = s[:, :, sel]
    rounding = ((st.mismatch[:, :m, :m] @ s_sel).norm(dim=1)
                + (ROUNDING_FACTOR * m**0.5 * eps + st.product_error[:, None])
                * st.scale[:, None])
    bound = abs_res[:, sel] + rounding
    # relative to |theta|; an eigenvalue small beside rho is judged against a floor that asks
    # for no less than twice the rounding part (the floor at most rho / 10: beyond that, tol is
    # out of reach and said so)
    unit = (ROUNDING_FACTOR * m**0.5 * eps + st.product_error) / tol
    factor = (2 * unit).clamp(1e-6, 0.1)[:, None]
    floor_b = torch.maximum(theta.abs(), factor * rho).clamp_min(
        torch.finfo(theta.dtype).tiny)[:, sel]
    rel_bound, rel_round = bound / floor_b, rounding / floor_b
    top = torch.full((bsz, k), float("nan"), dtype=theta.dtype, device=theta.device)
    top[:, :kk] = theta[:, idx]
    top_bound = torch.full_like(top, float("nan"))
    top_bound[:, :kk] = bound[:, :kk]
    coeffs = torch.zeros(bsz, m, k, dtype=s.dtype, device=s.device)
    coeffs[:, :, :kk] = s[:, :, idx]
    residual = rel_res[:, idx].amax(dim=1)
    estimate = est[:, idx].amax(dim=1)
    ok_all = ok[:, idx].all(dim=1)
    smallest = torch.full((bsz,), float("nan"), dtype=theta.dtype, device=theta.device)
    smallest_bound = torch.full_like(smallest, float("nan"))
    if want_min:
        smallest, smallest_bound = theta[:, 0], bound[:, -1]
        residual = torch.maximum(residual, rel_res[:, 0])
        estimate = torch.maximum(estimate, est[:, 0])
        ok_all = ok_all & ok[:, 0]
    error_bound, worst_rounding = rel_bound.amax(dim=1), rel_round.amax(dim=1)
    # rounding alone over tol, and the residual already below it: more steps cannot help
    limited = ((rel_round > tol) & (abs_res[:, sel] <= rounding)).any(dim=1)
    if kk < k:  # fewer Ritz pairs than requested: not converged yet (a restart adds more)
        residual = torch.full_like(residual, float("inf"))
        estimate = torch.full_like(estimate, float("inf"))
        error_bound = torch.full_like(error_bound, float("inf"))
        ok_all = torch.zeros_like(ok_all)
        limited = torch.zeros_like(limited)
    return RitzPairs(top, smallest, residual, estimate, ok_all, coeffs, top_bound, smallest_bound,
                 error_bound, worst_rounding, error_bound <= tol, limited)

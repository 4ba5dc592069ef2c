"""Batched power iteration, the PyHessian method: kept for COMPARISON with :mod:`curvtools.lanczos`
(``bench/hessian_bench.py``, the tests of the wrong-eigenvalue trap)."""

from __future__ import annotations

import torch

from curvtools.lanczos import Matvec


def power_iteration_largest_magnitude(
    matvec: Matvec, v0: torch.Tensor, *, tol: float = 1e-3, max_iter: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched power iteration, the PyHessian method: for COMPARISON only.

    Returns ``(rayleigh [B] float64, iterations [B])``; an example stops when the Rayleigh quotient
    changes by at most ``tol`` relative. It converges to the eigenvalue of largest MAGNITUDE, which
    is not the largest algebraic one when the most negative eigenvalue dominates.
    """
    v = v0 / v0.norm(dim=1, keepdim=True)
    lam = torch.full((v0.shape[0],), float("nan"), dtype=torch.float64, device=v0.device)
    iters = torch.zeros(v0.shape[0], dtype=torch.long, device=v0.device)
    done = torch.zeros(v0.shape[0], dtype=torch.bool, device=v0.device)
    for i in range(max_iter):
        w = matvec(v)
        new = (w * v).sum(dim=1).to(torch.float64)
        stop = ~done & (new - lam).abs().le(tol * new.abs())
        lam = torch.where(done, lam, new)
        iters = torch.where(done, iters, torch.full_like(iters, i + 1))
        done = done | stop
        if bool(done.all()):
            break
        v = torch.where(done[:, None], v, w / w.norm(dim=1, keepdim=True))
    return lam, iters

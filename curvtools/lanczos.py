"""Batched Lanczos for the extreme eigenvalues of many symmetric matrices at once.

The matrices are given only through a batched matvec ``v [B, n] -> A v [B, n]`` (row i = A_i v_i),
so the same code runs on explicit matrices (tests) and on per-example input Hessians
(:mod:`curvtools.hvp`). Per example it returns the largest ALGEBRAIC eigenvalue (and the k
largest, and the smallest) -- not the largest in magnitude, which is what power iteration finds and
which for smooth nets is often the most negative eigenvalue.

Algorithm (per example, all examples in lock-step):

- Lanczos with full reorthogonalization (classical Gram-Schmidt applied twice against the whole
  basis, stored as [B, m, n], done with batched matmuls); the tridiagonal T is kept in float64.
- Breakdown: when the new residual norm beta_j <= sqrt(eps) * (running scale of |alpha|, beta), the
  Krylov space is (numerically) invariant -- for ReLU nets with cross-entropy this happens after at
  most ``classes`` steps, the input Hessian having rank <= classes - 1. Then beta_j is set to 0 in T
  and the next basis vector is a fresh random vector orthogonalized against the basis. T is then
  block-diagonal, every Ritz value is still a Ritz value of A on an orthonormal basis (so it lies
  inside A's spectrum: no spurious values, never NaN), and a Ritz pair of the exhausted block has
  residual exactly 0, i.e. it is exact and converges at the next check.
- Convergence is checked on a fixed schedule -- every ``check_every`` iterations and at the last one
  -- because a check solves the small tridiagonal problems (``torch.linalg.eigh`` on [B, m, m]) and
  reads one flag on the host. Between checks there is no host synchronization.
- Ritz residual of a pair (theta, s): ``|beta_m * s_m|`` (= ||A y - theta y|| for the Ritz vector
  y), divided by ``max(|theta|, 1e-6 * rho)`` with rho the largest |Ritz value| of that example;
  the floor keeps an exactly-zero eigenvalue (ReLU nets) from dividing by zero. An example has
  converged when every requested pair (the k largest, and the smallest if asked) has relative
  residual <= tol. At that check its results are frozen: later iterations (still computed in
  the batch) do not change them. ``iterations`` is the Krylov dimension at the freezing check, so
  it is a multiple of ``check_every`` unless the iteration cap (at most n) was hit.
- Multiplicity: a single start vector sees each distinct eigenvalue once, so the "top k" are the k
  largest DISTINCT eigenvalues unless a breakdown restart happens to reveal a repeated one.

Example::

    >>> A = torch.randn(4, 50, 50, dtype=torch.float64); A = A + A.transpose(1, 2)
    >>> res = batched_lanczos(lambda v: (A @ v[..., None])[..., 0], torch.randn(4, 50,
    ...                       dtype=torch.float64), k=2, tol=1e-8, max_iter=50)
    >>> res.top       # [4, 2], descending; equals torch.linalg.eigvalsh(A)[:, [-1, -2]]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from curvtools.errors import BadInput

Matvec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LanczosResult:
    """Per-example results of :func:`batched_lanczos`; B examples, k requested top eigenvalues.

    ``top`` [B, k] float64, descending (NaN where the Krylov space had fewer than k dimensions);
    ``smallest`` [B] float64 (NaN if not requested); ``iterations`` [B] int64 (matvecs used until
    the freezing check); ``residual`` [B] float64 (largest relative Ritz residual among the
    requested pairs); ``converged`` [B] bool; ``top_vectors`` [B, k, n] (unit Ritz vectors, only
    with ``return_vectors=True``); ``matvecs``: number of batched matvec calls made.
    """

    top: torch.Tensor
    smallest: torch.Tensor
    iterations: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    top_vectors: torch.Tensor | None
    matvecs: int

    @property
    def largest(self) -> torch.Tensor:
        """The largest algebraic eigenvalue per example, [B]."""
        return self.top[:, 0]


def _orthogonalize(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Remove from w [B, n] its components on the orthonormal rows of basis [B, j, n], twice."""
    for _ in range(2):
        coeff = torch.bmm(basis, w.unsqueeze(2))
        w = w - torch.bmm(basis.transpose(1, 2), coeff).squeeze(2)
    return w


def _tridiagonal(alpha: torch.Tensor, beta: torch.Tensor, m: int) -> torch.Tensor:
    """[B, m, m] symmetric tridiagonal matrix from alpha [B, >=m] and beta [B, >=m-1]."""
    t = torch.diag_embed(alpha[:, :m])
    if m > 1:
        off = torch.diag_embed(beta[:, : m - 1], offset=1)
        t = t + off + off.transpose(1, 2)
    return t


@dataclass
class _Ritz:
    top: torch.Tensor  # [B, k]
    smallest: torch.Tensor  # [B]
    residual: torch.Tensor  # [B]
    top_coeffs: torch.Tensor  # [B, m, k] eigenvectors of T for the top pairs


def _ritz(alpha, beta, m: int, k: int, want_min: bool) -> _Ritz:
    """Ritz values and relative residuals from the first m Lanczos steps."""
    theta, s = torch.linalg.eigh(_tridiagonal(alpha, beta, m))  # ascending
    bsz = theta.shape[0]
    rho = theta.abs().amax(dim=1, keepdim=True)
    abs_res = (beta[:, m - 1 : m] * s[:, m - 1, :]).abs()  # [B, m]
    floor = torch.maximum(theta.abs(), 1e-6 * rho).clamp_min(torch.finfo(theta.dtype).tiny)
    rel_res = abs_res / floor
    kk = min(k, m)
    idx = torch.arange(m - 1, m - 1 - kk, -1, device=theta.device)
    top = torch.full((bsz, k), float("nan"), dtype=theta.dtype, device=theta.device)
    top[:, :kk] = theta[:, idx]
    coeffs = torch.zeros(bsz, m, k, dtype=s.dtype, device=s.device)
    coeffs[:, :, :kk] = s[:, :, idx]
    residual = rel_res[:, idx].amax(dim=1)
    if kk < k:  # fewer Ritz pairs than requested: not converged yet (a restart adds more)
        residual = torch.full_like(residual, float("inf"))
    smallest = torch.full((bsz,), float("nan"), dtype=theta.dtype, device=theta.device)
    if want_min:
        smallest = theta[:, 0]
        residual = torch.maximum(residual, rel_res[:, 0])
    return _Ritz(top, smallest, residual, coeffs)


def _check_options(v0: torch.Tensor, k: int, tol: float, max_iter: int, check_every: int,
                   which: tuple[str, ...]) -> None:
    if v0.ndim != 2 or v0.shape[1] < 1:
        raise BadInput(f"start vectors must be [B, n]; got {tuple(v0.shape)}")
    if not v0.is_floating_point():
        raise BadInput(f"start vectors must be floating point; got {v0.dtype}")
    if k < 1:
        raise BadInput(f"k={k} is not allowed: need k >= 1")
    if not tol > 0:
        raise BadInput(f"tol={tol} is not allowed: need tol > 0")
    if max_iter < 1:
        raise BadInput(f"max_iter={max_iter} is not allowed: need max_iter >= 1")
    if check_every < 1:
        raise BadInput(f"check_every={check_every} is not allowed: need check_every >= 1")
    bad = [w for w in which if w not in ("max", "min")]
    if bad or "max" not in which:
        raise BadInput(f"which={which!r} is not allowed: use ('max',) or ('max', 'min')")


def batched_lanczos(
    matvec: Matvec,
    v0: torch.Tensor,
    *,
    k: int = 1,
    which: tuple[str, ...] = ("max", "min"),
    tol: float = 1e-3,
    max_iter: int = 100,
    check_every: int = 5,
    return_vectors: bool = False,
    generator: torch.Generator | None = None,
) -> LanczosResult:
    """Extreme eigenvalues of B symmetric n x n matrices given by a batched matvec.

    ``matvec``: [B, n] -> [B, n], row i = A_i v_i. ``v0``: [B, n] start vectors (any nonzero;
    random is best); their dtype is the working dtype of the basis. ``which``: ``("max",)`` or
    ``("max", "min")``. ``k``: how many of the largest eigenvalues. ``max_iter`` is capped at n
    (then the Krylov space is the whole space and the Ritz values are exact). ``generator`` seeds
    the restart vectors drawn after a breakdown. See the module docstring for the method.
    """
    _check_options(v0, k, tol, max_iter, check_every, which)
    bsz, n = v0.shape
    dev, work = v0.device, v0.dtype
    f64 = torch.float64
    m_cap = min(max_iter, n)
    want_min = "min" in which
    breakdown_rel = torch.finfo(work).eps ** 0.5

    basis = torch.zeros(bsz, m_cap, n, dtype=work, device=dev)
    alpha = torch.zeros(bsz, m_cap, dtype=f64, device=dev)
    beta = torch.zeros(bsz, m_cap, dtype=f64, device=dev)
    scale = torch.zeros(bsz, dtype=f64, device=dev)

    out_top = torch.full((bsz, k), float("nan"), dtype=f64, device=dev)
    out_min = torch.full((bsz,), float("nan"), dtype=f64, device=dev)
    out_iter = torch.zeros(bsz, dtype=torch.long, device=dev)
    out_res = torch.full((bsz,), float("inf"), dtype=f64, device=dev)
    done = torch.zeros(bsz, dtype=torch.bool, device=dev)
    out_conv = torch.zeros(bsz, dtype=torch.bool, device=dev)
    out_vec = torch.zeros(bsz, k, n, dtype=work, device=dev) if return_vectors else None

    q = v0 / v0.norm(dim=1, keepdim=True).clamp_min(torch.finfo(work).tiny)
    matvecs = 0
    for j in range(m_cap):
        basis[:, j] = q
        w = matvec(q).to(work)
        matvecs += 1
        a = (w * q).sum(dim=1)
        alpha[:, j] = a.to(f64)
        w = _orthogonalize(w, basis[:, : j + 1])
        b = w.norm(dim=1).to(f64)
        scale = torch.maximum(scale, torch.maximum(a.abs().to(f64), beta[:, j - 1] if j else scale))
        broke = b <= breakdown_rel * scale
        beta[:, j] = torch.where(broke, torch.zeros_like(b), b)
        if j + 1 < m_cap:
            fresh = torch.randn(bsz, n, dtype=work, device=dev, generator=generator)
            fresh = _orthogonalize(fresh, basis[:, : j + 1])
            fresh = fresh / fresh.norm(dim=1, keepdim=True).clamp_min(torch.finfo(work).tiny)
            cont = w / b.to(work).clamp_min(torch.finfo(work).tiny)[:, None]
            q = torch.where(broke[:, None], fresh, cont)

        m = j + 1
        if m % check_every and m != m_cap:
            continue
        ritz = _ritz(alpha, beta, m, k, want_min)
        last = m == m_cap
        freeze = ~done & ((ritz.residual <= tol) | last)
        out_top = torch.where(freeze[:, None], ritz.top, out_top)
        out_min = torch.where(freeze, ritz.smallest, out_min)
        out_res = torch.where(freeze, ritz.residual, out_res)
        out_iter = torch.where(freeze, torch.full_like(out_iter, m), out_iter)
        if out_vec is not None:
            vecs = torch.bmm(ritz.top_coeffs.to(work).transpose(1, 2), basis[:, :m])  # [B, k, n]
            out_vec = torch.where(freeze[:, None, None], vecs, out_vec)
        out_conv = torch.where(freeze, ritz.residual <= tol, out_conv)
        done = done | freeze
        if bool(done.all()):  # the one host sync, once per check
            break
    return LanczosResult(out_top, out_min, out_iter, out_res, out_conv, out_vec, matvecs)


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

"""Batched Lanczos for the extreme eigenvalues of many symmetric matrices at once.

The matrices are given only through a batched matvec ``v [B, n] -> A v [B, n]`` (row i = A_i v_i),
so the same code runs on explicit matrices (tests) and on per-example input Hessians
(:mod:`curvtools.hvp`). Per example it returns the largest ALGEBRAIC eigenvalue (and the k
largest, and the smallest) -- not the largest in magnitude, which is what power iteration finds and
which for smooth nets is often the most negative eigenvalue.

Algorithm (per example, all examples in lock-step):

- Lanczos with full reorthogonalization (classical Gram-Schmidt applied twice against the whole
  basis, stored as [B, m, n], done with batched matmuls); the tridiagonal T is kept in float64.
- Breakdown: when the new residual norm beta_j <= 8 sqrt(n) eps * (running scale of |alpha|,
  beta), i.e. at the rounding level of the reorthogonalization, the Krylov space is (numerically)
  invariant -- for ReLU nets with cross-entropy this happens after at most ``classes`` steps, the
  input Hessian having rank <= classes - 1. Then beta_j is set to 0 in T and the next basis vector
  is a fresh random vector orthogonalized against the basis. T is then block-diagonal, every Ritz
  value is still a Ritz value of A on an orthonormal basis (so it lies inside A's spectrum: no
  spurious values, never NaN), and a Ritz pair of the exhausted block has a residual at the
  rounding level (the discarded remainder's norm, which the residual counts: see ``_ritz``).
  The fresh vectors are drawn for the whole original batch every step and then indexed, so the
  random stream, and hence every result, does not depend on compaction.
- Convergence is checked on a fixed schedule -- every ``check_every`` iterations and at the last one
  -- because a check solves the small tridiagonal problems (``torch.linalg.eigh`` on [B, m, m]) and
  reads the convergence mask on the host. Between checks there is no host synchronization.
- Compaction (``compact=True``): at each check the examples that converged are frozen AND dropped
  from the active batch, so later iterations (matvecs, reorthogonalization) run on the unconverged
  rows only. The matvec learns which rows through the restriction protocol (below).

Stop rules (``stop``), for a Ritz pair (theta, s) of T_m, with ``r = |beta_m * s_m|`` (=
``||A y - theta y||`` for the Ritz vector y) and the relative floor
``phi = max(|theta|, max(1e-6, eps / tol) * rho)`` (rho: the largest |Ritz value| of that example;
eps: the working dtype's machine epsilon; the floor keeps an exactly-zero eigenvalue of a ReLU net
from dividing by zero, and asks no eigenvalue for a finer absolute accuracy than about eps * rho,
the rounding level of the products: it matters in float32 only):

- ``"residual"``: ``r <= tol * phi``. Rigorous: some eigenvalue of A lies within r of theta. It
  stops late, though: by then the eigenvalue is typically accurate to about tol^2.
- ``"eigenvalue"`` (the default): ``min(r, r^2 / g) <= tol * phi / 2`` and
  ``r <= sqrt(tol) * phi``. ``r^2 / gap`` is the standard a-posteriori bound on
  ``|lambda - theta|`` (Parlett, The Symmetric Eigenvalue Problem, Thm 11.7.1; Kato-Temple), with
  g, a GUARDED Ritz gap, standing in for the unknown true gap: the distance to the adjacent Ritz
  values of the same example, each moved towards theta by its own residual (the next lower one
  for the largest, the next higher one for the smallest, the nearer of both for an inner pair of
  the top k; 0 -- i.e. the residual -- when there is no neighbour or the neighbour's residual
  covers the gap).
  Caveat: by interlacing the second Ritz value lies BELOW the second eigenvalue, so the Ritz gap
  OVERESTIMATES the true gap, most of all early on, and ``r^2 / g`` can underestimate the error.
  What guards it: (1) the neighbour's residual is subtracted from the gap (an unconverged
  neighbour shrinks g, which pushes the estimate back to r); (2) the factor 1/2: on the trained
  nets measured the true error was at most 1.2x the estimate; (3) ``r <= sqrt(tol) * phi``:
  the true error is then at most ``tol * phi * (phi / true gap)``, bounded for any spectrum; (4)
  for one dominant eigenvalue (gap ~ |lambda|, the common case for trained nets) the estimate is
  close to exact. It is NOT rigorous: with tol 1e-2 on a tiny GELU net it returned a
  lambda_min 1.5e-2 off, its true gap (3% of |lambda_min|) hidden between the two lowest Ritz
  values at the stopping check; an eigenvalue the Krylov space has not seen yet can fool any rule
  (residual rule included). Use ``stop="residual"`` when a guarantee matters (and for accurate
  eigenVECTORS, whose error follows r, not r^2), or a smaller tol. Requiring the Ritz value to
  also agree with the previous check was measured and dropped: it cost more products than the
  residual rule.

An example has converged when every requested pair (the k largest, and the smallest if asked)
meets the rule. ``error_estimate`` reports ``min(r, r^2 / g) / phi`` (the largest over the
requested pairs) for either rule, beside the relative ``residual`` ``r / phi``. ``iterations`` is
the Krylov dimension at the freezing check, so it is a multiple of ``check_every`` unless the
iteration cap (at most n) was hit.

Restriction protocol (what compaction needs from the matvec): if ``matvec`` has a method
``restrict(rows)`` -- ``rows`` a LongTensor of ORIGINAL example indices, increasing -- it must
return a batched matvec ``[len(rows), n] -> [len(rows), n]`` for those examples (which may itself
be restrictable; it is always called with indices into the original batch). A plain callable
without ``restrict`` keeps working: it is always called with the full [B, n] batch (the rows of
frozen examples are zero), so only the Lanczos bookkeeping shrinks. :class:`BatchedMatrix` wraps
explicit [B, n, n] matrices this way; :class:`curvtools.hvp.InputHessian` restricts itself by
indexing its inputs, labels and margin runner-ups.

Multiplicity: a single start vector sees each distinct eigenvalue once, so the "top k" are the k
largest DISTINCT eigenvalues unless a breakdown restart happens to reveal a repeated one.

Example::

    >>> A = torch.randn(4, 50, 50, dtype=torch.float64); A = A + A.transpose(1, 2)
    >>> res = batched_lanczos(BatchedMatrix(A), torch.randn(4, 50, dtype=torch.float64), k=2,
    ...                       tol=1e-8, max_iter=50)
    >>> res.top       # [4, 2], descending; equals torch.linalg.eigvalsh(A)[:, [-1, -2]]
    >>> res.products  # matrix-vector products actually computed (sum of active batch sizes)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from curvtools.errors import BadInput

Matvec = Callable[[torch.Tensor], torch.Tensor]
STOP_RULES = ("residual", "eigenvalue")
# The "eigenvalue" rule stops at estimate <= EIGENVALUE_SAFETY * tol: on trained nets the true
# error was measured up to 1.1x the estimate (the Ritz gap overestimates the true gap).
EIGENVALUE_SAFETY = 0.5


@dataclass
class LanczosResult:
    """Per-example results of :func:`batched_lanczos`; B examples, k requested top eigenvalues.

    ``top`` [B, k] float64, descending (NaN where the Krylov space had fewer than k dimensions);
    ``smallest`` [B] float64 (NaN if not requested); ``iterations`` [B] int64 (matvecs used until
    the freezing check); ``residual`` [B] float64 (largest relative Ritz residual among the
    requested pairs); ``error_estimate`` [B] float64 (largest relative a-posteriori eigenvalue
    error estimate ``min(r, r^2/gap) / |theta|`` among the requested pairs); ``converged`` [B]
    bool; ``top_vectors`` [B, k, n] (unit Ritz vectors, only with ``return_vectors=True``);
    ``matvecs``: number of batched matvec calls made; ``products``: single-example products
    computed (the sum over calls of the rows passed to the matvec).
    """

    top: torch.Tensor
    smallest: torch.Tensor
    iterations: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    top_vectors: torch.Tensor | None
    matvecs: int
    error_estimate: torch.Tensor | None = None
    products: int = 0

    @property
    def largest(self) -> torch.Tensor:
        """The largest algebraic eigenvalue per example, [B]."""
        return self.top[:, 0]


class BatchedMatrix:
    """Explicit symmetric matrices ``a`` [B, n, n] as a restrictable batched matvec.

    ``BatchedMatrix(a)(v)`` = ``a @ v`` row by row; ``.restrict(rows)`` gives the operator of the
    examples ``rows`` (indices into the original batch).
    """

    def __init__(self, a: torch.Tensor):
        self.a = a

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.a, v.unsqueeze(2)).squeeze(2)

    def restrict(self, rows: torch.Tensor) -> BatchedMatrix:
        return BatchedMatrix(self.a[rows])


class _Active:
    """The matvec of the rows still iterating; counts the single-example products computed."""

    def __init__(self, matvec: Matvec, bsz: int):
        self.root, self.op, self.bsz = matvec, matvec, bsz
        self.restrictable = hasattr(matvec, "restrict")
        self.calls = self.products = 0

    def set_rows(self, rows: torch.Tensor) -> None:
        self.rows = rows
        if self.restrictable:
            self.op = self.root if rows.numel() == self.bsz else self.root.restrict(rows)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.restrictable or q.shape[0] == self.bsz:
            self.products += q.shape[0]
            return self.op(q)
        full = q.new_zeros(self.bsz, q.shape[1])  # plain matvec: always the whole batch
        full[self.rows] = q
        self.products += self.bsz
        return self.op(full)[self.rows]


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
    residual: torch.Tensor  # [B] relative residual, max over requested pairs
    estimate: torch.Tensor  # [B] relative eigenvalue-error estimate, max over requested pairs
    ok_eigenvalue: torch.Tensor  # [B] bool, the "eigenvalue" rule holds for every requested pair
    top_coeffs: torch.Tensor  # [B, m, k] eigenvectors of T for the top pairs


def _ritz_gaps(theta: torch.Tensor, abs_res: torch.Tensor) -> torch.Tensor:
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


def _ritz(alpha, beta, dropped, m: int, k: int, want_min: bool, tol: float,
          eps: float) -> _Ritz:
    """Ritz values, relative residuals and eigenvalue-error estimates from m Lanczos steps.

    ``dropped`` [B, >=m]: the norm of the remainder ``w_j`` a breakdown discarded at step j (0
    where none). With breakdowns, ``A Q = Q (T + E) + sum_j P w_j e_j^T + w_m e_m^T``: ``P``
    projects out of the basis, and ``E`` holds the couplings ``w_j . q_k`` (k > j) of each
    remainder to the later basis vectors, which T leaves out. The residual used is
    ``|beta_m s_m| + sum_j ||w_j|| |s_j|``; it leaves out only ``||E s|| <= sqrt(2) sum_j
    ||w_j||``, and every ``||w_j||`` is below the breakdown threshold (8 sqrt(n) eps times the
    scale of T): rounding level, like the error of the products themselves.
    """
    theta, s = torch.linalg.eigh(_tridiagonal(alpha, beta, m))  # ascending
    bsz = theta.shape[0]
    rho = theta.abs().amax(dim=1, keepdim=True)
    lost = dropped[:, :m].clone()
    lost[:, m - 1] += beta[:, m - 1]
    abs_res = torch.einsum("bj,bji->bi", lost, s.abs())  # [B, m]
    floor = torch.maximum(theta.abs(), max(1e-6, eps / tol) * rho)
    floor = floor.clamp_min(torch.finfo(theta.dtype).tiny)
    rel_res = abs_res / floor
    gap = _ritz_gaps(theta, abs_res)
    quad = torch.where(gap > 0, abs_res.square() / gap.clamp_min(torch.finfo(gap.dtype).tiny),
                       torch.full_like(gap, float("inf")))
    est = torch.minimum(abs_res, quad) / floor
    ok = (est <= EIGENVALUE_SAFETY * tol) & (rel_res <= tol**0.5)
    kk = min(k, m)
    idx = torch.arange(m - 1, m - 1 - kk, -1, device=theta.device)
    top = torch.full((bsz, k), float("nan"), dtype=theta.dtype, device=theta.device)
    top[:, :kk] = theta[:, idx]
    coeffs = torch.zeros(bsz, m, k, dtype=s.dtype, device=s.device)
    coeffs[:, :, :kk] = s[:, :, idx]
    residual = rel_res[:, idx].amax(dim=1)
    estimate = est[:, idx].amax(dim=1)
    ok_all = ok[:, idx].all(dim=1)
    if kk < k:  # fewer Ritz pairs than requested: not converged yet (a restart adds more)
        residual = torch.full_like(residual, float("inf"))
        estimate = torch.full_like(estimate, float("inf"))
        ok_all = torch.zeros_like(ok_all)
    smallest = torch.full((bsz,), float("nan"), dtype=theta.dtype, device=theta.device)
    if want_min:
        smallest = theta[:, 0]
        residual = torch.maximum(residual, rel_res[:, 0])
        estimate = torch.maximum(estimate, est[:, 0])
        ok_all = ok_all & ok[:, 0]
    return _Ritz(top, smallest, residual, estimate, ok_all, coeffs)


def _check_options(v0: torch.Tensor, k: int, tol: float, max_iter: int, check_every: int,
                   which: tuple[str, ...], stop: str) -> None:
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
    if stop not in STOP_RULES:
        raise BadInput(f"stop={stop!r} is not allowed: use {' or '.join(STOP_RULES)}")


class _Outputs:
    """Per-example results over the ORIGINAL batch, written when an example freezes."""

    def __init__(self, bsz: int, k: int, n: int, work, dev, vectors: bool):
        f64 = torch.float64
        self.top = torch.full((bsz, k), float("nan"), dtype=f64, device=dev)
        self.smallest = torch.full((bsz,), float("nan"), dtype=f64, device=dev)
        self.iterations = torch.zeros(bsz, dtype=torch.long, device=dev)
        self.residual = torch.full((bsz,), float("inf"), dtype=f64, device=dev)
        self.estimate = torch.full((bsz,), float("inf"), dtype=f64, device=dev)
        self.converged = torch.zeros(bsz, dtype=torch.bool, device=dev)
        self.vectors = torch.zeros(bsz, k, n, dtype=work, device=dev) if vectors else None

    def write(self, rows, freeze, ritz: _Ritz, ok, m: int, basis) -> None:
        """Copy the Ritz data of the active rows where ``freeze`` into the original positions."""
        def put(out, new):
            mask = freeze.view(-1, *([1] * (new.ndim - 1)))
            out[rows] = torch.where(mask, new, out[rows])

        put(self.top, ritz.top)
        put(self.smallest, ritz.smallest)
        put(self.residual, ritz.residual)
        put(self.estimate, ritz.estimate)
        put(self.iterations, torch.full_like(rows, m))
        put(self.converged, ok)
        if self.vectors is not None:
            put(self.vectors, torch.bmm(ritz.top_coeffs.to(basis.dtype).transpose(1, 2),
                                        basis[:, :m]))


def batched_lanczos(
    matvec: Matvec,
    v0: torch.Tensor,
    *,
    k: int = 1,
    which: tuple[str, ...] = ("max", "min"),
    tol: float = 1e-3,
    max_iter: int = 100,
    check_every: int = 2,
    stop: str = "eigenvalue",
    compact: bool = True,
    return_vectors: bool = False,
    generator: torch.Generator | None = None,
) -> LanczosResult:
    """Extreme eigenvalues of B symmetric n x n matrices given by a batched matvec.

    ``matvec``: [B, n] -> [B, n], row i = A_i v_i; with a ``restrict(rows)`` method it is told
    which examples are still active (module docstring). ``v0``: [B, n] start vectors (any nonzero;
    random is best); their dtype is the working dtype of the basis. ``which``: ``("max",)`` or
    ``("max", "min")``. ``k``: how many of the largest eigenvalues. ``tol``: relative accuracy;
    ``stop``: ``"eigenvalue"`` (estimated eigenvalue error <= tol) or ``"residual"`` (Ritz
    residual <= tol, rigorous, slower). ``max_iter`` is capped at n (then the Krylov space is the
    whole space and the Ritz values are exact). ``compact``: drop converged examples from the
    active batch at each check. ``generator`` seeds the restart vectors drawn after a breakdown.
    """
    _check_options(v0, k, tol, max_iter, check_every, which, stop)
    bsz, n = v0.shape
    dev, work = v0.device, v0.dtype
    f64 = torch.float64
    m_cap = min(max_iter, n)
    want_min = "min" in which
    # A remainder this small is rounding noise of the reorthogonalization: the Krylov space is
    # invariant. (Larger thresholds, e.g. sqrt(eps), also restart where a dominant eigenvalue
    # dwarfs the rest of the spectrum; the residual accounts for what a restart drops anyway.)
    breakdown_rel = 8 * torch.finfo(work).eps * n**0.5
    tiny = torch.finfo(work).tiny

    rows = torch.arange(bsz, device=dev)
    op = _Active(matvec, bsz)
    op.set_rows(rows)
    basis = torch.zeros(bsz, m_cap, n, dtype=work, device=dev)
    alpha = torch.zeros(bsz, m_cap, dtype=f64, device=dev)
    beta = torch.zeros(bsz, m_cap, dtype=f64, device=dev)
    dropped = torch.zeros(bsz, m_cap, dtype=f64, device=dev)  # remainders breakdowns discarded
    scale = torch.zeros(bsz, dtype=f64, device=dev)
    done = torch.zeros(bsz, dtype=torch.bool, device=dev)
    out = _Outputs(bsz, k, n, work, dev, return_vectors)

    q = v0 / v0.norm(dim=1, keepdim=True).clamp_min(tiny)
    for j in range(m_cap):
        basis[:, j] = q
        w = op(q).to(work)
        a = (w * q).sum(dim=1)
        alpha[:, j] = a.to(f64)
        w = _orthogonalize(w, basis[:, : j + 1])
        b = w.norm(dim=1).to(f64)
        scale = torch.maximum(scale, torch.maximum(a.abs().to(f64), beta[:, j - 1] if j else scale))
        broke = b <= breakdown_rel * scale
        beta[:, j] = torch.where(broke, torch.zeros_like(b), b)
        dropped[:, j] = torch.where(broke, b, torch.zeros_like(b))
        if j + 1 < m_cap:
            # Drawn for the whole original batch, then indexed: compaction-independent stream.
            fresh = torch.randn(bsz, n, dtype=work, device=dev, generator=generator)[rows]
            fresh = _orthogonalize(fresh, basis[:, : j + 1])
            fresh = fresh / fresh.norm(dim=1, keepdim=True).clamp_min(tiny)
            cont = w / b.to(work).clamp_min(tiny)[:, None]
            q = torch.where(broke[:, None], fresh, cont)

        m = j + 1
        if m % check_every and m != m_cap:
            continue
        ritz = _ritz(alpha, beta, dropped, m, k, want_min, tol, torch.finfo(work).eps)
        ok = ritz.residual <= tol if stop == "residual" else ritz.ok_eigenvalue
        freeze = ~done & (ok | (m == m_cap))
        out.write(rows, freeze, ritz, ok, m, basis)
        done = done | freeze
        if not compact:
            if bool(done.all()):  # the one host sync, once per check
                break
            continue
        keep = (~done).nonzero().squeeze(1)  # the one host sync: reads the active mask
        if keep.numel() == 0:
            break
        if keep.numel() < rows.numel():
            rows, basis, alpha, beta = rows[keep], basis[keep], alpha[keep], beta[keep]
            dropped = dropped[keep]
            scale, q, done = scale[keep], q[keep], done[keep]
            op.set_rows(rows)
    return LanczosResult(out.top, out.smallest, out.iterations, out.residual, out.converged,
                         out.vectors, op.calls, out.estimate, op.products)


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

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
  beta), the rounding level of the reorthogonalization, the Krylov space is (numerically)
  invariant (for ReLU nets with cross-entropy after at most ``classes`` steps: the input Hessian
  has rank <= classes - 1). Then beta_j is set to 0 in T, the discarded remainder's norm is kept
  for the residual, and the next basis vector is a fresh random vector orthogonalized against the
  basis: T is block-diagonal, every Ritz value still lies inside A's spectrum, never NaN. The
  fresh vectors are drawn for the whole original batch every step and then indexed, so the
  random stream, and hence every result, does not depend on compaction.
- Convergence is checked every ``check_every`` iterations and at the last one (a check solves
  the small tridiagonal problems and reads a mask on the host: the only synchronization).
- Compaction (``compact=True``): at each check the frozen examples are dropped from the active
  batch, so later matvecs and reorthogonalization run on the others only (restriction protocol).

Error bound (reported for every requested pair, whatever the stop rule). Full
reorthogonalization records what it removes: ``A q_j = Q c_j + w_j`` exactly, c_j the
coefficients on the basis and w_j the remainder (``b_j q_{j+1}``, or discarded at a breakdown).
So for a Ritz pair (theta, s) of T_m and y = Q s,
``A y - theta y = Q M s + sum_{j broke} w_j s_j + b_m s_m q_{m+1}``, with M the coefficients
actually removed minus their values in T (upper triangular: rounding, the couplings of a
discarded remainder to later vectors, any asymmetry of the computed products). Hence::

    ||A y - theta y|| <= r + ||M s|| + 2 sqrt(m) eps scale
    r = |b_m s_m| + sum_{j broke} ||w_j|| |s_j|

(the last term: the rounding of that bookkeeping and of M itself; scale: the running max of
|alpha|, beta). For a symmetric A the left side bounds the distance from theta to SOME
eigenvalue (the residual theorem): ``bound`` = the right side plus ``product_error * scale``
(the caller's estimate of the products' own relative error; 0 for exact matrices). For the
extremes it is one-sided: ``lambda_max >= theta_max`` always (a Rayleigh quotient),
``lambda_max <= theta_max + bound`` unless the Krylov space missed a larger eigenvalue, which
no a-posteriori test can see; :mod:`curvtools.krylov_bounds` bounds its probability
(``largest_upper``, ``smallest_lower``: valid with probability ``1 - miss_probability``).
Relative values are taken against the floor ``phi = max(|theta|, max(1e-6, c / tol) * rho)``
(rho: the largest |Ritz value| of that example; c = eps, the working dtype's machine epsilon,
for the estimate and r; for the bound, twice its rounding part, ``c / tol`` capped at 0.1; the
floor keeps an exactly-zero eigenvalue of a ReLU net from dividing by zero).

``converged`` means ``bound <= tol * phi`` for every requested pair (the k largest, and the
smallest if asked), under either stop rule: a converged example's value is proven within tol of
an eigenvalue. Stop rules (``stop``), when an example is frozen:

- ``"residual"`` (the default): when it has converged, or when it cannot (``limited``: the
  rounding part, all but r, alone exceeds tol and r is already below it -- more products cannot
  help; flagged, not converged), or at the iteration cap (not converged).
- ``"eigenvalue"``: the former default, an ESTIMATE: ``min(r, r^2 / g) <= tol * phi / 2`` and
  ``r <= sqrt(tol) * phi``, g the Ritz gap to the neighbouring Ritz value moved towards theta by
  its residual. ``r^2 / g`` is Kato-Temple's bound only if g is a lower bound of the true gap,
  which Lanczos cannot certify (the Ritz gap overestimates it, most of all early on). Kept for
  comparison (``bench/hessian_bench.py``) and for ``harness train --hessian-every``'s logged
  batch means; an example it freezes before its bound reaches tol is ``converged=False``.

``error_bound`` (relative, the largest over the requested pairs), ``error_estimate`` (the
estimate above, relative) and ``residual`` (r / phi) are reported for both rules. ``iterations``
is the Krylov dimension at the freezing check, a multiple of ``check_every`` unless the iteration
cap (at most n) was hit.

Restriction protocol (what compaction needs from the matvec): a ``restrict(rows)`` method
(``rows``: increasing ORIGINAL example indices) returning the batched matvec of those examples
(itself restrictable, always called with original indices). A plain callable keeps working: it
is called with the full [B, n] batch (frozen rows zero). :class:`BatchedMatrix` wraps explicit
matrices this way; :class:`curvtools.hvp.InputHessian` restricts itself by indexing its inputs.

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
from curvtools.krylov_bounds import polynomial_upper_bounds
from curvtools.ritz import Relation, RitzPairs, ritz_pairs

Matvec = Callable[[torch.Tensor], torch.Tensor]
STOP_RULES = ("residual", "eigenvalue")
MISS_PROBABILITY = 1e-2


@dataclass
class LanczosResult:
    """Per-example results of :func:`batched_lanczos`; B examples, k requested top eigenvalues.

    ``top`` [B, k] float64 descending (NaN where the Krylov space had fewer than k dimensions),
    ``smallest`` [B] (NaN if not requested); ``top_bound`` [B, k], ``smallest_bound`` [B]:
    absolute distance bounds to the nearest eigenvalue (module docstring); ``error_bound`` [B]:
    the largest relative bound of the requested pairs; ``converged``: ``error_bound <= tol``;
    ``limited``: frozen because the rounding part alone (``rounding``, relative) exceeds tol;
    ``largest_upper`` / ``smallest_lower`` [B]: bounds on lambda_max / lambda_min holding with
    probability ``1 - miss_probability`` over the random start; ``iterations`` [B] (matvecs until
    the freezing check); ``residual`` (relative r) and ``error_estimate`` (relative
    ``min(r, r^2/gap)``, not a bound), the largest over the requested pairs; ``top_vectors`` [B,
    k, n] (``return_vectors=True``); ``matvecs``: batched calls; ``products``: single-example
    products computed.
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
    top_bound: torch.Tensor | None = None
    smallest_bound: torch.Tensor | None = None
    error_bound: torch.Tensor | None = None
    rounding: torch.Tensor | None = None
    limited: torch.Tensor | None = None
    largest_upper: torch.Tensor | None = None
    smallest_lower: torch.Tensor | None = None

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
    """The matvec of the rows still iterating; counts the single-example products computed.

    The operator is restricted to the active rows once they are at most ``restrict_at`` of the
    rows it holds (1.0: at every change); until then frozen rows ride along as zeros (a
    restriction can cost a product itself: the rev-rev gradient graph is rebuilt)."""

    def __init__(self, matvec: Matvec, bsz: int, restrict_at: float = 1.0):
        self.root, self.op, self.bsz = matvec, matvec, bsz
        self.restrictable, self.restrict_at = hasattr(matvec, "restrict"), restrict_at
        self.held: torch.Tensor | None = None  # original rows the operator holds (None: all)
        self.calls = self.products = 0

    def set_rows(self, rows: torch.Tensor) -> None:
        self.rows = rows
        held = self.bsz if self.held is None else self.held.numel()
        if self.restrictable and rows.numel() < held and rows.numel() <= self.restrict_at * held:
            self.op, self.held = self.root.restrict(rows), rows
        self.pos = rows if self.held is None else torch.searchsorted(self.held, rows)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        width = self.bsz if self.held is None else self.held.numel()
        self.products += width
        if q.shape[0] == width:
            return self.op(q)
        full = q.new_zeros(width, q.shape[1])  # frozen rows as zeros
        full[self.pos] = q
        return self.op(full)[self.pos]


def _take_columns(basis: torch.Tensor, keep: torch.Tensor, m: int) -> torch.Tensor:
    """``basis[keep]`` copying only the m columns written so far (the rest is written before
    it is read)."""
    out = basis.new_empty((keep.numel(), *basis.shape[1:]))
    out[:, :m] = basis[keep, :m]
    return out


def _orthogonalize(w: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove from w [B, n] its components on the orthonormal rows of basis [B, j, n], twice.
    Returns the remainder and the coefficients removed ([B, j], both passes summed)."""
    removed = None
    for _ in range(2):
        coeff = torch.bmm(basis, w.unsqueeze(2))
        w = w - torch.bmm(basis.transpose(1, 2), coeff).squeeze(2)
        removed = coeff if removed is None else removed + coeff
    return w, removed.squeeze(2)


def _check_options(v0: torch.Tensor, k: int, tol: float, max_iter: int, check_every: int,
                   which: tuple[str, ...], stop: str, miss_probability: float,
                   compact: bool | float) -> None:
    if not (isinstance(compact, bool) or (isinstance(compact, int | float)
                                          and 0 < compact <= 1)):
        raise BadInput(f"compact={compact!r} is not allowed: use True, False or a fraction in "
                       "(0, 1]")
    if v0.ndim != 2 or v0.shape[1] < 1:
        raise BadInput(f"start vectors must be [B, n]; got {tuple(v0.shape)}")
    if not v0.is_floating_point():
        raise BadInput(f"start vectors must be floating point; got {v0.dtype}")
    for name, value, ok, need in (("k", k, k >= 1, ">= 1"), ("tol", tol, tol > 0, "> 0"),
                                  ("max_iter", max_iter, max_iter >= 1, ">= 1"),
                                  ("check_every", check_every, check_every >= 1, ">= 1")):
        if not ok:
            raise BadInput(f"{name}={value} is not allowed: need {name} {need}")
    bad = [w for w in which if w not in ("max", "min")]
    if bad or "max" not in which:
        raise BadInput(f"which={which!r} is not allowed: use ('max',) or ('max', 'min')")
    if stop not in STOP_RULES:
        raise BadInput(f"stop={stop!r} is not allowed: use {' or '.join(STOP_RULES)}")
    if not 0 < miss_probability < 1:
        raise BadInput(f"miss_probability={miss_probability} is not allowed: need a value in "
                       "(0, 1)")


class _Outputs:
    """Per-example results over the ORIGINAL batch, written when an example freezes (with its
    recurrence, from which the probabilistic bounds are computed once at the end)."""

    def __init__(self, bsz: int, k: int, n: int, m_cap: int, work, dev, vectors: bool):
        f64 = torch.float64

        def nan(*shape):
            return torch.full(shape, float("nan"), dtype=f64, device=dev)

        self.top, self.top_bound = nan(bsz, k), nan(bsz, k)
        self.smallest, self.smallest_bound = nan(bsz), nan(bsz)
        self.iterations = torch.zeros(bsz, dtype=torch.long, device=dev)
        self.residual, self.estimate, self.error_bound, self.rounding = (
            torch.full((bsz,), float("inf"), dtype=f64, device=dev) for _ in range(4))
        self.converged = torch.zeros(bsz, dtype=torch.bool, device=dev)
        self.limited = torch.zeros(bsz, dtype=torch.bool, device=dev)
        self.alpha, self.beta, self.dropped = (torch.zeros(bsz, m_cap, dtype=f64, device=dev)
                                               for _ in range(3))
        self.vectors = torch.zeros(bsz, k, n, dtype=work, device=dev) if vectors else None

    def write(self, rows, freeze, ritz: RitzPairs, limited, m: int, basis, st: Relation) -> None:
        """Copy the data of the active rows where ``freeze`` into the original positions."""
        def put(out, new):
            mask = freeze.view(-1, *([1] * (new.ndim - 1)))
            out[rows] = torch.where(mask, new, out[rows])

        for name in ("top", "top_bound", "smallest", "smallest_bound", "residual",
                     "error_bound", "rounding"):
            put(getattr(self, name), getattr(ritz, name))
        put(self.estimate, ritz.estimate)
        put(self.iterations, torch.full_like(rows, m))
        put(self.converged, ritz.ok_bound)
        put(self.limited, limited)
        for name in ("alpha", "beta", "dropped"):
            put(getattr(self, name), getattr(st, name))
        if self.vectors is not None:
            put(self.vectors, torch.bmm(ritz.top_coeffs.to(basis.dtype).transpose(1, 2),
                                        basis[:, :m]))

    def extreme_bounds(self, n: int, want_min: bool, delta: float):
        """(largest_upper, smallest_lower) [B], from each example's first Krylov block."""
        m = self.iterations
        upper = torch.maximum(polynomial_upper_bounds(self.alpha, self.beta, self.dropped, m,
                                                      n, delta), self.top[:, 0])
        lower = torch.full_like(upper, float("nan"))
        if want_min:
            lower = torch.minimum(-polynomial_upper_bounds(-self.alpha, self.beta, self.dropped,
                                                           m, n, delta), self.smallest)
        return upper, lower


def batched_lanczos(
    matvec: Matvec,
    v0: torch.Tensor,
    *,
    k: int = 1,
    which: tuple[str, ...] = ("max", "min"),
    tol: float = 1e-3,
    max_iter: int = 100,
    check_every: int = 1,
    stop: str = "residual",
    compact: bool | float = True,
    return_vectors: bool = False,
    generator: torch.Generator | None = None,
    product_error: torch.Tensor | float = 0.0,
    miss_probability: float = MISS_PROBABILITY,
) -> LanczosResult:
    """Extreme eigenvalues of B symmetric n x n matrices given by a batched matvec, with bounds.

    ``matvec``: [B, n] -> [B, n], row i = A_i v_i; with a ``restrict(rows)`` method it is told
    which examples are still active (module docstring). ``v0``: [B, n] start vectors, drawn
    uniformly on the sphere (e.g. Gaussian) for the probabilistic bounds to hold; their dtype
    is the working dtype of the basis. ``which``: ``("max",)`` or ``("max", "min")``. ``k``: how
    many of the largest eigenvalues. ``tol``: relative accuracy; ``stop``: ``"residual"`` (freeze
    once the error bound is <= tol) or ``"eigenvalue"`` (the former estimate rule). ``max_iter``
    is capped at n. ``compact``: drop frozen examples from the active batch at each check (a
    number f in (0, 1): restrict the operator only once the active rows are at most f of those it
    holds, frozen rows riding along as zeros until then; True: at every check).
    ``generator`` seeds the restart vectors drawn after a breakdown. ``product_error``: an
    estimate of the products' own error relative to the operator's scale (``||computed A v -
    A v|| <= product_error * ||A||`` for a unit v), per example [B] or one number; times the
    running scale of T, it is added to every bound. ``miss_probability``: delta of
    ``largest_upper`` / ``smallest_lower``.
    """
    _check_options(v0, k, tol, max_iter, check_every, which, stop, miss_probability, compact)
    bsz, n = v0.shape
    dev, work = v0.device, v0.dtype
    f64 = torch.float64
    m_cap = min(max_iter, n)
    want_min = "min" in which
    eps = torch.finfo(work).eps
    # A remainder this small is rounding noise of the reorthogonalization: the Krylov space is
    # invariant. (Larger thresholds, e.g. sqrt(eps), also restart where a dominant eigenvalue
    # dwarfs the rest of the spectrum; the residual accounts for what a restart drops anyway.)
    breakdown_rel = 8 * eps * n**0.5
    tiny = torch.finfo(work).tiny

    rows = torch.arange(bsz, device=dev)
    op = _Active(matvec, bsz, 1.0 if compact is True else float(compact))
    op.set_rows(rows)
    basis = torch.zeros(bsz, m_cap, n, dtype=work, device=dev)
    st = Relation(*(torch.zeros(bsz, m_cap, dtype=f64, device=dev) for _ in range(3)),
                torch.zeros(bsz, m_cap, m_cap, dtype=f64, device=dev),
                torch.zeros(bsz, dtype=f64, device=dev),
                torch.as_tensor(product_error, dtype=f64, device=dev).expand(bsz).clone())
    done = torch.zeros(bsz, dtype=torch.bool, device=dev)
    out = _Outputs(bsz, k, n, m_cap, work, dev, return_vectors)

    q = v0 / v0.norm(dim=1, keepdim=True).clamp_min(tiny)
    for j in range(m_cap):
        basis[:, j] = q
        w = op(q).to(work)
        a = (w * q).sum(dim=1)
        st.alpha[:, j] = a.to(f64)
        w, removed = _orthogonalize(w, basis[:, : j + 1])
        b = w.norm(dim=1).to(f64)
        prev = st.beta[:, j - 1] if j else st.scale
        st.scale = torch.maximum(st.scale, torch.maximum(a.abs().to(f64), prev))
        broke = b <= breakdown_rel * st.scale
        st.beta[:, j] = torch.where(broke, torch.zeros_like(b), b)
        st.dropped[:, j] = torch.where(broke, b, torch.zeros_like(b))
        # M's column j: the coefficients removed, minus T's entries (alpha_j, beta_{j-1})
        st.mismatch[:, : j + 1, j] = removed.to(f64)
        st.mismatch[:, j, j] -= st.alpha[:, j]
        if j:
            st.mismatch[:, j - 1, j] -= st.beta[:, j - 1]
        if j + 1 < m_cap:
            # Drawn for the whole original batch, then indexed: compaction-independent stream.
            fresh = torch.randn(bsz, n, dtype=work, device=dev, generator=generator)[rows]
            fresh, _ = _orthogonalize(fresh, basis[:, : j + 1])
            fresh = fresh / fresh.norm(dim=1, keepdim=True).clamp_min(tiny)
            cont = w / b.to(work).clamp_min(tiny)[:, None]
            q = torch.where(broke[:, None], fresh, cont)

        m = j + 1
        if m % check_every and m != m_cap:
            continue
        ritz = ritz_pairs(st, m, k, want_min, tol, eps)
        if stop == "residual":
            limited = ritz.limited & ~ritz.ok_bound
            ok = ritz.ok_bound | limited
        else:  # the estimate rule, exactly as before (harness's logged numbers depend on it)
            limited = torch.zeros_like(ritz.ok_bound)
            ok = ritz.ok_eigenvalue
        freeze = ~done & (ok | (m == m_cap))
        out.write(rows, freeze, ritz, limited, m, basis, st)
        done = done | freeze
        if not compact:
            if bool(done.all()):  # the one host sync, once per check
                break
            continue
        keep = (~done).nonzero().squeeze(1)  # the one host sync: reads the active mask
        if keep.numel() == 0:
            break
        if keep.numel() < rows.numel():
            rows, basis, st = rows[keep], _take_columns(basis, keep, m), st.take(keep, m)
            q, done = q[keep], done[keep]
            op.set_rows(rows)
    upper, lower = out.extreme_bounds(n, want_min, miss_probability)
    return LanczosResult(out.top, out.smallest, out.iterations, out.residual, out.converged,
                         out.vectors, op.calls, out.estimate, op.products, out.top_bound,
                         out.smallest_bound, out.error_bound, out.rounding, out.limited, upper,
                         lower)

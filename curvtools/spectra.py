"""Per-example input-Hessian spectra of a classifier: the data of the paper's Figure 3.

:func:`input_hessian_eigenvalues` runs batched Lanczos (:mod:`curvtools.lanczos`) on the
block-diagonal input Hessian of a batch (:mod:`curvtools.hvp`): one batched Hessian-vector product
per Lanczos step gives every example's product. "Maximum eigenvalue" is the largest ALGEBRAIC
eigenvalue; the smallest comes from the same Krylov space at no extra cost.

Example::

    >>> res = input_hessian_eigenvalues(model, x, y, function="ce", tol=1e-3)
    >>> res.lambda_max, res.lambda_min      # [B] float64 each
    >>> res.converged.all(), res.iterations.max()
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from curvtools.errors import BadInput
from curvtools.hvp import InputHessian, check_dtype, check_function, eval_mode
from curvtools.lanczos import batched_lanczos


@dataclass
class SpectraResult:
    """Per-example input-Hessian eigenvalues of a batch of B examples (CPU tensors).

    ``lambda_max`` [B] float64 (largest algebraic eigenvalue), ``lambda_min`` [B] float64 (NaN if
    not requested), ``top_k`` [B, k] float64 descending, ``iterations`` [B] int64 (Hessian-vector
    products used), ``residual`` [B] float64 (relative Ritz residual, the largest over the
    requested pairs), ``converged`` [B] bool, ``top_vectors`` [B, k, n] (unit eigenvectors, only
    with ``return_vectors=True``), ``hvp_batches`` (batched products computed), and the settings.
    """

    lambda_max: torch.Tensor
    lambda_min: torch.Tensor
    top_k: torch.Tensor
    iterations: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    top_vectors: torch.Tensor | None = None
    hvp_batches: int = 0
    function: str = "ce"
    tol: float = 1e-3
    settings: dict = field(default_factory=dict)

    def records(self) -> list[dict]:
        """One JSON-able dict per example."""
        rows = []
        for i in range(self.lambda_max.shape[0]):
            rows.append({
                "lambda_max": float(self.lambda_max[i]),
                "lambda_min": float(self.lambda_min[i]),
                "top_k": [float(v) for v in self.top_k[i]],
                "iterations": int(self.iterations[i]),
                "residual": float(self.residual[i]),
                "converged": bool(self.converged[i]),
            })
        return rows


def _check(x: torch.Tensor, y: torch.Tensor, which, k: int, tol: float, max_iter: int) -> None:
    if x.ndim < 2 or x.shape[0] == 0:
        raise BadInput(f"x must be a non-empty batch [B, ...]; got shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise BadInput(f"y must have shape [{x.shape[0]}]; got {tuple(y.shape)}")
    if tuple(which) not in (("max",), ("max", "min"), ("min", "max")):
        raise BadInput(f"which={which!r} is not allowed: use ('max',) or ('max', 'min')")
    if k < 1:
        raise BadInput(f"k={k} is not allowed: need k >= 1")
    if not (tol > 0):
        raise BadInput(f"tol={tol} is not allowed: need tol > 0")
    if max_iter < 1:
        raise BadInput(f"max_iter={max_iter} is not allowed: need max_iter >= 1")


def input_hessian_eigenvalues(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    function: str = "ce",
    which: tuple[str, ...] = ("max", "min"),
    k: int = 1,
    tol: float = 1e-3,
    max_iter: int = 100,
    dtype: torch.dtype = torch.float32,
    check_every: int = 5,
    seed: int = 0,
    return_vectors: bool = False,
) -> SpectraResult:
    """Largest (and smallest, and top-k) eigenvalues of each example's input Hessian.

    ``model``: a classifier ``[B, C, H, W] -> [B, classes]``; it is evaluated in eval mode (its mode
    is restored afterwards) with autocast off, parameters cast to ``dtype`` (float32 or float64)
    without modifying the model. ``x`` [B, ...] inputs on the model's device, ``y`` [B] labels.
    ``function``: ``"ce"`` (cross-entropy at the true label), ``"margin"`` (true logit minus the
    largest other logit, the runner-up fixed at x) or ``"neg_margin"`` (its negative, Lemma 1's f).
    ``tol``: relative Ritz residual at which an example is frozen; ``max_iter``: Hessian-vector
    products at most (capped at the input dimension); ``check_every``: iterations between
    convergence checks (the only host synchronizations). Start vectors are drawn from ``seed``.
    """
    check_function(function)
    check_dtype(dtype)
    _check(x, y, which, k, tol, max_iter)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    with eval_mode(model):
        op = InputHessian(model, x, y, function=function, dtype=dtype)
        v0 = torch.randn(op.batch, op.n, dtype=dtype, device=x.device, generator=generator)
        res = batched_lanczos(op, v0, k=k, which=tuple(which), tol=tol, max_iter=max_iter,
                              check_every=check_every, return_vectors=return_vectors,
                              generator=generator)
    cpu = torch.device("cpu")
    return SpectraResult(
        lambda_max=res.largest.to(cpu),
        lambda_min=res.smallest.to(cpu),
        top_k=res.top.to(cpu),
        iterations=res.iterations.to(cpu),
        residual=res.residual.to(cpu),
        converged=res.converged.to(cpu),
        top_vectors=None if res.top_vectors is None else res.top_vectors.to(cpu),
        hvp_batches=res.matvecs,
        function=function,
        tol=tol,
        settings={"which": list(which), "k": k, "max_iter": max_iter, "dtype": str(dtype),
                  "check_every": check_every, "seed": seed},
    )

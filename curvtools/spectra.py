"""Per-example input-Hessian spectra of a classifier: the data of the paper's Figure 3.

:func:`input_hessian_eigenvalues` runs batched Lanczos (:mod:`curvtools.lanczos`) on the
block-diagonal input Hessian of a batch (:mod:`curvtools.hvp`): one batched Hessian-vector product
per Lanczos step gives every example's product. "Maximum eigenvalue" is the largest ALGEBRAIC
eigenvalue; the smallest comes from the same Krylov space at no extra cost. Examples leave the
batch as they converge (compaction), so later products run on the unconverged ones only, and an
example stops once its eigenvalue, not only its Ritz residual, is estimated accurate to ``tol``
(``stop="eigenvalue"``; see :mod:`curvtools.lanczos` for the rule and its caveat).

Example::

    >>> res = input_hessian_eigenvalues(model, x, y, function="ce", tol=1e-3)
    >>> res.lambda_max, res.lambda_min      # [B] float64 each
    >>> res.converged.all(), res.iterations.max()
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from curvtools.errors import BadInput
from curvtools.hvp import InputHessian, check_dtype, check_function, check_hvp_mode, eval_mode
from curvtools.lanczos import STOP_RULES, batched_lanczos


@dataclass
class SpectraResult:
    """Per-example input-Hessian eigenvalues of a batch of B examples (CPU tensors).

    ``lambda_max`` [B] float64 (largest algebraic eigenvalue), ``lambda_min`` [B] float64 (NaN if
    not requested), ``top_k`` [B, k] float64 descending, ``iterations`` [B] int64 (Hessian-vector
    products used), ``residual`` [B] float64 (relative Ritz residual, the largest over the
    requested pairs), ``error_estimate`` [B] float64 (estimated relative eigenvalue error,
    ``min(r, r^2/gap) / |lambda|``, the largest over the requested pairs), ``converged`` [B] bool,
    ``top_vectors`` [B, k, n] (unit eigenvectors, only with ``return_vectors=True``),
    ``hvp_batches`` (batched products computed), ``hvps_computed`` (single-example products
    computed: the sum of the active batch sizes), and the settings.
    """

    lambda_max: torch.Tensor
    lambda_min: torch.Tensor
    top_k: torch.Tensor
    iterations: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    top_vectors: torch.Tensor | None = None
    hvp_batches: int = 0
    error_estimate: torch.Tensor | None = None
    hvps_computed: int = 0
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
                "error_estimate": (float("nan") if self.error_estimate is None
                                   else float(self.error_estimate[i])),
                "converged": bool(self.converged[i]),
            })
        return rows


def _check(x: torch.Tensor, y: torch.Tensor, which, k: int, tol: float, max_iter: int,
           stop: str, check_every: int) -> None:
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
    if stop not in STOP_RULES:
        raise BadInput(f"stop={stop!r} is not allowed: use {' or '.join(STOP_RULES)}")
    if check_every < 1:
        raise BadInput(f"check_every={check_every} is not allowed: need check_every >= 1")


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
    check_every: int = 2,
    seed: int = 0,
    return_vectors: bool = False,
    stop: str = "eigenvalue",
    compact: bool = True,
    hvp_mode: str = "rev-rev",
) -> SpectraResult:
    """Largest (and smallest, and top-k) eigenvalues of each example's input Hessian.

    ``model``: a classifier ``[B, C, H, W] -> [B, classes]``; it is evaluated in eval mode (its mode
    is restored afterwards) with autocast off, parameters cast to ``dtype`` (float32 or float64)
    without modifying the model. ``x`` [B, ...] inputs on the model's device, ``y`` [B] labels.
    ``function``: ``"ce"`` (cross-entropy at the true label), ``"margin"`` (true logit minus the
    largest other logit, the runner-up fixed at x) or ``"neg_margin"`` (its negative, Lemma 1's f).
    ``tol``: relative accuracy at which an example is frozen, judged by ``stop``:
    ``"eigenvalue"`` (estimated eigenvalue error, the default) or ``"residual"`` (relative Ritz
    residual: rigorous, 1.1-1.4x the products measured on CPU; use it with
    ``return_vectors=True`` when the vectors must be accurate too, their error follows the
    residual); ``max_iter``: Hessian-vector
    products per example at most (capped at the input dimension); ``check_every``: iterations
    between convergence checks (the only host synchronizations); ``compact``: drop converged
    examples from the batch at each check; ``hvp_mode``: ``"fwd-rev"`` or ``"rev-rev"``
    (:mod:`curvtools.hvp`). Start vectors are drawn from ``seed``.
    """
    check_function(function)
    check_dtype(dtype)
    check_hvp_mode(hvp_mode)
    _check(x, y, which, k, tol, max_iter, stop, check_every)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    with eval_mode(model):
        op = InputHessian(model, x, y, function=function, dtype=dtype, hvp_mode=hvp_mode)
        v0 = torch.randn(op.batch, op.n, dtype=dtype, device=x.device, generator=generator)
        res = batched_lanczos(op, v0, k=k, which=tuple(which), tol=tol, max_iter=max_iter,
                              check_every=check_every, stop=stop, compact=compact,
                              return_vectors=return_vectors, generator=generator)
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
        error_estimate=res.error_estimate.to(cpu),
        hvps_computed=res.products,
        function=function,
        tol=tol,
        settings={"which": list(which), "k": k, "max_iter": max_iter, "dtype": str(dtype),
                  "check_every": check_every, "seed": seed, "stop": stop,
                  "compact": compact, "hvp_mode": hvp_mode},
    )

"""Per-example input-Hessian spectra of a classifier: the data of the paper's Figure 3.

:func:`input_hessian_eigenvalues` runs batched Lanczos (:mod:`curvtools.lanczos`) on the
block-diagonal input Hessian of a batch (:mod:`curvtools.hvp`): one batched Hessian-vector product
per Lanczos step gives every example's product. "Maximum eigenvalue" is the largest ALGEBRAIC
eigenvalue; the smallest comes from the same Krylov space at no extra cost. Examples leave the
batch as they converge (compaction), so later products run on the unconverged ones only.

What a result guarantees (defaults: float64 products, ``stop="residual"``): per example and per
requested eigenvalue, ``lambda_max_bound`` / ``lambda_min_bound`` bound the distance from the
value to the nearest eigenvalue of the Hessian the products compute; ``converged`` means that
bound is at most ``tol`` relative, and an example that did not get there (iteration cap, or
``limited``: the products' own rounding exceeds tol) is flagged, never reported as converged.
``lambda_max >= value`` always; ``lambda_max <= value + bound`` unless a larger eigenvalue hid
from the Krylov space, which ``lambda_max_upper`` bounds with probability ``1 -
miss_probability`` over the random start (:mod:`curvtools.krylov_bounds`).

Precision: float64 by default (a change from float32 on 2026-12-06), so that every bound is
proven up to float64 rounding. ``dtype=float32`` is 1.6x (H200) to 4x (a CPU) faster and,
with the loss computed from the logits in float64 (``loss_dtype``, the default), accurate to
about 1e-6 relative (the float32 loss erred up to 1e-3 on confidently classified examples, where
``p_y`` rounds towards 1); its bounds add an ESTIMATE of the products' error
(:data:`PRODUCT_ERROR_EPS`) and flag the examples it keeps from tol (``limited``).

Example::

    >>> res = input_hessian_eigenvalues(model, x, y, function="ce", tol=1e-3)
    >>> res.lambda_max, res.lambda_max_bound, res.lambda_min    # [B] float64 each
    >>> res.converged.all(), res.iterations.max()
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from curvtools.errors import BadInput
from curvtools.hvp import (
    InputHessian,
    check_dtype,
    check_function,
    check_hvp_mode,
    eval_mode,
)
from curvtools.lanczos import MISS_PROBABILITY, STOP_RULES, batched_lanczos

# The products' own error, relative to the Hessian's scale, in units of the working dtype's eps,
# by the precision of the loss head (an ESTIMATE added to every bound, not a bound): measured on
# a trained digits PreActResNet-18 (top eigenvectors of 32 test images against float64), at
# most 20 eps with the float64 head and 9,200 eps with a float32 one; kept with margins.
PRODUCT_ERROR_EPS = {torch.float64: 64.0, torch.float32: 2e4}  # keyed by the loss's dtype


@dataclass
class SpectraResult:
    """Per-example input-Hessian eigenvalues of a batch of B examples (CPU tensors).

    ``lambda_max`` [B] float64 (largest algebraic eigenvalue) and ``lambda_max_bound`` (absolute:
    some eigenvalue lies within it; the largest does unless one hid from the Krylov space),
    ``lambda_max_upper`` (lambda_max is below it with probability ``1 - miss_probability``);
    ``lambda_min``, ``lambda_min_bound``, ``lambda_min_lower`` likewise (NaN if not requested);
    ``top_k`` [B, k] descending; ``error_bound`` [B] (the largest relative bound of the requested
    values); ``converged`` [B] bool (``error_bound <= tol``); ``limited`` [B] bool (stopped
    because the products' rounding, ``rounding`` relative, alone exceeds tol); ``iterations``
    [B] (Hessian-vector products used); ``residual`` (relative Lanczos residual) and
    ``error_estimate`` (relative ``min(r, r^2/gap)``: an estimate, not a bound), the largest over
    the requested values; ``top_vectors`` [B, k, n] (``return_vectors=True``); ``hvp_batches``
    (batched products), ``hvps_computed`` (single-example products: the sum of the active batch
    sizes), and the settings.
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
    lambda_max_bound: torch.Tensor | None = None
    lambda_min_bound: torch.Tensor | None = None
    error_bound: torch.Tensor | None = None
    rounding: torch.Tensor | None = None
    limited: torch.Tensor | None = None
    lambda_max_upper: torch.Tensor | None = None
    lambda_min_lower: torch.Tensor | None = None

    def records(self) -> list[dict]:
        """One JSON-able dict per example (absent values are NaN)."""
        def value(name, i):
            t = getattr(self, name)
            return float("nan") if t is None else float(t[i])

        rows = []
        for i in range(self.lambda_max.shape[0]):
            rows.append({
                "lambda_max": float(self.lambda_max[i]),
                "lambda_max_bound": value("lambda_max_bound", i),
                "lambda_max_upper": value("lambda_max_upper", i),
                "lambda_min": float(self.lambda_min[i]),
                "lambda_min_bound": value("lambda_min_bound", i),
                "lambda_min_lower": value("lambda_min_lower", i),
                "top_k": [float(v) for v in self.top_k[i]],
                "iterations": int(self.iterations[i]),
                "error_bound": value("error_bound", i),
                "residual": float(self.residual[i]),
                "error_estimate": value("error_estimate", i),
                "converged": bool(self.converged[i]),
                "limited": bool(self.limited[i]) if self.limited is not None else False,
            })
        return rows


def _check(x: torch.Tensor, y: torch.Tensor, which, k: int, tol: float, max_iter: int,
           stop: str, check_every: int, miss_probability: float) -> None:
    if x.ndim < 2 or x.shape[0] == 0:
        raise BadInput(f"x must be a non-empty batch [B, ...]; got shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise BadInput(f"y must have shape [{x.shape[0]}]; got {tuple(y.shape)}")
    if tuple(which) not in (("max",), ("max", "min"), ("min", "max")):
        raise BadInput(f"which={which!r} is not allowed: use ('max',) or ('max', 'min')")
    for name, value, ok, need in (("k", k, k >= 1, ">= 1"), ("tol", tol, tol > 0, "> 0"),
                                  ("max_iter", max_iter, max_iter >= 1, ">= 1"),
                                  ("check_every", check_every, check_every >= 1, ">= 1"),
                                  ("miss_probability", miss_probability,
                                   0 < miss_probability < 1, "in (0, 1)")):
        if not ok:
            raise BadInput(f"{name}={value} is not allowed: need {name} {need}")
    if stop not in STOP_RULES:
        raise BadInput(f"stop={stop!r} is not allowed: use {' or '.join(STOP_RULES)}")


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
    dtype: torch.dtype = torch.float64,
    check_every: int = 1,
    seed: int = 0,
    return_vectors: bool = False,
    stop: str = "residual",
    compact: bool | float = 0.5,
    hvp_mode: str = "rev-rev",
    miss_probability: float = MISS_PROBABILITY,
    loss_dtype: torch.dtype = torch.float64,
) -> SpectraResult:
    """Largest (and smallest, and top-k) eigenvalues of each example's input Hessian, with
    error bounds (module docstring).

    ``model``: a classifier ``[B, C, H, W] -> [B, classes]`` taking [0, 1] pixels; it is
    evaluated in eval mode (its mode is restored afterwards) with autocast off, parameters cast
    to ``dtype`` without modifying the model. ``x`` [B, ...] float pixels in [0, 1] on the
    model's device (integer images, or values outside [0, 1], are refused with
    :class:`BadInput`), ``y`` [B] integer labels. ``function``: ``"ce"`` (cross-entropy at the
    true label), ``"margin"`` (true logit minus the largest other logit, the runner-up fixed at
    x) or ``"neg_margin"`` (its negative, Lemma 1's f). ``dtype``: float64 (the default since
    2026-12-06; it was float32) or float32 (faster; ~1e-6 relative error with the float64 loss
    head, an estimate of which its bounds include). ``tol``: relative accuracy;
    ``stop``: ``"residual"`` (the default since 2026-12-06: freeze an example once its error
    bound is <= tol, or when rounding keeps it from getting there) or ``"eigenvalue"`` (the
    former default, an estimate: ``min(r, r^2/gap) <= tol/2``; :mod:`curvtools.lanczos`);
    ``max_iter``: products per example at most (capped at the input dimension);
    ``check_every``: iterations between convergence checks (the only host synchronizations; 1
    by default since 2026-12-06, it was 2); ``compact``: drop frozen examples from the
    Lanczos batch at each check, and restrict the Hessian to the active ones once they are at
    most half of those it holds (0.5, since 2026-12-06; True: at every change, the former
    default -- each restriction rebuilds the rev-rev gradient graph, about one product);
    ``hvp_mode``: ``"fwd-rev"`` or ``"rev-rev"`` (:mod:`curvtools.hvp`);
    ``miss_probability``: delta of ``lambda_max_upper`` / ``lambda_min_lower``; ``loss_dtype``:
    the precision of the loss computed from the logits (float64; ``torch.float32`` with
    ``dtype=torch.float32`` reproduces the products before 2026-12-06, whose rounding then
    keeps every example from tol 1e-3). Start vectors (Gaussian, so uniform on the sphere) are
    drawn from ``seed``.
    """
    check_function(function)
    check_dtype(dtype)
    check_dtype(loss_dtype)
    check_hvp_mode(hvp_mode)
    _check(x, y, which, k, tol, max_iter, stop, check_every, miss_probability)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    with eval_mode(model):
        op = InputHessian(model, x, y, function=function, dtype=dtype, hvp_mode=hvp_mode,
                          loss_dtype=loss_dtype)
        v0 = torch.randn(op.batch, op.n, dtype=dtype, device=x.device, generator=generator)
        # a float32 loss rounds like float32, whatever the products' dtype
        head = torch.float32 if loss_dtype == torch.float32 else torch.float64
        eps = torch.finfo(torch.float32 if head == torch.float32 else dtype).eps
        res = batched_lanczos(op, v0, k=k, which=tuple(which), tol=tol, max_iter=max_iter,
                              check_every=check_every, stop=stop, compact=compact,
                              return_vectors=return_vectors, generator=generator,
                              miss_probability=miss_probability,
                              product_error=PRODUCT_ERROR_EPS[head] * eps)
    cpu = torch.device("cpu")

    def host(t):
        return None if t is None else t.to(cpu)

    return SpectraResult(
        lambda_max=host(res.largest),
        lambda_min=host(res.smallest),
        top_k=host(res.top),
        iterations=host(res.iterations),
        residual=host(res.residual),
        converged=host(res.converged),
        top_vectors=host(res.top_vectors),
        hvp_batches=res.matvecs,
        error_estimate=host(res.error_estimate),
        hvps_computed=res.products,
        function=function,
        tol=tol,
        settings={"which": list(which), "k": k, "max_iter": max_iter, "dtype": str(dtype),
                  "check_every": check_every, "seed": seed, "stop": stop,
                  "compact": compact, "hvp_mode": hvp_mode,
                  "miss_probability": miss_probability, "loss_dtype": str(loss_dtype)},
        lambda_max_bound=host(res.top_bound[:, 0]),
        lambda_min_bound=host(res.smallest_bound),
        error_bound=host(res.error_bound),
        rounding=host(res.rounding),
        limited=host(res.limited),
        lambda_max_upper=host(res.largest_upper),
        lambda_min_lower=host(res.smallest_lower),
    )

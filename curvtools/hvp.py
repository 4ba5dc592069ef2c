"""Batched Hessian-vector products with respect to the INPUT of a classifier.

For a model in eval mode every example's output depends on that example's input alone, so the
Hessian of the summed per-example objective ``sum_i f(x_i)`` with respect to the stacked batch is
block-diagonal: one product with a stacked vector ``[v_1; ...; v_B]`` returns ``[H_1 v_1; ...;
H_B v_B]``, every example's product in one batched pass. (In train mode BatchNorm couples the
examples and this is false, which is why everything here switches the model to eval mode.)

Products (``hvp_mode``), in float32 or float64, with autocast disabled and TF32 off
(:func:`full_fp32_precision`: on Ampere/Hopper GPUs float32 convolutions and matmuls would
otherwise run in TF32, ~1e-3 relative noise in every product):

- ``"fwd-rev"`` (default): forward-over-reverse, ``jvp`` of ``grad`` (``torch.func``); every
  product recomputes the forward and backward pass.
- ``"rev-rev"``: reverse-over-reverse, the PyHessian way batched: the first-order gradient graph
  is built ONCE (``create_graph=True``) and each product is one
  ``autograd.grad((g * v).sum(), x, retain_graph=True)``, no re-forward. It keeps the graph in
  memory for the operator's lifetime.

The model's parameters are cast (not modified) through ``torch.func.functional_call``, so a
float32 model can be probed in float64.

Restriction: ``InputHessian.restrict(rows)`` is the operator of the examples ``rows`` (original
indices), made by indexing the inputs, labels and the margin's runner-ups (not recomputed) -- the
protocol :func:`curvtools.lanczos.batched_lanczos` uses to drop converged examples. In eval mode
example i's product depends on x_i alone, so the restricted products equal the full ones (up to
the batch-size dependence of the kernels' summation order; tested to 1e-12 in float64 on CPU).

Objectives (``function``), per example, with ``z`` the logits and ``y`` the true label:

- ``"ce"``: cross-entropy ``-log softmax(z)_y`` (the default);
- ``"margin"``: ``m = z_y - z_j*`` where ``j* = argmax_{j != y} z_j`` is taken AT THE POINT ``x``
  and then held fixed, so the Hessian is that of the smooth function ``z_y - z_j*`` (the max is
  not differentiated; away from ties it is the same function locally);
- ``"neg_margin"``: ``-m``, the ``f`` of Lemma 1 for a correctly classified example (``c = m``).

Example::

    >>> hvp = batched_input_hvp(model, x, y, function="ce", dtype=torch.float64)
    >>> hv = hvp(v)          # v: [B, C*H*W] -> [B, C*H*W], row i = H_i v_i
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from curvtools.errors import BadInput

FUNCTIONS = ("ce", "margin", "neg_margin")
HVP_MODES = ("fwd-rev", "rev-rev")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def check_function(function: str) -> str:
    """Validate an objective name (see the module docstring)."""
    if function not in FUNCTIONS:
        raise BadInput(f"function {function!r} is not one of {', '.join(FUNCTIONS)}")
    return function


def check_dtype(dtype: torch.dtype) -> torch.dtype:
    """Hessian work runs in float32 or float64 only (never half precision)."""
    if dtype not in (torch.float32, torch.float64):
        raise BadInput(f"dtype {dtype} is not allowed: use torch.float32 or torch.float64")
    return dtype


def check_images(x: torch.Tensor) -> torch.Tensor:
    """Refuse what cannot be a batch of [0, 1] pixels: an integer tensor (uint8 images would be
    read as 0..255, where a trained net is saturated and the Hessian ~1e-14: silently wrong),
    non-finite values, or values outside [0, 1] (the models take [0, 1] pixels and normalize
    inside, as RobustBench models do; standardized inputs belong to a model without its own
    normalization, which this library does not build). One host sync (the min and max)."""
    if not (x.is_floating_point() and x.dtype in (torch.float16, torch.bfloat16, torch.float32,
                                                  torch.float64)):
        raise BadInput(f"images of dtype {x.dtype} are not allowed: pass float pixels in [0, 1] "
                       "(e.g. x.float() / 255 for uint8 images)")
    if x.numel():
        low, high = (float(v) for v in torch.aminmax(x.detach().to(torch.float64)))
        if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high > 1:
            raise BadInput(f"images must be pixels in [0, 1]; got values in [{low:.4g}, "
                           f"{high:.4g}] (normalization belongs inside the model)")
    return x


def check_hvp_mode(hvp_mode: str) -> str:
    """Validate an HVP mode (see the module docstring)."""
    if hvp_mode not in HVP_MODES:
        raise BadInput(f"hvp_mode {hvp_mode!r} is not one of {', '.join(HVP_MODES)}")
    return hvp_mode


@contextmanager
def full_fp32_precision():
    """Run the block with TF32 off for cuDNN convolutions and CUDA float32 matmuls; restore the
    previous settings afterwards, also on an exception.

    Uses the legacy flags (``torch.backends.cudnn.allow_tf32`` and the float32 matmul precision,
    which also drives ``torch.backends.cuda.matmul.allow_tf32``). When the process has mixed them
    with torch's per-operator API (then the legacy getters raise), the per-operator settings
    ``cudnn.conv.fp32_precision`` and ``cuda.matmul.fp32_precision`` are saved and set to "ieee"
    instead. A no-op for the numbers on CPU.
    """
    backends = torch.backends
    try:
        saved = (backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    except RuntimeError:  # legacy and per-operator APIs were mixed by the caller
        saved = None
    if saved is not None:
        try:
            backends.cudnn.allow_tf32 = False
            torch.set_float32_matmul_precision("highest")
            yield
        finally:
            backends.cudnn.allow_tf32 = saved[0]
            torch.set_float32_matmul_precision(saved[1])
        return
    conv, matmul = backends.cudnn.conv, backends.cuda.matmul
    old = (conv.fp32_precision, matmul.fp32_precision)
    try:
        conv.fp32_precision = "ieee"
        matmul.fp32_precision = "ieee"
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = old


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _functional_model(model: torch.nn.Module, dtype: torch.dtype) -> Callable:
    """``x -> logits`` with the parameters and floating buffers cast to ``dtype`` and detached."""
    state = {
        name: (t.detach().to(dtype) if t.is_floating_point() else t)
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    }

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, state, (x,))

    return forward


def _runner_up(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Index of the largest logit other than the true one, per example (at the point, no grad)."""
    masked = logits.detach().clone()
    masked.scatter_(1, y[:, None], float("-inf"))
    return masked.argmax(dim=1)


def per_example_objective(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    function: str,
    other: torch.Tensor | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x' -> f(x')`` of shape [B]; the margin's runner-up is chosen at x and held fixed.

    ``other`` [B]: the runner-up labels when already known (then x is not evaluated).
    """
    check_function(function)
    if function == "ce":
        return lambda xx: F.cross_entropy(forward(xx), y, reduction="none")
    if other is None:
        other = runner_up_labels(forward, x, y)
    sign = 1.0 if function == "margin" else -1.0

    def margin(xx: torch.Tensor) -> torch.Tensor:
        z = forward(xx)
        return sign * (z.gather(1, y[:, None]) - z.gather(1, other[:, None])).squeeze(1)

    return margin


def runner_up_labels(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     y: torch.Tensor) -> torch.Tensor:
    """[B] index of the largest non-true logit at x (the margin's fixed runner-up)."""
    with torch.no_grad():
        return _runner_up(forward(x), y)


class InputHessian:
    """The per-example input Hessians of one batch, as a batched linear operator.

    ``x``: [B, ...] inputs, ``y``: [B] int64 labels. Vectors are flat: [B, n] with
    ``n = x[0].numel()``. The model must stay in eval mode while the operator is used
    (:func:`eval_mode`); :func:`batched_input_hvp` and the spectra functions take care of that.
    ``hvp_mode``: ``"fwd-rev"`` or ``"rev-rev"`` (module docstring). ``loss_dtype``: the
    precision of the objective computed from the logits (float64 by default, also when ``dtype``
    is float32; ``torch.float32`` gives the float32 products made before 2026-12-06, ~1e-3
    relative error on confidently classified examples). ``restrict(rows)`` gives the operator
    of a subset of the examples.
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 function: str = "ce", dtype: torch.dtype = torch.float32,
                 hvp_mode: str = "fwd-rev", loss_dtype: torch.dtype = torch.float64,
                 _forward: Callable | None = None, _other: torch.Tensor | None = None):
        check_dtype(dtype)
        check_dtype(loss_dtype)
        check_function(function)
        check_hvp_mode(hvp_mode)
        if x.ndim < 2 or y.shape != (x.shape[0],):
            raise BadInput(f"x must be [B, ...] and y [B]; got x {tuple(x.shape)}, "
                           f"y {tuple(y.shape)}")
        if _forward is None:  # a restriction indexes inputs already checked
            check_images(x)
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise BadInput(f"labels of dtype {y.dtype} are not allowed: pass integer "
                               "class indices")
        self.model, self.function, self.hvp_mode = model, function, hvp_mode
        self.shape = x.shape
        self.batch = x.shape[0]
        self.n = x[0].numel()
        self.dtype, self.loss_dtype = dtype, loss_dtype
        self.x = x.detach().to(dtype)
        self.y = y.to(device=x.device, dtype=torch.long)
        self._forward = _forward or _functional_model(model, dtype)
        self.other = None
        if function != "ce":
            self.other = (_other if _other is not None
                          else runner_up_labels(self._forward, self.x, self.y))
        # The objective on the logits in loss_dtype: in float32, p_y - 1 and p_y (1 - p_y)
        # cancel where p_y rounds towards 1, ~1e-3 relative error in every product of a
        # confidently classified example; a float64 head costs [B, classes] and removes it.
        head = self._forward
        if loss_dtype != dtype:
            def head(xx, forward=self._forward):
                return forward(xx).to(loss_dtype)
        self._f = per_example_objective(head, self.x, self.y, function, self.other)
        # Row i of the gradient of sum_j f(x_j) is grad f(x_i): block-diagonality again.
        self._grad = torch.func.grad(lambda xx: self._f(xx).sum())
        self._graph: tuple[torch.Tensor, torch.Tensor] | None = None  # rev-rev: (x leaf, g)

    def _no_autocast(self):
        return torch.autocast(self.x.device.type, enabled=False)

    def restrict(self, rows: torch.Tensor) -> InputHessian:
        """The operator of the examples ``rows`` (a LongTensor of indices into this batch):
        inputs, labels and runner-ups indexed, the functional model shared."""
        rows = rows.to(self.x.device)
        return InputHessian(self.model, self.x[rows], self.y[rows], function=self.function,
                            dtype=self.dtype, hvp_mode=self.hvp_mode,
                            loss_dtype=self.loss_dtype, _forward=self._forward,
                            _other=None if self.other is None else self.other[rows])

    def values_and_gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(x_i) [B], grad f(x_i) [B, n])``."""
        with self._no_autocast(), full_fp32_precision():
            values = self._f(self.x).detach()
            grads = self._grad(self.x).detach()
        return values, grads.reshape(self.batch, self.n)

    def _first_order_graph(self) -> tuple[torch.Tensor, torch.Tensor]:
        """rev-rev: the gradient of sum_i f(x_i) with its graph, built once and kept."""
        if self._graph is None:
            with torch.enable_grad():
                leaf = self.x.detach().clone().requires_grad_(True)
                (g,) = torch.autograd.grad(self._f(leaf).sum(), leaf, create_graph=True)
            self._graph = (leaf, g)
        return self._graph

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``[B, n] -> [B, n]``, row i = H_i v_i (one batched pass for the whole batch)."""
        tangent = v.to(self.dtype).reshape(self.shape)
        with self._no_autocast(), full_fp32_precision():
            if self.hvp_mode == "rev-rev":
                leaf, g = self._first_order_graph()
                if not g.requires_grad:  # the gradient does not depend on x: H = 0
                    return torch.zeros_like(tangent).reshape(self.batch, self.n)
                with torch.enable_grad():
                    (hv,) = torch.autograd.grad((g * tangent).sum(), leaf, retain_graph=True,
                                                materialize_grads=True)
            else:
                with warnings.catch_warnings():
                    # torch's forward-AD decompositions still call torch.jit.script internally.
                    warnings.filterwarnings("ignore", category=FutureWarning,
                                            message=r".*torch\.jit\.script.*deprecated")
                    _, hv = torch.func.jvp(self._grad, (self.x,), (tangent,))
        return hv.detach().reshape(self.batch, self.n)


class _EvalModeHvp:
    """An :class:`InputHessian` whose every call (and restriction) runs in eval mode."""

    def __init__(self, op: InputHessian):
        self.op = op

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.op.model):
            return self.op(v)

    def restrict(self, rows: torch.Tensor) -> _EvalModeHvp:
        with eval_mode(self.op.model):
            return _EvalModeHvp(self.op.restrict(rows))


def batched_input_hvp(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                      function: str = "ce", dtype: torch.dtype = torch.float32,
                      hvp_mode: str = "fwd-rev", loss_dtype: torch.dtype = torch.float64,
                      ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable ``v [B, n] -> H v [B, n]`` for the per-example input Hessians (model in eval).

    The model is switched to eval mode for each call and restored afterwards. The callable has
    ``restrict(rows)`` (the operator of a subset of the examples, see the module docstring).
    """
    with eval_mode(model):  # the margin's runner-up is chosen by an eval-mode forward
        op = InputHessian(model, x, y, function=function, dtype=dtype, hvp_mode=hvp_mode,
                          loss_dtype=loss_dtype)
    return _EvalModeHvp(op)

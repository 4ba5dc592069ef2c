"""Batched Hessian-vector products with respect to the INPUT of a classifier.

For a model in eval mode every example's output depends on that example's input alone, so the
Hessian of the summed per-example objective ``sum_i f(x_i)`` with respect to the stacked batch is
block-diagonal: one product with a stacked vector ``[v_1; ...; v_B]`` returns ``[H_1 v_1; ...;
H_B v_B]``, every example's product in one batched pass. (In train mode BatchNorm couples the
examples and this is false, which is why everything here switches the model to eval mode.)

Products are forward-over-reverse: ``jvp`` of ``grad`` (``torch.func``), in float32 or float64,
with autocast disabled. The model's parameters are cast (not modified) through
``torch.func.functional_call``, so a float32 model can be probed in float64.

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

import warnings
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from curvtools.errors import BadInput

FUNCTIONS = ("ce", "margin", "neg_margin")
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
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x' -> f(x')`` of shape [B]; the margin's runner-up is chosen at x and held fixed."""
    check_function(function)
    if function == "ce":
        return lambda xx: F.cross_entropy(forward(xx), y, reduction="none")
    with torch.no_grad():
        other = _runner_up(forward(x), y)
    sign = 1.0 if function == "margin" else -1.0

    def margin(xx: torch.Tensor) -> torch.Tensor:
        z = forward(xx)
        return sign * (z.gather(1, y[:, None]) - z.gather(1, other[:, None])).squeeze(1)

    return margin


class InputHessian:
    """The per-example input Hessians of one batch, as a batched linear operator.

    ``x``: [B, ...] inputs, ``y``: [B] int64 labels. Vectors are flat: [B, n] with
    ``n = x[0].numel()``. The model must stay in eval mode while the operator is used
    (:func:`eval_mode`); :func:`batched_input_hvp` and the spectra functions take care of that.
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 function: str = "ce", dtype: torch.dtype = torch.float32):
        check_dtype(dtype)
        if x.ndim < 2 or y.shape != (x.shape[0],):
            raise BadInput(f"x must be [B, ...] and y [B]; got x {tuple(x.shape)}, "
                           f"y {tuple(y.shape)}")
        self.shape = x.shape
        self.batch = x.shape[0]
        self.n = x[0].numel()
        self.dtype = dtype
        self.x = x.detach().to(dtype)
        self.y = y.to(device=x.device, dtype=torch.long)
        self._f = per_example_objective(_functional_model(model, dtype), self.x, self.y, function)
        # Row i of the gradient of sum_j f(x_j) is grad f(x_i): block-diagonality again.
        self._grad = torch.func.grad(lambda xx: self._f(xx).sum())

    def _no_autocast(self):
        return torch.autocast(self.x.device.type, enabled=False)

    def values_and_gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(x_i) [B], grad f(x_i) [B, n])``."""
        with self._no_autocast():
            values = self._f(self.x).detach()
            grads = self._grad(self.x).detach()
        return values, grads.reshape(self.batch, self.n)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``[B, n] -> [B, n]``, row i = H_i v_i (one forward-over-reverse pass for the batch)."""
        tangent = v.to(self.dtype).reshape(self.shape)
        with self._no_autocast(), warnings.catch_warnings():
            # torch's forward-AD decompositions still call torch.jit.script internally.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated",
                                    category=FutureWarning)
            _, hv = torch.func.jvp(self._grad, (self.x,), (tangent,))
        return hv.detach().reshape(self.batch, self.n)


def batched_input_hvp(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                      function: str = "ce",
                      dtype: torch.dtype = torch.float32) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable ``v [B, n] -> H v [B, n]`` for the per-example input Hessians (model in eval).

    The model is switched to eval mode for each call and restored afterwards.
    """
    with eval_mode(model):  # the margin's runner-up is chosen by an eval-mode forward
        op = InputHessian(model, x, y, function=function, dtype=dtype)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        with eval_mode(model):
            return op(v)

    return hvp

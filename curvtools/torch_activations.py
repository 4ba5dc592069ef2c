"""Torch modules for registered activations that torch has no built-in for.

Imported lazily by :mod:`curvtools.activations` (this module imports torch); it imports
:mod:`curvtools.user_expr`, never the registry.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PSwish(nn.Module):
    """Parametric Swish ``x * sigmoid(beta * x)`` with a fixed (not learned) beta.

    Computed as ``silu(beta * x) / beta``, which is the same function and uses torch's fused SiLU
    kernel forwards and backwards.
    """

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.beta == 1.0:
            return F.silu(x)
        return F.silu(x * self.beta) / self.beta

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class LiSHT(nn.Module):
    """Linearly scaled hyperbolic tangent ``x * tanh(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(x)


class Softplus(nn.Module):
    """``log(1 + exp(beta x)) / beta`` without a linear threshold.

    torch's ``nn.Softplus`` switches to the identity above ``threshold``, which makes the function
    discontinuous there (the authors' code used threshold=1). ``logaddexp(0, beta x) / beta`` is
    exact and overflow-free everywhere.
    """

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x * self.beta
        return torch.logaddexp(torch.zeros_like(z), z) / self.beta

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class SympyActivation(nn.Module):
    """A user-defined activation f(x) given as sympy text, evaluated elementwise with torch ops."""

    def __init__(self, expr: str):
        super().__init__()
        from curvtools.sympy_torch import lambdify_torch
        from curvtools.user_expr import parse_user_expression, symbol_x

        self.expr = expr
        self._fn = lambdify_torch(symbol_x(), parse_user_expression(expr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._fn(x)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            out = torch.as_tensor(out, dtype=x.dtype, device=x.device).expand_as(x)
        return out

    def extra_repr(self) -> str:
        return f"expr={self.expr!r}"

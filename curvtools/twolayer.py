"""The two-layer binary classifier of Sec. 4.1 and its input Hessian (Eq. 2).

``f(x) = w2^T sigma(W1 x)`` with ``W1: [h, d]``, ``w2: [h]``. Then

    grad f(x)    = W1^T (sigma'(W1 x) * w2)
    Hessian f(x) = W1^T diag(sigma''(W1 x) * w2) W1          (Eq. 2)

sigma' and sigma'' are the *symbolic* derivatives from :mod:`curvtools.symbolic`, compiled to
torch by :func:`curvtools.sympy_torch.lambdify_torch`, so comparing Eq. 2 against
``torch.func.hessian`` of the torch module checks the registry's two halves against each other.

Also here: the exact minimal l2 perturbation that flips the quadratic model (the quantity Lemma 1
bounds), from the eigendecomposition of H, and an independent SLSQP cross-check.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from curvtools.activations import Activation
from curvtools.errors import BadInput
from curvtools.symbolic import derivatives
from curvtools.sympy_torch import lambdify_torch

TorchFn = Callable[[torch.Tensor], torch.Tensor]


_COMPILED: dict[str, tuple[TorchFn, TorchFn]] = {}


def sigma_derivatives(act: Activation) -> tuple[TorchFn, TorchFn]:
    """(sigma', sigma'') of ``act`` as elementwise torch functions compiled from sympy.

    Example::

        >>> d1, d2 = sigma_derivatives(resolve("lisht"))
        >>> d2(torch.zeros(1, dtype=torch.float64))   # tensor([2.], dtype=torch.float64)
    """
    key = json.dumps(act.config(), sort_keys=True)
    if key not in _COMPILED:
        d = derivatives(act)
        _COMPILED[key] = (lambdify_torch(d.x, d.f1_simple), lambdify_torch(d.x, d.f2_simple))
    return _COMPILED[key]


class TwoLayerNet(nn.Module):
    """``f(x) = w2^T sigma(W1 x)``: one logit; x [B, d] -> [B] (or [d] -> scalar)."""

    def __init__(self, act: Activation, W1: torch.Tensor, w2: torch.Tensor):
        super().__init__()
        self.W1 = nn.Parameter(W1)
        self.w2 = nn.Parameter(w2)
        self.act = act.module()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x @ self.W1.T) @ self.w2


def gradient_eq2(act: Activation, W1: torch.Tensor, w2: torch.Tensor,
                 x: torch.Tensor) -> torch.Tensor:
    """``W1^T (sigma'(W1 x) * w2)`` for a batch x [B, d] -> [B, d]."""
    d1, _ = sigma_derivatives(act)
    return (d1(x @ W1.T) * w2) @ W1


def hessian_eq2(act: Activation, W1: torch.Tensor, w2: torch.Tensor,
                x: torch.Tensor) -> torch.Tensor:
    """Eq. 2, ``W1^T diag(sigma''(W1 x) * w2) W1``, for a batch x [B, d] -> [B, d, d].

    Example::

        >>> H = hessian_eq2(resolve("silu"), W1, w2, x)   # W1 [h, d], w2 [h], x [B, d]
    """
    _, d2 = sigma_derivatives(act)
    weights = d2(x @ W1.T) * w2  # [B, h]
    return torch.einsum("hi,bh,hj->bij", W1, weights, W1)


# --- the quadratic model's minimal perturbation ------------------------------------------------


@dataclass
class MinimalPerturbation:
    """``min ||delta|| s.t. -c + g^T delta + 1/2 delta^T H delta >= 0``."""

    norm: float  # inf when no delta flips the model
    delta: np.ndarray | None
    hard_case: bool


def _q(c: float, g: np.ndarray, H: np.ndarray, delta: np.ndarray) -> float:
    return float(-c + g @ delta + 0.5 * delta @ H @ delta)


def minimal_perturbation_exact(c: float, g: np.ndarray, H: np.ndarray) -> MinimalPerturbation:
    """Global minimizer via the eigendecomposition (trust-region / secular-equation argument).

    KKT: ``delta(mu) = mu (I - mu H)^{-1} g`` with ``mu >= 0``; ``I - mu H >= 0`` (that is
    ``mu <= 1/lambda_max``) makes the Lagrangian convex, so a KKT point with it is the global
    minimum (S-lemma). In the eigenbasis, ``q(delta(mu)) = -c + sum_i gt_i^2 mu (2 - mu l_i) /
    (2 (1 - mu l_i)^2)`` is strictly increasing in mu on ``[0, 1/lambda_max)``, so its root is
    found by bisection. If q stays negative there (g orthogonal to the top eigenspace: the
    "hard case") the answer is ``delta(1/lambda_max) + t u`` with t from q = 0.
    """
    if c <= 0:
        return MinimalPerturbation(0.0, np.zeros_like(g), False)
    lam, V = np.linalg.eigh(H)
    gt = V.T @ g
    lam_max = float(lam[-1])

    def q_of_mu(mu: float) -> float:
        denom = 1.0 - mu * lam
        return float(-c + np.sum(gt**2 * mu * (2.0 - mu * lam) / (2.0 * denom**2)))

    mu_hi = 1.0 / lam_max if lam_max > 0 else math.inf
    top = lam >= lam_max - 1e-12 * max(1.0, abs(lam_max))
    if lam_max > 0 and np.all(np.abs(gt[top]) <= 1e-14 * max(1.0, np.linalg.norm(g))):
        gt_rest = np.where(top, 0.0, gt)
        delta_t = np.where(top, 0.0, mu_hi * gt_rest / np.where(top, 1.0, 1.0 - mu_hi * lam))
        q_edge = -c + float(gt_rest @ delta_t) + 0.5 * float(np.sum(lam * delta_t**2))
        if q_edge < 0:
            t = math.sqrt(-2.0 * q_edge / lam_max)
            delta_t = delta_t + t * np.eye(len(g))[np.argmax(lam)]
            return MinimalPerturbation(float(np.linalg.norm(delta_t)), V @ delta_t, True)
    if math.isinf(mu_hi):
        # concave or linear model: q is bounded by its limit as mu -> inf
        active = gt != 0
        if np.any(active & (lam >= 0)):
            limit = math.inf  # a linear direction with g_i != 0: q grows without bound
        else:
            limit = -c + float(np.sum(gt[active] ** 2 / (2.0 * np.abs(lam[active]))))
        if limit < 0:
            return MinimalPerturbation(math.inf, None, False)
        hi = 1.0
        while q_of_mu(hi) < 0:
            hi *= 2.0
    else:
        hi = mu_hi
    lo = 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if q_of_mu(mid) < 0:
            lo = mid
        else:
            hi = mid
    mu = hi
    delta_t = mu * gt / (1.0 - mu * lam)
    return MinimalPerturbation(float(np.linalg.norm(delta_t)), V @ delta_t, False)


def minimal_perturbation_slsqp(c: float, g: np.ndarray, H: np.ndarray, *, starts: int = 20,
                               seed: int = 0) -> float:
    """Independent cross-check: SLSQP on ``min ||delta||^2 s.t. q(delta) >= 0`` from many starts.

    Returns the smallest norm among feasible local solutions (inf if none was feasible).
    """
    from scipy.optimize import minimize

    if c <= 0:
        return 0.0
    rng = np.random.default_rng(seed)
    scale = c / max(np.linalg.norm(g), 1e-12)
    best = math.inf
    cons = {"type": "ineq", "fun": lambda d: _q(c, g, H, d), "jac": lambda d: g + H @ d}
    for k in range(starts):
        x0 = rng.standard_normal(len(g)) * scale * (0.5 + k / starts)
        res = minimize(lambda d: float(d @ d), x0, jac=lambda d: 2 * d, constraints=[cons],
                       method="SLSQP", options={"maxiter": 500, "ftol": 1e-14})
        if _q(c, g, H, res.x) >= -1e-9 * max(1.0, c):
            best = min(best, float(np.linalg.norm(res.x)))
    return best


# --- random instances (the `curvtools twolayer` command) ---------------------------------------


@dataclass
class Instance:
    """One random two-layer net and a point x with c = -f(x) >= 0, with everything Lemma 1 needs."""

    c: float
    g_norm: float
    nu: float
    g_dot_u: float
    lower: float
    upper: float
    exact: float
    slsqp: float
    eq2_max_abs_err: float
    grad_max_abs_err: float

    def to_json(self) -> dict:
        return {k: (v if math.isfinite(v) else str(v)) for k, v in self.__dict__.items()}


X_DRAWS = 1000  # points x tried per random net


def random_instance(act: Activation, dim: int, hidden: int, rng: torch.Generator,
                    slsqp_starts: int = 20) -> Instance:
    """Draw W1 ~ N(0, 1/d), w2 ~ N(0, 1/h) and x ~ N(0, I) until f(x) < 0; evaluate Lemma 1.

    f(x) < 0 strictly (c = -f(x) > 0): at c = 0 (a dead ReLU unit gives f = 0) every bound and
    the exact answer are 0, and the instance checks nothing. If all ``X_DRAWS`` points give
    f >= 0, the output layer's sign is flipped at the point with the largest f; if f = 0 at all
    of them, BadInput.
    """
    from curvtools.lemma import lemma1_bounds

    dt = torch.float64
    W1 = torch.randn(hidden, dim, generator=rng, dtype=dt) / math.sqrt(dim)
    w2 = torch.randn(hidden, generator=rng, dtype=dt) / math.sqrt(hidden)
    net = TwoLayerNet(act, W1, w2).to(dt)
    top_x, top_f = None, 0.0
    for _ in range(X_DRAWS):
        x = torch.randn(dim, generator=rng, dtype=dt)
        with torch.no_grad():
            fx = float(net(x))
        if fx < 0:
            break
        if fx > top_f:
            top_x, top_f = x, fx
    else:  # f >= 0 everywhere we looked: flip the sign of the output layer instead
        if top_x is None:
            raise BadInput(f"{act.label} with --dim {dim} --hidden {hidden}: f(x) = 0 at all "
                           f"{X_DRAWS} random points of a random net (dead units), so Lemma 1 "
                           "holds trivially; use a larger --dim/--hidden or another activation")
        w2 = -w2
        net = TwoLayerNet(act, W1, w2).to(dt)
        x, fx = top_x, -top_f
    func = lambda v: net(v)  # noqa: E731
    with warnings.catch_warnings():
        # torch.func.hessian's forward-mode AD registers its decompositions through
        # torch.jit.script, which warns (FutureWarning) on every run: torch's code, not ours
        warnings.filterwarnings("ignore", category=FutureWarning,
                                message=r".*torch\.jit\.script.*deprecated")
        H_ref = torch.func.hessian(func)(x).detach()
    g_ref = torch.func.grad(func)(x).detach()
    H = hessian_eq2(act, W1.detach(), w2.detach(), x[None])[0]
    g = gradient_eq2(act, W1.detach(), w2.detach(), x[None])[0]
    Hn, gn = H.numpy(), g.numpy()
    lam, V = np.linalg.eigh(Hn)
    nu, u = float(lam[-1]), V[:, -1]
    c = -fx
    lower, upper = lemma1_bounds(c, np.linalg.norm(gn), nu, gn @ u)
    exact = minimal_perturbation_exact(c, gn, Hn)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=rng))
    return Instance(c=c, g_norm=float(np.linalg.norm(gn)), nu=nu, g_dot_u=float(gn @ u),
                    lower=float(lower), upper=float(upper), exact=exact.norm,
                    slsqp=minimal_perturbation_slsqp(c, gn, Hn, starts=slsqp_starts, seed=seed),
                    eq2_max_abs_err=float((H - H_ref).abs().max()),
                    grad_max_abs_err=float((g - g_ref).abs().max()))

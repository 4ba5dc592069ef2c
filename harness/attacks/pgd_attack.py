"""Projected gradient descent (Madry et al., 2018): the one PGD of the project.

Training, per-epoch evaluation, ``harness eval`` and the tests all run :func:`pgd`, through
the registry entry ``"pgd"`` (:class:`PGD`, which takes a
:class:`~harness.attacks.threat.ThreatModel`). It follows ``attack_pgd`` of Rice et al.'s
released code (``locuslab/robust_overfitting``, ``train_cifar.py``), which the paper's authors
forked, with these facts read from that code:

* start: l_inf uniform in [-eps, eps]; then clipped so that x + delta stays in [0, 1];
* step: l_inf ``delta + alpha * sign(grad)``, clipped to [-eps, eps], then to [0, 1] - x;
  l_2 ``delta + alpha * grad / ||grad||``, projected onto the eps ball, then clipped to [0, 1] - x;
* restarts: after each restart the per-example loss of the final delta is computed and an
  example's kept delta is replaced when that loss is ``>=`` the best so far (the first restart
  always counts), so the result holds, per example, the highest-loss perturbation found;
* early stop: off by default, as in their training and per-epoch test evaluation. Their
  ``--eval`` mode turned it on: a step then moves only the examples the model still classifies
  correctly. ``early_stop=True`` reproduces that (with masks instead of their ``break``, which
  gives the same deltas without a host sync);
* BatchNorm: the attack runs in whatever mode the caller's model is in. Their training attack ran
  with the model in train mode, so BatchNorm running statistics move at every attack step
  (``bn_mode="train"``); evaluation uses ``bn_mode="eval"``. The final per-example loss used for
  restart selection is computed even with one restart when ``bn_mode="train"``, because their code
  does that forward too and it moves the running statistics (``final_forward=False`` leaves it
  to a caller that makes the same update: ``harness.train`` folds it into its robust forward).

Differences from their code, on purpose:

* gradients are taken with ``torch.autograd.grad(loss, delta)``, so no weight gradient is
  computed (their ``loss.backward()`` computed and discarded them, about 45% extra work);
* the loss is summed over the batch instead of averaged: the per-example gradient direction,
  hence every l_inf step, is the same; the sum avoids scaling gradients by 1/B. The l_2 step's
  ``+ 1e-10`` in ``grad / (||grad|| + 1e-10)`` then meets a B times larger norm: steps differ
  from theirs only where the norm of their (averaged) gradient is below about 1e-8;
* under fp16 autocast the loss is scaled by powers of two and the input gradient unscaled
  (:func:`attack_loss`), so that confidently classified examples do not underflow; the steps are
  fp32's up to fp16 rounding;
* l_2 random start is uniform in the ball (radius ``eps * U**(1/d)``); theirs draws the radius
  uniformly (``eps * U``), which concentrates starts near the centre;
* the random start draws from ``generator`` so that runs are reproducible and resume exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from curvtools.errors import BadInput, shown
from harness.attacks.base import Attack
from harness.attacks.threat import ThreatModel, normalize_norm_name


@contextlib.contextmanager
def _model_mode(model: nn.Module, bn_mode: str) -> Iterator[None]:
    """Put ``model`` in train/eval mode for the attack and restore its previous mode after."""
    was_training = model.training
    if bn_mode == "train":
        model.train()
    elif bn_mode == "eval":
        model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _input_gradients_only(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring gradients for the attack and are restored after.

    Eager autograd computes only the gradients ``autograd.grad(loss, delta)`` asks for anyway;
    a ``torch.compile``d model traces its backward for every input that requires a gradient, so
    without this its attack steps would compute (and throw away) the weight gradients again.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def autocast(device_type: str, dtype: torch.dtype | None):
    """The autocast context of every forward in attacks, training and evaluation.

    ``dtype`` None (or fp32): autocast off, so the forward runs in fp32 even inside another
    autocast region. Otherwise autocast to ``dtype`` without the cast cache: each forward uses
    every weight once, and CUDA graph capture (harness.graphs) does not allow the cache.
    """
    if dtype is None or dtype == torch.float32:
        return torch.autocast(device_type=device_type, enabled=False)
    return torch.autocast(device_type=device_type, dtype=dtype, cache_enabled=False)


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    """l_2 norm of each example, shaped [B, 1, 1, ...] for broadcasting."""
    flat = t.reshape(t.shape[0], -1)
    return flat.norm(p=2, dim=1).reshape(-1, *([1] * (t.dim() - 1)))


def _random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None,
                  rows_of_batch: tuple[int, int, int] | None = None) -> torch.Tensor:
    """A random perturbation in the eps ball (before clipping to the image box), fp32.

    ``rows_of_batch=(start, step, n)``: x is rows ``start::step`` of a batch of ``n``; the start
    is drawn for all ``n`` rows and those rows kept (see :func:`pgd`).
    """
    if rows_of_batch is not None:
        start, step, n = rows_of_batch
        whole = _random_start(x.new_empty((n, *x.shape[1:])), eps, norm, generator)
        return whole[start::step].contiguous(memory_format=_memory_format(x))
    gen_device = generator.device if generator is not None else x.device
    shape = x.shape
    if norm == "linf":
        u = torch.rand(shape, generator=generator, device=gen_device, dtype=torch.float32)
        delta = (2.0 * u - 1.0) * eps
    else:
        direction = torch.randn(shape, generator=generator, device=gen_device,
                                dtype=torch.float32)
        d = direction[0].numel()
        radius = torch.rand((shape[0],), generator=generator, device=gen_device,
                            dtype=torch.float32) ** (1.0 / d)
        radius = radius.reshape(-1, *([1] * (len(shape) - 1)))
        delta = direction / _per_example_norm(direction).clamp_min(1e-12) * radius * eps
    return delta.to(device=x.device).contiguous(memory_format=_memory_format(x))


def draw_starts(x: torch.Tensor, *, eps: float, norm: str, restarts: int = 1,
                random_start: bool = True, generator: torch.Generator | None = None,
                rows_of_batch: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, ...]:
    """The random starts :func:`pgd` would draw for ``x``, one per restart (before clipping).

    ``pgd(..., starts=draw_starts(x, ...))`` equals ``pgd(..., generator=...)`` with the same
    generator state: the starts are drawn in the same order from the same generator. Drawing them
    outside lets a step that replays a CUDA graph (which cannot draw from a ``torch.Generator``)
    run the same attack. Empty tuple when there is no random start (``eps == 0`` or
    ``random_start=False``).
    """
    norm = normalize_norm_name(norm)
    if not random_start or not eps > 0:
        return ()
    return tuple(_random_start(x.detach().float(), eps, norm, generator, rows_of_batch)
                 for _ in range(int(restarts)))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _project(delta: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Clip to the eps ball, then to the image box: x + delta in [0, 1]."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        factor = (eps / _per_example_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        delta = delta * factor
    return torch.maximum(torch.minimum(delta, 1.0 - x), -x)


def _step(delta: torch.Tensor, grad: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta + alpha * grad.sign()
    return delta + alpha * grad / (_per_example_norm(grad) + 1e-10)


def uses_batch_statistics(model: nn.Module) -> bool:
    """Whether a forward of ``model`` couples the examples of a batch: some BatchNorm layer
    normalizes with batch statistics (train mode, or no running statistics kept)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm)
               and (m.training or m.running_mean is None) for m in model.modules())


def _power_of_two_inverse(norm: torch.Tensor) -> torch.Tensor:
    """``2**-round(log2(norm))`` where ``norm > 0``, else 1: multiplying by it is exact. At most
    2**100 (fp16 could not hold such a gradient's terms anyway; fp32 still holds the scale)."""
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    return torch.exp2(-torch.round(torch.log2(safe)).clamp_min(-100.0))


def attack_loss(logits: torch.Tensor, y: torch.Tensor, autocast_dtype: torch.dtype | None = None,
                coupled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, scale)``: the loss whose gradient the attack follows, and its scale [B].

    The loss is the summed cross-entropy of fp32 ``logits`` [B, classes], times ``scale``
    (detached): the gradient of the plain sum with respect to example ``i``'s input is the
    loss's gradient divided by ``scale[i]``. The scale is 1 except under fp16 autocast, where
    it keeps the gradients of the fp16 backward inside fp16's range (smallest normal 6.1e-5):
    a confidently classified example's gradient, about 1e-6 at the logits, would otherwise
    underflow on its way back to the input and the attack would stall there. Scales are powers
    of two, so scaling and unscaling change no bit of a gradient that neither under- nor
    overflows:

    * ``coupled=False`` (examples independent, e.g. BatchNorm in eval mode): per example,
      the inverse of ``||softmax(z) - onehot(y)||``, the norm of its gradient at the logits;
    * ``coupled=True`` (BatchNorm with batch statistics: every example's input gradient takes
      terms from every example's loss): one scale for the batch, from the largest of those
      norms, so that the terms keep their proportions. Under ``torch.distributed`` the largest
      norm is taken over all ranks, since synced BatchNorm couples the ranks' batches too.

    bf16 has fp32's exponent range: it and fp32 use the plain sum.
    """
    per_example = F.cross_entropy(logits, y, reduction="none")
    scale = torch.ones_like(per_example)
    if autocast_dtype == torch.float16:
        with torch.no_grad():
            g = torch.softmax(logits, dim=1)
            g.scatter_add_(1, y[:, None], g.new_full((len(y), 1), -1.0))
            norm = g.norm(dim=1)
            if coupled:
                norm = norm.amax().reshape(1)
                if (torch.distributed.is_available() and torch.distributed.is_initialized()
                        and torch.distributed.get_world_size() > 1):
                    torch.distributed.all_reduce(norm, op=torch.distributed.ReduceOp.MAX)
            scale = _power_of_two_inverse(norm).expand_as(per_example)
    return (per_example * scale).sum(), scale


def _check_args(x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
                restarts: int, bn_mode: str) -> None:
    if not (eps >= 0):
        raise BadInput(f"eps={eps} must be >= 0")
    if not (alpha >= 0):
        raise BadInput(f"alpha={alpha} must be >= 0")
    if int(steps) != steps or steps < 0:
        raise BadInput(f"steps={steps} must be an integer >= 0")
    if int(restarts) != restarts or restarts < 1:
        raise BadInput(f"restarts={restarts} must be an integer >= 1")
    if bn_mode not in ("train", "eval", "keep"):
        raise BadInput(f"bn_mode={shown(bn_mode)}; allowed: train, eval, keep")
    if x.shape[0] != y.shape[0]:
        raise BadInput(f"x has {x.shape[0]} examples but y has {y.shape[0]}")


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float,
        steps: int, restarts: int = 1, norm: str = "linf", random_start: bool = True,
        bn_mode: str = "eval", generator: torch.Generator | None = None,
        autocast_dtype: torch.dtype | None = None, early_stop: bool = False,
        rows_of_batch: tuple[int, int, int] | None = None,
        starts: tuple[torch.Tensor, ...] | None = None,
        final_forward: bool = True) -> torch.Tensor:
    """Untargeted PGD on the cross-entropy loss; returns the perturbation ``delta``.

    Args:
        model: maps images in [0, 1] (normalization inside the model) to logits [B, classes].
        x: clean images in [0, 1], [B, C, H, W] (any memory format; delta follows it).
        y: labels, int64 [B].
        eps: radius of the threat model (l_inf: max abs pixel change; l_2: Euclidean norm),
            in [0, 1] pixel units (8/255 for the paper).
        alpha: step size (2/255 for the paper).
        steps: gradient steps per restart (0: the random start only).
        restarts: independent random starts; per example the highest-loss delta is kept.
        norm: ``"linf"`` or ``"l2"`` (``"l_inf"``/``"l_2"`` accepted).
        random_start: start from a random point of the ball (else from delta = 0).
        bn_mode: ``"train"`` (BatchNorm uses batch statistics and its running statistics move,
            as in the authors' training attack), ``"eval"``, or ``"keep"`` (leave the mode).
            The model's mode is restored afterwards.
        generator: source of the random start (device of the generator may differ from x's).
        autocast_dtype: e.g. ``torch.bfloat16`` to run forward/backward under autocast; delta
            and the update arithmetic stay fp32.
        early_stop: move only the examples still classified correctly (Rice et al.'s eval mode).
        rows_of_batch: data parallel, ``(rank, world_size, n)``: x is rows
            ``rank::world_size`` of a batch of ``n`` examples split across ranks. The random
            start is drawn for all ``n`` rows and this rank's rows kept, so the ranks together
            use exactly the starts one process would draw for the whole batch.
        starts: the random starts, one per restart, drawn beforehand by :func:`draw_starts`
            (then ``generator`` and ``rows_of_batch`` are not used); ``()`` for none.
        final_forward: with one restart and ``bn_mode="train"`` the final forward only moves
            the BatchNorm running statistics (its loss selects nothing); False skips it, for a
            caller that makes that update itself (``harness.train`` folds it into its robust
            forward on the same images).

    Returns:
        delta, fp32, same shape as x, with ``x + delta`` in [0, 1] and ``||delta|| <= eps``.
        No weight gradients are computed and ``model``'s ``.grad`` fields are left untouched.

    Example::

        >>> delta = pgd(model, x, y, eps=8/255, alpha=2/255, steps=10)
        >>> robust_acc = (model(x + delta).argmax(1) == y).float().mean()
    """
    norm = normalize_norm_name(norm)
    _check_args(x, y, eps, alpha, steps, restarts, bn_mode)
    x = x.detach().float()
    y = y.detach()
    if starts is None:
        starts = draw_starts(x, eps=eps, norm=norm, restarts=restarts,
                             random_start=random_start, generator=generator,
                             rows_of_batch=rows_of_batch)
    elif len(starts) not in (0, int(restarts)):
        raise BadInput(f"{len(starts)} random starts given for {restarts} restarts")
    device_type = x.device.type
    with _model_mode(model, bn_mode), _input_gradients_only(model), torch.enable_grad():
        coupled = uses_batch_statistics(model)
        per_example = (-1, *([1] * (x.dim() - 1)))  # a [B] tensor against x's shape
        best_delta = torch.zeros_like(x)
        best_loss = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
        for restart in range(int(restarts)):
            delta = starts[restart] if starts else torch.zeros_like(x)
            delta = torch.maximum(torch.minimum(delta, 1.0 - x), -x)
            for _ in range(int(steps)):
                delta.requires_grad_(True)
                with autocast(device_type, autocast_dtype):
                    logits = model(x + delta)
                loss, scale = attack_loss(logits.float(), y, autocast_dtype, coupled)
                (grad,) = torch.autograd.grad(loss, delta)
                if autocast_dtype == torch.float16:
                    # back to the plain sum's gradient; an fp16 overflow: NaN takes no step,
                    # +-inf the largest float's sign
                    grad = torch.nan_to_num(grad / scale.reshape(per_example), nan=0.0)
                delta = delta.detach()
                new_delta = _project(_step(delta, grad, alpha, norm), x, eps, norm)
                if early_stop:
                    still_correct = (logits.detach().argmax(1) == y)
                    mask = still_correct.reshape(per_example)
                    new_delta = torch.where(mask, new_delta, delta)
                delta = new_delta
            delta = delta.detach()
            if restarts == 1 and (bn_mode != "train" or not final_forward):
                return delta
            with torch.no_grad(), autocast(device_type, autocast_dtype):
                final_loss = F.cross_entropy(model(x + delta).float(), y, reduction="none")
            take = final_loss >= best_loss
            best_delta = torch.where(take.reshape(per_example), delta, best_delta)
            best_loss = torch.maximum(best_loss, final_loss)
    return best_delta


class PGD(Attack):
    """:func:`pgd` as a registry attack: every setting comes from the :class:`ThreatModel`.

    The random starts are drawn by :meth:`starts` (from the caller's generator) and passed to
    :meth:`perturb`, so that ``perturb`` draws no random numbers and never syncs the host: on
    CUDA the caller replays it from a CUDA graph (``graphable``), and data-parallel ranks draw
    exactly the starts one process would (``rows_of_batch``).

    Example::

        >>> attack = PGD(ThreatModel.from_255(eps_255=8, step_255=2, steps=10))
        >>> delta = attack.perturb(model, x, y, *attack.starts(x, generator))
    """

    name = "pgd"
    graphable = True
    honours = frozenset({"norm", "eps", "step", "steps", "restarts", "random_start", "bn_mode"})

    def __init__(self, threat: ThreatModel, *, early_stop: bool = False):
        super().__init__(threat)
        self.early_stop = early_stop

    def starts(self, x: torch.Tensor, generator: torch.Generator | None = None,
               rows_of_batch: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, ...]:
        t = self.threat
        return draw_starts(x, eps=t.eps, norm=t.norm, restarts=t.restarts,
                           random_start=t.random_start, generator=generator,
                           rows_of_batch=rows_of_batch)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *starts: torch.Tensor,
                autocast_dtype: torch.dtype | None = None,
                final_forward: bool = True) -> torch.Tensor:
        t = self.threat
        return pgd(model, x, y, eps=t.eps, alpha=t.step, steps=t.steps, restarts=t.restarts,
                   norm=t.norm, random_start=t.random_start, bn_mode=t.bn_mode,
                   autocast_dtype=autocast_dtype, early_stop=self.early_stop,
                   starts=starts or None,  # none given: draw them here (global RNG)
                   final_forward=final_forward)

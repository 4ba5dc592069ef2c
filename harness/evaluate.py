"""The evaluation kernel: clean and adversarial loss and accuracy of a model over batches.

:func:`evaluate_robust` runs a model (eval mode) over a set of batches and returns mean
cross-entropy and accuracy, clean and under attack; sums stay on the device until the end, and
the first batch is checked for gradient masking (:func:`zero_input_gradients`,
:class:`GradientMaskingWarning`). :func:`evaluate_sharded` splits it over data-parallel ranks.
Training's per-epoch curves and ``harness eval`` (:mod:`harness.eval_checkpoint`) both call it.

Example::

    >>> attack = make_attack("pgd", ThreatModel.from_255(eps_255=8, step_255=2, steps=20))
    >>> result = evaluate_robust(model, [(x, y)], attack)
    >>> result["clean_acc"], result["robust_acc"]
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from curvtools.errors import BadInput
from harness.attacks import Attack, attack_loss, autocast, uses_batch_statistics
from harness.distributed import DistContext, all_reduce_sum, broadcast_buffers

# More than this share of examples with an exactly zero input gradient means a gradient attack
# cannot move them (sign(0) = 0): robust accuracy is then an overestimate (gradient masking).
ZERO_GRADIENT_WARN_SHARE = 0.10
ZERO_GRADIENT_MIN_CORRECT = 10  # fewer correct examples bound the overestimate anyway


class GradientMaskingWarning(UserWarning):
    """Many examples have an exactly zero input gradient: PGD's robust accuracy is not to be
    trusted."""


def _batches_of(batches: Any) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """``DeviceBatches`` in stored order (no augmentation), or any iterable of (x, y)."""
    return batches.in_order() if hasattr(batches, "in_order") else batches


def zero_input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         autocast_dtype: torch.dtype | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(zero, correct)``: device tensors (no host sync) counting the correctly classified
    examples of ``x`` [B, C, H, W] whose cross-entropy input gradient is exactly zero, and all
    correctly classified ones. Only those matter: a misclassified example is never robust, and
    its gradient (p - onehot) cannot vanish."""
    with torch.enable_grad():
        x = x.detach().float().requires_grad_(True)
        with autocast(x.device.type, autocast_dtype):
            logits = model(x)
        # the gradient the attack sees, up to a positive factor per example
        loss, _ = attack_loss(logits.float(), y, autocast_dtype, uses_batch_statistics(model))
        (grad,) = torch.autograd.grad(loss, x)
    correct = logits.detach().argmax(1) == y
    zero = grad.flatten(1).abs().amax(1) == 0
    return (zero & correct).sum(), correct.sum()


def _stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor,
           autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """Summed clean loss, clean correct, summed robust loss, robust correct (float64 [4])."""
    with torch.no_grad(), autocast(x.device.type, autocast_dtype):
        clean_logits = model(x).float()
        robust_logits = model((x + delta).clamp(0.0, 1.0)).float()
    return torch.stack([
        F.cross_entropy(clean_logits, y, reduction="sum").double(),
        (clean_logits.argmax(1) == y).sum().double(),
        F.cross_entropy(robust_logits, y, reduction="sum").double(),
        (robust_logits.argmax(1) == y).sum().double()])


def _batch_stats(model: nn.Module, attack: Attack, autocast_dtype: torch.dtype | None,
                 x: torch.Tensor, y: torch.Tensor, *starts: torch.Tensor) -> torch.Tensor:
    """``attack`` from the given starts, then :func:`_stats`."""
    delta = attack.perturb(model, x, y, *starts, autocast_dtype=autocast_dtype)
    return _stats(model, x, y, delta, autocast_dtype)


def evaluate_robust(model: nn.Module, batches: Any, attack: Attack, *,
                    generator: torch.Generator | None = None,
                    autocast_dtype: torch.dtype | None = None,
                    rows_of_batch: Callable[[], tuple[int, int, int]] | None = None,
                    on_batch: Callable[[], None] | None = None,
                    graph_cache: dict | None = None,
                    masking_check: bool = True) -> dict[str, float]:
    """Clean and robust loss/accuracy of ``model`` (put in eval mode) over ``batches``.

    ``batches``: a ``harness.data.DeviceBatches`` (served in order, unaugmented) or an iterable
    of (x [B, C, H, W] in [0, 1], y [B]). ``attack``: from the registry
    (:func:`harness.attacks.make_attack`); its random starts come from ``generator``
    (``rows_of_batch()``: data parallel, see :meth:`harness.attacks.pgd_attack.PGD.starts`).
    Returns ``{"clean_loss", "clean_acc", "robust_loss", "robust_acc", "n",
    "zero_grad_share"}`` (accuracies are fractions; losses mean cross-entropy). The model's
    train/eval mode is restored afterwards. ``zero_grad_share``: the share of the first batch's
    correctly classified examples whose input gradient is exactly zero (one extra backward per
    call); above :data:`ZERO_GRADIENT_WARN_SHARE` (of at least
    :data:`ZERO_GRADIENT_MIN_CORRECT` examples) a :class:`GradientMaskingWarning` is issued.
    ``masking_check=False`` skips that backward (``zero_grad_share`` is then None): training's
    per-epoch evaluation, which records only the four metrics, would otherwise spend a sixth of
    its time on it. The metrics do not depend on it (it draws no random numbers and changes no
    state).
    ``graph_cache``: a dict kept by the caller across calls; on CUDA the per-batch attack and
    forwards of a ``graphable`` attack are then replayed from a CUDA graph
    (:class:`harness.graphs.GraphedStep`) that later calls with the same model and attack
    reuse (``harness train`` evaluates every epoch).
    """
    batch_stats = functools.partial(_batch_stats, model, attack, autocast_dtype)
    if graph_cache is not None and attack.graphable:
        from harness.graphs import GraphedStep

        # the model itself (not its id) in the key: a cached graph keeps its model alive
        key = (model, attack.name, attack.threat, autocast_dtype,
               getattr(attack, "early_stop", False))
        batch_stats = graph_cache.setdefault(key, GraphedStep(batch_stats))

    was_training = model.training
    model.eval()
    sums = None
    n = 0
    zero_grads = checked = None
    for x, y in _batches_of(batches):
        if sums is None:
            sums = torch.zeros(4, device=x.device, dtype=torch.float64)
            if masking_check:
                zero_grads, checked = zero_input_gradients(model, x, y, autocast_dtype)
        starts = attack.starts(x, generator, rows_of_batch() if rows_of_batch else None)
        sums += batch_stats(x, y, *starts)
        n += y.shape[0]
        if on_batch is not None:
            on_batch()
    model.train(was_training)
    if n == 0:
        raise BadInput("evaluation set is empty")
    clean_loss, clean_acc, robust_loss, robust_acc = (sums / n).tolist()
    if not masking_check:
        return {"clean_loss": clean_loss, "clean_acc": clean_acc, "robust_loss": robust_loss,
                "robust_acc": robust_acc, "n": n, "zero_grad_share": None}
    checked = int(checked)
    zero_grad_share = int(zero_grads) / checked if checked else 0.0
    if zero_grad_share > ZERO_GRADIENT_WARN_SHARE and checked >= ZERO_GRADIENT_MIN_CORRECT:
        warnings.warn(f"{100 * zero_grad_share:.0f}% of {checked} correctly classified examples "
                      f"checked have an exactly zero input gradient: gradient attacks cannot "
                      f"move them, so robust accuracy ({100 * robust_acc:.1f}%) is likely "
                      f"overestimated (gradient masking)", GradientMaskingWarning, stacklevel=2)
    return {"clean_loss": clean_loss, "clean_acc": clean_acc, "robust_loss": robust_loss,
            "robust_acc": robust_acc, "n": n, "zero_grad_share": zero_grad_share}


# --- data parallel: sharded evaluation ----------------------------------------------------------


class _RowShards:
    """Rows ``rank::world_size`` of every in-order evaluation batch; remembers the batch size."""

    def __init__(self, batches: Any, ctx: DistContext):
        self.batches, self.ctx = batches, ctx
        self.batch_rows = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        whole = self.batches.in_order() if hasattr(self.batches, "in_order") else self.batches
        for x, y in whole:
            self.batch_rows = int(y.shape[0])
            yield x[self.ctx.rank::self.ctx.world_size], y[self.ctx.rank::self.ctx.world_size]


def evaluate_sharded(model: nn.Module, batches: Any, ctx: DistContext, attack: Any, *,
                     generator: torch.Generator | None = None,
                     autocast_dtype: torch.dtype | None = None,
                     on_batch: Callable[[], None] | None = None,
                     graph_cache: dict | None = None,
                     masking_check: bool = True) -> dict[str, float]:
    """``harness.evaluate.evaluate_robust`` split over ranks, with the same result.

    Every rank holds the whole set; rank ``r`` evaluates rows ``r::world_size`` of each batch,
    attacking (``attack``, from :func:`harness.attacks.make_attack`) with the random starts one
    process would draw for that batch, and the loss and correct-count sums are all-reduced.
    Returns ``{"clean_loss", "clean_acc", "robust_loss", "robust_acc", "n"}`` over the whole
    set, identical on every rank. Rank 0's BatchNorm running statistics are broadcast first so
    all ranks evaluate the model that is saved.
    """
    if not ctx.enabled:
        return evaluate_robust(model, batches, attack, generator=generator,
                               autocast_dtype=autocast_dtype, on_batch=on_batch,
                               graph_cache=graph_cache, masking_check=masking_check)
    broadcast_buffers(model, ctx)
    shards = _RowShards(batches, ctx)
    local = evaluate_robust(model, shards, attack, generator=generator,
                            autocast_dtype=autocast_dtype, on_batch=on_batch,
                            masking_check=masking_check,
                            rows_of_batch=lambda: (ctx.rank, ctx.world_size, shards.batch_rows))
    keys = ("clean_loss", "clean_acc", "robust_loss", "robust_acc")
    device = next(model.parameters()).device
    sums = torch.tensor([local[k] * local["n"] for k in keys] + [local["n"]],
                        dtype=torch.float64, device=device)
    sums = all_reduce_sum(sums, ctx).tolist()
    n = sums[-1]
    return {**{k: s / n for k, s in zip(keys, sums[:-1], strict=True)}, "n": int(round(n))}

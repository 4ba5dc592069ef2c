"""Data-parallel training under ``torchrun``: process group, sharding, SyncBatchNorm, reductions.

``torchrun --nproc_per_node N -m harness.cli train ...`` starts N processes with the environment
variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`setup` reads them, starts the process group (NCCL on CUDA, gloo on CPU) and pins each
process to its GPU (``cuda:LOCAL_RANK``). Without them (a plain ``harness train``) it returns
the single-process context and does nothing else, so every helper here is a no-op there.

What data parallel means here, and why the result equals one process with the same global batch:

* Batches: the global batch (128) is split over the ranks, ``128 / world_size`` each
  (:func:`per_rank_batch` rejects other sizes). ``harness.data.DeviceBatches`` gives rank ``r``
  rows ``r::world_size`` of every global batch of the single-process epoch order.
* Attack random starts: every rank seeds the same generator and draws the start for the whole
  global batch, keeping its rows (``pgd(..., rows_of_batch=...)``), so the ranks attack with
  exactly the starts one process would use.
* Gradients: ``DistributedDataParallel`` averages them; with equal shards the average of the
  per-rank mean losses is the global mean loss.
* BatchNorm: without ``sync_bn`` each rank normalizes with the statistics of its own shard (the
  usual DDP behaviour, and the running statistics of rank 0 are the ones saved). With
  ``sync_bn`` the statistics are those of the global batch: ``nn.SyncBatchNorm`` on CUDA and
  :class:`CrossRankBatchNorm` on CPU (torch's SyncBatchNorm has no CPU kernels). In train mode
  every BatchNorm forward is then a collective, so all ranks must run the same number of forwards:
  they do, because the shards have equal sizes and PGD runs a fixed number of steps (training
  never uses ``early_stop``). The attack also runs on the plain module (not the DDP wrapper):
  its input gradients need no weight-gradient reduction.
* Evaluation: each rank evaluates rows ``r::world_size`` of every evaluation batch (same
  random starts as one process, as above) and the sums are all-reduced
  (:func:`harness.evaluate.evaluate_sharded`).
  Chosen over "rank 0 evaluates everything" because evaluation is about a third of an epoch's
  work: on 8 GPUs rank 0 alone would take longer to evaluate than all ranks take to train.
* Files: only rank 0 writes (``DistContext.is_main``); every rank reads ``last.pt`` to resume.

Example (inside ``harness.train``)::

    >>> ctx, device = setup(torch.device("cuda"))       # cuda:LOCAL_RANK under torchrun
    >>> net = wrap_model(net, ctx, device, sync_bn=True)
"""

from __future__ import annotations

import atexit
import datetime
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from curvtools.errors import BadInput


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, GPU ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0

    def rows_of_batch(self, local_size: int) -> tuple[int, int, int] | None:
        """``pgd``'s ``rows_of_batch`` for a training batch of ``local_size`` rows on this rank.

        Training shards have equal sizes, so the global batch has ``local_size * world_size``
        rows. None in a single process (``pgd`` draws for its own batch).
        """
        if not self.enabled:
            return None
        return (self.rank, self.world_size, local_size * self.world_size)


SINGLE = DistContext()


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise BadInput(f"environment variable {name}={value!r} must be an integer "
                       f"(set by torchrun)") from None


def context_from_env() -> DistContext:
    """The :class:`DistContext` described by torchrun's environment variables (else single).

    >>> os.environ.update(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1"); context_from_env()
    DistContext(rank=1, world_size=2, local_rank=1)
    """
    if "WORLD_SIZE" not in os.environ:
        return SINGLE
    world_size = _env_int("WORLD_SIZE")
    rank = _env_int("RANK") if "RANK" in os.environ else 0
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise BadInput(f"RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}: "
                       f"need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    return DistContext(rank, world_size, local_rank)


def setup(device: torch.device) -> tuple[DistContext, torch.device]:
    """Start the process group when launched by torchrun; returns (context, this rank's device).

    Single process: ``(SINGLE, device)`` unchanged. Data parallel on CUDA: the device becomes
    ``cuda:LOCAL_RANK`` (``cuda:0`` when the process sees one GPU) and the backend NCCL; on CPU
    the backend is gloo. A process group that
    is already initialized (tests that spawn their own processes) is reused. The group is
    destroyed at interpreter exit.
    """
    ctx = context_from_env()
    if not ctx.enabled:
        return SINGLE, device
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        # One visible GPU per process (SLURM's per-task GPU binding): that one is ours.
        index = 0 if visible == 1 else ctx.local_rank
        if index >= visible:
            raise BadInput(f"LOCAL_RANK={ctx.local_rank} but only {visible} GPUs are visible; "
                           f"use --nproc_per_node <= the GPU count")
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size,
                                timeout=datetime.timedelta(minutes=30))
        atexit.register(_destroy)
    elif dist.get_world_size() != ctx.world_size or dist.get_rank() != ctx.rank:
        raise BadInput(f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) "
                       f"disagrees with RANK={ctx.rank}, WORLD_SIZE={ctx.world_size}")
    return ctx, device


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(global_batch: int, ctx: DistContext) -> int:
    """The batch each rank trains on: ``global_batch / world_size`` (must divide exactly).

    >>> per_rank_batch(128, DistContext(0, 4, 0))
    32
    """
    if global_batch % ctx.world_size:
        raise BadInput(f"batch_size={global_batch} is not divisible by the {ctx.world_size} "
                       f"processes; the global batch is split evenly (e.g. 128 over 1, 2, 4 "
                       f"or 8 processes)")
    return global_batch // ctx.world_size


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum of ``t`` over ranks (in place; returns ``t``); any shape. No-op in one process."""
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    Without SyncBatchNorm the attack's train-mode forwards move each rank's running statistics
    differently; evaluation and the checkpoint use rank 0's, so the ranks must agree first.
    """
    if ctx.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


# --- SyncBatchNorm -----------------------------------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: the gradient of a rank's input is the sum over ranks of
    the gradients arriving at the output (every rank's loss depends on the summed value)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all ranks, on any device (CPU with gloo included).

    torch's ``nn.SyncBatchNorm`` computes the same thing but only on GPUs. In train mode with
    more than one process the batch statistics are reduced over ranks in two passes (sum ->
    mean, then sum of squared deviations -> biased variance, both accumulated in float64), the
    output is ``(x - mean) / sqrt(var + eps) * weight + bias``, and the running statistics move
    exactly as ``nn.BatchNorm2d``'s would over the global batch (unbiased variance). Its
    gradient flows through the reductions, so it equals the single-process gradient. In eval
    mode, or in one process, it is ``nn.BatchNorm``. Same parameters and buffers (same
    ``state_dict`` keys) as ``nn.BatchNorm2d``.

    Example::

        >>> net = convert_sync_batchnorm(net, torch.device("cpu"))
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        synced = (self.training and dist.is_available() and dist.is_initialized()
                  and dist.get_world_size() > 1)
        if not synced:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        x64 = x.double()
        local = torch.cat([x64.sum(dims), x64.new_full((1,), x.numel() // x.shape[1])])
        total = _AllReduceSum.apply(local)
        n = total[-1].detach()
        mean = total[:-1] / n
        centered = x64 - mean.reshape(shape)
        var = _AllReduceSum.apply((centered * centered).sum(dims)) / n
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), float(n))
        out = centered * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.double().reshape(shape) + self.bias.double().reshape(shape)
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average, as nn.BatchNorm
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        unbiased = var * (n / max(n - 1.0, 1.0))
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm layer by a synchronized one, keeping parameters and buffers.

    CUDA: ``nn.SyncBatchNorm.convert_sync_batchnorm``; other devices: :class:`CrossRankBatchNorm`.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_to_cross_rank(module, device)


def _convert_to_cross_rank(module: nn.Module, device: torch.device) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and \
            not isinstance(module, CrossRankBatchNorm):
        new = CrossRankBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats).to(device)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert_to_cross_rank(child, device))
    return module


def wrap_model(net: nn.Module, ctx: DistContext, device: torch.device,
               sync_bn: bool = False) -> tuple[nn.Module, nn.Module]:
    """(plain module, module to train through): ``(net, DDP(net))`` in data parallel.

    ``sync_bn`` converts BatchNorm layers first (in place in ``net``'s tree). Single process:
    ``(net, net)``. Running statistics: with SyncBatchNorm they agree on all ranks, so DDP does
    not broadcast buffers each step; without it DDP broadcasts rank 0's before each forward.
    """
    if not ctx.enabled:
        return net, net
    if sync_bn:
        net = convert_sync_batchnorm(net, device)
    device_ids = [device.index] if device.type == "cuda" else None
    ddp_class = nn.parallel.DistributedDataParallel
    # torch >= 2.12 renamed broadcast_buffers (and deprecated the old name)
    sync_key = ("forward_sync_buffers" if "forward_sync_buffers"
                in inspect.signature(ddp_class.__init__).parameters else "broadcast_buffers")
    ddp = ddp_class(net, device_ids=device_ids, **{sync_key: not sync_bn})
    return net, ddp

"""One epoch of the protocol: the engine (model, optimizer, precision), the training step, the
per-epoch evaluation and input-Hessian summary. ``harness.train`` composes these into a run;
the step's order and its BatchNorm bookkeeping are explained in its module docstring.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import TrainConfig
from harness.distributed import (
    SINGLE,
    DistContext,
    all_reduce_sum,
    wrap_model,
)
from harness.evaluate import evaluate_sharded
from harness.runtime import (
    allow_recompiles,
    loss_scaler,
    sync,
    uses_cuda_graphs,
    zero_momentum_buffers,
)

# Streams of random numbers derived from (seed, epoch, stream): independent of each other.
if TYPE_CHECKING:
    from harness.report import Reporter
    from harness.run_data import RunData

STREAM_TRAIN_ATTACK, STREAM_VAL_ATTACK, STREAM_TEST_ATTACK = 101, 102, 103


def piecewise_lr(t: float, cfg: TrainConfig) -> float:
    """Learning rate at fractional epoch ``t`` (Rice et al.'s piecewise schedule, generalized).

    ``lr * gamma ** (number of milestones m with t >= m)``. With the defaults this is Rice's
    ``0.1 if t/200 < 0.5 else 0.01 if t/200 < 0.75 else 0.001``. Training evaluates it at
    ``t = epoch + (i + 1) / n_batches`` (0-based epoch, batch i).
    """
    drops = sum(1 for m in cfg.milestones() if t >= m)
    # lr / 10**drops rather than lr * 0.1**drops: the same floats as Rice's lr_max / 10.
    return cfg.lr / (1.0 / cfg.lr_gamma) ** drops


# --- data ------------------------------------------------------------------------------------


@dataclass
class Engine:
    """What a training step needs: the model (raw and possibly compiled), optimizer, settings."""

    cfg: TrainConfig
    net: nn.Module            # the module whose state_dict is saved
    forward: nn.Module        # net or torch.compile(net)
    optimizer: torch.optim.Optimizer
    device: torch.device
    amp: torch.dtype | None
    # Data parallel: DDP(net) (maybe compiled) for the training forward/backward; the attack,
    # the clean forward and evaluation use ``forward`` (no gradient reduction needed).
    train_forward: nn.Module | None = None
    dist: DistContext = SINGLE
    cuda_graphs: bool = False
    # dynamic loss scaling of the training backward, enabled for fp16 only (see loss_scaler)
    scaler: torch.amp.GradScaler | None = None
    _steps: tuple | None = None
    eval_graphs: dict | None = None  # harness.evaluate.evaluate_robust's graph cache
    # the attacks of training and per-epoch evaluation: None builds cfg.train_attack /
    # cfg.eval_attack from the harness.attacks registry (build_attacks)
    train_attack: Any = None
    eval_attack: Any = None

    def steps(self) -> tuple[Callable, Callable]:
        """``(robust, clean)`` of :class:`TrainStep`, replayed from CUDA graphs when enabled.

        Built once per engine, so the graphs captured in the first epoch serve every epoch.
        """
        if self._steps is None:
            step = TrainStep(self)
            if self.cuda_graphs:
                from harness.graphs import GraphedStep

                self._steps = (GraphedStep(step.robust), GraphedStep(step.clean))
            else:
                self._steps = (step.robust, step.clean)
        return self._steps

    def __post_init__(self):
        if self.train_attack is None or self.eval_attack is None:
            train_attack, eval_attack = build_attacks(self.cfg)
            if self.train_attack is None:
                self.train_attack = train_attack
            if self.eval_attack is None:
                self.eval_attack = eval_attack
        if self.scaler is None:
            self.scaler = loss_scaler(self.amp, self.device)
        if self.scaler.is_enabled():
            zero_momentum_buffers(self.optimizer)

    def autocast(self):
        from harness.attacks import autocast

        return autocast(self.device.type, self.amp)


def build_attacks(cfg: TrainConfig, num_classes: int = 10) -> tuple[Any, Any]:
    """``(training attack, per-epoch evaluation attack)``: ``cfg.train_attack`` under
    :meth:`TrainConfig.train_threat` and ``cfg.eval_attack`` under
    :meth:`TrainConfig.eval_threat`, from the :mod:`harness.attacks` registry (seeded with
    ``cfg.seed`` where an attack draws its own random numbers)."""
    from harness.attacks import make_attack

    return (make_attack(cfg.train_attack, cfg.train_threat(), num_classes=num_classes,
                        seed=cfg.seed),
            make_attack(cfg.eval_attack, cfg.eval_threat(), num_classes=num_classes,
                        seed=cfg.seed))


def _takes_final_forward(attack: Any) -> bool:
    """Whether ``attack.perturb`` can skip its restart-selection forward (``final_forward``:
    the one PGD), which the training step then folds into its robust forward."""
    return "final_forward" in inspect.signature(attack.perturb).parameters


def attack_generator(device: torch.device, seed: int, epoch: int, stream: int) -> torch.Generator:
    from harness.data import epoch_seed

    return torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch, stream))


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def running_stats_count_twice(layers: list[nn.modules.batchnorm._BatchNorm]):
    """Train-mode forwards inside move BatchNorm running statistics as if each ran twice.

    Two momentum-``m`` updates with the same batch statistics ``s`` give
    ``(1-m)^2 r + (1 - (1-m)^2) s``: one update with momentum ``1 - (1-m)^2``. The counter
    ``num_batches_tracked`` gets its second increment on a normal exit. Layers need a numeric
    momentum; it is restored on any exit.
    """
    saved = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 1.0 - (1.0 - m.momentum) ** 2
    try:
        yield
        with torch.no_grad():
            for m in layers:
                m.num_batches_tracked.add_(1)
    finally:
        for m, momentum in zip(layers, saved, strict=True):
            m.momentum = momentum


class TrainStep:
    """One training step of the protocol, split where the optimizer steps (see the module doc).

    ``robust(x, y, *starts)``: the attack from the given random starts, then the robust forward
    and backward; returns ``(stats [2], *grads)`` with stats = (summed robust loss, robust
    correct count) and the parameter gradients. ``clean(x, y)``: the train-mode clean forward
    after the optimizer step; returns stats = (summed clean loss, clean correct count). Neither
    synchronizes with the host or draws random numbers, so on CUDA each is replayed from a CUDA
    graph (:class:`harness.graphs.GraphedStep`) and the optimizer step runs between them.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.params = list(engine.net.parameters())
        # fold the attack's restart-selection forward into the robust forward (module doc)
        cfg = engine.cfg
        self.batchnorms = _batchnorms(engine.net)
        # only an attack that can skip that forward (final_forward) has one to fold
        self.final_forward_option = _takes_final_forward(engine.train_attack)
        self.fold_selection_forward = (
            self.final_forward_option and cfg.train_restarts == 1 and cfg.attack_bn == "train"
            and all(m.momentum is not None for m in self.batchnorms))

    def robust(self, x: torch.Tensor, y: torch.Tensor, *starts: torch.Tensor):
        engine = self.engine
        model = engine.forward
        fold = self.fold_selection_forward
        options = {"final_forward": not fold} if self.final_forward_option else {}
        delta = engine.train_attack.perturb(model, x, y, *starts, autocast_dtype=engine.amp,
                                            **options)
        x_adv = (x + delta).clamp_(0.0, 1.0)
        twice = (running_stats_count_twice(self.batchnorms) if fold
                 else contextlib.nullcontext())
        with engine.autocast(), twice:
            robust_logits = (model if engine.train_forward is None
                             else engine.train_forward)(x_adv)
        robust_loss = F.cross_entropy(robust_logits.float(), y)
        engine.optimizer.zero_grad(set_to_none=True)
        engine.scaler.scale(robust_loss).backward()
        b = y.shape[0]
        stats = torch.stack([robust_loss.detach().double() * b,
                             (robust_logits.detach().argmax(1) == y).sum().double()])
        return (stats, *[p.grad for p in self.params])

    def clean(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        engine = self.engine
        with torch.no_grad(), engine.autocast():
            clean_logits = engine.forward(x)  # train mode, after the step: Rice et al.'s numbers
        clean_loss = F.cross_entropy(clean_logits.float(), y)
        return torch.stack([clean_loss.double() * y.shape[0],
                            (clean_logits.argmax(1) == y).sum().double()])


def train_one_epoch(engine: Engine, batches, epoch: int,
                    on_batch: Callable[[], None] | None = None) -> dict[str, float]:
    """One epoch (0-based ``epoch``) of adversarial training with ``engine.train_attack`` (PGD
    by default); returns the train metrics and last lr.

    Sums stay on the device and are read once at the end: no host sync per step. On CUDA the two
    halves of the step (:class:`TrainStep`) replay CUDA graphs captured in the first epoch.
    """
    cfg = engine.cfg
    robust, clean = engine.steps()
    n_batches = len(batches)
    generator = attack_generator(engine.device, cfg.seed, epoch, STREAM_TRAIN_ATTACK)
    sums = torch.zeros(4, device=engine.device, dtype=torch.float64)
    count = 0
    lr = cfg.lr
    engine.forward.train()
    for i, (x, y) in enumerate(batches.epoch(epoch, cfg.seed, augment=cfg.augment)):
        lr = piecewise_lr(epoch + (i + 1) / n_batches, cfg)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        starts = engine.train_attack.starts(x, generator, engine.dist.rows_of_batch(y.shape[0]))
        robust_stats, *grads = robust(x, y, *starts)
        for p, g in zip(engine.net.parameters(), grads, strict=True):
            p.grad = g  # a replay writes the captured gradient tensors: point .grad at them
        engine.scaler.step(engine.optimizer)  # optimizer.step(), unless fp16 gradients overflowed
        engine.scaler.update()
        clean_stats = clean(x, y)
        sums += torch.cat([robust_stats, clean_stats])
        count += y.shape[0]
        if on_batch is not None:
            on_batch()
    if engine.dist.enabled:  # the whole global batch's numbers, the same on every rank
        totals = all_reduce_sum(torch.cat([sums, sums.new_tensor([count])]), engine.dist)
        sums, count = totals[:4], totals[4].item()
    values = (sums / count).tolist()
    out = {"lr": lr, "train_clean_loss": values[2], "train_clean_acc": values[3],
           "train_robust_loss": values[0], "train_robust_acc": values[1]}
    if engine.scaler.is_enabled():
        out["loss_scale"] = engine.scaler.get_scale()
    return out


def evaluate_part(engine: Engine, batches, epoch: int, stream: int, prefix: str,
                  on_batch: Callable[[], None] | None = None) -> dict[str, float]:
    """Clean and robust metrics of a set under ``engine.eval_attack`` (PGD by default, with
    ``eval_steps``, ``eval_restarts``), model in eval mode."""
    cfg = engine.cfg
    result = evaluate_sharded(
        engine.forward, batches, engine.dist, engine.eval_attack,
        generator=attack_generator(engine.device, cfg.seed, epoch, stream),
        autocast_dtype=engine.amp, on_batch=on_batch,
        graph_cache=engine.eval_graphs if engine.cuda_graphs else None,
        masking_check=False)  # the row keeps the four metrics only
    return {f"{prefix}_{key}": result[key] for key in
            ("clean_loss", "clean_acc", "robust_loss", "robust_acc")}


def hessian_summary(net: nn.Module, batches, n: int) -> dict[str, float]:
    """Batch mean and median of the input-Hessian lambda_max on the first ``n`` images.

    Uses ``curvtools.spectra.input_hessian_eigenvalues`` (eval mode) with the settings these
    logged numbers were always made with -- float32 products and loss, the ``"eigenvalue"``
    estimate stop rule, a check every 2 steps, compaction at every check (the library's defaults
    until 2026-12-06) -- so they stay bit-identical; batch means and medians need no per-image
    bound.
    """
    from curvtools.spectra import input_hessian_eigenvalues

    was_training = net.training
    net.eval()
    values = []
    taken = 0
    for x, y in batches.in_order():
        if taken >= n:
            break
        x, y = x[: n - taken].contiguous(), y[: n - taken]
        result = input_hessian_eigenvalues(net, x, y, which=("max",), dtype=torch.float32,
                                           loss_dtype=torch.float32, stop="eigenvalue",
                                           check_every=2, compact=True)
        values.append(result.lambda_max.detach().float().cpu())
        taken += len(y)
    net.train(was_training)
    lam = torch.cat(values)
    return {"hessian_lambda_max_mean": float(lam.mean()),
            "hessian_lambda_max_median": float(lam.median())}



def build_engine(cfg: TrainConfig, model_config: dict, device: torch.device,
                  amp: torch.dtype | None, channels_last: bool,
                  dist: DistContext = SINGLE, *, net: nn.Module | None = None) -> Engine:
    """The engine of a run: the model on ``device``, maybe compiled and data parallel, and SGD.

    ``net``: a model built by the caller (``harness.fit``); None builds ``model_config`` with
    :func:`harness.models.build_model`, initialized from ``cfg.seed``. Either way the global
    RNG is seeded from ``cfg.seed`` first (a given ``net`` keeps its weights).
    """
    torch.manual_seed(cfg.seed)
    if net is None:
        from harness.models import build_model

        net = build_model(model_config)
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    net, ddp = wrap_model(net, dist, device, sync_bn=cfg.sync_bn)  # (net, net) in 1 process
    if cfg.compile:
        allow_recompiles()
    mode = None if cfg.compile_mode == "default" else cfg.compile_mode

    def maybe_compiled(module: nn.Module) -> nn.Module:
        return torch.compile(module, mode=mode) if cfg.compile else module

    forward = maybe_compiled(net)
    train_forward = maybe_compiled(ddp) if dist.enabled else None
    extra = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, **extra)
    train_attack, eval_attack = build_attacks(cfg, int(model_config.get("num_classes", 10)))
    return Engine(cfg, net, forward, optimizer, device, amp, train_forward, dist,
                  cuda_graphs=uses_cuda_graphs(cfg, device, dist,
                                               graphable=train_attack.graphable),
                  eval_graphs={}, train_attack=train_attack, eval_attack=eval_attack)


def evaluates(cfg: TrainConfig, epoch: int) -> bool:
    """Whether 0-based ``epoch`` runs the per-epoch validation and test evaluation: every
    ``eval_every`` epochs and always the last one. Each evaluation draws its attack starts from
    its own (seed, epoch, stream) generator and changes no model state, so skipping some changes
    nothing else of the run (its weights are the same bit for bit)."""
    return (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs


def run_epoch(engine: Engine, data: RunData, epoch: int, reporter: Reporter) -> dict:
    cfg = engine.cfg
    started = time.perf_counter()
    train = train_one_epoch(engine, data.train, epoch, on_batch=reporter.train_step)
    sync(engine.device)
    train_seconds = time.perf_counter() - started
    row: dict[str, Any] = {"epoch": epoch + 1, "lr": train.pop("lr"),
                           "train_seconds": round(train_seconds, 3), "eval_seconds": 0.0}
    row.update(train)
    if not math.isfinite(row["train_robust_loss"]):
        return row | {f"{p}_{m}": math.nan for p in ("val", "test")
                      for m in ("clean_loss", "clean_acc", "robust_loss", "robust_acc")}
    started = time.perf_counter()
    reporter.start_eval()
    if evaluates(cfg, epoch):
        row.update(evaluate_part(engine, data.val, epoch, STREAM_VAL_ATTACK, "val",
                                 reporter.eval_step))
        row.update(evaluate_part(engine, data.test, epoch, STREAM_TEST_ATTACK, "test",
                                 reporter.eval_step))
    else:  # the row has no val_/test_ keys: not a candidate for best.pt
        row["evaluated"] = False
    if cfg.hessian_every and (epoch + 1) % cfg.hessian_every == 0:
        row.update(hessian_summary(engine.net, data.test, cfg.hessian_examples))
    sync(engine.device)
    row["eval_seconds"] = round(time.perf_counter() - started, 3)
    reporter.end_eval()
    return row



"""PGD adversarial training with the paper's protocol, writing a run directory.

Defaults are the protocol of Singla et al. (ICCV 2021), which forks Rice et al.'s
``train_cifar.py`` (see ``../shared/PROTOCOL.md``): PreActResNet-18, PGD-10 (eps 8/255,
step 2/255, one random start, BatchNorm in train mode during the attack), SGD with momentum 0.9
and weight decay 5e-4 on every parameter, batch 128, 200 epochs, learning rate 0.1 divided by 10
at epochs 100 and 150, evaluated per iteration at the fractional epoch ``epoch + (i + 1) / n``.

One training step, as in Rice et al.'s loop (their order matters for BatchNorm statistics):

1. ``delta = pgd(...)`` with the model in train mode (``attack_bn="train"``), whose last forward
   (restart selection, on ``x + delta``) moves the BatchNorm running statistics;
2. robust forward on ``clamp(x + delta, 0, 1)``, cross-entropy, backward, SGD step;
3. clean forward on ``x`` *after* the step, still in train mode (their "train loss/acc"; it also
   moves BatchNorm running statistics, so we keep it to reproduce their eval-mode models).

With one restart the forward of 1. selects nothing and sees the same images, weights and batch
statistics as the forward of 2., so the step runs it once: the robust forward moves the running
statistics by both updates (:func:`running_stats_count_twice`). The weights follow the same
trajectory bit for bit; the running statistics agree to float rounding.

The train robust numbers are those of the robust forward before the step; the train clean numbers
come from the forward after it. Every epoch the model is evaluated in eval mode on the validation
and test sets (clean, and PGD with ``eval_steps``/``eval_restarts``) and a row is appended to
``metrics.jsonl`` (keys in ``docs/architecture.md``).

Run directory: ``config.json``, ``metrics.jsonl``, ``last.pt``, ``best.pt`` (highest validation
robust accuracy, never selected on test), ``epoch_NNNN.pt`` (``save_every``), ``DONE``.

Reproducibility: the model is initialized from ``seed``; the data order and augmentation of an
epoch come from ``(seed, epoch)`` (``harness.data.DeviceBatches``); the attack's random starts
come from a generator reseeded from ``(seed, epoch, stream)`` every epoch. So a resumed run needs
only the model, optimizer and best-so-far from ``last.pt`` (the global RNG states are saved and
restored too), and on CPU it reproduces an uninterrupted run exactly.

Example::

    >>> cfg = TrainConfig.from_dict({"dataset": "digits", "arch": "preactresnet18",
    ...                              "width": 0.125, "epochs": 3, "act": "silu"})
    >>> run_training(cfg, Path("runs/silu-digits"))
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curvtools.errors import SEED_LIMIT, BadInput
from curvtools.progress import advance, new_progress
from harness.distributed import (
    SINGLE,
    DistContext,
    all_reduce_sum,
    barrier,
    context_from_env,
    evaluate_sharded,
    per_rank_batch,
    setup,
    wrap_model,
)
from harness.metrics_file import RUN_FILES, RUN_LOCK, read_metrics

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_TYPES = ("cpu", "cuda", "mps")
ATTACK_BN_MODES = ("train", "eval")
# torch.compile modes for --compile; the "reduce-overhead" modes bring CUDA graphs of their own,
# which the step's graphs (harness.graphs) already provide
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")

# Settings that may change when resuming: they do not change what is computed (epochs: unless it
# moves an auto learning-rate milestone the trained epochs have passed, _check_resume_config).
RESUMABLE_CHANGES = ("epochs", "device", "sync_bn", "compile", "compile_mode", "cuda_graphs",
                     "save_every", "hessian_every", "hessian_examples", "data_dir", "download",
                     "eval_batch_size")

# Streams of random numbers derived from (seed, epoch, stream): independent of each other.
STREAM_TRAIN_ATTACK, STREAM_VAL_ATTACK, STREAM_TEST_ATTACK = 101, 102, 103


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the CLI exits with code 3."""


@dataclass
class TrainConfig:
    """Every setting of a training run; the defaults are the paper's protocol.

    ``alpha`` is the activation parameter (ELU); the PGD step is ``alpha_255`` (in 1/255 units)
    and the radius ``eps_255``. For ``norm="l2"`` eps and step are l_2 lengths in the same units.
    ``lr_milestones`` are (fractional) epochs; ``None`` means Rice et al.'s piecewise rule: 50% and
    75% of ``epochs``. Subset sizes of ``None`` mean the whole set.
    """

    # data
    dataset: str = "cifar10"
    data_dir: str = "data"
    download: bool = True
    val_fraction: float = 0.1
    split_seed: int = 0
    train_subset: int | None = None
    val_subset: int | None = None
    test_subset: int | None = None
    augment: bool = True
    # model
    arch: str = "preactresnet18"
    width: float = 1.0
    act: str = "relu"
    k: float | None = None
    beta: float | None = None
    alpha: float | None = None
    expr: str | None = None
    # optimization
    epochs: int = 200
    batch_size: int = 128
    eval_batch_size: int = 512
    lr: float = 0.1
    lr_milestones: list[float] | None = field(default_factory=lambda: [100.0, 150.0])
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # attack
    eps_255: float = 8.0
    alpha_255: float = 2.0
    norm: str = "linf"
    train_steps: int = 10
    train_restarts: int = 1
    eval_steps: int = 10
    eval_restarts: int = 1
    attack_bn: str = "train"
    # run
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode, with compile
    cuda_graphs: bool | None = None  # None: on for CUDA (harness.graphs), off elsewhere
    save_every: int = 0
    hessian_every: int = 0
    hessian_examples: int = 100
    sync_bn: bool = False  # data parallel: BatchNorm statistics over the global batch

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build and validate a config; unknown keys and bad values raise :class:`BadInput`."""
        if not isinstance(d, Mapping):
            raise BadInput("training config must be a mapping of setting names to values")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BadInput(f"unknown training setting(s) {', '.join(unknown)}; "
                           f"allowed: {', '.join(sorted(known))}")
        cfg = cls(**dict(d))
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; ``TrainConfig.from_dict(cfg.to_dict()) == cfg``."""
        out = dataclasses.asdict(self)
        if out["lr_milestones"] is not None:
            out["lr_milestones"] = [float(m) for m in out["lr_milestones"]]
        return out

    def milestones(self) -> list[float]:
        """The learning-rate milestones in epochs (Rice's 50%/75% rule when not given)."""
        if self.lr_milestones is None:
            return [0.5 * self.epochs, 0.75 * self.epochs]
        return [float(m) for m in self.lr_milestones]

    def activation(self):
        """The resolved :class:`curvtools.activations.Activation`."""
        from curvtools.activations import resolve

        return resolve(self.act, k=self.k, beta=self.beta, alpha=self.alpha, expr=self.expr)

    def validate(self) -> None:
        """Raise :class:`BadInput` naming the first bad setting."""
        _validate(self)


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
            and math.isfinite(float(v)))


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise BadInput(message)


def _validate(c: TrainConfig) -> None:
    from harness.attacks import normalize_norm_name
    from harness.models import parse_arch

    _need(isinstance(c.dataset, str) and c.dataset.strip() != "",
          f"dataset={c.dataset!r} must be a name (cifar10, cifar100, imagefolder:PATH, digits)")
    from harness.data import check_spec

    check_spec(c.dataset)  # the form only: a typo fails at once, even in a sweep's dry run
    _need(_is_num(c.val_fraction) and 0 < c.val_fraction < 1,
          f"val_fraction={c.val_fraction!r} must be in (0, 1) (the paper: 0.1)")
    for name in ("split_seed", "seed"):
        _need(_is_int(getattr(c, name)) and 0 <= getattr(c, name) < SEED_LIMIT,
              f"{name}={getattr(c, name)!r} must be an integer in [0, 2**63)")
    for name in ("train_subset", "val_subset", "test_subset"):
        v = getattr(c, name)
        _need(v is None or (_is_int(v) and v >= 1),
              f"{name}={v!r} must be a positive integer or None (whole set)")
    parse_arch(c.arch)
    _need(_is_num(c.width) and c.width > 0, f"width={c.width!r} must be > 0 (1.0 = paper)")
    c.activation()
    _need(_is_int(c.epochs) and c.epochs >= 1, f"epochs={c.epochs!r} must be an integer >= 1")
    for name in ("batch_size", "eval_batch_size"):
        v = getattr(c, name)
        _need(_is_int(v) and v >= 2, f"{name}={v!r} must be an integer >= 2")
    _need(_is_num(c.lr) and c.lr > 0, f"lr={c.lr!r} must be > 0")
    if c.lr_milestones is not None:
        ms = c.lr_milestones
        _need(isinstance(ms, list | tuple) and all(_is_num(m) and m > 0 for m in ms)
              and list(ms) == sorted(ms),
              f"lr_milestones={ms!r} must be increasing positive epochs, e.g. 100 150")
        c.lr_milestones = [float(m) for m in ms]
    _need(_is_num(c.lr_gamma) and c.lr_gamma > 0, f"lr_gamma={c.lr_gamma!r} must be > 0")
    _need(_is_num(c.momentum) and 0 <= c.momentum < 1, f"momentum={c.momentum!r} must be in [0, 1)")
    _need(_is_num(c.weight_decay) and c.weight_decay >= 0,
          f"weight_decay={c.weight_decay!r} must be >= 0")
    _need(_is_num(c.eps_255) and c.eps_255 >= 0,
          f"eps_255={c.eps_255!r} must be >= 0 (in 1/255 units; the paper: 8)")
    _need(_is_num(c.alpha_255) and c.alpha_255 > 0,
          f"alpha_255={c.alpha_255!r} must be > 0 (PGD step in 1/255 units; the paper: 2)")
    c.norm = normalize_norm_name(c.norm)
    for name in ("train_steps", "eval_steps", "train_restarts", "eval_restarts"):
        v = getattr(c, name)
        _need(_is_int(v) and v >= 1, f"{name}={v!r} must be an integer >= 1")
    _need(c.attack_bn in ATTACK_BN_MODES,
          f"attack_bn={c.attack_bn!r}; allowed: {', '.join(ATTACK_BN_MODES)}")
    _need(c.precision in PRECISIONS,
          f"precision={c.precision!r}; allowed: {', '.join(PRECISIONS)}")
    _need(c.compile_mode in COMPILE_MODES,
          f"compile_mode={c.compile_mode!r}; allowed: {', '.join(COMPILE_MODES)}")
    for name in ("channels_last", "cuda_graphs"):
        v = getattr(c, name)
        _need(v is None or isinstance(v, bool), f"{name}={v!r} must be true, false or null (auto)")
    for name in ("save_every", "hessian_every"):
        v = getattr(c, name)
        _need(_is_int(v) and v >= 0, f"{name}={v!r} must be an integer >= 0 (0 = off)")
    _need(_is_int(c.hessian_examples) and c.hessian_examples >= 1,
          f"hessian_examples={c.hessian_examples!r} must be an integer >= 1")
    _need(isinstance(c.sync_bn, bool), f"sync_bn={c.sync_bn!r} must be true or false")
    resolve_device(c.device)


# --- devices, precision, schedule ------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(name)`` (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    # torch knows more device types (meta, xla, ...) than models and data can run on here
    if device is None or device.type not in DEVICE_TYPES:
        raise BadInput(f"device={name!r} is not a device this harness runs on; "
                       f"allowed: auto, cpu, cuda, cuda:N, mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device={name!r} but CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BadInput(f"device={name!r} but MPS is not available here; use --device cpu")
    return device


def resolve_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """The memory format a run uses: ``cfg.channels_last``, or by default on CUDA only.

    On CUDA for the tensor cores. Off by default on a CPU: oneDNN's NHWC convolutions made the
    PGD-10 step 1.13-1.47x faster on one thread (bench/train_throughput.py), but with torch
    2.14.1 and two or more threads, training a narrow PreActResNet-18 (width 1/16 or 1/8) in
    channels_last on small batches (5 or 21 images) corrupted the heap and crashed the process
    (``bench/gpu_speed.py --tiny``, reproduced with a plain forward/backward loop). Pass
    ``--channels-last`` to opt in on a CPU.
    """
    if cfg.channels_last is not None:
        return cfg.channels_last
    return device.type == "cuda"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic units (x86 AVX512-BF16 or AMX).

    oneDNN then runs bf16 convolutions natively (measured: our training step 2.71x the fp32
    reference on an AMD EPYC with AVX512-BF16, against 1.39x in fp32; docs/benchmarks.md).
    Without them bf16 is emulated and no faster than fp32.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def autocast_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision``: None means fp32 throughout.

    ``auto`` is fp16 on CUDA, bf16 on a CPU that computes in bf16 natively
    (:func:`cpu_has_native_bf16`) and fp32 on other CPUs. On CUDA fp16 rather than bf16 because
    PyTorch sends fp16 BatchNorm (with fp32 parameters) to cuDNN's NHWC kernels and bf16 to its
    own, slower ones: 8.43 against 9.53 s per PGD-10 epoch on an H200, with accuracy after 10
    epochs as close to fp32 as bf16's (docs/benchmarks.md). fp16's narrow exponent range is
    handled by :func:`loss_scaler` (training) and :func:`harness.attacks.attack_loss` (attack).
    Attack perturbations, losses, weights, BatchNorm running statistics and optimizer state stay
    fp32 in every precision.
    """
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def loss_scaler(amp: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """PyTorch's dynamic loss scaler for the training backward; a no-op unless ``amp`` is fp16.

    fp16 keeps 5 exponent bits: weight gradients below 6e-8 would flush to zero. The loss is
    multiplied by the scale (initially 2**16) before the backward; a step whose gradients
    overflow is skipped and the scale halved, and 2000 clean steps in a row double it. With the
    fused SGD used on CUDA, the check, the unscaling and the skip happen on the device (no host
    sync, so the step still replays from a CUDA graph). The attack has its own scaling:
    :func:`harness.attacks.attack_loss`.
    """
    return torch.amp.GradScaler(device.type, enabled=amp == torch.float16)


def zero_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """Give every SGD parameter a zero momentum buffer before the first step.

    The fused SGD kernel allocates the buffers uninitialized (``torch.empty_like``) on its first
    step and fills them in that step; when the loss scaler skips that step (fp16 gradients
    overflowed) they stay garbage and the next step reads them (torch 2.14.1). From a zero
    buffer the first real step computes ``0.9 * 0 + g = g``, what a first step computes, bit
    for bit.
    """
    for group in optimizer.param_groups:
        if group.get("momentum", 0) == 0:
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


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
class RunData:
    """Images and split of a run, on the device."""

    source_info: dict
    num_classes: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Any  # harness.data.DeviceBatches
    val: Any
    test: Any
    indices: dict[str, np.ndarray]


def _indices_hash(idx: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(idx, dtype=np.int64).tobytes()).hexdigest()


def load_run_data(cfg: TrainConfig, device: torch.device, channels_last: bool,
                  dist: DistContext = SINGLE) -> RunData:
    """Open the dataset, split 90/10 (``split_seed``), take subsets, put everything on device.

    Data parallel (``dist``): this rank's training batches are ``batch_size / world_size``
    rows of each global batch (``DeviceBatches`` sharding); every rank holds val and test.
    """
    from harness.data import DeviceBatches, open_source, split_train_val, stratified_subset

    source = open_source(cfg.dataset, cfg.data_dir, cfg.download)
    train_labels = source.labels("train")
    test_labels = source.labels("test")
    train_idx, val_idx = split_train_val(len(train_labels), cfg.val_fraction, cfg.split_seed)
    if len(val_idx) == 0:  # the best checkpoint is chosen on validation
        raise BadInput(f"val_fraction={cfg.val_fraction} of {len(train_labels)} training images "
                       f"leaves no validation image; allowed: more than "
                       f"0.5/{len(train_labels)}")
    if cfg.train_subset is not None:
        train_idx = stratified_subset(train_labels, train_idx, cfg.train_subset, cfg.split_seed)
    if cfg.val_subset is not None:
        val_idx = stratified_subset(train_labels, val_idx, cfg.val_subset, cfg.split_seed)
    test_idx = np.arange(len(test_labels), dtype=np.int64)
    if cfg.test_subset is not None:
        test_idx = stratified_subset(test_labels, test_idx, cfg.test_subset, cfg.split_seed)
    if len(train_idx) == 0:
        raise BadInput(f"val_fraction={cfg.val_fraction} of {len(train_labels)} training images "
                       f"leaves no training image; allowed: less than "
                       f"1 - 0.5/{len(train_labels)}")
    if cfg.batch_size > len(train_idx):
        raise BadInput(f"batch_size={cfg.batch_size} is larger than the training set "
                       f"({len(train_idx)} images)")
    rank_batch = per_rank_batch(cfg.batch_size, dist)
    # A last batch of one image breaks train-mode BatchNorm; drop it in that case only.
    drop_last = (len(train_idx) // dist.world_size) % rank_batch == 1

    def batches(part, idx, labels, size, drop, rank=0, world_size=1):
        return DeviceBatches(source.images(part, idx), labels[idx], device, batch_size=size,
                             drop_last=drop, channels_last=channels_last, rank=rank,
                             world_size=world_size)

    return RunData(
        source_info=source.info(), num_classes=source.num_classes,
        in_channels=source.in_channels, mean=tuple(source.mean), std=tuple(source.std),
        train=batches("train", train_idx, train_labels, rank_batch, drop_last, dist.rank,
                      dist.world_size),
        val=batches("train", val_idx, train_labels, cfg.eval_batch_size, False),
        test=batches("test", test_idx, test_labels, cfg.eval_batch_size, False),
        indices={"train": train_idx, "val": val_idx, "test": test_idx})


# --- run directory ---------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import harness

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "lowcurv": harness.__version__}
    try:
        import torchvision

        out["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _write_text_atomic(path: Path, text: str) -> None:
    from harness.checkpoint import write_bytes_atomic

    write_bytes_atomic(path, text.encode())


def _append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to touch an existing run unless resuming or overwriting (checked before any write)."""
    if resume and overwrite:
        raise BadInput("--resume and --overwrite exclude each other")
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"output path {str(out_dir)!r} exists and is not a folder")
    blocker = next((p for p in out_dir.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise BadInput(f"output path {str(out_dir)!r} cannot be created: {str(blocker)!r} is "
                       f"a file, not a folder")
    has_run = out_dir.is_dir() and any(p.name != RUN_LOCK for p in out_dir.iterdir())
    if resume and not (out_dir / "last.pt").is_file():
        hint = ("it stopped before its first checkpoint: start over with --overwrite"
                if has_run else "start the run without --resume")
        raise BadInput(f"--resume: {str(out_dir / 'last.pt')!r} does not exist; {hint}")
    if has_run and not resume and not overwrite:
        raise BadInput(f"run directory {str(out_dir)!r} is not empty; pass --resume to "
                       f"continue it or --overwrite to start over")


def _no_write(*args: Any) -> None:
    """Stands in for a file writer on data-parallel ranks other than 0."""


def _clear_run_files(out_dir: Path) -> None:
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    for path in out_dir.glob("epoch_*.pt"):
        path.unlink()
    _remove_stale_temp_files(out_dir)


def _remove_stale_temp_files(out_dir: Path) -> None:
    """Temporary files of atomic writes that a killed process left half written."""
    for name in (*RUN_FILES, "epoch_*.pt"):
        for path in out_dir.glob(f".{name}.*.tmp"):
            path.unlink(missing_ok=True)


# --- one epoch -------------------------------------------------------------------------------


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

    @property
    def eps(self) -> float:
        return self.cfg.eps_255 / 255.0

    @property
    def step_size(self) -> float:
        return self.cfg.alpha_255 / 255.0

    def __post_init__(self):
        if self.scaler is None:
            self.scaler = loss_scaler(self.amp, self.device)
        if self.scaler.is_enabled():
            zero_momentum_buffers(self.optimizer)

    def autocast(self):
        from harness.attacks import autocast

        return autocast(self.device.type, self.amp)


def _attack_generator(device: torch.device, seed: int, epoch: int, stream: int) -> torch.Generator:
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
        self.fold_selection_forward = (
            cfg.train_restarts == 1 and cfg.attack_bn == "train"
            and all(m.momentum is not None for m in self.batchnorms))

    def robust(self, x: torch.Tensor, y: torch.Tensor, *starts: torch.Tensor):
        from harness.attacks import pgd

        engine, cfg = self.engine, self.engine.cfg
        model = engine.forward
        fold = self.fold_selection_forward
        delta = pgd(model, x, y, eps=engine.eps, alpha=engine.step_size, steps=cfg.train_steps,
                    restarts=cfg.train_restarts, norm=cfg.norm, bn_mode=cfg.attack_bn,
                    autocast_dtype=engine.amp, starts=starts, final_forward=not fold)
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


def uses_cuda_graphs(cfg: TrainConfig, device: torch.device, dist: DistContext = SINGLE) -> bool:
    """Whether training steps replay CUDA graphs: ``cfg.cuda_graphs``, or by default on CUDA.

    Not with data parallel (DDP's gradient all-reduce hooks run outside a capture). With
    ``--compile`` the compiled kernels are captured too (torch.compile's default mode brings no
    graphs of its own).
    """
    return cfg.cuda_graphs is not False and device.type == "cuda" and not dist.enabled


def train_one_epoch(engine: Engine, batches, epoch: int,
                    on_batch: Callable[[], None] | None = None) -> dict[str, float]:
    """One epoch (0-based ``epoch``) of PGD training; returns the train metrics and last lr.

    Sums stay on the device and are read once at the end: no host sync per step. On CUDA the two
    halves of the step (:class:`TrainStep`) replay CUDA graphs captured in the first epoch.
    """
    from harness.attacks import draw_starts

    cfg = engine.cfg
    robust, clean = engine.steps()
    n_batches = len(batches)
    generator = _attack_generator(engine.device, cfg.seed, epoch, STREAM_TRAIN_ATTACK)
    sums = torch.zeros(4, device=engine.device, dtype=torch.float64)
    count = 0
    lr = cfg.lr
    engine.forward.train()
    for i, (x, y) in enumerate(batches.epoch(epoch, cfg.seed, augment=cfg.augment)):
        lr = piecewise_lr(epoch + (i + 1) / n_batches, cfg)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        starts = draw_starts(x, eps=engine.eps, norm=cfg.norm, restarts=cfg.train_restarts,
                             generator=generator,
                             rows_of_batch=engine.dist.rows_of_batch(y.shape[0]))
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
    """Clean and PGD (``eval_steps``, ``eval_restarts``) metrics of a set, model in eval mode."""
    cfg = engine.cfg
    result = evaluate_sharded(
        engine.forward, batches, engine.dist,
        eps=engine.eps, alpha=engine.step_size, steps=cfg.eval_steps,
        restarts=cfg.eval_restarts, norm=cfg.norm,
        generator=_attack_generator(engine.device, cfg.seed, epoch, stream),
        autocast_dtype=engine.amp, on_batch=on_batch,
        graph_cache=engine.eval_graphs if engine.cuda_graphs else None)
    return {f"{prefix}_{key}": result[key] for key in
            ("clean_loss", "clean_acc", "robust_loss", "robust_acc")}


def hessian_summary(net: nn.Module, batches, n: int) -> dict[str, float]:
    """Batch mean and median of the input-Hessian lambda_max on the first ``n`` images.

    Uses ``curvtools.spectra.input_hessian_eigenvalues`` (fp32, eval mode).
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
        result = input_hessian_eigenvalues(net, x, y, which=("max",))
        values.append(result.lambda_max.detach().float().cpu())
        taken += len(y)
    net.train(was_training)
    lam = torch.cat(values)
    return {"hessian_lambda_max_mean": float(lam.mean()),
            "hessian_lambda_max_median": float(lam.median())}


# --- the run ---------------------------------------------------------------------------------


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: Mapping[str, Any], device: torch.device) -> None:
    if "torch_cpu" in state:
        torch.set_rng_state(state["torch_cpu"].cpu())
    if device.type == "cuda" and "torch_cuda" in state:
        # a checkpoint from a machine with another GPU count: keep the fresh CUDA RNG
        with contextlib.suppress(RuntimeError, IndexError):
            torch.cuda.set_rng_state_all([s.cpu() for s in state["torch_cuda"]])


def _check_resume_payload(ckpt: Mapping[str, Any], path: Path,
                          rows: list[dict]) -> tuple[int, float]:
    """``(epochs done, best validation robust accuracy)`` of a ``last.pt`` to resume from.

    Raises :class:`BadInput` naming the first entry that resuming could not use: a damaged or
    foreign file must be refused before anything in the run directory changes. ``rows``: the
    run's ``metrics.jsonl``, which must hold every epoch before the checkpoint's (its own row
    may be missing: resuming restores it from the checkpoint).
    """
    where = f"checkpoint {str(path)!r}"
    epoch = ckpt.get("epoch")
    if not _is_int(epoch) or epoch < 0:
        raise BadInput(f"{where} has epoch={epoch!r}; allowed: an integer >= 0")
    recorded = max((r["epoch"] for r in rows if _is_int(r.get("epoch"))), default=0)
    if epoch > recorded + 1:
        raise BadInput(f"{where} has epoch={epoch}, but metrics.jsonl records epochs up to "
                       f"{recorded}; allowed: epoch <= {recorded + 1} (start over with "
                       f"--overwrite)")
    if epoch > recorded and not isinstance(ckpt.get("metrics"), Mapping):
        raise BadInput(f"{where} has metrics={ckpt.get('metrics')!r}; allowed: the metrics row "
                       f"of epoch {epoch} (metrics.jsonl lacks it)")
    best = ckpt.get("best_val_robust_acc", -1.0)
    if not _is_num(best):
        raise BadInput(f"{where} has best_val_robust_acc={best!r}; allowed: a finite number")
    if "optimizer" not in ckpt:
        raise BadInput(f"{where} lacks the 'optimizer' entry (the SGD momentum to resume with)")
    for key in ("rng", "grad_scaler"):
        if key in ckpt and not isinstance(ckpt[key], Mapping):
            raise BadInput(f"{where} has a {key!r} entry of type {type(ckpt[key]).__name__}; "
                           f"allowed: a mapping")
    _check_rng_state(ckpt.get("rng", {}), where)
    return int(epoch), float(best)


def _check_rng_state(state: Mapping[str, Any], where: str) -> None:
    """The saved RNG states have the form :func:`_restore_rng` sets (torch checks only then)."""
    cpu = state.get("torch_cpu")
    size = torch.get_rng_state().numel()
    if cpu is not None and not (isinstance(cpu, torch.Tensor) and cpu.dtype == torch.uint8
                                and cpu.numel() == size):
        found = (f"{cpu.dtype} tensor of {cpu.numel()} values"
                 if isinstance(cpu, torch.Tensor) else type(cpu).__name__)
        raise BadInput(f"{where} has rng.torch_cpu = a {found}; allowed: torch.get_rng_state(), "
                       f"a uint8 tensor of {size} bytes")
    cuda = state.get("torch_cuda")
    if cuda is not None and not (isinstance(cuda, list | tuple)
                                 and all(isinstance(t, torch.Tensor) for t in cuda)):
        raise BadInput(f"{where} has rng.torch_cuda of type {type(cuda).__name__}; allowed: a "
                       f"list of torch.cuda.get_rng_state() tensors")


def _restore_engine(engine: Engine, ckpt: Mapping[str, Any], path: Path) -> None:
    """Load the model, optimizer, loss scaler and RNG states of ``ckpt`` into ``engine``.

    Raises :class:`BadInput` naming the entry that does not fit, before the run changes any file
    (SGD does not check its momentum buffers' shapes itself: a wrong one would fail mid-epoch).
    """
    from harness.checkpoint import load_state_checked

    where = f"checkpoint {str(path)!r}"
    load_state_checked(engine.net, ckpt["model"],
                       f"{where}: 'model' does not fit the model of the run's settings")
    load_state_checked(engine.optimizer, ckpt["optimizer"],
                       f"{where}: 'optimizer' does not fit the run's SGD")
    for group in engine.optimizer.param_groups:
        for p in group["params"]:
            buffer = engine.optimizer.state.get(p, {}).get("momentum_buffer")
            if buffer is not None and not (isinstance(buffer, torch.Tensor)
                                           and buffer.shape == p.shape):
                found = (tuple(buffer.shape) if isinstance(buffer, torch.Tensor)
                         else type(buffer).__name__)
                raise BadInput(f"{where}: 'optimizer' has a momentum buffer of shape {found} "
                               f"for a parameter of shape {tuple(p.shape)}")
    if engine.scaler.is_enabled() and ckpt.get("grad_scaler"):  # fp16 before and now
        load_state_checked(engine.scaler, ckpt["grad_scaler"],
                           f"{where}: 'grad_scaler' does not fit the fp16 loss scaler")
    _restore_rng(ckpt.get("rng", {}), engine.device)


class _RunLock:
    """An exclusive ``flock`` on ``out_dir/.lock`` (:data:`RUN_LOCK`) for the whole run.

    Two processes training into one directory (two ``--resume`` of one run, say) would write
    the same epochs twice; the second is refused with :class:`BadInput`. The lock file stays
    (removing it would race with a process opening it); it is not one of the run's files. The
    kernel releases the lock when the process exits, however it exits. Where ``fcntl`` is
    missing (Windows) or the filesystem has no locks, runs are not locked.
    """

    def __init__(self, out_dir: Path, enabled: bool = True):
        self.out_dir, self.enabled = out_dir, enabled
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        """True once acquired, or when this process need not lock."""
        return self.fd is not None or not self.enabled

    def acquire(self) -> None:
        """Take the lock (creating ``out_dir``); BadInput when another process holds it."""
        if self.held:
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on Linux/macOS
            self.enabled = False
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.out_dir / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BadInput(f"another process is training in {str(self.out_dir)!r} (it holds "
                           f"{str(self.out_dir / RUN_LOCK)!r}); wait for it to end or use "
                           f"another output folder") from None
        except OSError:  # a filesystem without locks: train unlocked, as before
            os.close(fd)
            self.enabled = False
            return
        self.fd = fd

    def __enter__(self) -> _RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None


def _check_resume_config(cfg: TrainConfig, stored: Mapping[str, Any], epochs_done: int) -> None:
    if cfg.epochs < epochs_done:
        raise BadInput(f"--resume: epochs={cfg.epochs} is fewer than the {epochs_done} epochs "
                       f"the run has trained; allowed: epochs >= {epochs_done}")
    current = cfg.to_dict()
    for key, value in stored.items():
        if key in RESUMABLE_CHANGES or key not in current:
            continue
        if current[key] != value:
            raise BadInput(f"--resume: setting {key}={current[key]!r} differs from the run's "
                           f"{value!r}; only {', '.join(RESUMABLE_CHANGES)} may change")
    # "auto" milestones follow the epochs: a new epoch count must not move a milestone that
    # the epochs already trained have passed (their learning rates would not be those recorded)
    stored_epochs = stored.get("epochs", cfg.epochs)
    if not _is_int(stored_epochs) or stored_epochs < 1:
        raise BadInput(f"--resume: the run's train_config has epochs={stored_epochs!r}; "
                       f"allowed: an integer >= 1")
    if cfg.lr_milestones is None and stored_epochs != cfg.epochs:
        before = dataclasses.replace(cfg, epochs=int(stored["epochs"])).milestones()
        passed = [m for m in before if m <= epochs_done]
        if passed != [m for m in cfg.milestones() if m <= epochs_done]:
            raise BadInput(
                f"--resume: epochs={cfg.epochs} moves the auto learning-rate milestones to "
                f"{cfg.milestones()}, but the {epochs_done} epochs trained already passed "
                f"{passed}; keep epochs={stored['epochs']} or start a new run")


def _model_config(cfg: TrainConfig, data: RunData) -> dict[str, Any]:
    return {"arch": cfg.arch, "act": cfg.activation().config(), "num_classes": data.num_classes,
            "in_channels": data.in_channels, "width": float(cfg.width),
            "mean": list(data.mean), "std": list(data.std)}


def precision_name(amp: torch.dtype | None) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"``: what an autocast dtype from
    :func:`autocast_dtype_for` means."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]


def _run_record(cfg: TrainConfig, data: RunData, model_config: dict, device: torch.device,
                amp: torch.dtype | None, channels_last: bool) -> dict[str, Any]:
    return {
        "train_config": cfg.to_dict(),
        "resolved": {"device": str(device), "device_name": _device_name(device),
                     "precision": precision_name(amp),
                     "channels_last": channels_last, "compile": cfg.compile,
                     "compile_mode": cfg.compile_mode if cfg.compile else None,
                     "lr_milestones": cfg.milestones(), "eps": cfg.eps_255 / 255.0,
                     "step_size": cfg.alpha_255 / 255.0},
        "model_config": model_config,
        "data": {"source": data.source_info, "split_seed": cfg.split_seed,
                 "val_fraction": cfg.val_fraction,
                 **{f"num_{p}": int(len(i)) for p, i in data.indices.items()},
                 **{f"{p}_indices_sha256": _indices_hash(i) for p, i in data.indices.items()}},
        "versions": _versions(),
        "command": " ".join(sys.argv),
    }


def _checkpoint_payload(engine: Engine, model_config: dict, epoch: int, row: dict,
                        best: float, precision_changes: list, image_size: int) -> dict[str, Any]:
    cfg = engine.cfg
    # image_size: what the model was trained on (harness eval refuses other image sizes)
    return {"model": engine.net.state_dict(), "config": model_config, "image_size": image_size,
            "train_config": cfg.to_dict(), "epoch": epoch, "metrics": row,
            "precision": precision_name(engine.amp), "precision_changes": precision_changes,
            "optimizer": engine.optimizer.state_dict(),
            "grad_scaler": engine.scaler.state_dict(),
            "scheduler": {"kind": "piecewise", "milestones": cfg.milestones(),
                          "gamma": cfg.lr_gamma, "lr": cfg.lr, "epochs_done": epoch},
            "rng": _rng_state(engine.device), "best_val_robust_acc": best}


def _allow_recompiles(limit: int = 64) -> None:
    """One compiled graph per (train/eval mode, gradients or not, batch shape): a run needs ~10,
    more than torch._dynamo's default limit of 8, past which it falls back to eager (with a
    warning)."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(limit, getattr(torch._dynamo.config, name)))


def _build_engine(cfg: TrainConfig, model_config: dict, device: torch.device,
                  amp: torch.dtype | None, channels_last: bool,
                  dist: DistContext = SINGLE) -> Engine:
    from harness.models import build_model

    torch.manual_seed(cfg.seed)
    net = build_model(model_config).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    net, ddp = wrap_model(net, dist, device, sync_bn=cfg.sync_bn)  # (net, net) in 1 process
    if cfg.compile:
        _allow_recompiles()
    mode = None if cfg.compile_mode == "default" else cfg.compile_mode

    def maybe_compiled(module: nn.Module) -> nn.Module:
        return torch.compile(module, mode=mode) if cfg.compile else module

    forward = maybe_compiled(net)
    train_forward = maybe_compiled(ddp) if dist.enabled else None
    extra = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, **extra)
    return Engine(cfg, net, forward, optimizer, device, amp, train_forward, dist,
                  cuda_graphs=uses_cuda_graphs(cfg, device, dist), eval_graphs={})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_training(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False,
                 overwrite: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> list[dict]:
    """Train per ``cfg`` into ``out_dir``; returns the metrics rows of all finished epochs.

    ``resume`` continues from ``out_dir/last.pt`` (settings other than
    :data:`RESUMABLE_CHANGES` must match); ``overwrite`` deletes an existing run's files first.
    Without either, a non-empty ``out_dir`` raises :class:`BadInput` and nothing is touched.
    Raises :class:`TrainingDiverged` when the training loss becomes NaN/inf (``best.pt`` and
    ``last.pt`` then hold the last good epoch). ``progress`` shows a rich progress bar and
    prints one summary line per epoch (``log`` receives the same lines when given).
    """
    cfg.validate()
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, resume, overwrite)
    # Data parallel: rank 0 holds the lock for all ranks (the others only read the run dir)
    with _RunLock(out_dir, enabled=context_from_env().is_main) as lock:
        if out_dir.is_dir():  # an existing run: no other process may change it while we check
            lock.acquire()
            _prepare_out_dir(out_dir, resume, overwrite)  # as it is now that we hold the lock
        return _train(cfg, out_dir, resume, overwrite, progress, log, lock)


def _train(cfg: TrainConfig, out_dir: Path, resume: bool, overwrite: bool, progress: bool,
           log: Callable[[str], None] | None, lock: _RunLock) -> list[dict]:
    """:func:`run_training` once ``out_dir`` is checked: every check (settings, resume payload,
    data, model) comes before the first write."""
    from harness.checkpoint import load_checkpoint, save_checkpoint

    metrics_path = out_dir / "metrics.jsonl"
    ckpt, rows = None, []
    start_epoch, best = 0, -1.0
    if resume:
        ckpt = load_checkpoint(out_dir / "last.pt")
        rows = read_metrics(metrics_path)
        start_epoch, best = _check_resume_payload(ckpt, out_dir / "last.pt", rows)
        _check_resume_config(cfg, ckpt.get("train_config") or {}, start_epoch)
    dist, device = setup(resolve_device(cfg.device))  # torchrun: cuda:LOCAL_RANK, one rank each
    main = dist.is_main  # only rank 0 writes files and prints
    amp = autocast_dtype_for(cfg.precision, device)
    channels_last = resolve_channels_last(cfg, device)
    data = load_run_data(cfg, device, channels_last, dist)  # may raise BadInput: nothing written
    model_config = _model_config(cfg, data)
    engine = _build_engine(cfg, model_config, device, amp, channels_last, dist)
    if ckpt is not None:
        _restore_engine(engine, ckpt, out_dir / "last.pt")  # may raise BadInput: nothing written
    if main and not lock.held:
        lock.acquire()  # a new directory: created now, and checked again under the lock
        _prepare_out_dir(out_dir, resume, overwrite)
    barrier(dist)  # every rank has checked out_dir before rank 0 changes it

    if ckpt is not None:
        _remove_stale_temp_files(out_dir)
    elif overwrite and out_dir.is_dir():
        if main:
            _clear_run_files(out_dir)
    # Data parallel: only rank 0 touches files; the other ranks run the same code with
    # writers that do nothing.
    write_text = _write_text_atomic if main else _no_write
    append_metrics = _append_metrics if main else _no_write
    save = save_checkpoint if main else _no_write
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "DONE").unlink(missing_ok=True)
    record = _run_record(cfg, data, model_config, device, amp, channels_last)
    record["resolved"]["world_size"] = dist.world_size
    record["resolved"]["cuda_graphs"] = engine.cuda_graphs
    # "auto" precision follows the hardware, which may differ on resume: keep the history
    precision = record["resolved"]["precision"]
    precision_before = ckpt.get("precision") if ckpt is not None else None
    precision_changes = list(ckpt.get("precision_changes", [])) if ckpt is not None else []
    switched = precision_before not in (None, precision)
    if switched:
        precision_changes.append({"epoch": start_epoch, "from": precision_before,
                                  "to": precision})
    if precision_changes:
        record["resolved"]["precision_changes"] = precision_changes
    write_text(out_dir / "config.json", json.dumps(record, indent=2) + "\n")
    rows = [r for r in rows if _is_int(r.get("epoch")) and r["epoch"] <= start_epoch]
    if ckpt is not None and start_epoch and not any(r["epoch"] == start_epoch for r in rows):
        rows.append(dict(ckpt["metrics"]))  # the file lost the checkpoint's row: restore it
    write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    if not main:
        progress, log = False, None
    reporter = _Reporter(progress, log, cfg.epochs, start_epoch, len(data.train),
                         len(data.val) if hasattr(data.val, "__len__") else 0,
                         len(data.test) if hasattr(data.test, "__len__") else 0)
    with reporter:
        if switched:
            reporter.line(f"note: epochs 1-{start_epoch} ran in {precision_before}; resumed in "
                          f"{precision} (--precision {cfg.precision} on {device})")
        for epoch in range(start_epoch, cfg.epochs):
            row = _run_epoch(engine, data, epoch, reporter)
            if not all(math.isfinite(row[k]) for k in ("train_robust_loss", "train_clean_loss")):
                kept = (f"best.pt and last.pt keep epoch {epoch} or earlier" if epoch
                        else "no checkpoint was written")
                message = (f"training diverged: non-finite training loss in epoch {epoch + 1} "
                           f"(lr {row['lr']:g}); {kept}")
                reporter.line(message)
                raise TrainingDiverged(message)
            # The row goes first: a crash before last.pt is written leaves a row past the
            # checkpoint, which resuming truncates and recomputes (never a lost epoch).
            append_metrics(metrics_path, row)
            rows.append(row)
            payload = _checkpoint_payload(engine, model_config, epoch + 1, row,
                                          max(best, row["val_robust_acc"]), precision_changes,
                                          int(data.source_info["image_size"]))
            if row["val_robust_acc"] > best:
                best = row["val_robust_acc"]
                save(out_dir / "best.pt", payload)
            if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
                save(out_dir / f"epoch_{epoch + 1:04d}.pt", payload)
            save(out_dir / "last.pt", payload)
            reporter.epoch_line(row)
    write_text(out_dir / "DONE", json.dumps({"epochs": cfg.epochs,
                                             "finished": time.time()}) + "\n")
    barrier(dist)  # ranks finish together, after rank 0 has written DONE
    return rows


def _run_epoch(engine: Engine, data: RunData, epoch: int, reporter: _Reporter) -> dict:
    cfg = engine.cfg
    started = time.perf_counter()
    train = train_one_epoch(engine, data.train, epoch, on_batch=reporter.train_step)
    _sync(engine.device)
    train_seconds = time.perf_counter() - started
    row: dict[str, Any] = {"epoch": epoch + 1, "lr": train.pop("lr"),
                           "train_seconds": round(train_seconds, 3), "eval_seconds": 0.0}
    row.update(train)
    if not math.isfinite(row["train_robust_loss"]):
        return row | {f"{p}_{m}": math.nan for p in ("val", "test")
                      for m in ("clean_loss", "clean_acc", "robust_loss", "robust_acc")}
    started = time.perf_counter()
    reporter.start_eval()
    row.update(evaluate_part(engine, data.val, epoch, STREAM_VAL_ATTACK, "val",
                             reporter.eval_step))
    row.update(evaluate_part(engine, data.test, epoch, STREAM_TEST_ATTACK, "test",
                             reporter.eval_step))
    if cfg.hessian_every and (epoch + 1) % cfg.hessian_every == 0:
        row.update(hessian_summary(engine.net, data.test, cfg.hessian_examples))
    _sync(engine.device)
    row["eval_seconds"] = round(time.perf_counter() - started, 3)
    reporter.end_eval()
    return row


class _Reporter:
    """Rich progress bar (rate and ETA) over all training batches, plus one line per epoch."""

    def __init__(self, enabled: bool, log: Callable[[str], None] | None, epochs: int,
                 start_epoch: int, n_train: int, n_val: int, n_test: int):
        self.enabled, self.log = enabled, log
        self.epochs, self.epoch = epochs, start_epoch
        self.n_train, self.n_eval = n_train, n_val + n_test
        self.progress = None

    def __enter__(self):
        if self.enabled:
            self.progress = new_progress()
            self.progress.__enter__()
            done = self.epoch * self.n_train
            self.task = self.progress.add_task("train", total=self.epochs * self.n_train,
                                               completed=done, rate="")
            self.eval_task = self.progress.add_task("eval", total=self.n_eval, visible=False,
                                                    rate="")
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False

    def train_step(self) -> None:
        if self.progress is not None:
            advance(self.progress, self.task, unit="batch")

    def start_eval(self) -> None:
        if self.progress is not None:
            self.progress.reset(self.eval_task, total=self.n_eval, visible=True,
                                description=f"eval epoch {self.epoch + 1}")

    def eval_step(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.eval_task)

    def end_eval(self) -> None:
        if self.progress is not None:
            self.progress.update(self.eval_task, visible=False)
        self.epoch += 1

    def line(self, text: str) -> None:
        if self.log is not None:
            self.log(text)
        if self.progress is not None:
            self.progress.console.print(text, highlight=False, soft_wrap=True)

    def epoch_line(self, row: dict) -> None:
        self.line(format_epoch_line(row, self.epochs))


def format_epoch_line(row: Mapping[str, Any], epochs: int) -> str:
    """One-line epoch summary, accuracies in percent."""
    def pct(key):
        return f"{100 * row[key]:5.1f}" if key in row else "  -  "

    text = (f"epoch {row['epoch']:>3}/{epochs} lr {row['lr']:.4g} | train clean "
            f"{pct('train_clean_acc')}"
            f" robust {pct('train_robust_acc')} | val clean {pct('val_clean_acc')} robust "
            f"{pct('val_robust_acc')} | test clean {pct('test_clean_acc')} robust "
            f"{pct('test_robust_acc')} | {row['train_seconds']:.1f}s + {row['eval_seconds']:.1f}s")
    if "hessian_lambda_max_mean" in row:
        text += f" | lambda_max mean {row['hessian_lambda_max_mean']:.3g}"
    return text

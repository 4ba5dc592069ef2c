"""Device, precision and compilation choices: the one rule every command uses.

:func:`resolve_device` turns ``--device`` into a checked ``torch.device`` (``auto``: CUDA when
available, else CPU); :func:`autocast_dtype_for` turns ``--precision`` into an autocast dtype;
the rest are the small runtime facts a training run needs (loss scaling for fp16, memory format,
CUDA graphs, a device's printable name).
"""

from __future__ import annotations

import platform
from typing import Any

import torch

from curvtools.errors import BadInput
from harness.distributed import SINGLE, DistContext

DEVICE_TYPES = ("cpu", "cuda", "mps")


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


def resolve_channels_last(cfg: Any, device: torch.device) -> bool:
    """The memory format a run uses: ``cfg.channels_last``, or by default on CUDA only.

    On CUDA for the tensor cores. Off by default on a CPU, where ``--channels-last`` opts in:
    it changes which oneDNN kernels run (so results differ from NCHW at rounding level) and buys
    little at this project's sizes (``python -m bench.cpu_epoch``). It used to crash with two or
    more threads (a heap corruption in the weight gradient of the shortcut's 1x1 stride-2
    convolution; ``bench/channels_last_repro.py``); :class:`harness.nets.StridedPointwiseConv`
    avoids that kernel.
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


def precision_name(amp: torch.dtype | None) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"``: what an autocast dtype from
    :func:`autocast_dtype_for` means."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def allow_recompiles(limit: int = 64) -> None:
    """One compiled graph per (train/eval mode, gradients or not, batch shape): a run needs ~10,
    more than torch._dynamo's default limit of 8, past which it falls back to eager (with a
    warning)."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(limit, getattr(torch._dynamo.config, name)))


def uses_cuda_graphs(cfg: Any, device: torch.device, dist: DistContext = SINGLE, *,
                     graphable: bool = True) -> bool:
    """Whether training steps replay CUDA graphs: ``cfg.cuda_graphs``, or by default on CUDA.

    Not with data parallel (DDP's gradient all-reduce hooks run outside a capture), and not
    when the training attack is not ``graphable`` (``graphable=False``: a registered attack
    whose ``perturb`` draws random numbers or syncs the host, such as torchattacks' attacks;
    a replay would repeat the captured random numbers or fail to capture): then the steps and
    the per-epoch evaluation run eagerly even with ``--cuda-graphs``, and config.json's
    ``resolved.cuda_graphs`` says so (with graphs on, evaluation still replays only a
    ``graphable`` attack, :func:`harness.evaluate.evaluate_robust`). With ``--compile`` the
    compiled kernels are captured too (torch.compile's default mode brings no graphs of its
    own).
    """
    return (cfg.cuda_graphs is not False and device.type == "cuda" and not dist.enabled
            and graphable)



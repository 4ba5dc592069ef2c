"""The reference networks, each with its activation passed in as a factory.

Every ReLU of the reference networks (inside the blocks and the final one before pooling) is
replaced by a fresh module of the configured activation (``make_act()``), one module instance
per use. Built by name through the architecture registry (:mod:`harness.models`), which also
documents each net and its parameter count.

- :class:`PreActResNet`: Rice et al.'s PreActResNet-18, the paper's "ResNet-18";
- :class:`ResNet`: the standard CIFAR ResNet-18 (post-activation BasicBlocks);
- :class:`WideResNet`: WRN-depth-width, the pre-activation variant of Rice et al.'s code;
- :class:`Normalized`: wraps any of them so that it takes [0, 1] pixels.

The reference code pools with a fixed 4x4 (ResNets) or 8x8 (WRN) window; we use adaptive
average pooling to 1x1, which is identical for 32x32 inputs and works for other sizes (digits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

ActFactory = Callable[[], nn.Module]


class StridedPointwiseConv(nn.Conv2d):
    """The 1x1 strided convolution of a shortcut, safe in channels_last on a CPU.

    With torch 2.14.1 on a CPU and two or more threads, the weight gradient of a 1x1 stride-2
    convolution on a channels_last input corrupts the heap for some shapes (8 -> 16 channels on
    16x16 inputs, batch 5: ``free(): invalid next size`` or a segfault, every run;
    ``bench/channels_last_repro.py`` is the minimal reproduction). A stride-s 1x1 convolution is
    a stride-1 one on every s-th pixel, and that kernel does not crash, so a channels_last input
    on a CPU takes that path. Everything else (NCHW, CUDA) runs ``nn.Conv2d`` itself, unchanged
    bit for bit; parameters, initialization and state_dict keys are ``nn.Conv2d``'s.
    """

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sy, sx = self.stride
        if (sy, sx) != (1, 1) and x.device.type == "cpu" and x.dim() == 4 \
                and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return F.conv2d(x[:, :, ::sy, ::sx], self.weight, self.bias)
        return super().forward(x)


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN -> act -> conv3x3 -> BN -> act -> conv3x3, plus shortcut.

    When the shape changes, the shortcut is a 1x1 conv applied to the *activated* input (as in
    Rice et al.'s PreActBlock and in the WRN block); otherwise it is the identity on the raw input.
    Shapes: [B, in_planes, H, W] -> [B, planes, H/stride, W/stride].
    """

    def __init__(self, in_planes: int, planes: int, stride: int, make_act: ActFactory):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = make_act()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = make_act()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = StridedPointwiseConv(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + shortcut


class BasicBlock(nn.Module):
    """Post-activation basic block (He et al. 2016a): conv-BN-act-conv-BN, add shortcut, act."""

    def __init__(self, in_planes: int, planes: int, stride: int, make_act: ActFactory):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = make_act()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = make_act()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                StridedPointwiseConv(in_planes, planes, stride), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


def _stage(block: type[nn.Module], in_planes: int, planes: int, num_blocks: int, stride: int,
           make_act: ActFactory) -> nn.Sequential:
    layers = []
    for i in range(num_blocks):
        layers.append(block(in_planes if i == 0 else planes, planes, stride if i == 0 else 1,
                            make_act))
    return nn.Sequential(*layers)


# --- networks ------------------------------------------------------------------------------------


class PreActResNet(nn.Module):
    """Pre-activation ResNet for small images (Rice et al.'s PreActResNet, adaptive pooling).

    ``channels`` are the four stage widths (64, 128, 256, 512 at width 1). [B, C, H, W] -> [B, K].
    """

    def __init__(self, num_blocks: Sequence[int], channels: Sequence[int], num_classes: int,
                 in_channels: int, make_act: ActFactory):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        stages, in_planes = [], channels[0]
        for i, (n, planes) in enumerate(zip(num_blocks, channels, strict=True)):
            stages.append(_stage(PreActBlock, in_planes, planes, n, 1 if i == 0 else 2, make_act))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.act = make_act()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.pool(self.act(self.bn(out)))
        return self.linear(out.flatten(1))


class ResNet(nn.Module):
    """Standard CIFAR ResNet (post-activation BasicBlocks, no max-pool). [B, C, H, W] -> [B, K]."""

    def __init__(self, num_blocks: Sequence[int], channels: Sequence[int], num_classes: int,
                 in_channels: int, make_act: ActFactory):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.act = make_act()
        stages, in_planes = [], channels[0]
        for i, (n, planes) in enumerate(zip(num_blocks, channels, strict=True)):
            stages.append(_stage(BasicBlock, in_planes, planes, n, 1 if i == 0 else 2, make_act))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.pool(out).flatten(1))


class WideResNet(nn.Module):
    """Wide ResNet WRN-depth-width with pre-activation blocks and dropout 0.

    ``n = (depth - 4) / 6`` blocks per stage; stage widths 16*W, 32*W, 64*W after a 16-channel
    stem (all scaled by the ``width`` multiplier). [B, C, H, W] -> [B, K].
    """

    def __init__(self, blocks_per_stage: int, channels: Sequence[int], num_classes: int,
                 in_channels: int, make_act: ActFactory):
        super().__init__()
        stem, *widths = channels
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False)
        stages, in_planes = [], stem
        for i, planes in enumerate(widths):
            stages.append(_stage(PreActBlock, in_planes, planes, blocks_per_stage,
                                 1 if i == 0 else 2, make_act))
            in_planes = planes
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.act = make_act()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self._reference_init()

    def _reference_init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.pool(self.act(self.bn(out)))
        return self.fc(out.flatten(1))


class Normalized(nn.Module):
    """``core((x - mean) / std)``: takes [0, 1] pixels; mean/std are per-channel buffers.

    The buffers are part of the state_dict (keys ``mean``, ``std``), so a checkpoint carries them.
    """

    def __init__(self, core: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.core = core
        as_buffer = lambda v: torch.tensor(list(v), dtype=torch.float32).view(1, -1, 1, 1)  # noqa: E731
        self.register_buffer("mean", as_buffer(mean))
        self.register_buffer("std", as_buffer(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.core((x - self.mean) / self.std)


# --- config --------------------------------------------------------------------------------------

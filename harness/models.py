"""Image classifiers for adversarial training: PreActResNet-18, ResNet-18 and WRN-depth-width.

Every network is built by :func:`build_model` from a JSON-able config (the one stored in
checkpoints), takes pixels in [0, 1] and normalizes them itself with per-channel ``mean``/``std``
buffers, so attacks and external tools (torchattacks, AutoAttack) see the same input space.

Every ReLU of the reference networks (inside the blocks and the final one before pooling) is
replaced by a fresh module of the configured activation, one module instance per use.

Architectures (``config["arch"]``):

- ``preactresnet18``: the PreActResNet-18 of Rice et al. (2020), which the paper calls
  "ResNet-18": 3x3 stem conv (64 channels), no max-pool, PreActBlocks [2, 2, 2, 2], final
  BN -> activation -> global average pool -> linear. 11,172,170 parameters for 10 classes
  (the often-quoted 11,171,146 is the same net without the final BN, as in kuangliu's repo; Rice
  et al.'s code and PROTOCOL.md have the final BN, 2 x 512 more parameters).
- ``resnet18``: the standard CIFAR ResNet-18 (post-activation BasicBlocks, BN after every conv,
  1x1 conv + BN projection shortcuts). 11,173,962 parameters for 10 classes.
- ``wrn-D-W``: Wide ResNet (Zagoruyko & Komodakis; the pre-activation variant in Rice et al.'s
  code, dropout 0), depth ``D = 6n + 4``, width factor ``W``. WRN-28-10 has 36,479,194 parameters
  for 10 classes. (Rice et al.'s WRN-34-10 registered an extra unused block; we do not.)

The reference code pools with a fixed 4x4 (ResNets) or 8x8 (WRN) window; we use adaptive
average pooling to 1x1, which is identical for 32x32 inputs and works for other sizes (digits).

Initialization: PreActResNet-18 and ResNet-18 keep torch's default init, as the reference code
does. WRN uses the reference init: conv weights ``kaiming_normal_(mode="fan_out",
nonlinearity="relu")`` (the relu gain for any activation, as the authors' code), BN weight 1 /
bias 0, linear bias 0 (linear weight torch default).

Example::

    >>> from curvtools.activations import resolve
    >>> model = build_model({"arch": "preactresnet18", "act": resolve("silu").config(),
    ...                      "num_classes": 10, "in_channels": 3, "width": 1.0,
    ...                      "mean": [0.4914, 0.4822, 0.4465], "std": [0.2471, 0.2435, 0.2616]})
    >>> model(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from curvtools.activations import from_config, resolve
from curvtools.errors import BadInput

ActFactory = Callable[[], nn.Module]

ARCH_HELP = "preactresnet18, resnet18 or wrn-D-W (D = 6n+4, e.g. wrn-28-10, wrn-34-10)"
CONFIG_KEYS = ("arch", "act", "num_classes", "in_channels", "width", "mean", "std")


# --- blocks --------------------------------------------------------------------------------------


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
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

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
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

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


def _scaled(channels: Sequence[int], width: float) -> list[int]:
    """Channel counts times the width multiplier, rounded, at least 1."""
    return [max(1, int(round(c * width))) for c in channels]


def parse_arch(arch: str) -> tuple[str, int, int]:
    """``"wrn-28-10"`` -> ``("wrn", 28, 10)``; ``"preactresnet18"`` -> ``("preactresnet18", 0, 0)``.

    Raises BadInput for anything that is not a known architecture or a valid WRN depth.
    """
    key = str(arch).strip().lower()
    if key in ("preactresnet18", "resnet18"):
        return key, 0, 0
    match = re.fullmatch(r"wrn-(\d+)-(\d+)", key)
    if match is None:
        raise BadInput(f"unknown arch {arch!r}; allowed: {ARCH_HELP}")
    depth, widen = int(match.group(1)), int(match.group(2))
    if depth < 10 or (depth - 4) % 6 != 0:
        raise BadInput(f"arch {arch!r}: WRN depth must be 6n+4 with n >= 1 "
                       f"(10, 16, 22, 28, 34, ...), got {depth}")
    if widen < 1:
        raise BadInput(f"arch {arch!r}: WRN width factor must be an integer >= 1")
    return "wrn", depth, widen


def _number(config: Mapping[str, Any], key: str, default: Any) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadInput(f"model config {key}={value!r} must be a finite number")
    return value


def _per_channel(config: Mapping[str, Any], key: str, default: float, channels: int,
                 positive: bool) -> list[float]:
    value = config.get(key)
    if value is None:
        return [default] * channels
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        raise BadInput(f"model config {key}={value!r} must be a list of {channels} numbers"
                       ) from None
    if len(values) != channels or not all(math.isfinite(v) for v in values):
        raise BadInput(f"model config {key}={value!r} must be {channels} finite numbers "
                       f"(one per input channel)")
    if positive and min(values) <= 0:
        raise BadInput(f"model config {key}={value!r} must be > 0")
    return values


def model_config(arch: str = "preactresnet18", act: Mapping[str, Any] | None = None,
                 num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> dict[str, Any]:
    """The JSON-able config dict :func:`build_model` takes, with defaults filled in.

    ``act`` is an ``Activation.config()`` dict (default ReLU); mean/std default to 0/1
    (no normalization).
    """
    config = {"arch": arch, "act": dict(act) if act is not None else resolve("relu").config(),
              "num_classes": num_classes, "in_channels": in_channels, "width": width,
              "mean": list(mean) if mean is not None else [0.0] * in_channels,
              "std": list(std) if std is not None else [1.0] * in_channels}
    validate_config(config)
    return config


def validate_config(config: Mapping[str, Any]) -> None:
    """Raise BadInput (one line) if ``config`` would not build a model."""
    if not isinstance(config, Mapping):
        raise BadInput("model config must be a mapping")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise BadInput(f"model config has unknown key(s) {', '.join(unknown)}; "
                       f"allowed: {', '.join(CONFIG_KEYS)}")
    parse_arch(config.get("arch", "preactresnet18"))
    from_config(config.get("act") or {"name": "relu"})
    for key, default, low in (("num_classes", 10, 2), ("in_channels", 3, 1)):
        value = _number(config, key, default)
        if value != int(value) or value < low:
            raise BadInput(f"model config {key}={value!r} must be an integer >= {low}")
    width = _number(config, "width", 1.0)
    if width <= 0:
        raise BadInput(f"model config width={width!r} must be > 0")
    channels = int(config.get("in_channels", 3))
    _per_channel(config, "mean", 0.0, channels, positive=False)
    _per_channel(config, "std", 1.0, channels, positive=True)


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """Build the network described by ``config`` (see module docstring), in train mode, on CPU.

    Keys (all optional except that unknown keys are rejected): ``arch`` (default
    ``preactresnet18``), ``act`` (an ``Activation.config()`` dict, default ReLU), ``num_classes``
    (10), ``in_channels`` (3), ``width`` (channel multiplier, 1.0 = paper), ``mean``/``std``
    (per-channel lists, default 0/1). Returns a :class:`Normalized` module mapping [0, 1] pixels
    [B, in_channels, H, W] to logits [B, num_classes]; ``model.core`` is the bare network.
    Raises BadInput (one line) for any bad value.
    """
    validate_config(config)
    kind, depth, widen = parse_arch(config.get("arch", "preactresnet18"))
    activation = from_config(config.get("act") or {"name": "relu"})
    num_classes = int(config.get("num_classes", 10))
    in_channels = int(config.get("in_channels", 3))
    width = float(config.get("width", 1.0))
    make_act = activation.module  # a fresh module per call
    if kind == "preactresnet18":
        core: nn.Module = PreActResNet([2, 2, 2, 2], _scaled([64, 128, 256, 512], width),
                                       num_classes, in_channels, make_act)
    elif kind == "resnet18":
        core = ResNet([2, 2, 2, 2], _scaled([64, 128, 256, 512], width), num_classes,
                      in_channels, make_act)
    else:
        channels = _scaled([16, 16 * widen, 32 * widen, 64 * widen], width)
        core = WideResNet((depth - 4) // 6, channels, num_classes, in_channels, make_act)
    mean = _per_channel(config, "mean", 0.0, in_channels, positive=False)
    std = _per_channel(config, "std", 1.0, in_channels, positive=True)
    return Normalized(core, mean, std)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (buffers such as BN statistics and mean/std excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe(config: Mapping[str, Any]) -> str:
    """One line, e.g. ``preactresnet18 x1 silu, 10 classes, 11,172,170 parameters``."""
    model = build_model(config)
    act = from_config(config.get("act") or {"name": "relu"}).label
    return (f"{config.get('arch', 'preactresnet18')} x{float(config.get('width', 1.0)):g} {act}, "
            f"{int(config.get('num_classes', 10))} classes, "
            f"{count_parameters(model):,} parameters")

"""The architecture registry: image classifiers by name, built from a JSON-able model config.

Every network is built by :func:`build_model` from a JSON-able config (the one stored in
checkpoints), takes pixels in [0, 1] and normalizes them itself with per-channel ``mean``/``std``
buffers, so attacks and external tools (torchattacks, AutoAttack) see the same input space.

Every ReLU of the reference networks (inside the blocks and the final one before pooling) is
replaced by a fresh module of the configured activation, one module instance per use. The
networks themselves are in :mod:`harness.nets`; adding an architecture is a network class and
one :func:`register` call below (``docs/architecture.md``).

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from curvtools.activations import from_config, resolve
from curvtools.checks import is_number
from curvtools.errors import BadInput, shown
from curvtools.plugins import ARCHITECTURE_GROUP, from_entry_points, is_reference, load_reference

if TYPE_CHECKING:  # the registry itself loads no torch: `harness train --help` lists it
    import torch.nn as nn

    from harness.nets import ActFactory

CONFIG_KEYS = ("arch", "act", "num_classes", "in_channels", "width", "mean", "std")

# build(num_classes, in_channels, width, make_act, **named groups of the pattern) -> the core
# net (an nn.Module); a network class with that constructor is a builder itself
Builder = Callable[..., Any]


@dataclass(frozen=True)
class ArchSpec:
    """One registered architecture (or family, such as ``wrn-D-W``).

    ``pattern``: a regular expression with named groups (integers) that the family's names
    match, e.g. ``wrn-(?P<depth>\\d+)-(?P<widen>\\d+)``; None for a single name. ``check``
    refuses bad group values with a one-line reason.
    """

    name: str
    help: str
    build: Builder
    pattern: str | None = None
    check: Callable[..., str | None] | None = None


REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    """Add an architecture (new names only)."""
    if spec.name in REGISTRY:
        raise ValueError(f"architecture name {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def arch_help() -> str:
    """What ``--arch`` accepts, from the registry."""
    return ", ".join(s.help for s in REGISTRY.values())


def resolve_arch(arch: str) -> tuple[ArchSpec, dict[str, int]]:
    """``"wrn-28-10"`` -> (the ``wrn`` spec, ``{"depth": 28, "widen": 10}``);
    ``"preactresnet18"`` -> (its spec, ``{}``). A user's architecture: ``"mypkg.nets:TINY"``
    (an :class:`ArchSpec` in an importable module) or a name an installed package declares in
    the ``lowcurv.architectures`` entry-point group (:mod:`curvtools.plugins`). Raises BadInput
    for anything else."""
    if not isinstance(arch, str):
        raise BadInput(f"arch {shown(arch)} must be text; allowed: {arch_help()}")
    if is_reference(arch):
        return load_reference(arch, ArchSpec, "architecture"), {}
    key = arch.strip().lower()
    for spec in REGISTRY.values():
        if spec.pattern is None:
            if key == spec.name:
                return spec, {}
            continue
        match = re.fullmatch(spec.pattern, key)
        if match is not None:
            params = {k: int(v) for k, v in match.groupdict().items()}
            problem = spec.check(**params) if spec.check else None
            if problem:
                raise BadInput(f"arch {shown(arch)}: {problem}")
            return spec, params
    plugin = from_entry_points(ARCHITECTURE_GROUP, key, ArchSpec, "architecture")
    if plugin is not None:
        return plugin, {}
    raise BadInput(f"unknown arch {shown(arch)}; allowed: {arch_help()}, or a plugin "
                   f"(module:ATTRIBUTE naming an ArchSpec)")


def check_arch(arch: str) -> None:
    """Raise BadInput unless ``arch`` names a registered architecture."""
    resolve_arch(arch)


def _scaled(channels: Sequence[int], width: float) -> list[int]:
    """Channel counts times the width multiplier, rounded, at least 1."""
    return [max(1, int(round(c * width))) for c in channels]


def _number(config: Mapping[str, Any], key: str, default: Any) -> float:
    value = config.get(key, default)
    if not is_number(value):
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
    resolve_arch(config.get("arch", "preactresnet18"))
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
    spec, params = resolve_arch(config.get("arch", "preactresnet18"))
    activation = from_config(config.get("act") or {"name": "relu"})
    num_classes = int(config.get("num_classes", 10))
    in_channels = int(config.get("in_channels", 3))
    width = float(config.get("width", 1.0))
    # activation.module makes a fresh module per call
    core = spec.build(num_classes, in_channels, width, activation.module, **params)
    mean = _per_channel(config, "mean", 0.0, in_channels, positive=False)
    std = _per_channel(config, "std", 1.0, in_channels, positive=True)
    from harness.nets import Normalized

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


# --- the built-in architectures -------------------------------------------------------------


def _preactresnet18(num_classes: int, in_channels: int, width: float,
                    make_act: ActFactory) -> nn.Module:
    from harness.nets import PreActResNet

    return PreActResNet([2, 2, 2, 2], _scaled([64, 128, 256, 512], width), num_classes,
                        in_channels, make_act)


def _resnet18(num_classes: int, in_channels: int, width: float, make_act: ActFactory) -> nn.Module:
    from harness.nets import ResNet

    return ResNet([2, 2, 2, 2], _scaled([64, 128, 256, 512], width), num_classes, in_channels,
                  make_act)


def _wrn(num_classes: int, in_channels: int, width: float, make_act: ActFactory, *,
         depth: int, widen: int) -> nn.Module:
    from harness.nets import WideResNet

    channels = _scaled([16, 16 * widen, 32 * widen, 64 * widen], width)
    return WideResNet((depth - 4) // 6, channels, num_classes, in_channels, make_act)


def _check_wrn(depth: int, widen: int) -> str | None:
    if depth < 10 or (depth - 4) % 6 != 0:
        return f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth}"
    if widen < 1:
        return "WRN width factor must be an integer >= 1"
    return None


register(ArchSpec("preactresnet18", "preactresnet18 (the paper's)", _preactresnet18))
register(ArchSpec("resnet18", "resnet18", _resnet18))
register(ArchSpec("wrn", "wrn-D-W (D = 6n+4, e.g. wrn-28-10, wrn-34-10)", _wrn,
                  pattern=r"wrn-(?P<depth>\d+)-(?P<widen>\d+)", check=_check_wrn))

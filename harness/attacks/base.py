"""What every attack of the registry is: an object built from a :class:`ThreatModel`.

An attack draws its random numbers in :meth:`Attack.starts` (from a caller's generator, so runs
are reproducible and data-parallel ranks agree) and computes the perturbation in
:meth:`Attack.perturb`. ``honours`` names the threat-model fields the attack uses: a field a user
sets that the attack cannot honour is refused (:func:`harness.attacks.make_attack`), never
silently dropped.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from harness.attacks.threat import ThreatModel


class Attack:
    """Base class: subclasses set ``name``, ``honours`` and implement :meth:`perturb`.

    ``graphable``: :meth:`perturb` draws no random numbers and never syncs the host, so a caller
    may replay it from a CUDA graph.
    """

    name: ClassVar[str] = "attack"
    graphable: ClassVar[bool] = False
    honours: frozenset[str] = frozenset()

    def __init__(self, threat: ThreatModel):
        self.threat = threat

    def starts(self, x: torch.Tensor, generator: torch.Generator | None = None,
               rows_of_batch: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, ...]:
        """Random numbers :meth:`perturb` needs for ``x``, drawn from ``generator``; none by
        default (an attack that draws its own, seeded at construction)."""
        return ()

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *starts: torch.Tensor,
                autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """The perturbation ``delta`` (fp32, shape of ``x``) with ``x + delta`` in [0, 1] and
        ``||delta|| <= threat.eps``; ``model`` maps [0, 1] images [B, C, H, W] to logits."""
        raise NotImplementedError

    def describe(self) -> str:
        """``name: threat`` with the threat-model fields this attack uses, e.g. ``pgd: linf eps
        8/255, step 2/255, 20 steps x 5 restarts`` or ``fgsm: linf eps 8/255``."""
        return f"{self.name}: {self.threat.describe(self.honours)}"

    def __repr__(self) -> str:
        return f"{self.name}({self.threat.describe()})"

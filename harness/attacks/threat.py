"""The threat model: every setting an attack takes, as one typed object.

Training, per-epoch evaluation, ``harness eval``, the distributed path, ``curvtools lemma`` and
the benches all describe their attack with one :class:`ThreatModel` and get the attack from the
registry (:func:`harness.attacks.make_attack`), instead of passing eps, step, steps, restarts,
norm and BatchNorm mode as loose keyword arguments.

Example::

    >>> ThreatModel.from_255(eps_255=8, step_255=2, steps=20, restarts=5).describe()
    'linf eps 8/255, step 2/255, 20 steps x 5 restarts'
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from curvtools.checks import is_int
from curvtools.errors import BadInput

BN_MODES = ("train", "eval", "keep")
_NORM_ALIASES = {"linf": "linf", "l_inf": "linf", "inf": "linf", "l2": "l2", "l_2": "l2"}


def normalize_norm_name(norm: str) -> str:
    """``"linf"`` or ``"l2"`` for the accepted spellings (``l_inf``, ``inf``, ``l_2``)."""
    key = str(norm).strip().lower()
    if key not in _NORM_ALIASES:
        raise BadInput(f"norm {norm!r}; allowed: linf, l2")
    return _NORM_ALIASES[key]


@dataclass(frozen=True)
class ThreatModel:
    """What an attack may do and how hard it tries.

    Attributes:
        norm: ``"linf"`` or ``"l2"`` (other spellings are normalized).
        eps: radius of the ball, in [0, 1] pixel units (the paper: 8/255, l_inf).
        step: step size of iterative attacks, same units (the paper: 2/255).
        steps: iterations per restart (0: the random start only).
        restarts: independent starts; per example the highest-loss perturbation is kept.
        random_start: start from a uniform point of the ball (else from 0).
        bn_mode: BatchNorm during the attack: ``"train"`` (batch statistics, running statistics
            move: the authors' training attack), ``"eval"`` (evaluation) or ``"keep"``.
    """

    norm: str = "linf"
    eps: float = 8 / 255
    step: float = 2 / 255
    steps: int = 10
    restarts: int = 1
    random_start: bool = True
    bn_mode: str = "eval"

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", normalize_norm_name(self.norm))
        if not (isinstance(self.eps, int | float) and 0 <= self.eps < math.inf):
            raise BadInput(f"eps={self.eps} must be a finite number >= 0")
        if not (isinstance(self.step, int | float) and 0 <= self.step < math.inf):
            raise BadInput(f"step={self.step} must be a finite number >= 0")
        if not (is_int(self.steps) or float(self.steps).is_integer()) or self.steps < 0:
            raise BadInput(f"steps={self.steps} must be an integer >= 0")
        if not (is_int(self.restarts) or float(self.restarts).is_integer()) or self.restarts < 1:
            raise BadInput(f"restarts={self.restarts} must be an integer >= 1")
        if self.bn_mode not in BN_MODES:
            raise BadInput(f"bn_mode={self.bn_mode!r}; allowed: {', '.join(BN_MODES)}")

    @classmethod
    def from_255(cls, *, eps_255: float, step_255: float, **fields) -> ThreatModel:
        """A threat model with eps and step in 1/255 units (the CLI's and configs' units)."""
        return cls(eps=eps_255 / 255.0, step=step_255 / 255.0, **fields)

    def replace(self, **changes) -> ThreatModel:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def describe(self, fields: frozenset[str] | set[str] | None = None) -> str:
        """One line for logs and tables, e.g. ``linf eps 8/255, step 2/255, 20 steps x 5
        restarts``; ``fields``: only these (what an attack uses), default all."""
        def units(v: float) -> str:
            return f"{v * 255:g}/255"

        def shown(name: str) -> bool:
            return fields is None or name in fields

        parts = [f"{self.norm} eps {units(self.eps)}"]
        if shown("step"):
            parts.append(f"step {units(self.step)}")
        counts = []
        if shown("steps"):
            counts.append("1 step" if self.steps == 1 else f"{self.steps} steps")
        if shown("restarts"):
            counts.append("1 restart" if self.restarts == 1 else f"{self.restarts} restarts")
        if counts:
            parts.append(" x ".join(counts))
        return ", ".join(parts)

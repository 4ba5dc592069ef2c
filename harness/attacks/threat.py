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
from dataclasses import dataclass

from curvtools.checks import is_int, is_number
from curvtools.errors import BadInput, shown

BN_MODES = ("train", "eval", "keep")
_NORM_ALIASES = {"linf": "linf", "l_inf": "linf", "inf": "linf", "l2": "l2", "l_2": "l2"}


def normalize_norm_name(norm: str) -> str:
    """``"linf"`` or ``"l2"`` for the accepted spellings (``l_inf``, ``inf``, ``l_2``)."""
    key = str(norm).strip().lower()
    if key not in _NORM_ALIASES:
        raise BadInput(f"norm {shown(norm)}; allowed: linf, l2")
    return _NORM_ALIASES[key]


def _whole(value: object) -> bool:
    """An integer, or a float holding one (``20.0``); never a bool or text."""
    return is_int(value) or (is_number(value) and float(value).is_integer())


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
        allow_unusual_eps: accept ``eps > 1``. Images are in [0, 1], so such a radius is almost
            always 1/255 units given as pixel units (``eps=8`` for 8/255): refused unless this
            is true.
    """

    norm: str = "linf"
    eps: float = 8 / 255
    step: float = 2 / 255
    steps: int = 10
    restarts: int = 1
    random_start: bool = True
    bn_mode: str = "eval"
    allow_unusual_eps: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", normalize_norm_name(self.norm))
        if not (is_number(self.eps) and self.eps >= 0):
            raise BadInput(f"eps={shown(self.eps)} must be a finite number >= 0")
        if self.eps > 1 and self.allow_unusual_eps is not True:
            raise BadInput(f"eps={shown(self.eps)} is larger than 1, the whole [0, 1] pixel "
                           f"range: eps is in pixel units, not 1/255 (use "
                           f"ThreatModel.from_255(eps_255={shown(self.eps)}, ...)); pass "
                           f"allow_unusual_eps=True if you mean it")
        if not (is_number(self.step) and self.step >= 0):
            raise BadInput(f"step={shown(self.step)} must be a finite number >= 0")
        if not _whole(self.steps) or self.steps < 0:
            raise BadInput(f"steps={shown(self.steps)} must be an integer >= 0")
        if not _whole(self.restarts) or self.restarts < 1:
            raise BadInput(f"restarts={shown(self.restarts)} must be an integer >= 1")
        if self.bn_mode not in BN_MODES:
            raise BadInput(f"bn_mode={shown(self.bn_mode)}; allowed: {', '.join(BN_MODES)}")
        if not isinstance(self.random_start, bool):
            raise BadInput(f"random_start={shown(self.random_start)} must be True or False")

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

"""Any attack of the torchattacks library as a registry attack: ``torchattacks:NAME``.

One adapter instead of one hand-written branch per attack. The threat model's fields go to the
attack class's own arguments where it has them (``eps``, ``alpha`` = step, ``steps``,
``n_restarts``, ``random_start``, ``norm``), plus ``n_classes`` and ``seed``. What the class
cannot take is honoured here or refused:

* restarts of an attack with a random start but no ``n_restarts`` (PGD, PGDL2, ...): the attack
  runs ``restarts`` times and per example the highest-loss perturbation is kept;
* the norm of a class without a ``norm`` argument is fixed (``...L2`` classes and CW: l2; the
  rest: linf): another threat-model norm is refused;
* every perturbation is checked against the threat model: an example whose perturbation leaves
  the eps ball (CW and DeepFool minimize the norm instead of bounding it) counts as not broken
  (its delta is reset to 0), so robust accuracy is always accuracy within eps;
* BatchNorm: torchattacks runs the model in eval mode; ``bn_mode="train"`` is refused.

Extra keyword arguments of the class follow the name: ``torchattacks:APGD:loss=dlr``,
``torchattacks:Square:n_queries=1000`` (numbers are parsed, the rest are strings). What the threat
model sets (``eps``, ``alpha``, ``steps``, ``n_restarts``, ``random_start``, ``norm``) and what
the harness sets (``n_classes``, ``seed``) cannot be given there: ``steps=1`` beside ``--steps
60`` would run 1 step while the record said 60, so it is refused with one line naming the option
to use (``--steps``), and what is printed and recorded is always what ran. The options are tried
once on a tiny stand-in model when the attack is built, so a bad value (``loss=foo``) is one line
then, not a traceback in the middle of an evaluation.

Example::

    >>> attack = make_attack("torchattacks:APGD:loss=dlr", threat, num_classes=10)
    >>> delta = attack.perturb(model, x, y)
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from curvtools.checks import is_int
from curvtools.errors import BadInput, shown
from harness.attacks.base import Attack
from harness.attacks.threat import ThreatModel

PREFIX = "torchattacks"
# classes whose threat model is l2 although they take no norm argument
_L2_CLASSES = ("CW", "DeepFool", "EADEN", "EADL1")
_BALL_TOLERANCE = 1e-6  # float slack when checking ||delta|| <= eps
# class arguments the threat model or the harness sets, and where a user sets them instead
SET_ELSEWHERE = {"eps": "--eps-255 (ThreatModel.eps)", "alpha": "--alpha-255 (ThreatModel.step)",
                 "steps": "--steps (ThreatModel.steps)",
                 "n_restarts": "--restarts (ThreatModel.restarts)",
                 "random_start": "ThreatModel.random_start", "norm": "--norm (ThreatModel.norm)",
                 "n_classes": "the dataset (its class count)", "seed": "--seed"}
# count arguments the probe (TorchattacksAttack._probe) lowers to 1 to stay fast
_PROBE_COUNTS = ("steps", "n_restarts", "n_queries", "max_iter", "eot_iter")


def _parse_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_name(name: str) -> tuple[str, dict[str, Any]]:
    """``"torchattacks:APGD:loss=dlr"`` -> ``("APGD", {"loss": "dlr"})``."""
    parts = name.split(":")
    if len(parts) < 2 or parts[0] != PREFIX or not parts[1]:
        raise BadInput(f"attack {shown(name)}: expected {PREFIX}:CLASS[:key=value,...], "
                       f"e.g. {PREFIX}:APGD:loss=dlr")
    options: dict[str, Any] = {}
    for item in ":".join(parts[2:]).split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"attack {shown(name)}: option {shown(item)} is not key=value")
        if key.strip() in options:
            raise BadInput(f"attack {shown(name)}: option {shown(key.strip())} is given twice")
        options[key.strip()] = _parse_value(value.strip())
    return parts[1], options


def _attack_class(class_name: str):
    try:
        import torchattacks
    except ImportError:
        raise BadInput(f"attack {PREFIX}:{class_name} needs the torchattacks package "
                       f"(pip install torchattacks)") from None
    cls = getattr(torchattacks, class_name, None)
    base = getattr(torchattacks, "Attack", object)
    if not (isinstance(cls, type) and issubclass(cls, base)) or class_name in ("Attack",
                                                                              "MultiAttack"):
        known = sorted(n for n in dir(torchattacks) if n[:1].isupper()
                       and isinstance(getattr(torchattacks, n), type)
                       and issubclass(getattr(torchattacks, n), base)
                       and n not in ("Attack", "MultiAttack"))
        raise BadInput(f"torchattacks has no attack {shown(class_name)}; known: "
                       f"{', '.join(known)}")
    return cls


def check_options(class_name: str, options: dict[str, Any]) -> Any:
    """Refuse (one :class:`BadInput` line) an unknown class, an option the class does not take
    and an option the threat model or the harness sets (:data:`SET_ELSEWHERE`); return the
    class's ``__init__`` parameters. Builds nothing (``harness eval`` calls it before any work).
    """
    cls = _attack_class(class_name)
    sig = inspect.signature(cls.__init__).parameters
    name = f"{PREFIX}:{class_name}"
    bad = sorted(set(options) - set(sig) - {"self", "model"})
    if bad:
        raise BadInput(f"attack {name} has no argument {shown(', '.join(bad))}; its "
                       f"arguments: {', '.join(p for p in sig if p not in ('self', 'model'))}")
    elsewhere = sorted(set(options) & set(SET_ELSEWHERE))
    if elsewhere:
        key = elsewhere[0]
        raise BadInput(f"attack {name}: {key}={shown(options[key])} in the attack name is not "
                       f"allowed: {key} is set by {SET_ELSEWHERE[key]}, so that what runs is "
                       f"what is printed and recorded; the attack name takes only the class's "
                       f"own options (e.g. loss=dlr)")
    return sig


class _ProbeNet(nn.Module):
    """A differentiable classifier of any image shape: per-image mean -> ``num_classes``."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(-1.0, 1.0, num_classes))
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).mean(1, keepdim=True) * self.scale + self.bias


class TorchattacksAttack(Attack):
    """A torchattacks class run under a :class:`ThreatModel` (see the module docstring)."""

    name = PREFIX

    def __init__(self, threat: ThreatModel, class_name: str, *, num_classes: int = 10,
                 seed: int = 0, options: dict[str, Any] | None = None):
        super().__init__(threat)
        self.cls = _attack_class(class_name)
        self.class_name, self.num_classes, self.seed = class_name, num_classes, seed
        self.name = f"{PREFIX}:{class_name}"
        self.options = dict(options or {})
        sig = check_options(class_name, self.options)
        self.arguments = frozenset(sig)
        self.kwargs: dict[str, Any] = {}
        honours = {"eps", "norm", "bn_mode"}  # eps by the ball check; bn_mode: eval only
        mapping = {"eps": threat.eps, "alpha": threat.step, "steps": threat.steps,
                   "n_restarts": threat.restarts, "random_start": threat.random_start,
                   "n_classes": num_classes, "seed": seed}
        fields = {"alpha": "step", "steps": "steps", "n_restarts": "restarts",
                  "random_start": "random_start"}
        for arg, value in mapping.items():
            if arg in sig:
                self.kwargs[arg] = value
                if arg in fields:
                    honours.add(fields[arg])
        if "norm" in sig:
            self.kwargs["norm"] = {"linf": "Linf", "l2": "L2"}[threat.norm]
        else:
            fixed = "l2" if class_name.endswith("L2") or class_name in _L2_CLASSES else "linf"
            if threat.norm != fixed:
                raise BadInput(f"attack {self.name} attacks in {fixed} only; the threat model "
                               f"is {threat.norm}")
        self.repeats = 1
        if "n_restarts" not in sig and "random_start" in sig:
            self.repeats = threat.restarts  # restarts done here, keeping the worst case
            honours.add("restarts")
        self.honours = frozenset(honours)
        if threat.bn_mode == "train":
            raise BadInput(f"attack {self.name} runs the model in eval mode; bn_mode 'train' is "
                           f"for our PGD only")
        self.kwargs.update(self.options)
        self._built: tuple[nn.Module, Any] | None = None
        if self.options:
            self._probe()

    def _probe(self) -> None:
        """Build the attack with the user's options and run it once on a tiny stand-in model
        (two random 3x8x8 images, counts lowered to 1), so that a bad option value is one
        :class:`BadInput` line now instead of a traceback later. The global RNG is restored."""
        kwargs = {k: (1 if k in _PROBE_COUNTS and is_int(v) and v >= 1 else v)
                  for k, v in self.kwargs.items()}
        kwargs |= {k: 1 for k in _PROBE_COUNTS if k in self.arguments and k not in kwargs}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = _ProbeNet(self.num_classes)
            x = torch.rand(2, 3, 8, 8)
            with torch.no_grad():  # correctly classified: attacks skip the others
                y = model(x).argmax(1)
            try:
                self.cls(model, **kwargs)(x, y)
            except Exception as err:  # torchattacks checks nothing up front: any failure here
                raise BadInput(f"attack {self.name} with {shown(self.options)} fails on a tiny "
                               f"test model: {type(err).__name__}: {shown(str(err), 60)}; check "
                               f"the option values (torchattacks' docs for {self.class_name})"
                               ) from None

    def _attack_for(self, model: nn.Module):
        if self._built is None or self._built[0] is not model:
            torch.manual_seed(self.seed)  # attacks that draw from the global RNG start here
            self._built = (model, self.cls(model, **self.kwargs))
        return self._built[1]

    def _within_ball(self, delta: torch.Tensor) -> torch.Tensor:
        flat = delta.flatten(1)
        size = flat.abs().amax(1) if self.threat.norm == "linf" else flat.norm(dim=1)
        return size <= self.threat.eps * (1 + _BALL_TOLERANCE) + _BALL_TOLERANCE

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *starts: torch.Tensor,
                autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        # torchattacks runs its own forwards, in fp32 (autocast_dtype is for the caller's)
        attack = self._attack_for(model)
        best_delta, best_loss = torch.zeros_like(x), None
        for _ in range(self.repeats):
            delta = (attack(x, y).detach() - x).float()
            inside = self._within_ball(delta).reshape(-1, *([1] * (x.dim() - 1)))
            delta = torch.where(inside, delta, torch.zeros_like(delta))
            if self.repeats == 1:
                return delta
            with torch.no_grad():
                loss = F.cross_entropy(model(x + delta), y, reduction="none")
            take = loss >= best_loss if best_loss is not None else torch.ones_like(loss, dtype=bool)
            best_delta = torch.where(take.reshape(inside.shape), delta, best_delta)
            best_loss = loss if best_loss is None else torch.maximum(best_loss, loss)
        return best_delta


__all__ = ["PREFIX", "SET_ELSEWHERE", "TorchattacksAttack", "check_options", "parse_name"]

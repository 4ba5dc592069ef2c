"""The attack registry: every attack of the project by name, built from a :class:`ThreatModel`.

Training, evaluation (per epoch and ``harness eval``), the distributed path, ``curvtools lemma``
and the benches get their attacks here; nothing else switches on attack names.

* ``pgd``: our PGD (:mod:`harness.attacks.pgd_attack`), the paper's attack, for training and
  reporting;
* ``torchattacks:NAME[:key=value,...]``: any torchattacks attack through one adapter
  (:mod:`harness.attacks.torchattacks_adapter`), e.g. ``torchattacks:APGD:loss=dlr``;
* named shortcuts for the usual evaluation attacks: ``fgsm``, ``apgd-ce``, ``apgd-dlr``, ``fab``,
  ``square``, ``cw``, ``autoattack`` (torchattacks' AutoAttack, standard version, linf or l2),
  and ``torchattacks-pgd`` (torchattacks' PGD, a cross-check of ours).

Adding an attack: one file with an :class:`~harness.attacks.base.Attack` subclass, and one
:func:`register` call below (see ``docs/architecture.md``).

Example::

    >>> threat = ThreatModel.from_255(eps_255=8, step_255=2, steps=20, restarts=5)
    >>> attack = make_attack("pgd", threat)
    >>> delta = attack.perturb(model, x, y, *attack.starts(x, generator))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from curvtools.errors import BadInput, shown
from harness.attacks.base import Attack
from harness.attacks.pgd_attack import (
    PGD,
    attack_loss,
    autocast,
    draw_starts,
    pgd,
    uses_batch_statistics,
)
from harness.attacks.threat import ThreatModel, normalize_norm_name
from harness.attacks.torchattacks_adapter import PREFIX as TORCHATTACKS
from harness.attacks.torchattacks_adapter import TorchattacksAttack, check_options, parse_name

# build(threat, num_classes, seed) -> Attack
Factory = Callable[[ThreatModel, int, int], Attack]


@dataclass(frozen=True)
class AttackEntry:
    """One registered attack: its name, a one-line description and how to build it."""

    name: str
    description: str
    build: Factory
    # restarts when the user sets none (harness eval): the paper reports PGD-20 x 5 restarts
    reporting_restarts: int = 1


REGISTRY: dict[str, AttackEntry] = {}


def register(name: str, description: str, build: Factory,
             reporting_restarts: int = 1) -> AttackEntry:
    """Add an attack under ``name`` (new names only)."""
    if name in REGISTRY or name.startswith(TORCHATTACKS + ":"):
        raise ValueError(f"attack name {name!r} is already taken")
    REGISTRY[name] = entry = AttackEntry(name, description, build, reporting_restarts)
    return entry


def reporting_restarts(name: str) -> int:
    """Restarts ``harness eval`` uses when none are given: 5 for our PGD (the paper's PGD-20 x
    5 reporting protocol), 1 for the others (their own restarts, where they have any)."""
    entry = REGISTRY.get(name.strip().lower())
    return entry.reporting_restarts if entry is not None else 1


def names() -> list[str]:
    """Registered attack names, in registration order (plus ``torchattacks:NAME``)."""
    return list(REGISTRY)


def _torchattacks(class_name: str, **options) -> Factory:
    def build(threat: ThreatModel, num_classes: int, seed: int) -> Attack:
        return TorchattacksAttack(threat, class_name, num_classes=num_classes, seed=seed,
                                  options=options)
    return build


def check_attack_name(name: str) -> None:
    """Refuse, before any work, an attack name :func:`make_attack` would refuse for its form: an
    unknown name, a torchattacks class that does not exist, an option it does not take or one
    the threat model sets (``torchattacks:APGD:steps=1``). Option values are checked when the
    attack is built."""
    if not isinstance(name, str):
        raise BadInput(f"attack {shown(name)} must be a name; allowed: {', '.join(names())}")
    key = name.strip()
    if key.startswith(TORCHATTACKS + ":"):
        check_options(*parse_name(key))
    elif key.lower() not in REGISTRY:
        raise BadInput(f"attack {shown(name)}; allowed: {', '.join(names())} or "
                       f"{TORCHATTACKS}:NAME (any torchattacks attack)")


def make_attack(name: str, threat: ThreatModel, *, num_classes: int = 10, seed: int = 0,
                explicit: Iterable[str] = ()) -> Attack:
    """The attack ``name`` under ``threat``.

    ``explicit``: the threat-model fields the user set (``norm``, ``eps``, ``step``, ``steps``,
    ``restarts``, ``random_start``, ``bn_mode``); one the attack cannot honour raises
    :class:`BadInput` naming it and what the attack does use, so no setting is dropped silently.
    """
    check_attack_name(name)
    key = name.strip()
    if key.startswith(TORCHATTACKS + ":"):
        class_name, options = parse_name(key)
        attack = TorchattacksAttack(threat, class_name, num_classes=num_classes, seed=seed,
                                    options=options)
    else:
        attack = REGISTRY[key.lower()].build(threat, num_classes, seed)
    ignored = sorted(set(explicit) - set(attack.honours))
    if ignored:
        label = key.lower() if key.lower() in REGISTRY else attack.name  # both known names
        raise BadInput(f"attack {label} does not use {', '.join(ignored)}; it uses "
                       f"{', '.join(sorted(attack.honours))}")
    return attack


register("pgd", "our PGD (Madry et al.), the paper's attack for training and reporting",
         lambda threat, num_classes, seed: PGD(threat), reporting_restarts=5)
register("torchattacks-pgd", "torchattacks' PGD (a cross-check of ours)", _torchattacks("PGD"))
register("autoattack", "AutoAttack, standard version (torchattacks' port), linf or l2",
         _torchattacks("AutoAttack"))
register("fgsm", "FGSM, one signed-gradient step of size eps (linf)", _torchattacks("FGSM"))
register("apgd-ce", "APGD on the cross-entropy loss (Croce & Hein)", _torchattacks("APGD",
                                                                                   loss="ce"))
register("apgd-dlr", "APGD on the DLR loss (Croce & Hein)", _torchattacks("APGD", loss="dlr"))
register("fab", "FAB, minimum-norm boundary attack", _torchattacks("FAB"))
register("square", "Square attack, score-based, no gradients", _torchattacks("Square"))
register("cw", "Carlini-Wagner l2 (minimum norm; only perturbations within eps count)",
         _torchattacks("CW"))

__all__ = ["Attack", "AttackEntry", "PGD", "REGISTRY", "ThreatModel", "TorchattacksAttack",
           "attack_loss", "autocast", "check_attack_name", "draw_starts", "make_attack", "names",
           "normalize_norm_name", "pgd", "register", "reporting_restarts", "uses_batch_statistics"]

"""Every setting of a training run (:class:`TrainConfig`) and its validation.

The defaults are the paper's protocol (``../shared/PROTOCOL.md``). A config is plain data:
importing this module loads no torch, so the CLIs build their options without it; checking a
config (:meth:`TrainConfig.validate`) consults the activation, architecture, dataset and attack
registries, which do load torch (no model and no data, though).
Activation parameters live in ``act_params`` and are declared by the activation itself
(``curvtools.activations``); the threat models of training and evaluation come from
:meth:`TrainConfig.train_threat` and :meth:`TrainConfig.eval_threat`.

Example::

    >>> cfg = TrainConfig.from_dict({"dataset": "digits", "act": "leakyrelu",
    ...                              "act_params": {"k": 0.3}, "epochs": 3})
    >>> cfg.milestones()
    [1.5, 2.25]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from curvtools.checks import is_int, is_number
from curvtools.errors import SEED_LIMIT, BadInput, shown

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ATTACK_BN_MODES = ("train", "eval")
# torch.compile modes for --compile; the "reduce-overhead" modes bring CUDA graphs of their own,
# which the step's graphs (harness.graphs) already provide
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")

# Settings that may change when resuming: they do not change what is computed (epochs: unless it
# moves an auto learning-rate milestone the trained epochs have passed, check_resume_config).
RESUMABLE_CHANGES = ("epochs", "device", "sync_bn", "compile", "compile_mode", "cuda_graphs",
                     "save_every", "hessian_every", "hessian_examples", "data_dir", "download",
                     "eval_batch_size", "allow_unusual_eps", "eval_every")


@dataclass
class TrainConfig:
    """Every setting of a training run; the defaults are the paper's protocol.

    ``act_params`` holds the activation's own parameters, as the activation declares them
    (``{"k": 0.3}`` for LeakyReLU, ``{"beta": 4.0}`` for PSwish, ``{"alpha": 1.0}`` for ELU); the
    PGD step is ``alpha_255`` and the radius ``eps_255`` (in 1/255 units; for ``norm="l2"``
    l_2 lengths in the same units). Configs written before ``act_params`` existed kept the
    activation parameters as top-level ``k``/``beta``/``alpha``/``expr``: :meth:`from_dict`
    still reads them (:func:`upgrade_legacy`).
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
    act_params: dict[str, Any] = field(default_factory=dict)
    # optimization
    epochs: int = 200
    batch_size: int = 128
    eval_batch_size: int = 512
    # per-epoch validation and test evaluation every N epochs and at the last one (1: every
    # epoch, the paper's protocol); best.pt is chosen among the evaluated epochs
    eval_every: int = 1
    lr: float = 0.1
    lr_milestones: list[float] | None = None  # auto: 50% and 75% (the paper: 100, 150 of 200)
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
    # eps_255 in (0, 1) (a fraction such as 0.031 given instead of 1/255 units) or above 255 (a
    # radius beyond the [0, 1] image range) is refused unless this is true
    allow_unusual_eps: bool = False
    # the attacks of training and of the per-epoch evaluation, by harness.attacks registry name
    # (a config.json or checkpoint written before these settings: "pgd", see stored_settings)
    train_attack: str = "pgd"
    eval_attack: str = "pgd"
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
        d = upgrade_legacy(d)
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

        return resolve(self.act, **self.act_params)

    def train_threat(self):
        """The :class:`~harness.attacks.ThreatModel` of the training attack ``train_attack``
        (``train_steps``, ``train_restarts``, BatchNorm per ``attack_bn``)."""
        from harness.attacks import ThreatModel

        return ThreatModel.from_255(eps_255=self.eps_255, step_255=self.alpha_255, norm=self.norm,
                                    steps=self.train_steps, restarts=self.train_restarts,
                                    bn_mode=self.attack_bn,
                                    allow_unusual_eps=self.allow_unusual_eps)

    def eval_threat(self):
        """The :class:`~harness.attacks.ThreatModel` of the per-epoch evaluation attack
        ``eval_attack`` (``eval_steps``, ``eval_restarts``, BatchNorm in eval mode)."""
        from harness.attacks import ThreatModel

        return ThreatModel.from_255(eps_255=self.eps_255, step_255=self.alpha_255, norm=self.norm,
                                    steps=self.eval_steps, restarts=self.eval_restarts,
                                    bn_mode="eval", allow_unusual_eps=self.allow_unusual_eps)

    def validate(self) -> None:
        """Raise :class:`BadInput` naming the first bad setting."""
        _validate(self)


# Activation parameters were top-level settings before ``act_params``; their names then.
LEGACY_ACT_PARAMS = ("k", "beta", "alpha", "expr")


def upgrade_legacy(d: Mapping[str, Any]) -> dict[str, Any]:
    """A settings mapping in today's form: legacy top-level ``k``/``beta``/``alpha``/``expr``
    (configs and checkpoints written before ``act_params``) move into ``act_params``; ``None``
    values, which meant "not given", are dropped. Today's form passes through unchanged.

    >>> upgrade_legacy({"act": "elu", "k": None, "alpha": 0.5})
    {'act': 'elu', 'act_params': {'alpha': 0.5}}
    """
    out = dict(d)
    legacy = {name: out.pop(name) for name in LEGACY_ACT_PARAMS if name in out}
    given = {name: value for name, value in legacy.items() if value is not None}
    if given:
        params = out.get("act_params")
        if params not in (None, {}) and dict(params) != given:
            raise BadInput(f"settings give activation parameters twice: "
                           f"act_params={shown(params)} and {shown(given)}")
        out["act_params"] = given
    return out


# Settings added after runs were written: what a config.json or checkpoint without them meant.
ABSENT_MEANS = {"train_attack": "pgd", "eval_attack": "pgd"}


def stored_settings(d: Mapping[str, Any]) -> dict[str, Any]:
    """What a stored ``train_config`` (config.json, checkpoint) means in today's settings:
    :func:`upgrade_legacy`, and each setting of :data:`ABSENT_MEANS` it lacks at the value runs
    had before the setting existed (so resuming compares them too).

    >>> stored_settings({"act": "silu"})["train_attack"]
    'pgd'
    """
    return {**ABSENT_MEANS, **upgrade_legacy(d)}


# TrainConfig setting -> the ThreatModel field it sets, per attack (harness.attacks.make_attack
# refuses a field the attack cannot use when the setting differs from its default)
_THREAT_SETTINGS = {
    "train_attack": {"eps_255": "eps", "alpha_255": "step", "norm": "norm",
                     "train_steps": "steps", "train_restarts": "restarts",
                     "attack_bn": "bn_mode"},
    "eval_attack": {"eps_255": "eps", "alpha_255": "step", "norm": "norm",
                    "eval_steps": "steps", "eval_restarts": "restarts"},
}


def _check_attacks(c: TrainConfig) -> None:
    """Both attacks name an entry of the attack registry that can run their threat model."""
    from harness.attacks import make_attack

    defaults = TrainConfig()
    for name, threat in (("train_attack", c.train_threat), ("eval_attack", c.eval_threat)):
        value = getattr(c, name)
        _need(isinstance(value, str) and value.strip() != "",
              f"{name}={shown(value)} must be an attack name (harness.attacks.names())")
        explicit = {field for setting, field in _THREAT_SETTINGS[name].items()
                    if getattr(c, setting) != getattr(defaults, setting)}
        try:
            make_attack(value, threat(), explicit=explicit)
        except BadInput as err:
            raise BadInput(f"{name}: {err}") from None


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise BadInput(message)


def _kind(value: Any) -> str:
    """What a value of the wrong type is, for a message: ``text``, ``a bool``, ``null``."""
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, str):
        return "text"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return "a number" if is_number(value) else "a non-finite number"
    return f"a {type(value).__name__}"


def _need_number(c: TrainConfig, name: str, ok: Any, rule: str) -> None:
    """``c.name`` is a finite number (not a bool, not text) for which ``ok(value)`` holds."""
    value = getattr(c, name)
    _need(is_number(value), f"{name}={shown(value)} must be a number {rule}, not {_kind(value)}")
    _need(ok(value), f"{name}={shown(value)} must be {rule}")


def _need_int(c: TrainConfig, name: str, low: int, rule: str = "", optional: bool = False
              ) -> None:
    """``c.name`` is an integer >= ``low`` (or None when ``optional``)."""
    value = getattr(c, name)
    if optional and value is None:
        return
    wanted = f"an integer >= {low}{rule}"
    _need(is_int(value), f"{name}={shown(value)} must be {wanted}, not {_kind(value)}")
    _need(value >= low, f"{name}={shown(value)} must be {wanted}")


def _need_bool(c: TrainConfig, name: str, optional: bool = False) -> None:
    value = getattr(c, name)
    wanted = "true, false or null (auto)" if optional else "true or false"
    _need(isinstance(value, bool) or (optional and value is None),
          f"{name}={shown(value)} must be {wanted}, not {_kind(value)}")


def _need_choice(c: TrainConfig, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(c, name)
    _need(isinstance(value, str) and value in allowed,
          f"{name}={shown(value)}; allowed: {', '.join(allowed)}")


def _check_eps(c: TrainConfig) -> None:
    """eps_255 in 1/255 units: 0 (no attack) or a plausible radius, unless allowed."""
    _need_number(c, "eps_255", lambda v: v >= 0, ">= 0 (in 1/255 units; the paper: 8)")
    if c.allow_unusual_eps or c.eps_255 == 0:
        return
    _need(not 0 < c.eps_255 < 1,
          f"eps_255={shown(c.eps_255)} is below 1/255: it looks like a radius in [0, 1] pixel "
          f"units ({c.eps_255:g} = {255 * c.eps_255:.3g}/255) given where 1/255 units belong; "
          f"give eps_255={255 * c.eps_255:.3g} (--eps-255 {255 * c.eps_255:.3g}), or set "
          f"allow_unusual_eps (--allow-unusual-eps) if you mean it")
    _need(c.eps_255 <= 255,
          f"eps_255={shown(c.eps_255)} is above 255/255, a radius beyond the [0, 1] image range; "
          f"set allow_unusual_eps (--allow-unusual-eps) if you mean it")


def _validate(c: TrainConfig) -> None:
    from harness.attacks import normalize_norm_name
    from harness.datasets import check_spec, help_text
    from harness.models import check_arch

    _need(isinstance(c.dataset, str) and c.dataset.strip() != "",
          f"dataset={shown(c.dataset)} must be a name ({help_text()})")
    check_spec(c.dataset)  # the form only: a typo fails at once, even in a sweep's dry run
    _need(isinstance(c.data_dir, str) and c.data_dir.strip() != "",
          f"data_dir={shown(c.data_dir)} must be a folder path, not {_kind(c.data_dir)}")
    _need_bool(c, "download")
    _need_number(c, "val_fraction", lambda v: 0 < v < 1, "in (0, 1) (the paper: 0.1)")
    for name in ("split_seed", "seed"):
        value = getattr(c, name)
        _need(is_int(value) and 0 <= value < SEED_LIMIT,
              f"{name}={shown(value)} must be an integer in [0, 2**63)"
              + ("" if is_int(value) else f", not {_kind(value)}"))
    for name in ("train_subset", "val_subset", "test_subset"):
        _need_int(c, name, 1, " or null (the whole set)", optional=True)
    _need(isinstance(c.act_params, Mapping) and all(isinstance(k, str) for k in c.act_params),
          f"act_params={shown(c.act_params)} must be a mapping of parameter names to values")
    c.act_params = dict(c.act_params)
    _need(isinstance(c.arch, str), f"arch={shown(c.arch)} must be a name, not {_kind(c.arch)}")
    check_arch(c.arch)
    _need_number(c, "width", lambda v: v > 0, "> 0 (1.0 = paper)")
    _need(isinstance(c.act, str), f"act={shown(c.act)} must be a name, not {_kind(c.act)}")
    c.activation()
    _need_int(c, "epochs", 1)
    for name in ("batch_size", "eval_batch_size"):
        _need_int(c, name, 2)
    _need_int(c, "eval_every", 1)
    _need_number(c, "lr", lambda v: v > 0, "> 0")
    if c.lr_milestones is not None:
        ms = c.lr_milestones
        _need(isinstance(ms, list | tuple) and all(is_number(m) and m > 0 for m in ms)
              and list(ms) == sorted(ms),
              f"lr_milestones={shown(ms)} must be a list of increasing positive epochs, e.g. "
              f"[100, 150], or null (auto)")
        c.lr_milestones = [float(m) for m in ms]
    _need_number(c, "lr_gamma", lambda v: v > 0, "> 0")
    _need_number(c, "momentum", lambda v: 0 <= v < 1, "in [0, 1)")
    _need_number(c, "weight_decay", lambda v: v >= 0, ">= 0")
    _need_bool(c, "allow_unusual_eps")
    _check_eps(c)
    _need_number(c, "alpha_255", lambda v: v > 0, "> 0 (PGD step in 1/255 units; the paper: 2)")
    _need(isinstance(c.norm, str), f"norm={shown(c.norm)} must be linf or l2, not "
                                   f"{_kind(c.norm)}")
    c.norm = normalize_norm_name(c.norm)
    for name in ("train_steps", "eval_steps", "train_restarts", "eval_restarts"):
        _need_int(c, name, 1)
    _need_choice(c, "attack_bn", ATTACK_BN_MODES)
    _check_attacks(c)
    _need_choice(c, "precision", PRECISIONS)
    _need_choice(c, "compile_mode", COMPILE_MODES)
    for name in ("channels_last", "cuda_graphs"):
        _need_bool(c, name, optional=True)
    for name in ("save_every", "hessian_every"):
        _need_int(c, name, 0, " (0 = off)")
    _need_int(c, "hessian_examples", 1)
    _need_bool(c, "sync_bn")
    _need(isinstance(c.device, str), f"device={shown(c.device)} must be auto, cpu, cuda or "
                                     f"cuda:N, not {_kind(c.device)}")
    from harness.runtime import resolve_device

    resolve_device(c.device)

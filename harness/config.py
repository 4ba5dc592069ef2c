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
                     "eval_batch_size")


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
                                    bn_mode=self.attack_bn)

    def eval_threat(self):
        """The :class:`~harness.attacks.ThreatModel` of the per-epoch evaluation attack
        ``eval_attack`` (``eval_steps``, ``eval_restarts``, BatchNorm in eval mode)."""
        from harness.attacks import ThreatModel

        return ThreatModel.from_255(eps_255=self.eps_255, step_255=self.alpha_255, norm=self.norm,
                                    steps=self.eval_steps, restarts=self.eval_restarts,
                                    bn_mode="eval")

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
            raise BadInput(f"settings give activation parameters twice: act_params={params!r} "
                           f"and {', '.join(f'{k}={v!r}' for k, v in given.items())}")
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


def _validate(c: TrainConfig) -> None:
    from harness.attacks import normalize_norm_name
    from harness.datasets import check_spec, help_text
    from harness.models import check_arch

    _need(isinstance(c.dataset, str) and c.dataset.strip() != "",
          f"dataset={c.dataset!r} must be a name ({help_text()})")
    check_spec(c.dataset)  # the form only: a typo fails at once, even in a sweep's dry run
    _need(is_number(c.val_fraction) and 0 < c.val_fraction < 1,
          f"val_fraction={c.val_fraction!r} must be in (0, 1) (the paper: 0.1)")
    for name in ("split_seed", "seed"):
        _need(is_int(getattr(c, name)) and 0 <= getattr(c, name) < SEED_LIMIT,
              f"{name}={getattr(c, name)!r} must be an integer in [0, 2**63)")
    for name in ("train_subset", "val_subset", "test_subset"):
        v = getattr(c, name)
        _need(v is None or (is_int(v) and v >= 1),
              f"{name}={v!r} must be a positive integer or None (whole set)")
    _need(isinstance(c.act_params, Mapping) and all(isinstance(k, str) for k in c.act_params),
          f"act_params={c.act_params!r} must be a mapping of parameter names to values")
    c.act_params = dict(c.act_params)
    check_arch(c.arch)
    _need(is_number(c.width) and c.width > 0, f"width={c.width!r} must be > 0 (1.0 = paper)")
    c.activation()
    _need(is_int(c.epochs) and c.epochs >= 1, f"epochs={c.epochs!r} must be an integer >= 1")
    for name in ("batch_size", "eval_batch_size"):
        v = getattr(c, name)
        _need(is_int(v) and v >= 2, f"{name}={v!r} must be an integer >= 2")
    _need(is_number(c.lr) and c.lr > 0, f"lr={c.lr!r} must be > 0")
    if c.lr_milestones is not None:
        ms = c.lr_milestones
        _need(isinstance(ms, list | tuple) and all(is_number(m) and m > 0 for m in ms)
              and list(ms) == sorted(ms),
              f"lr_milestones={ms!r} must be increasing positive epochs, e.g. 100 150")
        c.lr_milestones = [float(m) for m in ms]
    _need(is_number(c.lr_gamma) and c.lr_gamma > 0, f"lr_gamma={c.lr_gamma!r} must be > 0")
    _need(is_number(c.momentum) and 0 <= c.momentum < 1,
          f"momentum={c.momentum!r} must be in [0, 1)")
    _need(is_number(c.weight_decay) and c.weight_decay >= 0,
          f"weight_decay={c.weight_decay!r} must be >= 0")
    _need(is_number(c.eps_255) and c.eps_255 >= 0,
          f"eps_255={c.eps_255!r} must be >= 0 (in 1/255 units; the paper: 8)")
    _need(is_number(c.alpha_255) and c.alpha_255 > 0,
          f"alpha_255={c.alpha_255!r} must be > 0 (PGD step in 1/255 units; the paper: 2)")
    c.norm = normalize_norm_name(c.norm)
    for name in ("train_steps", "eval_steps", "train_restarts", "eval_restarts"):
        v = getattr(c, name)
        _need(is_int(v) and v >= 1, f"{name}={v!r} must be an integer >= 1")
    _need(c.attack_bn in ATTACK_BN_MODES,
          f"attack_bn={c.attack_bn!r}; allowed: {', '.join(ATTACK_BN_MODES)}")
    _check_attacks(c)
    _need(c.precision in PRECISIONS,
          f"precision={c.precision!r}; allowed: {', '.join(PRECISIONS)}")
    _need(c.compile_mode in COMPILE_MODES,
          f"compile_mode={c.compile_mode!r}; allowed: {', '.join(COMPILE_MODES)}")
    for name in ("channels_last", "cuda_graphs"):
        v = getattr(c, name)
        _need(v is None or isinstance(v, bool), f"{name}={v!r} must be true, false or null (auto)")
    for name in ("save_every", "hessian_every"):
        v = getattr(c, name)
        _need(is_int(v) and v >= 0, f"{name}={v!r} must be an integer >= 0 (0 = off)")
    _need(is_int(c.hessian_examples) and c.hessian_examples >= 1,
          f"hessian_examples={c.hessian_examples!r} must be an integer >= 1")
    _need(isinstance(c.sync_bn, bool), f"sync_bn={c.sync_bn!r} must be true or false")
    from harness.runtime import resolve_device

    resolve_device(c.device)

"""``harness eval``: a checkpoint's clean and robust accuracy on its test set (or its run's own
training/validation images), with any attack of the registry.

The model comes from the checkpoint alone (:func:`harness.checkpoint.load_model`); the data from
its ``train_config`` (checked: :func:`run_data_settings`, :func:`check_source_fits`); the threat
model is one :class:`~harness.attacks.ThreatModel`, given whole or built once from what the user
asked (:class:`EvalThreat`: the fields not given are the run's or the reporting protocol's). The
evaluation itself is the kernel of :mod:`harness.evaluate`.

Example::

    >>> result = evaluate_checkpoint("runs/relu-cifar10/best.pt", n=1000)   # PGD-20 x 5
    >>> result = evaluate_checkpoint("runs/relu-cifar10", EvalThreat(steps=50, restarts=1))
    >>> result["clean_acc"], result["robust_acc"]
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from curvtools.checks import is_int, is_number
from curvtools.errors import SEED_LIMIT, BadInput, check_seed, shown
from harness.attacks import (
    Attack,
    ThreatModel,
    make_attack,
    normalize_norm_name,
    reporting_restarts,
)
from harness.checkpoint import load_model, shown_path
from harness.evaluate import evaluate_robust

# Where ``harness eval`` takes its images: the test set, or a run's own training/validation images.
EVAL_SPLITS = ("test", "train", "val")
REPORTING_STEPS = 20  # the paper reports PGD-20 (x 5 restarts)


# EvalThreat's fields: the option of ``harness eval`` that sets each (for messages), and the
# ThreatModel field it sets (what an attack ``honours``)
OPTIONS = {"norm": "--norm", "eps_255": "--eps-255", "step_255": "--alpha-255",
           "steps": "--steps", "restarts": "--restarts"}
SETS = {"norm": "norm", "eps_255": "eps", "step_255": "step", "steps": "steps",
        "restarts": "restarts"}


@dataclass(frozen=True)
class EvalThreat:
    """The threat model ``harness eval`` was asked for; a field left None is the run's
    (``norm``, ``eps_255``, ``step_255``: from the checkpoint's ``train_config``, else l_inf, 8
    and 2, the paper's) or the reporting protocol's (``steps`` 20; ``restarts``: the attack's
    reporting default, 5 for ``pgd``). A field given that the attack does not use is refused.
    """

    norm: str | None = None
    eps_255: float | None = None
    step_255: float | None = None
    steps: int | None = None
    restarts: int | None = None

    def given(self) -> list[str]:
        """The fields set, in declaration order."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def check(self) -> None:
        """BadInput for the first bad number given (before any file is read)."""
        for name in ("steps", "restarts"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise BadInput(f"{OPTIONS[name]} {shown(value)} must be an integer >= 1")
        for name, low in (("eps_255", "0"), ("step_255", "0")):
            value = getattr(self, name)
            if value is None:
                continue
            ok = is_number(value) and (value >= 0 if name == "eps_255" else value > 0)
            if not ok:
                raise BadInput(f"{OPTIONS[name]} {shown(value)} must be a finite number "
                               f"{'>=' if name == 'eps_255' else '>'} {low}")

    def resolve(self, train_config: Mapping[str, Any], attack: str) -> ThreatModel:
        """The one :class:`ThreatModel` of the evaluation (BatchNorm in eval mode)."""
        norm = normalize_norm_name(self.norm or _run_value(train_config, "norm", "linf"))
        eps_255 = _run_number(self.eps_255, train_config, "eps_255", 8.0)
        step_255 = _run_number(self.step_255, train_config, "alpha_255", 2.0)
        steps = REPORTING_STEPS if self.steps is None else self.steps
        restarts = reporting_restarts(attack) if self.restarts is None else self.restarts
        return ThreatModel.from_255(eps_255=eps_255, step_255=step_255, norm=norm, steps=steps,
                                    restarts=restarts, bn_mode="eval")

    def check_attack(self, attack: Attack, name: str) -> None:
        """Refuse a field given that ``attack`` (asked for as ``name``) does not use (never
        dropped silently; ``name`` passed the registry), naming ``harness eval``'s options."""
        ignored = sorted(OPTIONS[f] for f in self.given() if SETS[f] not in attack.honours)
        if ignored:
            uses = sorted(OPTIONS[f] for f in OPTIONS if SETS[f] in attack.honours)
            raise BadInput(f"attack {name.strip()} does not use {', '.join(ignored)}; of "
                           f"the threat options it uses {', '.join(uses) or 'none'}")


def _run_value(train_config: Mapping[str, Any], key: str, default: Any) -> Any:
    value = train_config.get(key, default)
    if key == "norm" and not isinstance(value, str):
        raise BadInput(f"the checkpoint's train_config has norm={shown(value)}; pass --norm")
    return value


def _run_number(given: float | None, train_config: Mapping[str, Any], key: str,
                default: float) -> float:
    """``given``, else the run's setting (from the checkpoint), else ``default``."""
    if given is not None:
        return float(given)
    value = train_config.get(key, default)
    if not is_number(value):
        option = "--" + key.replace("_", "-")
        raise BadInput(f"the checkpoint's {key}={shown(value)} is not a number; pass {option}")
    return float(value)


def evaluate_checkpoint(ckpt: str | Path, threat: ThreatModel | EvalThreat | None = None, *,
                        attack: str = "pgd", n: int | None = None, split: str = "test",
                        device: str = "auto", batch_size: int = 256, seed: int = 0,
                        precision: str = "fp32", dataset: str | None = None,
                        data_dir: str | None = None,
                        on_start: Callable[[int, Attack, int], None] | None = None,
                        on_batch: Callable[[], None] | None = None) -> dict[str, Any]:
    """``harness eval``: clean and robust accuracy of a checkpoint on its test set (or, with
    ``split="train"``/``"val"``, on the training/validation images its run used).

    ``ckpt``: a checkpoint file, or a run directory (its ``last.pt``, refused when it is not of
    that run). ``threat``: a :class:`ThreatModel` (BatchNorm mode ``"eval"``), or an
    :class:`EvalThreat` of the fields asked for (default: all the run's / the reporting
    protocol's, PGD-20 x 5 restarts for ``pgd``). ``attack``: a name of the registry
    (:func:`harness.attacks.make_attack`). The data come from the checkpoint's
    ``train_config`` (``dataset``, ``data_dir`` override it); ``split``: ``"test"``, or
    ``"train"``/``"val"``: the run's own images (its split and subsets,
    :func:`harness.run_data.split_indices`; unaugmented). ``n`` images of the split (a
    class-balanced subset drawn with the run's split seed; all when None).
    ``on_start(num_batches, attack, num_images)`` is called before the work starts and
    ``on_batch()`` after each batch (a progress bar). Returns a JSON-able dict with the settings
    and ``clean_acc``, ``robust_acc``, losses, ``zero_grad_share``.
    """
    from harness.runtime import autocast_dtype_for, precision_name, resolve_device

    asked: EvalThreat | None = None
    _check_request(threat, split, n, batch_size, precision, seed)
    path, run = _checkpoint_file(Path(ckpt))
    dev = resolve_device(device)
    model, payload = load_model(path, device=dev)
    if run is not None:
        run.check_member(payload, path)
    train_config = payload.get("train_config") or {}
    if isinstance(threat, ThreatModel):
        chosen_threat, eps_255, step_255 = threat, threat.eps * 255.0, threat.step * 255.0
    else:
        asked = threat or EvalThreat()
        chosen_threat = asked.resolve(train_config, attack)
        eps_255 = _run_number(asked.eps_255, train_config, "eps_255", 8.0)
        step_255 = _run_number(asked.step_255, train_config, "alpha_255", 2.0)
    data = run_data_settings(train_config)
    spec = dataset or data["dataset"]
    if not spec:
        raise BadInput("the checkpoint names no dataset; pass --dataset")
    from harness.datasets import open_source

    source = open_source(spec, data_dir or data["data_dir"], data["download"])
    check_source_fits(source, spec, payload, data["dataset"])
    chosen = make_attack(attack, chosen_threat, num_classes=source.num_classes, seed=seed)
    if asked is not None:
        asked.check_attack(chosen, attack)
    idx, batches = _images(source, data, split, n, dev, batch_size)
    if on_start is not None:
        on_start(len(batches.images) // batch_size + bool(len(batches.images) % batch_size),
                 chosen, len(idx))
    amp = autocast_dtype_for(precision, dev)
    generator = torch.Generator(device=dev).manual_seed(seed)
    started = time.perf_counter()
    result = evaluate_robust(model, batches, chosen, generator=generator, autocast_dtype=amp,
                             on_batch=on_batch,
                             graph_cache={} if dev.type == "cuda" else None)
    from harness.run_data import indices_hash

    uses = chosen.honours
    epoch = payload.get("epoch")
    return {"checkpoint": str(path), "epoch": epoch if is_int(epoch) else None, "dataset": spec,
            "split": split, "indices_sha256": indices_hash(idx), "attack": attack,
            "norm": chosen_threat.norm, "eps_255": eps_255,
            "alpha_255": step_255 if "step" in uses else None,
            "steps": chosen_threat.steps if "steps" in uses else None,
            "restarts": chosen_threat.restarts if "restarts" in uses else 1, "seed": seed,
            "precision": precision_name(amp), "device": str(dev),
            "seconds": round(time.perf_counter() - started, 3), **result}


def _check_request(threat: Any, split: str, n: int | None, batch_size: int, precision: str,
                   seed: int) -> None:
    """BadInput for the first bad argument, before any file is read."""
    if split not in EVAL_SPLITS:
        raise BadInput(f"--split {shown(split)}; allowed: {', '.join(EVAL_SPLITS)}")
    if isinstance(threat, EvalThreat):
        threat.check()
    elif isinstance(threat, ThreatModel):
        if threat.bn_mode != "eval":
            raise BadInput(f"threat.bn_mode={shown(threat.bn_mode)}: harness eval attacks with "
                           f"BatchNorm in eval mode; allowed: 'eval'")
    elif threat is not None:
        raise BadInput(f"threat must be a ThreatModel or an EvalThreat, not a "
                       f"{type(threat).__name__}")
    if n is not None and (not is_int(n) or n < 1):
        raise BadInput(f"--n {shown(n)} must be an integer >= 1")
    if not is_int(batch_size) or batch_size < 1:
        raise BadInput(f"--batch-size {shown(batch_size)} must be an integer >= 1")
    check_seed("--seed", seed)
    if precision not in ("fp32", "bf16", "fp16", "auto"):
        raise BadInput(f"--precision {shown(precision)}; allowed: fp32, bf16, fp16, auto")


def _checkpoint_file(path: Path):
    """``(checkpoint file, RunDir or None)``: a run directory stands for its ``last.pt``,
    which must be of that run."""
    from curvtools.checkpoint_paths import resolve_checkpoints
    from harness.rundir import RunDir

    choice = resolve_checkpoints(path, "ckpt", series=False)
    return choice.paths[0], (RunDir(choice.run_dir) if choice.run_dir is not None else None)


def _images(source: Any, data: Mapping[str, Any], split: str, n: int | None,
            dev: torch.device, batch_size: int):
    """``(indices, DeviceBatches)`` of the evaluated images."""
    from harness.data import DeviceBatches, stratified_subset

    part = "test" if split == "test" else "train"  # the source's part the images come from
    labels = source.labels(part)
    if split == "test":
        idx = torch.arange(len(labels)).numpy()
    else:
        from harness.run_data import split_indices

        idx = split_indices(source.labels("train"), source.labels("test"),
                            val_fraction=data["val_fraction"], split_seed=data["split_seed"],
                            train_subset=data["train_subset"],
                            val_subset=data["val_subset"])[split]
    if n is not None and n < len(idx):
        idx = stratified_subset(labels, idx, n, data["split_seed"])
    return idx, DeviceBatches(source.images(part, idx), labels[idx], dev, batch_size=batch_size)


def run_data_settings(train_config: Mapping[str, Any]) -> dict[str, Any]:
    """The data settings of a checkpoint's ``train_config``, checked (a hand-edited or foreign
    checkpoint may hold anything): ``dataset``, ``data_dir``, ``download``, ``split_seed``,
    ``val_fraction``, ``train_subset``, ``val_subset``. Used by ``harness eval``,
    ``curvtools hessian`` and ``lemma`` before any data are opened."""
    out = {"dataset": train_config.get("dataset"),
           "data_dir": train_config.get("data_dir") or "data",
           "download": train_config.get("download", True),
           "split_seed": train_config.get("split_seed", 0),
           "val_fraction": train_config.get("val_fraction", 0.1),
           **{k: train_config.get(k) for k in ("train_subset", "val_subset")}}
    seed = out["split_seed"]

    def subset_ok(v: Any) -> bool:
        return v is None or (is_int(v) and v >= 1)

    problems = {
        "val_fraction": (is_number(out["val_fraction"]) and 0 < out["val_fraction"] < 1,
                         "a number in (0, 1)"),
        "train_subset": (subset_ok(out["train_subset"]), "a positive integer or null"),
        "val_subset": (subset_ok(out["val_subset"]), "a positive integer or null"),
        "dataset": (out["dataset"] is None or isinstance(out["dataset"], str), "a dataset name"),
        "data_dir": (isinstance(out["data_dir"], str), "a folder path"),
        "download": (isinstance(out["download"], bool), "true or false"),
        "split_seed": (is_int(seed) and 0 <= seed < SEED_LIMIT, "an integer in [0, 2**63)")}
    for key, (ok, allowed) in problems.items():
        if not ok:
            raise BadInput(f"the checkpoint's train_config has {key}={shown(out[key])}; "
                           f"allowed: {allowed}")
    return out


def check_source_fits(source: Any, spec: str, payload: Mapping[str, Any],
                      trained_on: str | None) -> None:
    """Raise BadInput when the images of ``source`` (dataset ``spec``) are not what the
    checkpoint's model was trained on: channels, classes or image size differ.

    Channels and classes come from the model config; the image size from the checkpoint's
    ``image_size`` (recorded since this check exists), else from the training dataset's name
    (``trained_on``). A mismatch would otherwise give a traceback (channels, too few classes)
    or, worse, a meaningless accuracy (a 32px model on 16px images).
    """
    from harness.datasets import known_image_size, open_source

    config = payload["config"]
    want = {"channels": int(config.get("in_channels", 3)),
            "classes": int(config.get("num_classes", 10)),
            "image size": payload.get("image_size")}
    if not is_int(want["image size"]):
        want["image size"] = None  # not recorded (or garbled): from the dataset name below
    if want["image size"] is None and isinstance(trained_on, str):
        key = trained_on.strip().lower()
        if known_image_size(trained_on) is not None:
            want["image size"] = known_image_size(trained_on)
        elif key != spec.strip().lower():  # another image folder: its first image tells
            with contextlib.suppress(BadInput, OSError):
                want["image size"] = open_source(trained_on).image_size
    have = {"channels": source.in_channels, "classes": source.num_classes,
            "image size": source.image_size}
    bad = [k for k in have if want[k] is not None and have[k] != want[k]]
    if bad:
        def describe(values):
            words = {"channels": "{} channels", "classes": "{} classes",
                     "image size": "{0}x{0} images"}
            return ", ".join(words[k].format(values[k]) for k in bad)

        named = (trained_on if isinstance(trained_on, str) and trained_on.isprintable()
                 and len(trained_on) <= 1000 else shown(trained_on))
        origin = f" (trained on {named})" if trained_on else ""
        raise BadInput(f"dataset {shown_path(spec)} has {describe(have)}; the checkpoint's "
                       f"model takes {describe(want)}{origin}")


__all__ = ["EVAL_SPLITS", "EvalThreat", "check_source_fits", "evaluate_checkpoint",
           "run_data_settings"]

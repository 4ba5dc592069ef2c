"""Checkpoint payloads of a training run, and resuming from one exactly.

:func:`checkpoint_payload` is what ``last.pt``/``best.pt``/``epoch_NNNN.pt`` hold;
:func:`check_resume_payload` and :func:`check_resume_config` refuse a damaged or foreign
``last.pt`` (or changed settings) before anything in the run directory changes;
:func:`restore_engine` loads model, optimizer, loss scaler and RNG states.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from curvtools.checks import is_int, is_number
from curvtools.errors import BadInput
from harness.config import RESUMABLE_CHANGES, TrainConfig, stored_settings
from harness.runtime import precision_name
from harness.step import Engine


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any], device: torch.device) -> None:
    if "torch_cpu" in state:
        torch.set_rng_state(state["torch_cpu"].cpu())
    if device.type == "cuda" and "torch_cuda" in state:
        # a checkpoint from a machine with another GPU count: keep the fresh CUDA RNG
        with contextlib.suppress(RuntimeError, IndexError):
            torch.cuda.set_rng_state_all([s.cpu() for s in state["torch_cuda"]])


def check_resume_payload(ckpt: Mapping[str, Any], path: Path,
                          rows: list[dict]) -> tuple[int, float]:
    """``(epochs done, best validation robust accuracy)`` of a ``last.pt`` to resume from.

    Raises :class:`BadInput` naming the first entry that resuming could not use: a damaged or
    foreign file must be refused before anything in the run directory changes. ``rows``: the
    run's ``metrics.jsonl``, which must hold every epoch before the checkpoint's (its own row
    may be missing: resuming restores it from the checkpoint).
    """
    where = f"checkpoint {str(path)!r}"
    epoch = ckpt.get("epoch")
    if not is_int(epoch) or epoch < 0:
        raise BadInput(f"{where} has epoch={epoch!r}; allowed: an integer >= 0")
    recorded = max((r["epoch"] for r in rows if is_int(r.get("epoch"))), default=0)
    if epoch > recorded + 1:
        raise BadInput(f"{where} has epoch={epoch}, but metrics.jsonl records epochs up to "
                       f"{recorded}; allowed: epoch <= {recorded + 1} (start over with "
                       f"--overwrite)")
    if epoch > recorded and not isinstance(ckpt.get("metrics"), Mapping):
        raise BadInput(f"{where} has metrics={ckpt.get('metrics')!r}; allowed: the metrics row "
                       f"of epoch {epoch} (metrics.jsonl lacks it)")
    best = ckpt.get("best_val_robust_acc", -1.0)
    if not is_number(best):
        raise BadInput(f"{where} has best_val_robust_acc={best!r}; allowed: a finite number")
    if "optimizer" not in ckpt:
        raise BadInput(f"{where} lacks the 'optimizer' entry (the SGD momentum to resume with)")
    for key in ("rng", "grad_scaler"):
        if key in ckpt and not isinstance(ckpt[key], Mapping):
            raise BadInput(f"{where} has a {key!r} entry of type {type(ckpt[key]).__name__}; "
                           f"allowed: a mapping")
    check_rng_state(ckpt.get("rng", {}), where)
    return int(epoch), float(best)


def check_rng_state(state: Mapping[str, Any], where: str) -> None:
    """The saved RNG states have the form :func:`restore_rng` sets (torch checks only then)."""
    cpu = state.get("torch_cpu")
    size = torch.get_rng_state().numel()
    if cpu is not None and not (isinstance(cpu, torch.Tensor) and cpu.dtype == torch.uint8
                                and cpu.numel() == size):
        found = (f"{cpu.dtype} tensor of {cpu.numel()} values"
                 if isinstance(cpu, torch.Tensor) else type(cpu).__name__)
        raise BadInput(f"{where} has rng.torch_cpu = a {found}; allowed: torch.get_rng_state(), "
                       f"a uint8 tensor of {size} bytes")
    cuda = state.get("torch_cuda")
    if cuda is not None and not (isinstance(cuda, list | tuple)
                                 and all(isinstance(t, torch.Tensor) for t in cuda)):
        raise BadInput(f"{where} has rng.torch_cuda of type {type(cuda).__name__}; allowed: a "
                       f"list of torch.cuda.get_rng_state() tensors")


def restore_engine(engine: Engine, ckpt: Mapping[str, Any], path: Path) -> None:
    """Load the model, optimizer, loss scaler and RNG states of ``ckpt`` into ``engine``.

    Raises :class:`BadInput` naming the entry that does not fit, before the run changes any file
    (SGD does not check its momentum buffers' shapes itself: a wrong one would fail mid-epoch).
    """
    from harness.checkpoint import load_state_checked

    where = f"checkpoint {str(path)!r}"
    load_state_checked(engine.net, ckpt["model"],
                       f"{where}: 'model' does not fit the model of the run's settings")
    load_state_checked(engine.optimizer, ckpt["optimizer"],
                       f"{where}: 'optimizer' does not fit the run's SGD")
    for group in engine.optimizer.param_groups:
        for p in group["params"]:
            buffer = engine.optimizer.state.get(p, {}).get("momentum_buffer")
            if buffer is not None and not (isinstance(buffer, torch.Tensor)
                                           and buffer.shape == p.shape):
                found = (tuple(buffer.shape) if isinstance(buffer, torch.Tensor)
                         else type(buffer).__name__)
                raise BadInput(f"{where}: 'optimizer' has a momentum buffer of shape {found} "
                               f"for a parameter of shape {tuple(p.shape)}")
    if engine.scaler.is_enabled() and ckpt.get("grad_scaler"):  # fp16 before and now
        load_state_checked(engine.scaler, ckpt["grad_scaler"],
                           f"{where}: 'grad_scaler' does not fit the fp16 loss scaler")
    restore_rng(ckpt.get("rng", {}), engine.device)


def check_resume_config(cfg: TrainConfig, stored: Mapping[str, Any], epochs_done: int) -> None:
    if cfg.epochs < epochs_done:
        raise BadInput(f"--resume: epochs={cfg.epochs} is fewer than the {epochs_done} epochs "
                       f"the run has trained; allowed: epochs >= {epochs_done}")
    current = cfg.to_dict()
    for key, value in stored_settings(stored).items():  # an absent train_attack was "pgd"
        if key in RESUMABLE_CHANGES or key not in current:
            continue
        if current[key] != value:
            raise BadInput(f"--resume: setting {key}={current[key]!r} differs from the run's "
                           f"{value!r}; only {', '.join(RESUMABLE_CHANGES)} may change")
    # "auto" milestones follow the epochs: a new epoch count must not move a milestone that
    # the epochs already trained have passed (their learning rates would not be those recorded)
    stored_epochs = stored.get("epochs", cfg.epochs)
    if not is_int(stored_epochs) or stored_epochs < 1:
        raise BadInput(f"--resume: the run's train_config has epochs={stored_epochs!r}; "
                       f"allowed: an integer >= 1")
    if cfg.lr_milestones is None and stored_epochs != cfg.epochs:
        before = dataclasses.replace(cfg, epochs=int(stored["epochs"])).milestones()
        passed = [m for m in before if m <= epochs_done]
        if passed != [m for m in cfg.milestones() if m <= epochs_done]:
            raise BadInput(
                f"--resume: epochs={cfg.epochs} moves the auto learning-rate milestones to "
                f"{cfg.milestones()}, but the {epochs_done} epoch"
                f"{'' if epochs_done == 1 else 's'} trained already passed {passed}; keep "
                f"epochs={stored['epochs']} or start a new run (a run trained with fixed "
                f"--lr-milestones can be extended)")


def checkpoint_payload(engine: Engine, model_config: dict, epoch: int, row: dict,
                        best: float, precision_changes: list, image_size: int) -> dict[str, Any]:
    cfg = engine.cfg
    # image_size: what the model was trained on (harness eval refuses other image sizes)
    return {"model": engine.net.state_dict(), "config": model_config, "image_size": image_size,
            "train_config": cfg.to_dict(), "epoch": epoch, "metrics": row,
            "precision": precision_name(engine.amp), "precision_changes": precision_changes,
            "optimizer": engine.optimizer.state_dict(),
            "grad_scaler": engine.scaler.state_dict(),
            "scheduler": {"kind": "piecewise", "milestones": cfg.milestones(),
                          "gamma": cfg.lr_gamma, "lr": cfg.lr, "epochs_done": epoch},
            "rng": rng_state(engine.device), "best_val_robust_acc": best}



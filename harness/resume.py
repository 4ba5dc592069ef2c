"""Checkpoint payloads of a training run, and resuming from one exactly.

:func:`checkpoint_payload` is what ``last.pt``/``best.pt``/``epoch_NNNN.pt`` hold;
:func:`check_resume` refuses a damaged or foreign ``last.pt`` (another run's, by
:mod:`harness.run_identity`) or changed settings before anything in the run directory changes
and returns what resuming needs (:class:`Resumed`); :func:`restore_engine` loads model,
optimizer, loss scaler and RNG states.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from curvtools.checks import is_int, is_number
from curvtools.errors import BadInput, shown
from harness.checkpoint import is_user_module_config, shown_name
from harness.config import RESUMABLE_CHANGES, TrainConfig, stored_settings
from harness.rundir import API, Caller, RunDir
from harness.runtime import precision_name
from harness.step import Engine


@dataclass
class Resumed:
    """A checked ``last.pt`` and what continuing from it needs."""

    ckpt: dict[str, Any]
    path: Path
    start_epoch: int  # epochs done
    best: float  # best validation robust accuracy so far
    rows: list[dict]  # metrics.jsonl as read
    run_id: str | None  # the run's id (None: written before ids; one is drawn now)

    def rows_kept(self) -> list[dict]:
        """``metrics.jsonl``'s rows up to the checkpoint's epoch (rows past it, of an epoch
        whose checkpoint a crash prevented, are recomputed); its own row restored from the
        checkpoint when the file lost it."""
        rows = [r for r in self.rows if is_int(r.get("epoch")) and r["epoch"] <= self.start_epoch]
        if self.start_epoch and not any(r["epoch"] == self.start_epoch for r in rows):
            rows.append(dict(self.ckpt["metrics"]))
        return rows

    def precision_changes(self, precision: str) -> tuple[list[dict], str | None]:
        """``(history, precision before)``: "auto" precision follows the hardware, which may
        differ on resume; the history gets an entry when it does (else ``before`` is None)."""
        before = self.ckpt.get("precision")
        changes = self.ckpt.get("precision_changes", [])
        changes = list(changes) if isinstance(changes, list) else []
        if before in (None, precision) or not isinstance(before, str):
            return changes, None
        return changes + [{"epoch": self.start_epoch, "from": before, "to": precision}], before


def check_resume(run: RunDir, cfg: TrainConfig, user_module: bool) -> Resumed:
    """Every check of ``last.pt`` that needs no data or model: it is this run's (identity), its
    entries are usable, the settings may change as ``cfg`` asks. BadInput otherwise."""
    ckpt, rows, run_id = run.load_last()
    start_epoch, best = check_resume_payload(ckpt, run.last, rows)
    check_resume_config(cfg, ckpt.get("train_config") or {}, start_epoch, run.caller)
    check_resume_model(ckpt.get("config"), run.last, user_module)
    return Resumed(ckpt, run.last, start_epoch, best, rows, run_id)


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
        raise BadInput(f"{where} has epoch={shown(epoch)}; allowed: an integer >= 0")
    recorded = max((r["epoch"] for r in rows if is_int(r.get("epoch"))), default=0)
    if epoch > recorded + 1:
        raise BadInput(f"{where} has epoch={epoch}, but metrics.jsonl records epochs up to "
                       f"{recorded}; allowed: epoch <= {recorded + 1}")
    if epoch > recorded and not isinstance(ckpt.get("metrics"), Mapping):
        raise BadInput(f"{where} has metrics={shown(ckpt.get('metrics'))}; allowed: the "
                       f"metrics row of epoch {epoch} (metrics.jsonl lacks it)")
    best = ckpt.get("best_val_robust_acc", -1.0)
    if not is_number(best):
        raise BadInput(f"{where} has best_val_robust_acc={shown(best)}; allowed: a finite "
                       f"number")
    if "optimizer" not in ckpt:
        raise BadInput(f"{where} lacks the 'optimizer' entry (the SGD momentum to resume with)")
    for key in ("rng", "grad_scaler", "precision_changes"):
        kind = list if key == "precision_changes" else Mapping
        if key in ckpt and not isinstance(ckpt[key], kind):
            raise BadInput(f"{where} has a {key!r} entry of type {type(ckpt[key]).__name__}; "
                           f"allowed: a {'list' if kind is list else 'mapping'}")
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


def check_resume_model(stored: Any, path: Path, user_module: bool,
                       current: Mapping[str, Any] | None = None) -> None:
    """Resume a ``harness.fit`` run (``user_module``) only with ``harness.fit`` and a module of
    the class it recorded (checked when ``current``, the new model config, is given); a
    registry run only with ``run_training``. BadInput (one line) otherwise."""
    where = f"checkpoint {str(path)!r}"
    if is_user_module_config(stored) and not user_module:
        raise BadInput(f"{where} holds a model passed to harness.fit() (class "
                       f"{shown_name(stored.get('class', '?'))}); resume it with harness.fit(..., "
                       f"resume=True) and that module")
    if user_module and not is_user_module_config(stored):
        arch = stored.get("arch", "?") if isinstance(stored, Mapping) else "?"
        raise BadInput(f"{where} holds a registry model (arch {shown(arch)}), not one passed "
                       f"to harness.fit(); resume it with harness train --resume or "
                       f"harness.run_training(..., resume=True)")
    if user_module and current is not None and stored.get("class") != current.get("class"):
        raise BadInput(f"{where} holds a model of class "
                       f"{shown_name(stored.get('class', '?'))}; the module passed is a "
                       f"{current.get('class')}")


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


def check_resume_config(cfg: TrainConfig, stored: Mapping[str, Any], epochs_done: int,
                        caller: Caller = API) -> None:
    """Refuse (BadInput) settings ``cfg`` that resuming the run whose ``last.pt`` holds
    ``stored`` (its train_config) after ``epochs_done`` epochs cannot honour: a change outside
    :data:`RESUMABLE_CHANGES`, fewer epochs than trained, or new epochs that move an auto
    learning-rate milestone already passed."""
    how = caller.resume
    if cfg.epochs < epochs_done:
        raise BadInput(f"{how}: epochs={cfg.epochs} is fewer than the {epochs_done} epochs "
                       f"the run has trained; allowed: epochs >= {epochs_done}")
    try:
        stored = stored_settings(stored)  # legacy keys upgraded; an absent train_attack was "pgd"
    except (BadInput, TypeError, ValueError) as err:
        raise BadInput(f"{how}: the run's train_config: {shown(str(err), 200)}") from None
    stored_epochs = stored.get("epochs", cfg.epochs)
    if not is_int(stored_epochs) or stored_epochs < 1:
        raise BadInput(f"{how}: the run's train_config has epochs={shown(stored_epochs)}; "
                       f"allowed: an integer >= 1")
    current = cfg.to_dict()
    for key, value in stored.items():
        if key in RESUMABLE_CHANGES or key not in current or key == "lr_milestones":
            continue
        if not _equal(current[key], value):
            raise BadInput(f"{how}: setting {key}={shown(current[key])} differs from the run's "
                           f"{shown(value)}; only {', '.join(RESUMABLE_CHANGES)} may change")
    _check_milestones(cfg, stored.get("lr_milestones"), stored_epochs, epochs_done, how)


def _equal(a: Any, b: Any) -> bool:
    """``a == b`` for a setting and a value read from a file, which may hold anything (a
    tensor compares elementwise; some types refuse to compare): such a value is not equal."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - a hostile value: not the setting
        return False


def _check_milestones(cfg: TrainConfig, stored: Any, stored_epochs: int, epochs_done: int,
                      how: str) -> None:
    """The learning-rate milestones of the epochs trained stay those they were trained with."""
    run_auto = dataclasses.replace(cfg, epochs=stored_epochs, lr_milestones=None).milestones()
    if cfg.lr_milestones is not None:
        # fixed milestones: the run's own, or, for a run with auto ones, the same values given
        # explicitly (so that more epochs do not move them)
        if stored is not None and not _equal(cfg.lr_milestones, stored):
            raise BadInput(f"{how}: setting lr_milestones={shown(cfg.lr_milestones)} differs "
                           f"from the run's {shown(stored)}; only "
                           f"{', '.join(RESUMABLE_CHANGES)} may change")
        if stored is None and cfg.lr_milestones != run_auto:
            raise BadInput(f"{how}: setting lr_milestones={shown(cfg.lr_milestones)} differs "
                           f"from the run's auto milestones {run_auto} (of its {stored_epochs} "
                           f"epochs); give those to keep them fixed")
        return
    if stored is not None:
        raise BadInput(f"{how}: setting lr_milestones=None (auto) differs from the run's "
                       f"{shown(stored)}; only {', '.join(RESUMABLE_CHANGES)} may change")
    # "auto" milestones follow the epochs: a new epoch count must not move a milestone that
    # the epochs already trained have passed (their learning rates would not be those recorded)
    if stored_epochs != cfg.epochs:
        passed = [m for m in run_auto if m <= epochs_done]
        if passed != [m for m in cfg.milestones() if m <= epochs_done]:
            raise BadInput(
                f"{how}: epochs={cfg.epochs} moves the auto learning-rate milestones to "
                f"{cfg.milestones()}, but the {epochs_done} epoch"
                f"{'' if epochs_done == 1 else 's'} trained already passed {passed}; keep "
                f"epochs={stored_epochs}, give lr_milestones={run_auto} to keep the run's, or "
                f"start a new run")


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

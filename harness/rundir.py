"""The run directory on disk: checks before the first write, the lock, the files a run writes.

A run directory holds ``config.json`` (:func:`run_record`), ``metrics.jsonl`` (one row per
epoch, :func:`append_metrics`), ``last.pt``/``best.pt``/``epoch_NNNN.pt`` (payloads from
:mod:`harness.resume`) and ``DONE``; the file names are :data:`curvtools.runfiles.RUN_FILES`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curvtools.errors import BadInput
from curvtools.runfiles import RUN_FILES, RUN_LOCK
from harness.config import TrainConfig
from harness.run_data import RunData, indices_hash
from harness.runtime import device_name, precision_name


def _versions() -> dict[str, str]:
    import harness

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "lowcurv": harness.__version__}
    try:
        import torchvision

        out["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to touch an existing run unless resuming or overwriting (checked before any write)."""
    if resume and overwrite:
        raise BadInput("--resume and --overwrite exclude each other")
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"output path {str(out_dir)!r} exists and is not a folder")
    blocker = next((p for p in out_dir.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise BadInput(f"output path {str(out_dir)!r} cannot be created: {str(blocker)!r} is "
                       f"a file, not a folder")
    has_run = out_dir.is_dir() and any(p.name != RUN_LOCK for p in out_dir.iterdir())
    if resume and not (out_dir / "last.pt").is_file():
        hint = ("it stopped before its first checkpoint: start over with --overwrite"
                if has_run else "start the run without --resume")
        raise BadInput(f"--resume: {str(out_dir / 'last.pt')!r} does not exist; {hint}")
    if has_run and not resume and not overwrite:
        raise BadInput(f"run directory {str(out_dir)!r} is not empty; pass --resume to "
                       f"continue it or --overwrite to start over")


def no_write(*args: Any) -> None:
    """Stands in for a file writer on data-parallel ranks other than 0."""


def clear_run_files(out_dir: Path) -> None:
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    for path in out_dir.glob("epoch_*.pt"):
        path.unlink()
    remove_stale_temp_files(out_dir)


def remove_stale_temp_files(out_dir: Path) -> None:
    """Temporary files of atomic writes that a killed process left half written."""
    for name in (*RUN_FILES, "epoch_*.pt"):
        for path in out_dir.glob(f".{name}.*.tmp"):
            path.unlink(missing_ok=True)



class RunLock:
    """An exclusive ``flock`` on ``out_dir/.lock`` (:data:`RUN_LOCK`) for the whole run.

    Two processes training into one directory (two ``--resume`` of one run, say) would write
    the same epochs twice; the second is refused with :class:`BadInput`. The lock file stays
    (removing it would race with a process opening it); it is not one of the run's files. The
    kernel releases the lock when the process exits, however it exits. Where ``fcntl`` is
    missing (Windows) or the filesystem has no locks, runs are not locked.
    """

    def __init__(self, out_dir: Path, enabled: bool = True):
        self.out_dir, self.enabled = out_dir, enabled
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        """True once acquired, or when this process need not lock."""
        return self.fd is not None or not self.enabled

    def acquire(self) -> None:
        """Take the lock (creating ``out_dir``); BadInput when another process holds it."""
        if self.held:
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on Linux/macOS
            self.enabled = False
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.out_dir / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BadInput(f"another process is training in {str(self.out_dir)!r} (it holds "
                           f"{str(self.out_dir / RUN_LOCK)!r}); wait for it to end or use "
                           f"another output folder") from None
        except OSError:  # a filesystem without locks: train unlocked, as before
            os.close(fd)
            self.enabled = False
            return
        self.fd = fd

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None


# The ``arch`` of the checkpoint config of a model passed to ``harness.fit``: no registered
# architecture, so nothing rebuilds it from the checkpoint alone.
USER_MODULE_ARCH = "user-module"


def is_user_module_config(config: Any) -> bool:
    """True for the checkpoint ``config`` of a model trained by ``harness.fit``."""
    return isinstance(config, Mapping) and config.get("arch") == USER_MODULE_ARCH


def user_module_message(path: str | Path, config: Mapping[str, Any]) -> str:
    """The one line refusing to rebuild a ``harness.fit`` model from checkpoint ``path``."""
    return (f"checkpoint {str(path)!r} holds a model passed to harness.fit() (class "
            f"{config.get('class', '?')}): load its state_dict into that module in Python, or "
            f"register the architecture as a plugin")


def refuse_user_module(path: str | Path, config: Any) -> None:
    """BadInput (:func:`user_module_message`) when ``config`` is a ``harness.fit`` model's:
    the check of every function that rebuilds a model from a checkpoint config."""
    if is_user_module_config(config):
        raise BadInput(user_module_message(path, config))


def check_resume_model(stored: Any, path: Path, user_module: bool,
                       current: Mapping[str, Any] | None = None) -> None:
    """Resume a ``harness.fit`` run (``user_module``) only with ``harness.fit`` and a module of
    the class it recorded (checked when ``current``, the new model config, is given); a
    registry run only with ``run_training``. BadInput (one line) otherwise."""
    where = f"checkpoint {str(path)!r}"
    if is_user_module_config(stored) and not user_module:
        raise BadInput(f"{where} holds a model passed to harness.fit() (class "
                       f"{stored.get('class', '?')}); resume it with harness.fit(..., "
                       f"resume=True) and that module")
    if user_module and not is_user_module_config(stored):
        arch = stored.get("arch", "?") if isinstance(stored, Mapping) else "?"
        raise BadInput(f"{where} holds a registry model (arch {arch}), not one passed to "
                       f"harness.fit(); resume it with harness train --resume")
    if user_module and current is not None and stored.get("class") != current.get("class"):
        raise BadInput(f"{where} holds a model of class {stored.get('class', '?')}; the module "
                       f"passed is a {current.get('class')}")


def model_config_for(cfg: TrainConfig, data: RunData) -> dict[str, Any]:
    return {"arch": cfg.arch, "act": cfg.activation().config(), "num_classes": data.num_classes,
            "in_channels": data.in_channels, "width": float(cfg.width),
            "mean": list(data.mean), "std": list(data.std)}


def run_record(cfg: TrainConfig, data: RunData, model_config: dict, device: torch.device,
                amp: torch.dtype | None, channels_last: bool) -> dict[str, Any]:
    return {
        "train_config": cfg.to_dict(),
        "resolved": {"device": str(device), "device_name": device_name(device),
                     "precision": precision_name(amp),
                     "channels_last": channels_last, "compile": cfg.compile,
                     "compile_mode": cfg.compile_mode if cfg.compile else None,
                     "lr_milestones": cfg.milestones(), "eps": cfg.eps_255 / 255.0,
                     "step_size": cfg.alpha_255 / 255.0},
        "model_config": model_config,
        "data": {"source": data.source_info, "split_seed": cfg.split_seed,
                 "val_fraction": cfg.val_fraction,
                 **{f"num_{p}": int(len(i)) for p, i in data.indices.items()},
                 **{f"{p}_indices_sha256": indices_hash(i) for p, i in data.indices.items()}},
        "versions": _versions(),
        "command": " ".join(sys.argv),
    }



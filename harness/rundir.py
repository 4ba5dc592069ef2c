"""The run directory: one object owns its files, its lock, its writers and its identity.

:class:`RunDir` (in the spirit of timm's ``CheckpointSaver``, for a whole run) is the only code
that names or writes a run's files: ``config.json`` (:func:`run_record` plus the run's identity),
``metrics.jsonl`` (one row per epoch), the ``best.pt`` / ``epoch_NNNN.pt`` / ``last.pt`` rotation
(``save_every``), ``DONE``, the lock (:class:`RunLock`) and the main-rank gate: on data-parallel
ranks other than 0 every writer does nothing. It also reads a run back for resume, ``harness
eval``, ``curvtools hessian`` and ``lemma``, and refuses a checkpoint of another run
(:mod:`harness.run_identity`).

Example::

    >>> run = RunDir("runs/relu-cifar10")
    >>> ckpt, rows = run.load_last()        # BadInput if last.pt is another run's
    >>> run.last, run.epoch_file(50)
    (PosixPath('runs/relu-cifar10/last.pt'), PosixPath('runs/relu-cifar10/epoch_0050.pt'))
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curvtools.checkpoint_paths import CHECKPOINT_NAME, epoch_file_name
from curvtools.checks import is_int
from curvtools.errors import BadInput
from curvtools.fileio import write_text_atomic
from curvtools.runfiles import RUN_LOCK, read_metrics
from harness.checkpoint import (  # noqa: F401 - user-module helpers re-exported (harness.fit)
    USER_MODULE_ARCH,
    check_bounded,
    is_user_module_config,
    load_checkpoint,
    refuse_user_module,
    save_checkpoint,
    user_module_message,
)
from harness.config import TrainConfig
from harness.run_data import RunData, indices_hash
from harness.run_identity import RUN_ENTRY, Claim, check_member, identity_entry, new_run_id
from harness.runtime import device_name, precision_name

CONFIG, METRICS, LAST, BEST, DONE = "config.json", "metrics.jsonl", "last.pt", "best.pt", "DONE"
RECORD_LIMIT_BYTES = 16 << 20  # a config.json is a few KB; a larger one is not a run's


@dataclass(frozen=True)
class Caller:
    """How messages name the options of whoever started the run (command line or Python)."""

    resume: str
    overwrite: str
    more_epochs: str  # how to ask for more epochs than ``{epochs}``
    again: str  # how to continue, with ``{out}`` for the run directory

    def continue_with(self, out: Path) -> str:
        return self.again.format(out=out)


CLI = Caller("--resume", "--overwrite", "pass --epochs N with N > {epochs}",
             "harness train --out {out} --resume")
API = Caller("resume=True", "overwrite=True", "set TrainConfig.epochs > {epochs}",
             "run_training(cfg, '{out}', resume=True)")
FIT = Caller("resume=True", "overwrite=True", "set TrainConfig.epochs > {epochs}",
             "harness.fit(..., out_dir='{out}', resume=True)")


class RunLock:
    """An exclusive ``flock`` on ``out_dir/.lock`` (:data:`RUN_LOCK`) for the whole run.

    Two processes training into one directory (two resumes of one run, say) would write the
    same epochs twice; the second is refused with :class:`BadInput`. The lock file stays
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

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunDir:
    """One run directory: file names, checks before the first write, lock, identity, writers.

    ``main``: this process writes (data parallel: rank 0 only; the other ranks run the same
    code and every writer does nothing). ``caller`` says how messages name the options
    (:data:`CLI`, :data:`API`, :data:`FIT`).
    """

    def __init__(self, path: str | Path, *, main: bool = True, caller: Caller = API):
        self.path = Path(path)
        self.main, self.caller = main, caller
        self.lock = RunLock(self.path, enabled=main)
        self.identity: dict[str, str] | None = None  # set by start()
        self.save_every = 0

    # --- names ------------------------------------------------------------------------------

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def done(self) -> Path:
        return self.path / DONE

    def epoch_file(self, epoch: int) -> Path:
        return self.path / epoch_file_name(epoch)

    def epoch_files(self) -> list[Path]:
        """The ``epoch_NNNN.pt`` files, by epoch."""
        if not self.path.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.path.iterdir()
                 if (m := CHECKPOINT_NAME.match(p.name)) and p.is_file()]
        return [p for _, p in sorted(found)]

    def run_files(self) -> list[Path]:
        """Every file of the run that exists (``--overwrite`` deletes these)."""
        names = (CONFIG, METRICS, LAST, BEST, DONE)
        return [self.path / n for n in names if (self.path / n).is_file()] + self.epoch_files()

    def has_run(self) -> bool:
        """The folder holds anything but the lock file."""
        return self.path.is_dir() and any(p.name != RUN_LOCK for p in self.path.iterdir())

    # --- checks before the first write --------------------------------------------------------

    def check_out_dir(self, resume: bool, overwrite: bool) -> None:
        """Refuse to touch an existing run unless resuming or overwriting (before any write)."""
        c = self.caller
        if resume and overwrite:
            raise BadInput(f"{c.resume} and {c.overwrite} exclude each other")
        if self.path.exists() and not self.path.is_dir():
            raise BadInput(f"output path {str(self.path)!r} exists and is not a folder")
        blocker = next((p for p in self.path.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise BadInput(f"output path {str(self.path)!r} cannot be created: "
                           f"{str(blocker)!r} is a file, not a folder")
        if resume and not self.last.is_file():
            raise BadInput(f"{c.resume}: {str(self.last)!r} does not exist; {self._no_last_hint()}")
        if self.has_run() and not resume and not overwrite:
            raise BadInput(f"run directory {str(self.path)!r} is not empty; pass {c.resume} to "
                           f"continue it or {c.overwrite} to start over")

    def _no_last_hint(self) -> str:
        """What to do when ``last.pt`` is gone, never advising to delete checkpoints unsaid."""
        c = self.caller
        if not self.has_run():
            return f"start the run without {c.resume}"
        kept = [p for p in (self.best, *self.epoch_files()) if p.is_file()]
        files = ", ".join(p.name for p in self.run_files())
        if not kept:
            return (f"it stopped before its first checkpoint: start over with {c.overwrite} "
                    f"(it deletes {files or 'nothing but temporary files'})")
        epochs = {}
        for path in kept:
            try:
                epoch = load_checkpoint(path).get("epoch")
            except BadInput:
                continue
            if is_int(epoch) and epoch > 0:
                epochs[path] = epoch
        newest = max(epochs, key=lambda p: (epochs[p], p.name != BEST), default=None)
        instead = (f"to continue exactly from epoch {epochs[newest]} instead (the epochs after "
                   f"it are trained again, as they were), copy {newest.name} to {LAST} and "
                   f"resume" if newest is not None else
                   "none of them can be read, so the run cannot be continued")
        return (f"the run keeps {', '.join(p.name for p in kept)} but no {LAST}: {c.overwrite} "
                f"would delete them ({files}); {instead}")

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()

    def lock_existing(self, resume: bool, overwrite: bool) -> None:
        """An existing run: lock it now (main rank), so that no other process changes it while
        it is checked, and check it again as it is under the lock."""
        if self.path.is_dir():
            self.lock.acquire()
            self.check_out_dir(resume, overwrite)

    def lock_new(self, resume: bool, overwrite: bool) -> None:
        """A new directory: created and locked now (main rank), and checked again."""
        if self.main and not self.lock.held:
            self.lock.acquire()
            self.check_out_dir(resume, overwrite)

    # --- reading a run back -------------------------------------------------------------------

    def read_record(self) -> dict[str, Any] | None:
        """``config.json`` parsed and bounded, or None when there is none. BadInput when it
        cannot be read: the run's identity could not be checked."""
        if not self.config.is_file():
            return None
        where = f"{str(self.config)!r}"
        try:
            if self.config.stat().st_size > RECORD_LIMIT_BYTES:
                raise BadInput(f"{where} is larger than {RECORD_LIMIT_BYTES >> 20} MiB; a run's "
                               f"config.json is a few KB")
            record = json.loads(self.config.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
            if isinstance(err, BadInput):
                raise
            raise BadInput(f"{where} cannot be read ({type(err).__name__}), so no checkpoint "
                           f"can be checked against the run; restore it, or move it away to "
                           f"judge checkpoints by metrics.jsonl alone") from None
        if not isinstance(record, dict):
            raise BadInput(f"{where} holds a {type(record).__name__}, not a run record")
        check_bounded(record, where)
        return record

    def rows(self) -> list[dict]:
        """``metrics.jsonl``'s rows (torn lines skipped)."""
        try:
            return read_metrics(self.metrics)
        except (RecursionError, UnicodeDecodeError) as err:
            raise BadInput(f"{str(self.metrics)!r} cannot be read ({type(err).__name__})"
                           ) from None

    def check_member(self, ckpt: Mapping[str, Any], path: Path,
                     record: Mapping[str, Any] | None = None,
                     rows: list[dict] | None = None) -> str | None:
        """Refuse (one line naming both runs) checkpoint ``ckpt`` (read from ``path``) when it
        is not of this run; returns the run id to carry on with (None: a run before ids)."""
        record = self.read_record() if record is None else record
        rows = self.rows() if rows is None else rows
        claim = Claim.of_record(record) if record is not None else None
        return check_member(claim, rows, ckpt, f"checkpoint {str(path)!r}")

    def check_series(self, checkpoints: Mapping[Path, Mapping[str, Any]]) -> None:
        """Every checkpoint of a series (``curvtools hessian --ckpt RUN``) is of this run; a
        folder without ``config.json`` holds one run: all must agree with the first."""
        record, rows = self.read_record(), self.rows()
        if record is not None:
            for path, ckpt in checkpoints.items():
                self.check_member(ckpt, path, record, rows)
            return
        items = list(checkpoints.items())
        for path, ckpt in items[1:]:
            check_member(Claim.of_checkpoint(items[0][1]), rows, ckpt,
                         f"checkpoint {str(path)!r}", holder=items[0][0].name)

    def load_last(self) -> tuple[dict[str, Any], list[dict], str | None]:
        """``(last.pt, metrics.jsonl rows, run id)`` of a run to resume; BadInput when
        ``last.pt`` is damaged or another run's (nothing is written)."""
        ckpt = load_checkpoint(self.last)
        rows = self.rows()
        run_id = self.check_member(ckpt, self.last, rows=rows)
        return ckpt, rows, run_id

    # --- writing (main rank only) -------------------------------------------------------------

    def start(self, cfg: TrainConfig, model_config: Mapping[str, Any], run_id: str | None,
              fresh: bool) -> None:
        """Before the first write of a (re)started run: its identity (``run_id``, else a new
        one), leftovers of a killed process removed, or (``fresh``: ``--overwrite``) every run
        file deleted; the folder made and ``DONE`` removed."""
        self.identity = identity_entry(run_id or new_run_id(), cfg.to_dict(), model_config)
        self.save_every = cfg.save_every
        if not self.main:
            return
        if fresh:
            for path in self.run_files():
                path.unlink(missing_ok=True)
        self._remove_stale_temp_files()
        self.path.mkdir(parents=True, exist_ok=True)
        self.done.unlink(missing_ok=True)

    def _remove_stale_temp_files(self) -> None:
        """Temporary files of atomic writes that a killed process left half written."""
        if not self.path.is_dir():
            return
        for name in (CONFIG, METRICS, LAST, BEST, DONE, "epoch_*.pt"):
            for path in self.path.glob(f".{name}.*.tmp"):
                path.unlink(missing_ok=True)

    def write_record(self, record: dict[str, Any]) -> None:
        """``config.json``: ``record`` with the run's identity."""
        if self.main:
            text = json.dumps(record | {RUN_ENTRY: self.identity}, indent=2) + "\n"
            write_text_atomic(self.config, text)

    def write_rows(self, rows: list[dict]) -> None:
        """``metrics.jsonl`` holding exactly ``rows`` (a resumed run's epochs so far)."""
        if self.main:
            write_text_atomic(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))

    def append_row(self, row: dict) -> None:
        """One epoch's row, appended and fsynced before that epoch's checkpoints: a crash
        in between leaves a row past ``last.pt``, which resuming truncates and recomputes."""
        if self.main:
            with open(self.metrics, "a") as handle:
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    def save_epoch(self, epoch: int, payload: dict[str, Any], improved: bool) -> None:
        """The checkpoints of a finished epoch, in this order: ``best.pt`` (when the validation
        robust accuracy ``improved``), ``epoch_NNNN.pt`` (every ``save_every``), ``last.pt``."""
        if not self.main:
            return
        payload = payload | {RUN_ENTRY: self.identity}
        if improved:
            save_checkpoint(self.best, payload)
        if self.save_every and epoch % self.save_every == 0:
            save_checkpoint(self.epoch_file(epoch), payload)
        save_checkpoint(self.last, payload)

    def finish(self, epochs: int, finished: float) -> None:
        """``DONE``: the run trained all ``epochs``."""
        if self.main:
            write_text_atomic(self.done, json.dumps({"epochs": epochs,
                                                     "finished": finished}) + "\n")


# --- what config.json records ---------------------------------------------------------------


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


__all__ = ["API", "CLI", "FIT", "Caller", "RunDir", "RunLock", "USER_MODULE_ARCH",
           "is_user_module_config", "model_config_for", "refuse_user_module", "run_record",
           "user_module_message"]

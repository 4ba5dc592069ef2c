"""PGD adversarial training with the paper's protocol, writing a run directory.

Defaults are the protocol of Singla et al. (ICCV 2021), which forks Rice et al.'s
``train_cifar.py`` (see ``../shared/PROTOCOL.md``): PreActResNet-18, PGD-10 (eps 8/255,
step 2/255, one random start, BatchNorm in train mode during the attack), SGD with momentum 0.9
and weight decay 5e-4 on every parameter, batch 128, 200 epochs, learning rate 0.1 divided by 10
at epochs 100 and 150, evaluated per iteration at the fractional epoch ``epoch + (i + 1) / n``.

One training step, as in Rice et al.'s loop (their order matters for BatchNorm statistics):

1. ``delta = pgd(...)`` with the model in train mode (``attack_bn="train"``), whose last forward
   (restart selection, on ``x + delta``) moves the BatchNorm running statistics;
2. robust forward on ``clamp(x + delta, 0, 1)``, cross-entropy, backward, SGD step;
3. clean forward on ``x`` *after* the step, still in train mode (their "train loss/acc"; it also
   moves BatchNorm running statistics, so we keep it to reproduce their eval-mode models).

With one restart the forward of 1. selects nothing and sees the same images, weights and batch
statistics as the forward of 2., so the step runs it once: the robust forward moves the running
statistics by both updates (:func:`running_stats_count_twice`). The weights follow the same
trajectory bit for bit; the running statistics agree to float rounding.

The train robust numbers are those of the robust forward before the step; the train clean numbers
come from the forward after it. Every epoch the model is evaluated in eval mode on the validation
and test sets (clean, and PGD with ``eval_steps``/``eval_restarts``) and a row is appended to
``metrics.jsonl`` (keys in ``docs/architecture.md``).

Run directory: ``config.json``, ``metrics.jsonl``, ``last.pt``, ``best.pt`` (highest validation
robust accuracy, never selected on test), ``epoch_NNNN.pt`` (``save_every``), ``DONE``.

Reproducibility: the model is initialized from ``seed``; the data order and augmentation of an
epoch come from ``(seed, epoch)`` (``harness.data.DeviceBatches``); the attack's random starts
come from a generator reseeded from ``(seed, epoch, stream)`` every epoch. So a resumed run needs
only the model, optimizer and best-so-far from ``last.pt`` (the global RNG states are saved and
restored too), and on CPU it reproduces an uninterrupted run exactly.

Example::

    >>> cfg = TrainConfig.from_dict({"dataset": "digits", "arch": "preactresnet18",
    ...                              "width": 0.125, "epochs": 3, "act": "silu"})
    >>> run_training(cfg, Path("runs/silu-digits"))
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curvtools.checks import is_int
from curvtools.cpu_allocator import keep_freed_memory
from curvtools.fileio import write_text_atomic
from curvtools.runfiles import read_metrics
from harness.checkpoint import load_checkpoint, save_checkpoint
from harness.config import TrainConfig
from harness.distributed import barrier, context_from_env, setup
from harness.report import Reporter
from harness.resume import (
    check_resume_config,
    check_resume_payload,
    checkpoint_payload,
    restore_engine,
)
from harness.run_data import RunData, load_run_data
from harness.rundir import (
    RunLock,
    append_metrics,
    check_resume_model,
    clear_run_files,
    model_config_for,
    no_write,
    prepare_out_dir,
    remove_stale_temp_files,
    run_record,
)
from harness.runtime import autocast_dtype_for, resolve_channels_last, resolve_device
from harness.step import build_engine, run_epoch


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the CLI exits with code 3."""


@dataclass(frozen=True)
class RunInputs:
    """Where a run's data and model come from; the protocol around them is the same.

    ``load_data(cfg, device, channels_last, dist)`` returns the run's
    :class:`~harness.run_data.RunData`; ``model_config(cfg, data)`` the JSON-able ``config`` of
    its checkpoints; ``net`` is the model to train, or None to build ``model_config`` with
    :func:`harness.models.build_model`. ``record`` is merged into ``config.json``.
    :data:`REGISTRY_INPUTS` (:func:`run_training`): the dataset and architecture registries;
    ``harness.fitting.fit``: a user's module and tensors.
    """

    load_data: Callable[..., RunData] = load_run_data
    model_config: Callable[[TrainConfig, RunData], dict] = model_config_for
    net: Any = None  # torch.nn.Module | None
    record: Mapping[str, Any] = field(default_factory=dict)

    @property
    def user_module(self) -> bool:
        return self.net is not None


REGISTRY_INPUTS = RunInputs()


def run_training(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False,
                 overwrite: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> list[dict]:
    """Train per ``cfg`` into ``out_dir``; returns the metrics rows of all finished epochs.

    ``resume`` continues from ``out_dir/last.pt`` (settings other than
    :data:`RESUMABLE_CHANGES` must match); ``overwrite`` deletes an existing run's files first.
    Without either, a non-empty ``out_dir`` raises :class:`BadInput` and nothing is touched.
    Raises :class:`TrainingDiverged` when the training loss becomes NaN/inf (``best.pt`` and
    ``last.pt`` then hold the last good epoch). ``progress`` shows a rich progress bar and
    prints one summary line per epoch (``log`` receives the same lines when given).
    """
    return train_with(REGISTRY_INPUTS, cfg, out_dir, resume=resume, overwrite=overwrite,
                      progress=progress, log=log)


def train_with(inputs: RunInputs, cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False,
               overwrite: bool = False, progress: bool = True,
               log: Callable[[str], None] | None = None) -> list[dict]:
    """:func:`run_training` with the data and model of ``inputs`` (see :class:`RunInputs`)."""
    cfg.validate()
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, resume, overwrite)
    # Data parallel: rank 0 holds the lock for all ranks (the others only read the run dir)
    with RunLock(out_dir, enabled=context_from_env().is_main) as lock:
        if out_dir.is_dir():  # an existing run: no other process may change it while we check
            lock.acquire()
            prepare_out_dir(out_dir, resume, overwrite)  # as it is now that we hold the lock
        return _train(inputs, cfg, out_dir, resume, overwrite, progress, log, lock)


def _train(inputs: RunInputs, cfg: TrainConfig, out_dir: Path, resume: bool, overwrite: bool,
           progress: bool, log: Callable[[str], None] | None, lock: RunLock) -> list[dict]:
    """:func:`run_training` once ``out_dir`` is checked: every check (settings, resume payload,
    data, model) comes before the first write."""
    metrics_path = out_dir / "metrics.jsonl"
    ckpt, rows = None, []
    start_epoch, best = 0, -1.0
    if resume:
        ckpt = load_checkpoint(out_dir / "last.pt")
        rows = read_metrics(metrics_path)
        start_epoch, best = check_resume_payload(ckpt, out_dir / "last.pt", rows)
        check_resume_config(cfg, ckpt.get("train_config") or {}, start_epoch)
        check_resume_model(ckpt.get("config"), out_dir / "last.pt", inputs.user_module)
    dist, device = setup(resolve_device(cfg.device))  # torchrun: cuda:LOCAL_RANK, one rank each
    if device.type == "cpu":
        keep_freed_memory()  # API callers too; the CLIs apply it at start
    main = dist.is_main  # only rank 0 writes files and prints
    amp = autocast_dtype_for(cfg.precision, device)
    channels_last = resolve_channels_last(cfg, device)
    data = inputs.load_data(cfg, device, channels_last, dist)  # may raise BadInput
    model_config = inputs.model_config(cfg, data)
    if ckpt is not None:
        check_resume_model(ckpt.get("config"), out_dir / "last.pt", inputs.user_module,
                           model_config)
    engine = build_engine(cfg, model_config, device, amp, channels_last, dist, net=inputs.net)
    if ckpt is not None:
        restore_engine(engine, ckpt, out_dir / "last.pt")  # may raise BadInput: nothing written
    if main and not lock.held:
        lock.acquire()  # a new directory: created now, and checked again under the lock
        prepare_out_dir(out_dir, resume, overwrite)
    barrier(dist)  # every rank has checked out_dir before rank 0 changes it

    if ckpt is not None:
        remove_stale_temp_files(out_dir)
    elif overwrite and out_dir.is_dir():
        if main:
            clear_run_files(out_dir)
    # Data parallel: only rank 0 touches files; the other ranks run the same code with
    # writers that do nothing.
    write_text = write_text_atomic if main else no_write
    append_row = append_metrics if main else no_write
    save = save_checkpoint if main else no_write
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "DONE").unlink(missing_ok=True)
    record = run_record(cfg, data, model_config, device, amp, channels_last)
    record.update(inputs.record)
    record["resolved"]["world_size"] = dist.world_size
    record["resolved"]["cuda_graphs"] = engine.cuda_graphs
    # "auto" precision follows the hardware, which may differ on resume: keep the history
    precision = record["resolved"]["precision"]
    precision_before = ckpt.get("precision") if ckpt is not None else None
    precision_changes = list(ckpt.get("precision_changes", [])) if ckpt is not None else []
    switched = precision_before not in (None, precision)
    if switched:
        precision_changes.append({"epoch": start_epoch, "from": precision_before,
                                  "to": precision})
    if precision_changes:
        record["resolved"]["precision_changes"] = precision_changes
    write_text(out_dir / "config.json", json.dumps(record, indent=2) + "\n")
    rows = [r for r in rows if is_int(r.get("epoch")) and r["epoch"] <= start_epoch]
    if ckpt is not None and start_epoch and not any(r["epoch"] == start_epoch for r in rows):
        rows.append(dict(ckpt["metrics"]))  # the file lost the checkpoint's row: restore it
    write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    if not main:
        progress, log = False, None
    reporter = Reporter(progress, log, cfg.epochs, start_epoch, len(data.train),
                         len(data.val) if hasattr(data.val, "__len__") else 0,
                         len(data.test) if hasattr(data.test, "__len__") else 0)
    with reporter:
        reporter.start_line(out_dir, record["resolved"], resumed=ckpt is not None)
        if switched:
            reporter.line(f"note: epochs 1-{start_epoch} ran in {precision_before}; resumed in "
                          f"{precision} (--precision {cfg.precision} on {device})")
        try:
            rows = _epochs(engine, data, cfg, out_dir, start_epoch, best, rows, reporter,
                           model_config, precision_changes, metrics_path, save, append_row)
        except KeyboardInterrupt:
            reporter.interrupted(out_dir)
            raise
    write_text(out_dir / "DONE", json.dumps({"epochs": cfg.epochs,
                                             "finished": time.time()}) + "\n")
    barrier(dist)  # ranks finish together, after rank 0 has written DONE
    return rows


def _epochs(engine, data, cfg: TrainConfig, out_dir: Path, start_epoch: int, best: float,
            rows: list[dict], reporter: Reporter, model_config: dict, precision_changes: list,
            metrics_path: Path, save, append_row) -> list[dict]:
    """Epochs ``start_epoch + 1 .. cfg.epochs``: train, evaluate, append the row, checkpoint."""
    for epoch in range(start_epoch, cfg.epochs):
        row = run_epoch(engine, data, epoch, reporter)
        if not all(math.isfinite(row[k]) for k in ("train_robust_loss", "train_clean_loss")):
            kept = (f"best.pt and last.pt keep epoch {epoch} or earlier" if epoch
                    else "no checkpoint was written")
            message = (f"training diverged: non-finite training loss in epoch {epoch + 1} "
                       f"(lr {row['lr']:g}); {kept}")
            reporter.line(message)
            raise TrainingDiverged(message)
        # The row goes first: a crash before last.pt is written leaves a row past the
        # checkpoint, which resuming truncates and recomputes (never a lost epoch).
        append_row(metrics_path, row)
        rows.append(row)
        payload = checkpoint_payload(engine, model_config, epoch + 1, row,
                                      max(best, row["val_robust_acc"]), precision_changes,
                                      int(data.source_info["image_size"]))
        if row["val_robust_acc"] > best:
            best = row["val_robust_acc"]
            save(out_dir / "best.pt", payload)
        if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
            save(out_dir / f"epoch_{epoch + 1:04d}.pt", payload)
        save(out_dir / "last.pt", payload)
        reporter.epoch_line(row)
    return rows



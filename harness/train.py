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

Run directory: :class:`harness.rundir.RunDir` owns its files (``config.json``, ``metrics.jsonl``,
``last.pt``, ``best.pt``: highest validation robust accuracy, never selected on test,
``epoch_NNNN.pt`` every ``save_every``, ``DONE``), its lock and the run's identity; this module
only composes the rooms (settings, resume checks, data, engine, epochs) into a run.

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

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curvtools.cpu_allocator import keep_freed_memory
from harness.config import TrainConfig
from harness.distributed import barrier, context_from_env, setup
from harness.report import Reporter
from harness.resume import (
    Resumed,
    check_resume,
    check_resume_model,
    checkpoint_payload,
    restore_engine,
)
from harness.run_data import RunData, load_run_data
from harness.rundir import API, Caller, RunDir, model_config_for, run_record
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
                 log: Callable[[str], None] | None = None, caller: Caller = API) -> list[dict]:
    """Train per ``cfg`` into ``out_dir``; returns the metrics rows of all finished epochs.

    ``resume`` continues from ``out_dir/last.pt`` (settings other than
    :data:`RESUMABLE_CHANGES` must match; a ``last.pt`` of another run is refused);
    ``overwrite`` deletes an existing run's files first. Without either, a non-empty
    ``out_dir`` raises :class:`BadInput` and nothing is touched. Raises
    :class:`TrainingDiverged` when the training loss becomes NaN/inf (``best.pt`` and
    ``last.pt`` then hold the last good epoch). ``progress`` shows a rich progress bar and
    prints one summary line per epoch (``log`` receives the same lines when given).
    ``caller``: how messages name the options (``harness.rundir.CLI`` for ``harness train``).
    """
    return train_with(REGISTRY_INPUTS, cfg, out_dir, resume=resume, overwrite=overwrite,
                      progress=progress, log=log, caller=caller)


def train_with(inputs: RunInputs, cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False,
               overwrite: bool = False, progress: bool = True,
               log: Callable[[str], None] | None = None, caller: Caller = API) -> list[dict]:
    """:func:`run_training` with the data and model of ``inputs`` (see :class:`RunInputs`)."""
    cfg.validate()
    # Data parallel: rank 0 holds the lock and writes for all ranks (the others only read)
    run = RunDir(out_dir, main=context_from_env().is_main, caller=caller)
    run.check_out_dir(resume, overwrite)
    with run:
        run.lock_existing(resume, overwrite)  # no other process may change it while we check
        return _train(inputs, cfg, run, resume, overwrite, progress, log)


@dataclass
class _Epochs:
    """What the epoch loop carries from one epoch to the next."""

    start: int
    best: float
    rows: list[dict]
    model_config: dict
    precision_changes: list
    image_size: int


def _train(inputs: RunInputs, cfg: TrainConfig, run: RunDir, resume: bool, overwrite: bool,
           progress: bool, log: Callable[[str], None] | None) -> list[dict]:
    """:func:`run_training` once the run directory is checked: every check (identity,
    settings, resume payload, data, model) comes before the first write."""
    resumed: Resumed | None = check_resume(run, cfg, inputs.user_module) if resume else None
    dist, device = setup(resolve_device(cfg.device))  # torchrun: cuda:LOCAL_RANK, one rank each
    if device.type == "cpu":
        keep_freed_memory()  # API callers too; the CLIs apply it at start
    amp = autocast_dtype_for(cfg.precision, device)
    channels_last = resolve_channels_last(cfg, device)
    data = inputs.load_data(cfg, device, channels_last, dist)  # may raise BadInput
    model_config = inputs.model_config(cfg, data)
    if resumed is not None:
        check_resume_model(resumed.ckpt.get("config"), resumed.path, inputs.user_module,
                           model_config)
    engine = build_engine(cfg, model_config, device, amp, channels_last, dist, net=inputs.net)
    if resumed is not None:
        restore_engine(engine, resumed.ckpt, resumed.path)  # may raise BadInput: nothing written
    run.lock_new(resume, overwrite)
    barrier(dist)  # every rank has checked the run directory before rank 0 changes it

    run.start(cfg, model_config, resumed.run_id if resumed else None,
              fresh=resumed is None and overwrite)
    record = run_record(cfg, data, model_config, device, amp, channels_last)
    record.update(inputs.record)
    resolved = record["resolved"]
    resolved.update(world_size=dist.world_size, cuda_graphs=engine.cuda_graphs)
    changes, before = (resumed.precision_changes(resolved["precision"]) if resumed
                       else ([], None))
    if changes:
        resolved["precision_changes"] = changes
    run.write_record(record)
    loop = _Epochs(resumed.start_epoch if resumed else 0, resumed.best if resumed else -1.0,
                   resumed.rows_kept() if resumed else [], model_config, changes,
                   int(data.source_info["image_size"]))
    run.write_rows(loop.rows)

    if not dist.is_main:
        progress, log = False, None
    reporter = Reporter(progress, log, cfg.epochs, loop.start, len(data.train),
                        len(data.val) if hasattr(data.val, "__len__") else 0,
                        len(data.test) if hasattr(data.test, "__len__") else 0)
    with reporter:
        reporter.start_line(run.path, resolved, resumed=resumed is not None,
                            more_epochs=run.caller.more_epochs)
        if before is not None:
            reporter.line(f"note: epochs 1-{loop.start} ran in {before}; resumed in "
                          f"{resolved['precision']} (--precision {cfg.precision} on {device})")
        try:
            _epochs(engine, data, run, loop, reporter)
        except KeyboardInterrupt:
            reporter.interrupted(run.path, run.caller.continue_with(run.path))
            raise
    run.finish(cfg.epochs, time.time())
    barrier(dist)  # ranks finish together, after rank 0 has written DONE
    return loop.rows


def _epochs(engine, data: RunData, run: RunDir, loop: _Epochs, reporter: Reporter) -> None:
    """Epochs ``loop.start + 1 .. cfg.epochs``: train, evaluate, append the row, checkpoint."""
    for epoch in range(loop.start, engine.cfg.epochs):
        row = run_epoch(engine, data, epoch, reporter)
        if not all(math.isfinite(row[k]) for k in ("train_robust_loss", "train_clean_loss")):
            kept = (f"{run.best.name} and {run.last.name} keep epoch {epoch} or earlier"
                    if epoch else "no checkpoint was written")
            message = (f"training diverged: non-finite training loss in epoch {epoch + 1} "
                       f"(lr {row['lr']:g}); {kept}")
            reporter.line(message)
            raise TrainingDiverged(message)
        # The row goes first: a crash before last.pt is written leaves a row past the
        # checkpoint, which resuming truncates and recomputes (never a lost epoch).
        run.append_row(row)
        loop.rows.append(row)
        val = row.get("val_robust_acc")  # absent in an epoch --eval-every skips
        improved = val is not None and val > loop.best
        loop.best = max(loop.best, val) if val is not None else loop.best
        payload = checkpoint_payload(engine, loop.model_config, epoch + 1, row, loop.best,
                                     loop.precision_changes, loop.image_size)
        run.save_epoch(epoch + 1, payload, improved)
        reporter.epoch_line(row)

"""Sweeps: run every training run of an experiment spec, skipping finished ones.

Two separate steps, so that another executor (a cluster scheduler) needs only the second:

1. :func:`plan_sweep` turns a spec (:mod:`harness.specs`), a scale, the seeds and a runs folder
   into a list of :class:`PlannedRun` -- the run name, its validated ``TrainConfig``, its run
   directory and what is on disk (finished / resume / start / restart / conflict). Pure file
   inspection. Each run is planned once per seed: seed 0 in ``RUNS_DIR/SCALE/SPEC/RUN``, seed N
   in ``RUNS_DIR/SCALE/SPEC/RUN-seedN`` (the ``seed`` setting set to N).
   ``harness sweep`` then writes the manifest ``RUNS_DIR/SCALE/SPEC/spec.json``
   (:func:`harness.specs.write_manifest`) that ``python -m paper_figs`` reads.
2. An executor runs the plan. :class:`LocalExecutor` runs the runs one after another in this
   process, calling ``runner(cfg, out_dir, resume=..., overwrite=..., progress=...)``, by default
   :func:`harness.train.run_training`. :mod:`harness.executors` adds one run per GPU
   (``GpuPoolExecutor``) and SLURM through submitit (``SlurmExecutor``, one job per run,
   ``resources`` from the spec); ``harness sweep`` picks one with
   ``harness.executors.make_executor``.

A run counts as finished when its ``DONE`` marker records at least the planned epochs or its
``metrics.jsonl`` has a row for the last epoch. It is resumed when ``last.pt`` exists; a
directory without ``last.pt`` (a run that died in its first epoch) is started again with
``overwrite=True``. A directory whose ``config.json`` disagrees with the spec on a setting that
resuming may not change (all but ``harness.config.RESUMABLE_CHANGES``: epochs, device, data_dir,
...) is a conflict: the sweep refuses to start (nothing on disk is touched) and names the run.

Example::

    >>> plan = plan_sweep(load_spec("table1-cifar10"), "runs", scale="mini")
    >>> [(p.name, p.status) for p in plan][:2]
    [('relu', 'start'), ('lisht', 'start')]
    >>> LocalExecutor().execute([p for p in plan if p.needs_work])
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from curvtools.errors import BadInput, shown
from curvtools.runfiles import RUN_LOCK, read_metrics, same_setting, settings_of
from harness.config import ABSENT_MEANS
from harness.specs import Spec, load_spec, run_dir, write_manifest

__all__ = ["PlannedRun", "plan_sweep", "LocalExecutor", "Executor", "load_spec",
           "parse_settings", "finished_epochs", "check_no_conflicts", "STATUSES",
           "write_manifest"]

def _resumable_changes() -> tuple[str, ...]:
    """Settings that may differ between a run directory and the spec without making it another
    run: ``harness.config.RESUMABLE_CHANGES``, what ``run_training(resume=True)`` accepts."""
    from harness.config import RESUMABLE_CHANGES

    return tuple(RESUMABLE_CHANGES)


STATUSES = ("finished", "resume", "start", "restart", "conflict")  # PlannedRun.status values


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: what to train, where, and what is on disk already.

    ``status`` is one of ``finished`` (skip), ``resume`` (``last.pt`` exists), ``start`` (no run
    directory), ``restart`` (a directory without a checkpoint: started again, overwriting) and
    ``conflict`` (the directory holds a different run).
    """

    name: str
    config: Any  # a harness.config.TrainConfig (or whatever config_builder returns)
    out_dir: Path
    status: str
    epochs_done: int
    epochs_total: int
    detail: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @property
    def needs_work(self) -> bool:
        return self.status in ("resume", "start", "restart")

    def describe(self) -> str:
        """One line for the plan printout."""
        text = f"{self.name:<16} {self.status:<9} {self.epochs_done:>4}/{self.epochs_total:<4} " \
               f"{self.out_dir}"
        return f"{text}  ({self.detail})" if self.detail else text


class Executor(Protocol):
    """Runs planned runs (locally, or later on a cluster)."""

    def execute(self, runs: Sequence[PlannedRun]) -> list[str]: ...


Runner = Callable[..., Any]


def default_config_builder(settings: Mapping[str, Any]) -> Any:
    """``harness.config.TrainConfig.from_dict`` (validating it pulls in torch)."""
    from harness.config import TrainConfig

    return TrainConfig.from_dict(dict(settings))


def default_runner(cfg: Any, out_dir: Path, **kwargs: Any) -> Any:
    """``harness.train.run_training`` (imported lazily: it pulls in torch)."""
    from harness.train import run_training

    return run_training(cfg, out_dir, **kwargs)


def parse_settings(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings; VALUE is read as JSON when it parses, else as a string.

    >>> parse_settings(["epochs=1", "device=cpu", "lr_milestones=[1,2]"])
    {'epochs': 1, 'device': 'cpu', 'lr_milestones': [1, 2]}
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--set {shown(pair)}: expected KEY=VALUE, e.g. --set epochs=1")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def finished_epochs(out_dir: Path) -> int:
    """The largest ``epoch`` in ``out_dir/metrics.jsonl`` (0 when absent; torn lines skipped)."""
    epochs = [row["epoch"] for row in read_metrics(out_dir / "metrics.jsonl")
              if isinstance(row.get("epoch"), int)]
    return max(epochs, default=0)


def _stored_settings(out_dir: Path) -> dict[str, Any] | None:
    """The training settings recorded in ``config.json`` (None when absent or unreadable)."""
    path = out_dir / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    return {**ABSENT_MEANS, **settings_of(data)}  # an absent train_attack was "pgd"


def _config_value(cfg: Any, key: str) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key)
    return getattr(cfg, key, None)


def _as_dict(cfg: Any) -> dict[str, Any]:
    return dict(cfg) if isinstance(cfg, Mapping) else dict(cfg.to_dict())


def _conflicts(planned: Any, stored: Mapping[str, Any]) -> list[str]:
    """Settings on which a run directory's config.json and the planned config disagree."""
    want = _as_dict(planned)
    free = set(_resumable_changes())
    return [f"{key}: on disk {shown(value)}, spec {shown(want[key])}"
            for key, value in stored.items()
            if key in want and key not in free and not same_setting(want[key], value)]


def _done_marker_covers(out_dir: Path, epochs_total: int) -> bool:
    """True when ``DONE`` exists and records at least ``epochs_total`` epochs.

    ``run_training`` writes ``{"epochs": N, ...}`` into DONE; a run finished at fewer epochs than
    the spec now asks for is resumed (``epochs`` may grow on resume). A DONE without a readable
    epoch count is trusted.
    """
    path = out_dir / "DONE"
    if not path.is_file():
        return False
    try:
        epochs = json.loads(path.read_text()).get("epochs")
    except (OSError, ValueError, AttributeError):
        return True
    return not isinstance(epochs, int) or epochs >= epochs_total


def run_status(out_dir: Path, epochs_total: int, planned_config: Any) -> tuple[str, int, str]:
    """(status, epochs finished, detail) of a run directory; see :class:`PlannedRun`."""
    if not out_dir.exists():
        return "start", 0, ""
    done = finished_epochs(out_dir)
    stored = _stored_settings(out_dir)
    diffs = _conflicts(planned_config, stored) if stored is not None else []
    if diffs:
        return "conflict", done, "; ".join(diffs)
    if _done_marker_covers(out_dir, epochs_total) or (epochs_total and done >= epochs_total):
        return "finished", done, ""
    if (out_dir / "last.pt").is_file():
        return "resume", done, f"from epoch {done}"
    if any(p.name != RUN_LOCK for p in out_dir.iterdir()):
        return "restart", done, "no last.pt: starts over"
    return "start", 0, ""


def plan_sweep(spec: Spec | str | Path, runs_dir: str | Path, scale: str = "paper", *,
               only: Sequence[str] | None = None, settings: Mapping[str, Any] | None = None,
               config_builder: Callable[[Mapping[str, Any]], Any] | None = None,
               seeds: Sequence[int] | None = None) -> list[PlannedRun]:
    """Plan a sweep: every run of ``spec`` at ``scale`` and seed, its config, directory, status.

    ``only`` restricts to the named runs; ``settings`` (e.g. ``{"dataset": ..., "epochs": 1}``)
    override every run's config last. ``seeds`` (default :meth:`Spec.seeds_for`, i.e. the spec's
    ``seeds`` or ``(0,)``) plans each run once per seed with ``seed`` set to it; a ``seed`` in
    ``settings`` is refused (use ``seeds``). ``config_builder`` turns a settings dict into the
    validated config object (default ``TrainConfig.from_dict``; tests pass a fake). Every run's
    config is built here, so a bad field fails before anything trains. Runs come in spec order,
    all seeds of one run together.
    """
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    build = config_builder or default_config_builder
    runs = spec.run_configs(scale)
    if only:
        known = [name for name, _ in runs]
        for name in only:
            if name not in known:
                raise BadInput(f"--only {shown(name)}: spec {shown(spec.name)} at scale "
                               f"{shown(scale)} has runs {', '.join(known)}")
        runs = [(name, cfg) for name, cfg in runs if name in only]
    from harness.datasets import absolute_data_settings

    if settings and "seed" in settings:
        raise BadInput("--set seed=...: the seed picks the run folder; use --seeds "
                       f"{settings['seed']} instead")
    seed_list = list(seeds) if seeds else list(spec.seeds_for(scale))
    plan = []
    for name, cfg in runs:
        for seed in seed_list:
            merged = {**cfg, **absolute_data_settings(settings or {}), "seed": seed}
            config = build(merged)
            total = int(_config_value(config, "epochs") or 0)
            out_dir = run_dir(runs_dir, scale, spec.name, name, seed)
            status, done, detail = run_status(out_dir, total, config)
            plan.append(PlannedRun(out_dir.name, config, out_dir, status, done, total, detail,
                                   merged, seed))
    return plan


def check_no_conflicts(plan: Sequence[PlannedRun]) -> None:
    """Raise :class:`BadInput` naming the first run whose directory holds a different run."""
    for run in plan:
        if run.status == "conflict":
            raise BadInput(f"run directory {run.out_dir} holds a different run ({run.detail}); "
                           "move it away or use another --runs-dir")


@dataclass
class LocalExecutor:
    """Runs the planned runs one after another in this process.

    ``runner(cfg, out_dir, resume=bool, overwrite=bool, progress=bool)`` defaults to
    :func:`harness.train.run_training`. ``log`` receives one line per run (start/resume/done).
    By default the first failing run stops the sweep (its exception propagates; rerunning the
    sweep resumes). With ``keep_going`` a failure (e.g. a diverged run) is logged, recorded in
    ``failed`` and the next run starts; ``KeyboardInterrupt`` always stops.
    """

    runner: Runner | None = None  # None: default_runner, looked up when executing
    progress: bool = True
    log: Callable[[str], None] = print
    keep_going: bool = False
    failed: dict[str, str] = field(default_factory=dict)

    def execute(self, runs: Sequence[PlannedRun]) -> list[str]:
        """Run every run that needs work; returns the names of the runs that finished."""
        todo = [r for r in runs if r.needs_work]
        check_no_conflicts(runs)
        runner = self.runner or default_runner
        ran = []
        for i, run in enumerate(todo, 1):
            verb = {"resume": f"resuming from epoch {run.epochs_done}",
                    "restart": "starting over", "start": "starting"}[run.status]
            self.log(f"[{i}/{len(todo)}] {run.name}: {verb} -> {run.out_dir}")
            run.out_dir.parent.mkdir(parents=True, exist_ok=True)
            try:
                runner(run.config, run.out_dir, resume=run.status == "resume",
                       overwrite=run.status == "restart", progress=self.progress)
            except Exception as err:
                if not self.keep_going:
                    raise
                self.failed[run.name] = f"{type(err).__name__}: {err}"
                self.log(f"[{i}/{len(todo)}] {run.name}: FAILED ({self.failed[run.name]})")
                continue
            ran.append(run.name)
            self.log(f"[{i}/{len(todo)}] {run.name}: done")
        return ran

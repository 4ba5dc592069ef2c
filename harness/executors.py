"""Executors for sweeps beyond one process: one run per GPU locally, or SLURM through submitit.

A sweep plan (``harness.sweep.plan_sweep``) is a list of runs; an executor runs those that need
work. ``harness.sweep.LocalExecutor`` runs them one after another in the calling process; this
module adds:

* :class:`GpuPoolExecutor` (``harness sweep --executor local --gpus N``): N worker processes at
  a time, each pinned to one GPU through ``CUDA_VISIBLE_DEVICES`` (the ids come from the
  caller's ``CUDA_VISIBLE_DEVICES`` when set, else ``0..N-1``). Each run's output goes to
  ``<spec folder>/logs/<run>.log``. A failed run is recorded in ``failed`` (as
  ``harness.sweep.LocalExecutor`` does); the runs already going finish, and new ones start only
  with ``keep_going``. Rerunning the sweep resumes what did not finish.
* :class:`SlurmExecutor` (``--executor slurm``): one job per run, submitted as one job array
  through submitit, with the spec's ``resources`` (``gpus``, ``hours``, ``cpus``, ``mem`` in GB)
  and the command line's ``--partition``, ``--account``, ``--timeout-min``. A run with
  ``gpus > 1`` becomes one task per GPU and trains data parallel (``harness.distributed``).

Both execute a :class:`TrainingJob`: a picklable call that decides *when it runs* whether to
start, resume from ``last.pt`` or skip a finished run. That is what makes SLURM preemption safe:
submitit's checkpointing protocol calls :meth:`TrainingJob.checkpoint` on preemption or timeout,
which returns ``DelayedSubmission(same job)``; the requeued job finds ``last.pt`` and resumes,
losing at most the epoch in progress.

Example::

    >>> plan = plan_sweep("table1-cifar10", "runs")
    >>> SlurmExecutor(resources={"gpus": 1, "hours": 1}, partition="gpu").execute(plan)
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curvtools.checks import is_int, is_number
from curvtools.errors import BadInput

RESOURCE_KEYS = ("gpus", "hours", "cpus", "mem")
DEFAULT_HOURS = 24.0


def _load_runner(spec: str | None) -> Callable[..., Any]:
    """``"module:function"`` -> the function; None -> ``harness.train.run_training``."""
    if spec is None:
        from harness.train import run_training

        return run_training
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise BadInput(f"runner {spec!r} cannot be imported ({err}); "
                       f"expected module:function") from None


def _maybe_export_slurm_distributed() -> None:
    """Inside a submitit job with several tasks: set torchrun's variables for this task.

    ``harness.distributed.setup`` then starts the process group as under torchrun. GPUs stay
    all visible; each task takes ``cuda:LOCAL_RANK``.
    """
    try:
        import submitit

        env = submitit.JobEnvironment()
    except (ImportError, RuntimeError):
        return  # not inside a submitit job
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


@dataclass
class TrainingJob:
    """One run of a sweep as a picklable call: start, resume or skip, decided when it runs.

    ``settings`` is the run's ``TrainConfig.to_dict()``; ``runner`` a ``"module:function"``
    with ``run_training``'s signature (None: ``run_training``). Calling it returns a summary
    dict ``{"name", "out_dir", "action", "epochs"}`` where ``action`` is ``skipped`` (already
    finished), ``started``, ``resumed`` or ``restarted``.
    """

    name: str
    settings: dict[str, Any]
    out_dir: str
    progress: bool = False
    runner: str | None = None

    def __call__(self) -> dict[str, Any]:
        from harness.sweep import default_config_builder, run_status

        _maybe_export_slurm_distributed()
        cfg = default_config_builder(self.settings)
        out_dir = Path(self.out_dir)
        epochs = int(self.settings.get("epochs", 0))
        status, done, detail = run_status(out_dir, epochs, cfg)
        summary = {"name": self.name, "out_dir": str(out_dir), "epochs": epochs}
        if status == "finished":
            return summary | {"action": "skipped"}
        if status == "conflict":
            raise BadInput(f"run directory {out_dir} holds a different run ({detail})")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        _load_runner(self.runner)(cfg, out_dir, resume=status == "resume",
                                  overwrite=status == "restart", progress=self.progress)
        action = {"resume": "resumed", "restart": "restarted", "start": "started"}[status]
        return summary | {"action": action, "from_epoch": done}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's preemption hook: requeue this same call (it resumes from ``last.pt``)."""
        import submitit

        return submitit.helpers.DelayedSubmission(TrainingJob(**self.__dict__))


def job_for(run: Any, progress: bool = False, runner: str | None = None) -> TrainingJob:
    """The :class:`TrainingJob` of a ``harness.sweep.PlannedRun``."""
    cfg = run.config
    settings = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return TrainingJob(run.name, settings, str(run.out_dir), progress, runner)


def _logs_dir(run: Any) -> Path:
    return Path(run.out_dir).parent / "logs"


# --- local: one run per GPU ------------------------------------------------------------------


def visible_gpu_ids(count: int, env: Mapping[str, str] | None = None) -> list[str]:
    """The ``count`` GPU ids to pin workers to: the first of ``CUDA_VISIBLE_DEVICES`` if set.

    >>> visible_gpu_ids(2, {"CUDA_VISIBLE_DEVICES": "3,5,6"})
    ['3', '5']
    """
    env = os.environ if env is None else env
    if not is_int(count) or count < 1:
        raise BadInput(f"--gpus {count!r} must be an integer >= 1")
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is None or listed.strip() == "":
        return [str(i) for i in range(count)]
    ids = [part.strip() for part in listed.split(",") if part.strip()]
    if count > len(ids):
        raise BadInput(f"--gpus {count} but CUDA_VISIBLE_DEVICES={listed!r} lists {len(ids)}")
    return ids[:count]


@dataclass
class _Worker:
    run: Any
    gpu: str
    process: subprocess.Popen
    log_path: Path
    log_file: Any


@dataclass
class GpuPoolExecutor:
    """Runs the plan's runs ``gpus`` at a time, each in its own process on its own GPU.

    Each worker is ``python -m harness.executors JOB.json`` with ``CUDA_VISIBLE_DEVICES`` set to
    one id (:func:`visible_gpu_ids`), so the run sees one GPU, ``cuda:0``. Output goes to
    ``logs/<run>.log`` beside the run directories. ``runner`` (``"module:function"``) replaces
    ``run_training`` (tests). Failed runs land in ``failed`` (name -> reason); after a failure
    no new run starts unless ``keep_going``.
    """

    gpus: int
    runner: str | None = None
    log: Callable[[str], None] = print
    keep_going: bool = False
    poll_seconds: float = 0.5
    env: Mapping[str, str] | None = None
    failed: dict[str, str] = field(default_factory=dict)

    def execute(self, runs: Sequence[Any]) -> list[str]:
        """Run every run that needs work; returns the names of those that finished."""
        from harness.sweep import check_no_conflicts

        check_no_conflicts(runs)
        gpu_ids = visible_gpu_ids(self.gpus, self.env)
        pending = [r for r in runs if r.needs_work]
        total, free, running = len(pending), list(gpu_ids), []
        done: list[str] = []
        started = 0
        while pending or running:
            if self.failed and not self.keep_going:
                pending = []  # let the running ones finish, start no more
            while pending and free:
                started += 1
                worker = self._start(pending.pop(0), free.pop(0))
                self.log(f"[{started}/{total}] {worker.run.name}: started on GPU {worker.gpu} "
                         f"(log {worker.log_path})")
                running.append(worker)
            time.sleep(self.poll_seconds if running else 0)
            for worker in [w for w in running if w.process.poll() is not None]:
                running.remove(worker)
                worker.log_file.close()
                free.append(worker.gpu)
                code = worker.process.returncode
                if code == 0:
                    done.append(worker.run.name)
                    self.log(f"{worker.run.name}: done")
                else:
                    self.failed[worker.run.name] = f"exit code {code}, log {worker.log_path}"
                    self.log(f"{worker.run.name}: FAILED ({self.failed[worker.run.name]})")
        return done

    def _start(self, run: Any, gpu: str) -> _Worker:
        logs = _logs_dir(run)
        logs.mkdir(parents=True, exist_ok=True)
        job_path = logs / f"{run.name}.job.json"
        job_path.write_text(json.dumps(job_for(run, progress=False, runner=self.runner).__dict__,
                                       indent=1) + "\n")
        env = dict(os.environ if self.env is None else self.env)
        env["CUDA_VISIBLE_DEVICES"] = gpu
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # a worker is one process, not a rank
            env.pop(name, None)
        log_path = logs / f"{run.name}.log"
        log_file = open(log_path, "a")  # noqa: SIM115 (closed when the worker ends)
        process = subprocess.Popen([sys.executable, "-m", "harness.executors", str(job_path)],
                                   stdout=log_file, stderr=subprocess.STDOUT, env=env)
        return _Worker(run, gpu, process, log_path, log_file)


# --- SLURM through submitit -------------------------------------------------------------------


def _positive(resources: Mapping[str, Any], key: str, integer: bool) -> float | int | None:
    value = resources.get(key)
    if value is None:
        return None
    ok = is_number(value)
    if not ok or value <= 0 or (integer and int(value) != value):
        kind = "a positive integer" if integer else "a positive number"
        raise BadInput(f"resources {key}={value!r} must be {kind}")
    return int(value) if integer else float(value)


def submitit_parameters(resources: Mapping[str, Any], *, partition: str | None = None,
                        account: str | None = None,
                        timeout_min: int | None = None) -> dict[str, Any]:
    """submitit ``update_parameters`` keywords for one run of a spec.

    ``resources``: ``gpus`` (per run; > 1 means data parallel, one task per GPU), ``hours``
    (wall time; default 24), ``cpus`` (per run), ``mem`` (GB per run). ``timeout_min``
    overrides ``hours``.

    Example: ``{"gpus": 2, "hours": 1.5, "cpus": 16}`` with ``partition="gpu"`` gives
    ``timeout_min=90, nodes=1, gpus_per_node=2, tasks_per_node=2, cpus_per_task=8,
    slurm_partition="gpu"``.
    """
    unknown = sorted(set(resources) - set(RESOURCE_KEYS))
    if unknown:
        raise BadInput(f"unknown resources key(s) {', '.join(unknown)}; "
                       f"allowed: {', '.join(RESOURCE_KEYS)}")
    gpus = resources.get("gpus", 1)
    if gpus != 0:
        gpus = _positive({"gpus": gpus}, "gpus", integer=True)
    hours = _positive(resources, "hours", integer=False) or DEFAULT_HOURS
    if timeout_min is not None and (not is_int(timeout_min) or timeout_min < 1):
        raise BadInput(f"--timeout-min {timeout_min!r} must be an integer >= 1")
    tasks = max(1, int(gpus))
    params: dict[str, Any] = {"timeout_min": int(timeout_min or math.ceil(hours * 60)),
                              "nodes": 1, "gpus_per_node": int(gpus), "tasks_per_node": tasks}
    cpus = _positive(resources, "cpus", integer=True)
    if cpus is not None:
        params["cpus_per_task"] = max(1, cpus // tasks)
    mem = _positive(resources, "mem", integer=False)
    if mem is not None:
        params["mem_gb"] = mem
    if partition:
        params["slurm_partition"] = partition
    if account:
        params["slurm_account"] = account
    return params


@dataclass
class SlurmExecutor:
    """Submits one job per run (as one job array) through submitit; see the module docstring.

    ``cluster``: ``"slurm"`` (needs ``sbatch`` on this machine: a login node); ``"local"``
    runs the jobs as local processes through submitit (tests, a workstation); ``"debug"`` in
    this process. Job files and
    logs go to ``folder`` (default: ``submitit/`` beside the run directories). ``wait`` blocks
    until all jobs ended and records failed ones in ``failed`` (name -> reason).
    """

    resources: Mapping[str, Any] = field(default_factory=dict)
    partition: str | None = None
    account: str | None = None
    timeout_min: int | None = None
    cluster: str = "slurm"
    folder: Path | None = None
    wait: bool = False
    runner: str | None = None
    log: Callable[[str], None] = print
    jobs: list[Any] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.parameters = submitit_parameters(self.resources, partition=self.partition,
                                              account=self.account,
                                              timeout_min=self.timeout_min)

    def check_ready(self) -> None:
        """Raise :class:`BadInput` when jobs cannot be submitted from here (no ``sbatch``);
        ``harness sweep`` calls it before it writes anything."""
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise BadInput("--executor slurm: sbatch not found here; run the sweep on a SLURM "
                           "login node, or use --executor local [--gpus N]")

    def execute(self, runs: Sequence[Any]) -> list[str]:
        """Submit every run that needs work; returns their names (all finished when ``wait``)."""
        import submitit

        from harness.sweep import check_no_conflicts

        check_no_conflicts(runs)
        todo = [r for r in runs if r.needs_work]
        if not todo:
            return []
        self.check_ready()
        folder = self.folder or Path(todo[0].out_dir).parent / "submitit"
        executor = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        # slurm_* keys are ignored by submitit's local executors
        executor.update_parameters(name=f"lowcurv-{Path(todo[0].out_dir).parent.name}",
                                   **self.parameters)
        with executor.batch():
            jobs = [executor.submit(job_for(run, runner=self.runner)) for run in todo]
        self.jobs = jobs
        for run, job in zip(todo, jobs, strict=True):
            self.log(f"{run.name}: submitted as job {job.job_id} ({run.status}; "
                     f"logs {folder})")
        if not self.wait:
            return [run.name for run in todo]
        return self._wait(todo, jobs)

    def _wait(self, todo: Sequence[Any], jobs: Sequence[Any]) -> list[str]:
        done = []
        for run, job in zip(todo, jobs, strict=True):
            try:
                summary = job.result()
            except Exception as err:  # submitit re-raises the job's exception with its traceback
                last = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
                self.failed[run.name] = f"job {job.job_id}: {last}"
                self.log(f"{run.name}: FAILED ({self.failed[run.name]})")
                continue
            done.append(run.name)
            self.log(f"{run.name}: {summary.get('action', 'done')}")
        return done


def make_executor(name: str, *, gpus: int | None = None, resources: Mapping[str, Any] | None = None,
                  partition: str | None = None, account: str | None = None,
                  timeout_min: int | None = None, wait: bool = False, progress: bool = True,
                  keep_going: bool = False, cluster: str = "slurm",
                  log: Callable[[str], None] = print) -> Any:
    """The executor for ``harness sweep --executor NAME`` and its options.

    ``local`` with ``gpus`` None or 1: ``harness.sweep.LocalExecutor`` (in this process);
    ``local`` with ``gpus`` > 1: :class:`GpuPoolExecutor`; ``slurm``: :class:`SlurmExecutor`
    (``cluster="local"``: submitit's local processes). Slurm options with ``local`` (or
    ``--gpus`` with ``slurm``) are refused, so a typo never silently runs somewhere else.
    """
    from harness.sweep import LocalExecutor

    if name == "local":
        given = [flag for flag, value in (("--partition", partition), ("--account", account),
                                          ("--timeout-min", timeout_min)) if value is not None]
        if given:
            raise BadInput(f"{', '.join(given)} only apply to --executor slurm")
        if gpus is None or gpus == 1:
            return LocalExecutor(progress=progress, log=log, keep_going=keep_going)
        return GpuPoolExecutor(gpus=gpus, log=log, keep_going=keep_going)
    if name == "slurm":
        if gpus is not None:
            raise BadInput("--gpus applies to --executor local; for slurm the spec's "
                           "resources.gpus sets the GPUs per run")
        return SlurmExecutor(resources=dict(resources or {}), partition=partition,
                             account=account, timeout_min=timeout_min, wait=wait,
                             cluster=cluster, log=log)
    raise BadInput(f"--executor {name!r}: allowed: local, slurm")


def main(argv: Sequence[str] | None = None) -> int:
    """Worker entry point: ``python -m harness.executors JOB.json`` runs one TrainingJob."""
    from curvtools.clirun import fail
    from harness.train import TrainingDiverged

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        fail("usage: python -m harness.executors JOB.json")
    try:
        job = TrainingJob(**json.loads(Path(args[0]).read_text()))
        summary = job()
    except BadInput as err:
        fail(str(err))
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 3  # as `harness train`
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The scheduler behind ``bench/gpu_mini.sh``: a spec's runs at one scale in one GPU call, and
never a run cut short.

1. Jobs: every (spec, run, seed) at the scale (``--only``: a subset), in spec order. A job is the
   run's whole schedule: ``harness sweep SPEC --only RUN --seeds SEED`` (training; a finished run
   is skipped, an unfinished one resumed), then the Final Test, ``harness eval`` with
   ``--eval-args`` (default ``--n 1000 --steps 20 --restarts 5``) on ``last.pt`` and
   ``best.pt``, written as ``eval_last.json`` / ``eval_best.json`` into the run folder.
2. Probe (skipped when ``--run-s`` gives the seconds per job): the first ``--parallel`` jobs'
   settings trained side by side for 2 epochs (the second with the input-Hessian measurement when
   the run takes one), in a scratch folder that is deleted afterwards, then one Final Test on a
   probe checkpoint. A job's predicted seconds: ``SAFETY * (probe wall + (epochs - 2) * slowest
   probe's last epoch + 2 * Final Test wall * parallel)`` (the probe's epochs ran side by side
   already; its Final Test ran alone, and may share the machine with ``parallel`` jobs).
3. Schedule: ``--parallel`` slots. A job starts only if ``now + predicted <= limit - reserve``;
   otherwise it is not started (said in the log and the summary). A job once started runs to the
   end of its schedule: nothing here ever stops a process.
4. After each job, and every 30 s, the small files (``config.json``, ``metrics.jsonl``, ``DONE``,
   ``eval_*.json``, ``hessian_curve.json``, the sweep's ``spec.json``; never checkpoints) are
   copied into ``OUT/runs``, and the paper_figs entries are re-rendered into ``OUT/figures``.
5. ``OUT/gpu_mini_summary.json``: per job its status (finished, failed, not started, already
   done), predicted and measured seconds, epochs trained and the measured seconds per epoch.

    python -m bench.gpu_mini table1-cifar10 --scale gpu-mini --out out --limit-s 500
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAFETY = 1.2
PROBE_EPOCHS = 2
SMALL_FILES = ("config.json", "metrics.jsonl", "DONE", "spec.json", "hessian_curve.json")
EVAL_DEFAULT = "--n 1000 --steps 20 --restarts 5"


@dataclass
class Job:
    """One run of a spec with one seed, and what happened to it."""

    spec: str
    run: str
    seed: int
    folder: Path
    epochs: int
    hessian: bool
    status: str = "pending"
    reason: str = ""
    predicted_s: float | None = None
    started_s: float | None = None
    ended_s: float | None = None
    exit_code: int | None = None
    log: str = ""

    @property
    def name(self) -> str:
        return f"{self.spec}/{self.folder.name}"


@dataclass
class Estimate:
    """Predicted seconds of one job from the probe (or a fixed figure, ``--run-s``)."""

    fixed_s: float | None = None
    probe_wall_s: float = 0.0
    probe_epochs: int = PROBE_EPOCHS
    epoch_s: float = 0.0
    eval_s: float = 0.0
    details: dict = field(default_factory=dict)

    def seconds(self, job: Job, running: int) -> float:
        if self.fixed_s is not None:
            return self.fixed_s
        train = self.probe_wall_s + max(job.epochs - self.probe_epochs, 0) * self.epoch_s
        return SAFETY * (train + 2 * self.eval_s * max(running, 1))


class Scheduler:
    """Starts jobs in order while their predicted end fits before ``deadline_s`` (seconds on
    ``clock``), at most ``parallel`` at a time; never stops a started job.

    ``launch(job)`` starts a job and returns an object whose ``done()`` says whether it ended
    (and ``exit_code``); ``on_end(job)`` is called once per ended job; ``idle()`` between polls.
    """

    def __init__(self, jobs: list[Job], estimate: Estimate, *, parallel: int, deadline_s: float,
                 clock, launch, on_end, idle, say=print):
        self.jobs, self.estimate, self.parallel = jobs, estimate, parallel
        self.deadline_s, self.clock, self.launch = deadline_s, clock, launch
        self.on_end, self.idle, self.say = on_end, idle, say

    def run(self) -> None:
        pending = [j for j in self.jobs if j.status == "pending"]
        running: dict[int, tuple[Job, object]] = {}
        while pending or running:
            while pending and len(running) < self.parallel:
                job = pending.pop(0)
                now = self.clock()
                # Final Tests may run beside up to `parallel` jobs while this one runs
                job.predicted_s = round(self.estimate.seconds(job, self.parallel), 1)
                left = self.deadline_s - now
                if job.predicted_s > left:
                    job.status = "not_started"
                    job.reason = (f"predicted {job.predicted_s:.0f} s, {max(left, 0):.0f} s "
                                  "left: it could not finish in this call")
                    self.say(f"[gpu_mini] {now:.0f} s: {job.name} not started ({job.reason})")
                    continue
                job.status, job.started_s = "running", round(now, 1)
                running[id(job)] = (job, self.launch(job))
                self.say(f"[gpu_mini] {now:.0f} s: {job.name} started (predicted "
                         f"{job.predicted_s:.0f} s, {left:.0f} s left)")
            ended = [key for key, (_, handle) in running.items() if handle.done()]
            for key in ended:
                job, handle = running.pop(key)
                job.ended_s, job.exit_code = round(self.clock(), 1), handle.exit_code
                job.status = "finished" if handle.exit_code == 0 else "failed"
                self.on_end(job)
            if running and not ended:
                self.idle()


def _run_logged(cmd: list[str], log: Path, env: dict) -> int:
    with log.open("a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                              cwd=ROOT).returncode


class _Thread:
    """A job's commands, one after another, in a thread (stopping at the first failure)."""

    def __init__(self, commands: list[list[str]], log: Path, env: dict):
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._work, args=(commands, log, env), daemon=True)
        self._thread.start()

    def _work(self, commands, log, env) -> None:
        code = 0
        for cmd in commands:
            code = _run_logged(cmd, log, env)
            if code:
                break
        self.exit_code = code

    def done(self) -> bool:
        return not self._thread.is_alive()


def _epochs_done(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plan_jobs(specs: list[str], scale: str, seeds: list[int] | None, only: list[str],
              settings: dict, runs_dir: Path) -> list[Job]:
    """The jobs of every spec at ``scale`` (``only``: a subset of run names), in spec order."""
    from harness.specs import load_spec, run_dir

    jobs = []
    for name in specs:
        spec = load_spec(name)
        for run, cfg in spec.run_configs(scale):
            if only and run not in only:
                continue
            merged = {**cfg, **settings}
            for seed in (seeds or spec.seeds_for(scale)):
                folder = run_dir(runs_dir, scale, spec.name, run, seed)
                job = Job(spec.name, run, seed, folder, int(merged.get("epochs", 200)),
                          bool(merged.get("hessian_every")))
                if (folder / "DONE").is_file() and all(
                        (folder / f"eval_{c}.json").is_file() for c in ("last", "best")):
                    job.status, job.reason = "already_done", "DONE and both Final Tests"
                jobs.append(job)
    return jobs


class Call:
    """One call's settings and its output folder (the commands, syncing, rendering, summary)."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.runs_dir = Path(args.runs_dir)
        self.started = time.monotonic()
        self.py = args.python
        self.sets = [s for s in args.sets.split() if s]
        self.eval_args = args.eval_args.split()
        self.lock = threading.Lock()
        self.rendered_at = -1.0
        self.dirty = False  # a job ended since the last rendering

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def env(self, threads: int) -> dict:
        return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}

    def train_cmd(self, job: Job, runs_dir: Path, extra: list[str] = ()) -> list[str]:
        sets = [a for kv in [*self.sets, *extra] for a in ("--set", kv)]
        data = ["--data", self.args.data] if self.args.data else []
        return [self.py, "-m", "harness.cli", "sweep", job.spec, "--scale", self.args.scale,
                "--only", job.run, "--seeds", str(job.seed), "--runs-dir", str(runs_dir),
                "--no-progress", *data, *sets]

    def eval_cmds(self, folder: Path) -> list[list[str]]:
        return [[self.py, "-m", "harness.cli", "eval", "--ckpt", str(folder / f"{c}.pt"),
                 *self.eval_args, "--no-progress", "--json", str(folder / f"eval_{c}.json")]
                for c in ("last", "best")]

    def sync(self) -> None:
        """The small files of every run into OUT/runs (checkpoints stay in RUNS_DIR)."""
        with self.lock:
            if not self.runs_dir.is_dir():
                return
            for path in self.runs_dir.rglob("*"):
                if path.is_file() and (path.name in SMALL_FILES or (
                        path.name.startswith("eval_") and path.suffix == ".json")):
                    rel = path.relative_to(self.runs_dir)
                    if rel.parts[0].startswith(".probe"):
                        continue
                    dest = self.out / "runs" / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, dest)

    def render(self) -> None:
        self.sync()
        entries = self.args.entries.split()
        if not entries:
            return
        only = [a for e in entries for a in ("--only", e)]
        with (self.out / "summary.txt").open("w") as out:
            try:
                subprocess.run([self.py, "-m", "paper_figs", "--runs-dir", str(self.out / "runs"),
                                "--scale", self.args.scale, "--out", str(self.out / "figures"),
                                *only], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                               env=self.env(1), timeout=90)
            except subprocess.TimeoutExpired:
                out.write("paper_figs took over 90 s: skipped\n")
        text = (self.out / "summary.txt").read_text()
        print(f"[gpu_mini] {self.elapsed():.0f} s: rendered ({text.count('rendered')} entries)",
              flush=True)
        self.rendered_at, self.dirty = self.elapsed(), False


def probe(call: Call, jobs: list[Job], parallel: int, threads: int) -> Estimate:
    """Train the first ``parallel`` jobs' settings side by side for 2 epochs in a scratch
    folder, then one Final Test; the per-job estimate (module docstring) from their timings."""
    sample = [j for j in jobs if j.status == "pending"][:parallel]
    scratch = Path(tempfile.mkdtemp(prefix=".probe-", dir=call.runs_dir))
    try:
        epochs = min(PROBE_EPOCHS, min(j.epochs for j in sample))
        extra = [f"epochs={epochs}", "lr_milestones=[1]"]
        if any(j.hessian for j in sample):
            extra.append(f"hessian_every={epochs}")
        start = time.monotonic()
        logs = [call.out / "logs" / f"probe-{j.spec}-{j.folder.name}.log" for j in sample]
        threads_ = [_Thread([call.train_cmd(j, scratch, extra)], log, call.env(threads))
                    for j, log in zip(sample, logs, strict=True)]
        while not all(t.done() for t in threads_):
            time.sleep(0.5)
        wall = time.monotonic() - start
        if any(t.exit_code for t in threads_):
            raise SystemExit(f"[gpu_mini] the probe failed: see {', '.join(map(str, logs))}")
        folders = [scratch / j.folder.relative_to(call.runs_dir) for j in sample]
        rows = [_epochs_done(f)[-1] for f in folders]
        epoch_s = max(r["train_seconds"] + r["eval_seconds"] for r in rows)
        start = time.monotonic()
        last = call.eval_cmds(folders[0])[0][:-2]  # the Final Test on last.pt, no JSON
        if _run_logged(last, logs[0], call.env(threads)):
            raise SystemExit(f"[gpu_mini] the probe's Final Test failed: see {logs[0]}")
        eval_s = time.monotonic() - start
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    est = Estimate(probe_wall_s=wall, probe_epochs=epochs, epoch_s=epoch_s, eval_s=eval_s,
                   details={"runs_side_by_side": len(sample), "epochs": epochs,
                            "wall_s": round(wall, 1), "last_epoch_s": round(epoch_s, 2),
                            "final_test_s": round(eval_s, 1)})
    print(f"[gpu_mini] {call.elapsed():.0f} s: probe: {len(sample)} runs side by side, "
          f"{epochs} epochs in {wall:.1f} s (slowest last epoch {epoch_s:.2f} s), one Final "
          f"Test {eval_s:.1f} s", flush=True)
    return est


def check_specs(specs: list[str], scale: str) -> list[str]:
    """Load every spec and its scale (:class:`BadInput` naming the bad one); returns the
    paper_figs entries that read any of them."""
    from harness.specs import load_spec
    from paper_figs.entries import ENTRIES

    names = set()
    for name in specs:
        spec = load_spec(name)
        spec.scale(scale)  # BadInput when the spec has no such scale
        names.add(spec.name)
    return [e.name for e in ENTRIES if names & set(e.specs)]


def job_record(job: Job) -> dict:
    rows = _epochs_done(job.folder)
    per = [r.get("train_seconds", 0) + r.get("eval_seconds", 0) for r in rows]
    return {"spec": job.spec, "run": job.run, "seed": job.seed, "folder": job.folder.name,
            "status": job.status, "reason": job.reason, "epochs": job.epochs,
            "epochs_done": len(rows), "predicted_s": job.predicted_s, "started_s": job.started_s,
            "ended_s": job.ended_s, "exit_code": job.exit_code,
            "wall_s": (round(job.ended_s - job.started_s, 1)
                       if job.started_s is not None and job.ended_s is not None else None),
            "seconds_per_epoch": round(sum(per) / len(per), 3) if per else None,
            "train_seconds_per_epoch": (round(sum(r.get("train_seconds", 0) for r in rows)
                                              / len(rows), 3) if rows else None),
            "final_test": sorted(p.name for p in job.folder.glob("eval_*.json"))}


def _device() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip() or "cpu"
    except (OSError, subprocess.SubprocessError):
        return "cpu"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("specs", nargs="+", help="spec names (or spec .json paths)")
    p.add_argument("--scale", default="gpu-mini")
    p.add_argument("--seeds", default="", help="comma list (default: the spec's)")
    p.add_argument("--only", default="", help="space-separated run names (default: all)")
    p.add_argument("--parallel", type=int, default=0, help="jobs at a time (0: all)")
    p.add_argument("--limit-s", type=float, default=500.0)
    p.add_argument("--reserve-s", type=float, default=45.0,
                   help="kept free at the end for the last copy and rendering")
    p.add_argument("--run-s", type=float, default=None, help="seconds per job (skips the probe)")
    p.add_argument("--runs-dir", default="/tmp/gpu_mini_runs")
    p.add_argument("--out", default="out")
    p.add_argument("--data", default="", help="dataset spec for every run (--data of sweep)")
    p.add_argument("--sets", default="", help="space-separated KEY=VALUE for every run")
    p.add_argument("--eval-args", default=EVAL_DEFAULT)
    p.add_argument("--entries", default="auto", help="paper_figs entries to render (auto: "
                   "those that read the specs)")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--check", action="store_true", help="only check the specs and the scale")
    args = p.parse_args(argv)
    from curvtools.errors import BadInput
    from harness.sweep import parse_settings

    try:
        entries = check_specs(args.specs, args.scale)
        settings = parse_settings(args.sets.split())
    except BadInput as err:
        print(f"[gpu_mini] error: {err}", file=sys.stderr)
        return 2
    if args.check:
        return 0
    if args.entries == "auto":
        args.entries = " ".join(entries)
    call = Call(args)
    for sub in ("runs", "logs", "figures"):
        (call.out / sub).mkdir(parents=True, exist_ok=True)
    call.runs_dir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()] or None
    jobs = plan_jobs(args.specs, args.scale, seeds, args.only.split(), settings, call.runs_dir)
    pending = [j for j in jobs if j.status == "pending"]
    parallel = args.parallel or max(len(pending), 1)
    threads = max((os.cpu_count() or 1) // parallel, 1)
    print(f"[gpu_mini] {len(jobs)} jobs ({len(pending)} to do), {parallel} at a time, {threads} "
          f"CPU threads each, limit {args.limit_s:.0f} s", flush=True)
    estimate = (Estimate(fixed_s=args.run_s) if args.run_s is not None or not pending
                else probe(call, jobs, parallel, threads))

    def launch(job: Job):
        log = call.out / "logs" / f"{job.spec}-{job.folder.name}.log"
        return _Thread([call.train_cmd(job, call.runs_dir), *call.eval_cmds(job.folder)], log,
                       call.env(threads))

    def on_end(job: Job) -> None:
        rows = len(_epochs_done(job.folder))
        print(f"[gpu_mini] {call.elapsed():.0f} s: {job.name} {job.status} (exit "
              f"{job.exit_code}, {rows}/{job.epochs} epochs, "
              f"{job.ended_s - job.started_s:.0f} s)", flush=True)
        call.dirty = True
        call.render()

    def idle() -> None:
        time.sleep(1.0)
        if call.elapsed() - call.rendered_at >= 30:
            call.sync()  # epochs so far reach OUT even if the call is cut
            call.rendered_at = call.elapsed()

    Scheduler(jobs, estimate, parallel=parallel, deadline_s=args.limit_s - args.reserve_s,
              clock=call.elapsed, launch=launch, on_end=on_end, idle=idle,
              say=lambda text: print(text, flush=True)).run()
    if call.dirty or not (call.out / "summary.txt").is_file():
        call.render()
    else:
        call.sync()
    summary = {"specs": args.specs, "scale": args.scale, "device": _device(),
               "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
               "limit_s": args.limit_s, "reserve_s": args.reserve_s, "parallel": parallel,
               "elapsed_s": round(call.elapsed(), 1),
               "estimate": ({"fixed_s": estimate.fixed_s} if estimate.fixed_s is not None
                            else {"probe": estimate.details, "safety": SAFETY}),
               "jobs": [job_record(j) for j in jobs]}
    (call.out / "gpu_mini_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    counts = {s: sum(j.status == s for j in jobs) for s in
              ("finished", "failed", "not_started", "already_done")}
    print(f"[gpu_mini] done after {call.elapsed():.0f} s: "
          + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items() if n), flush=True)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

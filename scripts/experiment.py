"""Run a multi-session experiment in lanes, and keep its ledger and run records in the repository.

An experiment (``docs/experiments/NAME/experiment.json``) names a sweep spec, a scale, seeds and the
runs of the spec; each (run, seed) is trained by ``harness sweep`` (resumable, bit for bit), then
evaluated by the commands the experiment lists (``harness eval`` Final Test, ``--split train``,
``curvtools hessian`` over the saved checkpoints), and its records (config.json, metrics.jsonl,
eval_*.json, hessian_curve.json; never checkpoints) are copied into
``docs/experiments/NAME/runs/SCALE/SPEC/RUN[-seedN]/`` beside the sweep's manifest. The ledger
(``docs/experiments/NAME/ledger.json``) says for every planned run: planned / training /
evaluating / finished, with machine, code commit and UTC times, so whoever continues on any
machine knows what is left (a run folder outside the repository can be lost; its records once
finished are not).

    python scripts/experiment.py status pswish-curvature
    python scripts/experiment.py work pswish-curvature --runs-dir /work/runs   # one lane
    python scripts/experiment.py work pswish-curvature --runs-dir /work/runs   # a second lane

Lanes share the runs folder and claim a run with an exclusive ``flock`` on
``RUNS/.claims/RUN.lock`` (released by the kernel when a lane dies), so two lanes never train the
same run. Each step is idempotent: a finished training is skipped by the sweep, an evaluation whose
JSON is newer than its checkpoint is kept. Every subprocess runs with one thread
(``OMP_NUM_THREADS=1``). A run's settings are those of its config.json once started: a later change
of the spec's defaults does not change a started run (the sweep resumes it and refuses a conflict).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "docs" / "experiments"
RECORD_FILES = ("config.json", "metrics.jsonl", "DONE")
STATUSES = ("planned", "training", "evaluating", "finished")


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def machine() -> str:
    """One line: host, CPU model, cores, threads per run."""
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{platform.node()} ({cpu}, {os.cpu_count()} cores; 1 thread per run)"


def load_experiment(name: str, experiments: Path = EXPERIMENTS) -> dict:
    path = experiments / name / "experiment.json"
    if not path.is_file():
        known = sorted(p.parent.name for p in experiments.glob("*/experiment.json"))
        print(f"error: no experiment {name!r} ({path} missing); known: {', '.join(known)}",
              file=sys.stderr)
        sys.exit(2)
    exp = json.loads(path.read_text())
    exp["name"], exp["dir"] = name, path.parent
    return exp


def spec_name(exp: dict) -> str:
    """The spec's name (its run folders' parent): a bundled name, or a path's file stem."""
    spec = exp["spec"]
    return Path(spec).stem if spec.endswith(".json") else spec


def folder_name(run: str, seed: int) -> str:
    return run if seed == 0 else f"{run}-seed{seed}"


def planned_runs(exp: dict) -> list[tuple[str, int]]:
    """(run, seed) in the order lanes take them: seed blocks first, so whole blocks finish early."""
    return [(run, seed) for seed in exp["seeds"] for run in exp["runs"]]


# --- the ledger ----------------------------------------------------------------------------


@contextmanager
def locked(path: Path, blocking: bool = True):
    """An exclusive flock on ``path`` (created), yielded as True, or False when not blocking
    and another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def ledger_path(exp: dict) -> Path:
    return exp["dir"] / "ledger.json"


def read_ledger(exp: dict) -> dict:
    path = ledger_path(exp)
    ledger = json.loads(path.read_text()) if path.is_file() else {}
    ledger.setdefault("experiment", exp["name"])
    runs = ledger.setdefault("runs", {})
    for run, seed in planned_runs(exp):
        runs.setdefault(folder_name(run, seed), {"run": run, "seed": seed, "status": "planned"})
    return ledger


def update_ledger(exp: dict, folder: str, runs_dir: Path, **fields) -> None:
    """Set ``fields`` of one run in the ledger (read-modify-write under a lock, atomic write)."""
    with locked(runs_dir / ".claims" / f"{exp['name']}-ledger.lock"):
        ledger = read_ledger(exp)
        ledger["runs"][folder].update(fields)
        ledger["updated_utc"] = utc_now()
        path = ledger_path(exp)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(ledger, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)


def code_commit(code_dir: Path) -> str:
    out = subprocess.run(["git", "-C", str(code_dir), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(code_dir), "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True).stdout
    return out.stdout.strip() + ("+dirty" if dirty.strip() else "")


# --- one run -------------------------------------------------------------------------------


def _env(code_dir: Path) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(code_dir),
                PYTHONUNBUFFERED="1")


def _run(cmd: list[str], code_dir: Path, log: Path) -> None:
    """Run ``cmd`` in ``code_dir`` with one thread, its output appended to ``log``."""
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}    # {utc_now()}\n")
        out.flush()
        done = subprocess.run(cmd, cwd=code_dir, env=_env(code_dir), stdout=out,
                              stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {' '.join(cmd)} (log: {log})")


def _fresh(output: Path, *inputs: Path) -> bool:
    """``output`` exists and is newer than every input."""
    return output.is_file() and all(output.stat().st_mtime >= p.stat().st_mtime for p in inputs)


def evaluation_commands(exp: dict, run_dir: Path, python: str) -> list[tuple[Path, list[str]]]:
    """(output, command) for every evaluation the experiment lists, with paths filled in."""
    out = []
    for ev in exp["evaluations"]:
        output = run_dir / ev["output"]
        args = [a.replace("{run}", str(run_dir)) for a in ev["args"]]
        module = {"harness": "harness.cli", "curvtools": "curvtools.cli"}[ev["command"]]
        out.append((output, [python, "-m", module, *args, "--json", str(output)]))
    return out


def do_run(exp: dict, run: str, seed: int, runs_dir: Path, code_dir: Path, python: str) -> None:
    folder = folder_name(run, seed)
    run_dir = runs_dir / exp["scale"] / spec_name(exp) / folder
    log = runs_dir / "logs" / f"{exp['name']}-{folder}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    commit = code_commit(code_dir)
    if not (run_dir / "DONE").is_file():
        update_ledger(exp, folder, runs_dir, status="training", machine=machine(),
                      code_commit=commit, training_started_utc=utc_now())
        started = time.time()
        _run([python, "-m", "harness.cli", "sweep", exp["spec"], "--scale", exp["scale"],
              "--only", run, "--seeds", str(seed), "--runs-dir", str(runs_dir),
              "--no-progress"], code_dir, log)
        update_ledger(exp, folder, runs_dir, training_finished_utc=utc_now(),
                      training_wall_seconds=round(time.time() - started))
    update_ledger(exp, folder, runs_dir, status="evaluating")
    for output, cmd in evaluation_commands(exp, run_dir, python):
        ckpts = [p for p in (run_dir / "last.pt", run_dir / "best.pt") if p.is_file()]
        if not _fresh(output, *ckpts):
            _run(cmd, code_dir, log)
    record(exp, run_dir, folder)
    update_ledger(exp, folder, runs_dir, status="finished", finished_utc=utc_now(),
                  eval_code_commit=commit)


def record(exp: dict, run_dir: Path, folder: str) -> None:
    """Copy a run's records (no checkpoints) and the sweep's manifest into the repository."""
    dest = exp["dir"] / "runs" / exp["scale"] / spec_name(exp) / folder
    dest.mkdir(parents=True, exist_ok=True)
    names = list(RECORD_FILES) + [ev["output"] for ev in exp["evaluations"]]
    for name in names:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)
    manifest = run_dir.parent / "spec.json"
    if manifest.is_file():
        shutil.copy2(manifest, dest.parent / "spec.json")


# --- commands ------------------------------------------------------------------------------


def work(exp: dict, runs_dir: Path, code_dir: Path, python: str, max_runs: int | None) -> None:
    """One lane: take unclaimed runs in ledger order until none is left (or ``max_runs``)."""
    done = 0
    for run, seed in planned_runs(exp):
        folder = folder_name(run, seed)
        if read_ledger(exp)["runs"][folder]["status"] == "finished":
            continue
        with locked(runs_dir / ".claims" / f"{exp['name']}-{folder}.lock",
                    blocking=False) as claimed:
            if not claimed:
                continue
            if read_ledger(exp)["runs"][folder]["status"] == "finished":  # another lane, just now
                continue
            print(f"[{utc_now()}] {folder}: start", flush=True)
            try:
                do_run(exp, run, seed, runs_dir, code_dir, python)
            except RuntimeError as err:
                update_ledger(exp, folder, runs_dir, status="planned", error=str(err))
                print(f"[{utc_now()}] {folder}: {err}", flush=True)
                continue
            print(f"[{utc_now()}] {folder}: finished", flush=True)
        done += 1
        if max_runs is not None and done >= max_runs:
            return


def status(exp: dict) -> None:
    ledger = read_ledger(exp)
    rows = ledger["runs"]
    counts = {s: sum(1 for r in rows.values() if r["status"] == s) for s in STATUSES}
    print(f"{exp['name']}: {exp['spec']} at scale {exp['scale']}, seeds {exp['seeds']}; "
          + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for folder, r in rows.items():
        when = r.get("finished_utc") or r.get("training_started_utc") or ""
        print(f"  {folder:<28} {r['status']:<10} {when:<21} {r.get('code_commit', '')}"
              f"{'  ' + r['error'] if r.get('error') and r['status'] != 'finished' else ''}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("status", "work"):
        p = sub.add_parser(name)
        p.add_argument("experiment")
        p.add_argument("--experiments-dir", type=Path, default=EXPERIMENTS,
                       help="Where experiments live (default: docs/experiments).")
        if name == "work":
            p.add_argument("--runs-dir", type=Path, required=True,
                           help="Run folders (outside the repository; kept across sessions "
                                "where the machine keeps them).")
            p.add_argument("--code-dir", type=Path, default=ROOT,
                           help="The checkout whose code trains and evaluates (a frozen "
                                "worktree, so edits to the working tree never reach a run).")
            p.add_argument("--python", default=sys.executable)
            p.add_argument("--max-runs", type=int, default=None)
    args = parser.parse_args(argv)
    exp = load_experiment(args.experiment, args.experiments_dir.resolve())
    if args.command == "status":
        status(exp)
    else:
        work(exp, args.runs_dir.resolve(), args.code_dir.resolve(), args.python, args.max_runs)


if __name__ == "__main__":
    main()

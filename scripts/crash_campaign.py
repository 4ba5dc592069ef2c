"""Crash campaign: SIGKILL a small CPU training run at many moments, resume, compare.

Each scenario starts a fresh run directory, kills the training process (a child process) at a
chosen moment, resumes it (``resume=True`` when ``last.pt`` exists, else ``overwrite=True``, what a
user would do) until ``DONE`` appears, and then checks against one uninterrupted reference run:

* every ``last.pt`` seen right after a kill loads (no torn checkpoint);
* ``metrics.jsonl`` holds epochs 1..E exactly once, equal to the reference (timings aside);
* the final ``last.pt`` and ``best.pt`` weights equal the reference's bit for bit.

Kill moments: ``checkpoint-write:N`` (the N-th .pt write dies with its temporary file half
written, the ``LOWCURV_CRASH_AT`` hook of ``harness.checkpoint``), ``step:K`` (right after the
K-th optimizer step, inside an epoch), ``eval:K`` (after the first batch of the K-th evaluation
pass), ``row:K`` (after the K-th metrics row, before its checkpoints) and ``random`` (SIGKILL sent
from outside at a random time while the run trains). Everything runs on CPU with one thread
(the same thread count everywhere, so floats match bit for bit).

Usage::

    python scripts/crash_campaign.py                 # all scenarios, prints a summary table
    python scripts/crash_campaign.py --random 5 --json crash.json
    python scripts/crash_campaign.py --kill row:2    # one scenario (repeat --kill for more)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMING_KEYS = ("train_seconds", "eval_seconds")
RUN = dict(dataset="digits", width=0.0625, epochs=4, batch_size=50, train_subset=200,
           val_subset=40, test_subset=40, train_steps=2, eval_steps=2, eps_255=24,
           alpha_255=8, lr=0.05, lr_milestones=[3.0], eval_batch_size=64, device="cpu",
           save_every=2)
SCENARIOS = ["checkpoint-write:1", "checkpoint-write:4", "checkpoint-write:6", "step:6",
             "eval:3", "row:2"]
READY = "crash-campaign: training starts"


# --- the child: one training process, maybe killing itself at a chosen moment ------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_on_call(owner, name: str, nth: int, before_return: bool = True) -> None:
    """Replace ``owner.name`` by a wrapper that SIGKILLs the process on its ``nth`` call."""
    original = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        result = original(*args, **kwargs)
        if calls["n"] == nth and before_return:
            _die()
        return result

    setattr(owner, name, wrapper)


def _kill_in_eval(nth: int) -> None:
    """The ``nth`` evaluation pass dies after its first batch."""
    import harness.evaluate as evaluate

    original = evaluate.evaluate_robust
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            kwargs["on_batch"] = _die
        return original(*args, **kwargs)

    evaluate.evaluate_robust = wrapper


def child(out_dir: Path, kill: str) -> None:
    import torch

    torch.set_num_threads(1)
    import harness.train as train
    from harness.config import TrainConfig
    from harness.rundir import RunDir

    what, _, nth = kill.partition(":")
    if what == "step":
        _kill_on_call(torch.optim.SGD, "step", int(nth))
    elif what == "eval":
        _kill_in_eval(int(nth))
    elif what == "row":  # the row is appended (fsynced), the epoch's checkpoints not yet written
        _kill_on_call(RunDir, "append_row", int(nth))
    # checkpoint-write:N is read by harness.checkpoint from the environment; random: the parent
    # kills from outside, timed from the moment the data are loaded (announced here)

    def load_and_announce(*args, **kwargs):
        data = train.load_run_data(*args, **kwargs)
        print(READY, flush=True)
        return data

    run = RunDir(out_dir)
    resume = run.last.is_file()
    overwrite = not resume and run.has_run()
    train.train_with(train.RunInputs(load_data=load_and_announce),
                     TrainConfig.from_dict(RUN), out_dir, resume=resume,
                     overwrite=overwrite, progress=False)


# --- the parent --------------------------------------------------------------------------------


def _start(out_dir: Path, kill: str) -> subprocess.Popen:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    env.pop("LOWCURV_CRASH_AT", None)
    if kill.startswith("checkpoint-write"):
        env["LOWCURV_CRASH_AT"] = kill
    return subprocess.Popen([sys.executable, __file__, "--child", str(out_dir), "--kill", kill],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _run_child(out_dir: Path, kill: str, random_delay: float | None = None) -> tuple[int, float]:
    """Run one child to its end (or SIGKILL it ``random_delay`` s after its data are loaded).

    Returns the exit code and the seconds from data loaded to exit (or to the kill).
    """
    proc = _start(out_dir, kill)
    ready = time.perf_counter()
    for line in proc.stdout:  # imports done, data loaded: training begins
        if READY in line:
            ready = time.perf_counter()
            break
    if random_delay is not None:
        time.sleep(random_delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=900)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"child failed ({proc.returncode}): {err[-3000:]}")
    return proc.returncode, time.perf_counter() - ready


def _inspect_after_kill(out_dir: Path) -> dict:
    from curvtools.errors import BadInput
    from curvtools.runfiles import read_metrics
    from harness.checkpoint import load_checkpoint

    state = {"temp_files": len(list(out_dir.glob(".*.tmp"))) if out_dir.is_dir() else 0,
             "last_epoch": None, "torn": False,
             "rows": [r.get("epoch") for r in read_metrics(out_dir / "metrics.jsonl")]}
    for name in ("last.pt", "best.pt"):
        if (out_dir / name).is_file():
            try:
                ckpt = load_checkpoint(out_dir / name)
            except BadInput:
                state["torn"] = True
                continue
            if name == "last.pt":
                state["last_epoch"] = ckpt["epoch"]
    return state


def _same_weights(a: Path, b: Path) -> bool:
    import torch

    from harness.checkpoint import load_checkpoint

    sa, sb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def run_scenario(name: str, root: Path, reference: Path, rng: random.Random,
                 train_seconds: float, n_random: int) -> dict:
    from curvtools.runfiles import read_metrics

    out_dir = root / name.replace(":", "-")
    kills, after = 0, []
    if name.startswith("random"):
        for _ in range(n_random):
            delay = rng.uniform(0.0, train_seconds)
            if _run_child(out_dir, "random", random_delay=delay)[0] == -signal.SIGKILL:
                kills += 1
                after.append(_inspect_after_kill(out_dir) | {"delay_s": round(delay, 2)})
            if (out_dir / "DONE").is_file():
                break
    elif _run_child(out_dir, name)[0] == -signal.SIGKILL:
        kills += 1
        after.append(_inspect_after_kill(out_dir))
    resumes = 0
    while not (out_dir / "DONE").is_file():
        _run_child(out_dir, "none")
        resumes += 1
    rows = read_metrics(out_dir / "metrics.jsonl")
    expected = read_metrics(reference / "metrics.jsonl")
    leftover = sorted(p.name for p in out_dir.glob(".*.tmp"))
    return {
        "scenario": name, "kills": kills, "resumes": resumes,
        "last_epoch_at_kill": [a["last_epoch"] for a in after],
        "rows_at_kill": [a["rows"] for a in after],
        "torn_checkpoint_seen": any(a["torn"] for a in after),
        "temp_files_at_kill": sum(a["temp_files"] for a in after),
        "temp_files_left_at_end": leftover,
        "epochs_once": [r["epoch"] for r in rows] == list(range(1, RUN["epochs"] + 1)),
        "metrics_equal": _strip(rows) == _strip(expected),
        "last_equal": _same_weights(out_dir / "last.pt", reference / "last.pt"),
        "best_equal": _same_weights(out_dir / "best.pt", reference / "best.pt"),
        "delays_s": [a.get("delay_s") for a in after if "delay_s" in a],
    }


def _print_table(results: list[dict], reference_seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"crash campaign: {RUN['epochs']}-epoch digits run "
                        f"(uninterrupted: {reference_seconds:.1f} s wall)")
    for col in ("scenario", "kills", "resumes", "last.pt epoch at kill", "torn ckpt",
                "tmp at kill / end", "epochs once", "metrics =", "last.pt =", "best.pt ="):
        table.add_column(col)
    for r in results:
        table.add_row(r["scenario"], str(r["kills"]), str(r["resumes"]),
                      ",".join(str(e) for e in r["last_epoch_at_kill"]) or "-",
                      "YES" if r["torn_checkpoint_seen"] else "no",
                      f"{r['temp_files_at_kill']} / {len(r['temp_files_left_at_end'])}",
                      *("yes" if r[k] else "NO" for k in ("epochs_once", "metrics_equal",
                                                          "last_equal", "best_equal")))
    Console(width=150).print(table)
    kills = sum(r["kills"] for r in results)
    good = all(r["epochs_once"] and r["metrics_equal"] and r["last_equal"] and r["best_equal"]
               and not r["torn_checkpoint_seen"] for r in results)
    print(f"{kills} kills in {len(results)} scenarios: "
          f"{'every resumed run equals the uninterrupted one' if good else 'MISMATCH (see table)'}")


def _source_digest() -> str:
    """Hash of the package sources: a campaign whose code changed midway compares nothing."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted([*REPO.glob("harness/*.py"), *REPO.glob("curvtools/*.py")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=None,
                        help="random outside kills (each in its own scenario, chained up to 3; "
                             "default 3, or 0 with --kill)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill times")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the run directories in this folder (default: a temp folder)")
    parser.add_argument("--kill", action="append", default=None, metavar="SCENARIO",
                        help=f"run only this kill scenario (repeatable): one of {SCENARIOS} "
                             f"or another checkpoint-write:N, step:K, eval:K, row:K; no random "
                             f"kills unless --random is given too")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, (args.kill or ["none"])[0])
        return 0
    scenarios = SCENARIOS
    if args.kill:
        for name in args.kill:
            what, _, nth = name.partition(":")
            if what not in ("checkpoint-write", "step", "eval", "row") or not nth.isdigit() \
                    or int(nth) < 1:
                parser.error(f"--kill {name!r}: allowed: checkpoint-write:N, step:K, eval:K, "
                             f"row:K (N, K >= 1)")
        scenarios = args.kill
    if args.random is None:
        args.random = 0 if args.kill else 3
    root = args.keep or Path(tempfile.mkdtemp(prefix="crash-campaign-"))
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    source_before = _source_digest()
    started = time.perf_counter()
    _, training_seconds = _run_child(root / "reference", "none")
    reference_seconds = time.perf_counter() - started
    results = []
    for name in scenarios + [f"random-{i + 1}" for i in range(args.random)]:
        # random kills fall anywhere in the training part of the reference run's wall time
        results.append(run_scenario(name, root, root / "reference", rng, training_seconds,
                                    n_random=3))
        print(json.dumps(results[-1]), flush=True)
    _print_table(results, reference_seconds)
    if _source_digest() != source_before:
        print("WARNING: harness/ or curvtools/ sources changed during the campaign; "
              "its comparisons are void, run it again")
    if args.json is not None:
        args.json.write_text(json.dumps({"run": RUN, "results": results}, indent=1) + "\n")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    ok = all(r["epochs_once"] and r["metrics_equal"] and r["last_equal"] and r["best_equal"]
             for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

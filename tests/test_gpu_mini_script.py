"""bench/gpu_mini.sh: never cuts a run (a run that cannot finish is not started; a started one
always finishes), runs the Final Test, and returns every run's small files and timings. End to
end on CPU at a tiny size (digits, width 1/16, 2 epochs, 2 runs), plus the scheduler's decisions
on a simulated clock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_mini import Estimate, Job, Scheduler  # noqa: E402

TINY = ("width=0.0625 epochs=2 train_subset=200 val_subset=50 test_subset=100 lr_milestones=[1] "
        "hessian_every=1 hessian_examples=2 save_every=1 device=cpu precision=fp32 "
        "train_steps=2 eval_steps=2")
SCRIPT = str(ROOT / "bench" / "gpu_mini.sh")


def _env(tmp_path, **extra) -> dict:
    return {**os.environ, "OUT": str(tmp_path / "out"), "RUNS_DIR": str(tmp_path / "runs"),
            "PYTHON": sys.executable, "GPU_DATA": "digits", "SETS": TINY,
            "EVAL_ARGS": "--n 40 --steps 2 --restarts 1 --device cpu", "PYTHONPATH": str(ROOT),
            **extra}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_mini_script_runs_table1_end_to_end_with_final_tests_and_never_cuts_a_run(tmp_path):
    env = _env(tmp_path, ONLY="relu silu", LIMIT_S="600", RESERVE_S="10")
    proc = subprocess.run(["bash", SCRIPT, "table1"], env=env, capture_output=True, text=True,
                          timeout=500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    spec_dir = out / "runs" / "gpu-mini" / "table1-cifar10"
    for run in ("relu", "silu"):
        assert (spec_dir / run / "DONE").is_file()
        assert len((spec_dir / run / "metrics.jsonl").read_text().splitlines()) == 2
        for which in ("last", "best"):  # the Final Test, into the run folder
            body = json.loads((spec_dir / run / f"eval_{which}.json").read_text())
            assert body["steps"] == 2 and body["n"] == 40
    assert (spec_dir / "spec.json").is_file()
    assert not list(out.rglob("*.pt"))  # checkpoints stay in RUNS_DIR
    assert not list((tmp_path / "runs").glob(".probe-*"))  # the probe's folder is gone
    figures = out / "figures"
    for name in ("table1.md", "fig1_robust_test_loss.png", "fig4_learning_curves.png",
                 "fig3_hessian_lambda_max.png", "synthesis.json"):
        assert (figures / name).is_file(), name
    table = (figures / "table1.md").read_text()
    assert "scale 'gpu-mini' with overrides: dataset=digits" in table
    summary = json.loads((out / "gpu_mini_summary.json").read_text())
    assert summary["estimate"]["probe"]["epochs"] == 2
    jobs = {j["run"]: j for j in summary["jobs"]}
    for run in ("relu", "silu"):
        job = jobs[run]
        assert job["status"] == "finished" and job["exit_code"] == 0
        assert job["epochs_done"] == job["epochs"] == 2  # never cut
        assert job["seconds_per_epoch"] > 0 and job["predicted_s"] > 0
        assert job["final_test"] == ["eval_best.json", "eval_last.json"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_run_that_cannot_finish_in_the_call_is_not_started(tmp_path):
    # Predicted 1000 s per run, 100 s allowed: no run starts, nothing is left half-trained.
    env = _env(tmp_path, ONLY="k0.3", LIMIT_S="100", RESERVE_S="0", RUN_S="1000")
    proc = subprocess.run(["bash", SCRIPT, "table3-leakyrelu"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "not started (predicted 1000 s" in proc.stdout
    summary = json.loads((tmp_path / "out" / "gpu_mini_summary.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["not_started"]
    assert summary["jobs"][0]["epochs_done"] == 0
    assert not list((tmp_path / "runs").rglob("metrics.jsonl"))


class _Handle:
    """A fake job: ends ``duration`` seconds of the simulated clock after it starts."""

    def __init__(self, clock, duration):
        self.clock, self.end, self.exit_code = clock, clock.now + duration, 0

    def done(self) -> bool:
        return self.clock.now >= self.end


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += 1.0


def _jobs(n: int, epochs: int = 10) -> list[Job]:
    return [Job("spec", f"r{i}", 0, Path(f"/nonexistent/r{i}"), epochs, False) for i in range(n)]


@pytest.mark.parametrize("parallel", [1, 2])
def test_scheduler_starts_a_job_only_if_it_can_finish_and_lets_every_started_job_end(parallel):
    clock = _Clock()
    handles = []

    def launch(job):
        handles.append(_Handle(clock, 35.0))
        return handles[-1]

    jobs = _jobs(3)
    Scheduler(jobs, Estimate(fixed_s=40.0), parallel=parallel, deadline_s=100.0, clock=clock,
              launch=launch, on_end=lambda job: None, idle=clock.tick, say=lambda text: None).run()
    started = [j for j in jobs if j.status != "not_started"]
    # one at a time: r0 [0, 35], r1 [35, 70], r2 would need 40 s with 30 left
    # two at a time: r0 and r1 [0, 35], r2 [35, 70]
    assert [j.status for j in jobs] == (["finished", "finished", "not_started"] if parallel == 1
                                        else ["finished"] * 3)
    for job in started:
        assert job.started_s + job.predicted_s <= 100.0  # predicted to fit when started
        assert job.ended_s - job.started_s == 35.0  # ran its whole course
    assert all(h.done() for h in handles)
    assert "could not finish" in jobs[2].reason or parallel == 2


def test_estimate_grows_with_epochs_and_with_final_tests_run_side_by_side():
    est = Estimate(probe_wall_s=10.0, probe_epochs=2, epoch_s=1.0, eval_s=3.0)
    job = _jobs(1, epochs=12)[0]
    assert est.seconds(job, running=1) == pytest.approx(1.2 * (10 + 10 + 2 * 3))
    assert est.seconds(job, running=2) == pytest.approx(1.2 * (10 + 10 + 2 * 3 * 2))


def test_gpu_mini_script_refuses_an_unknown_spec_with_one_line(tmp_path):
    proc = subprocess.run(["bash", SCRIPT, "table9"],
                          env={**os.environ, "OUT": str(tmp_path / "out"),
                               "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "table9" in proc.stderr
    assert not (tmp_path / "out").exists()

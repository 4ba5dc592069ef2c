"""Sweep executors: one run per GPU in worker processes, SLURM through submitit (local mode)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from curvtools.errors import BadInput
from harness import executors as ex
from harness.specs import parse_spec
from harness.sweep import LocalExecutor, plan_sweep

TINY = {"dataset": "digits", "arch": "preactresnet18", "width": 0.0625, "epochs": 1,
        "batch_size": 20, "train_subset": 40, "val_subset": 10, "test_subset": 10,
        "train_steps": 1, "eval_steps": 1, "eval_batch_size": 64, "lr_milestones": [5.0],
        "device": "cpu"}

FAKE_RUNNER = '''
import json, os, time
from pathlib import Path

def run(cfg, out_dir, *, resume, overwrite, progress):
    """Stands in for run_training: records its GPU, writes a finished run."""
    if cfg.act == "mish":
        raise SystemExit(5)  # a run that fails
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps({
        "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": time.time(),
        "resume": resume, "overwrite": overwrite}))
    time.sleep(0.5)
    (out / "metrics.jsonl").write_text(json.dumps({"epoch": cfg.epochs}) + "\\n")
    (out / "DONE").write_text(json.dumps({"epochs": cfg.epochs}))
'''


def _spec(acts: list[str], epochs: int = 1) -> object:
    return parse_spec({"name": "tiny", "defaults": TINY | {"epochs": epochs},
                       "runs": [{"name": a, "overrides": {"act": a}} for a in acts],
                       "resources": {"gpus": 1, "hours": 0.1}}, "tiny.json")


# --- resources and choice of executor -------------------------------------------------------


def test_submitit_parameters_map_spec_resources_and_cli_overrides():
    params = ex.submitit_parameters({"gpus": 2, "hours": 1.5, "cpus": 16, "mem": 32},
                                    partition="gpu", account="lab")
    assert params == {"timeout_min": 90, "nodes": 1, "gpus_per_node": 2, "tasks_per_node": 2,
                      "cpus_per_task": 8, "mem_gb": 32.0, "slurm_partition": "gpu",
                      "slurm_account": "lab"}
    assert ex.submitit_parameters({"hours": 1}, timeout_min=30)["timeout_min"] == 30
    assert ex.submitit_parameters({})["timeout_min"] == 24 * 60  # no hours: a day


@pytest.mark.parametrize("resources, message", [
    ({"gpus": 1.5}, "gpus=1.5 must be a positive integer"),
    ({"hours": -1}, "hours=-1 must be a positive number"),
    ({"mem": "lots"}, "mem='lots' must be a positive number"),
    ({"gpu": 1}, "unknown resources key"),
])
def test_submitit_parameters_reject_bad_resources_with_one_line(resources, message):
    with pytest.raises(BadInput, match=message):
        ex.submitit_parameters(resources)


def test_visible_gpu_ids_follow_cuda_visible_devices():
    assert ex.visible_gpu_ids(3, {}) == ["0", "1", "2"]
    assert ex.visible_gpu_ids(2, {"CUDA_VISIBLE_DEVICES": "3, 5,6"}) == ["3", "5"]
    with pytest.raises(BadInput, match="--gpus 4 but CUDA_VISIBLE_DEVICES='3,5' lists 2"):
        ex.visible_gpu_ids(4, {"CUDA_VISIBLE_DEVICES": "3,5"})
    with pytest.raises(BadInput, match="--gpus 0 must be an integer >= 1"):
        ex.visible_gpu_ids(0, {})


def test_make_executor_picks_by_name_and_refuses_options_of_the_other_kind():
    assert isinstance(ex.make_executor("local"), LocalExecutor)
    assert isinstance(ex.make_executor("local", gpus=4), ex.GpuPoolExecutor)
    slurm = ex.make_executor("slurm", resources={"gpus": 1, "hours": 2}, partition="p")
    assert isinstance(slurm, ex.SlurmExecutor) and slurm.parameters["timeout_min"] == 120
    with pytest.raises(BadInput, match="--partition only apply to --executor slurm"):
        ex.make_executor("local", partition="p")
    with pytest.raises(BadInput, match="--gpus applies to --executor local"):
        ex.make_executor("slurm", gpus=2)
    with pytest.raises(BadInput, match="--executor 'kube'"):
        ex.make_executor("kube")


def test_slurm_executor_without_sbatch_says_where_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    plan = plan_sweep(_spec(["relu"]), tmp_path / "runs", "paper")
    with pytest.raises(BadInput, match="sbatch not found here; run the sweep on a SLURM login"):
        ex.make_executor("slurm", resources={"gpus": 1}).execute(plan)
    assert not (tmp_path / "runs").exists()  # nothing submitted, nothing written


# --- local pool ------------------------------------------------------------------------------


def test_gpu_pool_pins_each_run_to_one_gpu_and_reports_failures(tmp_path):
    (tmp_path / "fake_runner.py").write_text(FAKE_RUNNER)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               CUDA_VISIBLE_DEVICES="4,7")
    plan = plan_sweep(_spec(["relu", "silu", "mish"]), tmp_path / "runs", "paper")
    pool = ex.GpuPoolExecutor(gpus=2, runner="fake_runner:run", env=env, poll_seconds=0.1,
                              keep_going=True, log=lambda line: None)
    assert sorted(pool.execute(plan)) == ["relu", "silu"]
    assert list(pool.failed) == ["mish"] and pool.failed["mish"].startswith("exit code 5")
    records = {r.name: json.loads((r.out_dir / "gpu.json").read_text())
               for r in plan if r.name != "mish"}
    assert {rec["gpu"] for rec in records.values()} <= {"4", "7"}
    assert all(not rec["resume"] and not rec["overwrite"] for rec in records.values())
    assert (plan[0].out_dir.parent / "logs" / "mish.log").is_file()
    # The finished runs are skipped the next time; only the failed one is tried again.
    replanned = plan_sweep(_spec(["relu", "silu", "mish"]), tmp_path / "runs", "paper")
    assert [r.name for r in replanned if r.needs_work] == ["mish"]


# --- SLURM through submitit's local executor ---------------------------------------------------


PAUSING_RUNNER = '''
import time
from pathlib import Path
from harness.train import run_training

def run(cfg, out_dir, **kwargs):
    """run_training; the run named relu sleeps once after its first epoch, to be preempted."""
    marker = Path(out_dir).parent / "relu.paused"

    def log(line):
        if Path(out_dir).name == "relu" and line.startswith("epoch") and not marker.exists():
            marker.write_text(line)
            time.sleep(300)

    return run_training(cfg, out_dir, log=log, **kwargs)
'''


def _job_task_pids(controller_pid: int) -> list[int]:
    """Processes under submitit's local controller that run the job itself (Linux /proc)."""
    found, todo = [], [controller_pid]
    while todo:
        pid = todo.pop()
        children = Path(f"/proc/{pid}/task/{pid}/children")
        for child in map(int, children.read_text().split()) if children.exists() else []:
            todo.append(child)
            if b"submitit.core._submit" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds job processes in /proc")
def test_slurm_jobs_finish_a_preempted_one_resumes_and_a_second_sweep_skips_them(
        tmp_path, monkeypatch):
    """Two jobs in one array (submitit's local executor); one is preempted after epoch 1."""
    (tmp_path / "pausing_runner.py").write_text(PAUSING_RUNNER)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job processes share two cores
    spec = _spec(["relu", "silu"], epochs=2)
    plan = plan_sweep(spec, tmp_path / "runs", "paper")
    lines: list[str] = []
    executor = ex.SlurmExecutor(resources={"gpus": 1, "hours": 0.1}, cluster="local",
                                runner="pausing_runner:run", log=lines.append)
    executor.parameters["gpus_per_node"] = 0  # the local executor would ask for a GPU
    assert executor.execute(plan) == ["relu", "silu"]
    assert sum("submitted as job" in line for line in lines) == 2
    marker = plan[0].out_dir.parent / "relu.paused"
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the relu job never finished its first epoch"
    assert (plan[0].out_dir / "last.pt").is_file() and not (plan[0].out_dir / "DONE").exists()
    # What SLURM does before preempting a job or at its time limit: SIGUSR2 to the job's tasks.
    (pid,) = _job_task_pids(executor.jobs[0]._process.pid)
    os.kill(pid, signal.SIGUSR2)
    summaries = [job.result() for job in executor.jobs]
    assert summaries[0]["action"] == "resumed" and summaries[0]["from_epoch"] == 1
    assert summaries[1]["action"] == "started"
    for run in plan:
        epochs = [json.loads(line)["epoch"] for line in
                  (run.out_dir / "metrics.jsonl").read_text().split("\n") if line]
        assert epochs == [1, 2]
        assert (run.out_dir / "DONE").is_file()
    again = plan_sweep(spec, tmp_path / "runs", "paper")
    assert all(r.status == "finished" for r in again)
    assert executor.execute(again) == []


def test_training_job_checkpoint_requeues_the_same_call():
    job = ex.TrainingJob("relu", {"epochs": 2}, "/tmp/x", runner="m:f")
    delayed = job.checkpoint()
    assert delayed.function == job and delayed.function is not job
    assert delayed.args == () and delayed.kwargs == {}


@pytest.mark.parametrize("extra, message", [
    (["--executor", "local", "--partition", "gpu"], "--partition only apply to --executor slurm"),
    (["--executor", "slurm", "--gpus", "2"], "--gpus applies to --executor local"),
    (["--executor", "slurm"], "sbatch not found here"),
])
def test_sweep_cli_refuses_misplaced_executor_options_with_one_line(tmp_path, monkeypatch, capsys,
                                                                    extra, message):
    from harness.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "table1-cifar10", "--scale", "mini", "--runs-dir", str(tmp_path / "runs"),
              "--no-progress", *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()

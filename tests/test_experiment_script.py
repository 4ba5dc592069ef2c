"""scripts/experiment.py: lanes share the runs, the ledger ends complete, records hold no
checkpoints, and a finished run is never trained again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "experiment.py"


def _experiment(tmp_path: Path) -> Path:
    spec = {"name": "tiny-exp", "description": "two tiny digits runs",
            "defaults": {"dataset": "digits", "width": 0.0625, "epochs": 1, "batch_size": 50,
                         "train_subset": 100, "val_subset": 20, "test_subset": 20,
                         "train_steps": 1, "eval_steps": 1, "eps_255": 16, "alpha_255": 8,
                         "lr": 0.05, "precision": "fp32", "device": "cpu"},
            "runs": [{"name": "relu", "overrides": {"act": "relu"}},
                     {"name": "silu", "overrides": {"act": "silu"}}],
            "scales": {}}
    spec_path = tmp_path / "tiny-exp.json"
    spec_path.write_text(json.dumps(spec))
    ev = ["--n", "20", "--steps", "1", "--restarts", "1", "--no-progress"]
    exp = {"spec": str(spec_path), "scale": "paper", "seeds": [0], "runs": ["relu", "silu"],
           "evaluations": [
               {"output": "eval_last.json", "command": "harness",
                "args": ["eval", "--ckpt", "{run}/last.pt", *ev]},
               {"output": "eval_train_last.json", "command": "harness",
                "args": ["eval", "--ckpt", "{run}/last.pt", "--split", "train", *ev]}]}
    folder = tmp_path / "experiments" / "tiny"
    folder.mkdir(parents=True)
    (folder / "experiment.json").write_text(json.dumps(exp))
    return tmp_path / "experiments"


def _lane(experiments: Path, runs: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(SCRIPT), "work", "tiny", "--experiments-dir",
                             str(experiments), "--runs-dir", str(runs)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
def test_two_lanes_finish_every_run_once_and_record_no_checkpoints(tmp_path):
    experiments, runs = _experiment(tmp_path), tmp_path / "runs"
    lanes = [_lane(experiments, runs) for _ in range(2)]
    outputs = [lane.communicate(timeout=600)[0] for lane in lanes]
    assert all(lane.returncode == 0 for lane in lanes), outputs
    ledger = json.loads((experiments / "tiny" / "ledger.json").read_text())
    assert {k: v["status"] for k, v in ledger["runs"].items()} == {"relu": "finished",
                                                                   "silu": "finished"}
    for name in ("relu", "silu"):
        log = (runs / "logs" / f"tiny-{name}.log").read_text()
        assert log.count("harness.cli sweep") == 1  # claimed by one lane only
        record = experiments / "tiny" / "runs" / "paper" / "tiny-exp" / name
        assert sorted(p.name for p in record.iterdir()) == [
            "DONE", "config.json", "eval_last.json", "eval_train_last.json", "metrics.jsonl"]
        assert json.loads((record / "eval_train_last.json").read_text())["split"] == "train"
        entry = ledger["runs"][name]
        assert entry["machine"] and entry["code_commit"] and entry["finished_utc"]
    assert (experiments / "tiny" / "runs" / "paper" / "tiny-exp" / "spec.json").is_file()
    # a third lane finds nothing left to do: no run is trained or evaluated again
    again = _lane(experiments, runs)
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0 and "start" not in out
    assert (runs / "logs" / "tiny-relu.log").read_text().count("harness.cli") == 3


def test_status_of_an_unknown_experiment_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "status", "nope", "--experiments-dir",
                           str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1

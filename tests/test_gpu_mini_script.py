"""bench/gpu_mini.sh runs end to end on CPU at a tiny size (digits, width 1/16, 2 epochs, 2 runs):
the runs' small files, the table and the figures land in $OUT, checkpoints do not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ("width=0.0625 epochs=2 train_subset=200 val_subset=50 test_subset=100 lr_milestones=[1] "
        "hessian_every=1 hessian_examples=2 save_every=1 device=cpu precision=fp32 "
        "train_steps=2 eval_steps=2")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_mini_script_runs_table1_end_to_end_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "RUNS_DIR": str(tmp_path / "runs"),
           "PYTHON": sys.executable, "GPU_DATA": "digits", "ONLY": "relu silu",
           "LIMIT_S": "150", "SETS": TINY, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_mini.sh"), "table1"], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    spec_dir = out / "runs" / "gpu-mini" / "table1-cifar10"
    for run in ("relu", "silu"):
        assert (spec_dir / run / "DONE").is_file()
        assert len((spec_dir / run / "metrics.jsonl").read_text().splitlines()) == 2
    assert (spec_dir / "spec.json").is_file()
    assert not list(out.rglob("*.pt"))  # checkpoints stay in RUNS_DIR
    figures = out / "figures"
    for name in ("table1.md", "fig1_robust_test_loss.png", "fig4_learning_curves.png",
                 "fig3_hessian_lambda_max.png", "synthesis.json"):
        assert (figures / name).is_file(), name
    table = (figures / "table1.md").read_text()
    assert "scale 'gpu-mini' with overrides: dataset=digits" in table
    assert "n=1 (seed 0)" in table


def test_gpu_mini_script_refuses_an_unknown_mode(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_mini.sh"), "table9"],
                          env={**os.environ, "OUT": str(tmp_path / "out")},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1

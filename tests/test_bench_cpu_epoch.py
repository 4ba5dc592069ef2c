"""bench/cpu_epoch.py: every configuration runs in its own process and the summary states the
ratio against landed main's defaults measured in the same invocation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cpu_epoch_quick_reports_each_configuration_against_main(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "bench.cpu_epoch", "--quick", "--configs",
                           "main,eval256", "--json", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["configs"]) == {"main", "eval256"}
    assert result["configs"]["main"]["speedup_vs_main"] == 1.0
    for summary in result["configs"].values():
        assert summary["epoch_s"] > 0 and summary["repeats"] == 1
    main_raw = next(r for r in result["raw"] if r["config"] == "main")
    assert main_raw["settings"] == {"allocator": False, "eval_batch": 512, "masking_check": True}

"""docs/results.md agrees with the committed records (scripts/check_results.py, an independent
recomputation), and the check fails when a number is changed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check_results.py"


def _check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True,
                          text=True, cwd=ROOT)


def test_every_checked_number_of_results_md_is_recomputed_from_the_records():
    done = _check(ROOT / "docs" / "results.md")
    assert done.returncode == 0, done.stdout


def test_a_changed_number_in_results_md_is_caught(tmp_path):
    text = (ROOT / "docs" / "results.md").read_text()
    relu = next(line for line in text.splitlines() if line.startswith("| ReLU (approx. 1)"))
    edited = tmp_path / "results.md"
    edited.write_text(text.replace(relu, relu.replace("| 24.1 |", "| 24.2 |")))
    done = _check(edited)
    assert done.returncode == 1 and "ReLU" in done.stdout
    slope = tmp_path / "slope.md"
    slope.write_text(text.replace("-13.6 (all 5)", "-13.5 (all 5)"))
    assert _check(slope).returncode == 1

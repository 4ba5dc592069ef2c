"""The run directory's file format, shared by its writer (harness) and its readers (curvtools
hessian, paper_figs): the file names and the one reader of ``metrics.jsonl``. No torch."""

from __future__ import annotations

import json
from pathlib import Path

RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt", "DONE")
# Held (flock) by the process training in a run directory; never part of the run's files
RUN_LOCK = ".lock"


def read_metrics(path: Path) -> list[dict]:
    """Rows of a ``metrics.jsonl`` in file order; lines torn by a crash are skipped."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows

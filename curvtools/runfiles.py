"""The run directory's file format, shared by its writer (harness) and its readers (curvtools
hessian, paper_figs): the file names and the one reader of ``metrics.jsonl``. No torch."""

from __future__ import annotations

import json
from pathlib import Path

from curvtools.checks import is_int

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


def read_epochs(path: Path) -> list[dict]:
    """One row per epoch, ordered by epoch: a resumed run may repeat an epoch (the last row
    wins); rows without an integer ``epoch`` are left out. Built on :func:`read_metrics`."""
    by_epoch: dict[int, dict] = {}
    for row in read_metrics(path):
        epoch = row.get("epoch")
        if is_int(epoch):
            by_epoch[epoch] = row
    return [by_epoch[e] for e in sorted(by_epoch)]

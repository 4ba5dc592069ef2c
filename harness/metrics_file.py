"""Reading a run's ``metrics.jsonl`` (no torch import: the sweep planner uses it too)."""

from __future__ import annotations

import json
from pathlib import Path


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

"""The run directory's file format, shared by its writer (harness) and its readers (curvtools
hessian, paper_figs): the file names, the one reader of ``metrics.jsonl``, the one way to find
the training settings in a ``config.json`` and to compare two settings. No torch."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from curvtools.checks import is_int

RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt", "DONE")
# Held (flock) by the process training in a run directory; never part of the run's files
RUN_LOCK = ".lock"
# RUNS_DIR/SCALE/SPEC/spec.json: written by the sweep (harness.specs), read by paper_figs
MANIFEST = "spec.json"
# Where a config.json keeps the training settings: "train_config" (harness.rundir writes it);
# "train" and "config" in files written by earlier versions
SETTINGS_KEYS = ("train_config", "train", "config")


def settings_of(config: Any) -> dict[str, Any]:
    """The training settings of a parsed ``config.json``: its ``train_config`` (or an earlier
    version's ``train``/``config``) mapping, else the top level; {} for anything not a dict.

    >>> settings_of({"train_config": {"epochs": 3}, "versions": {}})
    {'epochs': 3}
    """
    if not isinstance(config, dict):
        return {}
    for key in SETTINGS_KEYS:
        if isinstance(config.get(key), dict):
            return config[key]
    return config


def same_setting(a: Any, b: Any) -> bool:
    """Whether two setting values are the same: numbers to 1e-12 (relative above 1, JSON
    round trips and int/float spellings agree), lists element by element, the rest by ``==``.

    >>> same_setting(8, 8.0), same_setting([0.5, 0.75], [0.5, 0.75 + 1e-15])
    (True, True)
    """
    numbers = (int, float)
    if (isinstance(a, numbers) and isinstance(b, numbers)
            and not isinstance(a, bool) and not isinstance(b, bool)):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-12)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_setting(x, y) for x, y in zip(a, b, strict=True))
    return a == b


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

"""Cold start: wall time of ``curvtools curvature --act mish`` in a fresh process.

Baseline: ``python -c "import torch"`` in a fresh process, since a command that imports torch
can never start faster than that. Each command runs once untimed (to warm the file cache), then
``repeats`` times; the median wall time (``time.perf_counter`` around ``subprocess.run``) and
the spread are reported, and ``ratio`` = command / baseline (below 1 means the command does not
even pay for importing torch).

Example::

    >>> cold_start(repeats=5)["ratio"]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.timing import summarize


def curvtools_command(*args: str) -> list[str]:
    """The installed ``curvtools`` script beside this Python, else ``python -m curvtools.cli``."""
    script = Path(sys.executable).with_name("curvtools")
    if script.is_file():
        return [str(script), *args]
    return [sys.executable, "-m", "curvtools.cli", *args]


def time_command(command: list[str], repeats: int = 5, timeout: float = 120.0
                 ) -> dict[str, Any]:
    """Median wall seconds of ``command`` over ``repeats`` runs after one untimed run.

    Raises RuntimeError (with the last stderr line) when the command exits non-zero.
    """
    def once() -> float:
        started = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
            raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}: {last}")
        return seconds

    once()
    seconds = [once() for _ in range(repeats)]
    return {"command": " ".join(command), "seconds": summarize(seconds),
            "seconds_each": [round(s, 4) for s in seconds]}


def cold_start(repeats: int = 5, act: str = "mish") -> dict[str, Any]:
    """``curvtools curvature --act ACT`` against ``python -c "import torch"`` (wall seconds)."""
    baseline = time_command([sys.executable, "-c", "import torch"], repeats)
    command = time_command(curvtools_command("curvature", "--act", act), repeats)
    return {"command": command, "baseline": baseline,
            "ratio": command["seconds"]["median"] / baseline["seconds"]["median"]}

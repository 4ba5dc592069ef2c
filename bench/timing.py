"""Timing primitives shared by the benchmarks: a device-aware stopwatch and summary statistics.

On CUDA a stopwatch records CUDA events and synchronizes once at the end (the host clock would
measure kernel launches, not kernels); on CPU it reads ``time.perf_counter``. Every benchmark
warms up first, repeats, and reports the median with the spread (min, max) of the repeats.

Example::

    >>> with Stopwatch(device) as watch:
    ...     run_steps()
    >>> watch.seconds
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Elapsed seconds of a ``with`` block: CUDA events on CUDA, ``perf_counter`` on CPU."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.seconds = float("nan")

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)  # earlier queued work must not be billed to this block
        if self.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._stop = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> bool:
        if self.device.type == "cuda":
            self._stop.record()
            self._stop.synchronize()
            self.seconds = self._start.elapsed_time(self._stop) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._t0
        return False


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and relative spread ((max - min) / median) of repeated measurements."""
    values = [float(v) for v in values]
    median = statistics.median(values)
    return {"median": median, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / median if median else float("nan"),
            "repeats": len(values)}


def rate_summary(items: int, seconds: Sequence[float]) -> dict[str, float]:
    """Throughput ``items / s`` for each repeat, summarized (median, min, max, spread)."""
    out = summarize([items / s for s in seconds])
    out["seconds_each"] = [round(s, 6) for s in seconds]
    out["items_each"] = items
    return out

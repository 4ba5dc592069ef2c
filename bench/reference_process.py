"""The reference loop in a process of its own, run as Rice et al.'s script would be.

Our side of a comparison runs with ``harness``'s defaults, which include process-wide malloc
settings (:mod:`curvtools.cpu_allocator`, applied by the CLIs). Measured in the same process the
reference would get them too, so the reference runs here: a fresh Python process with malloc left
alone (``LOWCURV_KEEP_FREED_MEMORY=0``), the same images (regenerated from the same arguments of
:func:`bench.train_throughput.bench_images`) and the same settings. The parent talks to it over
pipes, so its chunks still alternate with ours and a change of load hits both sides alike; the
worker waits on its pipe (no CPU) while ours runs.

The worker is :mod:`bench.reference_worker` (kept apart so that this module imports no
benchmark: the benchmarks import it). Protocol (one JSON object per line): the parent sends
``{"kind": "train" | "eval", "images": {...bench_images kwargs}, "kwargs": {...}}``; for
``train`` the worker answers with
``{"warmup_seconds", "settings"}`` and then one ``{"seconds"}`` per ``"chunk"`` line; for
``eval`` it answers with :func:`bench.eval_throughput.reference_eval_throughput`'s result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class RemoteReference:
    """A reference session in a child process: ``time_chunk()`` (train) or ``result`` (eval)."""

    def __init__(self, kind: str, images: dict[str, Any], kwargs: dict[str, Any]):
        env = dict(os.environ, LOWCURV_KEEP_FREED_MEMORY="0",
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.reference_worker"],
                                     cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self._send({"kind": kind, "images": images, "kwargs": kwargs})
        self.first = self._receive()
        self.warmup_seconds = self.first.get("warmup_seconds")
        self.settings = {**self.first.get("settings", {}), "process": "separate, malloc untuned"}

    def _send(self, message: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def _receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"the reference process exited {self.proc.returncode}")
        return json.loads(line)

    def time_chunk(self) -> float:
        self._send("chunk")
        return float(self._receive()["seconds"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=60)

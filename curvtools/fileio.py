"""The project's one atomic file writer: a crash leaves the old file or the new one, never a
torn one.

The bytes go to a uniquely named temporary file in the target's folder (two writers of the same
path never share a temporary file), are fsynced, and the file is renamed over the target with
``os.replace``; the folder is fsynced too so that the rename survives a power cut. Imports
neither torch nor harness (harness's checkpoints and every curvtools writer use it).

Example::

    >>> write_json_atomic(Path("out/summary.json"), {"lambda_max": 1.5})
    >>> write_text_atomic(Path("out/table.csv"), "a,b\\n1,2\\n")
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

# Test hook for crash-safety tests (tests/test_trust.py, scripts/crash_campaign.py):
# LOWCURV_CRASH_AT=checkpoint-write[:N] makes the process SIGKILL itself while the temporary
# file of its N-th checkpoint (.pt) write is half written (N defaults to 1). Unset: no effect.
CRASH_ENV = "LOWCURV_CRASH_AT"
_pt_writes = 0


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if _crash_requested(path):
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """:func:`write_bytes_atomic` of ``text`` encoded as UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """A copy with NaN/inf floats as None (strict JSON has no NaN); tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(path: str | Path, obj: Any, *, indent: int = 2) -> None:
    """Write ``obj`` as strict JSON (``allow_nan=False``: encode non-finite floats before,
    e.g. with :func:`json_safe`) plus a final newline, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def _crash_requested(path: Path) -> bool:
    """True when the :data:`CRASH_ENV` test hook asks to die during this checkpoint write."""
    global _pt_writes
    spec = os.environ.get(CRASH_ENV, "")
    if not spec.startswith("checkpoint-write") or path.suffix != ".pt":
        return False
    _pt_writes += 1
    _, _, nth = spec.partition(":")
    return _pt_writes == (int(nth) if nth else 1)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (not supported on every platform/filesystem)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

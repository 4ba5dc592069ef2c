"""Keep freed memory in the process: glibc malloc settings that make CPU training ~10% faster.

PyTorch allocates every activation tensor with ``malloc``. With glibc's defaults, freed blocks of
a few megabytes go back to the kernel (``munmap``, or a trim of the heap top) and the next step's
tensors fault their pages in again, zero-filled: on this project's CPU training step (width-1/4
PreActResNet-18, batch 128, bf16) about 50,000-200,000 page faults per four steps. Raising the
mmap threshold and the trim threshold keeps those pages mapped for reuse: the faults drop to
zero and the step runs about 10% faster (``python -m bench.cpu_epoch``; docs/benchmarks.md).
Nothing computed changes: only where memory comes from.

The settings are process-wide and one-way (glibc then stops adapting its thresholds), and the
process keeps its peak heap size instead of returning memory between steps. The ``harness`` and
``curvtools`` commands and :func:`harness.train.run_training` apply them on a CPU; set
``LOWCURV_KEEP_FREED_MEMORY=0`` to leave malloc alone. Other C libraries (musl, macOS) are left
alone.

Example::

    >>> keep_freed_memory()       # on Linux with glibc
    {'mmap_threshold': 1073741824, 'trim_threshold': 2147483647, 'top_pad': 268435456}
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# mallopt(3) parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 1 << 30      # blocks below 1 GiB come from the heap, not fresh mappings
MMAP_THRESHOLD_FALLBACK = 32 << 20  # the largest some glibc versions accept
TRIM_THRESHOLD = (1 << 31) - 1  # never give the heap top back (mallopt takes a C int)
TOP_PAD = 256 << 20           # grow the heap in large steps (address space only)
ENV_SWITCH = "LOWCURV_KEEP_FREED_MEMORY"

_applied: dict[str, int] | None = None


def keep_freed_memory() -> dict[str, int]:
    """Apply the settings once per process; returns what was set (``{}`` when not applied:
    not glibc, or ``LOWCURV_KEEP_FREED_MEMORY=0``)."""
    global _applied
    if _applied is not None:
        return dict(_applied)
    _applied = {}
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return {}
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return {}
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return {}
    settings = {}
    for threshold in (MMAP_THRESHOLD, MMAP_THRESHOLD_FALLBACK):
        if libc.mallopt(_M_MMAP_THRESHOLD, threshold) == 1:
            settings["mmap_threshold"] = threshold
            break
    if libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
        settings["trim_threshold"] = TRIM_THRESHOLD
    if libc.mallopt(_M_TOP_PAD, TOP_PAD) == 1:
        settings["top_pad"] = TOP_PAD
    _applied = settings
    return dict(settings)

"""curvtools.fileio (the one atomic writer) and curvtools.checks (the one number check)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from curvtools.activations import from_config, resolve
from curvtools.checks import (
    is_int,
    is_number,
    require_int_in,
    require_positive_finite,
    require_positive_int,
    require_unit_open,
)
from curvtools.errors import BadInput
from curvtools.fileio import json_safe, write_bytes_atomic, write_json_atomic, write_text_atomic


def test_atomic_writers_replace_the_file_and_leave_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    write_text_atomic(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    write_bytes_atomic(tmp_path / "sub" / "b.bin", b"\x00\x01")  # creates the folder
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "sub", "t.txt"]


def test_json_writer_is_strict_json():
    with pytest.raises(ValueError):
        write_json_atomic("/nonexistent-never-written.json", {"x": float("nan")})
    assert json_safe({"x": [float("inf"), 1.0], "y": (float("nan"),)}) == {"x": [None, 1.0],
                                                                            "y": [None]}


def test_crash_hook_kills_mid_write_and_leaves_the_old_file(tmp_path):
    target = tmp_path / "c.pt"
    target.write_bytes(b"old")
    code = ("from curvtools.fileio import write_bytes_atomic\n"
            f"write_bytes_atomic({str(target)!r}, b'new' * 1000)\n")
    env = {**os.environ, "LOWCURV_CRASH_AT": "checkpoint-write"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert proc.returncode == -9
    assert target.read_bytes() == b"old"


@pytest.mark.parametrize("value,int_,number", [
    (3, True, True), (np.int64(3), True, True), (True, False, False), (np.bool_(True), False,
                                                                           False),
    (2.5, False, True), (np.float32(2.5), False, True), (float("inf"), False, False),
    (float("nan"), False, False), ("3", False, False), (None, False, False)])
def test_is_int_and_is_number_refuse_bools_and_non_finite_values(value, int_, number):
    assert is_int(value) is int_
    assert is_number(value) is number


def test_require_helpers_name_the_option():
    for call, text in ((lambda: require_positive_int("--n", 0), "--n=0"),
                       (lambda: require_positive_int("--n", True), "--n=True"),
                       (lambda: require_int_in("--dim", 0, 1, 5), "--dim 0"),
                       (lambda: require_positive_finite("--eps-max", float("inf")), "--eps-max"),
                       (lambda: require_unit_open("--tol", 1.0), "--tol 1.0")):
        with pytest.raises(BadInput, match=text):
            call()
    require_positive_int("--n", np.int32(2))
    require_unit_open("--tol", 1e-9)


def test_an_activation_parameter_refuses_a_bool():
    with pytest.raises(BadInput, match="not a number"):
        resolve("pswish", beta=True)
    with pytest.raises(BadInput, match="not a number"):
        from_config({"name": "leakyrelu", "params": {"k": False}})
    assert resolve("pswish", beta=np.float32(2.0)).params["beta"] == 2.0
    assert resolve("leakyrelu", k="0.3").params["k"] == 0.3


def test_shown_bounds_the_quote_of_a_hostile_value():
    """A list nested 60 levels deep whose levels repeat one sub-list (2**60 leaves as a tree),
    a megabyte string and a huge integer are quoted on one short line, at once."""
    import time

    from curvtools.errors import SHOWN_LIMIT, shown

    bomb: list = [1]
    for _ in range(60):
        bomb = [bomb, bomb]
    started = time.perf_counter()
    quotes = [shown(v) for v in (bomb, "x" * 10**6, 10**4000, "two\nlines", {"a": bomb})]
    assert time.perf_counter() - started < 0.5
    assert all(len(q) <= SHOWN_LIMIT and "\n" not in q for q in quotes)
    assert shown(0.031) == "0.031" and shown("relu") == "'relu'"


def test_keep_freed_memory_applies_once_and_can_be_switched_off(monkeypatch):
    """The malloc settings are applied once per process (on glibc), and
    LOWCURV_KEEP_FREED_MEMORY=0 leaves malloc alone."""
    import platform

    from curvtools import cpu_allocator

    monkeypatch.setattr(cpu_allocator, "_applied", None)
    monkeypatch.setenv(cpu_allocator.ENV_SWITCH, "0")
    assert cpu_allocator.keep_freed_memory() == {}
    monkeypatch.setattr(cpu_allocator, "_applied", None)
    monkeypatch.delenv(cpu_allocator.ENV_SWITCH)
    first = cpu_allocator.keep_freed_memory()
    if platform.libc_ver()[0] == "glibc":
        assert first["trim_threshold"] == cpu_allocator.TRIM_THRESHOLD
        assert first["mmap_threshold"] in (cpu_allocator.MMAP_THRESHOLD,
                                           cpu_allocator.MMAP_THRESHOLD_FALLBACK)
    assert cpu_allocator.keep_freed_memory() == first

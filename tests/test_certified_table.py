"""The stored certified curvature table equals what the branch and bound computes, and
`curvtools curvature` answers from it quickly, without sympy."""

import statistics
import subprocess
import sys
import time

import pytest

from curvtools.activations import resolve
from curvtools.certified import curvature
from curvtools.certified_data import TABLE
from curvtools.certified_table import DEFAULT_TOL, key, lookup, table_activations
from curvtools.cli_theory import DEFAULT_TOL as CLI_DEFAULT_TOL
from curvtools.symbolic import compute_curvature


def test_table_covers_every_builtin_and_the_papers_pswish_betas():
    keys = {key(a) for a in table_activations()}
    assert keys == set(TABLE)
    for beta in (0.5, 1, 2, 4, 10):
        assert key(resolve("pswish", beta=beta)) in TABLE
    assert CLI_DEFAULT_TOL == DEFAULT_TOL


@pytest.mark.parametrize("act", table_activations(), ids=lambda a: a.label)
def test_every_stored_entry_equals_the_branch_and_bound(act):
    assert compute_curvature(act, DEFAULT_TOL).__dict__ == TABLE[key(act)], \
        "regenerate: python -m curvtools.certified_table --write"


def test_lookup_only_at_the_default_tolerance_and_for_stored_parameters():
    assert lookup(resolve("mish")) is not None
    assert lookup(resolve("mish"), tol=1e-6) is None
    assert lookup(resolve("pswish", beta=3)) is None
    assert curvature(resolve("mish")) == lookup(resolve("mish"))


def test_curvature_cli_answers_from_the_table_without_sympy_in_under_a_second():
    code = ("import sys, contextlib, io\nfrom curvtools.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    main(['curvature', '--act', 'mish'])\n"
            "assert 'sympy' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "curvtools.cli", "curvature", "--act", "mish"],
                       check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    # 1.0 s on an idle machine; the CI margin covers a loaded one (it was 2.7 s before the table)
    assert statistics.median(times) < 1.5, times

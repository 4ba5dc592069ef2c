"""Which curvtools modules import which: no import circles, and the theory side of curvtools
never loads harness (only the ``hessian`` and ``lemma`` commands may, inside the command)."""

import subprocess
import sys

import pytest


def _modules_after(code: str) -> set[str]:
    """The names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = code + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    return set(out.split())


def test_torch_activations_and_user_expr_do_not_import_the_registry():
    loaded = _modules_after("import curvtools.torch_activations, curvtools.user_expr")
    assert "curvtools.activations" not in loaded


def test_user_module_builds_without_the_registry():
    loaded = _modules_after(
        "from curvtools.torch_activations import SympyActivation\n"
        "import torch\n"
        "m = SympyActivation('x*tanh(x)')\n"
        "assert abs(float(m(torch.tensor([1.0]))) - 0.7615941559557649) < 1e-6\n")
    assert "curvtools.activations" not in loaded


@pytest.mark.parametrize("argv", [["--help"], ["curvature", "--act", "relu"],
                                  ["curvature", "--act", "relu", "--help"]])
def test_curvtools_theory_commands_load_no_harness_module(argv):
    loaded = _modules_after("import contextlib, io\nfrom curvtools.cli import main\n"
                            "with contextlib.suppress(SystemExit), "
                            "contextlib.redirect_stdout(io.StringIO()):\n"
                            f"    main({argv!r})\n")
    assert not {m for m in loaded if m == "harness" or m.startswith("harness.")}


def test_curvtools_core_modules_load_no_harness_module():
    core = ("activations", "user_expr", "symbolic", "interval", "twolayer", "lemma", "clirun",
            "checks", "fileio", "checkpoint_paths", "figures", "cli_theory")
    loaded = _modules_after("\n".join(f"import curvtools.{m}" for m in core))
    assert not {m for m in loaded if m == "harness" or m.startswith("harness.")}

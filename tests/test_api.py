"""The top-level Python API: lazy exports, and every example of docs/api.md runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import curvtools
import harness

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)

CURVTOOLS_API = {"resolve", "register", "ActivationSpec", "ParamSpec", "curvature",
                 "input_hessian_eigenvalues", "names"}
HARNESS_API = {"TrainConfig", "run_training", "fit", "ThreatModel", "make_attack",
               "attack_names", "evaluate_robust", "evaluate_checkpoint", "build_model",
               "model_config", "load_model", "open_source"}


def _loaded_after(code: str) -> set[str]:
    """``sys.modules`` after ``code`` in a fresh interpreter."""
    probe = code + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))\n"
    return set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              check=True).stdout.split())


def test_import_curvtools_loads_no_torch_sympy_or_harness():
    loaded = _loaded_after("import curvtools\nassert 'resolve' in dir(curvtools)")
    heavy = {m for m in loaded if m.split(".")[0] in ("torch", "sympy", "harness", "numpy")}
    assert not heavy


def test_import_harness_loads_no_torch():
    loaded = _loaded_after("import harness\nassert 'fit' in dir(harness)")
    assert not {m for m in loaded if m.split(".")[0] in ("torch", "sympy")}


@pytest.mark.parametrize("package, names", [(curvtools, CURVTOOLS_API), (harness, HARNESS_API)])
def test_all_and_dir_list_the_public_api(package, names):
    assert set(package.__all__) == names
    assert names <= set(dir(package))


def test_exports_are_the_functions_of_their_modules():
    import curvtools.activations
    import curvtools.certified
    import curvtools.spectra
    import harness.attacks
    import harness.fitting
    import harness.train

    assert curvtools.resolve is curvtools.activations.resolve
    assert curvtools.curvature is curvtools.certified.curvature
    assert curvtools.input_hessian_eigenvalues is curvtools.spectra.input_hessian_eigenvalues
    assert harness.attack_names is harness.attacks.names
    assert harness.run_training is harness.train.run_training
    # a submodule import must not shadow an exported function of the same name
    assert harness.fit is harness.fitting.fit and callable(harness.fit)
    from harness import fit

    assert fit is harness.fitting.fit


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        curvtools.no_such_name  # noqa: B018
    with pytest.raises(AttributeError, match="no_such_name"):
        harness.no_such_name  # noqa: B018


def test_every_python_example_of_docs_api_runs(tmp_path, monkeypatch):
    blocks = BLOCK.findall(DOC.read_text())
    assert len(blocks) >= 8, "docs/api.md lost its python examples"
    monkeypatch.chdir(tmp_path)
    # the examples register a custom activation: they get copies of the registries, and the
    # other tests keep seeing the built-ins only
    import curvtools.activations
    import harness.attacks
    import harness.datasets
    import harness.models

    for module in (curvtools.activations, harness.attacks, harness.datasets, harness.models):
        monkeypatch.setattr(module, "REGISTRY", dict(module.REGISTRY))
    namespace: dict = {"__name__": "docs_api"}
    for number, code in enumerate(blocks, 1):
        try:
            exec(compile(code, f"docs/api.md block {number}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"docs/api.md python block {number} failed: "
                                 f"{type(err).__name__}: {err}\n{code}") from err

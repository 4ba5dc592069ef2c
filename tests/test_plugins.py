"""A user's own activation and architecture, from the command line, without editing the package.

The plugin package of docs/api.md ("A plugin package"), built here from that page: its module
and, from its ``pyproject.toml``, the entry points ``pip install -e`` would record (a dist-info
folder on PYTHONPATH). ``harness train`` trains with its ``ActivationSpec`` and ``ArchSpec`` by
``module:ATTRIBUTE`` (typed on the command line: allowed), resumes, ``harness eval`` evaluates and
``curvtools hessian`` takes the spectra, each rebuilding the model from the run's config once
``LOWCURV_PLUGINS`` allows the plugin's module (a file alone never gets a module imported: the
test copy of the module logs every import, and the log stays empty); the page's own commands run
by entry-point name; a checkpoint whose plugin is not installed gives one line and exit code 2; a
module in the current folder is never imported implicitly.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## A plugin package"


def _doc_section() -> str:
    text = (ROOT / "docs" / "api.md").read_text()
    section = text[text.index(SECTION):]
    following = section.find("\n## ", len(SECTION))
    return section if following < 0 else section[:following]


def _fenced(language: str) -> str:
    blocks = re.findall(rf"^```{language}\n(.*?)^```", _doc_section(), re.DOTALL | re.MULTILINE)
    assert len(blocks) == 1, f"docs/api.md's plugin section needs one {language} block"
    return blocks[0]


PYPROJECT = tomllib.loads(_fenced("toml"))
PLUGIN = _fenced("python")
# test instrumentation appended to the page's module: every import of it is logged
IMPORT_LOG = """

import os as _os

if _os.environ.get("LOWCURV_TEST_IMPORT_LOG"):
    with open(_os.environ["LOWCURV_TEST_IMPORT_LOG"], "a") as _log:
        _log.write(__name__ + "\\n")
"""
MODULE = PYPROJECT["tool"]["setuptools"]["py-modules"][0]  # lowcurv_squareplus
# the commands the page runs after `pip install -e`, in order
DOC_COMMANDS = [shlex.split(line.strip()) for line in _doc_section().splitlines()
                if line.startswith("    harness ") or line.startswith("    curvtools ")]

TINY_TRAIN = ["--dataset", "digits", "--train-subset", "100", "--val-subset", "20",
              "--test-subset", "20", "--batch-size", "50", "--train-steps", "1", "--eval-steps",
              "1", "--eps-255", "16", "--alpha-255", "8", "--lr-milestones", "3",
              "--device", "cpu", "--precision", "fp32", "--no-progress"]


def _entry_points_txt(pyproject: dict) -> str:
    """The dist-info ``entry_points.txt`` that installing the package writes."""
    groups = pyproject["project"]["entry-points"]
    return "".join(f"[{group}]\n" + "".join(f"{name} = {target}\n"
                                            for name, target in names.items()) + "\n"
                   for group, names in groups.items())


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """A folder holding what ``pip install -e ./lowcurv-squareplus`` makes importable."""
    root = tmp_path_factory.mktemp("plugin")
    (root / f"{MODULE}.py").write_text(PLUGIN + IMPORT_LOG)
    project = PYPROJECT["project"]
    info = root / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                   f"Version: {project['version']}\n")
    (info / "entry_points.txt").write_text(_entry_points_txt(PYPROJECT))
    return root


def _run(args: list[str], plugin: Path | None, cwd: Path, allow: str | None = None,
         log: Path | None = None) -> subprocess.CompletedProcess:
    """``curvtools``/``harness`` in a fresh process; ``allow``: LOWCURV_PLUGINS (else unset);
    ``log``: where the plugin records its imports."""
    repo = Path(__file__).resolve().parents[1]
    paths = [str(repo)] + ([str(plugin)] if plugin else [])
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOWCURV_PLUGINS", "LOWCURV_TEST_IMPORT_LOG")}
    env.update(PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS="1")
    if allow is not None:
        env["LOWCURV_PLUGINS"] = allow
    if log is not None:
        env["LOWCURV_TEST_IMPORT_LOG"] = str(log)
    return subprocess.run([sys.executable, "-c", f"import sys; from {args[0]}.cli import main; "
                           f"main(sys.argv[1:])", *args[1:]], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_plugin_activation_and_arch_train_resume_eval_and_hessian(plugin_path, tmp_path):
    run = tmp_path / "run"
    common = ["--act", f"{MODULE}:SQUAREPLUS", "--act-param", "b=2",
              "--arch", f"{MODULE}:TINY", *TINY_TRAIN]
    done = _run(["harness", "train", *common, "--epochs", "1", "--out", str(run)], plugin_path,
                tmp_path)
    assert done.returncode == 0, done.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["model_config"]["arch"] == f"{MODULE}:TINY"
    assert config["model_config"]["act"] == {"name": f"{MODULE}:SQUAREPLUS",
                                             "params": {"b": 2.0}}
    # the run's files name the plugin; without LOWCURV_PLUGINS its module is never imported
    log = tmp_path / "imports.log"
    resume = ["harness", "train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]
    evaluate = ["harness", "eval", "--ckpt", str(run), "--n", "20", "--steps", "1",
                "--no-progress", "--device", "cpu"]
    hessian = ["curvtools", "hessian", "--ckpt", str(run / "last.pt"), "--n", "2",
               "--device", "cpu"]
    for command in (resume, evaluate):  # (hessian loads checkpoints as eval does)
        refused = _run(command, plugin_path, tmp_path, log=log)
        assert refused.returncode == 2, (command, refused.stderr)
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert f"LOWCURV_PLUGINS={MODULE}" in errors[0], refused.stderr
        assert not log.exists(), command
    assert json.loads((run / "config.json").read_text())["train_config"]["epochs"] == 1
    allow = MODULE
    resumed = _run(resume, plugin_path, tmp_path, allow=allow)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from epoch 1" in resumed.stdout
    evaluated = _run(evaluate, plugin_path, tmp_path, allow=allow)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "(epoch 2), 20 test images" in evaluated.stdout
    spectra = _run(hessian, plugin_path, tmp_path, allow=allow)
    assert spectra.returncode == 0, spectra.stderr
    curvature = _run(["curvtools", "curvature", "--act", f"{MODULE}:SQUAREPLUS",
                      "--act-param", "b=4"], plugin_path, tmp_path)
    assert curvature.returncode == 0, curvature.stderr
    assert "max f''" in curvature.stdout

    # the same checkpoint where the plugin is allowed but not installed: one line, exit 2
    missing = _run(["harness", "eval", "--ckpt", str(run / "last.pt"), "--n", "20"], None,
                   tmp_path, allow=allow)
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0, missing.stderr
    assert f"plugin module '{MODULE}' is not installed/importable" in missing.stderr
    assert "bad model config" not in missing.stderr and "Traceback" not in missing.stderr


def test_the_docs_plugin_package_works_by_entry_point_name_as_written(plugin_path, tmp_path):
    assert [c[:2] for c in DOC_COMMANDS] == [["curvtools", "curvature"], ["harness", "train"],
                                            ["harness", "eval"], ["curvtools", "hessian"]]
    for command in DOC_COMMANDS:
        done = _run(command, plugin_path, tmp_path)
        assert done.returncode == 0, (command, done.stderr)
        if command[:2] == ["curvtools", "curvature"]:
            assert "max f'' = 0.25 = 1/4 (argmax 0)" in done.stdout  # f'' = b/(2 (x^2+b)^1.5)
            assert "min f'' = inf 0 (not attained" in done.stdout
    config = json.loads((tmp_path / "runs" / "sp" / "config.json").read_text())
    assert config["model_config"]["act"] == {"name": "squareplus", "params": {"b": 2.0}}
    assert config["model_config"]["arch"] == "tiny"


def test_a_plugin_reference_must_name_a_registry_entry_not_a_function(plugin_path, tmp_path):
    bad = _run(["harness", "train", "--act", "os:system", *TINY_TRAIN, "--epochs", "1",
                "--out", str(tmp_path / "bad")], plugin_path, tmp_path)
    assert bad.returncode == 2
    assert "not an ActivationSpec" in bad.stderr and "never a function to call" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_a_spec_naming_a_plugin_module_needs_lowcurv_plugins(plugin_path, tmp_path):
    spec = tmp_path / "plug.json"
    spec.write_text(json.dumps({
        "name": "plug", "defaults": {"dataset": "digits", "epochs": 1},
        "runs": [{"name": "sq", "overrides": {"act": f"{MODULE}:SQUAREPLUS"}}]}))
    log = tmp_path / "imports.log"
    dry = ["harness", "sweep", str(spec), "--dry-run", "--runs-dir", str(tmp_path / "runs")]
    refused = _run(dry, plugin_path, tmp_path, log=log)
    assert refused.returncode == 2 and f"LOWCURV_PLUGINS={MODULE}" in refused.stderr
    assert not log.exists()
    allowed = _run(dry, plugin_path, tmp_path, allow=MODULE, log=log)
    assert allowed.returncode == 0, allowed.stderr
    assert "sq" in allowed.stdout and log.read_text().split() == [MODULE]


def test_a_plugin_module_in_the_current_folder_is_never_imported_implicitly(tmp_path):
    (tmp_path / "cwd_plugin.py").write_text(PLUGIN + IMPORT_LOG)
    log = tmp_path / "imports.log"
    curvature = ["curvtools", "curvature", "--act", "cwd_plugin:SQUAREPLUS"]
    here = _run(curvature, None, tmp_path, log=log)  # python -c puts '' (this folder) first
    assert here.returncode == 2, here.stderr
    assert "plugin module 'cwd_plugin' is not installed/importable" in here.stderr
    assert not log.exists()
    explicit = _run(curvature, tmp_path, tmp_path, log=log)  # the folder on PYTHONPATH
    assert explicit.returncode == 0, explicit.stderr
    assert log.read_text().split() == ["cwd_plugin"]


def test_allowing_a_module_covers_its_submodules_and_lasts_one_command(monkeypatch):
    from curvtools import plugins
    from curvtools.activations import ActivationSpec
    from curvtools.clirun import new_app, run_app

    monkeypatch.delenv(plugins.ALLOW_ENV, raising=False)
    with pytest.raises(plugins.PluginUnavailable, match="LOWCURV_PLUGINS=json"):
        plugins.load_reference("json:JSONDecoder", ActivationSpec, "activation")
    monkeypatch.setenv(plugins.ALLOW_ENV, " mypkg , json")
    assert plugins.allowed_modules() == ("mypkg", "json")
    assert plugins.is_allowed("mypkg.acts") and plugins.is_allowed("json")
    assert not plugins.is_allowed("mypkgevil") and not plugins.is_allowed("os")
    with pytest.raises(plugins.PluginUnavailable, match="not an ActivationSpec"):
        plugins.load_reference("json:JSONDecoder", ActivationSpec, "activation")

    app = new_app("test")

    @app.command()
    def allow_it(module: str) -> None:
        plugins.allow(module)
        assert plugins.is_allowed(module.partition(":")[0])

    @app.command()
    def other() -> None:
        pass

    run_app(app, "test", ["allow-it", "mypkg2.acts:X"])
    assert plugins.allowed_modules() == ("mypkg", "json")  # restored after the command

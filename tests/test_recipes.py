"""docs/architecture.md's recipes hold as written.

A toy activation, attack, architecture and dataset are added through the documented steps only:
the one ``register(...)`` call each recipe puts in the package, made here from a test module as
a user would (on copies of the registries, so other tests see the built-ins only). With each, a
tiny run trains (``run_training`` on width 1/16, one epoch, a few images), is evaluated
(``evaluate_checkpoint``) and has its input Hessian taken (``curvtools hessian --ckpt``).
Training uses a registered attack through ``TrainConfig.train_attack``/``eval_attack``, and old
runs (no such settings) still mean PGD. The training-option recipe is checked by keeping
``TrainConfig``, ``harness train``'s options and docs/guide.md in step, and the may-import tables
by naming every module of the project.
"""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F
from torch import nn

import curvtools.activations as activations
import harness.attacks as attacks
import harness.datasets as datasets
import harness.models as models
from curvtools.errors import BadInput
from harness.config import TrainConfig, stored_settings
from harness.train import run_training

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()

torch.set_num_threads(1)


@pytest.fixture
def registries(monkeypatch):
    """Copies of the four registries: what a test registers is gone after it."""
    for module in (activations, attacks, datasets, models):
        monkeypatch.setattr(module, "REGISTRY", dict(module.REGISTRY))


def _recipe(kind: str) -> str:
    """The recipe bullet ``- **KIND**: ...`` of docs/architecture.md."""
    match = re.search(rf"^- \*\*{kind}\*\*(.*?)(?=^- \*\*|^## )", ARCHITECTURE,
                      re.DOTALL | re.MULTILINE)
    assert match, f"docs/architecture.md lost the recipe for {kind}"
    return " ".join(match.group(1).split())


def _tiny(**changes) -> TrainConfig:
    settings = dict(dataset="digits", width=0.0625, epochs=1, batch_size=32, train_subset=64,
                    val_subset=20, test_subset=20, train_steps=1, eval_steps=1, eps_255=16,
                    alpha_255=8, lr_milestones=[1.0], device="cpu", precision="fp32")
    return TrainConfig(**(settings | changes))


def _train_evaluate_hessian(cfg: TrainConfig, out: Path, attack: str = "pgd") -> dict:
    """Train ``cfg`` into ``out``, evaluate last.pt and take its input Hessian; the numbers."""
    from curvtools.cli import main as curvtools_main
    from harness.eval_checkpoint import EvalThreat, evaluate_checkpoint

    rows = run_training(cfg, out, progress=False)
    assert [r["epoch"] for r in rows] == [1]
    assert all(math.isfinite(v) for k, v in rows[0].items() if k.endswith(("_loss", "_acc")))
    # pgd: 2 steps (x 5 reporting restarts) to stay fast; another attack: its own defaults
    threat = EvalThreat(steps=2) if attack == "pgd" else EvalThreat()
    report = evaluate_checkpoint(out / "last.pt", threat, attack=attack, n=10, device="cpu",
                                 batch_size=10)
    assert report["n"] == 10 and 0 <= report["robust_acc"] <= report["clean_acc"] <= 1
    spectra = out / "hessian.json"
    try:
        curvtools_main(["hessian", "--ckpt", str(out / "last.pt"), "--n", "2", "--device", "cpu",
                        "--json", str(spectra)])
    except SystemExit as exit_:
        assert not exit_.code, f"curvtools hessian exited with {exit_.code}"
    hessian = json.loads(spectra.read_text())
    config = json.loads((out / "config.json").read_text())
    return {"rows": rows, "eval": report, "hessian": hessian, "config": config}


def _hessian_values(result: dict) -> list[float]:
    """lambda_max per example of ``curvtools hessian --json`` (null, i.e. NaN, fails)."""
    values = [e["lambda_max"] for e in result["hessian"]["examples"]]
    assert len(values) == 2 and None not in values, values
    return values


# --- the four registry recipes -----------------------------------------------------------------


class HalfSoftsign(nn.Module):
    """f(x) = x / 2 + a x / (1 + x^2): smooth, a toy."""

    def __init__(self, a: float):
        super().__init__()
        self.a = a

    def forward(self, x):
        return x / 2 + self.a * x / (1 + x * x)


def test_activation_recipe_one_register_call_trains_evaluates_and_takes_the_hessian(
        registries, tmp_path):
    assert "`curvtools/activations.py`" in _recipe("An activation")
    activations.register(activations.ActivationSpec(
        "halfsoftsign", "x/2 + a x / (1 + x^2)",
        lambda x, a: x / 2 + sympy.nsimplify(a) * x / (1 + x**2), HalfSoftsign,
        (activations.ParamSpec("a", 0.25, "bump height, > 0",
                               lambda v: None if v > 0 else "must be > 0"),)))
    from curvtools.certified import curvature

    c = curvature(activations.resolve("halfsoftsign", a=0.25))
    assert c.certified and c.kind.startswith("max f''")  # f'' = a (2x^3 - 6x) / (1 + x^2)^3
    result = _train_evaluate_hessian(_tiny(act="halfsoftsign", act_params={"a": 0.25}),
                                     tmp_path / "run")
    assert result["config"]["model_config"]["act"] == {"name": "halfsoftsign",
                                                       "params": {"a": 0.25}}
    assert all(math.isfinite(v) for v in _hessian_values(result))


class SmeLU(nn.Module):
    """0 for x <= -b, (x + b)^2 / (4 b) for |x| < b, x for x >= b (Shamir et al.)."""

    def __init__(self, b: float):
        super().__init__()
        self.b = b

    def forward(self, x):
        middle = (x + self.b) ** 2 / (4 * self.b)
        return torch.where(x <= -self.b, torch.zeros_like(x),
                           torch.where(x >= self.b, x, middle))


def _smelu_expr(x, b):
    b = sympy.nsimplify(b)
    return sympy.Piecewise((0, x <= -b), ((x + b) ** 2 / (4 * b), x < b), (x, True))


def test_approx_curvature_on_a_smelu_like_activation_reports_what_its_f2_is(registries):
    from curvtools.symbolic import compute_curvature

    activations.register(activations.ActivationSpec(
        "smelu", "smooth ReLU", _smelu_expr, SmeLU,
        (activations.ParamSpec("b", 1.0, "half width, > 0"),), smooth=False,
        approx_curvature=lambda b: 1 / (2 * b)))  # a plugin's choice of ranking number
    c = compute_curvature(activations.resolve("smelu", b=2.0))
    assert c.curvature == 0.25 and c.kind == "approximate: the activation's approx_curvature"
    assert c.max_value == pytest.approx(0.25) and c.min_value == 0.0  # f'' = 1/(2b) inside
    notes = " ".join(c.notes)
    assert "0 away from the kink" not in notes  # what it said before: false for SmeLU
    assert "C1 but not C2" in notes and "approx_curvature (0.25)" in notes
    relu = compute_curvature(activations.resolve("relu"))
    assert "f'' is 0 away from the kink" in " ".join(relu.notes)  # true there, kept
    assert relu.kind == "approximate: slope difference at the kink (the paper's)"


class SignStep(attacks.Attack):
    """A toy attack: from a uniform random start, one signed-gradient step of size eps."""

    name = "signstep"
    honours = frozenset({"norm", "eps", "bn_mode"})
    modes: list[str] = []  # the BatchNorm mode of every perturb call (train or eval)

    def starts(self, x, generator=None, rows_of_batch=None):
        eps = self.threat.eps
        return (torch.empty_like(x).uniform_(-eps, eps, generator=generator),)

    def perturb(self, model, x, y, *starts, autocast_dtype=None):
        was_training = model.training
        model.train(self.threat.bn_mode == "train")
        SignStep.modes.append(self.threat.bn_mode)
        delta = (starts[0] if starts else torch.zeros_like(x)).clone().requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        model.train(was_training)
        eps = self.threat.eps
        delta = (delta.detach() + eps * grad.sign()).clamp(-eps, eps)
        return (x + delta).clamp(0, 1) - x


def test_attack_recipe_one_register_call_trains_with_it_and_evaluates(registries, tmp_path):
    assert "`harness/attacks/__init__.py`" in _recipe("An attack")
    attacks.register("signstep", "one signed-gradient step from a random start (a test)",
                     lambda threat, num_classes, seed: SignStep(threat))
    SignStep.modes.clear()
    # the defaults of train_steps/eval_steps/alpha_255: the toy does not take them
    cfg = _tiny(train_attack="signstep", eval_attack="signstep", train_steps=10, eval_steps=10,
                alpha_255=2)
    result = _train_evaluate_hessian(cfg, tmp_path / "run", attack="signstep")
    assert {"train", "eval"} <= set(SignStep.modes)  # training's attack and evaluation's
    stored = result["config"]["train_config"]
    assert stored["train_attack"] == stored["eval_attack"] == "signstep"
    assert result["config"]["resolved"]["cuda_graphs"] is False
    assert all(math.isfinite(v) for v in _hessian_values(result))
    # resuming keeps the run's attack; a different one is refused before anything changes
    with pytest.raises(BadInput, match="train_attack"):
        run_training(_tiny(epochs=2, eval_attack="signstep", train_steps=10, eval_steps=10,
                           alpha_255=2), tmp_path / "run", resume=True, progress=False)
    rows = run_training(TrainConfig.from_dict(stored | {"epochs": 2}), tmp_path / "run",
                        resume=True, progress=False)
    assert [r["epoch"] for r in rows] == [1, 2]


class ToyNet(nn.Module):
    """Conv -> BatchNorm -> activation -> pooled linear: the constructor the recipe names."""

    def __init__(self, num_classes: int, in_channels: int, width: float, make_act):
        super().__init__()
        channels = max(1, round(16 * width))
        self.body = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1),
                                  nn.BatchNorm2d(channels), make_act(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x):
        return self.body(x)


def test_architecture_recipe_one_register_call_trains_evaluates_and_takes_the_hessian(
        registries, tmp_path):
    assert "`harness/models.py`" in _recipe("An architecture")
    models.register(models.ArchSpec("toynet", "toynet (a test)", ToyNet))
    result = _train_evaluate_hessian(_tiny(arch="toynet", width=1.0, act="silu"),
                                     tmp_path / "run")
    assert result["config"]["model_config"]["arch"] == "toynet"
    assert all(math.isfinite(v) for v in _hessian_values(result))


def _open_stripes(path, data_dir, download):
    """Three classes of 12x12 grey images: horizontal, vertical or no stripes, plus noise."""
    from harness.sources import ArraySource

    rng = np.random.default_rng(0)
    arrays, labels = {}, {}
    for part, n in (("train", 120), ("test", 30)):
        y = np.arange(n) % 3
        base = np.zeros((n, 1, 12, 12))
        base[y == 0, :, ::3, :] = 200
        base[y == 1, :, :, ::3] = 200
        noise = rng.integers(0, 40, size=base.shape)
        arrays[part] = np.clip(base + noise, 0, 255).astype(np.uint8)
        labels[part] = y
    return ArraySource("stripes", arrays, labels, ["horizontal", "vertical", "none"])


def test_dataset_recipe_one_register_call_trains_evaluates_and_takes_the_hessian(
        registries, tmp_path):
    assert "`harness/datasets.py`" in _recipe("A dataset")
    datasets.register(datasets.DatasetSpec("stripes", "stripes (a test)", _open_stripes,
                                           image_size=12))
    result = _train_evaluate_hessian(_tiny(dataset="stripes", train_subset=60, val_subset=None,
                                           test_subset=None), tmp_path / "run")
    assert result["config"]["model_config"]["num_classes"] == 3
    assert result["config"]["model_config"]["in_channels"] == 1
    assert all(math.isfinite(v) for v in _hessian_values(result))


# --- attacks in training: settings, old runs, CUDA graphs --------------------------------------


def test_default_attacks_are_pgd_and_an_old_config_without_them_means_pgd():
    cfg = TrainConfig()
    assert cfg.train_attack == cfg.eval_attack == "pgd"
    assert cfg.to_dict()["train_attack"] == "pgd"
    old = {k: v for k, v in _tiny().to_dict().items() if k not in ("train_attack", "eval_attack")}
    assert TrainConfig.from_dict(old) == _tiny()  # loads as PGD
    assert stored_settings(old)["train_attack"] == stored_settings(old)["eval_attack"] == "pgd"
    from harness.resume import check_resume_config

    check_resume_config(_tiny(), old, 1)  # resumes
    with pytest.raises(BadInput, match="eval_attack='fgsm'"):
        check_resume_config(_tiny(eval_attack="fgsm"), old, 1)


def test_the_default_engine_builds_the_same_pgd_as_before():
    from harness.attacks.pgd_attack import PGD
    from harness.step import build_attacks

    train, evaluation = build_attacks(_tiny())
    assert isinstance(train, PGD) and isinstance(evaluation, PGD)
    assert train.threat == _tiny().train_threat() and evaluation.threat == _tiny().eval_threat()


@pytest.mark.parametrize("changes, match", [
    ({"train_attack": "nope"}, r"train_attack: attack 'nope'; allowed: pgd"),
    ({"eval_attack": ""}, r"eval_attack='' must be an attack name"),
    ({"train_attack": "fgsm"}, r"train_attack: .*bn_mode 'train'"),  # torchattacks: eval mode
    ({"train_attack": "fgsm", "attack_bn": "eval", "train_steps": 3},
     r"train_attack: attack fgsm does not use step, steps"),  # set, unusable: refused
])
def test_a_training_attack_that_cannot_run_is_refused_in_one_line(changes, match):
    with pytest.raises(BadInput, match=match):
        TrainConfig.from_dict(_tiny().to_dict() | changes)


def test_a_non_graphable_training_attack_turns_cuda_graphs_off():
    from harness.runtime import uses_cuda_graphs

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert uses_cuda_graphs(TrainConfig(), cuda)  # PGD is graphable: the default stays on
    assert not uses_cuda_graphs(TrainConfig(), cuda, graphable=False)
    assert not uses_cuda_graphs(TrainConfig(cuda_graphs=True), cuda, graphable=False)
    assert not uses_cuda_graphs(TrainConfig(), cpu, graphable=True)
    assert attacks.make_attack("pgd", TrainConfig().train_threat()).graphable
    assert not attacks.make_attack("fgsm", TrainConfig().eval_threat()).graphable


# --- the training-option recipe ----------------------------------------------------------------

# harness train's options that are not TrainConfig fields (where the run goes, how it reports)
CLI_ONLY = {"out", "resume", "overwrite", "progress", "json_path", "act_param"}


def _train_options() -> dict[str, object]:
    import typer

    from curvtools.act_options import activation_parameters
    from harness.cli import app

    command = typer.main.get_command(app).commands["train"]
    skip = CLI_ONLY | set(activation_parameters())  # act_params: the activation's own options
    return {p.name: p for p in command.params if p.name not in skip and p.name != "help"}


def _guide_rows(command: str) -> set[str]:
    guide = (ROOT / "docs" / "guide.md").read_text()
    section = guide.split(f"## `{command}`")[1].split("\n## ")[0]
    return set(re.findall(r"^\| `(--[\w-]+)`", section, re.MULTILINE))


def test_every_train_setting_is_an_option_with_help_and_a_guide_row_and_vice_versa():
    import dataclasses

    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"act_params"}
    options = _train_options()
    assert set(options) == fields, (sorted(fields - set(options)), sorted(set(options) - fields))
    rows = _guide_rows("harness train")
    for name, option in options.items():
        assert (option.help or "").strip(), f"--{name.replace('_', '-')} has no help text"
        assert f"--{name.replace('_', '-')}" in rows, f"docs/guide.md lacks --{name}"
    defaults = TrainConfig()
    for name, option in options.items():
        if name != "lr_milestones":  # "auto" on the command line is None in the config
            assert option.default == getattr(defaults, name), name


def test_the_training_option_recipe_names_every_place_an_option_lives():
    recipe = _recipe("A training option")
    for place in ("`harness/config.py`", "`_validate`", "`harness/cli_train.py`",
                  "`RESUMABLE_CHANGES`", "`ABSENT_MEANS`", "`make generated`"):
        assert place in recipe, place


def test_option_help_lists_the_registries_it_can_read_without_torch():
    from harness.cli_sweep import spec_help
    from harness.cli_train import arch_help, dataset_help
    from harness.specs import bundled_spec_names

    for spec in datasets.REGISTRY.values():
        assert spec.name in dataset_help()
    for spec in models.REGISTRY.values():
        assert spec.help in arch_help()
    assert all(name in spec_help() for name in bundled_spec_names())


def test_attack_help_names_only_registered_attacks():
    from harness.cli_train import ATTACK_HELP

    named = re.findall(r"(?:e\.g\.|,|or) ([a-z][a-z0-9-]+)(?= \(|,)", ATTACK_HELP)
    assert named and set(named) <= set(attacks.names()), named
    assert "torchattacks:NAME" in ATTACK_HELP


# --- the rooms ---------------------------------------------------------------------------------

ROOMS = ("curvtools", "harness", "paper_figs", "bench", "scripts")


def _modules(room: str) -> set[str]:
    """A room's modules as the tables name them: ``errors``, ``attacks.threat``, ``attacks``
    (a subpackage's ``__init__``), ``__init__`` (the room's own), ``__main__``."""
    names = set()
    for path in (ROOT / room).rglob("*.py"):
        parts = path.relative_to(ROOT / room).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        names.add(".".join(parts))
    return names


def _table_names(room: str) -> set[str]:
    """Backticked names in the first column of the tables under ``### ROOM``."""
    section = re.search(rf"^### {room}\b.*?(?=^### |^## )", ARCHITECTURE,
                        re.DOTALL | re.MULTILINE)
    assert section, f"docs/architecture.md has no section ### {room}"
    names = set()
    for line in section.group(0).splitlines():
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 2 and not set(cells[1].strip()) <= set("-"):
            names.update(re.findall(r"`([\w.]+)`", cells[1]))
    return names - {"module"}


@pytest.mark.parametrize("room", ROOMS)
def test_every_module_is_a_row_of_its_rooms_may_import_table(room):
    modules, named = _modules(room), _table_names(room)
    assert not modules - named, f"docs/architecture.md's {room} tables lack {modules - named}"
    assert not named - modules, f"docs/architecture.md's {room} tables name {named - modules}"


def test_the_packages_never_import_bench_or_scripts():
    for room in ("curvtools", "harness", "paper_figs"):
        for path in (ROOT / room).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                assert not any(n.split(".")[0] in ("bench", "scripts") for n in names), path


def test_the_manifest_name_and_the_setting_comparison_are_defined_once():
    sources = {p: p.read_text() for room in ("curvtools", "harness", "paper_figs")
               for p in (ROOT / room).rglob("*.py")}
    assert [p.name for p, s in sources.items() if re.search(r"^MANIFEST = ", s, re.M)] == \
        ["runfiles.py"]
    assert not [p for p, s in sources.items()  # the settings comparison: runfiles.same_setting
                if p.parts[-2] != "curvtools" and re.search(r"^def _same\(", s, re.M)]
    scans = [p for p, s in sources.items() if '("train_config", "train", "config")' in s]
    assert [p.name for p in scans] == ["runfiles.py"]

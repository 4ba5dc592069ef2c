"""A user expression is data wherever it comes from: a code payload in ``--expr``, in a
checkpoint (``harness eval``, ``curvtools hessian``/``lemma``, ``harness train --resume``) or in a
sweep spec (``harness sweep --dry-run``) never runs; each is one line and exit code 2.

The payloads would create a marker file or set a module attribute if they ran (they did before
the whitelist parser: sympy's parse_expr evaluates Python).
"""

from __future__ import annotations

import json

import pytest
import torch

import curvtools.expr_parser as expr_parser
import curvtools.user_expr as user_expr
from curvtools.activations import resolve
from harness.checkpoint import save_checkpoint
from harness.models import build_model, model_config

TOUCH = ("x*tanh(x) + 0*sigmoid.__globals__['__builtins__']['__import__']('os')"
         ".system('touch {marker}')")
SETATTR = "x*tanh(x) + 0*sigmoid.__globals__.__setitem__('PWNED', 1)"


def _payloads(tmp_path):
    return [TOUCH.format(marker=tmp_path / "PWNED"), SETATTR]


def _ran(tmp_path) -> bool:
    return ((tmp_path / "PWNED").exists() or hasattr(user_expr, "PWNED")
            or hasattr(expr_parser, "PWNED"))


def _exit(main, argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err.strip()


def _payload_checkpoint(path, payload):
    """A well-formed checkpoint whose model config's activation is ``expr`` with ``payload``."""
    config = model_config("preactresnet18", resolve("relu").config(), num_classes=10,
                          in_channels=1, width=0.0625)
    model = build_model(config)
    config["act"] = {"name": "expr", "params": {"expr": payload}}
    train_config = {"dataset": "digits", "act": "expr", "act_params": {"expr": payload},
                    "epochs": 2, "width": 0.0625, "device": "cpu"}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"model": model.state_dict(), "config": config, "epoch": 1,
                           "metrics": {}, "train_config": train_config})
    return path


@pytest.mark.parametrize("which", [0, 1])
def test_a_payload_on_the_command_line_never_runs(which, tmp_path, capsys):
    from curvtools.cli import main as curvtools_main
    from harness.cli import main as harness_main

    payload = _payloads(tmp_path)[which]
    code, err = _exit(curvtools_main, ["curvature", "--act", "expr", "--expr", payload], capsys)
    assert code == 2 and err.count("\n") == 0 and err.startswith("error: --expr"), err
    code, err = _exit(harness_main, ["train", "--dataset", "digits", "--act", "expr", "--expr",
                                     payload, "--out", str(tmp_path / "run"), "--no-progress"],
                      capsys)
    assert code == 2 and err.count("\n") == 0, err
    assert not _ran(tmp_path) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("which", [0, 1])
def test_a_payload_in_a_checkpoint_never_runs_in_eval_hessian_lemma_or_resume(which, tmp_path,
                                                                             capsys):
    from curvtools.cli import main as curvtools_main
    from harness.cli import main as harness_main

    payload = _payloads(tmp_path)[which]
    ckpt = _payload_checkpoint(tmp_path / "run" / "last.pt", payload)
    before = ckpt.read_bytes()
    for main, argv in [
        (harness_main, ["eval", "--ckpt", str(ckpt), "--n", "4", "--device", "cpu",
                        "--no-progress"]),
        (curvtools_main, ["hessian", "--ckpt", str(ckpt), "--n", "2", "--device", "cpu"]),
        (curvtools_main, ["lemma", "--ckpt", str(ckpt), "--n", "2", "--device", "cpu"]),
        (harness_main, ["train", "--out", str(ckpt.parent), "--resume", "--no-progress"]),
    ]:
        code, err = _exit(main, argv, capsys)
        assert code == 2 and err.count("\n") == 0 and "--expr" in err, (argv[0], err)
        assert "Traceback" not in err
    assert not _ran(tmp_path)
    assert ckpt.read_bytes() == before and sorted(p.name for p in ckpt.parent.iterdir()) == \
        ["last.pt"]


@pytest.mark.parametrize("which", [0, 1])
def test_a_payload_in_a_sweep_spec_never_runs_in_a_dry_run(which, tmp_path, capsys):
    from harness.cli import main as harness_main

    payload = _payloads(tmp_path)[which]
    spec = tmp_path / "evil.json"
    spec.write_text(json.dumps({
        "name": "evil", "defaults": {"dataset": "digits", "epochs": 1},
        "runs": [{"name": "r", "overrides": {"act": "expr", "act_params": {"expr": payload}}}]}))
    code, err = _exit(harness_main, ["sweep", str(spec), "--dry-run", "--runs-dir",
                                     str(tmp_path / "runs")], capsys)
    assert code == 2 and err.count("\n") == 0 and "--expr" in err, err
    assert not _ran(tmp_path) and not (tmp_path / "runs").exists()


def test_a_checkpoint_with_a_legitimate_expression_still_loads(tmp_path):
    from harness.checkpoint import load_model

    config = model_config("preactresnet18", resolve("expr", expr="x*sigmoid(2x)").config(),
                          num_classes=10, in_channels=1, width=0.0625)
    model = build_model(config)
    save_checkpoint(tmp_path / "ok.pt", {"model": model.state_dict(), "config": config,
                                         "epoch": 1, "metrics": {}})
    loaded, _ = load_model(tmp_path / "ok.pt")
    x = torch.rand(2, 1, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))

"""``harness train / eval / demo`` end to end on digits: exit codes, run directories, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.cli_train import default_run_name

TINY = ["--dataset", "digits", "--width", "0.0625", "--batch-size", "50", "--train-subset",
        "100", "--val-subset", "20", "--test-subset", "20", "--train-steps", "1",
        "--eval-steps", "1", "--eps-255", "16", "--alpha-255", "8", "--lr-milestones", "10",
        "--no-progress"]


def _run(argv) -> int:
    try:
        main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def test_default_run_name_is_a_safe_folder_name():
    assert default_run_name("pswish(beta=4)", "cifar10") == "pswish-beta-4-cifar10"
    assert default_run_name("relu", "imagefolder:/data/cifar10-jpg/") == "relu-cifar10-jpg"


def test_train_resume_and_eval_commands(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(["train", *TINY, "--epochs", "1", "--act", "pswish", "--beta", "4",
                 "--out", str(out), "--json", str(tmp_path / "train.json")]) == 0
    summary = json.loads((tmp_path / "train.json").read_text())
    assert summary["last"]["epoch"] == 1
    stored = json.loads((out / "config.json").read_text())["train_config"]
    assert stored["act"] == "pswish" and stored["act_params"] == {"beta": 4.0}
    assert stored["data_dir"] == str(Path("data").resolve())  # found from any directory

    # an existing run is never overwritten without --resume/--overwrite: one line, exit 2
    before = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert _run(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--resume" in err
    assert (out / "metrics.jsonl").read_text() == before

    # --resume takes the stored settings; only what is typed now overrides them
    assert _run(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert json.loads((out / "config.json").read_text())["train_config"]["act"] == "pswish"

    assert _run(["eval", "--ckpt", str(out / "best.pt"), "--n", "40", "--steps", "2",
                 "--restarts", "2", "--eps-255", "16", "--device", "cpu", "--no-progress",
                 "--json", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["n"] == 40 and 0 <= result["robust_acc"] <= result["clean_acc"]
    assert "robust" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["train", "--eps-255", "-1"], "eps_255"),
    (["train", "--act", "nope"], "unknown activation"),
    (["train", "--train-steps", "0"], "train_steps"),
    (["train", "--lr-milestones", "a,b"], "lr-milestones"),
    (["eval", "--ckpt", "/nonexistent/best.pt"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, match):
    assert _run([*argv, *(["--out", str(tmp_path / "x")] if argv[0] == "train" else [])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_diverging_run_exits_3_with_one_line(tmp_path, capsys):
    # epoch 1 at lr 0.05, then lr 1e6 (milestone at epoch 1, gamma 2e7) diverges in epoch 2
    out = tmp_path / "nan"
    code = _run(["train", *TINY, "--epochs", "3", "--train-subset", "200", "--eps-255", "24",
                 "--lr", "0.05", "--lr-milestones", "1", "--lr-gamma", "2e7", "--out", str(out)])
    assert code == 3
    err = capsys.readouterr().err
    assert "training diverged" in err and err.count("\n") == 1
    assert (out / "last.pt").is_file() and not (out / "DONE").exists()


@pytest.fixture
def tiny_demo(monkeypatch):
    """The real demo (about 2 minutes) in miniature: 100 images, PGD-2 for the table."""
    import harness.demo as demo

    monkeypatch.setattr(demo, "DEMO_SETTINGS", demo.DEMO_SETTINGS | {
        "train_subset": 100, "val_subset": 20, "test_subset": 50, "width": 0.0625,
        "eval_steps": 1, "batch_size": 50})
    monkeypatch.setattr(demo, "DEMO_EVAL_STEPS", 2)
    return demo


def test_demo_prints_the_table(tmp_path, capsys, tiny_demo):
    assert _run(["demo", "--epochs", "1", "--act", "relu", "--no-progress",
                 "--json", str(tmp_path / "demo.json")]) == 0
    text = capsys.readouterr().out
    assert "activation" in text and "relu" in text and "gap" in text
    rows = json.loads((tmp_path / "demo.json").read_text())["rows"]
    assert rows[0]["act"] == "relu" and rows[0]["curvature"] == 1.0


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_demo_replaces_its_own_runs_and_nothing_else(tmp_path, capsys, tiny_demo):
    out = tmp_path / "runs"
    demo = ["demo", "--epochs", "1", "--act", "relu", "--no-progress", "--out", str(out)]
    assert _run(demo) == 0
    first = _files(out / "relu-digits")
    assert _run(demo) == 0  # `make demo` twice in a row: the second replaces the first
    assert _files(out / "relu-digits").keys() == first.keys()

    # a run of `harness train` where the demo would put its silu run (not demo settings)
    other = out / "silu-digits"
    other.mkdir()
    record = {"train_config": tiny_demo.demo_config("silu", 1, 0).to_dict() | {"width": 1.0}}
    (other / "config.json").write_text(json.dumps(record))
    (other / "epoch_0001.pt").write_bytes(b"a checkpoint")
    kept = {"relu": _files(out / "relu-digits"), "silu": _files(other)}
    capsys.readouterr()
    assert _run([*demo, "--act", "silu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "silu-digits" in err
    # checked before any work: the relu run (first in line) was not retrained either
    assert {"relu": _files(out / "relu-digits"), "silu": _files(other)} == kept

    (other / "config.json").unlink()  # files without a run record are not a demo run either
    assert _run([*demo, "--act", "silu"]) == 2
    assert (other / "epoch_0001.pt").read_bytes() == b"a checkpoint"


def test_act_help_names_only_commands_that_exist():
    import re

    import typer

    from curvtools.cli import app as curvtools_app
    from harness.cli import app as harness_app

    commands = set(typer.main.get_command(curvtools_app).commands)
    for app in (harness_app, curvtools_app):
        group = typer.main.get_command(app)
        for command in group.commands.values():
            for param in command.params:
                for named in re.findall(r"`curvtools (\w+)", param.help or ""):
                    assert named in commands, (command.name, param.name, named)

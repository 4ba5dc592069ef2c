"""What a new user stumbled on (issue: no silent surprises), each pinned by a test.

Every option a user sets is honoured or refused with one line; long work says what it will do
first; an interrupted or finished run says how to continue; old run configs (activation
parameters as top-level k/beta/alpha/expr) still load and resume.
"""

from __future__ import annotations

import json

import pytest
import torch

from curvtools.errors import BadInput
from curvtools.runfiles import read_metrics
from harness.checkpoint import load_checkpoint, save_checkpoint
from harness.config import TrainConfig, upgrade_legacy
from harness.train import run_training


def _cfg(**over) -> TrainConfig:
    base = dict(dataset="digits", width=0.0625, epochs=2, batch_size=50, train_subset=100,
                val_subset=20, test_subset=20, train_steps=1, eval_steps=1, eps_255=24,
                alpha_255=8, lr=0.05, lr_milestones=[1.0], eval_batch_size=64,
                act="leakyrelu", act_params={"k": 0.3}, device="cpu", precision="fp32")
    return TrainConfig.from_dict(base | over)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lrelu"
    run_training(_cfg(), out, progress=False)
    return out


def test_lr_milestones_default_to_half_and_three_quarters_of_the_epochs():
    assert TrainConfig().milestones() == [100.0, 150.0]  # the paper's, at 200 epochs
    assert TrainConfig(epochs=4).milestones() == [2.0, 3.0]  # not 100, 150 on a short run


def test_legacy_activation_keys_are_read_as_act_params():
    assert upgrade_legacy({"act": "elu", "alpha": 0.5, "k": None, "beta": None}) == \
        {"act": "elu", "act_params": {"alpha": 0.5}}
    cfg = TrainConfig.from_dict({"act": "pswish", "beta": 4})
    assert cfg.act_params == {"beta": 4} and cfg.activation().label == "pswish(beta=4)"
    assert cfg.alpha_255 == 2.0  # ELU's alpha no longer shares a name with the PGD step
    with pytest.raises(BadInput, match="twice"):
        TrainConfig.from_dict({"act": "pswish", "beta": 4, "act_params": {"beta": 2}})


def test_a_run_saved_with_legacy_keys_resumes_exactly(digits_run, tmp_path):
    """Rewrite a 1-epoch run's files in the old format (k at the top level), resume it to 2
    epochs: the weights equal those of the uninterrupted 2-epoch run."""
    old = tmp_path / "old"
    run_training(_cfg(epochs=1), old, progress=False)
    for name in ("last.pt", "best.pt"):
        payload = load_checkpoint(old / name)
        legacy = dict(payload["train_config"])
        legacy.pop("act_params")
        payload["train_config"] = legacy | {"k": 0.3, "beta": None, "alpha": None, "expr": None}
        save_checkpoint(old / name, payload)
    record = json.loads((old / "config.json").read_text())
    record["train_config"].pop("act_params")
    record["train_config"]["k"] = 0.3
    (old / "config.json").write_text(json.dumps(record))
    run_training(_cfg(epochs=2), old, resume=True, progress=False)
    resumed = load_checkpoint(old / "last.pt")["model"]
    straight = load_checkpoint(digits_run / "last.pt")["model"]
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_a_run_saved_before_run_ids_resumes_exactly(digits_run, tmp_path):
    """Rewrite a 1-epoch run's files as the code before run ids wrote them (no ``run`` entry in
    config.json or any checkpoint), resume it to 2 epochs: the weights equal those of the
    uninterrupted 2-epoch run, and the run has an id from the resume on."""
    old = tmp_path / "old"
    run_training(_cfg(epochs=1), old, progress=False)
    for name in ("last.pt", "best.pt"):
        payload = load_checkpoint(old / name)
        del payload["run"]
        save_checkpoint(old / name, payload)
    record = json.loads((old / "config.json").read_text())
    del record["run"]
    (old / "config.json").write_text(json.dumps(record))
    run_training(_cfg(epochs=2), old, resume=True, progress=False)
    resumed = load_checkpoint(old / "last.pt")
    straight = load_checkpoint(digits_run / "last.pt")["model"]
    assert all(torch.equal(resumed["model"][k], straight[k]) for k in straight)
    assert resumed["run"]["id"] == json.loads((old / "config.json").read_text())["run"]["id"]


def test_ctrl_c_says_where_the_run_stopped_and_how_to_continue(tmp_path, monkeypatch):
    import harness.train as train

    real = train.run_epoch
    calls = []

    def interrupt_second(engine, data, epoch, reporter):
        calls.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt
        return real(engine, data, epoch, reporter)

    monkeypatch.setattr(train, "run_epoch", interrupt_second)
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_training(_cfg(), tmp_path / "run", progress=False, log=lines.append)
    # a Python caller is told the Python way (harness train's line names --resume)
    assert lines[-1] == (f"interrupted in epoch 2; last.pt holds epoch 1: continue with "
                         f"run_training(cfg, '{tmp_path / 'run'}', resume=True)")
    monkeypatch.setattr(train, "run_epoch", real)
    lines.clear()
    run_training(_cfg(), tmp_path / "run", resume=True, progress=False, log=lines.append)
    assert lines[0].startswith(f"{tmp_path / 'run'}: resuming from epoch 1, epochs 2-2 of 2")
    assert [r["epoch"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


def test_resuming_a_finished_run_says_there_is_nothing_to_do(digits_run):
    lines: list[str] = []
    rows = run_training(_cfg(), digits_run, resume=True, progress=False, log=lines.append)
    assert len(rows) == 2
    assert ("has trained all 2 epochs already; nothing to do (set TrainConfig.epochs > 2 to "
            "train further)") in lines[0]


def test_a_new_run_says_its_device_and_precision_first(tmp_path):
    lines: list[str] = []
    run_training(_cfg(epochs=1), tmp_path / "r", progress=False, log=lines.append)
    assert lines[0].startswith(f"{tmp_path / 'r'}: training, epochs 1-1 of 1 (cpu")
    assert lines[0].endswith(", fp32)")


def _eval(args, capsys):
    from harness.cli import main

    try:
        main(["eval", *args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_eval_refuses_a_setting_the_attack_does_not_use(digits_run, capsys):
    code, _, err = _eval(["--ckpt", str(digits_run / "last.pt"), "--attack", "fgsm",
                          "--restarts", "5", "--no-progress"], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == ("error: attack fgsm does not use --restarts; of the "
                                            "threat options it uses --eps-255, --norm")


def test_eval_honours_restarts_of_torchattacks_pgd_and_says_what_runs(digits_run, capsys):
    code, out, err = _eval(["--ckpt", str(digits_run / "last.pt"), "--attack",
                            "torchattacks-pgd", "--restarts", "3", "--steps", "2", "--n", "20",
                            "--no-progress", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "evaluating 20 test images in 1 batches with torchattacks:PGD" in err
    assert "2 steps x 3 restarts" in out


def test_eval_says_when_n_is_capped(digits_run, capsys):
    code, out, err = _eval(["--ckpt", str(digits_run / "last.pt"), "--n", "100000", "--steps",
                            "1", "--restarts", "1", "--no-progress"], capsys)
    assert code == 0, err
    assert "--n 100000 asks for more test images than the set has; evaluating all 359" in err
    assert "359 test images" in out

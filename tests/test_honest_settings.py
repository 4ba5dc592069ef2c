"""What runs is what is printed and recorded; suspicious settings are refused unless asked for;
odd-looking numbers come with their explanation; an interrupted command says where it stands.

Attack strings cannot override threat-model settings (``torchattacks:APGD:steps=1`` beside
``--steps 60``); bad attack options are one line; eps in the wrong units is refused unless
``allow_unusual_eps``; robust > clean lines carry a short why; Ctrl-C in ``harness eval`` and
``harness sweep --no-progress`` says what finished and how to continue; an output file that is
replaced is said to be; ``--help`` shows no ``<bool>``; type errors name the type wanted.
"""

from __future__ import annotations

import json

import pytest
import torch

from curvtools.checks import is_number
from curvtools.errors import BadInput
from harness.attacks import ThreatModel, make_attack
from harness.config import TrainConfig
from harness.report import EPOCH_NOTE, format_epoch_line, robust_above_clean_note

# --- attack provenance ---------------------------------------------------------------------


@pytest.mark.parametrize("name,option", [
    ("torchattacks:APGD:steps=1", "--steps"), ("torchattacks:APGD:steps=3", "--steps"),
    ("torchattacks:PGD:alpha=0.5", "--alpha-255"), ("torchattacks:PGD:eps=0.5", "--eps-255"),
    ("torchattacks:APGD:n_restarts=4", "--restarts"), ("torchattacks:APGD:seed=3", "--seed"),
    ("torchattacks:APGD:norm=L2", "--norm"), ("torchattacks:APGD:steps=abc", "--steps"),
])
def test_an_attack_string_cannot_override_a_threat_model_setting(name, option):
    with pytest.raises(BadInput) as info:
        make_attack(name, ThreatModel(eps=8 / 255, step=2 / 255, steps=60))
    message = str(info.value)
    assert option in message and "\n" not in message, message


def test_what_an_allowed_attack_option_runs_is_the_threat_model_it_describes():
    threat = ThreatModel(eps=8 / 255, step=2 / 255, steps=7, restarts=2)
    attack = make_attack("torchattacks:APGD:loss=dlr", threat)
    assert attack.kwargs["steps"] == 7 and attack.kwargs["n_restarts"] == 2
    assert attack.kwargs["loss"] == "dlr"
    assert "7 steps x 2 restarts" in attack.describe()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    built = attack._attack_for(model)
    assert (built.steps, built.n_restarts, built.loss) == (7, 2, "dlr")


@pytest.mark.parametrize("name,shows", [
    ("torchattacks:APGD:loss=foo", "unknown loss"), ("torchattacks:APGD:rho=abc", "rho"),
    ("torchattacks:APGD:nosuch=1", "no argument"), ("torchattacks:APGD:loss", "key=value"),
    ("torchattacks:Square:n_queries=abc", "n_queries"), ("torchattacks:NoSuch", "no attack"),
])
def test_a_bad_attack_option_is_one_line_when_the_attack_is_built(name, shows):
    rng = torch.get_rng_state()
    with pytest.raises(BadInput) as info:
        make_attack(name, ThreatModel(eps=8 / 255, step=2 / 255, steps=5))
    assert shows in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert torch.equal(torch.get_rng_state(), rng)  # the probe leaves the global RNG alone


def test_harness_eval_refuses_steps_in_the_attack_string_before_any_work(tmp_path, capsys):
    from harness.cli import main

    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"not read")
    with pytest.raises(SystemExit) as info:
        main(["eval", "--ckpt", str(ckpt), "--attack", "torchattacks:APGD:steps=1", "--steps",
              "60", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.count("\n") == 0, err


# --- eps in the wrong units ----------------------------------------------------------------


@pytest.mark.parametrize("eps_255", [0.031, 0.5, 300.0])
def test_train_config_refuses_an_eps_in_the_wrong_units_unless_allowed(eps_255):
    with pytest.raises(BadInput) as info:
        TrainConfig.from_dict({"dataset": "digits", "eps_255": eps_255})
    assert "allow_unusual_eps" in str(info.value) and "\n" not in str(info.value)
    cfg = TrainConfig.from_dict({"dataset": "digits", "eps_255": eps_255,
                                 "allow_unusual_eps": True})
    assert cfg.train_threat().eps == pytest.approx(eps_255 / 255)
    assert TrainConfig.from_dict({"dataset": "digits", "eps_255": 0}).eps_255 == 0
    assert TrainConfig.from_dict({"dataset": "digits", "eps_255": 1}).eps_255 == 1


def test_threat_model_refuses_eps_above_one_unless_allowed():
    with pytest.raises(BadInput, match="larger than 1.*from_255.*allow_unusual_eps"):
        ThreatModel(eps=8)
    assert ThreatModel(eps=8, allow_unusual_eps=True).eps == 8
    assert ThreatModel(eps=0).eps == 0 and ThreatModel(eps=1).eps == 1


@pytest.mark.parametrize("argv", [
    ["train", "--dataset", "digits", "--eps-255", "0.031", "--no-progress"],
    ["eval", "--ckpt", "{ckpt}", "--eps-255", "0.031", "--no-progress"],
])
def test_the_clis_refuse_eps_255_below_one_with_one_line(argv, tmp_path, capsys):
    from harness.cli import main

    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"not read")
    argv = [a.format(ckpt=ckpt) for a in argv] + (["--out", str(tmp_path / "run")]
                                                  if argv[0] == "train" else [])
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.count("\n") == 0 and "--allow-unusual-eps" in err, err
    assert "--eps-255 7.9" in err and not (tmp_path / "run").exists()  # 0.031 = 7.9/255


@pytest.mark.parametrize("field,value,wanted", [
    ("eps_255", "8", "must be a number >= 0"), ("eps_255", True, "not a bool"),
    ("epochs", "10", "must be an integer >= 1, not text"), ("lr", None, "not null"),
    ("train_subset", 2.5, "integer >= 1"), ("channels_last", "yes", "true, false or null"),
    ("seed", "1", "not text"), ("arch", 3, "must be a name, not a number"),
])
def test_a_wrong_type_in_train_config_names_the_type_wanted(field, value, wanted):
    with pytest.raises(BadInput) as info:
        TrainConfig(**{"dataset": "digits", field: value}).validate()
    assert wanted in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_is_number_never_raises():
    assert not is_number(10**400) and not is_number(-(10**400))
    assert is_number(10**300) and not is_number(float("nan")) and not is_number(True)


# --- robust > clean ------------------------------------------------------------------------


def _row(**accs):
    row = {"epoch": 1, "lr": 0.1, "train_seconds": 1.0, "eval_seconds": 1.0}
    for part in ("train", "val", "test"):
        row[f"{part}_clean_acc"], row[f"{part}_robust_acc"] = accs.get(part, (0.5, 0.3))
    return row


def test_an_epoch_line_explains_each_part_whose_robust_accuracy_exceeds_its_clean():
    assert "robust > clean" not in format_epoch_line(_row(), 2)
    line = format_epoch_line(_row(train=(0.4, 0.45), test=(0.2, 0.3)), 2)
    assert EPOCH_NOTE["train"] in line and EPOCH_NOTE["test"] in line
    assert EPOCH_NOTE["val"] not in line and "\n" not in line
    assert "BatchNorm" in EPOCH_NOTE["train"] and "random start" in EPOCH_NOTE["val"]


def test_an_eval_line_explains_robust_above_clean_only_when_it_happens():
    assert robust_above_clean_note(0.5, 0.5) == "" and robust_above_clean_note(0.5, 0.2) == ""
    note = robust_above_clean_note(0.1, 0.12)
    assert "never at the clean image" in note and "\n" not in note


# --- Ctrl-C --------------------------------------------------------------------------------


def test_ctrl_c_in_harness_eval_says_where_it_stood_and_exits_130(tmp_path, capsys,
                                                                   monkeypatch):
    import harness.eval_checkpoint
    from harness.cli import main

    def interrupted(ckpt, threat, *, on_start, on_batch, **kwargs):
        attack = make_attack("pgd", ThreatModel(steps=2))
        on_start(3, attack, 90)
        on_batch()
        raise KeyboardInterrupt

    monkeypatch.setattr(harness.eval_checkpoint, "evaluate_checkpoint", interrupted)
    ckpt, out = tmp_path / "last.pt", tmp_path / "e.json"
    ckpt.write_bytes(b"not read")
    with pytest.raises(SystemExit) as info:
        main(["eval", "--ckpt", str(ckpt), "--no-progress", "--json", str(out)])
    err = capsys.readouterr().err
    assert info.value.code == 130
    assert "interrupted after 1 of 3 batches" in err and "was not written" in err, err
    assert "run the same command again" in err and not out.exists()


def test_ctrl_c_in_a_sweep_without_progress_says_what_finished_and_how_to_continue(
        tmp_path, capsys, monkeypatch):
    import harness.sweep
    from harness.cli import main

    def interrupted(cfg, out_dir, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(harness.sweep, "default_runner", interrupted)
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({"name": "s", "defaults": {"dataset": "digits", "epochs": 2},
                                "runs": [{"name": "a"}, {"name": "b"}]}))
    with pytest.raises(SystemExit) as info:
        main(["sweep", str(spec), "--runs-dir", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert info.value.code == 130
    assert "interrupted: sweep s has 0 of 2 runs finished; unfinished: a (0/2), b (0/2)" in err
    assert "run the same harness sweep command again" in err


# --- output files, help, messages ----------------------------------------------------------


def test_an_output_file_that_is_replaced_is_said_to_be(tmp_path, capsys):
    from curvtools.cli import main

    out = tmp_path / "relu.json"
    main(["curvature", "--act", "relu", "--json", str(out)])
    assert "replaced" not in capsys.readouterr().err
    main(["curvature", "--act", "relu", "--json", str(out)])
    err = capsys.readouterr().err
    assert f"note: --json '{out}' existed and was replaced" in err
    json.loads(out.read_text())


def test_help_shows_no_bool_type_for_flags(capsys):
    from harness.cli import main

    try:
        main(["train", "--help"])
    except SystemExit as done:
        assert done.code in (0, None)
    out = capsys.readouterr().out
    assert "--resume" in out and "--help" in out and "<bool>" not in out

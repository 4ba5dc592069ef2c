"""One owner of a run directory (harness.rundir.RunDir) and the run's identity: each probe of
the attacker-minded review (docs/trust.md, "Probes of the run directory") pinned by a test.

A swapped checkpoint is refused by resume, ``harness eval``, ``curvtools hessian`` and
``lemma`` with one line naming both runs and nothing on disk changes; runs written before ids
existed still resume bit for bit; ``--resume`` without ``last.pt`` never advises to delete a
checkpoint unsaid; nested bombs in checkpoint entries are refused in microseconds; devices and
FIFOs are "not a regular file"; the crash campaign's row hook exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from curvtools.errors import BadInput
from curvtools.runfiles import read_metrics
from harness.checkpoint import check_bounded, load_checkpoint, load_model, save_checkpoint
from harness.config import TrainConfig
from harness.rundir import CLI, RunDir
from harness.train import run_training

REPO = Path(__file__).resolve().parents[1]
TIMINGS = ("train_seconds", "eval_seconds")
TINY = dict(dataset="digits", width=0.0625, epochs=2, batch_size=50, train_subset=100,
            val_subset=20, test_subset=20, train_steps=1, eval_steps=1, eps_255=24,
            alpha_255=8, lr=0.05, lr_milestones=[1.5], eval_batch_size=64, device="cpu",
            precision="fp32")


def _cfg(**over) -> TrainConfig:
    return TrainConfig.from_dict(TINY | over)


def _files(folder: Path) -> dict[str, str]:
    """Every run file and its sha256 (the lock file is not one of them)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def _without_timings(rows):
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished 2-epoch runs: ``a`` (relu, seed 0) and ``b`` (another seed)."""
    root = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(1)
    run_training(_cfg(save_every=1), root / "a", progress=False)
    run_training(_cfg(seed=7, save_every=1), root / "b", progress=False)
    return root


def _copy(runs: Path, name: str, to: Path) -> Path:
    shutil.copytree(runs / name, to)
    return to


def _cli(prog: str, argv: list[str], capsys) -> tuple[int, str, str]:
    if prog == "harness":
        from harness.cli import main
    else:
        from curvtools.cli import main
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


# --- identity ----------------------------------------------------------------------------------


def test_every_file_of_a_run_carries_one_run_id(runs):
    record = json.loads((runs / "a" / "config.json").read_text())
    run = record["run"]
    assert re.fullmatch(r"[0-9a-f]{32}", run["id"]) and len(run["settings_sha256"]) == 64
    assert run["summary"] == "relu preactresnet18 x0.0625, digits, seed 0"
    for name in ("last.pt", "best.pt", "epoch_0001.pt", "epoch_0002.pt"):
        assert load_checkpoint(runs / "a" / name)["run"] == run, name
    assert json.loads((runs / "b" / "config.json").read_text())["run"]["id"] != run["id"]


def test_resume_refuses_another_runs_last_pt_naming_both_and_changes_nothing(runs, tmp_path,
                                                                           capsys):
    out = _copy(runs, "a", tmp_path / "a")
    shutil.copy(runs / "b" / "last.pt", out / "last.pt")
    before = _files(out)
    a_id = json.loads((out / "config.json").read_text())["run"]["id"]
    b_id = load_checkpoint(out / "last.pt")["run"]["id"]
    with pytest.raises(BadInput) as err:
        run_training(_cfg(epochs=3), out, resume=True, progress=False)
    message = str(err.value)
    assert "\n" not in message and "is not of this run (its run id differs)" in message
    assert f"run {a_id[:12]} (relu preactresnet18 x0.0625, digits, seed 0;" in message
    assert f"run {b_id[:12]} (relu preactresnet18 x0.0625, digits, seed 7;" in message
    assert _files(out) == before
    # the command line: one line, exit 2, the run's config.json and best.pt untouched
    code, _, err_text = _cli("harness", ["train", "--out", str(out), "--resume", "--epochs", "3",
                                         "--no-progress"], capsys)
    assert code == 2 and err_text.count("\n") == 1 and "is not of this run" in err_text
    assert _files(out) == before


@pytest.mark.parametrize("command", ["eval", "hessian", "lemma"])
def test_tools_on_a_run_directory_refuse_a_foreign_checkpoint(runs, tmp_path, capsys, command):
    out = _copy(runs, "a", tmp_path / "a")
    # hessian reads every checkpoint: a foreign best.pt is no epoch of the run
    foreign = "best.pt" if command == "hessian" else "last.pt"
    (out / "epoch_0002.pt").unlink()  # best.pt would else be skipped as a copy of epoch 2
    shutil.copy(runs / "b" / foreign, out / foreign)
    before = _files(out)
    prog = "harness" if command == "eval" else "curvtools"
    code, _, err = _cli(prog, [command, "--ckpt", str(out), "--n", "4", "--device", "cpu"],
                        capsys)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: checkpoint") and foreign in line
    assert "is not of this run (its run id differs)" in line
    assert _files(out) == before


def test_tools_accept_their_own_run_directory(runs, capsys):
    code, out, err = _cli("curvtools", ["hessian", "--ckpt", str(runs / "a"), "--n", "2",
                                        "--max-iter", "4", "--tol", "0.5", "--device", "cpu"],
                          capsys)
    assert code == 0, err
    assert "2 distinct checkpoint(s)" in out  # epoch 1 and 2; last.pt and best.pt are copies


def _strip_ids(folder: Path) -> None:
    """Rewrite a run as the code before run ids wrote it."""
    record = json.loads((folder / "config.json").read_text())
    record.pop("run")
    (folder / "config.json").write_text(json.dumps(record, indent=2) + "\n")
    for path in folder.glob("*.pt"):
        payload = load_checkpoint(path)
        payload.pop("run")
        save_checkpoint(path, payload)


def test_a_run_without_ids_resumes_bit_for_bit_and_gets_an_id(runs, tmp_path):
    straight = runs / "a"  # 2 epochs uninterrupted (save_every changes no number)
    old = tmp_path / "old"
    run_training(_cfg(epochs=1), old, progress=False)
    _strip_ids(old)
    rows = run_training(_cfg(epochs=2), old, resume=True, progress=False)
    assert _without_timings(rows) == _without_timings(read_metrics(straight / "metrics.jsonl"))
    assert _same_weights(old / "last.pt", straight / "last.pt")
    given = json.loads((old / "config.json").read_text())["run"]["id"]
    assert load_checkpoint(old / "last.pt")["run"]["id"] == given
    # its epoch-1 best.pt (no id) is still recognised as the run's by its row
    if "run" not in load_checkpoint(old / "best.pt"):
        RunDir(old).check_member(load_checkpoint(old / "best.pt"), old / "best.pt")


def test_without_ids_a_foreign_checkpoint_is_told_by_its_metrics_row(runs, tmp_path):
    """Runs written before ids: the checkpoint's row must be metrics.jsonl's (even two runs of
    the same settings and seed differ there, in their timings)."""
    mine, twin = tmp_path / "mine", tmp_path / "twin"
    run_training(_cfg(epochs=1), mine, progress=False)
    run_training(_cfg(epochs=1, seed=1), twin, progress=False)
    _strip_ids(mine)
    _strip_ids(twin)
    shutil.copy(twin / "last.pt", mine / "last.pt")
    before = _files(mine)
    with pytest.raises(BadInput, match=r"its epoch-1 metrics row differs from metrics.jsonl's\)"
                                       r": the run directory holds a run without id"):
        run_training(_cfg(epochs=2), mine, resume=True, progress=False)
    assert _files(mine) == before
    # settings told apart too, when the row is missing
    other = tmp_path / "other"
    run_training(_cfg(epochs=1, lr=0.04), other, progress=False)
    _strip_ids(other)
    payload = load_checkpoint(other / "last.pt")
    with pytest.raises(BadInput, match=r"its train_config.lr differs from config.json's"):
        RunDir(mine).check_member(payload, other / "last.pt", rows=[])


def test_resume_and_eval_of_a_crash_between_resume_start_and_first_checkpoint(runs, tmp_path):
    """A run without ids resumed once: config.json has an id, last.pt (of the old epochs) has
    none; the pair is judged by content and keeps config.json's id."""
    old = tmp_path / "old"
    run_training(_cfg(epochs=1), old, progress=False)
    _strip_ids(old)
    record = json.loads((old / "config.json").read_text())
    record["run"] = {"id": "0" * 31 + "1", "settings_sha256": "x", "summary": "y"}
    (old / "config.json").write_text(json.dumps(record))
    ckpt, _, run_id = RunDir(old).load_last()
    assert run_id == "0" * 31 + "1"
    run_training(_cfg(epochs=2), old, resume=True, progress=False)
    assert load_checkpoint(old / "last.pt")["run"]["id"] == "0" * 31 + "1"


# --- the hint when last.pt is gone --------------------------------------------------------------


def test_resume_without_last_pt_says_what_overwrite_deletes_and_how_to_continue(runs, tmp_path,
                                                                                capsys):
    out = _copy(runs, "a", tmp_path / "a")
    (out / "last.pt").unlink()
    (out / "DONE").unlink()
    code, _, err = _cli("harness", ["train", "--out", str(out), "--resume", "--no-progress"],
                        capsys)
    assert code == 2 and err.count("\n") == 1
    assert "the run keeps best.pt, epoch_0001.pt, epoch_0002.pt but no last.pt" in err
    assert "--overwrite would delete them (config.json, metrics.jsonl, best.pt, epoch_0001.pt, "\
           "epoch_0002.pt)" in err
    assert "to continue exactly from epoch 2 instead" in err
    assert "copy epoch_0002.pt to last.pt and resume" in err
    # continuing from an epoch checkpoint is exact (here epoch 1's: epoch 2 is trained again)
    shutil.copy(out / "epoch_0001.pt", out / "last.pt")
    run_training(_cfg(save_every=1), out, resume=True, progress=False)
    assert _without_timings(read_metrics(out / "metrics.jsonl")) == \
        _without_timings(read_metrics(runs / "a" / "metrics.jsonl"))
    assert _same_weights(out / "last.pt", runs / "a" / "last.pt")
    # from Python the options are named as Python arguments
    (out / "last.pt").unlink()
    with pytest.raises(BadInput, match=r"^resume=True: .* overwrite=True would delete them"):
        run_training(_cfg(), out, resume=True, progress=False)


def test_resume_before_any_checkpoint_says_overwrite_deletes_only_what_is_there(tmp_path):
    out = tmp_path / "partial"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(BadInput, match=r"stopped before its first checkpoint: start over with "
                                       r"overwrite=True \(it deletes config.json\)$"):
        run_training(_cfg(), out, resume=True, progress=False)


def test_api_callers_are_told_python_arguments_not_options(runs, tmp_path):
    out = _copy(runs, "a", tmp_path / "a")
    with pytest.raises(BadInput, match=r"pass resume=True to continue it or overwrite=True"):
        run_training(_cfg(), out, progress=False)
    with pytest.raises(BadInput, match=r"^resume=True: setting lr=0.1 differs"):
        run_training(_cfg(lr=0.1), out, resume=True, progress=False)
    with pytest.raises(BadInput, match=r"^resume=True and overwrite=True exclude each other"):
        run_training(_cfg(), out, resume=True, overwrite=True, progress=False)
    lines: list[str] = []
    run_training(_cfg(), out, resume=True, progress=False, log=lines.append)
    assert "nothing to do (set TrainConfig.epochs > 2 to train further)" in lines[0]
    with pytest.raises(BadInput, match=r"^--resume: setting lr=0.1 differs"):
        run_training(_cfg(lr=0.1), out, resume=True, progress=False, caller=CLI)


# --- settings on resume ----------------------------------------------------------------------


def test_extending_an_auto_milestone_run_with_its_milestones_given_explicitly(tmp_path):
    """Epochs 2 with auto milestones (1, 1.5) extended to 3 with lr_milestones=[1, 1.5]: the
    same run as 3 epochs with those fixed milestones, bit for bit."""
    auto = tmp_path / "auto"
    run_training(_cfg(epochs=2, lr_milestones=None), auto, progress=False)
    with pytest.raises(BadInput, match=r"lr_milestones=\[1.5, 2.25\] differs from the run's "
                                       r"auto milestones \[1.0, 1.5\] \(of its 2 epochs\)"):
        run_training(_cfg(epochs=3, lr_milestones=[1.5, 2.25]), auto, resume=True,
                     progress=False)
    run_training(_cfg(epochs=3, lr_milestones=[1.0, 1.5]), auto, resume=True, progress=False)
    fixed = tmp_path / "fixed"
    run_training(_cfg(epochs=3, lr_milestones=[1.0, 1.5]), fixed, progress=False)
    assert _without_timings(read_metrics(auto / "metrics.jsonl")) == \
        _without_timings(read_metrics(fixed / "metrics.jsonl"))
    assert _same_weights(auto / "last.pt", fixed / "last.pt")


PLUGIN = '''
import torch
from torch import nn
from curvtools.activations import ActivationSpec, ParamSpec


class Squareplus(nn.Module):
    def __init__(self, b):
        super().__init__()
        self.b = b

    def forward(self, x):
        return (x + torch.sqrt(x * x + self.b)) / 2


def _expr(x, b):
    import sympy
    return (x + sympy.sqrt(x**2 + sympy.nsimplify(b))) / 2


SQUAREPLUS = ActivationSpec("squareplus", "(x + sqrt(x^2 + b)) / 2", _expr, Squareplus,
                            (ParamSpec("b", 4.0, "smoothness, > 0",
                                       lambda b: None if b > 0 else "must be > 0"),))
'''


def test_resuming_a_plugin_run_with_another_act_says_the_activation_differs(tmp_path, capsys,
                                                                            monkeypatch):
    (tmp_path / "rundir_test_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    args = ["--dataset", "digits", "--width", "0.0625", "--batch-size", "50", "--train-subset",
            "100", "--val-subset", "20", "--test-subset", "20", "--train-steps", "1",
            "--eval-steps", "1", "--lr-milestones", "5", "--device", "cpu", "--no-progress"]
    code, _, err = _cli("harness", ["train", *args, "--act", "rundir_test_plugin:SQUAREPLUS",
                                    "--act-param", "b=2", "--epochs", "1", "--out", str(out)],
                        capsys)
    assert code == 0, err
    code, _, err = _cli("harness", ["train", "--out", str(out), "--resume", "--act", "relu",
                                    "--epochs", "2", "--no-progress"], capsys)
    assert code == 2
    assert err.strip().startswith("error: --resume: setting act='relu' differs from the run's "
                                  "'rundir_test_plugin:SQUAREPLUS'; only epochs, device")
    # the run's own activation typed again keeps its parameters
    code, _, err = _cli("harness", ["train", "--out", str(out), "--resume", "--act",
                                    "rundir_test_plugin:SQUAREPLUS", "--epochs", "2",
                                    "--no-progress"], capsys)
    assert code == 0, err


# --- hostile values and files ------------------------------------------------------------------


def _bomb(levels: int = 60) -> list:
    """A list nested ``levels`` deep whose every level holds one sub-list twice: a few hundred
    bytes pickled, 2**levels leaves for anything that walks it."""
    inner: list = [0.5]
    for _ in range(levels):
        inner = [inner, inner]
    return inner


def test_check_bounded_counts_shared_parts_each_time_and_stops_early():
    started = time.perf_counter()
    with pytest.raises(BadInput, match=r"entry 'config' is nested more than 16 levels deep"):
        check_bounded({"config": {"mean": _bomb()}}, "checkpoint 'x.pt':")
    wide = [list(range(100))] * 3000  # one list reached 3,000 times: 300,000 values
    with pytest.raises(BadInput, match=r"entry 'train_config' holds more than 200000 values"):
        check_bounded({"train_config": {"lr_milestones": wide}}, "checkpoint 'x.pt':")
    with pytest.raises(BadInput, match=r"entry 'epoch' holds an integer of 3322 bits"):
        check_bounded({"epoch": 10**1000}, "x")
    with pytest.raises(BadInput, match="entry 'metrics' holds more than"):
        check_bounded({"metrics": {"note": "x" * 2_000_000}}, "x",
                      max_values=1000)
    assert time.perf_counter() - started < 2.0
    check_bounded({"model": {f"w{i}": torch.zeros(3) for i in range(1000)},
                   "config": {"act": {"name": "relu", "params": {}}}}, "x")


def _with(payload: dict, **entries) -> dict:
    return {**payload, **entries}


@pytest.mark.parametrize("where", ["config.mean", "train_config.lr_milestones"])
def test_a_nested_bomb_in_a_checkpoint_is_refused_at_once_by_every_tool(runs, tmp_path, capsys,
                                                                        where):
    out = _copy(runs, "a", tmp_path / "a")
    payload = load_checkpoint(out / "last.pt")
    entry, key = where.split(".")
    payload[entry] = dict(payload[entry], **{key: _bomb()})
    save_checkpoint(out / "last.pt", payload)
    assert (out / "last.pt").stat().st_size < 2_000_000
    before = _files(out)
    started = time.perf_counter()
    for prog, argv in (("harness", ["eval", "--ckpt", str(out / "last.pt"), "--n", "4"]),
                       ("curvtools", ["hessian", "--ckpt", str(out), "--n", "2"]),
                       ("curvtools", ["lemma", "--ckpt", str(out), "--n", "2"]),
                       ("harness", ["train", "--out", str(out), "--resume", "--no-progress"])):
        code, _, err = _cli(prog, [*argv, "--device", "cpu"], capsys)
        assert code == 2, (argv, err)
        assert f"entry '{entry}' is nested more than 16 levels deep" in err, (argv, err)
    assert time.perf_counter() - started < 60  # the checks, not 2**60 steps
    assert _files(out) == before


def test_load_model_refuses_a_config_far_larger_than_its_weights_without_building_it(runs,
                                                                                     tmp_path):
    payload = load_checkpoint(runs / "a" / "last.pt")
    for change in ({"width": 1e6}, {"num_classes": 10**9}, {"in_channels": 10**6}):
        save_checkpoint(tmp_path / "big.pt", _with(payload, config={**payload["config"],
                                                                    **change}))
        started = time.perf_counter()
        with pytest.raises(BadInput, match=r"'model' does not match its model config|"
                                           r"bad model config"):
            load_model(tmp_path / "big.pt")
        assert time.perf_counter() - started < 10, change


def test_the_meta_build_draws_no_random_numbers(runs):
    from harness.checkpoint import check_model_fits

    payload = load_checkpoint(runs / "a" / "last.pt")
    state = torch.get_rng_state()
    check_model_fits(payload["config"], payload["model"], "x")
    assert torch.equal(state, torch.get_rng_state())
    with pytest.raises(BadInput, match=r"'model' does not match its model config \(missing key"):
        check_model_fits(payload["config"], {}, "x")


@pytest.mark.parametrize("make", ["device", "fifo"])
def test_devices_and_fifos_are_not_regular_files(tmp_path, capsys, make):
    if make == "device":
        path, kind = Path("/dev/null"), "a character device"
    else:
        path, kind = tmp_path / "pipe.pt", "a FIFO"
        os.mkfifo(path)
    with pytest.raises(BadInput, match=rf"is not a regular file \({kind}\)$"):
        load_checkpoint(path)
    for prog, command in (("harness", "eval"), ("curvtools", "hessian"), ("curvtools", "lemma")):
        code, _, err = _cli(prog, [command, "--ckpt", str(path), "--device", "cpu"], capsys)
        assert code == 2 and f"is not a regular file ({kind})" in err, (command, err)


# --- the writers ------------------------------------------------------------------------------


def test_ranks_other_than_0_write_nothing(tmp_path):
    run = RunDir(tmp_path / "r", main=False)
    run.start(_cfg(), {"arch": "preactresnet18"}, None, fresh=True)
    run.write_record({"train_config": {}})
    run.write_rows([{"epoch": 1}])
    run.append_row({"epoch": 1})
    run.save_epoch(1, {"model": {}}, improved=True)
    run.finish(1, 0.0)
    assert not (tmp_path / "r").exists()


def test_the_crash_campaigns_row_kill_dies_between_the_row_and_its_checkpoints(tmp_path,
                                                                              monkeypatch):
    """``scripts/crash_campaign.py --kill row:1``: its child dies right after the first row
    (here in-process, the SIGKILL replaced by an exception)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("crash_campaign",
                                                  REPO / "scripts" / "crash_campaign.py")
    campaign = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(campaign)

    class Killed(Exception):
        pass

    def die():
        raise Killed

    monkeypatch.setattr(campaign, "_die", die)
    monkeypatch.setattr(RunDir, "append_row", RunDir.append_row)  # the child wraps it: undone
    out = tmp_path / "run"
    with pytest.raises(Killed):
        campaign.child(out, "row:1")
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1]
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "crash_campaign.py"), "--kill",
                          "row"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--kill 'row': allowed" in bad.stderr

"""Trust: hostile and broken checkpoints, crash safety (SIGKILL mid-checkpoint), a disk that
fills up mid-run, and divergence; nothing already on disk is lost or silently wrong.

The longer crash campaign (several kill points, random kills) is ``scripts/crash_campaign.py``;
what is guaranteed and how it is tested: ``docs/trust.md``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from curvtools.activations import resolve
from curvtools.errors import BadInput
from curvtools.fileio import CRASH_ENV
from harness.checkpoint import FORMAT, load_checkpoint, load_model, save_checkpoint
from harness.models import build_model

REPO = Path(__file__).resolve().parents[1]
TIMING_KEYS = ("train_seconds", "eval_seconds")

# A tiny digits run: well under a second per epoch on one CPU core.
TINY_RUN = dict(dataset="digits", width=0.0625, epochs=2, batch_size=50, train_subset=100,
                val_subset=20, test_subset=20, train_steps=2, eval_steps=2, eps_255=24,
                alpha_255=8, lr=0.05, lr_milestones=[1.5], eval_batch_size=64, device="cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    # Exact resume compares float sums across processes: the thread count must be the same
    # (a different count changes reduction order, hence the last bits of every number).
    torch.set_num_threads(1)


def _tiny_cfg(**over):
    from harness.config import TrainConfig

    return TrainConfig.from_dict(TINY_RUN | over)


def _without_timings(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model_config(act: str = "relu", classes: int = 10, arch: str = "preactresnet18",
                  width: float = 1 / 16) -> dict:
    return {"arch": arch, "act": resolve(act).config(), "num_classes": classes,
            "in_channels": 1, "width": width, "mean": [0.3], "std": [0.4]}


def _good_payload(**config_over) -> dict:
    config = _model_config() | config_over
    torch.manual_seed(0)
    model = build_model(config)
    return {"model": model.state_dict(), "config": config, "epoch": 1,
            "train_config": {"dataset": "digits", "data_dir": "data"}, "metrics": {}}


class _TouchMarker:
    """Unpickling this runs ``touch MARKER``: the classic malicious-checkpoint payload."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- hostile and broken checkpoints ------------------------------------------------------------


def _hostile_files(folder: Path) -> dict[str, Path]:
    """Every kind of bad checkpoint, by name; the marker file must never appear."""
    marker = folder / "PWNED"
    files: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        files[name] = folder / f"{name}.pt"
        files[name].write_bytes(data)

    def torch_bytes(obj) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    good = torch_bytes(_good_payload() | {"format": FORMAT})
    put("pickle-payload", torch_bytes(_good_payload() | {"format": FORMAT,
                                                          "metrics": _TouchMarker(marker)}))
    put("plain-pickle-payload", pickle.dumps({"format": FORMAT, "x": _TouchMarker(marker)}))
    put("truncated", good[: len(good) // 2])
    corrupted = bytearray(good)
    for i in range(len(corrupted) // 3, len(corrupted) // 3 + 64):
        corrupted[i] ^= 0xFF
    put("corrupted", bytes(corrupted))
    put("empty", b"")
    put("text", b"epoch 3: val robust 0.51\n")
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("readme.txt", "not a checkpoint")
    put("zip-of-something-else", zipped.getvalue())
    put("json", json.dumps({"format": FORMAT, "model": {}, "config": {}}).encode())
    put("tensor-not-dict", torch_bytes(torch.zeros(3)))
    put("no-format", torch_bytes({k: v for k, v in _good_payload().items()}))
    put("wrong-format", torch_bytes(_good_payload() | {"format": "lowcurv-checkpoint/99"}))
    put("foreign-format", torch_bytes(_good_payload() | {"format": "timm"}))
    put("no-model", torch_bytes({"format": FORMAT, "config": _model_config()}))
    other_arch = _good_payload()
    other_arch["config"] = _model_config(arch="resnet18")
    put("other-architecture", torch_bytes(other_arch | {"format": FORMAT}))
    other_classes = _good_payload()
    other_classes["config"] = _model_config(classes=100)
    put("other-class-count", torch_bytes(other_classes | {"format": FORMAT}))
    other_width = _good_payload()
    other_width["config"] = _model_config(width=1 / 8)
    put("other-width", torch_bytes(other_width | {"format": FORMAT}))
    bad_act = _good_payload()
    bad_act["config"] = dict(bad_act["config"], act={"name": "swishy", "params": {}})
    put("unknown-activation", torch_bytes(bad_act | {"format": FORMAT}))
    put("config-not-a-mapping", torch_bytes(_good_payload() | {"format": FORMAT,
                                                                "config": "preactresnet18"}))
    put("model-a-list", torch_bytes(_good_payload() | {"format": FORMAT, "model": [1, 2]}))
    put("model-a-tensor", torch_bytes(_good_payload() | {"format": FORMAT,
                                                          "model": torch.zeros(3)}))
    put("train-config-a-list", torch_bytes(_good_payload() | {"format": FORMAT,
                                                               "train_config": ["digits"]}))
    put("train-config-a-string", torch_bytes(_good_payload() | {"format": FORMAT,
                                                                 "train_config": "digits"}))
    return files


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    return folder, _hostile_files(folder)


def test_a_pickle_payload_never_runs_and_is_refused(hostile):
    folder, files = hostile
    for name in ("pickle-payload", "plain-pickle-payload"):
        with pytest.raises(BadInput) as err:
            load_model(files[name])
        assert "\n" not in str(err.value)
    assert not (folder / "PWNED").exists()


def test_every_broken_checkpoint_is_one_line_bad_input_from_load_model(hostile):
    folder, files = hostile
    for name, path in files.items():
        with pytest.raises(BadInput) as err:
            load_model(path)
        message = str(err.value)
        assert "\n" not in message and str(path) in message, (name, message)
    assert not (folder / "PWNED").exists()


def test_the_model_is_rebuilt_with_the_checkpoints_own_activation(tmp_path):
    # no activation "mismatch" can go unnoticed: the checkpoint names its activation and the
    # model is rebuilt from it, never from a command-line default
    payload = _good_payload(act=resolve("pswish", beta=4.0).config())
    save_checkpoint(tmp_path / "p.pt", payload)
    model, _ = load_model(tmp_path / "p.pt")
    assert any("swish" in type(m).__name__.lower() or "silu" in type(m).__name__.lower()
               for m in model.modules()), [type(m).__name__ for m in model.modules()]


def _cli_error(main, argv, capsys) -> str:
    """Run a CLI in-process; assert exit code 2 and one ``error:`` line; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, (argv, err)
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, (argv, err)
    return err


def _has_command(app, name: str) -> bool:
    import typer

    command = typer.main.get_command(app)  # a one-command app is no group
    return name in getattr(command, "commands", {})


CKPT_COMMANDS = [
    ("curvtools", "hessian", ["--n", "4", "--device", "cpu"]),
    ("curvtools", "lemma", ["--n", "4", "--device", "cpu"]),
    ("harness", "eval", ["--n", "4", "--device", "cpu"]),
]


@pytest.mark.parametrize("prog,command,extra", CKPT_COMMANDS)
def test_cli_refuses_every_broken_checkpoint_with_one_line(hostile, prog, command, extra,
                                                           capsys):
    if prog == "curvtools":
        from curvtools.cli import app, main
    else:
        from harness.cli import app, main
    if not _has_command(app, command):
        pytest.skip(f"{prog} {command} is not registered in this build yet")
    if command == "lemma":
        pytest.importorskip("curvtools.lemma")
    folder, files = hostile
    for name, path in files.items():
        err = _cli_error(main, [command, "--ckpt", str(path), *extra], capsys)
        assert path.name in err, (name, err)
    assert not (folder / "PWNED").exists()


def test_hessian_over_a_run_directory_refuses_a_hostile_epoch_checkpoint(hostile, tmp_path,
                                                                         capsys):
    from curvtools.cli import main

    folder, files = hostile
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "last.pt", _good_payload())
    (run / "epoch_0001.pt").write_bytes(files["pickle-payload"].read_bytes())
    out = tmp_path / "h.json"
    _cli_error(main, ["hessian", "--ckpt", str(run), "--n", "4", "--device", "cpu",
                      "--json", str(out)], capsys)
    assert not out.exists() and not (folder / "PWNED").exists()


# --- crash safety: SIGKILL while a checkpoint is half written ----------------------------------


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    from harness.train import run_training

    out = tmp_path_factory.mktemp("straight") / "run"
    torch.set_num_threads(1)
    rows = run_training(_tiny_cfg(), out, progress=False)
    return out, rows


CHILD = """
import sys, torch
torch.set_num_threads(1)
from harness.config import TrainConfig
from harness.train import run_training
cfg = TrainConfig.from_dict({cfg!r})
run_training(cfg, sys.argv[1], progress=False)
"""


def test_sigkill_during_a_checkpoint_write_then_resume_equals_an_uninterrupted_run(
        straight_run, tmp_path):
    from curvtools.runfiles import read_metrics
    from harness.train import run_training

    _, straight = straight_run
    out = tmp_path / "run"
    # .pt writes per epoch: best.pt (when val robust improves) and last.pt. Die half-way
    # through the 3rd one: epoch 2's best.pt or last.pt, with epoch 1's files complete.
    env = dict(os.environ, **{CRASH_ENV: "checkpoint-write:3"})
    child = subprocess.run([sys.executable, "-c", CHILD.format(cfg=TINY_RUN), str(out)],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stderr[-2000:]
    torn = sorted(p.name for p in out.glob(".*.tmp"))
    assert len(torn) == 1, sorted(p.name for p in out.iterdir())  # the half-written temp file
    survivor = load_checkpoint(out / "last.pt")  # complete and loadable
    assert survivor["epoch"] in (1, 2)
    assert not (out / "DONE").exists()

    resumed = run_training(_tiny_cfg(), out, resume=True, progress=False)
    on_disk = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in on_disk] == [1, 2]  # no duplicated, no lost epoch
    assert _without_timings(on_disk) == _without_timings(straight)
    assert _without_timings(resumed) == _without_timings(straight)
    final, reference = load_checkpoint(out / "last.pt"), load_checkpoint(straight_run[0] /
                                                                          "last.pt")
    for key, value in reference["model"].items():
        assert torch.equal(final["model"][key], value), key
    assert (out / "DONE").exists()
    assert not list(out.glob(".*.tmp"))  # resuming removed the half-written temporary file


# --- a damaged last.pt on resume ----------------------------------------------------------------


def _with_momentum_of_shape(payload: dict, shape: tuple) -> dict:
    optimizer = {"state": {k: dict(v) for k, v in payload["optimizer"]["state"].items()},
                 "param_groups": payload["optimizer"]["param_groups"]}
    optimizer["state"][0]["momentum_buffer"] = torch.zeros(shape)
    return payload | {"optimizer": optimizer}


def _with_weights_of_width(payload: dict, width: float) -> dict:
    return payload | {"model": build_model(dict(payload["config"], width=width)).state_dict()}


# name: (damage, a word the one-line refusal must contain)
DAMAGED_LAST = {
    "negative epoch": (lambda p: p | {"epoch": -3}, "epoch=-3"),
    "epoch a string": (lambda p: p | {"epoch": "two"}, "epoch='two'"),
    "no epoch": (lambda p: {k: v for k, v in p.items() if k != "epoch"}, "epoch=None"),
    "epoch past metrics.jsonl": (lambda p: p | {"epoch": 50}, "epoch=50"),
    "no optimizer": (lambda p: {k: v for k, v in p.items() if k != "optimizer"}, "optimizer"),
    "optimizer a list": (lambda p: p | {"optimizer": [1, 2]}, "optimizer"),
    "momentum of another shape": (lambda p: _with_momentum_of_shape(p, (7,)), "momentum buffer"),
    "rng state of 3 bytes": (
        lambda p: p | {"rng": {"torch_cpu": torch.zeros(3, dtype=torch.uint8)}}, "rng.torch_cpu"),
    "rng a list": (lambda p: p | {"rng": [1]}, "'rng'"),
    "grad scaler a list": (lambda p: p | {"grad_scaler": [1]}, "'grad_scaler'"),
    "weights of another width": (lambda p: _with_weights_of_width(p, 0.125), "'model'"),
    "train_config a list": (lambda p: p | {"train_config": [1]}, "'train_config'"),
    "best accuracy NaN": (lambda p: p | {"best_val_robust_acc": float("nan")},
                          "best_val_robust_acc"),
}


def _run_files(folder: Path) -> dict[str, str]:
    """Every file of a run directory and its hash (the lock file is not one of them)."""
    return {p.name: _sha(p) for p in sorted(folder.iterdir()) if p.name != ".lock"}


def test_resume_refuses_every_damaged_last_pt_before_changing_any_file(straight_run, tmp_path):
    import shutil

    from harness.train import run_training

    good = load_checkpoint(straight_run[0] / "last.pt")
    for name, (damage, word) in DAMAGED_LAST.items():
        out = tmp_path / name.replace(" ", "-")
        shutil.copytree(straight_run[0], out)
        save_checkpoint(out / "last.pt", damage(dict(good)))
        before = _run_files(out)
        with pytest.raises(BadInput) as err:
            run_training(_tiny_cfg(epochs=3), out, resume=True, progress=False)
        message = str(err.value)
        assert "\n" not in message and word in message, (name, message)
        assert _run_files(out) == before, name  # DONE, metrics.jsonl, config.json untouched


def test_resume_of_an_intact_copy_runs(straight_run, tmp_path):
    """The refusals above come from the damage: the same copy, undamaged, resumes."""
    import shutil

    from harness.train import run_training

    out = tmp_path / "run"
    shutil.copytree(straight_run[0], out)
    rows = run_training(_tiny_cfg(epochs=3), out, resume=True, progress=False)
    assert [r["epoch"] for r in rows] == [1, 2, 3]


# --- one training process per run directory ------------------------------------------------------


def _hold_lock(folder: Path):
    import fcntl

    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_a_second_process_cannot_train_in_a_locked_run_directory(straight_run, tmp_path):
    import shutil

    from harness.train import run_training

    out = tmp_path / "run"
    shutil.copytree(straight_run[0], out)
    before = _run_files(out)
    fd = _hold_lock(out)  # another open file description: flock conflicts as across processes
    try:
        for flags in (dict(resume=True), dict(overwrite=True)):
            with pytest.raises(BadInput, match="another process is training in"):
                run_training(_tiny_cfg(), out, progress=False, **flags)
            assert _run_files(out) == before
    finally:
        os.close(fd)
    run_training(_tiny_cfg(epochs=3), out, resume=True, progress=False)  # free again
    os.close(_hold_lock(out))  # and released when the run returned


def test_the_lock_file_alone_does_not_make_a_run_directory(tmp_path):
    from harness.train import run_training

    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").touch()  # left by a run whose files were removed by hand
    rows = run_training(_tiny_cfg(epochs=1), out, progress=False)
    assert [r["epoch"] for r in rows] == [1]


# --- disk full mid-run ---------------------------------------------------------------------------


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("what_fails", ["every-fsync", "new-files"])
def test_disk_full_after_epoch_1_stops_the_run_and_keeps_epoch_1_checkpoints(
        straight_run, tmp_path, monkeypatch, what_fails):
    """Simulated: after epoch 1 every fsync (or every creation of a temporary file) fails with
    ENOSPC, as on a full disk. Running as root, chmod cannot make a folder unwritable, and no
    small tmpfs is available, so the failure is injected at the os level in-process."""
    import curvtools.fileio as checkpoint_module
    from curvtools.runfiles import read_metrics
    from harness.train import run_training

    out = tmp_path / "run"
    saved: dict[str, str] = {}

    def fill_disk_after_epoch_1(line: str) -> None:
        if line.startswith("epoch   1/"):
            saved.update({name: _sha(out / name) for name in ("best.pt", "last.pt")})
            if what_fails == "every-fsync":
                monkeypatch.setattr(os, "fsync", _enospc)
            else:
                monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", _enospc)

    with pytest.raises(OSError) as err:
        run_training(_tiny_cfg(), out, progress=False, log=fill_disk_after_epoch_1)
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC
    assert {name: _sha(out / name) for name in ("best.pt", "last.pt")} == saved
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert not list(out.glob(".*.tmp")) and not (out / "DONE").exists()
    # space freed: resuming gives exactly the uninterrupted run
    run_training(_tiny_cfg(), out, resume=True, progress=False)
    rows = read_metrics(out / "metrics.jsonl")
    assert _without_timings(rows) == _without_timings(straight_run[1])


# --- divergence ----------------------------------------------------------------------------------


def test_divergence_stops_clearly_and_best_and_last_stay_byte_identical_to_the_last_good_epoch(
        tmp_path):
    from curvtools.runfiles import read_metrics
    from harness.train import TrainingDiverged, run_training

    # lr 0.05 in epoch 1, then the milestone multiplies it by 2e7: NaN in epoch 2
    cfg = _tiny_cfg(lr_milestones=[1.0], lr_gamma=2e7, train_subset=200)
    out = tmp_path / "nan"
    saved: dict[str, str] = {}

    def remember_epoch_1_files(line: str) -> None:
        if line.startswith("epoch   1/"):
            saved.update({name: _sha(out / name) for name in ("best.pt", "last.pt")})

    with pytest.raises(TrainingDiverged) as err:
        run_training(cfg, out, progress=False, log=remember_epoch_1_files)
    message = str(err.value)
    assert "\n" not in message and "epoch 2" in message and "diverged" in message
    assert {name: _sha(out / name) for name in ("best.pt", "last.pt")} == saved
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1]
    assert not (out / "DONE").exists()


def _train_argv(out: Path, **over) -> list[str]:
    argv = ["train", "--out", str(out), "--no-progress"]
    for key, value in (TINY_RUN | over).items():
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        argv += [f"--{key.replace('_', '-')}", text]
    return argv


def _harness_train_or_skip():
    import typer

    from harness.cli import app, main

    if "train" not in getattr(typer.main.get_command(app), "commands", {}):
        pytest.skip("harness train is not registered in this build yet")
    return main


def test_harness_train_that_diverges_exits_3_with_one_line(tmp_path, capsys):
    main = _harness_train_or_skip()
    out = tmp_path / "nan"
    with pytest.raises(SystemExit) as exit_info:
        main(_train_argv(out, lr_milestones=[1.0], lr_gamma=2e7, train_subset=200))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 3, err
    assert err.startswith("error: ") and "\n" not in err and "diverged" in err, err
    assert load_checkpoint(out / "last.pt")["epoch"] == 1 and not (out / "DONE").exists()


def test_harness_train_on_a_full_disk_exits_1_with_one_line_and_keeps_epoch_1(
        tmp_path, monkeypatch, capsys):
    """The CLI's view of a disk that fills up in epoch 2: one ``error:`` line, no traceback."""
    import curvtools.fileio as checkpoint_module

    main = _harness_train_or_skip()
    out = tmp_path / "run"
    real_mkstemp = checkpoint_module.tempfile.mkstemp
    calls = {"n": 0}

    def mkstemp_until_disk_full(*args, **kwargs):
        # atomic writes: config.json, metrics.jsonl, then best.pt and last.pt of epoch 1
        calls["n"] += 1
        if calls["n"] > 4:
            _enospc()
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", mkstemp_until_disk_full)
    with pytest.raises(SystemExit) as exit_info:
        main(_train_argv(out))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1, err
    assert err.startswith("error: ") and "\n" not in err and "No space left" in err, err
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert load_checkpoint(out / "best.pt")["epoch"] == 1
    assert not list(out.glob(".*.tmp"))

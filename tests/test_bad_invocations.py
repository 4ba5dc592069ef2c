"""A catalogue of bad invocations of both CLIs: each exits 2 with one ``error:`` line on stderr
that names the problem, prints no traceback, and changes nothing on disk.

The CLIs run in-process (``curvtools.cli.main`` / ``harness.cli.main`` with argv lists), which is
much faster than a subprocess; one subprocess test proves the same in a real process. Commands
that are not registered in this build are skipped, never silently passed.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from curvtools.activations import resolve
from harness.checkpoint import save_checkpoint
from harness.models import build_model

REPO = Path(__file__).resolve().parents[1]


def _tiny_checkpoint(path: Path, dataset: str = "digits") -> None:
    config = {"arch": "preactresnet18", "act": resolve("relu").config(), "num_classes": 10,
              "in_channels": 1, "width": 1 / 16, "mean": [0.3], "std": [0.4]}
    torch.manual_seed(0)
    save_checkpoint(path, {"model": build_model(config).state_dict(), "config": config,
                           "epoch": 1, "metrics": {},
                           "train_config": {"dataset": dataset, "data_dir": "data"}})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A folder with an existing run, outputs and odd paths that no failing command may touch."""
    root = tmp_path_factory.mktemp("prepared")
    run = root / "run"
    run.mkdir()
    _tiny_checkpoint(run / "last.pt")
    _tiny_checkpoint(run / "best.pt")
    (run / "config.json").write_text('{"train_config": {"epochs": 3}}\n')
    (run / "metrics.jsonl").write_text('{"epoch": 1, "lr": 0.1}\n')
    _tiny_checkpoint(root / "missing-data.pt", dataset="imagefolder:/nonexistent/cifar10-jpg")
    _tiny_checkpoint(root / "bad-dataset.pt", dataset="cifar11")
    (root / "old.json").write_text('{"keep": "me"}\n')
    (root / "file.txt").write_text("a regular file, not a folder\n")
    (root / "empty").mkdir()
    other = root / "relu-digits"  # where `harness demo --out P` would put its relu run
    other.mkdir()
    (other / "config.json").write_text('{"train_config": {"act": "relu", "width": 1.0}}\n')
    (other / "metrics.jsonl").write_text('{"epoch": 1, "lr": 0.1}\n')
    partial = root / "partial"  # a run killed before its first checkpoint
    partial.mkdir()
    (partial / "config.json").write_text('{"train_config": {"epochs": 3}}\n')
    (partial / ".best.pt.x1y2z3.tmp").write_bytes(b"half a checkpoint")
    return root


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file()
                                       else "dir", p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


CKPT = "{P}/run/last.pt"
HESSIAN = ["hessian", "--ckpt", CKPT, "--device", "cpu"]
LEMMA = ["lemma", "--ckpt", CKPT, "--device", "cpu"]
SWEEP = ["sweep", "table1-cifar10", "--scale", "mini", "--dry-run", "--runs-dir", "{P}/runs"]
TRAIN = ["train", "--dataset", "digits", "--epochs", "1", "--device", "cpu", "--out",
         "{P}/new-run"]
EVAL = ["eval", "--ckpt", CKPT, "--device", "cpu", "--n", "10"]

# (id, program, argv, a word the error line must contain)
CASES = [
    # curvtools hessian
    ("hessian-n-zero", "curvtools", HESSIAN + ["--n", "0"], "--n"),
    ("hessian-n-negative", "curvtools", HESSIAN + ["--n", "-5"], "--n"),
    ("hessian-n-not-a-number", "curvtools", HESSIAN + ["--n", "many"], "--n"),
    ("hessian-batch-zero", "curvtools", HESSIAN + ["--batch", "0"], "--batch"),
    ("hessian-unknown-function", "curvtools", HESSIAN + ["--function", "hinge"], "hinge"),
    ("hessian-tol-zero", "curvtools", HESSIAN + ["--tol", "0"], "--tol"),
    ("hessian-tol-nan", "curvtools", HESSIAN + ["--tol", "nan"], "--tol"),
    ("hessian-max-iter-zero", "curvtools", HESSIAN + ["--max-iter", "0"], "--max-iter"),
    ("hessian-k-zero", "curvtools", HESSIAN + ["--k", "0"], "--k"),
    ("hessian-dtype-bf16", "curvtools", HESSIAN + ["--dtype", "bfloat16"], "bfloat16"),
    ("hessian-unknown-device", "curvtools", HESSIAN + ["--device", "tpu:3"], "tpu"),
    ("hessian-cuda-missing", "curvtools", HESSIAN + ["--device", "cuda"], "cuda"),
    ("hessian-missing-ckpt", "curvtools", ["hessian", "--ckpt", "{P}/nope.pt"], "nope.pt"),
    ("hessian-run-dir-without-ckpt", "curvtools", ["hessian", "--ckpt", "{P}/empty"], "empty"),
    ("hessian-json-in-missing-folder", "curvtools",
     HESSIAN + ["--json", "{P}/no/such/folder/h.json"], "folder"),
    ("hessian-json-is-a-folder", "curvtools", HESSIAN + ["--json", "{P}/empty"], "directory"),
    ("hessian-json-under-a-file", "curvtools", HESSIAN + ["--json", "{P}/file.txt/h.json"],
     "file.txt"),
    ("hessian-missing-data-directory", "curvtools",
     ["hessian", "--ckpt", "{P}/missing-data.pt", "--device", "cpu", "--n", "4"], "nonexistent"),
    ("hessian-bad-dataset-spec", "curvtools",
     ["hessian", "--ckpt", "{P}/bad-dataset.pt", "--device", "cpu", "--n", "4"], "cifar11"),
    ("hessian-unknown-option", "curvtools", HESSIAN + ["--frobnicate"], "--frobnicate"),
    # curvtools lemma (the checks run before any work)
    ("lemma-eps-max-negative", "curvtools", LEMMA + ["--eps-max", "-1"], "--eps-max"),
    ("lemma-eps-max-infinite", "curvtools", LEMMA + ["--eps-max", "inf"], "--eps-max"),
    ("lemma-zero-steps", "curvtools", LEMMA + ["--steps", "0"], "--steps"),
    ("lemma-zero-restarts", "curvtools", LEMMA + ["--restarts", "0"], "--restarts"),
    ("lemma-zero-bisect-steps", "curvtools", LEMMA + ["--bisect-steps", "0"], "--bisect-steps"),
    # a run directory stands for its last.pt (the one --ckpt rule); a folder without one is refused
    ("lemma-ckpt-is-a-folder", "curvtools", ["lemma", "--ckpt", "{P}/empty"], "empty"),
    ("eval-ckpt-is-a-folder", "harness", ["eval", "--ckpt", "{P}/empty"], "empty"),
    ("lemma-json-in-missing-folder", "curvtools", LEMMA + ["--json", "{P}/no/l.json"], "folder"),
    # curvtools curvature / twolayer (activation registry through the CLI)
    ("curvature-unknown-activation", "curvtools", ["curvature", "--act", "swishy"], "swishy"),
    ("curvature-negative-beta", "curvtools", ["curvature", "--act", "pswish", "--beta", "-1"],
     "beta"),
    ("curvature-nan-k", "curvtools", ["curvature", "--act", "leakyrelu", "--k", "nan"], "k"),
    ("curvature-infinite-beta", "curvtools", ["curvature", "--act", "pswish", "--beta", "inf"],
     "beta"),
    ("curvature-k-for-silu", "curvtools", ["curvature", "--act", "silu", "--k", "0.3"], "k"),
    ("curvature-bad-expr-syntax", "curvtools", ["curvature", "--act", "expr", "--expr", "x +* 2"],
     "expr"),
    ("curvature-expr-with-code", "curvtools",
     ["curvature", "--act", "expr", "--expr", "__import__('os').system('touch PWNED')"], "expr"),
    ("twolayer-unknown-activation", "curvtools", ["twolayer", "--act", "swishy"], "swishy"),
    # harness sweep (TrainConfig validation through --set, before anything is planned)
    ("sweep-unknown-spec", "harness", ["sweep", "table9", "--dry-run"], "table9"),
    ("sweep-unknown-scale", "harness", SWEEP + ["--scale", "huge"], "huge"),
    ("sweep-lr-zero", "harness", SWEEP + ["--set", "lr=0"], "lr"),
    ("sweep-negative-epochs", "harness", SWEEP + ["--set", "epochs=-3"], "epochs"),
    ("sweep-unknown-activation", "harness", SWEEP + ["--set", "act=swishy"], "swishy"),
    ("sweep-bad-wrn-depth", "harness", SWEEP + ["--set", "arch=wrn-27-2"], "wrn-27-2"),
    ("sweep-unknown-arch", "harness", SWEEP + ["--set", "arch=vgg16"], "vgg16"),
    ("sweep-negative-eps", "harness", SWEEP + ["--set", "eps_255=-8"], "eps_255"),
    ("sweep-zero-steps", "harness", SWEEP + ["--set", "train_steps=0"], "train_steps"),
    ("sweep-bad-dataset-spec", "harness", SWEEP + ["--set", "dataset=cifar11"], "cifar11"),
    ("sweep-unknown-setting", "harness", SWEEP + ["--set", "learning_rate=0.1"],
     "learning_rate"),
    ("sweep-set-without-value", "harness", SWEEP + ["--set", "lr"], "lr"),
    ("sweep-unknown-executor", "harness", SWEEP + ["--executor", "slurmx"], "slurmx"),
    ("sweep-unknown-run", "harness", SWEEP + ["--only", "swishy"], "swishy"),
    # harness train
    ("train-unknown-activation", "harness", TRAIN + ["--act", "swishy"], "swishy"),
    ("train-bad-beta", "harness", TRAIN + ["--act", "pswish", "--beta", "0"], "beta"),
    ("train-negative-eps", "harness", TRAIN + ["--eps-255", "-8"], "eps"),
    ("train-zero-steps", "harness", TRAIN + ["--train-steps", "0"], "steps"),
    ("train-batch-larger-than-data", "harness",
     TRAIN + ["--train-subset", "100", "--batch-size", "500"], "batch"),
    ("train-missing-data-directory", "harness",
     TRAIN + ["--dataset", "imagefolder:{P}/no-such-data"], "no-such-data"),
    ("train-bad-dataset-spec", "harness", TRAIN + ["--dataset", "cifar11"], "cifar11"),
    ("train-existing-run-directory", "harness",
     ["train", "--dataset", "digits", "--device", "cpu", "--out", "{P}/run"], "run"),
    ("train-out-under-a-file", "harness",
     ["train", "--dataset", "digits", "--device", "cpu", "--out", "{P}/file.txt/run"], "file.txt"),
    ("train-resume-before-first-checkpoint", "harness",
     ["train", "--out", "{P}/partial", "--resume", "--device", "cpu"], "--overwrite"),
    ("train-json-is-a-folder", "harness", TRAIN + ["--json", "{P}/empty"], "empty"),
    ("train-unknown-arch", "harness", TRAIN + ["--arch", "vgg16"], "vgg16"),
    ("train-bad-wrn-depth", "harness", TRAIN + ["--arch", "wrn-27-2"], "wrn-27-2"),
    ("train-negative-epochs", "harness", TRAIN + ["--epochs", "-1"], "epochs"),
    ("train-lr-zero", "harness", TRAIN + ["--lr", "0"], "lr"),
    ("train-bad-expr", "harness", TRAIN + ["--act", "expr", "--expr", "x +* 2"], "expr"),
    # harness eval
    ("eval-zero-steps", "harness", EVAL + ["--steps", "0"], "steps"),
    ("eval-zero-restarts", "harness", EVAL + ["--restarts", "0"], "restarts"),
    ("eval-negative-eps", "harness", EVAL + ["--eps-255", "-1"], "eps"),
    ("eval-unknown-attack", "harness", EVAL + ["--attack", "fgsm9"], "fgsm9"),
    ("eval-missing-ckpt", "harness", ["eval", "--ckpt", "{P}/nope.pt"], "nope.pt"),
    ("eval-json-is-a-folder", "harness", EVAL + ["--json", "{P}/empty"],
     "empty"),
    # output paths never replace an input or a run file; seeds fit numpy/torch (0 <= s < 2**63)
    ("eval-json-is-its-checkpoint", "harness", EVAL + ["--json", CKPT], "input"),
    ("eval-json-is-a-run-file", "harness", EVAL + ["--json", "{P}/run/metrics.jsonl"],
     "run file"),
    ("eval-json-config-of-the-run", "harness", EVAL + ["--json", "{P}/run/config.json"],
     "run file"),
    ("eval-seed-negative", "harness", EVAL + ["--seed", "-1"], "--seed"),
    ("eval-seed-too-large", "harness", EVAL + ["--seed", str(2**63)], "--seed"),
    ("train-seed-too-large", "harness", TRAIN + ["--seed", "100000000000000000000000"],
     "--seed"),
    ("train-split-seed-negative", "harness", TRAIN + ["--split-seed", "-1"], "--split-seed"),
    ("train-json-is-a-checkpoint-name", "harness", TRAIN + ["--json", "{P}/x.pt"], "run file"),
    ("train-json-into-its-own-run", "harness", TRAIN + ["--json", "{P}/new-run/config.json"],
     "run file"),
    ("train-json-in-missing-folder", "harness", TRAIN + ["--json", "{P}/no/t.json"], "folder"),
    ("train-expr-without-expr", "harness", TRAIN + ["--act", "expr"], "--expr"),
    ("demo-would-replace-another-run", "harness",
     ["demo", "--act", "relu", "--epochs", "1", "--out", "{P}"], "demo"),
    ("demo-unknown-second-activation", "harness",
     ["demo", "--act", "relu", "--act", "swishy", "--out", "{P}/demo"], "swishy"),
    ("demo-seed-negative", "harness", ["demo", "--seed", "-1"], "--seed"),
    ("hessian-csv-is-its-checkpoint", "curvtools", HESSIAN + ["--csv", CKPT], "input"),
    ("hessian-json-is-a-checkpoint-of-the-run-dir", "curvtools",
     ["hessian", "--ckpt", "{P}/run", "--json", "{P}/run/best.pt"], "input"),
    ("hessian-csv-is-a-run-file", "curvtools", HESSIAN + ["--csv", "{P}/run/metrics.jsonl"],
     "run file"),
    ("hessian-plot-txt", "curvtools", HESSIAN + ["--plot", "{P}/h.txt"], ".png"),
    ("hessian-plot-without-suffix", "curvtools", HESSIAN + ["--plot", "{P}/h"], ".png"),
    ("hessian-tol-one", "curvtools", HESSIAN + ["--tol", "1"], "--tol"),
    ("hessian-tol-inf", "curvtools", HESSIAN + ["--tol", "inf"], "--tol"),
    ("hessian-seed-negative", "curvtools", HESSIAN + ["--seed", "-1"], "--seed"),
    ("hessian-seed-too-large", "curvtools", HESSIAN + ["--seed", "100000000000000000000000"],
     "--seed"),
    ("lemma-tol-one", "curvtools", LEMMA + ["--tol", "1"], "--tol"),
    ("lemma-tol-inf", "curvtools", LEMMA + ["--tol", "inf"], "--tol"),
    ("lemma-seed-negative", "curvtools", LEMMA + ["--seed", "-1"], "--seed"),
    ("lemma-json-is-its-checkpoint", "curvtools", LEMMA + ["--json", CKPT], "input"),
    ("twolayer-seed-too-large", "curvtools",
     ["twolayer", "--act", "silu", "--seed", "100000000000000000000000"], "--seed"),
    ("curvature-expr-without-expr", "curvtools", ["curvature", "--act", "expr"], "--expr"),
    ("sweep-json-is-a-folder", "harness", SWEEP + ["--json", "{P}/empty"], "directory"),
    ("sweep-json-in-missing-folder", "harness", SWEEP + ["--json", "{P}/no/plan.json"],
     "folder"),
    ("sweep-runs-dir-is-a-file", "harness",
     ["sweep", "table1-cifar10", "--scale", "mini", "--dry-run", "--runs-dir", "{P}/file.txt"],
     "file.txt"),
    ("paper-figs-json-is-a-folder", "paper_figs",
     ["--runs-dir", "{P}/runs", "--out", "{P}/figs", "--json", "{P}/empty"], "directory"),
    ("paper-figs-out-is-a-file", "paper_figs", ["--runs-dir", "{P}/runs", "--out", "{P}/file.txt"],
     "file.txt"),
]


def _main_and_app(prog: str):
    if prog == "paper_figs":  # one command: argv holds only its options
        from curvtools.clirun import run_app
        from paper_figs.__main__ import app

        return (lambda argv: run_app(app, "python -m paper_figs", argv)), None
    if prog == "curvtools":
        from curvtools.cli import app, main
    else:
        from harness.cli import app, main
    return main, app


def _registered(app, command: str) -> bool:
    import typer

    group = typer.main.get_command(app)  # a one-command app is no group: nothing to address
    return command in getattr(group, "commands", {})


@pytest.mark.parametrize("case_id,prog,argv,word", CASES, ids=[c[0] for c in CASES])
def test_bad_invocation_exits_2_with_one_line_and_touches_nothing(case_id, prog, argv, word,
                                                                  prepared, capsys, monkeypatch):
    main, app = _main_and_app(prog)
    if app is not None and not _registered(app, argv[0]):
        pytest.skip(f"{prog} {argv[0]} is not registered in this build yet")
    if argv[0] == "lemma":
        pytest.importorskip("curvtools.lemma")
    monkeypatch.chdir(prepared)  # stray relative writes would show in the snapshot
    before = _snapshot(prepared)
    args = [a.replace("{P}", str(prepared)) for a in argv]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert exit_info.value.code == 2, (args, captured.out[-500:], err[-2000:])
    assert err.startswith("error: ") and "\n" not in err, err[-2000:]
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    if not case_id.endswith("unknown-option"):  # a misspelt option must not pass by accident
        assert "No such option" not in err and "No such command" not in err, err
    assert word.lower() in err.lower(), (word, err)
    assert _snapshot(prepared) == before
    assert not (prepared / "PWNED").exists()


def test_catalogue_has_at_least_25_bad_invocations():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


def test_a_real_process_prints_one_line_and_no_traceback(prepared):
    result = subprocess.run(
        [sys.executable, "-m", "curvtools.cli", "hessian", "--ckpt", str(prepared / "nope.pt")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and "nope.pt" in result.stderr

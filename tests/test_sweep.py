"""harness sweep: specs parse, planning skips finished runs and resumes unfinished ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curvtools.errors import BadInput
from harness import sweep as sweep_mod
from harness.config import TrainConfig
from harness.specs import REPO_ROOT, bundled_spec_names, load_spec, parse_spec, run_dir
from harness.sweep import LocalExecutor, parse_settings, plan_sweep

SPEC = {
    "name": "toy",
    "description": "five runs in five states",
    "defaults": {"dataset": "digits", "arch": "preactresnet18", "width": 0.125, "epochs": 4},
    "runs": [{"name": n, "overrides": {"act": a}} for n, a in
             [("done", "relu"), ("alldone", "silu"), ("half", "gelu"), ("crashed", "mish"),
              ("new", "lisht")]],
    "resources": {"gpus": 1, "hours": 0.1},
    "scales": {"mini": {"defaults": {"epochs": 2}, "only": ["done", "new"]}},
}


def fake_config(settings):
    """Stands in for TrainConfig.from_dict: a plain dict, no validation, no torch."""
    return dict(settings)


def write_run(path: Path, act: str, epochs_done: int, *, done=False, last=False, rows=True):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(
        {"train_config": {"dataset": "digits", "act": act, "epochs": 4, "device": "cpu"}}))
    if rows:
        (path / "metrics.jsonl").write_text(
            "".join(json.dumps({"epoch": e, "test_robust_acc": 0.1}) + "\n"
                    for e in range(1, epochs_done + 1)))
    if done:
        (path / "DONE").write_text("{}")
    if last:
        (path / "last.pt").write_bytes(b"checkpoint")


@pytest.fixture
def toy(tmp_path):
    spec = parse_spec(SPEC, "toy.json")
    runs = tmp_path / "runs"
    d = lambda name: run_dir(runs, "paper", "toy", name)  # noqa: E731
    write_run(d("done"), "relu", 4, done=True, last=True)
    write_run(d("alldone"), "silu", 4, last=True)  # all epochs in metrics.jsonl, no DONE
    write_run(d("half"), "gelu", 2, last=True)
    write_run(d("crashed"), "mish", 0, rows=False)  # died in epoch 1: config.json only
    return spec, runs


def test_plan_skips_finished_resumes_unfinished_and_starts_missing(toy):
    spec, runs = toy
    plan = plan_sweep(spec, runs, config_builder=fake_config)
    status = {p.name: (p.status, p.epochs_done, p.epochs_total) for p in plan}
    assert status == {"done": ("finished", 4, 4), "alldone": ("finished", 4, 4),
                      "half": ("resume", 2, 4), "crashed": ("restart", 0, 4),
                      "new": ("start", 0, 4)}
    assert [p.needs_work for p in plan] == [False, False, True, True, True]
    assert plan[4].out_dir == runs / "paper" / "toy" / "new"


def test_local_executor_runs_only_unfinished_runs_with_the_right_flags(toy):
    spec, runs = toy
    calls = []

    def fake_runner(cfg, out_dir, *, resume, overwrite, progress):
        calls.append((cfg["act"], Path(out_dir).name, resume, overwrite))

    plan = plan_sweep(spec, runs, config_builder=fake_config)
    ran = LocalExecutor(runner=fake_runner, log=lambda s: None).execute(plan)
    assert ran == ["half", "crashed", "new"]
    assert calls == [("gelu", "half", True, False), ("mish", "crashed", False, True),
                     ("lisht", "new", False, False)]


def test_keep_going_records_a_failed_run_and_runs_the_next(toy):
    spec, runs = toy
    calls = []

    def flaky_runner(cfg, out_dir, **kw):
        calls.append(Path(out_dir).name)
        if Path(out_dir).name == "half":
            raise RuntimeError("training diverged")

    plan = plan_sweep(spec, runs, config_builder=fake_config)
    with pytest.raises(RuntimeError):
        LocalExecutor(runner=flaky_runner, log=lambda s: None).execute(plan)
    assert calls == ["half"]
    executor = LocalExecutor(runner=flaky_runner, log=lambda s: None, keep_going=True)
    assert executor.execute(plan) == ["crashed", "new"]
    assert executor.failed == {"half": "RuntimeError: training diverged"}


def test_a_directory_holding_another_run_is_a_conflict_and_nothing_runs(toy):
    spec, runs = toy
    other = run_dir(runs, "paper", "toy", "new")
    write_run(other, "relu", 1, last=True)  # the spec says lisht
    plan = plan_sweep(spec, runs, config_builder=fake_config)
    assert plan[-1].status == "conflict" and "act" in plan[-1].detail
    calls = []
    with pytest.raises(BadInput, match="holds a different run"):
        LocalExecutor(runner=lambda *a, **k: calls.append(a), log=lambda s: None).execute(plan)
    assert calls == []


def test_resumable_settings_may_differ_without_conflict(toy):
    spec, runs = toy
    plan = plan_sweep(spec, runs, settings={"device": "cuda", "epochs": 6},
                      config_builder=fake_config)
    assert {p.name: p.status for p in plan}["alldone"] == "resume"  # 4 of 6 epochs: go on


def test_done_marker_of_a_shorter_run_does_not_count_as_finished(toy):
    spec, runs = toy
    (run_dir(runs, "paper", "toy", "done") / "DONE").write_text('{"epochs": 4}')
    status = lambda plan: {p.name: p.status for p in plan}["done"]  # noqa: E731
    assert status(plan_sweep(spec, runs, config_builder=fake_config)) == "finished"
    longer = plan_sweep(spec, runs, settings={"epochs": 8}, config_builder=fake_config)
    assert status(longer) == "resume"


def test_scale_applies_its_overrides_and_run_subset(tmp_path):
    spec = parse_spec(SPEC, "toy.json")
    plan = plan_sweep(spec, tmp_path, scale="mini", config_builder=fake_config)
    assert [(p.name, p.config["epochs"]) for p in plan] == [("done", 2), ("new", 2)]
    assert plan[0].out_dir == tmp_path / "mini" / "toy" / "done"
    with pytest.raises(BadInput, match="no scale 'huge'"):
        plan_sweep(spec, tmp_path, scale="huge", config_builder=fake_config)
    with pytest.raises(BadInput, match="--only 'nope'"):
        plan_sweep(spec, tmp_path, only=["nope"], config_builder=fake_config)


@pytest.mark.parametrize("name", bundled_spec_names())
def test_bundled_specs_build_valid_train_configs_at_every_scale(name, tmp_path):
    spec = load_spec(name)
    assert spec.runs and spec.resources.get("gpus") == 1 and spec.resources.get("hours")
    for scale in spec.scale_names():
        plan = plan_sweep(spec, tmp_path, scale=scale)
        assert plan and all(isinstance(p.config, TrainConfig) for p in plan)
        assert all(p.status == "start" for p in plan)
        assert len({p.out_dir for p in plan}) == len(plan)


def test_mini_scale_reads_the_jpeg_copy_beside_the_checkout(tmp_path):
    plan = plan_sweep("table1-cifar10", tmp_path, scale="mini")
    expected = (REPO_ROOT / ".." / "shared" / "data" / "cifar10-jpg").resolve()
    assert {p.config.dataset for p in plan} == {f"imagefolder:{expected}"}
    moved = plan_sweep("table1-cifar10", tmp_path, scale="mini",
                       settings={"dataset": "imagefolder:data/jpg"}, config_builder=fake_config)
    assert moved[0].config["dataset"] == f"imagefolder:{Path.cwd() / 'data' / 'jpg'}"
    cfg = plan[0].config
    assert (cfg.train_subset, cfg.width, cfg.train_steps, cfg.epochs) == (1000, 0.25, 5, 60)
    assert [p.config.act for p in plan] == ["relu", "lisht", "gelu", "mish", "silu"]


def test_malformed_specs_raise_bad_input_with_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "runs": []}')
    with pytest.raises(BadInput, match="'runs' must be a non-empty list"):
        load_spec(bad)
    with pytest.raises(BadInput, match="unknown spec 'nope'"):
        load_spec("nope")
    with pytest.raises(BadInput, match="repeated"):
        parse_spec({"name": "x", "runs": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(BadInput, match="unknown training setting"):
        plan_sweep(parse_spec({"name": "x", "runs": [{"name": "a",
                                                      "overrides": {"lrr": 1}}]}), tmp_path)


@pytest.mark.parametrize("name", [".", "..", "a\u0000b", "a/b", "a\\b", ""])
def test_spec_and_run_names_must_be_single_folder_names(name):
    with pytest.raises(BadInput) as err:
        parse_spec({"name": "x", "runs": [{"name": name}]})
    assert "\n" not in str(err.value)
    with pytest.raises(BadInput, match="'name'"):
        parse_spec({"name": name, "runs": [{"name": "a"}]})


def test_a_spec_file_that_is_not_utf8_is_bad_input(tmp_path):
    bad = tmp_path / "latin1.json"
    bad.write_bytes('{"name": "caf\u00e9", "runs": [{"name": "a"}]}'.encode("latin-1"))
    with pytest.raises(BadInput, match=r"is not UTF-8 text \(byte 13\)"):
        load_spec(bad)


def test_a_directory_holding_only_the_lock_file_is_started_not_restarted(tmp_path):
    from curvtools.runfiles import RUN_LOCK

    assert sweep_mod.RUN_LOCK == RUN_LOCK
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / RUN_LOCK).touch()
    assert sweep_mod.run_status(tmp_path / "run", 3, fake_config({"act": "relu"}))[0] == "start"


def test_parse_settings_reads_json_values_and_rejects_missing_equals():
    assert parse_settings(["epochs=1", "device=cpu", "lr_milestones=[1, 2]"]) == {
        "epochs": 1, "device": "cpu", "lr_milestones": [1, 2]}
    with pytest.raises(BadInput, match="KEY=VALUE"):
        parse_settings(["epochs"])


def sweep_cli(argv: list[str]) -> None:
    """``harness sweep ...`` through an app holding only the sweep command (as a group)."""
    from curvtools.clirun import new_app, run_app
    from harness import cli_sweep

    app = new_app("test")
    app.callback()(lambda: None)  # keep it a command group even with one command
    cli_sweep.register(app)
    run_app(app, "harness", argv)


def test_cli_dry_run_prints_the_plan_and_trains_nothing(toy, tmp_path, capsys, monkeypatch):
    spec, runs = toy
    spec_file = tmp_path / "toy.json"
    spec_file.write_text(json.dumps(SPEC))
    monkeypatch.setattr(sweep_mod, "default_runner", lambda *a, **k: pytest.fail("trained"))
    sweep_cli(["sweep", str(spec_file), "--runs-dir", str(runs), "--dry-run",
          "--json", str(tmp_path / "plan.json")])
    out = capsys.readouterr().out
    assert "2 finished, 1 resume, 1 start, 1 restart" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [r["status"] for r in plan["plan"]] == ["finished", "finished", "resume", "restart",
                                                   "start"]


def test_cli_runs_missing_runs_through_the_runner(toy, tmp_path, capsys, monkeypatch):
    spec, runs = toy
    spec_file = tmp_path / "toy.json"
    spec_file.write_text(json.dumps(SPEC))
    calls = []
    monkeypatch.setattr(sweep_mod, "default_runner",
                        lambda cfg, out_dir, **kw: calls.append((cfg.act, cfg.epochs, kw)))
    sweep_cli(["sweep", str(spec_file), "--runs-dir", str(runs), "--only", "new", "--only", "half",
          "--set", "device=cpu", "--no-progress"])
    assert calls == [("gelu", 4, {"resume": True, "overwrite": False, "progress": False}),
                     ("lisht", 4, {"resume": False, "overwrite": False, "progress": False})]


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        sweep_cli(["sweep", "table1-cifar100", "--scale", "mini", "--runs-dir", str(tmp_path)])
    assert err.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert not any(tmp_path.iterdir())


def test_cli_diverged_run_is_one_line_and_exit_3(toy, tmp_path, capsys, monkeypatch):
    from harness.train import TrainingDiverged

    spec, runs = toy
    spec_file = tmp_path / "toy.json"
    spec_file.write_text(json.dumps(SPEC))

    def diverge(cfg, out_dir, **kw):
        raise TrainingDiverged("training diverged: non-finite training loss in epoch 3")

    monkeypatch.setattr(sweep_mod, "default_runner", diverge)
    with pytest.raises(SystemExit) as err:
        sweep_cli(["sweep", str(spec_file), "--runs-dir", str(runs), "--only", "new"])
    assert err.value.code == 3
    assert capsys.readouterr().err.count("\n") == 1


def test_seeds_plan_each_run_per_seed_and_seed_0_keeps_the_old_folder(toy):
    spec, runs = toy
    plan = plan_sweep(spec, runs, only=["done", "new"], seeds=[0, 2],
                      config_builder=fake_config)
    assert [(p.name, p.seed, p.config["seed"], p.status) for p in plan] == [
        ("done", 0, 0, "finished"), ("done-seed2", 2, 2, "start"),
        ("new", 0, 0, "start"), ("new-seed2", 2, 2, "start")]
    assert plan[1].out_dir == runs / "paper" / "toy" / "done-seed2"
    with pytest.raises(BadInput, match="use --seeds"):
        plan_sweep(spec, runs, settings={"seed": 3}, config_builder=fake_config)


def test_spec_and_scale_seeds_fields_choose_the_default_seeds(tmp_path):
    raw = {**SPEC, "seeds": [0, 1],
           "scales": {"mini": {"defaults": {"epochs": 2}, "seeds": [0, 1, 2]}}}
    spec = parse_spec(raw, "toy.json")
    assert spec.seeds_for("paper") == (0, 1) and spec.seeds_for("mini") == (0, 1, 2)
    assert len(plan_sweep(spec, tmp_path, scale="mini", config_builder=fake_config)) == 15
    for bad in ([], [1, 1], [-1], "x", [True]):
        with pytest.raises(BadInput, match="seeds"):
            parse_spec({**SPEC, "seeds": bad}, "toy.json")


def test_cli_seeds_option_and_manifest_lists_runs_seeds_and_overrides(toy, tmp_path,
                                                                      monkeypatch):
    spec, runs = toy
    spec_file = tmp_path / "toy.json"
    spec_file.write_text(json.dumps(SPEC))
    calls = []
    monkeypatch.setattr(sweep_mod, "default_runner",
                        lambda cfg, out_dir, **kw: calls.append((cfg.seed, Path(out_dir).name)))
    sweep_cli(["sweep", str(spec_file), "--runs-dir", str(runs), "--only", "new", "--seeds",
               "0,1", "--set", "device=cpu", "--no-progress"])
    assert calls == [(0, "new"), (1, "new-seed1")]
    manifest = json.loads((runs / "paper" / "toy" / "spec.json").read_text())
    assert manifest["spec"] == "toy" and manifest["scale"] == "paper"
    assert manifest["seeds"] == [0, 1] and manifest["overrides"] == {"device": "cpu"}
    assert [r["name"] for r in manifest["runs"]] == ["done", "alldone", "half", "crashed", "new"]
    assert manifest["runs"][4]["paper"]["act"] == "lisht"
    assert manifest["runs"][4]["folders"] == {"0": "new", "1": "new-seed1"}
    assert manifest["runs"][4]["scale_settings"]["epochs"] == 4
    with pytest.raises(SystemExit) as err:
        sweep_cli(["sweep", str(spec_file), "--runs-dir", str(runs), "--seeds", "0,x"])
    assert err.value.code == 2


def test_manifest_is_written_when_every_run_is_finished_but_not_on_dry_run(toy, tmp_path):
    spec, runs = toy
    spec_file = tmp_path / "toy.json"
    spec_file.write_text(json.dumps(SPEC))
    sweep_cli(["sweep", str(spec_file), "--runs-dir", str(runs), "--only", "done", "--dry-run"])
    assert not (runs / "paper" / "toy" / "spec.json").exists()
    sweep_cli(["sweep", str(spec_file), "--runs-dir", str(runs), "--only", "done",
               "--no-progress"])
    assert (runs / "paper" / "toy" / "spec.json").is_file()


def test_the_sweep_does_not_import_paper_figs():
    import subprocess
    import sys

    code = ("import sys, harness.sweep, harness.cli_sweep, harness.executors, harness.specs; "
            "print(sorted(m for m in sys.modules if m.startswith('paper_figs')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", ["table1-cifar10", "table2-pswish", "table3-leakyrelu",
                                  "curvature-sweep"])
def test_gpu_mini_scale_is_the_papers_model_on_a_subset(name, tmp_path):
    plan = plan_sweep(name, tmp_path, scale="gpu-mini")
    for p in plan:
        c = p.config
        assert (c.arch, c.width, c.train_steps, c.eps_255, c.alpha_255) == (
            "preactresnet18", 1.0, 10, 8.0, 2.0)
        assert (c.train_subset, c.val_subset, c.test_subset, c.epochs) == (2000, 500, 1000, 80)
        assert list(c.lr_milestones) == [40, 60] and c.eval_steps == 10
        assert (c.hessian_every, c.hessian_examples, c.save_every, c.precision) == (
            10, 32, 20, "auto")
        assert c.dataset.startswith("imagefolder:") and c.dataset.endswith("cifar10-jpg")


def test_curvature_sweep_spans_pswish_beta_and_leakyrelu_k():
    spec = load_spec("curvature-sweep")
    cfgs = [c for _, c in spec.run_configs("paper")]
    assert [c["beta"] for c in cfgs if c["act"] == "pswish"] == [0.25, 0.5, 1, 2, 4, 10, 20, 40]
    assert [c["k"] for c in cfgs if c["act"] == "leakyrelu"] == [0.8, 0.5, 0.3, 0, -0.2, -0.5]
    assert all(c["epochs"] == 200 and c["train_steps"] == 10 for c in cfgs)


@pytest.mark.parametrize("name", bundled_spec_names())
def test_every_bundled_spec_dry_runs_at_every_scale(name, tmp_path, capsys):
    for scale in load_spec(name).scale_names():
        sweep_cli(["sweep", name, "--scale", scale, "--runs-dir", str(tmp_path / "runs"),
                   "--dry-run", "--seeds", "0,1"])
        out = capsys.readouterr().out
        assert f"scale {scale}, seeds 0,1" in out and " start " in out
    assert not (tmp_path / "runs").exists()

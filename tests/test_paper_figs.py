"""paper_figs renders every figure and table from fixture run directories with known metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from harness.specs import bundled_spec_names, load_spec, run_dir
from paper_figs import paper_numbers
from paper_figs.entries import ENTRIES, render_all
from paper_figs.rundir import hessian_points, load_run
from paper_figs.runsets import Context
from paper_figs.tables import fit_regime, table1_lines

EPOCHS = 6
BEST_EPOCH = 3  # the fixture's val robust accuracy peaks here


def fixture_rows(seed: float, epochs: int = EPOCHS, hessian: bool = False) -> list[dict]:
    """Metrics rows with distinct, known values: accuracies depend on (seed, epoch)."""
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "lr": 0.1, "train_seconds": 1.0, "eval_seconds": 0.5}
        for part, base in (("train", 0.30), ("val", 0.20), ("test", 0.15)):
            for kind, offset in (("clean", 0.40), ("robust", 0.0)):
                acc = base + offset + 0.01 * seed + 0.02 * e
                if part != "train":  # val/test robust peak at BEST_EPOCH (robust overfitting)
                    acc = base + offset + 0.01 * seed + 0.02 * min(e, 2 * BEST_EPOCH - e)
                row[f"{part}_{kind}_acc"] = round(acc, 6)
                row[f"{part}_{kind}_loss"] = round(2.0 - acc, 6)
        if hessian and e % 2 == 0:
            row["hessian_lambda_max_mean"] = 10.0 * seed + e
            row["hessian_lambda_max_median"] = 9.0 * seed + e
        rows.append(row)
    return rows


def write_run(path: Path, rows: list[dict], epochs_total: int = EPOCHS, done: bool = True,
              extra: dict | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"epochs": epochs_total, **(extra or {})}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if done:
        (path / "DONE").write_text("")


def populate(runs_dir: Path, scale: str = "paper", skip: tuple[str, ...] = ()) -> dict:
    """Write a finished fixture run for every run of every bundled spec; returns the seeds."""
    seeds = {}
    for i, spec_name in enumerate(bundled_spec_names()):
        spec = load_spec(spec_name)
        if scale not in spec.scale_names():
            continue
        for j, name in enumerate(spec.run_names(scale)):
            key = f"{spec_name}/{name}"
            if key in skip:
                continue
            seeds[key] = seed = float(i + j)
            write_run(run_dir(runs_dir, scale, spec_name, name),
                      fixture_rows(seed, hessian=spec_name == "table1-cifar10"))
    return seeds


@pytest.fixture
def fake_plot(monkeypatch):
    """A stand-in for curvtools.figures.plot_activation_derivatives that records its calls."""
    import sys
    import types

    calls = []

    def plot_activation_derivatives(activations, path):
        calls.append(([a.label for a in activations], Path(path)))
        Path(path).write_bytes(b"figure")

    module = types.ModuleType("curvtools.figures")
    module.plot_activation_derivatives = plot_activation_derivatives
    monkeypatch.setitem(sys.modules, "curvtools.figures", module)
    return calls


def test_every_entry_renders_from_complete_fixture_runs(tmp_path, fake_plot):
    populate(tmp_path / "runs")
    results = render_all(Context(tmp_path / "runs", tmp_path / "out"))
    assert [r.name for r in results] == [e.name for e in ENTRIES]
    for r in results:
        assert r.outputs, f"{r.name} rendered nothing"
        assert not r.missing, f"{r.name} reports missing runs {r.missing}"
        for path in r.outputs:
            assert path.is_file() and path.stat().st_size > 0
    # fig6 (LeakyReLU) is drawn by paper_figs itself: its f'' panel shows the kink |1 - k|
    assert {labels[0] for labels, _ in fake_plot} >= {"relu", "pswish(beta=0.5)"}


def test_table1_numbers_equal_the_fixture_metrics_in_percent(tmp_path):
    seeds = populate(tmp_path / "runs")
    ctx = Context(tmp_path / "runs", tmp_path / "out")
    lines = table1_lines(ctx)
    assert len(lines) == 10
    for ln in lines:
        rows = fixture_rows(seeds[ln.run])
        last, best = rows[-1], rows[BEST_EPOCH - 1]
        assert ln.meta["best_val_epoch"] == BEST_EPOCH
        for kind, key in (("robust", "robust"), ("standard", "clean")):
            ours = ln.ours[kind]
            assert ours["final_train"] == pytest.approx(100 * last[f"train_{key}_acc"])
            assert ours["final_test"] == pytest.approx(100 * last[f"test_{key}_acc"])
            # Best Val = TEST accuracy at the epoch of best VALIDATION robust accuracy
            assert ours["best_val"] == pytest.approx(100 * best[f"test_{key}_acc"])
            assert ours["diff"] == pytest.approx(ours["final_train"] - ours["final_test"])
        dataset, act = ln.run.split("/")
        assert ln.paper == paper_numbers.TABLE1[dataset.removeprefix("table1-")][act]


def test_table_csv_and_markdown_carry_ours_and_paper_numbers(tmp_path):
    seeds = populate(tmp_path / "runs")
    results = render_all(Context(tmp_path / "runs", tmp_path / "out"),
                         only=["table1", "table2", "table3"])
    assert all(r.outputs for r in results)
    with (tmp_path / "out" / "table2.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["0.5", "1", "2", "4", "10"]
    for row in rows:
        last = fixture_rows(seeds[row["run"]])[-1]
        assert float(row["ours_robust_final_test"]) == pytest.approx(
            100 * last["test_robust_acc"], abs=1e-4)
        assert float(row["paper_robust_final_test"]) == paper_numbers.TABLE2[
            float(row["label"])]["robust"]["final_test"]
        assert row["status"] == "finished"
        assert row["regime"] == fit_regime(100 * last["train_clean_acc"])
    md = (tmp_path / "out" / "table3.md").read_text()
    assert "(48.16)" in md  # the paper's k = -0.2 robust final test beside ours
    assert "Regime" in md and "Best Val" not in md.split("\n")[2]


def test_eval_json_is_preferred_for_final_test_and_footnoted(tmp_path):
    populate(tmp_path / "runs")
    relu = run_dir(tmp_path / "runs", "paper", "table1-cifar10", "relu")
    (relu / "eval_last.json").write_text(json.dumps(
        {"robust_acc": 0.4321, "clean_acc": 0.8765, "steps": 20, "restarts": 5}))
    ctx = Context(tmp_path / "runs", tmp_path / "out")
    line = next(ln for ln in table1_lines(ctx) if ln.run == "table1-cifar10/relu")
    assert line.ours["robust"]["final_test"] == pytest.approx(43.21)
    assert line.ours["standard"]["final_test"] == pytest.approx(87.65)
    assert line.meta["final_test_source"] == "eval_last.json (PGD-20x5)"
    render_all(ctx, only=["table1"])
    assert "eval_last.json (PGD-20x5)" in (tmp_path / "out" / "table1.md").read_text()


def test_an_eval_json_of_an_earlier_epoch_is_not_used_and_says_so(tmp_path):
    from paper_figs.rundir import load_run

    populate(tmp_path / "runs")
    relu = run_dir(tmp_path / "runs", "paper", "table1-cifar10", "relu")
    run = load_run(relu)
    last, best = run.epochs_done, run.best_val_epoch
    per_epoch = run.final("test_robust_acc")
    for epoch, used in ((last, True), (last - 1, False)):
        (relu / "eval_last.json").write_text(json.dumps(
            {"robust_acc": 0.4321, "clean_acc": 0.8765, "steps": 20, "restarts": 5,
             "epoch": epoch}))
        (relu / "eval_best.json").write_text(json.dumps(
            {"robust_acc": 0.1234, "clean_acc": 0.5, "epoch": best if used else best + 1}))
        ctx = Context(tmp_path / "runs", tmp_path / "out")
        line = next(ln for ln in table1_lines(ctx) if ln.run == "table1-cifar10/relu")
        expected = 43.21 if used else 100 * per_epoch
        assert line.ours["robust"]["final_test"] == pytest.approx(expected)
        assert (line.ours["robust"]["best_val"] == pytest.approx(12.34)) == used
        assert bool(line.meta["stale_evals"]) != used
    render_all(ctx, only=["table1"])
    md = (tmp_path / "out" / "table1.md").read_text()
    assert f"eval_last.json is of epoch {last - 1}, the run's last epoch is {last}" in md
    assert f"eval_best.json is of epoch {best + 1}, the run's best-val epoch is {best}" in md


def test_missing_runs_are_reported_not_raised(tmp_path, fake_plot):
    populate(tmp_path / "runs", skip=("table1-cifar10/silu", "table3-leakyrelu/k0.3"))
    results = {r.name: r for r in render_all(Context(tmp_path / "runs", tmp_path / "out"))}
    silu = str(run_dir(tmp_path / "runs", "paper", "table1-cifar10", "silu"))
    assert results["fig1"].outputs and results["fig1"].missing == [silu]
    assert silu in results["table1"].missing and silu in results["fig3"].missing[0]
    assert any("k0.3" in m for m in results["table3"].missing)
    md = (tmp_path / "out" / "table3.md").read_text()
    assert "| CIFAR-10 | 0.3 | — (63.06)" in md and "missing" in md


def test_cli_renders_what_exists_and_exits_1_when_nothing_can(tmp_path, capsys):
    from curvtools.clirun import run_app
    from paper_figs.__main__ import app

    with pytest.raises(SystemExit) as err:
        run_app(app, "paper_figs", ["--runs-dir", str(tmp_path / "none"),
                                    "--out", str(tmp_path / "out"), "--only", "table1"])
    assert err.value.code == 1
    with pytest.raises(SystemExit) as err:
        run_app(app, "paper_figs", ["--runs-dir", str(tmp_path), "--scale", "huge"])
    assert err.value.code == 2 and "--scale 'huge'" in capsys.readouterr().err
    populate(tmp_path / "runs", scale="mini")
    run_app(app, "paper_figs", ["--runs-dir", str(tmp_path / "runs"), "--out",
                                str(tmp_path / "out"), "--scale", "mini", "--only", "table1",
                                "--only", "fig7", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "table1-cifar100: no runs at scale 'mini'" in out
    report = {r["name"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    assert report["table1"]["outputs"] and report["fig7"]["outputs"]
    assert "not comparable" in (tmp_path / "out" / "table1.md").read_text()


def test_shape_figures_report_unavailable_without_curvtools_figures(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "curvtools.figures", None)  # import now fails
    results = render_all(Context(tmp_path / "runs", tmp_path / "out"), only=["fig2", "fig5"])
    assert all(r.unavailable and not r.outputs for r in results)


def test_an_entry_that_fails_is_reported_and_the_others_still_render(tmp_path, monkeypatch):
    import sys
    import types

    def broken(activations, path):
        raise TypeError("only 0-dimensional arrays can be converted")

    module = types.ModuleType("curvtools.figures")
    module.plot_activation_derivatives = broken
    monkeypatch.setitem(sys.modules, "curvtools.figures", module)
    populate(tmp_path / "runs")
    results = {r.name: r for r in render_all(Context(tmp_path / "runs", tmp_path / "out"),
                                             only=["fig2", "table2"])}
    assert results["fig2"].error.startswith("TypeError") and not results["fig2"].outputs
    assert results["table2"].outputs and not results["table2"].error


def test_fig7_points_are_the_mean_of_the_last_three_epochs(tmp_path):
    from paper_figs.width import width_points

    seeds = populate(tmp_path / "runs")
    points = width_points(Context(tmp_path / "runs", tmp_path / "out"))
    assert sorted(points) == ["relu", "silu"]
    assert [w for w, _, _ in points["relu"]] == [1, 2, 4, 6, 8, 10, 15, 20]
    rows = fixture_rows(seeds["fig7-width/silu-w4"])
    expected = 100 * (1 - sum(r["test_robust_acc"] for r in rows[-3:]) / 3)
    assert dict((w, te) for w, te, _ in points["silu"])[4] == pytest.approx(expected)


def test_hessian_curve_json_is_preferred_over_metrics(tmp_path):
    path = tmp_path / "run"
    write_run(path, fixture_rows(1.0, hessian=True))
    run = load_run(path)
    epochs, values, source = hessian_points(run)
    assert (epochs, values, source) == ([2, 4, 6], [12.0, 14.0, 16.0], "metrics.jsonl")
    (path / "hessian_curve.json").write_text(json.dumps(
        {"points": [{"epoch": 5, "lambda_max_mean": 3.5}, {"epoch": 1, "lambda_max_mean": 2.0}]}))
    assert hessian_points(load_run(path)) == ([1, 5], [2.0, 3.5], "hessian_curve.json")
    # the layout `curvtools hessian --ckpt RUNDIR --json ...` writes; best.pt/last.pt skipped
    summary = lambda m: {"lambda_max": {"mean": m, "median": m / 2}}  # noqa: E731
    (path / "hessian_curve.json").write_text(json.dumps({"settings": {}, "checkpoints": [
        {"checkpoint": "epoch_0002.pt", "epoch": 2, "summary": summary(7.0)},
        {"checkpoint": "epoch_0004.pt", "epoch": 4, "summary": summary(9.0)},
        {"checkpoint": "best.pt", "epoch": 3, "summary": summary(100.0)},
        {"checkpoint": "last.pt", "epoch": 4, "summary": summary(100.0)}]}))
    assert hessian_points(load_run(path)) == ([2, 4], [7.0, 9.0], "hessian_curve.json")


def test_partial_run_with_a_torn_last_line_reads_its_finished_epochs(tmp_path):
    path = tmp_path / "run"
    write_run(path, fixture_rows(0.0, epochs=4), epochs_total=10, done=False)
    with (path / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 5, "train_clean')  # a crash mid-write
    run = load_run(path)
    assert run.epochs_done == 4 and not run.finished


def test_paper_numbers_diff_columns_match_train_minus_test_except_known_typo():
    """Guards the transcription: Diff = Train - Test everywhere but Table 2's beta=1 (7.31)."""
    checks = [(f"t1 {d} {a}", v) for d, acts in paper_numbers.TABLE1.items()
              for a, v in acts.items()]
    checks += [(f"t2 {b}", v) for b, v in paper_numbers.TABLE2.items()]
    checks += [(f"t3 {k}", v) for k, v in paper_numbers.TABLE3.items()]
    bad = [name + " " + kind for name, v in checks for kind in ("robust", "standard")
           if abs(v[kind]["final_train"] - v[kind]["final_test"] - v[kind]["diff"]) > 0.011]
    assert bad == ["t2 1.0 robust"]

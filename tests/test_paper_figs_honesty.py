"""paper_figs reads run directories only: manifests, seeds, settings and figures a paper can use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.specs import bundled_spec_names, load_spec, parse_spec, write_manifest
from paper_figs.axescheck import axes_problems
from paper_figs.catalog import CATALOG
from paper_figs.entries import render_all
from paper_figs.runsets import Context
from paper_figs.tables import table1_lines, table3_lines
from tests.test_paper_figs import fixture_rows, populate, write_run

T1 = "table1-cifar10"


def test_paper_figs_imports_nothing_from_harness():
    import ast

    import paper_figs

    for path in Path(paper_figs.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "harness" for n in names), path.name
    # at run time too: no import chain (paper_figs -> curvtools.clirun, curvtools.runfiles,
    # where the run directory's file names live) reaches harness
    code = ("import sys, paper_figs.entries, paper_figs.synthesis; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'harness'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", bundled_spec_names())
def test_built_in_run_list_matches_the_bundled_specs(name):
    spec = load_spec(name)
    catalog = CATALOG[name]
    assert [n for n, _ in catalog] == [n for n, _ in spec.run_configs("paper")]
    for (_, labels), (_, cfg) in zip(catalog, spec.run_configs("paper"), strict=True):
        assert {k: cfg.get(k) for k in labels} == labels


def test_without_a_manifest_the_output_says_so_and_with_one_it_does_not(tmp_path):
    populate(tmp_path / "runs", skip=tuple(f"{T1}/{a}" for a in ("lisht", "gelu", "mish")))
    ctx = Context(tmp_path / "runs", tmp_path / "out")
    result = render_all(ctx, only=["table1"])[0]
    assert any("has no spec.json" in n for n in result.notes)
    assert "whether the runs were changed" in (tmp_path / "out" / "table1.md").read_text()
    spec = load_spec(T1)
    write_manifest(spec, tmp_path / "runs", "paper", [0])
    write_manifest(load_spec("table1-cifar100"), tmp_path / "runs", "paper", [0])
    result = render_all(Context(tmp_path / "runs", tmp_path / "out"), only=["table1"])[0]
    assert not any("has no spec.json" in n for n in result.notes)


def test_manifest_order_and_labels_come_from_the_sweep_not_the_catalog(tmp_path):
    spec = parse_spec({"name": "table3-leakyrelu", "defaults": {"act": "leakyrelu"},
                       "runs": [{"name": "slope-b", "overrides": {"k": -0.2}},
                                {"name": "slope-a", "overrides": {"k": 0.5}}]})
    runs = tmp_path / "runs"
    write_manifest(spec, runs, "paper", [0])
    for i, name in enumerate(("slope-b", "slope-a")):
        write_run(runs / "paper" / "table3-leakyrelu" / name, fixture_rows(float(i)))
    lines = table3_lines(Context(runs, tmp_path / "out"))
    assert [(ln.label, ln.run) for ln in lines] == [("-0.2", "table3-leakyrelu/slope-b"),
                                                   ("0.5", "table3-leakyrelu/slope-a")]


def test_seeds_give_mean_and_std_with_n_and_one_seed_says_n_1(tmp_path):
    runs = tmp_path / "runs"
    s0 = populate(runs)[f"{T1}/relu"]
    folder = runs / "paper" / T1
    write_run(folder / "relu-seed1", fixture_rows(s0 + 10.0))  # accuracies +10 points
    write_run(folder / "relu-seed2", fixture_rows(s0 + 20.0))
    lines = {ln.run: ln for ln in table1_lines(Context(runs, tmp_path / "out"))}
    relu, silu = lines[f"{T1}/relu"], lines[f"{T1}/silu"]
    assert relu.seeds == [0, 1, 2] and silu.seeds == [0]
    base = 100 * fixture_rows(s0)[-1]["test_robust_acc"]
    assert relu.ours["robust"]["final_test"] == pytest.approx(base + 10.0)  # +0, +10, +20
    assert relu.spread["robust"]["final_test"] == pytest.approx(10.0)
    assert silu.spread["robust"]["final_test"] is None
    render_all(Context(runs, tmp_path / "out"), only=["table1"])
    md = (tmp_path / "out" / "table1.md").read_text()
    relu_row = next(r for r in md.splitlines() if "| ReLU |" in r and "CIFAR-10 |" in r)
    assert "± 10.00" in relu_row and "n=3 (seeds 0,1,2)" in relu_row
    silu_row = next(r for r in md.splitlines() if "| SiLU |" in r and "CIFAR-10 |" in r)
    assert "±" not in silu_row and "n=1 (seed 0)" in silu_row


def test_table_states_run_settings_eval_images_and_scale_overrides(tmp_path):
    runs = tmp_path / "runs"
    spec = load_spec(T1)
    write_manifest(spec, runs, "mini", [0], overrides={"epochs": 6})
    settings = dict(spec.run_configs("mini"))
    for name in ("relu", "silu"):
        cfg = {**settings[name], "epochs": 6, "seed": 0}
        write_run(runs / "mini" / T1 / name, fixture_rows(1.0), extra={"train_config": cfg})
    (runs / "mini" / T1 / "relu" / "eval_last.json").write_text(json.dumps(
        {"robust_acc": 0.4, "clean_acc": 0.8, "attack": "pgd", "steps": 20, "restarts": 5,
         "norm": "linf", "eps_255": 8.0, "alpha_255": 2.0, "n": 500, "seed": 0, "epoch": 6}))
    render_all(Context(runs, tmp_path / "out", scale="mini"), only=["table1"])
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "scale 'mini' with overrides: epochs=6" in md
    assert "width 0.25, 6 epochs" in md and "1000 training images" in md
    assert "per-epoch eval PGD-5 on 500 test / 500 validation images" in md
    assert "PGD-20x5, linf eps 8/255 step 2/255, 500 test images, attack seed 0" in md


def steep_rows(epochs: int = 6) -> list[dict]:
    """Metrics whose first epochs have losses far above the rest (what Figure 1 used to cut)."""
    rows = fixture_rows(1.0, epochs, hessian=True)
    rows[0].update(test_robust_loss=9.0, train_robust_loss=7.5, test_clean_loss=8.0)
    rows[1].update(test_robust_loss=5.0)
    return rows


@pytest.mark.parametrize("entry", ["fig1", "fig3", "fig4"])
def test_curve_figures_show_every_point_and_whole_epoch_ticks(tmp_path, entry):
    from paper_figs.curves import build_figure1, build_figure4
    from paper_figs.hessian import build_figure3

    runs = tmp_path / "runs"
    for i, name in enumerate(("relu", "lisht", "gelu", "mish", "silu")):
        write_run(runs / "paper" / T1 / name, steep_rows())
        write_run(runs / "paper" / T1 / f"{name}-seed1", fixture_rows(2.0 + i, hessian=True))
    build = {"fig1": build_figure1, "fig3": build_figure3, "fig4": build_figure4}[entry]
    fig = build(Context(runs, tmp_path / "out"))
    assert axes_problems(fig) == []
    ax = fig.axes[0] if entry != "fig4" else fig.axes[-1]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    if entry != "fig3":  # two seeds: a band
        assert any(type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection")
                   for a in fig.axes for c in a.collections)


def test_axes_check_catches_cut_data_and_fractional_epoch_ticks():
    from paper_figs.output import pyplot

    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [9.0, 2.0, 1.0])
    ax.set_ylim(0, 3)
    ax.set_xlabel("epoch")
    ax.set_xticks([1, 1.5, 2])
    problems = axes_problems(fig)
    plt.close(fig)
    assert any("outside the axes" in p for p in problems)
    assert any("fractional epoch ticks" in p for p in problems)


def test_a_hessian_curve_older_than_the_metrics_is_ignored_and_named(tmp_path):
    runs = tmp_path / "runs"
    gelu = runs / "paper" / T1 / "gelu"
    write_run(gelu, fixture_rows(1.0, epochs=4, hessian=True))
    curve = gelu / "hessian_curve.json"
    curve.write_text(json.dumps({"checkpoints": [
        {"checkpoint": f"epoch_000{e}.pt", "epoch": e, "summary": {"lambda_max": {"mean": 99.0}}}
        for e in (2, 4)]}))
    ctx = Context(runs, tmp_path / "out")
    from paper_figs.hessian import hessian_curves

    assert hessian_curves(ctx)["gelu"].sources == {"hessian_curve.json"}  # fresh: used
    write_run(gelu, fixture_rows(1.0, epochs=6, hessian=True), epochs_total=6)  # extended
    os.utime(curve, (1, 1))  # the curve is older than the metrics
    ctx = Context(runs, tmp_path / "out")
    found = hessian_curves(ctx)["gelu"]
    ((epochs, values),) = found.seeds
    assert found.sources == {"metrics.jsonl"} and epochs == [2, 4, 6] and 99.0 not in values
    result = render_all(ctx, only=["fig3"])[0]
    assert any("hessian_curve.json ends at epoch 4" in n for n in result.notes)


def test_fig6_shows_the_kink_curvature_instead_of_a_zero_f2_panel():
    from paper_figs.shapes import FIG6_KS, build_figure6

    fig = build_figure6()
    heights = [p.get_height() for p in fig.axes[2].patches]
    assert heights == pytest.approx([abs(1 - k) for k in FIG6_KS])
    assert axes_problems(fig) == []
    assert "|1-k|" in fig.axes[2].get_title()


def test_scale_must_be_a_runs_folder_or_a_bundled_scale(tmp_path, capsys):
    from curvtools.clirun import run_app
    from paper_figs.__main__ import app

    (tmp_path / "runs" / "custom").mkdir(parents=True)
    with pytest.raises(SystemExit) as err:
        run_app(app, "paper_figs", ["--runs-dir", str(tmp_path / "runs"), "--scale", "custom",
                                    "--out", str(tmp_path / "out"), "--only", "table1"])
    assert err.value.code == 1  # accepted, nothing to render
    assert Path(tmp_path / "runs").is_dir()


def test_python_m_paper_figs_never_imports_a_module_a_run_names(tmp_path):
    """A run tree that names `runs.paper.evilmod:X` and holds runs/paper/evilmod.py: rendering
    from that folder (`python -m` puts it on sys.path) must not run the module."""
    marker = tmp_path / "EVIL_RAN"
    evil = tmp_path / "runs" / "paper" / "evilmod.py"
    evil.parent.mkdir(parents=True)
    evil.write_text(f"open({str(marker)!r}, 'w').write('ran')\nX = None\n")
    run = tmp_path / "runs" / "paper" / T1 / "evil"
    write_run(run, fixture_rows(1.0, hessian=True), extra={
        "train_config": {"act": "runs.paper.evilmod:X", "epochs": 6},
        "model_config": {"act": {"name": "runs.paper.evilmod:X", "params": {}}}})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-m", "paper_figs", "--runs-dir", "runs", "--out",
                           "out", "--only", "synthesis", "--only", "fig4", "--only", "fig3"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert not marker.exists(), done.stdout + done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rendered" in done.stdout
    md = (tmp_path / "out" / "synthesis.md").read_text()
    assert "does not import plugins" in md and "| evil | X |" in md



def test_rendering_in_process_with_the_plugin_importable_still_never_imports_it(
        tmp_path, monkeypatch):
    marker = tmp_path / "EVIL_RAN"
    (tmp_path / "evilpkg").mkdir()
    (tmp_path / "evilpkg" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nX = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # importable: only paper_figs' restraint helps
    runs = tmp_path / "runs"
    for i, name in enumerate(("relu", "silu")):
        write_run(runs / "paper" / T1 / name, fixture_rows(float(i), hessian=True))
    write_run(runs / "paper" / T1 / "evil", fixture_rows(1.0, hessian=True), extra={
        "train_config": {"act": "evilpkg:X", "epochs": 6}})
    results = render_all(Context(runs, tmp_path / "out"),
                         only=["fig1", "fig3", "fig4", "table1", "synthesis"])
    assert not marker.exists() and all(r.outputs for r in results)
    assert all(not r.error for r in results), [r.error for r in results if r.error]


def test_a_plugin_activation_gets_a_label_and_colour_in_every_curve_figure(tmp_path):
    from paper_figs.actnames import act_label, colors_for
    from paper_figs.curves import build_figure4
    from paper_figs.hessian import build_figure3

    runs = tmp_path / "runs"
    populate(runs)
    write_run(runs / "paper" / T1 / "squareplus", fixture_rows(3.0, hessian=True), extra={
        "train_config": {"act": "mypkg.acts:SQUAREPLUS", "epochs": 6}})
    fig = build_figure4(Context(runs, tmp_path / "out"))
    titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("SQUAREPLUS") for t in titles) and len(fig.axes) == 12
    fig = build_figure3(Context(runs, tmp_path / "out"))
    assert any(t.startswith("SQUAREPLUS") for t in (ax.get_title() for ax in fig.axes))
    assert act_label("mypkg.acts:SQUAREPLUS") == "SQUAREPLUS"
    assert act_label("pswish", {"beta": 4.0}) == "PSwish(beta=4)"
    colors = colors_for(["relu", "silu", "a.b:C", "d.e:F", "entrypointname"])
    assert colors["relu"] == "tab:red" and len(set(colors.values())) == 5


def test_fig1_and_fig4_show_the_overfitting_region_with_a_declared_zoom(tmp_path):
    from paper_figs.curves import build_figure1, build_figure4

    runs = tmp_path / "runs"
    for i, name in enumerate(("relu", "lisht", "gelu", "mish", "silu")):
        rows = fixture_rows(1.0 + i, epochs=60)
        rows[0].update(test_robust_loss=50.0, train_robust_loss=40.0)  # a steep first epoch
        write_run(runs / "paper" / T1 / name, rows, epochs_total=60)
    fig = build_figure1(Context(runs, tmp_path / "out"))
    full, zoom = fig.axes[:2]
    assert full.get_ylim()[1] > 50.0 > zoom.get_ylim()[1]  # epoch 1 only in the full panel
    later = [r["test_robust_loss"] for r in fixture_rows(1.0, epochs=60)[9:]]
    assert zoom.get_ylim()[0] <= min(later) and max(later) <= zoom.get_ylim()[1]
    assert axes_problems(fig) == []
    fig = build_figure4(Context(runs, tmp_path / "out"))
    top, bottom = fig.axes[:5], fig.axes[5:10]
    assert len({ax.get_ylim() for ax in top}) == 1 and len({ax.get_ylim() for ax in bottom}) == 1
    assert bottom[0].get_ylim()[1] < 40.0  # fitted to epochs >= 10, shared along the row
    assert axes_problems(fig) == []
    assert "y ranges fitted to epochs >= 10" in fig._suptitle.get_text()


def test_a_declared_zoom_still_reports_points_cut_after_its_start():
    from paper_figs.axescheck import declare_zoom
    from paper_figs.output import pyplot

    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([1, 2, 10, 11], [9.0, 1.0, 1.0, 9.0])
    ax.set_ylim(0, 2)
    declare_zoom(ax, 10)
    problems = axes_problems(fig)
    plt.close(fig)
    assert len(problems) == 1 and "1 points outside" in problems[0]  # (11, 9), not (1, 9)


@pytest.mark.parametrize("entry", ["fig1", "fig3", "fig4"])
def test_one_epoch_runs_get_whole_number_epoch_ticks(tmp_path, entry):
    from paper_figs.curves import build_figure1, build_figure4
    from paper_figs.hessian import build_figure3

    runs = tmp_path / "runs"
    for i, name in enumerate(("relu", "lisht", "gelu", "mish", "silu")):
        rows = fixture_rows(1.0 + i, epochs=1)
        rows[0]["hessian_lambda_max_mean"] = 1.0 + i
        write_run(runs / "paper" / T1 / name, rows, epochs_total=1)
    build = {"fig1": build_figure1, "fig3": build_figure3, "fig4": build_figure4}[entry]
    fig = build(Context(runs, tmp_path / "out"))
    assert axes_problems(fig) == []
    for ax in fig.axes:
        if ax.get_visible() and "epoch" in ax.get_xlabel():
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_fig3_shows_every_activation_with_data_and_the_spread_over_images(tmp_path):
    from paper_figs.hessian import build_figure3

    runs = tmp_path / "runs"
    for i, name in enumerate(("relu", "lisht", "gelu", "mish", "silu")):
        write_run(runs / "paper" / T1 / name, fixture_rows(1.0 + i, hessian=True))
    write_run(runs / "paper" / T1 / "gelu-seed1", fixture_rows(9.0, hessian=True))
    (runs / "paper" / T1 / "gelu" / "hessian_curve.json").write_text(json.dumps(
        {"checkpoints": [{"checkpoint": f"epoch_000{e}.pt", "epoch": e, "summary": {
            "lambda_max": {"mean": 2.0 * e, "median": 2.0 * e, "q25": e, "q75": 3.0 * e}}}
            for e in (2, 4, 6)]}))
    fig = build_figure3(Context(runs, tmp_path / "out"))
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert [t.split(":")[0] for t in titles[1:]] == ["ReLU", "LiSHT", "GeLU", "Mish", "SiLU"]
    gelu = next(ax for ax in fig.axes if ax.get_title().startswith("GeLU"))
    assert "2 seed(s)" in gelu.get_title() and "no spread" not in gelu.get_title()
    assert any(c.get_label() == "25-75% of images, per seed" for c in gelu.collections)
    assert "no spread over images" in next(t for t in titles if t.startswith("Mish"))
    assert axes_problems(fig) == []


def test_with_no_runs_at_the_scale_the_cli_says_where_runs_are(tmp_path, capsys):
    from curvtools.clirun import run_app
    from paper_figs.__main__ import app

    populate(tmp_path / "runs", scale="mini")
    with pytest.raises(SystemExit) as err:
        run_app(app, "paper_figs", ["--runs-dir", str(tmp_path / "runs"), "--scale",
                                    "gpu-mini", "--out", str(tmp_path / "out"), "--only",
                                    "table1"])
    assert err.value.code == 1
    out = capsys.readouterr().out
    assert "no runs at scale 'gpu-mini'" in out and "mini: " in out
    assert "table1-cifar10 (5 runs)" in out


def test_a_table_row_whose_runs_are_shorter_says_so(tmp_path):
    runs = tmp_path / "runs"
    for name in ("relu", "silu", "gelu"):
        write_run(runs / "paper" / T1 / name, fixture_rows(1.0))
    write_run(runs / "paper" / T1 / "mish", fixture_rows(1.0, epochs=4), epochs_total=4)
    write_run(runs / "paper" / T1 / "gelu-seed1", fixture_rows(2.0, epochs=4), epochs_total=4)
    render_all(Context(runs, tmp_path / "out"), only=["table1"])
    md = (tmp_path / "out" / "table1.md").read_text().splitlines()
    row = {name: next(r for r in md if f"| {name} |" in r) for name in ("Mish", "GeLU", "ReLU")}
    assert "run length differs from the table's other rows: 6 epochs" in row["Mish"]
    assert "by seed 6/6, 4/4" in row["GeLU"] and "differs" in row["GeLU"]
    assert "differs" not in row["ReLU"]

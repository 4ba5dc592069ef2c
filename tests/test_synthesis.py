"""The synthesis entry: the pre-registered analysis on fixture run trees with known answers
(the PSwish beta sweep at scale cpu-fit with a manifest, and Table 1 with seeds without one)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness.specs import parse_spec, write_manifest
from paper_figs.entries import render_all
from paper_figs.outcomes import curvature_of, run_outcome
from paper_figs.rundir import load_run
from paper_figs.runsets import Context
from paper_figs.synthesis import analyse

BETAS = (0.5, 1.0, 2.0, 4.0, 10.0, 20.0)
SEEDS = (0, 1, 2, 3)
EPOCHS = 8
PSWISH = "pswish-curvature"
SCALE = "cpu-fit"


def write_fixture_run(folder: Path, act: dict, seed: int, gap_paper: float, gap_like: float,
                      test_robust: float, train_clean: float = 0.8) -> None:
    """A finished run whose outcomes are exactly the given numbers (percentage points)."""
    folder.mkdir(parents=True, exist_ok=True)
    train_robust = (test_robust + gap_paper) / 100
    rows = [{"epoch": e, "train_robust_acc": train_robust, "train_clean_acc": train_clean,
             "val_robust_acc": 0.1 + 0.01 * e, "test_robust_acc": 0.2, "test_clean_acc": 0.5,
             "test_robust_loss": 2.0, "hessian_lambda_max_mean": 0.5 + e}
            for e in range(1, EPOCHS + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"act": act["name"], "act_params": act["params"], "epochs": EPOCHS, "seed": seed}
    (folder / "config.json").write_text(json.dumps(
        {"train_config": settings, "model_config": {"act": act}}))
    (folder / "DONE").write_text("")
    evals = {"eval_last": (test_robust, "test"), "eval_best": (test_robust + 1.0, "test"),
             "eval_train_last": (test_robust + gap_like, "train")}
    for name, (robust, split) in evals.items():
        (folder / f"{name}.json").write_text(json.dumps(
            {"robust_acc": robust / 100, "clean_acc": 0.7, "epoch": EPOCHS, "split": split,
             "steps": 20, "restarts": 5, "n": 1000}))


def x_of(beta: float) -> float:
    return math.log2(beta / 2)  # PSwish max f'' = beta / 2


def truth(beta: float, seed: int) -> tuple[float, float, float]:
    """gap_paper slope 3, gap_like slope -1 (none upward), test_robust peaks at x = 1.5."""
    x = x_of(beta)
    return 10 + 2 * seed + 3 * x, 5 + seed - x, 40 + seed - (x - 1.5) ** 2


def pswish_tree(runs: Path, skip: tuple[tuple[float, int], ...] = ()) -> None:
    spec = parse_spec({"name": PSWISH, "defaults": {"act": "pswish"},
                       "runs": [{"name": f"beta{b:g}", "overrides": {"beta": b}} for b in BETAS],
                       "scales": {SCALE: {"defaults": {"epochs": EPOCHS}}}})
    write_manifest(spec, runs, SCALE, list(SEEDS))
    for beta in BETAS:
        for seed in SEEDS:
            if (beta, seed) in skip:
                continue
            name = f"beta{beta:g}" + (f"-seed{seed}" if seed else "")
            write_fixture_run(runs / SCALE / PSWISH / name,
                              {"name": "pswish", "params": {"beta": beta}}, seed,
                              *truth(beta, seed), train_clean=0.5 if beta == 0.5 else 0.97)


def test_pswish_sweep_renders_with_exact_slope_per_seed_points_and_companions(tmp_path, capsys):
    from curvtools.clirun import run_app
    from paper_figs.__main__ import app

    runs, out = tmp_path / "runs", tmp_path / "out"
    pswish_tree(runs)
    run_app(app, "paper_figs", ["--runs-dir", str(runs), "--scale", SCALE, "--out", str(out),
                                "--only", "synthesis"])
    assert "synthesis" in capsys.readouterr().out
    assert (out / "synthesis.png").stat().st_size > 0 and (out / "synthesis.pdf").is_file()
    data = json.loads((out / "synthesis.json").read_text())
    (a,) = data["analyses"]
    assert a["spec"] == PSWISH and a["status"] == "pre-registered"
    assert [lv["x"] for lv in a["levels"]] == pytest.approx([x_of(b) for b in BETAS])
    run = next(r for r in a["runs"] if r["folder"] == "beta4-seed2")
    assert (run["x"], run["seed"]) == (pytest.approx(1.0), 2)
    assert run["gap_paper"] == pytest.approx(truth(4.0, 2)[0])
    assert run["gap_like"] == pytest.approx(truth(4.0, 2)[1])
    assert run["regime"] == "interpolates"
    gp = a["tests"]["gap_paper"]
    assert gp["complete_blocks_used"] == list(SEEDS) and gp["n_runs"] == 24
    assert gp["trend"]["slope"] == pytest.approx(3.0, abs=1e-9)
    assert gp["trend"]["ci95_bootstrap"] == pytest.approx([3.0, 3.0], abs=1e-9)
    assert gp["trend"]["p_greater"] == pytest.approx(1 / 20_001)  # the smallest possible
    assert a["tests"]["gap_like"]["trend"]["slope"] == pytest.approx(-1.0, abs=1e-9)
    assert a["tests"]["gap_like"]["trend"]["p_greater"] > 0.99
    peak = a["tests"]["test_robust"]["peak"]
    assert peak["vertex"] == pytest.approx(1.5, abs=1e-9) and peak["interior_peak"] is True
    md = (out / "synthesis.md").read_text()
    assert "### pswish-curvature (pre-registered)" in md
    per_beta = next(line for line in md.splitlines() if line.startswith("| beta=4 |"))
    assert "(n=4)" in per_beta and "interpolates 4" in per_beta
    assert "| beta=0.5 |" in md and "underfit 4" in md  # regime beside the numbers, kept
    assert "+3.00" in md and "seeds 0, 1, 2, 3" in md


def test_a_seed_missing_one_run_is_reported_and_left_out_of_the_test(tmp_path):
    runs = tmp_path / "runs"
    pswish_tree(runs, skip=((20.0, 3),))
    a = analyse(Context(runs, tmp_path / "out", SCALE), PSWISH, permutations=999,
                bootstrap=200)
    blocks = a.blocks["gap_paper"]
    assert blocks.seeds == (0, 1, 2) and blocks.n_runs == 18
    assert blocks.left_out == ("seed 3: no value at beta20",)
    assert a.trends["gap_paper"].n_seeds == 3
    render_all(Context(runs, tmp_path / "out", SCALE), only=["synthesis"])
    md = (tmp_path / "out" / "synthesis.md").read_text()
    assert "left out: seed 3: no value at beta20" in md


def test_a_run_without_its_eval_file_is_listed_with_the_command_that_makes_it(tmp_path):
    runs = tmp_path / "runs"
    pswish_tree(runs)
    (runs / SCALE / PSWISH / "beta2-seed1" / "eval_train_last.json").unlink()
    a = analyse(Context(runs, tmp_path / "out", SCALE), PSWISH, permutations=999,
                bootstrap=200)
    assert a.blocks["gap_like"].seeds == (0, 2, 3)
    assert a.blocks["gap_paper"].seeds == SEEDS  # the other outcome keeps every block
    run = next(r for r in a.runs if r.folder == "beta2-seed1")
    assert run.gap_like is None and any("--split train" in m for m in run.missing)


def test_an_eval_train_file_of_the_test_split_is_not_used(tmp_path):
    runs = tmp_path / "runs"
    pswish_tree(runs)
    path = runs / SCALE / PSWISH / "beta1" / "eval_train_last.json"
    path.write_text(path.read_text().replace('"train"', '"test"'))
    run = load_run(path.parent)
    assert run.eval_train_last is None
    assert any("records split 'test', not 'train'" in s for s in run.stale_evals)


def test_table1_with_seeds_places_activations_by_the_registry_curvature(tmp_path):
    from curvtools.activations import resolve
    from curvtools.certified import curvature

    runs = tmp_path / "runs"
    acts = ("relu", "lisht", "gelu", "mish", "silu")
    for act in acts:
        for seed in (0, 1, 2):
            x = 0.0 if act == "relu" else math.log2(curvature(resolve(act)).max_value)
            write_fixture_run(runs / "paper" / "table1-cifar10" /
                              (act + (f"-seed{seed}" if seed else "")),
                              {"name": act, "params": {}}, seed, 5 * seed + 2 * x, 1.0, 40.0)
    a = analyse(Context(runs, tmp_path / "out"), "table1-cifar10", permutations=999,
                bootstrap=200)
    xs = {lv["level"]: lv["x"] for lv in a.levels}
    assert xs["relu"] == 0.0  # ReLU: the registry's approximate curvature, 1
    assert xs["silu"] == pytest.approx(-1.0)  # max f'' = 1/2
    assert a.trends["gap_paper"].slope == pytest.approx(2.0, abs=1e-9)
    assert a.trends["gap_paper"].method == "random"  # (5!)^3 > 999
    assert a.not_tested == {} and a.peak is not None


def test_curvature_comes_from_the_registry_never_from_names(monkeypatch):
    from curvtools.activations import REGISTRY, ActivationSpec

    assert curvature_of("leakyrelu", {"k": -0.2})[0] == pytest.approx(1.2)
    assert curvature_of("relu", {})[0] == 1.0
    assert curvature_of("pswish", {"beta": 4.0})[0] == pytest.approx(2.0)
    # a kinked activation registered now: its curvature is whatever its spec says
    spec = ActivationSpec("kinky", "test", lambda x: x, lambda: None, smooth=False,
                          approx_curvature=lambda: 7.5)
    monkeypatch.setitem(REGISTRY, "kinky", spec)
    assert curvature_of("kinky", {}) == (7.5, "approximate curvature (registry)")
    value, why = curvature_of("mypkg.acts:SQUAREPLUS", {})
    assert value is None and "does not import plugins" in why


def test_a_plugin_run_is_listed_but_not_placed_and_gets_a_label(tmp_path):
    path = tmp_path / "run"
    write_fixture_run(path, {"name": "mypkg.acts:SQUAREPLUS", "params": {}}, 0, 1.0, 1.0, 1.0)
    out = run_outcome("table1-cifar10", "squareplus", 0, load_run(path), {})
    assert out.x is None and out.label == "SQUAREPLUS"
    assert out.gap_paper == pytest.approx(1.0)
    assert "does not import plugins" in out.missing[0]


def test_the_figure_draws_one_line_per_seed_hollow_underfit_and_grey_incomplete_seeds(tmp_path):
    from paper_figs.axescheck import axes_problems
    from paper_figs.synthesis_render import build_figure

    runs = tmp_path / "runs"
    pswish_tree(runs, skip=((20.0, 3),))
    a = analyse(Context(runs, tmp_path / "out", SCALE), PSWISH, permutations=999,
                bootstrap=200)
    fig = build_figure([a], SCALE)
    assert axes_problems(fig) == []
    ax = fig.axes[0]
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert labels[:4] == ["seed 0", "seed 1", "seed 2",
                          "seed 3 (not a complete block: not in the test)"]
    assert ax.get_lines()[3].get_color() == "0.6"
    hollow = [c for c in ax.collections if c.get_facecolor().size == 0
              or c.get_facecolor()[0][3] == 0]
    assert len(hollow) == 4  # beta = 0.5 underfits in every seed
    assert "slope +3.00 per doubling, 95% CI [3.00, 3.00]" in ax.get_title(loc="left")

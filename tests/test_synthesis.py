"""The synthesis entry: Spearman's rho and a bootstrap CI of gaps against curvature, on fixture
runs with known answers."""

from __future__ import annotations

import json

import pytest

from paper_figs.entries import render_all
from paper_figs.runsets import Context
from paper_figs.synthesis import collect, curvature_of, spearman_ci
from tests.test_paper_figs import write_run

KS = (0.8, 0.5, 0.3, 0.0, -0.2, -0.5, -0.8, -1.0, -1.5, -2.0)  # curvature |1-k| increasing


def rows_with_gap(gap: float, train_clean: float = 0.9, hessian: float = 1.0) -> list[dict]:
    """Three epochs; the last has train robust accuracy 0.3 + gap and test robust 0.3."""
    rows = []
    for e in (1, 2, 3):
        rows.append({"epoch": e, "train_robust_acc": 0.3 + gap, "test_robust_acc": 0.3,
                     "train_clean_acc": train_clean, "test_clean_acc": train_clean - gap,
                     "val_robust_acc": 0.3 - 0.01 * e, "hessian_lambda_max_mean": hessian})
    return rows


def populate(runs, gaps, underfit=()):
    for i, (k, gap) in enumerate(zip(KS, gaps, strict=True)):
        spec = "table3-leakyrelu" if i < 5 else "curvature-sweep"
        cfg = {"train_config": {"act": "leakyrelu", "k": k, "epochs": 3}}
        write_run(runs / "paper" / spec / f"run{i}",
                  rows_with_gap(gap, 0.4 if i in underfit else 0.9, hessian=1.0 + gap),
                  epochs_total=3, extra=cfg)


def test_a_perfectly_monotone_fixture_gives_rho_1(tmp_path):
    runs = tmp_path / "runs"
    populate(runs, [0.01 * i for i in range(len(KS))])
    results = render_all(Context(runs, tmp_path / "out"), only=["synthesis"])
    assert results[0].outputs, results[0]
    data = json.loads((tmp_path / "out" / "synthesis.json").read_text())
    for key in ("robust_gap_last", "standard_gap_last", "lambda_max_last"):
        stats = data["statistics"][key]["all"]
        assert stats["n"] == len(KS) and stats["rho"] == pytest.approx(1.0)
        assert stats["ci95"][0] == pytest.approx(1.0) and stats["ci95"][1] == pytest.approx(1.0)
    assert [p["curvature"] for p in data["points"]][:2] == pytest.approx([0.2, 0.5])
    md = (tmp_path / "out" / "synthesis.md").read_text()
    assert "rho=1.00" in md and "n=10" in md


def test_a_shuffled_fixture_gives_a_confidence_interval_containing_0(tmp_path):
    runs = tmp_path / "runs"
    order = [5, 2, 9, 1, 7, 3, 10, 4, 8, 6]  # rank correlation with 1..10 near 0
    populate(runs, [0.01 * i for i in order])
    stats = spearman_ci([abs(1 - k) for k in KS], [float(i) for i in order])
    assert abs(stats["rho"]) < 0.3
    points = collect(Context(runs, tmp_path / "out"))
    from paper_figs.synthesis import statistics_of

    ci = statistics_of(points)["robust_gap_last"]["all"]["ci95"]
    assert ci[0] < 0 < ci[1]


def test_underfit_runs_are_flagged_and_left_out_of_the_fitted_statistics(tmp_path):
    runs = tmp_path / "runs"
    gaps = [0.01 * i for i in range(len(KS))]
    gaps[-1] = 0.0  # the highest-curvature run has no gap ... because it never fitted
    populate(runs, gaps, underfit=(len(KS) - 1,))
    from paper_figs.synthesis import statistics_of

    points = collect(Context(runs, tmp_path / "out"))
    assert [p.regime for p in points].count("underfit") == 1
    stats = statistics_of(points)["robust_gap_last"]
    assert stats["all"]["rho"] < 1.0 and stats["fitted"]["rho"] == pytest.approx(1.0)
    assert stats["fitted"]["n"] == len(KS) - 1


def test_curvature_is_the_papers_for_leakyrelu_and_relu_and_max_f2_for_smooth():
    assert curvature_of("relu", {}) == 1.0
    assert curvature_of("leakyrelu", {"k": -0.2}) == pytest.approx(1.2)
    assert curvature_of("silu", {}) == pytest.approx(0.5)


def test_too_few_runs_give_no_rho():
    assert spearman_ci([1.0, 2.0], [1.0, 2.0])["rho"] is None
    assert spearman_ci([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["rho"] is None

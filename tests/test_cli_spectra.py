"""`curvtools hessian` and `curvtools lemma` on a tiny checkpoint (digits, width-1/16 net)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from curvtools.activations import resolve
from curvtools.checkpoint_paths import checkpoints_in_run
from curvtools.cli import main
from curvtools.spectra import input_hessian_eigenvalues
from curvtools.testset import load_test_images


def _save_tiny_checkpoint(path, epoch: int, seed: int = 0, act: str = "relu") -> None:
    from harness.checkpoint import save_checkpoint
    from harness.models import build_model

    config = {"arch": "preactresnet18", "act": resolve(act).config(), "num_classes": 10,
              "in_channels": 1, "width": 1 / 16, "mean": [0.3], "std": [0.4]}
    torch.manual_seed(seed)
    model = build_model(config).eval()
    save_checkpoint(path, {"model": model.state_dict(), "config": config, "epoch": epoch,
                           "train_config": {"dataset": "digits", "data_dir": "data"},
                           "metrics": {}})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    _save_tiny_checkpoint(folder / "epoch_0002.pt", 2, seed=2)
    _save_tiny_checkpoint(folder / "epoch_0001.pt", 1, seed=1)
    _save_tiny_checkpoint(folder / "last.pt", 2, seed=2)
    _save_tiny_checkpoint(folder / "silu.pt", 3, seed=3, act="silu")
    return folder


def test_hessian_cli_writes_json_csv_plot_matching_the_library(run_dir, tmp_path, capsys):
    out = tmp_path / "h.json"
    main(["hessian", "--ckpt", str(run_dir / "silu.pt"), "--n", "3", "--batch", "2",
          "--dtype", "float64", "--tol", "1e-2", "--max-iter", "20", "--json", str(out),
          "--csv", str(tmp_path / "h.csv"), "--plot", str(tmp_path / "h.png"), "--device", "cpu"])
    captured = capsys.readouterr()
    printed = captured.out
    assert "lambda_max" in printed and "share |lambda_min| > lambda_max" in printed
    assert captured.err == ""  # the transient bar leaves no blank line before a later error
    body = json.loads(out.read_text())
    assert len(body["examples"]) == 3 and body["summary"]["n"] == 3
    assert (tmp_path / "h.png").stat().st_size > 0
    assert len((tmp_path / "h.csv").read_text().strip().splitlines()) == 4

    from harness.checkpoint import load_model

    model, ckpt = load_model(run_dir / "silu.pt")
    x, y, indices = load_test_images(ckpt, 3, 0, None)
    assert [e["index"] for e in body["examples"]] == [int(i) for i in indices]
    direct = input_hessian_eigenvalues(model, x[:2], y[:2], tol=1e-2, max_iter=20,
                                       dtype=torch.float64)
    got = np.array([e["lambda_max"] for e in body["examples"][:2]])
    np.testing.assert_allclose(got, direct.lambda_max.numpy(), rtol=1e-9)
    assert all(e["converged"] for e in body["examples"])
    assert all(0 <= e["error_estimate"] <= 1e-2 for e in body["examples"])
    assert body["settings"]["stop"] == "residual" and body["settings"]["hvp_mode"] == "rev-rev"
    for e in body["examples"]:  # the bounds travel with every example
        assert 0 <= e["lambda_max_bound"] <= 1e-2 * abs(e["lambda_max"])
        assert e["lambda_max_upper"] >= e["lambda_max"] and e["limited"] is False


def test_hessian_cli_on_a_run_directory_gives_lambda_max_per_checkpoint(run_dir, tmp_path,
                                                                         capsys):
    assert [p.name for p in checkpoints_in_run(run_dir)] == ["epoch_0001.pt", "epoch_0002.pt",
                                                             "last.pt"]
    out = tmp_path / "curve.json"
    main(["hessian", "--ckpt", str(run_dir), "--n", "2", "--max-iter", "10", "--tol", "1e-2",
          "--json", str(out), "--plot", str(tmp_path / "curve.png")])
    body = json.loads(out.read_text())
    # last.pt holds epoch 2, which epoch_0002.pt holds too: a copy, not computed again
    assert [c["checkpoint"] for c in body["checkpoints"]] == ["epoch_0001.pt", "epoch_0002.pt"]
    assert [c["epoch"] for c in body["checkpoints"]] == [1, 2]
    assert body["skipped_copies"] == [{"checkpoint": "last.pt", "same_epoch_as": "epoch_0002.pt"}]
    printed = capsys.readouterr().out
    assert "lambda_max per checkpoint" in printed
    assert "skipped as copies: last.pt (= epoch_0002.pt)" in printed


@pytest.mark.parametrize("args", [["--function", "mse"], ["--n", "0"], ["--tol", "0"],
                                  ["--dtype", "bfloat16"], ["--k", "0"],
                                  ["--stop", "change"], ["--hvp-mode", "fwd-fwd"],
                                  ["--check-every", "0"]])
def test_hessian_cli_bad_input_is_one_line_exit_2_and_leaves_outputs_alone(run_dir, tmp_path,
                                                                           capsys, args):
    out = tmp_path / "keep.json"
    out.write_text("precious")
    with pytest.raises(SystemExit) as exc:
        main(["hessian", "--ckpt", str(run_dir / "last.pt"), "--json", str(out), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
    assert out.read_text() == "precious"


def test_hessian_cli_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["hessian", "--ckpt", str(tmp_path / "nope.pt")])
    assert exc.value.code == 2 and "nope.pt" in capsys.readouterr().err


def test_lemma_cli_reports_bounds_beside_the_attack(run_dir, tmp_path, capsys):
    out = tmp_path / "lemma.json"
    main(["lemma", "--ckpt", str(run_dir / "silu.pt"), "--n", "2", "--steps", "5",
          "--bisect-steps", "3", "--eps-max", "8", "--max-iter", "30", "--tol", "1e-2",
          "--json", str(out)])
    printed = capsys.readouterr().out
    assert "quadratic" in printed  # the bounds-vs-real-net caveat is printed
    assert "nu converged (relative Ritz residual <= --tol) for " in printed
    body = json.loads(out.read_text())
    assert len(body["examples"]) == 2 and "quadratic" in body["note"]
    for e in body["examples"]:
        if e["correct"]:
            assert e["c"] > 0 and e["g_norm"] > 0
            assert e["attack_l2"] is None or 0 < e["attack_l2"] <= 8
        else:
            assert e["attack_l2"] == 0.0
        assert e["nu"] is not None and math.isfinite(e["nu"])


def test_lemma_quantities_and_attack_match_the_closed_form_on_a_linear_classifier():
    # Two classes, logits W x + b: the margin is linear, so nu = 0, both bounds equal c / |g|,
    # and that is also the exact l2 distance to the decision boundary (inside the pixel box).
    from curvtools.cli_lemma import lemma_quantities, smallest_l2_attack
    from curvtools.lemma import lemma1_bounds

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 2)).eval()
    with torch.no_grad():
        model[1].weight.mul_(10.0)
    x = 0.45 + 0.1 * torch.rand(4, 2, 2, 2)
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # all correctly classified
    q = lemma_quantities(model, x, y, tol=1e-8, max_iter=8, dtype=torch.float64, seed=0)
    w = model[1].weight.detach().double()
    direction = (w[y] - w[1 - y]).numpy()  # grad of the margin, per example
    logits = model(x).detach().double()
    margin = (logits.gather(1, y[:, None]) - logits.gather(1, (1 - y)[:, None])).squeeze(1)
    np.testing.assert_allclose(q["c"], margin.numpy(), rtol=1e-6)
    np.testing.assert_allclose(q["g_norm"], np.linalg.norm(direction, axis=1), rtol=1e-6)
    np.testing.assert_allclose(q["nu"], 0.0, atol=1e-12)
    lower, upper = lemma1_bounds(q["c"], q["g_norm"], q["nu"], q["g_dot_u"])
    exact = margin.numpy() / np.linalg.norm(direction, axis=1)
    np.testing.assert_allclose(lower, exact, rtol=1e-6)
    attack = smallest_l2_attack(model, x, y, eps_max=1.0, bisect_steps=10, steps=20,
                                restarts=1, seed=0)
    assert np.all(attack >= exact - 1e-6)  # PGD cannot beat the exact minimum
    # PGD-l2 from a random start keeps part of its orthogonal start component, so it lands a
    # little outside the exact minimum; bisection resolution is 1/2^10.
    assert np.all(attack <= 1.05 * exact)


def test_lemma_cli_says_when_nu_did_not_converge(run_dir, capsys):
    main(["lemma", "--ckpt", str(run_dir / "silu.pt"), "--n", "2", "--steps", "1",
          "--bisect-steps", "1", "--max-iter", "1", "--device", "cpu"])
    assert "nu converged (relative Ritz residual <= --tol) for 0/2 examples" in \
        capsys.readouterr().out


def test_hessian_on_a_run_directory_checks_every_checkpoint_before_any_work(run_dir, tmp_path,
                                                                            capsys):
    damaged = tmp_path / "run"
    damaged.mkdir()
    for name in ("epoch_0001.pt", "epoch_0002.pt", "last.pt"):
        (damaged / name).write_bytes((run_dir / name).read_bytes())
    (damaged / "epoch_0002.pt").write_bytes((run_dir / "epoch_0002.pt").read_bytes()[:300])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["hessian", "--ckpt", str(damaged), "--n", "2", "--max-iter", "4",
              "--json", str(tmp_path / "curve.json"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert exc.value.code == 2 and "epoch_0002.pt" in captured.err
    assert captured.err.count("\n") == 1 and "lambda_max" not in captured.out  # no work done


@pytest.mark.parametrize("args,word", [
    (["--tol", "1"], "--tol"), (["--tol", "inf"], "--tol"), (["--seed", "-1"], "--seed"),
    (["--plot", "h.txt"], ".png"), (["--plot", "h"], ".png")])
def test_hessian_refuses_bad_tol_seed_and_plot_suffix_before_any_work(run_dir, tmp_path,
                                                                       capsys, args, word):
    args = [str(tmp_path / a) if a.startswith("h") else a for a in args]
    with pytest.raises(SystemExit) as exc:
        main(["hessian", "--ckpt", str(run_dir / "last.pt"), "--n", "2", "--device", "cpu",
              "--json", str(tmp_path / "h.json"), *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and word in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_hessian_outputs_never_replace_the_checkpoints_they_read(run_dir, capsys):
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    for option, target in (("--csv", "last.pt"), ("--json", "epoch_0001.pt")):
        with pytest.raises(SystemExit) as exc:
            main(["hessian", "--ckpt", str(run_dir), "--n", "2", option, str(run_dir / target)])
        assert exc.value.code == 2 and "input" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_lemma_accepts_a_run_directory_and_says_it_used_last_pt(run_dir, tmp_path, capsys):
    out = tmp_path / "lemma.json"
    main(["lemma", "--ckpt", str(run_dir), "--n", "2", "--steps", "1", "--bisect-steps", "1",
          "--max-iter", "2", "--device", "cpu", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "a run directory, using its last checkpoint last.pt" in printed
    assert json.loads(out.read_text())["checkpoint"] == str(run_dir / "last.pt")


@pytest.mark.parametrize("command", ["hessian", "lemma"])
def test_spectra_commands_share_harness_device_rule(run_dir, capsys, command):
    # "meta" is a torch device but nothing runs on it: harness.train.resolve_device refuses it
    with pytest.raises(SystemExit) as exc:
        main([command, "--ckpt", str(run_dir / "silu.pt"), "--n", "2", "--device", "meta"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "meta" in err and err.count("\n") == 1


def test_hessian_files_are_written_by_the_one_atomic_writer(run_dir, tmp_path, monkeypatch,
                                                            capsys):
    import curvtools.fileio as fileio

    written = []
    real = fileio.write_bytes_atomic
    monkeypatch.setattr(fileio, "write_bytes_atomic",
                        lambda path, data: (written.append(Path(path).name), real(path, data)))
    main(["hessian", "--ckpt", str(run_dir / "silu.pt"), "--n", "2", "--max-iter", "4",
          "--tol", "0.5", "--device", "cpu", "--json", str(tmp_path / "h.json"),
          "--csv", str(tmp_path / "h.csv")])
    assert sorted(written) == ["h.csv", "h.json"]


def _finite_points(ax):
    points = [line.get_xydata() for line in ax.get_lines()]
    points += [c.get_paths()[0].vertices for c in ax.collections if c.get_paths()]
    xy = np.concatenate(points)
    return xy[np.isfinite(xy).all(axis=1)]


def test_hessian_curve_has_quantile_bands_whole_epoch_ticks_and_holds_every_point():
    from curvtools.spectra_plots import curve_figure
    from curvtools.spectra_report import spectra_summary

    rng = np.random.default_rng(0)
    rows = [{"epoch": e, "summary": spectra_summary(rng.normal(e, 1.0, 50), -rng.random(50),
                                                    [True] * 50, [5] * 50)}
            for e in (1, 2, 3, 5)]
    fig = curve_figure(rows, "t")
    ax = fig.axes[0]
    fig.canvas.draw()
    assert len(ax.collections) == 2  # the 25-75% and 5-95% bands
    labels = [t.get_label() for t in ax.collections]
    assert labels == ["5-95% of examples", "25-75% of examples"]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    xy = _finite_points(ax)
    assert np.all((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1))
    ticks = [t for t in ax.get_xticks() if x0 <= t <= x1]
    assert ticks and all(float(t).is_integer() for t in ticks)
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert all(s.replace("\u2212", "-").lstrip("-").isdigit() for s in shown), shown


def test_hessian_histogram_bins_have_one_width_and_the_title_names_what_is_shown(run_dir,
                                                                                 tmp_path,
                                                                                 monkeypatch,
                                                                                 capsys):
    import curvtools.spectra_plots as plots

    figures = []
    real = plots.save
    monkeypatch.setattr(plots, "save", lambda fig, path: (figures.append(fig), real(fig, path)))
    main(["hessian", "--ckpt", str(run_dir / "silu.pt"), "--n", "6", "--max-iter", "6",
          "--tol", "0.5", "--device", "cpu", "--plot", str(tmp_path / "h.svg")])
    (fig,) = figures
    ax = fig.axes[0]
    title = ax.get_title()
    assert "silu" in title and "silu.pt" in title and "epoch 3" in title and "6 test" in title
    widths = {round(p.get_width(), 12) for p in ax.patches}
    assert len(widths) == 1  # lambda_max and lambda_min bars share one bin width
    assert (tmp_path / "h.svg").read_text().lstrip().startswith("<?xml")

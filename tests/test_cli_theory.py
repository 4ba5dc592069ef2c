"""The `curvtools curvature` and `curvtools twolayer` commands, and the generated theory page."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from curvtools.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def _ok(argv, capsys):
    try:
        main(argv)
    except SystemExit as err:
        assert err.code in (0, None), capsys.readouterr().err
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["curvature", "--act", "nosuch"],
    ["curvature", "--act", "leakyrelu", "--k", "abc"],
    ["curvature", "--act", "pswish", "--beta", "0"],
    ["curvature", "--act", "expr", "--expr", "y+1"],
    ["curvature", "--act", "expr", "--expr", "3"],
    ["curvature", "--act", "expr", "--expr", "import os"],
    ["curvature", "--act", "gelu", "--json", "out.txt"],
    ["curvature", "--act", "all", "--k", "0.3"],
    ["twolayer", "--act", "gelu", "--dim", "0"],
    ["twolayer", "--act", "nosuch"],
    ["curvature", "--act", "expr"],  # no silent default expression
    ["twolayer", "--act", "expr"],
    ["twolayer", "--act", "silu", "--seed", "-1"],
    ["twolayer", "--act", "silu", "--seed", str(2**63)],
    ["curvature", "--act", "gelu", "--plot", "noext"],
])
def test_bad_input_exits_2_with_one_line_on_stderr(argv, capsys):
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1


def test_bad_plot_path_does_not_overwrite_existing_json(tmp_path, capsys):
    target = tmp_path / "keep.json"
    target.write_text("precious")
    code, _, _ = _run(["curvature", "--act", "gelu", "--json", str(target), "--plot",
                       str(tmp_path / "fig.txt")], capsys)  # .svg is a figure suffix now
    assert code == 2 and target.read_text() == "precious"


def test_curvature_gelu_prints_exact_max_and_writes_json_and_plot(tmp_path, capsys):
    out = _ok(["curvature", "--act", "gelu", "--json", str(tmp_path / "g.json"),
               "--plot", str(tmp_path / "g.png")], capsys)
    assert "sqrt(2)/sqrt(pi)" in out and "0.7978845608" in out
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["activations"][0]["max_value"] == pytest.approx(0.7978845608028654)
    assert (tmp_path / "g.png").stat().st_size > 1000


def test_curvature_all_ranks_lisht_gelu_mish_silu_in_the_papers_order(tmp_path, capsys):
    out = _ok(["curvature", "--act", "all", "--plot", str(tmp_path / "all.pdf")], capsys)
    ranking = out.split("ranked by curvature")[1]
    positions = [ranking.index(f" {n} ") for n in ("lisht", "gelu", "mish", "silu")]
    assert positions == sorted(positions)
    assert (tmp_path / "all.pdf").exists()


def test_twolayer_shows_eq2_agreement_and_bounds_hold(tmp_path, capsys):
    out = _ok(["twolayer", "--act", "silu", "--dim", "4", "--hidden", "6", "--n", "4",
               "--slsqp-starts", "5", "--json", str(tmp_path / "t.json")], capsys)
    assert "all inside Lemma 1 bounds: True" in out
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["eq2_max_abs_err"] < 1e-12 and len(data["instances"]) == 4


def test_curvature_command_does_not_import_torch():
    code = ("import sys\nfrom curvtools.cli import main\n"
            "try:\n    main(['curvature', '--act', 'tanh'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT)


def test_committed_theory_doc_equals_the_generated_text():
    from curvtools.theory_doc import generate

    committed = (ROOT / "docs" / "theory.md").read_text()
    assert committed == generate(), "regenerate: python -m curvtools.theory_doc > docs/theory.md"


def test_committed_guide_equals_the_generated_text():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_guide", ROOT / "scripts" / "make_guide.py")
    make_guide = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_guide)
    committed = (ROOT / "docs" / "guide.md").read_text()
    assert committed == make_guide.generate(), "regenerate: python scripts/make_guide.py"


def test_enclosure_is_called_certified_only_when_it_is(capsys):
    out = _ok(["curvature", "--act", "expr", "--expr", "x**3"], capsys)  # f'' = 6x: unbounded
    assert "max f'' = sup inf (not attained, x -> inf)" in out  # its exact limit
    assert "enclosure [inf, inf]" in out and "certified enclosure" not in out
    out = _ok(["curvature", "--act", "tanh"], capsys)
    assert out.count("certified enclosure") == 2


def test_tol_help_says_absolute_below_one_and_relative_above(capsys):
    out = " ".join(_ok(["curvature", "--help"], capsys).split())
    assert "(absolute)" not in out and "relative" in out


def test_attained_argmin_is_printed_for_an_extremum_on_a_half_line(capsys):
    out = _ok(["curvature", "--act", "expr", "--expr", "x*abs(x)"], capsys)
    assert "min f'' = -2 (argmin -1)" in out and "|x| -> inf" not in out


@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
def test_curvature_plot_takes_every_figure_suffix(tmp_path, capsys, suffix):
    target = tmp_path / f"f{suffix}"
    _ok(["curvature", "--act", "silu", "--plot", str(target)], capsys)
    assert target.stat().st_size > 1000


def test_twolayer_stderr_is_clean():
    result = subprocess.run([sys.executable, "-m", "curvtools.cli", "twolayer", "--act", "silu",
                             "--dim", "3", "--hidden", "4", "--n", "2", "--slsqp-starts", "2"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.parametrize("command", ["curvature", "twolayer"])
def test_activation_parameters_are_typed_floats_with_the_registrys_help(command, capsys):
    import re

    out = _ok([command, "--help"], capsys)
    for name in ("k", "beta", "alpha"):
        row = next(line for line in out.splitlines() if re.search(rf"--{name}\b", line))
        assert re.search(r"<float>|FLOAT", row), row
    flat = " ".join(out.replace("\u2502", " ").split())  # rich wraps rows inside a box
    assert "softplus: sharpness" in flat and "pswish: fixed (not learned) slope" in flat


def test_a_non_number_parameter_is_a_usage_error(capsys):
    code, _, err = _run(["curvature", "--act", "pswish", "--beta", "two"], capsys)
    assert code == 2 and "--beta" in err and err.count("\n") == 1


def test_an_exact_value_equal_to_its_float_is_printed_once(capsys):
    out = _ok(["curvature", "--act", "lisht"], capsys)
    assert "max f'' = 2 (argmax 0)" in out and "2 = 2" not in out
    out = _ok(["curvature", "--act", "silu"], capsys)
    assert "max f'' = 0.5 = 1/2 (argmax 0)" in out


@pytest.mark.parametrize("b", ["1", "4"])
def test_an_infimum_at_infinity_prints_its_exact_limit_certified_for_every_parameter(b, capsys):
    out = _ok(["curvature", "--act", "expr", "--expr", f"(x + sqrt(x**2 + {b}))/2"], capsys)
    assert "min f'' = inf 0 (not attained, x -> " in out
    assert "); certified enclosure [0, 0]" in out.split("min f''")[1].split("\n")[0]
    assert "NOT certified" not in out and "e-09" not in out


def test_softplus_infimum_is_not_attained_and_not_a_window_edge(tmp_path, capsys):
    out = _ok(["curvature", "--act", "softplus", "--json", str(tmp_path / "s.json")], capsys)
    assert "min f'' = inf 0 (not attained, x -> -inf)" in out
    assert "e-324" not in out.split("min f''")[1].split(";")[0]
    entry = json.loads((tmp_path / "s.json").read_text())["activations"][0]
    assert entry["argmin"] in (None, "-inf") and entry["min_limit"] == 0.0
    assert entry["min_exact"] == "0" and entry["argmin_at_infinity"] is True


def test_all_activations_figure_keeps_every_curve_visible_and_inside_the_axes(tmp_path):
    import numpy as np

    from curvtools.activations import builtin_names, resolve
    from curvtools.figures import activation_figure

    fig = activation_figure([resolve(n) for n in builtin_names()])
    axes = fig.axes
    styles = {(line.get_color(), str(line.get_linestyle()), line.get_marker())
              for line in axes[0].get_lines() if line.get_label() and
              not line.get_label().startswith("_")}
    assert len(styles) == len(builtin_names())  # no two curves drawn alike
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "pswish(beta=1) (= silu)" in labels and "relu" in labels and "lisht" in labels
    legend_box = fig.legends[0].get_window_extent(fig.canvas.get_renderer())
    for ax in axes:  # the legend covers no panel
        assert not legend_box.overlaps(ax.get_window_extent())
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        for line in ax.get_lines():
            xy = line.get_xydata()
            xy = xy[np.isfinite(xy).all(axis=1)]
            if line.get_label().startswith("_"):  # the zero axes lines
                continue
            assert np.all((xy[:, 0] >= x0) & (xy[:, 0] <= x1))
            assert np.all((xy[:, 1] >= y0) & (xy[:, 1] <= y1)), line.get_label()

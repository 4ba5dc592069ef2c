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
                       str(tmp_path / "fig.svg")], capsys)
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
    assert "enclosure [6144, inf]" in out and "certified enclosure" not in out
    out = _ok(["curvature", "--act", "tanh"], capsys)
    assert out.count("certified enclosure") == 2


def test_tol_help_says_absolute_below_one_and_relative_above(capsys):
    out = " ".join(_ok(["curvature", "--help"], capsys).split())
    assert "(absolute)" not in out and "relative" in out


def test_attained_argmin_is_printed_for_an_extremum_on_a_half_line(capsys):
    out = _ok(["curvature", "--act", "expr", "--expr", "x*abs(x)"], capsys)
    assert "min f'' = -2 (argmin -1)" in out and "|x| -> inf" not in out

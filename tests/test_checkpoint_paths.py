"""The one rule for ``--ckpt PATH`` (curvtools.checkpoint_paths): files, run directories,
copies of epoch files. Pure path logic: these tests write empty files."""

import subprocess
import sys
from pathlib import Path

import pytest

from curvtools.checkpoint_paths import checkpoints_in_run, epoch_in_name, resolve_checkpoints
from curvtools.errors import BadInput


def _run(tmp_path: Path, names: list[str]) -> Path:
    for name in names:
        (tmp_path / name).write_bytes(b"")
    return tmp_path


EPOCHS = {"last.pt": 4, "best.pt": 2}


def test_a_file_means_itself(tmp_path):
    f = _run(tmp_path, ["x.pt"]) / "x.pt"
    for series in (True, False):
        choice = resolve_checkpoints(f, "--ckpt", series=series)
        assert choice.paths == [f] and choice.note is None and choice.skipped == []


def test_a_series_skips_last_and_best_when_an_epoch_file_holds_their_epoch(tmp_path):
    run = _run(tmp_path, ["epoch_0004.pt", "epoch_0002.pt", "last.pt", "best.pt",
                          "config.json"])
    choice = resolve_checkpoints(run, "--ckpt", series=True, epoch_of=lambda p: EPOCHS[p.name])
    assert [p.name for p in choice.paths] == ["epoch_0002.pt", "epoch_0004.pt"]
    assert [(c.name, k.name) for c, k in choice.skipped] == [("last.pt", "epoch_0004.pt"),
                                                            ("best.pt", "epoch_0002.pt")]
    assert "skipped as copies: last.pt (= epoch_0004.pt), best.pt (= epoch_0002.pt)" in \
        choice.note


def test_a_series_keeps_last_when_its_epoch_has_no_epoch_file(tmp_path):
    run = _run(tmp_path, ["epoch_0002.pt", "last.pt", "best.pt"])
    epochs = {"last.pt": 5, "best.pt": 5}  # best = last: best is the copy of last
    choice = resolve_checkpoints(run, "--ckpt", series=True, epoch_of=lambda p: epochs[p.name])
    assert [p.name for p in choice.paths] == ["epoch_0002.pt", "last.pt"]
    assert [(c.name, k.name) for c, k in choice.skipped] == [("best.pt", "last.pt")]


def test_without_epoch_reader_nothing_is_skipped_on_a_guess(tmp_path):
    run = _run(tmp_path, ["epoch_0001.pt", "last.pt"])
    choice = resolve_checkpoints(run, "--ckpt", series=True)
    assert [p.name for p in choice.paths] == ["epoch_0001.pt", "last.pt"] and not choice.skipped


def test_a_single_checkpoint_command_takes_the_runs_last_pt_and_says_so(tmp_path):
    run = _run(tmp_path, ["epoch_0001.pt", "last.pt"])
    choice = resolve_checkpoints(run, "--ckpt", series=False)
    assert choice.paths == [run / "last.pt"] and "last" in choice.note and str(run) in choice.note


@pytest.mark.parametrize("names,series,word", [([], True, "no checkpoints"),
                                               (["epoch_0001.pt"], False, "without last.pt")])
def test_a_folder_without_usable_checkpoints_is_refused(tmp_path, names, series, word):
    run = _run(tmp_path, names)
    with pytest.raises(BadInput, match=word):
        resolve_checkpoints(run, "--ckpt", series=series)
    with pytest.raises(BadInput, match="does not exist"):
        resolve_checkpoints(run / "nope", "--ckpt", series=series)


def test_listing_and_epoch_names(tmp_path):
    run = _run(tmp_path, ["epoch_0010.pt", "epoch_0009.pt", "last.pt", "best.pt", "epoch_x.pt"])
    assert [p.name for p in checkpoints_in_run(run)] == ["epoch_0009.pt", "epoch_0010.pt",
                                                         "best.pt", "last.pt"]
    assert epoch_in_name(Path("epoch_0012.pt")) == 12 and epoch_in_name(Path("last.pt")) is None


def test_the_module_imports_neither_torch_nor_harness():
    code = ("import sys, curvtools.checkpoint_paths\n"
            "print(any(m == 'torch' or m.split('.')[0] == 'harness' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""Fuzzing the readers of checkpoints: random mutations of a real checkpoint's entries (types
swapped, values huge, negative or NaN, nested bombs, entries deleted, foreign entries, tensors of
other shapes and dtypes, a pickled object) fed to ``load_model``, the resume checks, ``harness
eval`` and ``curvtools hessian``. Each must load or refuse with one ``BadInput`` line (exit 2):
never another exception, never a hang (hypothesis' deadline), never code run (a marker file).

Derandomized and bounded (``max_examples``, ``deadline``): the same examples in every run, a
few seconds each test on one core. ``LOWCURV_FUZZ_EXAMPLES=N`` runs N examples per test instead
(e.g. 500 for a long hunt; the suite's default is 30).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curvtools.errors import BadInput
from harness.checkpoint import load_checkpoint, load_model, save_checkpoint
from harness.config import TrainConfig

RUN = dict(dataset="digits", width=0.0625, epochs=1, batch_size=50, train_subset=100,
           val_subset=20, test_subset=20, train_steps=1, eval_steps=1, eps_255=24, alpha_255=8,
           lr=0.05, lr_milestones=[1.0], eval_batch_size=64, device="cpu", precision="fp32")
EXAMPLES = int(os.environ.get("LOWCURV_FUZZ_EXAMPLES", "30"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=20), derandomize=True,
                database=None, suppress_health_check=list(HealthCheck))


class _TouchMarker:
    """Unpickling this would run ``touch MARKER``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from harness.train import run_training

    out = tmp_path_factory.mktemp("fuzz") / "run"
    torch.set_num_threads(1)
    run_training(TrainConfig.from_dict(RUN), out, progress=False)
    return out


def _bomb(levels: int) -> list:
    inner: list = [1.0]
    for _ in range(levels):
        inner = [inner, inner]
    return inner


VALUES = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-1, 0, 2**63, 10**400, -(10**30)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -1e308]),
    st.text(max_size=12), st.just("x" * 100_000),
    st.lists(st.integers(-3, 3), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(-2, 2), max_size=3),
    st.integers(10, 64).map(_bomb),
    st.tuples(st.lists(st.integers(0, 4), max_size=3),
              st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8,
                               torch.bool])).map(lambda s: torch.zeros(s[0], dtype=s[1])),
)


def _places(payload: dict) -> list[tuple]:
    """Paths of entries to mutate: every top-level entry, the keys of the plain mappings one
    and two levels down, and a few weights, optimizer and RNG entries."""
    places: list[tuple] = [(k,) for k in payload]
    for key in ("config", "train_config", "metrics", "scheduler", "run", "rng", "optimizer"):
        if isinstance(payload.get(key), dict):
            places += [(key, k) for k in payload[key]]
    places += [("config", "act", "name"), ("config", "act", "params"),
               ("optimizer", "param_groups", 0), ("train_config", "act_params")]
    places += [("model", k) for k in list(payload["model"])[:4]]
    return places


def _mutate(payload: dict, place: tuple, action: str, value: Any) -> dict:
    out = copy.deepcopy(payload)
    parent = out
    for key in place[:-1]:
        parent = parent[key] if isinstance(parent, dict | list) else None
        if parent is None:
            return out
    last = place[-1]
    if isinstance(parent, dict):
        if action == "delete":
            parent.pop(last, None)
        elif action == "foreign":
            parent[f"foreign_{last}"] = value
        else:
            parent[last] = value
    elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
        parent[last] = value
    return out


MUTATIONS = st.tuples(st.integers(0, 10_000), st.sampled_from(["replace", "delete", "foreign"]),
                      VALUES)


def _write_mutant(run: Path, name: str, mutation, where: Path) -> Path:
    payload = load_checkpoint(run / name)
    places = _places(payload)
    index, action, value = mutation
    mutant = _mutate(payload, places[index % len(places)], action, value)
    save_checkpoint(where, mutant)
    return where


def _pickled_object(path: Path, payload: dict, marker: Path) -> None:
    save_checkpoint(path, payload | {"metrics": _TouchMarker(str(marker))})


@FUZZ
@given(mutation=MUTATIONS)
def test_load_model_loads_or_refuses_every_mutant_in_one_line(run, tmp_path_factory, mutation):
    path = _write_mutant(run, "last.pt", mutation, tmp_path_factory.mktemp("m") / "last.pt")
    try:
        load_model(path)
    except BadInput as err:
        assert "\n" not in str(err) and len(str(err)) < 2000, str(err)[:3000]


def _engine(run: Path):
    from harness.step import build_engine

    record = json.loads((run / "config.json").read_text())
    cfg = TrainConfig.from_dict(record["train_config"])
    return cfg, build_engine(cfg, record["model_config"], torch.device("cpu"), None, False)


@FUZZ
@given(mutation=MUTATIONS)
def test_resume_checks_accept_or_refuse_every_mutant_before_writing(run, tmp_path_factory,
                                                                  mutation):
    from harness.resume import check_resume, restore_engine
    from harness.rundir import RunDir

    copy_dir = tmp_path_factory.mktemp("r") / "run"
    shutil.copytree(run, copy_dir)
    _write_mutant(run, "last.pt", mutation, copy_dir / "last.pt")
    before = {p.name: p.read_bytes() for p in copy_dir.iterdir() if p.is_file()}
    cfg, engine = _engine(run)
    try:
        resumed = check_resume(RunDir(copy_dir), TrainConfig.from_dict(RUN | {"epochs": 2}),
                               user_module=False)
        restore_engine(engine, resumed.ckpt, resumed.path)
        resumed.rows_kept()
        resumed.precision_changes("fp32")
    except BadInput as err:
        assert "\n" not in str(err) and len(str(err)) < 2000, str(err)[:3000]
    assert {p.name: p.read_bytes() for p in copy_dir.iterdir() if p.is_file()} == before


def _cli(prog: str, argv: list[str]) -> int:
    if prog == "harness":
        from harness.cli import main
    else:
        from curvtools.cli import main
    try:
        main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


@settings(FUZZ, max_examples=max(1, EXAMPLES // 3))
@given(mutation=MUTATIONS, name=st.sampled_from(["last.pt", "best.pt"]))
def test_eval_hessian_and_resume_commands_exit_0_or_2_on_every_mutant(run, tmp_path_factory,
                                                                      capsys, mutation, name):
    copy_dir = tmp_path_factory.mktemp("c") / "run"
    shutil.copytree(run, copy_dir)
    _write_mutant(run, name, mutation, copy_dir / name)
    fast = ["--device", "cpu"]
    codes = {
        "eval": _cli("harness", ["eval", "--ckpt", str(copy_dir / name), "--n", "2", "--steps",
                                 "1", "--restarts", "1", "--no-progress", *fast]),
        "hessian": _cli("curvtools", ["hessian", "--ckpt", str(copy_dir), "--n", "1",
                                      "--max-iter", "2", "--tol", "0.5", *fast]),
        "resume": _cli("harness", ["train", "--out", str(copy_dir), "--resume", "--epochs", "1",
                                   "--no-progress", *fast]),
    }
    err = capsys.readouterr().err
    assert set(codes.values()) <= {0, 2}, (codes, err[-3000:])
    assert "Traceback" not in err


def test_a_pickled_object_in_any_entry_never_runs(run, tmp_path):
    marker = tmp_path / "PWNED"
    payload = load_checkpoint(run / "last.pt")
    _pickled_object(tmp_path / "p.pt", payload, marker)
    with pytest.raises(BadInput, match="pickled code"):
        load_model(tmp_path / "p.pt")
    assert not marker.exists()


def test_regression_a_null_data_dir_in_a_checkpoint_is_one_line_everywhere(run, tmp_path):
    """Found by the fuzz above: ``train_config.data_dir = None`` crashed ``curvtools hessian``
    (``Path(None)``) and ``--resume`` (a config that validation let through)."""
    from curvtools.testset import load_test_images
    from harness.config import TrainConfig

    with pytest.raises(BadInput, match=r"data_dir=None must be a folder path, not null"):
        TrainConfig.from_dict({"dataset": "digits", "data_dir": None})
    payload = load_checkpoint(run / "last.pt")
    payload["train_config"]["data_dir"] = None  # the one checked rule reads it as "data"
    x, y, _ = load_test_images(payload, 10, 0, None)
    assert x.shape[0] == 10 and y.shape == (10,)

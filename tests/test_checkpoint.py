"""harness.checkpoint: atomic writes, weights_only loading, one-line errors, model round trip."""

from __future__ import annotations

import os

import pytest
import torch

from curvtools.activations import resolve
from curvtools.errors import BadInput
from harness.checkpoint import (
    FORMAT,
    load_checkpoint,
    load_model,
    load_state_checked,
    save_checkpoint,
)
from harness.models import build_model


def _config(act: str = "silu") -> dict:
    return {"arch": "preactresnet18", "act": resolve(act).config(), "num_classes": 10,
            "in_channels": 3, "width": 0.125, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path):
    config = _config()
    torch.manual_seed(0)
    model = build_model(config)
    model.train()
    model(torch.rand(8, 3, 32, 32))  # move BN running statistics away from their init
    model.eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "m.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": config, "epoch": 3,
                           "metrics": {"val_robust_acc": 0.25}})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["epoch"] == 3
    loaded, ckpt = load_model(path)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert ckpt["metrics"]["val_robust_acc"] == 0.25


def test_optimizer_and_rng_state_load_with_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(4, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(3)
    payload = {"model": model.state_dict(), "config": {}, "optimizer": opt.state_dict(),
               "rng": {"torch": torch.get_rng_state(), "gen": gen.get_state()}}
    save_checkpoint(tmp_path / "c.pt", payload)
    back = load_checkpoint(tmp_path / "c.pt")
    opt2 = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.5, momentum=0.9)
    opt2.load_state_dict(back["optimizer"])
    assert opt2.param_groups[0]["lr"] == 0.1
    assert torch.equal(back["rng"]["gen"], gen.get_state())


def test_save_replaces_atomically_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {}, "config": {}, "epoch": 1})

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model": {}, "config": {}, "epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1  # the old file survives a failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_missing_garbage_and_foreign_files_raise_one_line_bad_input(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInput, match="cannot be read") as err:
        load_checkpoint(junk)
    assert "\n" not in str(err.value)
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(BadInput, match="not a lowcurv checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"format": "lowcurv-checkpoint/99", "model": {}, "config": {}},
               tmp_path / "future.pt")
    with pytest.raises(BadInput, match="format"):
        load_checkpoint(tmp_path / "future.pt")


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    from fractions import Fraction  # any class outside torch's weights_only allow-list

    torch.save({"format": FORMAT, "model": {}, "config": Fraction(1, 3)}, tmp_path / "evil.pt")
    with pytest.raises(BadInput, match="cannot be read"):
        load_checkpoint(tmp_path / "evil.pt")


def test_state_dict_that_does_not_fit_the_config_is_bad_input(tmp_path):
    model = build_model(_config())
    config = _config() | {"width": 0.25}
    save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "config": config})
    with pytest.raises(BadInput, match="does not match"):
        load_model(tmp_path / "m.pt")


@pytest.mark.parametrize("key,value", [("train_config", ["digits"]), ("train_config", "digits"),
                                       ("model", [1, 2]), ("model", torch.zeros(3)),
                                       ("config", "preactresnet18")])
def test_entries_read_as_mappings_must_be_mappings(tmp_path, key, value):
    model = build_model(_config())
    payload = {"model": model.state_dict(), "config": _config(),
               "train_config": {"dataset": "digits"}}
    save_checkpoint(tmp_path / "m.pt", payload | {key: value})
    with pytest.raises(BadInput, match=rf"has a '{key}' entry of type "
                                       rf"{type(value).__name__}; allowed: a mapping"):
        load_checkpoint(tmp_path / "m.pt")


def test_every_load_state_dict_refusal_is_one_line_bad_input():
    model = build_model(_config())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    two_groups = {"state": {}, "param_groups": [{"params": [0]}, {"params": [1]}]}
    for target, state, kind in [(model, {"core.conv1.weight": torch.zeros(1)}, "RuntimeError"),
                                (optimizer, two_groups, "ValueError"),
                                (optimizer, {"state": {}}, "KeyError"),
                                (model, [1, 2], "not a state_dict mapping")]:
        with pytest.raises(BadInput) as err:
            load_state_checked(target, state, "checkpoint 'x.pt': 'part' does not fit")
        message = str(err.value)
        assert message.startswith("checkpoint 'x.pt': 'part' does not fit") and kind in message
        assert "\n" not in message

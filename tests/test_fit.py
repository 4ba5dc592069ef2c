"""harness.fit: a user's nn.Module and tensors under the exact protocol of harness train."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from curvtools.errors import BadInput
from harness.checkpoint import load_model
from harness.config import TrainConfig
from harness.datasets import open_source
from harness.fitting import fit
from harness.rundir import refuse_user_module
from harness.train import run_training

CFG = TrainConfig(epochs=2, train_steps=2, eval_steps=2, batch_size=64, device="cpu",
                  precision="fp32", lr_milestones=[1.0], seed=5)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(256, 16), nn.BatchNorm1d(16), nn.SiLU(),
                         nn.Linear(16, 10))


@pytest.fixture(scope="module")
def data():
    source = open_source("digits")
    x, y = source.images("train", range(260)), source.labels("train")[:260]
    xt, yt = source.images("test", range(60)), source.labels("test")[:60]
    return {"train": (x[:200], y[:200]), "val": (x[200:], y[200:]), "test": (xt, yt)}


def _rows(path):
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("_seconds")}
            for line in (path / "metrics.jsonl").read_text().splitlines()]


def _weights(path):
    return torch.load(path / "last.pt", weights_only=True)["model"]


def _same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "straight"
    rows = fit(_net(), **data, cfg=CFG, out_dir=out)
    return out, rows


def test_fit_writes_the_run_directory_of_harness_train(straight):
    out, rows = straight
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.jsonl", "last.pt",
                                               "best.pt", "DONE"}
    assert [r["epoch"] for r in rows] == [1, 2] and _rows(out) == [
        {k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]
    record = json.loads((out / "config.json").read_text())
    assert record["model_config"]["arch"] == "user-module"
    assert record["model_config"]["class"] == "torch.nn.modules.container.Sequential"
    assert record["data"]["num_train"] == 200 and record["data"]["source"]["num_val"] == 60
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["config"] == record["model_config"] and ckpt["epoch"] == 2


def test_fit_resume_continues_bit_for_bit(straight, data, tmp_path):
    out, _ = straight
    fit(_net(), **data, cfg=dataclasses.replace(CFG, epochs=1), out_dir=tmp_path)
    fit(_net(seed=9), **data, cfg=CFG, out_dir=tmp_path, resume=True)  # weights from last.pt
    assert _rows(tmp_path) == _rows(out)
    assert _same_weights(_weights(tmp_path), _weights(out))


def test_fit_of_the_registry_model_and_data_equals_run_training(tmp_path):
    from harness.models import build_model
    from harness.run_data import load_run_data

    cfg = TrainConfig(dataset="digits", width=0.0625, epochs=1, train_subset=100, val_subset=30,
                      test_subset=30, train_steps=2, eval_steps=2, batch_size=50,
                      device="cpu", precision="fp32", seed=2)
    run_training(cfg, tmp_path / "registry", progress=False)
    record = json.loads((tmp_path / "registry" / "config.json").read_text())
    run = load_run_data(cfg, torch.device("cpu"), False)
    parts = {p: (getattr(run, p).images, getattr(run, p).labels) for p in ("train", "val", "test")}
    torch.manual_seed(cfg.seed)
    net = build_model(record["model_config"])
    plain = dataclasses.replace(cfg, dataset="cifar10", width=1.0, train_subset=None,
                                val_subset=None, test_subset=None)
    fit(net, **parts, cfg=plain, out_dir=tmp_path / "fit")
    assert _rows(tmp_path / "fit") == _rows(tmp_path / "registry")
    assert _same_weights(_weights(tmp_path / "fit"), _weights(tmp_path / "registry"))


def test_fit_float_images_on_the_255_grid_train_as_their_uint8(data, tmp_path):
    one = dataclasses.replace(CFG, epochs=1)
    as_float = {p: (x.float() / 255, y) for p, (x, y) in data.items()}
    fit(_net(), **data, cfg=one, out_dir=tmp_path / "u8")
    fit(_net(), **as_float, cfg=one, out_dir=tmp_path / "f32")
    assert _same_weights(_weights(tmp_path / "u8"), _weights(tmp_path / "f32"))


@pytest.mark.parametrize("setting", [{"dataset": "digits"}, {"arch": "resnet18"},
                                     {"width": 0.5}, {"act": "silu"}, {"train_subset": 100}])
def test_fit_refuses_settings_it_does_not_use(data, tmp_path, setting):
    cfg = dataclasses.replace(CFG, **setting)
    with pytest.raises(BadInput, match=f"does not use cfg.{next(iter(setting))}") as err:
        fit(_net(), **data, cfg=cfg, out_dir=tmp_path / "run")
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, match", [
    (lambda d: {**d, "train": (d["train"][0].float() / 300, d["train"][1])},
     "not multiples of 1/255"),
    (lambda d: {**d, "val": (d["val"][0][:, :, :8], d["val"][1])}, "differ in shape"),
    (lambda d: {**d, "test": (d["test"][0], d["test"][1] + 10)}, "out of range"),
    (lambda d: {**d, "train": (d["train"][0], d["train"][1][:5])}, "one per image"),
])
def test_fit_refuses_bad_data_in_one_line_before_writing(data, tmp_path, change, match):
    with pytest.raises(BadInput, match=match) as err:
        fit(_net(), **change(data), cfg=CFG, out_dir=tmp_path / "run")
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


def test_fit_refuses_a_model_that_does_not_give_logits(data, tmp_path):
    with pytest.raises(BadInput, match="logits"):
        fit(nn.Sequential(nn.Flatten(), nn.Linear(256, 1), nn.Flatten(0)), **data, cfg=CFG,
            out_dir=tmp_path)


def test_fit_resume_refuses_a_module_of_another_class(straight, data, tmp_path):
    class Other(nn.Sequential):
        pass

    fit(_net(), **data, cfg=dataclasses.replace(CFG, epochs=1), out_dir=tmp_path)
    with pytest.raises(BadInput, match="of class torch.nn.modules.container.Sequential"):
        fit(Other(*_net()), **data, cfg=CFG, out_dir=tmp_path, resume=True)


def test_run_training_refuses_to_resume_a_fit_run(straight, tmp_path):
    import shutil

    out, _ = straight
    shutil.copytree(out, tmp_path / "run")
    cfg = TrainConfig.from_dict({**CFG.to_dict(), "epochs": 3})
    with pytest.raises(BadInput, match=r"harness.fit\(\)") as err:
        run_training(cfg, tmp_path / "run", resume=True, progress=False)
    assert "\n" not in str(err.value)


def test_checkpoint_of_fit_is_refused_in_one_line_by_model_rebuilders(straight):
    out, _ = straight
    config = torch.load(out / "last.pt", weights_only=True)["config"]
    with pytest.raises(BadInput, match=r"harness.fit\(\) \(class torch.nn.modules.container."
                                       r"Sequential\): load its state_dict") as err:
        refuse_user_module(out / "last.pt", config)
    assert "\n" not in str(err.value)
    with pytest.raises(BadInput) as err:  # harness eval and curvtools hessian go through here
        load_model(out / "last.pt")
    assert "\n" not in str(err.value)

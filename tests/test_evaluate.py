"""harness.evaluate (the kernel): our PGD against torchattacks' PGD on a small adversarially
trained model, eps = 0 gives clean accuracy exactly; harness.eval_checkpoint: ``harness eval``'s
threat model and checks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from curvtools.errors import BadInput
from harness.attacks import ThreatModel, make_attack
from harness.checkpoint import load_checkpoint, save_checkpoint
from harness.config import TrainConfig
from harness.eval_checkpoint import EvalThreat, evaluate_checkpoint
from harness.evaluate import evaluate_robust
from harness.train import run_training


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    """A briefly trained width-1/16 PreActResNet-18 checkpoint (for the ``harness eval`` path)."""
    out = tmp_path_factory.mktemp("digits-run")
    cfg = TrainConfig.from_dict(dict(
        dataset="digits", width=0.0625, epochs=1, batch_size=50, train_subset=200,
        val_subset=20, test_subset=20, train_steps=1, eval_steps=1, eps_255=16, alpha_255=8,
        lr=0.05, lr_milestones=None))
    run_training(cfg, out, progress=False)
    return out / "last.pt"


@pytest.fixture(scope="module")
def robust_digits_net():
    """A small CNN adversarially trained on digits (PGD-2, eps 16/255): ~97% clean and ~90%
    robust test accuracy on this CPU, so an attack has both examples to break and to miss."""
    from harness.attacks import pgd
    from harness.datasets import open_source

    src = open_source("digits")

    def part(name):
        labels = torch.as_tensor(src.labels(name))
        return src.images(name, range(len(labels))).float() / 255, labels

    (x_train, y_train), (x_test, y_test) = part("train"), part("test")
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 64, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        perm = torch.randperm(len(y_train), generator=g)
        for i in range(0, len(y_train), 64):
            x, y = x_train[perm[i:i + 64]], y_train[perm[i:i + 64]]
            delta = pgd(net, x, y, eps=EPS, alpha=EPS / 2, steps=2, bn_mode="train", generator=g)
            opt.zero_grad()
            F.cross_entropy(net((x + delta).clamp(0, 1)), y).backward()
            opt.step()
    return net.eval(), x_test, y_test


EPS = 16 / 255
ONE_STEP = EvalThreat(steps=1, restarts=1)


def test_our_pgd_is_at_least_as_strong_as_torchattacks_pgd(robust_digits_net):
    net, x, y = robust_digits_net
    threat = ThreatModel(eps=EPS, step=EPS / 4, steps=10)
    ours = evaluate_robust(net, [(x, y)], make_attack("pgd", threat.replace(restarts=5)),
                           generator=torch.Generator().manual_seed(0))
    ours_single = evaluate_robust(net, [(x, y)], make_attack("pgd", threat),
                                  generator=torch.Generator().manual_seed(0))
    theirs = evaluate_robust(net, [(x, y)], make_attack("torchattacks-pgd", threat,
                                                        num_classes=10))
    print(f"robust accuracy on {len(y)} digits: ours PGD-10x5 {ours['robust_acc']:.4f}, "
          f"ours PGD-10x1 {ours_single['robust_acc']:.4f}, torchattacks PGD-10 "
          f"{theirs['robust_acc']:.4f}, clean {ours['clean_acc']:.4f}")
    assert ours["clean_acc"] == theirs["clean_acc"] > 0.9
    assert ours["robust_acc"] < ours["clean_acc"]  # the attack bites
    assert ours["robust_acc"] > 0.5  # and the model is robust enough to tell attacks apart
    assert ours["robust_acc"] <= theirs["robust_acc"] + 0.005
    assert abs(ours_single["robust_acc"] - theirs["robust_acc"]) <= 0.03


def test_eval_command_path_runs_ours_and_torchattacks_on_a_checkpoint(digits_ckpt):
    common = dict(n=60, device="cpu", batch_size=30)
    asked = EvalThreat(steps=3, eps_255=16, step_255=6)
    ours = evaluate_checkpoint(digits_ckpt, replace(asked, restarts=2), attack="pgd", **common)
    theirs = evaluate_checkpoint(digits_ckpt, asked, attack="torchattacks-pgd", **common)
    assert ours["n"] == theirs["n"] == 60 and ours["epoch"] == 1
    assert ours["clean_acc"] == theirs["clean_acc"]
    assert ours["robust_acc"] <= ours["clean_acc"]
    assert ours["restarts"] == 2 and theirs["restarts"] == 1


def test_eval_attacks_with_the_run_threat_model_unless_told_otherwise(digits_ckpt):
    fast = EvalThreat(steps=1, restarts=1)
    run = evaluate_checkpoint(digits_ckpt, fast, n=20, device="cpu")  # trained at 16/255, 8/255
    assert (run["norm"], run["eps_255"], run["alpha_255"]) == ("linf", 16.0, 8.0)
    told = evaluate_checkpoint(digits_ckpt, replace(fast, eps_255=4.0, step_255=1.0), n=20,
                               device="cpu")
    assert (told["eps_255"], told["alpha_255"]) == (4.0, 1.0)
    whole = evaluate_checkpoint(digits_ckpt, ThreatModel.from_255(eps_255=4, step_255=1,
                                                                  steps=1), n=20, device="cpu")
    assert (whole["eps_255"], whole["alpha_255"], whole["restarts"]) == (4.0, 1.0, 1)
    assert whole["robust_acc"] == told["robust_acc"]  # the same threat, given whole


def test_eval_refuses_a_threat_option_the_attack_does_not_use_by_its_option_name(digits_ckpt):
    with pytest.raises(BadInput, match=r"^attack fgsm does not use --restarts; of the threat "
                                       r"options it uses --eps-255, --norm$"):
        evaluate_checkpoint(digits_ckpt, EvalThreat(restarts=5), attack="fgsm", n=10,
                            device="cpu")
    with pytest.raises(BadInput, match="BatchNorm in eval mode"):
        evaluate_checkpoint(digits_ckpt, ThreatModel(bn_mode="train"), n=10, device="cpu")


def test_eps_zero_gives_clean_accuracy_exactly(digits_ckpt):
    from harness.checkpoint import load_model

    model, _ = load_model(digits_ckpt)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 16, 16, generator=g), torch.randint(0, 10, (64,), generator=g)
    result = evaluate_robust(model, [(x, y)], make_attack("pgd", ThreatModel(
        eps=0.0, step=2 / 255, steps=5, restarts=2)))
    assert result["robust_acc"] == result["clean_acc"]
    assert result["robust_loss"] == result["clean_loss"]


def test_evaluate_restores_the_model_mode(digits_ckpt):
    from harness.checkpoint import load_model

    model, _ = load_model(digits_ckpt)
    model.train()
    x, y = torch.rand(8, 1, 16, 16), torch.zeros(8, dtype=torch.long)
    evaluate_robust(model, [(x, y)], make_attack("pgd", ThreatModel(eps=0.1, step=0.05,
                                                                    steps=1)))
    assert model.training


@pytest.mark.parametrize("kw,match", [
    (dict(attack="cw"), "attack"), (dict(steps=0), "steps"), (dict(restarts=0), "restarts"),
    (dict(n=0), "--n"), (dict(eps_255=-1), "eps"), (dict(norm="l1"), "norm"),
    (dict(eps_255=float("inf")), "eps"), (dict(step_255=float("nan")), "alpha"),
    (dict(split="training"), "--split 'training'; allowed: test, train, val"),
])
def test_bad_eval_settings_raise_bad_input(digits_ckpt, kw, match):
    threat = EvalThreat(**{k: v for k, v in kw.items() if k in EvalThreat.__dataclass_fields__})
    rest = {k: v for k, v in kw.items() if k not in EvalThreat.__dataclass_fields__}
    with pytest.raises(BadInput, match=match):
        evaluate_checkpoint(digits_ckpt, threat, device="cpu", **rest)


def _image_folder(root, classes: int, size: int) -> str:
    """A tiny ImageFolder (one PNG per class and part; read as RGB); returns its spec."""
    from PIL import Image

    for part in ("train", "test"):
        for c in range(classes):
            folder = root / part / f"class{c}"
            folder.mkdir(parents=True)
            Image.new("RGB", (size, size), color=(25 * c, 0, 0)).save(folder / "0.png")
    return f"imagefolder:{root}"


def _rgb_checkpoint(path, trained_on: str, image_size: int | None = 16):
    """An untrained 3-channel 10-class model, as if trained on ``trained_on``."""
    from harness.models import build_model

    config = {"arch": "preactresnet18", "width": 0.0625, "num_classes": 10, "in_channels": 3}
    payload = {"model": build_model(config).state_dict(), "config": config,
               "train_config": {"dataset": trained_on}, "epoch": 1}
    if image_size is not None:
        payload["image_size"] = image_size
    save_checkpoint(path, payload)
    return path


def test_eval_refuses_a_dataset_of_other_channels_classes_or_image_size(digits_ckpt, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("LOWCURV_CACHE", str(tmp_path / "cache"))  # the accepted case decodes
    rgb16 = _image_folder(tmp_path / "rgb16", 10, 16)
    three = _image_folder(tmp_path / "three", 3, 16)
    rgb32 = _image_folder(tmp_path / "rgb32", 10, 32)
    ckpt = _rgb_checkpoint(tmp_path / "rgb.pt", rgb16)
    for path, spec, named, takes in [
            (digits_ckpt, rgb16, "3 channels", "1 channels (trained on digits)"),
            (ckpt, three, "3 classes", "10 classes"),
            (ckpt, rgb32, "32x32 images", "16x16 images")]:
        with pytest.raises(BadInput) as err:
            evaluate_checkpoint(path, ONE_STEP, dataset=spec, device="cpu")
        assert (f"dataset {spec!r} has {named}; the checkpoint's model takes {takes}"
                in str(err.value)), str(err.value)
    assert evaluate_checkpoint(ckpt, ONE_STEP, dataset=rgb16, device="cpu")["n"] == 10


def test_eval_takes_the_image_size_from_the_training_data_in_older_checkpoints(digits_ckpt,
                                                                               tmp_path):
    payload = load_checkpoint(digits_ckpt)
    assert payload["image_size"] == 16  # recorded by training
    del payload["image_size"]
    save_checkpoint(tmp_path / "old.pt", payload)
    rgb32 = _image_folder(tmp_path / "rgb32", 10, 32)
    with pytest.raises(BadInput, match=r"has 3 channels, 32x32 images; the checkpoint's model "
                                       r"takes 1 channels, 16x16 images \(trained on digits\)"):
        evaluate_checkpoint(tmp_path / "old.pt", dataset=rgb32, device="cpu")
    # trained on an image folder: its first image tells the size
    ckpt = _rgb_checkpoint(tmp_path / "old-rgb.pt", _image_folder(tmp_path / "rgb16", 10, 16),
                           image_size=None)
    with pytest.raises(BadInput, match=r"has 32x32 images; the checkpoint's model takes 16x16"):
        evaluate_checkpoint(ckpt, dataset=rgb32, device="cpu")


@pytest.mark.parametrize("split", ["train", "val"])
def test_eval_split_attacks_exactly_the_images_the_run_used(digits_ckpt, split):
    """``--split train``/``val`` evaluates the run's own training/validation images: the same
    index set (hash) that config.json records, and a class-balanced part of it with ``n``."""
    import json

    record = json.loads((digits_ckpt.parent / "config.json").read_text())
    result = evaluate_checkpoint(digits_ckpt, ONE_STEP, device="cpu", split=split)
    assert result["split"] == split
    assert result["n"] == record["data"][f"num_{split}"]
    assert result["indices_sha256"] == record["data"][f"{split}_indices_sha256"]
    part = evaluate_checkpoint(digits_ckpt, ONE_STEP, device="cpu", split=split, n=10)
    assert part["n"] == 10 and part["indices_sha256"] != result["indices_sha256"]


def test_eval_split_train_differs_from_test_and_test_stays_the_default(digits_ckpt):
    test = evaluate_checkpoint(digits_ckpt, ONE_STEP, device="cpu", n=20)
    train = evaluate_checkpoint(digits_ckpt, ONE_STEP, device="cpu", n=20, split="train")
    assert test["split"] == "test"
    assert test["indices_sha256"] != train["indices_sha256"]


@pytest.mark.parametrize("key,value", [
    ("split_seed", "x"), ("split_seed", -1), ("split_seed", 2**63), ("data_dir", 3),
    ("download", "yes"), ("dataset", 7), ("val_fraction", 1.5), ("train_subset", 0),
    ("val_subset", "all"),
])
def test_eval_refuses_bad_data_settings_in_the_checkpoint(digits_ckpt, tmp_path, key, value):
    payload = load_checkpoint(digits_ckpt)
    payload["train_config"] = dict(payload["train_config"], **{key: value})
    save_checkpoint(tmp_path / "bad.pt", payload)
    with pytest.raises(BadInput, match=rf"train_config has {key}={value!r}; allowed"):
        evaluate_checkpoint(tmp_path / "bad.pt", device="cpu", n=10)


@pytest.mark.parametrize("seed", [-1, 2**63])
def test_eval_refuses_seeds_outside_signed_64_bits(digits_ckpt, seed):
    with pytest.raises(BadInput, match=r"--seed .* must be an integer in \[0, 2\*\*63\)"):
        evaluate_checkpoint(digits_ckpt, device="cpu", seed=seed)


def test_skipping_the_masking_check_changes_no_metric(robust_digits_net):
    """Training's per-epoch evaluation skips the zero-gradient check (one backward per set): the
    four metrics are those of the evaluation with the check, bit for bit."""
    net, x, y = robust_digits_net
    attack = make_attack("pgd", ThreatModel(eps=EPS, step=EPS / 4, steps=2))
    results = [evaluate_robust(net, [(x[:100], y[:100]), (x[100:200], y[100:200])], attack,
                               generator=torch.Generator().manual_seed(3), masking_check=check)
               for check in (True, False)]
    keys = ("clean_loss", "clean_acc", "robust_loss", "robust_acc", "n")
    assert [results[0][k] for k in keys] == [results[1][k] for k in keys]
    assert results[0]["zero_grad_share"] is not None and results[1]["zero_grad_share"] is None

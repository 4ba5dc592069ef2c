"""Data parallel (harness.distributed): two gloo processes on CPU against one process.

The multi-process checks spawn two workers with ``torch.multiprocessing`` (a file store, no
ports) and compare what they compute with the single-process slow path in this process.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from curvtools.errors import BadInput
from harness import distributed as hd

WORLD = 2


def _eval_attack():
    """The sharded-evaluation tests' attack: PGD-3 x 2 restarts at 8/255, step 2/255."""
    from harness.attacks import ThreatModel, make_attack

    return make_attack("pgd", ThreatModel.from_255(eps_255=8, step_255=2, steps=3, restarts=2))


def _tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Softplus(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _data(n: int = 13, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


class _ListBatches:
    """In-order batches of a tensor pair (what evaluate_robust accepts besides DeviceBatches)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, size: int):
        self.x, self.y, self.size = x, y, size

    def in_order(self):
        for start in range(0, len(self.y), self.size):
            yield self.x[start:start + self.size], self.y[start:start + self.size]


# --- single-process properties ---------------------------------------------------------------


def test_context_from_env_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert hd.context_from_env() == hd.DistContext(rank=3, world_size=4, local_rank=1)
    monkeypatch.delenv("WORLD_SIZE")
    assert hd.context_from_env() == hd.SINGLE


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2", "RANK": "2"}, {"WORLD_SIZE": "two"}])
def test_context_from_env_rejects_bad_variables(monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(BadInput, match="WORLD_SIZE|RANK"):
        hd.context_from_env()


def test_setup_without_torchrun_is_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx, device = hd.setup(torch.device("cpu"))
    assert ctx == hd.SINGLE and not ctx.enabled and ctx.is_main and device.type == "cpu"
    net = _tiny_net()
    assert hd.wrap_model(net, ctx, device) == (net, net)


def test_per_rank_batch_splits_global_batch_and_rejects_remainders():
    assert hd.per_rank_batch(128, hd.DistContext(0, 8, 0)) == 16
    with pytest.raises(BadInput, match="batch_size=128 is not divisible by the 3 processes"):
        hd.per_rank_batch(128, hd.DistContext(0, 3, 0))


def test_pgd_rows_of_batch_gives_each_rank_its_rows_of_the_whole_batch_attack():
    """Eval-mode examples are independent, so rank r's attack = rows r::W of the whole one."""
    from harness.attacks import pgd

    net = _tiny_net().eval()
    x, y = _data(11)
    kwargs = dict(eps=8 / 255, alpha=2 / 255, steps=3, restarts=2, bn_mode="eval")
    whole = pgd(net, x, y, generator=torch.Generator().manual_seed(5), **kwargs)
    for rank in range(3):
        part = pgd(net, x[rank::3], y[rank::3], generator=torch.Generator().manual_seed(5),
                   rows_of_batch=(rank, 3, len(y)), **kwargs)
        torch.testing.assert_close(part, whole[rank::3], rtol=0, atol=1e-6)


def test_cross_rank_batchnorm_is_plain_batchnorm_in_one_process():
    net = _tiny_net()
    converted = hd.convert_sync_batchnorm(_tiny_net(), torch.device("cpu"))
    assert isinstance(converted[1], hd.CrossRankBatchNorm)
    assert converted.state_dict().keys() == net.state_dict().keys()
    x, _ = _data()
    torch.testing.assert_close(converted(x), net(x))


# --- two processes ---------------------------------------------------------------------------


def _coupled_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """Confident rows (gradient norm ~1e-8) but for row 0 (uniform logits, norm ~0.95), which
    rank 0 gets: alone, rank 1 would pick a scale of about 2**27."""
    labels = torch.arange(8) % 10
    logits = 20.0 * F.one_hot(labels, 10).float()
    logits[0] = 0.0
    return logits, labels


def _worker(rank: int, store: str, out_dir: str) -> None:
    """Runs in each spawned process: BatchNorm and evaluation checks; pickles the results."""
    import torch.distributed as dist

    from harness.attacks import attack_loss, pgd

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    ctx = hd.DistContext(rank, WORLD, rank)
    out: dict = {}
    # 1. SyncBatchNorm on CPU over the global batch: rows rank::WORLD of it on this rank.
    net = hd.convert_sync_batchnorm(_tiny_net(), torch.device("cpu")).train()
    x, y = _data(12)
    xr = x[rank::WORLD].clone().requires_grad_(True)
    loss = F.cross_entropy(net(xr), y[rank::WORLD], reduction="sum")
    loss.backward()
    out["bn_input_grad"] = xr.grad
    out["bn_weight_grad"] = hd.all_reduce_sum(net[1].weight.grad.clone(), ctx)
    out["bn_conv_grad"] = hd.all_reduce_sum(net[0].weight.grad.clone(), ctx)
    out["bn_buffers"] = {k: v.clone() for k, v in net[1].state_dict().items()}
    # 2. The train-mode attack through synced BatchNorm (a collective per forward and backward).
    gen = torch.Generator().manual_seed(3)
    out["attack"] = pgd(net, x[rank::WORLD], y[rank::WORLD], eps=8 / 255, alpha=2 / 255,
                        steps=2, bn_mode="train", generator=gen,
                        rows_of_batch=ctx.rows_of_batch(len(y) // WORLD))
    # 3. Sharded evaluation (13 images in batches of 5: uneven shards) vs one process.
    eval_net = _tiny_net(seed=7).eval()
    xe, ye = _data(13, seed=4)
    from harness.evaluate import evaluate_sharded

    out["eval"] = evaluate_sharded(
        eval_net, _ListBatches(xe, ye, 5), ctx, _eval_attack(),
        generator=torch.Generator().manual_seed(9))
    # 4. fp16 attack-loss scale of a batch coupled across ranks: one, from all ranks' gradients
    logits, labels = _coupled_logits()
    out["coupled_scale"] = attack_loss(logits[rank::WORLD], labels[rank::WORLD], torch.float16,
                                       coupled=True)[1]
    Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(out))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory) -> list[dict]:
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(str(folder / "store"), str(folder)), nprocs=WORLD, join=True)
    return [pickle.loads((folder / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]


def test_cross_rank_batchnorm_matches_batchnorm_over_the_global_batch(two_rank_results):
    net = _tiny_net().train()
    x, y = _data(12)
    x = x.clone().requires_grad_(True)
    F.cross_entropy(net(x), y, reduction="sum").backward()
    for rank, result in enumerate(two_rank_results):
        torch.testing.assert_close(result["bn_input_grad"], x.grad[rank::WORLD],
                                   rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result["bn_weight_grad"], net[1].weight.grad,
                                   rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result["bn_conv_grad"], net[0].weight.grad,
                                   rtol=1e-5, atol=1e-6)
        for key, value in net[1].state_dict().items():
            torch.testing.assert_close(result["bn_buffers"][key], value, rtol=1e-5, atol=1e-7)


def test_train_mode_attack_with_synced_batchnorm_matches_one_process(two_rank_results):
    from harness.attacks import pgd

    net = _tiny_net().train()
    x, y = _data(12)
    F.cross_entropy(net(x), y, reduction="sum").backward()  # the same BN update as the workers
    whole = pgd(net, x, y, eps=8 / 255, alpha=2 / 255, steps=2, bn_mode="train",
                generator=torch.Generator().manual_seed(3))
    for rank, result in enumerate(two_rank_results):
        torch.testing.assert_close(result["attack"], whole[rank::WORLD], rtol=0, atol=1e-6)


def test_fp16_attack_loss_scale_of_a_coupled_batch_is_shared_by_all_ranks(two_rank_results):
    from harness.attacks import attack_loss

    logits, labels = _coupled_logits()
    whole = attack_loss(logits, labels, torch.float16, coupled=True)[1]
    alone = attack_loss(logits[1::WORLD], labels[1::WORLD], torch.float16, coupled=True)[1]
    assert whole[0] == 1.0 and alone[0] > 2.0**20  # what rank 1 would use without the others
    for rank, result in enumerate(two_rank_results):
        assert torch.equal(result["coupled_scale"], whole[rank::WORLD])


def test_sharded_evaluation_equals_one_process_evaluation(two_rank_results):
    from harness.evaluate import evaluate_robust

    xe, ye = _data(13, seed=4)
    expected = evaluate_robust(_tiny_net(seed=7), _ListBatches(xe, ye, 5), _eval_attack(),
                               generator=torch.Generator().manual_seed(9))
    for result in two_rank_results:
        assert result["eval"]["n"] == 13
        for key in ("clean_loss", "clean_acc", "robust_loss", "robust_acc"):
            assert result["eval"][key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key



# --- harness train under torchrun --------------------------------------------------------------

# l2 PGD: its step alpha * g / ||g|| is continuous in the gradient. With l_inf the step uses
# sign(g), and a gradient component within rounding of zero (they occur: ~1e-7 of the typical
# size on digits' blank border) flips with any change of summation order, so 2 ranks and 1
# process agree statistically there, not to float tolerance. fp32 for the same reason: bf16
# rounding (the CPU default where it has bf16 units) would hide the comparison in its noise.
TRAIN = {"dataset": "digits", "act": "silu", "width": 0.0625, "batch_size": 20,
         "train_subset": 80, "val_subset": 20, "test_subset": 20, "train_steps": 2,
         "eval_steps": 2, "eval_batch_size": 16, "norm": "l2", "eps_255": 128.0,
         "alpha_255": 48.0, "lr": 0.05, "lr_milestones": [1.5], "device": "cpu", "seed": 3,
         "precision": "fp32"}
TIMING_KEYS = ("train_seconds", "eval_seconds")


def _torchrun(out: Path, epochs: int, *extra: str) -> None:
    import subprocess
    import sys

    flags = []
    for key, value in TRAIN.items():
        if isinstance(value, list):
            value = ",".join(map(str, value))
        flags += [f"--{key.replace('_', '-')}", str(value)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={WORLD}", "-m", "harness.cli", "train", *flags,
               "--epochs", str(epochs), "--sync-bn", "--no-progress", "--out", str(out), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240,
                          cwd=out.parent)
    assert done.returncode == 0, done.stderr[:3000]


def test_torchrun_two_ranks_with_sync_bn_resume_a_run_exactly_as_one_process(tmp_path):
    """A 1-process run stopped after epoch 1 is resumed by 2 gloo ranks (global batch 20, 10 per
    rank; train-mode attack through SyncBatchNorm; sharded evaluation): epoch 2 has the metrics
    and weights of the same run resumed in one process."""
    import shutil

    from curvtools.runfiles import read_metrics
    from harness.checkpoint import load_checkpoint
    from harness.config import TrainConfig
    from harness.train import run_training

    one, two = tmp_path / "one", tmp_path / "two"
    run_training(TrainConfig.from_dict(TRAIN | {"epochs": 1}), one, progress=False)
    shutil.copytree(one, two)
    expected = run_training(TrainConfig.from_dict(TRAIN | {"epochs": 2}), one, resume=True,
                            progress=False)
    _torchrun(two, 2, "--resume")
    rows = read_metrics(two / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2] and (two / "DONE").is_file()
    for key, value in expected[1].items():
        if key not in TIMING_KEYS:
            assert rows[1][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    ours, theirs = load_checkpoint(two / "last.pt"), load_checkpoint(one / "last.pt")
    for key, value in theirs["model"].items():
        torch.testing.assert_close(ours["model"][key], value, rtol=1e-4, atol=1e-5)
    config = json.loads((two / "config.json").read_text())
    assert config["resolved"]["world_size"] == WORLD and config["train_config"]["sync_bn"]

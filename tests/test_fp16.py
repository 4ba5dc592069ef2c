"""fp16 autocast (``--precision fp16``): the attack's per-example gradient normalization and the
training backward's dynamic loss scaling. Each is checked against fp32 on a CPU (autocast fp16
runs there too, slowly); the fused-optimizer skip on CUDA has its own test."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from harness.attacks import attack_loss, pgd, uses_batch_statistics
from harness.checkpoint import load_checkpoint
from harness.config import TrainConfig
from harness.run_data import load_run_data
from harness.rundir import model_config_for
from harness.runtime import autocast_dtype_for, loss_scaler, zero_momentum_buffers
from harness.step import build_engine, train_one_epoch
from harness.train import run_training

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _logit_grad(logits, y, dtype, coupled=False):
    z = logits.clone().requires_grad_(True)
    loss, scale = attack_loss(z, y, dtype, coupled)
    (g,) = torch.autograd.grad(loss, z)
    return g, scale


def _confidence_ladder():
    torch.manual_seed(0)
    logits = torch.randn(16, 10) * torch.logspace(-1, 1.5, 16)[:, None]
    y = logits.argmax(1)  # correct, from unsure to very confident
    y[:3] = (y[:3] + 1) % 10  # and a few misclassified
    return logits, y


def test_fp16_attack_loss_scales_each_example_gradient_to_about_unit_norm_by_a_power_of_two():
    logits, y = _confidence_ladder()
    plain, one = _logit_grad(logits, y, None)
    assert torch.allclose(plain, torch.softmax(logits, 1) - F.one_hot(y, 10), atol=1e-6)
    assert torch.equal(one, torch.ones(16))
    assert torch.equal(_logit_grad(logits, y, torch.bfloat16)[0], plain)  # bf16: the plain sum
    g, scale = _logit_grad(logits, y, torch.float16)
    assert torch.equal(torch.exp2(torch.log2(scale).round()), scale)  # powers of two
    assert scale.max() > 2.0**10  # the ladder reaches very confident examples
    norms = g.norm(dim=1)
    assert bool(((norms >= 2**-0.5) & (norms <= 2**0.5)).all()), norms
    assert torch.equal(g / scale[:, None], plain)  # unscaling is exact
    # the loss value itself stays finite
    assert torch.isfinite(attack_loss(logits, y, torch.float16)[0])


def test_fp16_attack_loss_of_a_coupled_batch_uses_one_scale_set_by_its_largest_gradient():
    logits, y = _confidence_ladder()
    plain, _ = _logit_grad(logits, y, None)
    g, scale = _logit_grad(logits, y, torch.float16, coupled=True)
    assert torch.equal(scale, scale[:1].expand(16)) and scale[0] == 1.0  # largest norm ~1
    assert torch.equal(g / scale[:, None], plain)
    _, scale = _logit_grad(logits[-4:], y[-4:], torch.float16, coupled=True)  # all confident
    largest = plain[-4:].norm(dim=1).max()
    assert largest < 0.2 and torch.equal(scale, scale[:1].expand(4))
    assert 2**-0.5 <= (largest * scale[0]).item() <= 2**0.5


def test_fp16_attack_loss_leaves_an_exactly_zero_gradient_zero():
    logits = torch.zeros(2, 10)
    logits[0, 3] = 200.0  # softmax is one-hot in fp32: the gradient is exactly zero
    logits[1, 5] = 2.0
    y = torch.tensor([3, 1])
    g, scale = _logit_grad(logits, y, torch.float16)
    assert torch.equal(g[0], torch.zeros(10)) and torch.isfinite(g).all()
    assert scale[0] == 1.0 and 2**-0.5 <= g[1].norm().item() <= 2**0.5


def test_uses_batch_statistics_is_true_exactly_when_a_batchnorm_normalizes_by_the_batch():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert uses_batch_statistics(net.train()) and not uses_batch_statistics(net.eval())
    no_running = torch.nn.Sequential(torch.nn.BatchNorm2d(4, track_running_stats=False)).eval()
    assert uses_batch_statistics(no_running)
    assert not uses_batch_statistics(torch.nn.Linear(3, 2).train())


def _confident_bn_net():
    """conv - BatchNorm - ReLU - linear, with logits scaled up so that confidences spread from
    uncertain to near-certain: per-example scales differ by orders of magnitude."""
    torch.manual_seed(2)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(6 * 16, 10))
    with torch.no_grad():
        net[4].weight.mul_(30.0)
        net[1].momentum = 1.0  # running statistics from one batch: eval mode is as confident
        net(torch.rand(64, 3, 4, 4))
        net[1].momentum = 0.1
    return net


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fp16_attack_scaling_leaves_every_step_as_fp32_takes_it(monkeypatch, bn_mode, norm):
    """With fp16's loss scaling but fp32 arithmetic (autocast off), the attack is the fp32
    attack bit for bit, BatchNorm coupling the batch (train) or not (eval). Scaling each example
    of a coupled batch on its own would change the steps: the check below shows it does."""
    import harness.attacks.pgd_attack as attacks

    x = torch.rand(24, 3, 4, 4)
    with torch.no_grad():
        logits = _confident_bn_net().train(bn_mode == "train")(x)
    y = logits.argmax(1)  # mostly correct, at confidences from unsure to near-certain
    y[:4] = (y[:4] + 1) % 10
    wrong = 1 - torch.softmax(logits, 1)[torch.arange(24), y]
    assert wrong.max() / wrong.min() > 1e3
    kw = dict(eps=0.3 if norm == "l2" else 8 / 255, alpha=0.1 if norm == "l2" else 2 / 255,
              steps=3, norm=norm, bn_mode=bn_mode)

    def attack(dtype):
        net = _confident_bn_net()  # fresh: a train-mode attack moves running statistics
        return pgd(net, x, y, autocast_dtype=dtype, generator=torch.Generator().manual_seed(5),
                   **kw)

    monkeypatch.setattr(attacks, "autocast", lambda device_type, dtype: contextlib.nullcontext())
    reference = attack(None)
    assert torch.equal(attack(torch.float16), reference)
    if bn_mode == "train":  # per-example scales on a coupled batch: other steps
        monkeypatch.setattr(attacks, "uses_batch_statistics", lambda model: False)
        assert not torch.equal(attack(torch.float16), reference)


class _Confident(torch.nn.Module):
    """A linear classifier whose logits have margins of about 16: p(wrong class) ~ 1e-7, so the
    plain cross-entropy gradient at the input (~1e-9) is below fp16's smallest subnormal."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.w = torch.nn.Parameter(torch.randn(10, 48) * 1e-2)
        self.bias = torch.nn.Parameter(torch.zeros(10))

    def forward(self, x):
        logits = F.linear(x.flatten(1), self.w, self.bias)
        return logits + 16.0 * F.one_hot(torch.arange(len(x)) % 10, 10).to(logits.dtype)


def test_fp16_pgd_moves_confident_examples_where_a_plain_fp16_gradient_underflows():
    model = _Confident()
    x = torch.rand(20, 3, 4, 4)
    y = torch.arange(20) % 10
    kw = dict(eps=8 / 255, alpha=2 / 255, steps=3, random_start=False)
    # the failure the normalization prevents: the plain summed loss under fp16 autocast
    xx = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.float16):
        logits = model(xx)
    (plain,) = torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), xx)
    assert (plain == 0).float().mean() > 0.9
    ref = pgd(model, x, y, autocast_dtype=None, **kw)
    ours = pgd(model, x, y, autocast_dtype=torch.float16, **kw)
    assert (ref.abs() > 0).float().mean() > 0.99  # fp32 moves every pixel
    # fp16 rounding of the logits may flip a sign where two classes' terms nearly cancel
    assert (ours == ref).float().mean() > 0.97


def test_loss_scaler_is_on_for_fp16_only():
    cpu = torch.device("cpu")
    assert autocast_dtype_for("fp16", cpu) == torch.float16
    assert loss_scaler(torch.float16, cpu).is_enabled()
    assert not loss_scaler(torch.bfloat16, cpu).is_enabled()
    assert not loss_scaler(None, cpu).is_enabled()


def _fp16_engine(device: str, channels_last: bool = False, **over):
    cfg = TrainConfig.from_dict(dict(
        dataset="digits", width=0.0625, epochs=1, batch_size=50, train_subset=50, val_subset=10,
        test_subset=10, train_steps=1, eval_steps=1, lr=0.05, device=device,
        precision="fp16") | over)
    dev = torch.device(device)
    data = load_run_data(cfg, dev, channels_last=channels_last)
    engine = build_engine(cfg, model_config_for(cfg, data), dev, torch.float16, channels_last)
    return data, engine


def _overflow_step_is_skipped(device: str, fused: bool):
    data, engine = _fp16_engine(device)
    if fused != (device == "cuda"):  # CUDA runs use fused SGD, CPU runs the foreach one
        engine.optimizer = torch.optim.SGD(engine.net.parameters(), lr=0.05, momentum=0.9,
                                           weight_decay=5e-4, fused=fused)
        zero_momentum_buffers(engine.optimizer)
    engine.scaler = torch.amp.GradScaler(device, init_scale=2.0**100)  # the backward overflows
    params = list(engine.net.parameters())
    before = [p.detach().clone() for p in params]
    row = train_one_epoch(engine, data.train, 0)  # one batch
    assert all(torch.equal(b, p) for b, p in zip(before, params, strict=True))
    assert row["loss_scale"] == 2.0**99  # backed off by half
    assert torch.isfinite(torch.tensor(row["train_robust_loss"]))
    # the skipped first step left the momentum as if nothing happened (zero), not garbage
    assert all(torch.equal(engine.optimizer.state[p]["momentum_buffer"], torch.zeros_like(p))
               for p in params)
    engine.scaler = torch.amp.GradScaler(device)  # a sane scale: the step happens
    train_one_epoch(engine, data.train, 1)
    assert not all(torch.equal(b, p) for b, p in zip(before, params, strict=True))
    # a first real step from zero momentum: buffer = gradient + weight decay term, finite
    assert all(torch.isfinite(engine.optimizer.state[p]["momentum_buffer"]).all()
               for p in params)


@pytest.mark.parametrize("fused", [False, True])
def test_an_fp16_step_whose_gradients_overflow_is_skipped_and_the_scale_backs_off(fused):
    _overflow_step_is_skipped("cpu", fused)


@needs_cuda
def test_an_fp16_step_whose_gradients_overflow_is_skipped_by_the_fused_optimizer_on_cuda():
    _overflow_step_is_skipped("cuda", fused=True)


def test_fp16_run_saves_the_loss_scaler_and_resumes_exactly(tmp_path):
    cfg = dict(dataset="digits", width=0.0625, epochs=2, batch_size=50, train_subset=100,
               val_subset=20, test_subset=20, train_steps=1, eval_steps=1, eps_255=24,
               alpha_255=8, lr=0.05, precision="fp16", lr_milestones=[100.0, 150.0])
    straight = run_training(TrainConfig.from_dict(cfg), tmp_path / "a", progress=False)
    assert all(r["loss_scale"] == 2.0**16 for r in straight)
    first = run_training(TrainConfig.from_dict(cfg | {"epochs": 1}), tmp_path / "b",
                         progress=False)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["grad_scaler"]["_growth_tracker"] == 2
    resumed = run_training(TrainConfig.from_dict(cfg), tmp_path / "b", resume=True,
                           progress=False)
    ckpt = load_checkpoint(tmp_path / "b" / "last.pt")
    assert ckpt["precision"] == "fp16" and ckpt["grad_scaler"]["_growth_tracker"] == 4
    drop = ("train_seconds", "eval_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in first + resumed[1:]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in straight]


@needs_cuda
def test_fp16_training_steps_never_sync_the_host_on_cuda():
    """The loss scaler's overflow check, the fused optimizer's skip and the scale update all stay
    on the device: between the graph capture (the first 4 calls) and the end of the epoch (which
    reads the sums once), no step synchronizes with the host, the smaller last batch (eager)
    included. Any synchronization raises in torch's sync debug mode "error"."""
    data, engine = _fp16_engine("cuda", channels_last=True, train_subset=400, batch_size=32,
                                train_steps=3)
    assert engine.cuda_graphs and engine.scaler.is_enabled()
    n = len(data.train)  # 12 full batches and one of 16
    calls = []

    def on_batch():
        calls.append(1)
        if len(calls) == 5:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        elif len(calls) == n:
            torch.cuda.set_sync_debug_mode(0)

    try:
        row = train_one_epoch(engine, data.train, 0, on_batch=on_batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(calls) == n == 13
    assert engine.steps()[0].stats()["replays"] >= 8
    assert row["loss_scale"] == 2.0**16 and torch.isfinite(torch.tensor(row["train_robust_loss"]))

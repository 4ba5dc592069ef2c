"""harness.attacks.pgd_attack against a literal transcription of Rice et al.'s attack_pgd, and its
invariants: ball and box constraints, exact clean accuracy at eps 0, monotonicity in restarts,
steps and eps, BatchNorm mode, no weight gradients, reproducibility."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from curvtools.errors import BadInput
from harness.attacks.pgd_attack import _random_start, pgd


def _tiny_bn_net(in_ch: int = 1, classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_ch, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))


def _toy_data(n: int = 256, classes: int = 4, seed: int = 0):
    """8x8 images whose class is the brightest quadrant: learnable in a few hundred steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.5
    for c in range(classes):
        r, col = divmod(c, 2)
        sel = y == c
        x[sel, :, 4 * r:4 * r + 4, 4 * col:4 * col + 4] += 0.4
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def trained_net():
    torch.manual_seed(0)
    net = _tiny_bn_net()
    x, y = _toy_data()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    for p in net.parameters():
        p.grad = None
    xt, yt = _toy_data(128, seed=1)
    return net, xt, yt


def _rice_attack_pgd(model, X, y, epsilon, alpha, attack_iters, restarts, norm, starts,
                     early_stop=False):
    """Rice et al.'s attack_pgd (train_cifar.py), transcribed; random starts passed in."""
    max_loss = torch.zeros(y.shape[0])
    max_delta = torch.zeros_like(X)
    for r in range(restarts):
        delta = starts[r].clone()
        delta = torch.max(torch.min(delta, 1 - X), 0 - X)
        delta.requires_grad = True
        for _ in range(attack_iters):
            output = model(X + delta)
            if early_stop:
                index = torch.where(output.max(1)[1] == y)[0]
            else:
                index = slice(None, None, None)
            if not isinstance(index, slice) and len(index) == 0:
                break
            loss = F.cross_entropy(output, y)
            loss.backward()
            grad = delta.grad.detach()
            d, g, x = delta[index], grad[index], X[index]
            if norm == "linf":
                d = torch.clamp(d + alpha * torch.sign(g), min=-epsilon, max=epsilon)
            else:
                g_norm = torch.norm(g.view(g.shape[0], -1), dim=1).view(-1, 1, 1, 1)
                d = (d + g / (g_norm + 1e-10) * alpha).view(d.size(0), -1).renorm(
                    p=2, dim=0, maxnorm=epsilon).view_as(d)
            d = torch.max(torch.min(d, 1 - x), 0 - x)
            delta.data[index] = d
            delta.grad.zero_()
        all_loss = F.cross_entropy(model(X + delta), y, reduction="none")
        max_delta[all_loss >= max_loss] = delta.detach()[all_loss >= max_loss]
        max_loss = torch.max(max_loss, all_loss)
    return max_delta


def _starts(x, eps, norm, restarts, seed):
    g = torch.Generator().manual_seed(seed)
    return [_random_start(x, eps, norm, g) for _ in range(restarts)]


@pytest.mark.parametrize("early_stop", [False, True])
def test_linf_pgd_equals_rice_attack_pgd_transcription(trained_net, early_stop):
    net, x, y = trained_net
    x, y = x[:32], y[:32]  # power-of-two batch: mean vs sum loss scale gradients exactly
    eps, alpha = 8 / 255, 2 / 255
    starts = _starts(x, eps, "linf", 2, seed=3)
    for p in net.parameters():
        p.grad = None
    ref = _rice_attack_pgd(net, x, y, eps, alpha, 7, 2, "linf", starts, early_stop=early_stop)
    for p in net.parameters():
        p.grad = None
    ours = pgd(net, x, y, eps=eps, alpha=alpha, steps=7, restarts=2, bn_mode="eval",
               generator=torch.Generator().manual_seed(3), early_stop=early_stop)
    assert torch.equal(ours, ref)


def test_l2_pgd_matches_rice_attack_pgd_transcription(trained_net):
    net, x, y = trained_net
    x, y = x[:32], y[:32]
    eps, alpha = 0.5, 0.1
    starts = _starts(x, eps, "l2", 1, seed=5)
    ref = _rice_attack_pgd(net, x, y, eps, alpha, 5, 1, "l2", starts)
    for p in net.parameters():
        p.grad = None
    ours = pgd(net, x, y, eps=eps, alpha=alpha, steps=5, norm="l2",
               generator=torch.Generator().manual_seed(5))
    # torch.renorm scales by maxnorm / (norm + 1e-7); we scale by eps / norm: agree to ~1e-6
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm,eps,alpha", [("linf", 8 / 255, 4 / 255), ("l2", 0.5, 0.3)])
def test_pgd_stays_inside_ball_and_image_box(trained_net, norm, eps, alpha):
    net, x, y = trained_net
    x = x.clone()
    x[:8] = 0.0  # pixels at the box edges: clipping must bite
    x[8:16] = 1.0
    for restarts in (1, 2):
        delta = pgd(net, x, y, eps=eps, alpha=alpha, steps=6, restarts=restarts, norm=norm,
                    generator=torch.Generator().manual_seed(0))
        assert delta.dtype == torch.float32 and delta.shape == x.shape
        adv = x + delta
        assert adv.min() >= 0 and adv.max() <= 1
        if norm == "linf":
            assert delta.abs().max() <= eps + 1e-7
        else:
            assert delta.flatten(1).norm(dim=1).max() <= eps * (1 + 1e-5)
        assert delta.abs().max() > 0


def test_linf_random_start_is_uniform_in_ball_then_clipped_to_box():
    x = torch.full((4000, 1, 2, 2), 0.5)
    x[:, :, 0, 0] = 0.0
    eps = 0.1
    d = _random_start(x, eps, "linf", torch.Generator().manual_seed(0))
    assert d.abs().max() <= eps
    # uniform on [-eps, eps]: mean 0, variance eps^2 / 3
    free = d[:, :, 1, 1]
    assert abs(free.mean()) < 0.01 * eps * 5
    assert abs(free.var() / (eps ** 2 / 3) - 1) < 0.1
    delta = pgd(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), x, torch.zeros(4000).long(),
                eps=eps, alpha=0.0, steps=0, generator=torch.Generator().manual_seed(0))
    assert delta[:, :, 0, 0].min() >= 0  # clipped so that x + delta >= 0


def test_l2_random_start_is_inside_ball_and_near_its_surface_in_high_dimension():
    x = torch.full((500, 3, 8, 8), 0.5)
    d = _random_start(x, 0.5, "l2", torch.Generator().manual_seed(0))
    norms = d.flatten(1).norm(dim=1)
    assert norms.max() <= 0.5 * (1 + 1e-6)
    # radius eps * U^(1/192): the median radius is eps * 0.5^(1/192) ~ 0.998 eps
    assert norms.median() > 0.49


def test_eps_zero_gives_clean_accuracy_exactly(trained_net):
    net, x, y = trained_net
    delta = pgd(net, x, y, eps=0.0, alpha=2 / 255, steps=5, restarts=2)
    assert torch.equal(delta, torch.zeros_like(x))
    with torch.no_grad():
        assert torch.equal(net(x + delta).argmax(1), net(x).argmax(1))


def _robust_acc(net, x, y, **kw) -> float:
    delta = pgd(net, x, y, generator=torch.Generator().manual_seed(1), **kw)
    with torch.no_grad():
        return (net(x + delta).argmax(1) == y).float().mean().item()


def test_more_steps_or_larger_eps_never_raise_robust_accuracy(trained_net):
    net, x, y = trained_net
    by_steps = [_robust_acc(net, x, y, eps=0.1, alpha=0.025, steps=s) for s in (0, 1, 3, 10, 20)]
    by_eps = [_robust_acc(net, x, y, eps=e, alpha=e / 4, steps=10) for e in (0, .03, .06, .1, .2)]
    assert all(a >= b for a, b in zip(by_steps[:-1], by_steps[1:], strict=True)), by_steps
    assert all(a >= b for a, b in zip(by_eps[:-1], by_eps[1:], strict=True)), by_eps
    assert by_eps[0] > by_eps[-1]  # the attack does something on this net


def test_restarts_keep_the_per_example_worst_case_loss(trained_net):
    net, x, y = trained_net
    losses, accs = [], []
    for restarts in (1, 2, 4):
        delta = pgd(net, x, y, eps=0.1, alpha=0.02, steps=3, restarts=restarts,
                    generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            logits = net(x + delta)
        losses.append(F.cross_entropy(logits, y, reduction="none"))
        accs.append((logits.argmax(1) == y).float().mean().item())
    # the generator draws restarts in sequence, so R restarts are a prefix of R' > R
    assert torch.all(losses[1] >= losses[0]) and torch.all(losses[2] >= losses[1])
    assert accs[0] >= accs[1] >= accs[2]


def test_attack_computes_no_weight_gradients_and_restores_mode(trained_net):
    net, x, y = trained_net
    for p in net.parameters():
        p.grad = None
    net.train()
    pgd(net, x, y, eps=0.03, alpha=0.01, steps=2, bn_mode="eval")
    assert net.training
    net.eval()
    pgd(net, x, y, eps=0.03, alpha=0.01, steps=2, bn_mode="train")
    assert not net.training
    assert all(p.grad is None for p in net.parameters())


def test_bn_mode_train_moves_running_statistics_and_eval_does_not():
    net = _tiny_bn_net()
    x, y = _toy_data(32)
    bn = net[1]
    before = bn.running_mean.clone()
    pgd(net, x, y, eps=0.03, alpha=0.01, steps=2, bn_mode="eval")
    assert torch.equal(bn.running_mean, before)
    pgd(net, x, y, eps=0.03, alpha=0.01, steps=2, bn_mode="train")
    assert not torch.equal(bn.running_mean, before)
    # 2 attack forwards + the final restart-selection forward, as in Rice et al.'s code
    assert int(bn.num_batches_tracked) == 3
    # without the final forward (a caller folding it into its own): the same delta, one fewer
    g = torch.Generator().manual_seed(1)
    with_final = pgd(net, x, y, eps=0.03, alpha=0.01, steps=2, bn_mode="train",
                     generator=g.manual_seed(1))
    without = pgd(net, x, y, eps=0.03, alpha=0.01, steps=2, bn_mode="train",
                  generator=g.manual_seed(1), final_forward=False)
    assert int(bn.num_batches_tracked) == 3 + 3 + 2
    assert torch.equal(with_final, without)


def test_same_generator_seed_gives_the_same_delta(trained_net):
    net, x, y = trained_net
    a = pgd(net, x, y, eps=0.03, alpha=0.01, steps=3, generator=torch.Generator().manual_seed(4))
    b = pgd(net, x, y, eps=0.03, alpha=0.01, steps=3, generator=torch.Generator().manual_seed(4))
    c = pgd(net, x, y, eps=0.03, alpha=0.01, steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bf16_autocast_keeps_fp32_delta_and_similar_strength(trained_net):
    net, x, y = trained_net
    delta = pgd(net, x, y, eps=0.1, alpha=0.025, steps=5, autocast_dtype=torch.bfloat16,
                generator=torch.Generator().manual_seed(1))
    assert delta.dtype == torch.float32 and delta.abs().max() <= 0.1 + 1e-7
    with torch.no_grad():
        acc16 = (net(x + delta).argmax(1) == y).float().mean().item()
    acc32 = _robust_acc(net, x, y, eps=0.1, alpha=0.025, steps=5)
    assert abs(acc16 - acc32) <= 0.1


def test_channels_last_input_gives_the_same_delta(trained_net):
    net, x, y = trained_net
    a = pgd(net, x, y, eps=0.03, alpha=0.01, steps=3, generator=torch.Generator().manual_seed(2))
    b = pgd(net, x.contiguous(memory_format=torch.channels_last), y, eps=0.03, alpha=0.01,
            steps=3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kw", [dict(eps=-0.1), dict(steps=-1), dict(restarts=0),
                                dict(norm="l1"), dict(bn_mode="frozen"), dict(alpha=-1.0)])
def test_bad_attack_arguments_raise_bad_input(kw):
    net = _tiny_bn_net()
    x, y = _toy_data(4)
    args = dict(eps=0.03, alpha=0.01, steps=1) | kw
    with pytest.raises(BadInput):
        pgd(net, x, y, **args)

"""Guards against gradient masking and broken attacks, on a trained small net (digits).

On an honest model and attack: robust accuracy never rises with more steps, more restarts or a
larger eps; eps = 0 gives clean accuracy exactly; an eps that covers the whole image box gives
about 0%; our PGD agrees with torchattacks' PGD. A model that masks its gradients (saturated or
quantized logits) fools PGD, and :func:`harness.evaluate.evaluate_robust` says so with a
:class:`GradientMaskingWarning`; an honest model gets no such warning.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from curvtools.activations import resolve
from harness.attacks import ThreatModel, make_attack
from harness.evaluate import GradientMaskingWarning, evaluate_robust

N_TEST = 100
EPS = 16 / 255  # robust accuracy of the trained net is about 2/3 here: room to move both ways
ALPHA = 4 / 255
SLACK = 1 / N_TEST  # one example: argmax of the highest-loss delta may differ from another's
_RESULTS: dict[tuple, dict] = {}  # the same attack is not run twice


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # two threads on a busy 2-core machine mostly wait on each other


@pytest.fixture(scope="module")
def trained():
    """A width-1/16 PreActResNet-18 (SiLU) trained clean on digits for 80 steps (~97% clean)."""
    from harness.datasets import open_source
    from harness.models import build_model

    torch.set_num_threads(1)
    source = open_source("digits")
    n_train = len(source.labels("train"))
    x_train = source.images("train", range(n_train)).float() / 255
    y_train = torch.as_tensor(source.labels("train"))
    x_test = source.images("test", range(N_TEST)).float() / 255
    y_test = torch.as_tensor(source.labels("test")[:N_TEST])
    config = {"arch": "preactresnet18", "act": resolve("silu").config(), "num_classes": 10,
              "in_channels": 1, "width": 1 / 16, "mean": list(source.mean),
              "std": list(source.std)}
    torch.manual_seed(0)
    model = build_model(config)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(80):
        idx = torch.randint(0, n_train, (64,), generator=g)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.lowcurv_config = config  # to save it as a checkpoint
    return model, x_test, y_test


def _robust(model, x, y, *, eps=EPS, steps=10, restarts=1, seed=0, alpha=ALPHA):
    key = (id(model), eps, steps, restarts, seed, alpha)
    if key not in _RESULTS:
        with warnings.catch_warnings():
            warnings.simplefilter("error", GradientMaskingWarning)  # an honest net never warns
            attack = make_attack("pgd", ThreatModel(eps=eps, step=alpha, steps=steps,
                                                    restarts=restarts))
            _RESULTS[key] = evaluate_robust(model, [(x, y)], attack,
                                            generator=torch.Generator().manual_seed(seed))
    return _RESULTS[key]


def test_trained_net_is_accurate_and_attackable(trained):
    result = _robust(*trained)
    assert result["clean_acc"] >= 0.85
    assert 0.2 <= result["robust_acc"] <= result["clean_acc"] - 0.05
    assert result["zero_grad_share"] == 0.0


def test_robust_accuracy_does_not_rise_with_more_steps(trained):
    accs = [_robust(*trained, steps=s)["robust_acc"] for s in (1, 3, 10)]
    assert all(b <= a + SLACK for a, b in zip(accs[:-1], accs[1:], strict=True)), accs
    assert accs[-1] < accs[0], accs  # and more steps do find more


def test_robust_accuracy_does_not_rise_with_more_restarts(trained):
    # the same seed: restart 1 of the 3-restart attack is the 1-restart attack
    one, three = (_robust(*trained, steps=3, restarts=r)["robust_acc"] for r in (1, 3))
    assert three <= one + SLACK, (one, three)


def test_robust_accuracy_does_not_rise_with_larger_eps(trained):
    accs = [_robust(*trained, eps=e / 255, alpha=max(e, 1) / 4 / 255)["robust_acc"]
            for e in (0, 8, 16, 32)]
    assert all(b <= a + SLACK for a, b in zip(accs[:-1], accs[1:], strict=True)), accs
    assert accs[0] == _robust(*trained, eps=0.0, alpha=1 / 4 / 255)["clean_acc"]  # exactly


def test_an_eps_covering_the_whole_image_box_gives_about_zero(trained):
    result = _robust(*trained, eps=1.0, alpha=0.1, steps=5)
    assert result["robust_acc"] <= 0.02, result


def test_our_pgd_agrees_with_torchattacks_pgd(trained):
    model, x, y = trained
    ours = _robust(model, x, y, steps=10)["robust_acc"]
    attack = make_attack("torchattacks-pgd", ThreatModel(eps=EPS, step=ALPHA, steps=10),
                         num_classes=10)
    theirs = evaluate_robust(model, [(x, y)], attack)["robust_acc"]
    assert abs(ours - theirs) <= 0.05, (ours, theirs)


class _Saturated(nn.Module):
    """Logits scaled by 1e4: softmax saturates, the input gradient is exactly 0 in fp32."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x) * 1e4


class _Quantized(nn.Module):
    """Input rounded to 4 levels: gradient 0 almost everywhere (a classic masking defence)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 3) / 3)


@pytest.mark.parametrize("wrapper", [_Saturated, _Quantized])
def test_gradient_masking_fools_pgd_and_is_flagged(trained, wrapper):
    model, x, y = trained
    masked = wrapper(model).eval()
    with pytest.warns(GradientMaskingWarning, match="zero input gradient"):
        result = evaluate_robust(masked, [(x, y)],
                                 make_attack("pgd", ThreatModel(eps=EPS, step=ALPHA, steps=10)),
                                 generator=torch.Generator().manual_seed(0))
    assert result["zero_grad_share"] > 0.5
    honest = _robust(model, x, y)["robust_acc"]
    assert result["robust_acc"] > honest + 0.1  # the number the warning protects against


def test_harness_eval_prints_a_one_line_warning_for_a_masked_checkpoint(trained, tmp_path,
                                                                         capsys):
    """The trained net with its last layer scaled by 1e5 saturates softmax: ``harness eval``
    must say that its robust accuracy is not to be trusted, in one line."""
    import typer

    from harness.checkpoint import save_checkpoint
    from harness.cli import app, main

    if "eval" not in getattr(typer.main.get_command(app), "commands", {}):
        pytest.skip("harness eval is not registered in this build yet")
    model = trained[0]
    state = {k: v * 1e5 if k.startswith("core.linear.") else v
             for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "masked.pt", {"model": state, "config": model.lowcurv_config,
                                             "epoch": 1, "train_config": {"dataset": "digits"}})
    main(["eval", "--ckpt", str(tmp_path / "masked.pt"), "--n", "20", "--steps", "2",
          "--restarts", "1", "--device", "cpu", "--no-progress"])  # returns: exit code 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "GradientMaskingWarning" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: "), err

"""harness.attacks: every registered attack keeps the threat model, and no setting is dropped.

One parametrized test covers every entry of the registry (torchattacks' pattern): the
perturbation stays in the eps ball and in [0, 1], and the attack never raises accuracy. Settings
an attack cannot honour are refused by name instead of being silently ignored.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvtools.errors import BadInput
from harness.attacks import (
    REGISTRY,
    ThreatModel,
    TorchattacksAttack,
    make_attack,
    names,
)
from harness.evaluate import evaluate_robust

torch.set_num_threads(1)


def _tiny_problem(n: int = 20):
    """A small conv net that classifies its own random images well (so attacks have work)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(),
                        nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    x = torch.rand(n, 1, 8, 8)
    y = torch.arange(n) % 10  # AutoAttack's targeted APGD wants 10 classes
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval(), x, y


@pytest.fixture(scope="module")
def problem():
    return _tiny_problem()


# quick settings for the slow score-based attacks; the entry itself is still what runs
FAST_OPTIONS = {"square": "torchattacks:Square:n_queries=100"}


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", names())
def test_every_registered_attack_stays_in_the_threat_model_and_never_helps(problem, name, norm):
    net, x, y = problem
    eps = 0.1 if norm == "linf" else 0.5
    threat = ThreatModel(norm=norm, eps=eps, step=eps / 4, steps=5, restarts=1)
    try:
        attack = make_attack(FAST_OPTIONS.get(name, name), threat, num_classes=10)
    except BadInput as err:  # a fixed-norm attack refuses the other norm: by name, one line
        assert "only" in str(err) and norm in str(err)
        return
    delta = attack.perturb(net, x, y, *attack.starts(x, torch.Generator().manual_seed(0)))
    assert delta.shape == x.shape and delta.dtype == torch.float32
    size = delta.flatten(1).abs().amax(1) if norm == "linf" else delta.flatten(1).norm(dim=1)
    assert (size <= eps * (1 + 1e-5) + 1e-6).all(), (name, size.max())
    assert ((x + delta) >= -1e-6).all() and ((x + delta) <= 1 + 1e-6).all()
    with torch.no_grad():
        clean = (net(x).argmax(1) == y).sum()
        robust = (net((x + delta).clamp(0, 1)).argmax(1) == y).sum()
    assert robust <= clean


def test_any_torchattacks_class_is_reachable_through_one_adapter(problem):
    net, x, y = problem
    threat = ThreatModel(eps=0.1, step=0.025, steps=3)
    attack = make_attack("torchattacks:APGD:loss=dlr,rho=0.5", threat, num_classes=10)
    assert isinstance(attack, TorchattacksAttack)
    assert attack.kwargs["loss"] == "dlr" and attack.kwargs["rho"] == 0.5
    assert attack.kwargs["n_restarts"] == 1 and attack.kwargs["steps"] == 3
    assert attack.perturb(net, x, y).shape == x.shape
    with pytest.raises(BadInput, match="no attack 'Nope'"):
        make_attack("torchattacks:Nope", threat)
    with pytest.raises(BadInput, match="has no argument 'bogus'"):
        make_attack("torchattacks:PGD:bogus=1", threat)
    with pytest.raises(BadInput, match="allowed: pgd"):
        make_attack("nonsense", threat)


def test_a_setting_the_attack_cannot_use_is_refused_not_dropped():
    threat = ThreatModel(restarts=5)
    with pytest.raises(BadInput, match="fgsm does not use restarts, step, steps"):
        make_attack("fgsm", threat, explicit={"restarts", "steps", "step"})
    with pytest.raises(BadInput, match="autoattack does not use steps"):
        make_attack("autoattack", threat, explicit={"steps"})
    # honoured: torchattacks' PGD has no restarts of its own; the adapter runs them
    attack = make_attack("torchattacks-pgd", threat, explicit={"restarts", "steps"})
    assert attack.repeats == 5
    with pytest.raises(BadInput, match="bn_mode 'train'"):
        make_attack("torchattacks-pgd", ThreatModel(bn_mode="train"))


def test_adapter_restarts_keep_the_worst_case_per_example(problem):
    net, x, y = problem
    one = make_attack("torchattacks-pgd", ThreatModel(eps=0.05, step=0.02, steps=2), seed=3)
    five = make_attack("torchattacks-pgd", ThreatModel(eps=0.05, step=0.02, steps=2,
                                                       restarts=5), seed=3)
    loss = nn.CrossEntropyLoss(reduction="none")
    d1, d5 = one.perturb(net, x, y), five.perturb(net, x, y)
    with torch.no_grad():
        l1, l5 = loss(net(x + d1), y), loss(net(x + d5), y)
    assert (l5 >= l1 - 1e-6).all()  # the first of the five starts is the single run's


def test_minimum_norm_perturbations_outside_the_ball_do_not_count(problem):
    net, x, y = problem
    tight = make_attack("cw", ThreatModel(norm="l2", eps=1e-4, step=0.1, steps=20))
    delta = tight.perturb(net, x, y)
    assert (delta.flatten(1).norm(dim=1) <= 1e-4 * (1 + 1e-5) + 1e-6).all()


def test_evaluate_robust_runs_any_registry_attack(problem):
    net, x, y = problem
    result = evaluate_robust(net, [(x, y)], make_attack("apgd-ce", ThreatModel(eps=0.1, steps=3),
                                                        num_classes=10))
    assert 0 <= result["robust_acc"] <= result["clean_acc"]


def test_threat_model_checks_and_describes_itself():
    with pytest.raises(BadInput, match="restarts=0"):
        ThreatModel(restarts=0)
    with pytest.raises(BadInput, match="norm 'l3'"):
        ThreatModel(norm="l3")
    assert ThreatModel(norm="L_INF").norm == "linf"
    assert ThreatModel.from_255(eps_255=8, step_255=2, steps=1).describe() == \
        "linf eps 8/255, step 2/255, 1 step x 1 restart"
    assert set(REGISTRY) >= {"pgd", "autoattack", "apgd-ce", "apgd-dlr", "fab", "square", "cw",
                             "fgsm"}

"""harness.models: architectures, parameter counts, activation placement, normalization inside."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from curvtools.activations import builtin_names, resolve
from curvtools.errors import BadInput
from harness.models import build_model, count_parameters, describe, model_config

LAYER_TYPES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.AdaptiveAvgPool2d, nn.Identity,
               nn.Sequential)


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k


def _bn(c: int) -> int:
    return 2 * c


def preactresnet18_parameters_by_hand(classes: int) -> int:
    """Count from the architecture description: stem, 8 PreActBlocks, final BN, linear."""
    total = _conv(3, 64, 3)
    cin = 64
    for planes in (64, 128, 256, 512):
        for i in range(2):
            total += _bn(cin) + _conv(cin, planes, 3) + _bn(planes) + _conv(planes, planes, 3)
            if i == 0 and cin != planes:
                total += _conv(cin, planes, 1)  # projection shortcut, no BN (pre-activation)
            cin = planes
    return total + _bn(512) + 512 * classes + classes


def wrn_parameters_by_hand(depth: int, widen: int, classes: int) -> int:
    n = (depth - 4) // 6
    total = _conv(3, 16, 3)
    cin = 16
    for planes in (16 * widen, 32 * widen, 64 * widen):
        for i in range(n):
            total += _bn(cin) + _conv(cin, planes, 3) + _bn(planes) + _conv(planes, planes, 3)
            if i == 0 and cin != planes:
                total += _conv(cin, planes, 1)
            cin = planes
    return total + _bn(cin) + cin * classes + classes


def test_preactresnet18_parameter_count_matches_hand_count_11_172_170():
    # Rice et al.'s PreActResNet-18 with its final BN. The widely quoted 11,171,146 is the same
    # net without that final BatchNorm2d(512) (kuangliu's version): exactly 1,024 fewer.
    model = build_model({"arch": "preactresnet18", "num_classes": 10})
    assert preactresnet18_parameters_by_hand(10) == 11_172_170
    assert count_parameters(model) == 11_172_170
    assert count_parameters(model) - 2 * 512 == 11_171_146
    assert count_parameters(build_model({"num_classes": 100})) == \
        preactresnet18_parameters_by_hand(100)


def test_wrn_28_10_parameter_count_is_36_479_194():
    assert wrn_parameters_by_hand(28, 10, 10) == 36_479_194
    assert count_parameters(build_model({"arch": "wrn-28-10"})) == 36_479_194


def test_wrn_parameter_count_matches_hand_count_for_other_depths():
    for depth, widen in ((10, 1), (16, 4), (22, 2)):
        model = build_model({"arch": f"wrn-{depth}-{widen}", "num_classes": 7})
        assert count_parameters(model) == wrn_parameters_by_hand(depth, widen, 7)


def test_resnet18_parameter_count_is_standard_11_173_962():
    assert count_parameters(build_model({"arch": "resnet18"})) == 11_173_962


@pytest.mark.parametrize("arch", ["preactresnet18", "resnet18", "wrn-16-2"])
@pytest.mark.parametrize("shape,classes", [((3, 32, 32), 10), ((1, 16, 16), 10), ((1, 8, 8), 10),
                                           ((3, 32, 32), 100)])
def test_output_shape_for_cifar_and_digits_inputs(arch, shape, classes):
    model = build_model({"arch": arch, "width": 0.0625, "in_channels": shape[0],
                         "num_classes": classes})
    out = model(torch.rand(2, *shape))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


def test_width_multiplier_scales_channels_with_minimum_one():
    model = build_model({"arch": "preactresnet18", "width": 0.25})
    assert model.core.conv1.out_channels == 16
    assert model.core.linear.in_features == 128
    tiny = build_model({"arch": "wrn-10-1", "width": 0.01})
    assert tiny.core.conv1.out_channels == 1
    assert tiny(torch.rand(1, 3, 8, 8)).shape == (1, 10)


def _activation_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not m._modules and not isinstance(m, LAYER_TYPES)]


ACTIVATIONS = [resolve(n).config() for n in builtin_names()] + [
    resolve("leakyrelu", k=0.3).config(), resolve("leakyrelu", k=-0.2).config(),
    resolve("pswish", beta=4).config(), resolve("expr", expr="x*tanh(x)").config()]


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: str(a))
@pytest.mark.parametrize("arch,uses", [("preactresnet18", 17), ("resnet18", 17), ("wrn-16-1", 13)])
def test_every_activation_builds_with_one_distinct_module_per_use(act, arch, uses):
    model = build_model({"arch": arch, "act": act, "width": 0.0625})
    acts = _activation_modules(model)
    assert len(acts) == uses
    assert len({id(m) for m in acts}) == uses
    expected_type = type(resolve(act["name"], **act["params"]).module())
    assert all(type(m) is expected_type for m in acts)
    if arch == "preactresnet18":  # one forward per activation is enough to show it runs
        assert torch.isfinite(model(torch.rand(2, 3, 8, 8))).all()


def test_no_relu_left_when_another_activation_is_chosen():
    for name in ("silu", "gelu", "softplus"):
        model = build_model({"act": resolve(name).config(), "width": 0.0625})
        assert not any(isinstance(m, nn.ReLU) for m in model.modules())


@pytest.mark.parametrize("arch", ["resnet50", "wrn-27-10", "wrn-4-10", "wrn-28-0", "wrn-28",
                                  "wrn28-10", "", "preactresnet"])
def test_bad_arch_string_raises_bad_input(arch):
    with pytest.raises(BadInput, match="arch|WRN"):
        build_model({"arch": arch})


def test_bad_wrn_depth_message_names_the_rule():
    with pytest.raises(BadInput, match=r"6n\+4"):
        build_model({"arch": "wrn-30-10"})


@pytest.mark.parametrize("bad", [{"width": 0}, {"num_classes": 1}, {"num_classes": 2.5},
                                 {"in_channels": 0}, {"mean": [0.5, 0.5]}, {"std": [1, 0, 1]},
                                 {"act": {"name": "nope"}}, {"widht": 1.0}, {"width": "1"}])
def test_bad_config_values_raise_bad_input(bad):
    with pytest.raises(BadInput):
        build_model(bad)


def test_normalization_is_inside_the_model():
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    model = build_model({"width": 0.0625, "mean": mean, "std": std}).eval()
    x = torch.rand(4, 3, 32, 32)
    by_hand = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), model.core(by_hand), rtol=0, atol=0)
    assert not torch.allclose(model(x), model.core(x))
    assert model.mean.flatten().tolist() == pytest.approx(mean)
    assert "mean" in dict(model.named_buffers()) and "std" in model.state_dict()
    assert all(p is not model.mean for p in model.parameters())


def test_state_dict_round_trip_reproduces_outputs():
    config = model_config("wrn-10-2", resolve("pswish", beta=2).config(), num_classes=5,
                          in_channels=1, width=0.5, mean=[0.3], std=[0.4])
    torch.manual_seed(1)
    source = build_model(config)
    source.train()
    source(torch.rand(8, 1, 16, 16))  # move BN running statistics away from their init
    torch.manual_seed(2)
    target = build_model(config)
    target.load_state_dict(source.state_dict())
    x = torch.rand(3, 1, 16, 16)
    torch.testing.assert_close(target.eval()(x), source.eval()(x), rtol=0, atol=0)


def test_model_config_and_describe():
    config = model_config(act=resolve("silu").config())
    assert set(config) == {"arch", "act", "num_classes", "in_channels", "width", "mean", "std"}
    assert describe({**config, "width": 0.25}).startswith("preactresnet18 x0.25 silu, 10 classes")


def test_wrn_uses_reference_kaiming_fan_out_init():
    torch.manual_seed(0)
    model = build_model({"arch": "wrn-16-4"})
    conv = model.core.block2[1].conv1  # 128 -> 128, 3x3: fan_out = 128 * 9
    expected_std = (2.0 / (128 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)
    assert model.core.fc.bias.abs().max().item() == 0.0


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize("arch", ["preactresnet18", "resnet18", "wrn-16-2"])
def test_cuda_channels_last_model_matches_cpu(arch):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = build_model({"arch": arch, "act": resolve("silu").config(), "width": 0.5,
                         "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.25]}).eval()
    x = torch.rand(8, 3, 32, 32)
    expected = model(x)
    gpu = model.to("cuda", memory_format=torch.channels_last)
    got = gpu(x.cuda().contiguous(memory_format=torch.channels_last)).cpu()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = gpu(x.cuda().contiguous(memory_format=torch.channels_last)).float().cpu()
    assert torch.isfinite(low).all() and (low.argmax(1) == expected.argmax(1)).float().mean() > 0.7

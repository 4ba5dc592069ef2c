"""channels_last on a CPU: the shortcut's 1x1 strided convolution avoids the oneDNN weight-gradient
kernel that corrupts the heap with two threads (bench/channels_last_repro.py), and computes the
same function as nn.Conv2d."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from harness.nets import StridedPointwiseConv

ROOT = Path(__file__).resolve().parent.parent


def test_strided_pointwise_conv_matches_nn_conv2d_in_both_memory_formats():
    torch.manual_seed(0)
    conv = StridedPointwiseConv(8, 16, 2)
    plain = torch.nn.Conv2d(8, 16, 1, stride=2, bias=False)
    plain.load_state_dict(conv.state_dict())  # same keys, same shapes
    x = torch.randn(5, 8, 16, 16)
    expected = plain(x)
    assert torch.equal(conv(x), expected)  # NCHW: nn.Conv2d itself, bit for bit
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = conv(x_cl)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    x_ref = x.clone().requires_grad_(True)
    plain(x_ref).square().sum().backward()
    torch.testing.assert_close(x_cl.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(conv.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-5)


def test_channels_last_training_with_two_threads_does_not_crash():
    """Shapes that crashed every run before (width 1/16, batches 5 and 21, fp32 and bf16, two
    threads; the crash came in the first backward), trained two steps in a subprocess: it must
    exit cleanly."""
    code = textwrap.dedent("""
        import torch, torch.nn.functional as F
        torch.set_num_threads(2)
        from harness.models import build_model, model_config
        for width in (0.0625,):
            for batch in (5, 21):
                for bf16 in (False, True):
                    torch.manual_seed(0)
                    net = build_model(model_config("preactresnet18", {"name": "relu"}, 10, 3,
                                                   width, [0.5] * 3, [0.25] * 3))
                    net = net.to(memory_format=torch.channels_last)
                    opt = torch.optim.SGD(net.parameters(), lr=0.01)
                    for _ in range(2):
                        x = torch.rand(batch, 3, 32, 32).contiguous(
                            memory_format=torch.channels_last)
                        y = torch.randint(0, 10, (batch,))
                        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                            loss = F.cross_entropy(net(x).float(), y)
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]

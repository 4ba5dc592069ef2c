"""BatchNorm kernels on PreActResNet-18's shapes: which backend PyTorch picks, and how fast it is.

``python -m bench.bn_kernels [--device cuda] [--iters 50]`` prints JSON.

For each BatchNorm input shape of PreActResNet-18 at batch 128 (64 channels at 32x32 down to 512
at 4x4) and each (dtype, memory format), times one train-mode BatchNorm forward (batch
statistics, running-statistics update) plus its backward to the input, weight and bias, the way
the training step runs it. On CUDA the iterations are replayed from one CUDA graph, so the
figure is kernel time, not launch time. The kernels' names (``torch.profiler``, one iteration)
say which backend ran: PyTorch's own (``batch_norm_collect_statistics...``) or cuDNN's
(``bn_fw_tr...`` / ``cudnn``). PyTorch sends fp16 input with fp32 parameters to cuDNN and bf16
input to its own kernels; in channels_last cuDNN runs its persistent NHWC kernels.

Rows per layer shape: microseconds per forward + backward; ``per_step_ms`` weighs each shape by
how often a training step runs it (17 layers x 13 forwards and 11 backwards per step).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
import torch.nn.functional as F

from bench.timing import Stopwatch, summarize

# (channels, side) of PreActResNet-18's 17 BatchNorm inputs at width 1, and how many layers each
SHAPES = ((64, 32, 5), (128, 16, 4), (256, 8, 4), (512, 4, 4))
VARIANTS = (("bf16", torch.bfloat16, True), ("fp16", torch.float16, True),
            ("fp32", torch.float32, True), ("bf16_nchw", torch.bfloat16, False),
            ("fp16_nchw", torch.float16, False))
STEP_BACKWARDS = 11  # 10 attack steps + the robust step (the clean forward has no backward)


def _kernel_names(fn) -> list[str]:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sorted({e.key[:90] for e in prof.key_averages()
                   if getattr(e, "device_type", None) == DeviceType.CUDA})


def one_shape(device: torch.device, batch: int, channels: int, side: int, dtype: torch.dtype,
              channels_last: bool, iters: int) -> dict[str, Any]:
    """Microseconds per train-mode forward + backward of one BatchNorm layer."""
    g = torch.Generator(device=device).manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, channels, side, side, device=device, generator=g).to(
        dtype=dtype, memory_format=fmt).requires_grad_(True)
    grad_out = torch.randn_like(x)
    weight = torch.ones(channels, device=device, requires_grad=True)
    bias = torch.zeros(channels, device=device, requires_grad=True)
    mean = torch.zeros(channels, device=device)
    var = torch.ones(channels, device=device)

    def step():
        y = F.batch_norm(x, mean, var, weight, bias, training=True, momentum=0.1, eps=1e-5)
        torch.autograd.grad(y, (x, weight, bias), grad_out)

    for _ in range(3):
        step()
    out: dict[str, Any] = {}
    if device.type == "cuda":
        out["kernels"] = _kernel_names(step)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(iters):
                step()
        run = graph.replay
    else:
        def run():
            for _ in range(iters):
                step()
    run()
    seconds = []
    for _ in range(5):
        with Stopwatch(device) as watch:
            run()
        seconds.append(watch.seconds / iters)
    out["us"] = summarize([s * 1e6 for s in seconds])["median"]
    return out


def bench(device: torch.device, batch: int = 128, iters: int = 50) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name, dtype, cl in VARIANTS:
        per_shape = {}
        total_us = 0.0
        for channels, side, layers in SHAPES:
            try:
                r = one_shape(device, batch, channels, side, dtype, cl, iters)
            except Exception as exc:  # noqa: BLE001 - record and go on
                r = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            per_shape[f"{channels}x{side}x{side}"] = r
            if "us" in r:
                total_us += r["us"] * layers
        rows[name] = {"shapes": per_shape,
                      "forward_backward_all_layers_us": total_us,
                      # 11 forward + backward pairs and 1 forward alone per step: a lower bound
                      "per_step_ms_at_least": total_us * STEP_BACKWARDS / 1e3}
    return {"device": str(device), "batch": batch, "iters_per_graph": iters,
            "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "variants": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bn_kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args(argv)
    print(json.dumps(bench(torch.device(args.device), args.batch, args.iters), indent=1))


if __name__ == "__main__":
    main()

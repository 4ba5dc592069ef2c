"""Minimal reproduction of the CPU channels_last crash (torch 2.14.1, two or more threads).

The weight gradient of a 1x1 stride-2 convolution (8 -> 16 channels, 16x16 input, batch 5) in
channels_last corrupts the heap: ``free(): invalid next size``, ``double free or corruption`` or a
segfault, in fp32 and in bf16, on every run here; with one thread, with stride 1, with batches 4
or 8, or with only the input gradient asked for, it runs clean. ``harness.nets``'s shortcut
(:class:`harness.nets.StridedPointwiseConv`) avoids the kernel; this script calls it directly.

    python bench/channels_last_repro.py            # crashes (exit code 134 or 139)
    python bench/channels_last_repro.py --workaround   # the shortcut's path: prints ok
"""

import sys

import torch
import torch.nn.functional as F

torch.set_num_threads(2)
workaround = "--workaround" in sys.argv
weight = torch.randn(16, 8, 1, 1).contiguous(memory_format=torch.channels_last)
weight.requires_grad_(True)
for _ in range(3000):
    x = torch.rand(5, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    out = F.conv2d(x[:, :, ::2, ::2], weight) if workaround else F.conv2d(x, weight, stride=2)
    out.sum().backward()
print("ok")

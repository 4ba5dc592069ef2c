"""Replay a fixed-shape step as one CUDA graph.

A PGD-10 training step of PreActResNet-18 at batch 128 runs 12 forwards and 11 backwards of
small kernels, each a few microseconds of GPU work, so eager PyTorch is bound by the launch
overhead of Python and the CUDA driver: on an H200 an epoch took 29.5 s eagerly and 9.9 s with
the step replayed from CUDA graphs (docs/benchmarks.md). Captured once into a CUDA graph, the
step (attack, robust forward/backward, the clean forward) is replayed with one launch per call.
A replay computes what the eager step computes, without the Python in between (cuDNN may pick
other algorithms under capture, so the two agree to floating-point reordering, not bit for bit).

:class:`GraphedStep` wraps a function ``fn(*tensors) -> tensor or tuple of tensors`` that

* has no host synchronization (no ``.item()``, no data-dependent Python branches),
* draws no random numbers (random starts are drawn outside and passed in), and
* keeps no Python state that changes between calls (in-place updates of module buffers, such as
  BatchNorm running statistics, are fine: the graph updates the same memory).

Calls follow the CUDA graph recipe of the PyTorch documentation ("whole network capture"):
the first ``warmup`` calls of the captured shape run eagerly on a side stream (they are real
steps, their results are returned), the next call of that shape is captured and replayed, and
later calls of that shape copy their inputs into the captured ones and replay. Calls with another
shape (the last, smaller batch of an epoch) run eagerly. The outputs of a replay are the captured
output tensors, overwritten by the next replay: use them (or enqueue work on them) before the
next call, as the training loop does.

On a CPU (or with ``capture=False``) the object runs ``fn`` eagerly every time; ``static=True``
instead emulates the replay path without a graph (inputs copied into fixed buffers, ``fn`` run on
those), so the tests on a CPU check that routing inputs through static buffers changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

StepFn = Callable[..., Any]


def _signature(args: Sequence[torch.Tensor]) -> tuple:
    return tuple((tuple(a.shape), a.dtype, a.stride(), a.device) for a in args)


def _static_copy(a: torch.Tensor) -> torch.Tensor:
    out = torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device=a.device)
    out.copy_(a)
    return out


class GraphedStep:
    """``fn`` replayed from a CUDA graph for calls of one input shape (see the module docstring).

    Args:
        fn: the step; tensors in, a tensor or a tuple of tensors out.
        warmup: eager calls of the captured shape before the capture (at least 1; the PyTorch
            recipe uses a few so that lazy initializations happen outside the capture).
        capture: capture a CUDA graph (needs CUDA tensors); ``None``: when the first call's
            inputs are on a CUDA device.
        static: without a graph, still route calls of the first shape through fixed input
            buffers (a CPU emulation of the replay path, for tests).
    """

    def __init__(self, fn: StepFn, *, warmup: int = 3, capture: bool | None = None,
                 static: bool = False):
        if warmup < 1:
            raise ValueError(f"warmup={warmup} must be >= 1")
        self.fn = fn
        self.warmup = warmup
        self.capture = capture
        self.static = static
        self.signature: tuple | None = None
        self.calls_of_signature = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[torch.Tensor] = []
        self.outputs: Any = None
        self.replays = 0
        self.eager_calls = 0

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, *args: torch.Tensor) -> Any:
        signature = _signature(args)
        if self.signature is None:
            self.signature = signature
            if self.capture is None:
                self.capture = args[0].device.type == "cuda"
        if signature != self.signature:
            return self._eager(args)
        if self.graph is not None:
            self._copy_in(args)
            self.graph.replay()
            self.replays += 1
            return self.outputs
        if self.capture:
            if self.calls_of_signature < self.warmup:
                self.calls_of_signature += 1
                return self._side_stream(args)
            return self._capture_and_replay(args)
        if self.static:
            if not self.inputs:
                self.inputs = [_static_copy(a) for a in args]
            else:
                self._copy_in(args)
            self.replays += 1
            return self.fn(*self.inputs)
        return self._eager(args)

    def _copy_in(self, args: Sequence[torch.Tensor]) -> None:
        for static, value in zip(self.inputs, args, strict=True):
            static.copy_(value)

    def _eager(self, args: Sequence[torch.Tensor]) -> Any:
        self.eager_calls += 1
        return self.fn(*args)

    def _side_stream(self, args: Sequence[torch.Tensor]) -> Any:
        """A warm-up call: eager, on a side stream, as the CUDA graph recipe asks."""
        stream = torch.cuda.Stream(device=args[0].device)
        stream.wait_stream(torch.cuda.current_stream(args[0].device))
        with torch.cuda.stream(stream):
            out = self._eager(args)
        torch.cuda.current_stream(args[0].device).wait_stream(stream)
        return out

    def _capture_and_replay(self, args: Sequence[torch.Tensor]) -> Any:
        self.inputs = [_static_copy(a) for a in args]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.outputs = self.fn(*self.inputs)
        self.graph = graph
        graph.replay()  # the capture recorded the step without running it
        self.replays += 1
        return self.outputs

    def stats(self) -> dict[str, Any]:
        """What happened so far: captured or not, replays, eager calls (for logs and benches)."""
        return {"captured": self.captured, "replays": self.replays,
                "eager_calls": self.eager_calls}

"""Training throughput: our PGD training step against the reference loop, same model and images.

Ours is exactly what ``harness train`` runs: :func:`harness.step.train_one_epoch` on an
``Engine`` built by ``harness.step.build_engine`` (model, optional ``torch.compile``, SGD) over
``harness.data.DeviceBatches`` (images resident on the device, augmentation there), with
:func:`harness.attacks.pgd` inside. The reference is :mod:`bench.reference_loop` (Rice et al.'s
loop). Both see the same uint8 images, batch size, width and attack settings; each warms up
first, then the timed steps are split into ``repeats`` equal chunks, and images/s is reported as
the median over chunks with its spread.

Example::

    >>> images, labels, source = bench_images(24 * 128, synthetic=True)
    >>> result = compare_train_throughput(images, labels, device="cpu", width=0.25)
    >>> result["ratio"]          # ours images/s / reference images/s
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.timing import Stopwatch, rate_summary

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg"


def bench_images(n: int, *, synthetic: bool = False, data: str | Path | None = None,
                 seed: int = 0, image_size: int = 32) -> tuple[torch.Tensor, np.ndarray, str]:
    """``n`` uint8 images [n, 3, S, S] and int64 labels, plus a label saying where they came from.

    Real CIFAR-10 (JPEG copy) training images when the folder exists (only the ``n`` requested
    files are decoded), else (or with ``synthetic``) uniform random uint8 images with random
    labels: the same arithmetic per image, which is all a timing needs.
    """
    folder = Path(data) if data is not None else DEFAULT_DATA
    if not synthetic and (folder / "train").is_dir():
        from harness.datasets import open_source

        source = open_source(f"imagefolder:{folder}", "data", download=False)
        labels = source.labels("train")
        idx = np.random.default_rng(seed).permutation(len(labels))[:n]
        return source.images("train", idx), labels[idx], "CIFAR-10 (JPEG copy), train images"
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, image_size, image_size), generator=g,
                           dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g).numpy()
    return images, labels, "synthetic uniform uint8 images, random labels"


def _cifar_model_config(width: float, act: str = "relu") -> dict[str, Any]:
    from curvtools.activations import resolve
    from harness.models import model_config
    from harness.sources import CIFAR10_MEAN, CIFAR10_STD

    return model_config("preactresnet18", resolve(act).config(), 10, 3, width,
                        list(CIFAR10_MEAN), list(CIFAR10_STD))


def build_engine(*, device: str | torch.device, width: float, batch_size: int = 128,
                 precision: str = "auto", channels_last: bool | None = None,
                 compile: bool | str = False, attack_steps: int = 10, act: str = "relu",
                 eval_steps: int = 10,
                 seed: int = 0, cuda_graphs: bool | None = None):
    """The ``harness.train.Engine`` that ``harness train`` would build for these settings.

    ``compile``: False, True (torch.compile's default mode) or a ``harness train
    --compile-mode``. Returns (engine, channels_last actually used). Uses ``TrainConfig``
    (validated) and ``harness.step.build_engine``, so it follows every default of the real
    command.
    """
    from harness.config import TrainConfig
    from harness.runtime import autocast_dtype_for, resolve_channels_last, resolve_device
    from harness.step import build_engine as build_train_engine

    cfg = TrainConfig.from_dict({
        "dataset": "cifar10", "width": width, "batch_size": batch_size, "precision": precision,
        "channels_last": channels_last, "compile": bool(compile),
        "compile_mode": compile if isinstance(compile, str) else "default",
        "train_steps": attack_steps, "eval_steps": eval_steps,
        "act": act, "seed": seed, "device": str(device), "download": False,
        "cuda_graphs": cuda_graphs})
    dev = resolve_device(cfg.device)
    amp = autocast_dtype_for(cfg.precision, dev)
    use_cl = resolve_channels_last(cfg, dev)  # what run_training uses
    engine = build_train_engine(cfg, _cifar_model_config(width, act), dev, amp, use_cl)
    return engine, use_cl


def _device_batches(images: torch.Tensor, labels, device, batch_size: int, steps: int,
                    channels_last: bool):
    from harness.data import DeviceBatches

    n = steps * batch_size
    if n > len(images):
        raise ValueError(f"need {n} images for {steps} steps of {batch_size}, have {len(images)}")
    return DeviceBatches(images[:n], np.asarray(labels)[:n], device, batch_size=batch_size,
                         drop_last=True, channels_last=channels_last)


class OursTrainSession:
    """Our training step, warmed up, ready to time chunks of ``steps`` steps (one epoch each)."""

    def __init__(self, images: torch.Tensor, labels, *, device: str | torch.device = "cpu",
                 width: float = 0.25, batch_size: int = 128, steps: int = 8,
                 warmup_steps: int = 2, precision: str = "auto",
                 channels_last: bool | None = None, compile: bool = False,
                 attack_steps: int = 10, cuda_graphs: bool | None = None):
        from harness.runtime import precision_name
        from harness.step import train_one_epoch

        self.engine, self.channels_last = build_engine(
            device=device, width=width, batch_size=batch_size, precision=precision,
            channels_last=channels_last, compile=compile, attack_steps=attack_steps,
            cuda_graphs=cuda_graphs)
        dev = self.engine.device
        warm = _device_batches(images, labels, dev, batch_size, max(1, warmup_steps),
                               self.channels_last)
        self.timed = _device_batches(images, labels, dev, batch_size, steps,
                                     self.channels_last)
        self.epoch = 0
        with Stopwatch(dev) as watch:
            train_one_epoch(self.engine, warm, self.epoch)
        self.warmup_seconds = watch.seconds
        self.settings = {"loop": "harness.step.train_one_epoch", "width": width,
                         "batch_size": batch_size, "attack_steps": attack_steps,
                         "steps_per_repeat": steps, "warmup_steps": warmup_steps,
                         "precision": precision_name(self.engine.amp),
                         "channels_last": self.channels_last, "compile": compile,
                         "cuda_graphs": self.engine.cuda_graphs, "device": str(dev)}

    def time_chunk(self) -> float:
        """Seconds for one call of ``train_one_epoch`` over ``steps`` batches."""
        from harness.step import train_one_epoch

        self.epoch += 1
        with Stopwatch(self.engine.device) as watch:
            train_one_epoch(self.engine, self.timed, self.epoch)
        return watch.seconds


class ReferenceTrainSession:
    """The reference loop, ready to time chunks: each chunk is one pass of its DataLoader.

    A chunk runs ``1 + steps`` steps and times the last ``steps`` (their loop syncs four times
    per step through ``.item()``, so the host clock read after each step is exact on CUDA too);
    the first step of a chunk absorbs the DataLoader's worker start-up.
    """

    def __init__(self, images: torch.Tensor, labels, *, device: str | torch.device = "cpu",
                 width: float = 0.25, batch_size: int = 128, steps: int = 8,
                 warmup_steps: int = 2, num_workers: int = 2, attack_steps: int = 10):
        from bench.reference_loop import ReferenceBatches, reference_model, reference_optimizer

        self.device = torch.device(device)
        torch.manual_seed(0)
        np.random.seed(0)
        self.model = reference_model(width).to(self.device)
        self.opt = reference_optimizer(self.model)
        self.steps, self.attack_steps = steps, attack_steps
        n = (1 + max(steps, warmup_steps)) * batch_size
        if n > len(images):
            raise ValueError(f"need {n} images for the reference chunks, have {len(images)}")
        self.batches = ReferenceBatches(images[:n], np.asarray(labels)[:n], batch_size,
                                        self.device, augment=True, shuffle=True,
                                        num_workers=num_workers, drop_last=True)
        started = time.perf_counter()
        self._run(max(1, warmup_steps))
        self.warmup_seconds = time.perf_counter() - started
        self.settings = {"loop": "bench.reference_loop.reference_train", "width": width,
                         "batch_size": batch_size, "attack_steps": attack_steps,
                         "steps_per_repeat": steps, "warmup_steps": warmup_steps,
                         "precision": "fp32", "channels_last": False,
                         "num_workers": num_workers, "device": str(self.device)}

    def _run(self, steps: int) -> list[float]:
        from bench.reference_loop import reference_train

        marks: list[float] = []
        reference_train(self.model, self.batches, self.opt, steps, mark=marks,
                        attack_iters=self.attack_steps)
        if len(marks) < steps:
            raise RuntimeError(f"reference loop ran {len(marks)} of {steps} steps")
        return marks

    def time_chunk(self) -> float:
        marks = self._run(1 + self.steps)
        return marks[-1] - marks[0]


def _report(session, seconds: list[float], steps: int, batch_size: int) -> dict[str, Any]:
    return {"images_per_s": rate_summary(steps * batch_size, seconds),
            "seconds_per_step": sorted(seconds)[len(seconds) // 2] / steps,
            "warmup_seconds": session.warmup_seconds,
            "settings": {**session.settings, "repeats": len(seconds)}}


def ours_train_throughput(images: torch.Tensor, labels, *, steps: int = 8, repeats: int = 3,
                          batch_size: int = 128, **kwargs) -> dict[str, Any]:
    """Images/s of ``harness.step.train_one_epoch`` (one call of ``steps`` steps per repeat).

    The warm-up (and, with ``compile=True``, the compilation) runs ``warmup_steps`` steps
    first and is timed separately as ``warmup_seconds``. Keywords: see :class:`OursTrainSession`.
    """
    session = OursTrainSession(images, labels, steps=steps, batch_size=batch_size, **kwargs)
    return _report(session, [session.time_chunk() for _ in range(repeats)], steps, batch_size)


def reference_train_throughput(images: torch.Tensor, labels, *, steps: int = 8,
                               repeats: int = 3, batch_size: int = 128,
                               **kwargs) -> dict[str, Any]:
    """Images/s of :func:`bench.reference_loop.reference_train` (see
    :class:`ReferenceTrainSession`)."""
    session = ReferenceTrainSession(images, labels, steps=steps, batch_size=batch_size,
                                    **kwargs)
    return _report(session, [session.time_chunk() for _ in range(repeats)], steps, batch_size)


def compare_train_throughput(images: torch.Tensor, labels, *, device: str = "cpu",
                             width: float = 0.25, batch_size: int = 128, steps: int = 8,
                             repeats: int = 3, warmup_steps: int = 2, precision: str = "auto",
                             channels_last: bool | None = None,
                             num_workers: int = 2, compile: bool = False,
                             reference_images: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ours and the reference on the same images; ``ratio`` = ours / reference images/s.

    The repeats alternate (reference chunk, our chunk, reference chunk, ...), so a change of
    load on a shared machine hits both sides alike. ``num_workers`` of the reference DataLoader
    is theirs (2). ``reference_images``: the :func:`bench_images` arguments that made
    ``images``; the reference then runs in a process of its own with malloc left alone
    (:class:`bench.reference_process.RemoteReference`), as their script would, while ours runs
    here with whatever this process set (``bench.run_all`` applies harness's defaults).
    """
    common = {"device": device, "width": width, "batch_size": batch_size, "steps": steps,
              "warmup_steps": warmup_steps}
    if reference_images is not None:
        from bench.reference_process import RemoteReference

        ref = RemoteReference("train", reference_images,
                              {**common, "device": str(device), "num_workers": num_workers,
                               "threads": torch.get_num_threads()})
    else:
        ref = ReferenceTrainSession(images, labels, num_workers=num_workers, **common)
    ours = OursTrainSession(images, labels, precision=precision, channels_last=channels_last,
                            compile=compile, **common)
    ref_seconds, our_seconds = [], []
    for _ in range(repeats):
        ref_seconds.append(ref.time_chunk())
        our_seconds.append(ours.time_chunk())
    if hasattr(ref, "close"):
        ref.close()
    out = {"ours": _report(ours, our_seconds, steps, batch_size),
           "reference": _report(ref, ref_seconds, steps, batch_size), "interleaved": True}
    # per-pair ratios: each pair ran back to back, under nearly the same load
    pairs = [r / o for r, o in zip(ref_seconds, our_seconds, strict=True)]
    out["ratio"] = out["ours"]["images_per_s"]["median"] / out["reference"]["images_per_s"][
        "median"]
    out["ratio_per_pair"] = [round(p, 3) for p in pairs]
    return out


def compare_selection_fold(images: torch.Tensor, labels, *, device: str = "cpu",
                           width: float = 0.25, batch_size: int = 128, steps: int = 2,
                           repeats: int = 4, warmup_steps: int = 1) -> dict[str, Any]:
    """Our step with the restart-selection forward folded into the robust forward (the
    default) against the same step running it separately, alternating chunks in one session;
    ``ratio`` = folded / unfolded images/s (medians). Eager steps (no CUDA graphs: a captured
    graph would not see the switch)."""
    session = OursTrainSession(images, labels, device=device, width=width,
                               batch_size=batch_size, steps=steps, warmup_steps=warmup_steps,
                               cuda_graphs=False)
    step = session.engine.steps()[0].__self__  # the TrainStep behind the bound method
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for fold in (False, True):
            step.fold_selection_forward = fold
            seconds[fold].append(session.time_chunk())
    step.fold_selection_forward = True
    folded, unfolded = (_report(session, seconds[k], steps, batch_size) for k in (True, False))
    return {"folded": folded, "unfolded": unfolded,
            "ratio": folded["images_per_s"]["median"] / unfolded["images_per_s"]["median"],
            "ratio_per_pair": [round(u / f, 3) for u, f in
                               zip(seconds[False], seconds[True], strict=True)]}

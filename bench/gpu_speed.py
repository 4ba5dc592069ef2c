"""GPU speed check in one call: seconds per PGD-10 training epoch against the arithmetic limit.

``python -m bench.gpu_speed [--tiny] [--budget-s 500] [--out DIR] [--equality-npz PATH]``

Measured, in this order, each part skipped (and recorded as skipped) when the time budget left
is too small, each failure recorded without losing the other parts; the JSON
(``$OUT/gpu_speed.json``, else ``./out/gpu_speed.json``) is rewritten after every part and a
short table is printed at the end:

1. ``env``: device, versions, the chip's dense bf16 peak (datasheet) and a measured bf16 matmul
   rate (the achievable peak, same run);
2. ``flops``: FLOPs of one training step of ours and of the reference, counted with
   ``torch.utils.flop_counter.FlopCounterMode`` (matmul/conv FLOPs), per image and per epoch;
3. ``ours_epoch``: seconds per PGD-10 training epoch of PreActResNet-18 (width 1.0, batch 128)
   on 45,000 synthetic uint8 images, exactly ``harness train``'s step
   (``harness.train.train_one_epoch``; fp16 autocast and channels_last, the CUDA defaults), and
   the achieved FLOP/s against the peak;
4. ``reference``: Rice et al.'s loop (``bench.reference_loop``, fp32) timed for a few hundred
   steps, seconds per epoch *extrapolated* to 45,000 images;
5. ``ours_fp32``: our step in fp32 (a partial epoch, extrapolated): separates what fp16 buys
   from what the loop itself buys;
6. ``eval``: PGD-20 x 5 restarts on 10,000 images: ours (``ours_auto``: fp16 and
   channels_last on CUDA, timed on all 10,000; ``ours_fp32``: the
   ``harness eval`` default, extrapolated from a subset) and the reference test loop
   (extrapolated from a subset);
7. ``equality``: short real training runs (``harness.train.run_training``), fp32, bf16 and fp16 with
   the same seed, and a second seed of each for the run-to-run spread; clean and robust test
   accuracy compared;
8. ``compile``: our step under ``torch.compile`` inside the CUDA graphs (compile time reported
   separately); ``compile_max_autotune``: the same with ``--compile-mode
   max-autotune-no-cudagraphs`` (Inductor times Triton kernel candidates against cuDNN);
9. variants of 3., one epoch each: ``ours_eager`` (no CUDA graphs), ``ours_cudnn_benchmark``,
   ``ours_nchw`` (without channels_last), ``ours_bf16`` (bf16 autocast: PyTorch's own
   BatchNorm kernels instead of cuDNN's), ``compile_bf16``, ``profile_bf16``; ``bn_kernels``:
   one BatchNorm layer's forward + backward per dtype and memory format (``bench.bn_kernels``);
10. ``profile``: the step's kernels by device time (torch.profiler), with the shares of
   convolutions and BatchNorm.

The GPU machine has no dataset: timing parts use synthetic uniform uint8 images (the same
arithmetic per image as CIFAR-10); the equality runs use scikit-learn's digits (offline), or a
CIFAR-10 subset exported here with ``--export-cifar-subset PATH`` and passed as
``--equality-npz PATH``. ``--tiny`` shrinks everything so the script runs on a CPU in about a
minute (a smoke test, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import bn_kernels
from bench.timing import Stopwatch, summarize

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, FLOP/s.
BF16_DENSE_PEAK = {"H200": 989.4e12, "H100 PCIe": 756.0e12, "H100 NVL": 835.0e12,
                   "H100": 989.4e12, "A100": 312.0e12}
PAPER_REFERENCE_SECONDS_PER_EPOCH = 180.0  # Rice et al.'s logs (PROTOCOL.md), 2020-era GPU


@dataclass
class Sizes:
    """Problem sizes: the real ones, or ``tiny`` ones for a CPU smoke run."""

    width: float = 1.0
    batch: int = 128
    train_images: int = 45_000
    warmup_steps: int = 20
    ours_epochs: int = 2
    reference_warmup: int = 10
    reference_steps: int = 60
    reference_repeats: int = 3
    fp32_steps: int = 100
    eval_images: int = 10_000
    eval_subset_fp32: int = 2_560
    eval_subset_reference: int = 1_280
    equality_epochs: int = 10
    equality_width: float = 1.0
    matmul_size: int = 8192

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(width=0.0625, batch=16, train_images=3 * 16 + 5, warmup_steps=1,
                   ours_epochs=1, reference_warmup=1, reference_steps=1, reference_repeats=2,
                   fp32_steps=2, eval_images=8, eval_subset_fp32=4, eval_subset_reference=4,
                   equality_epochs=1, equality_width=0.0625, matmul_size=256)


class Budget:
    """Seconds left before the deadline; parts ask before they start."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, needed: float) -> bool:
        return self.left() >= needed


class Results:
    """The JSON document, rewritten (atomically) after every part."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {"parts": {}}

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)

    def run(self, name: str, needed_s: float, budget: Budget, fn: Callable[[], dict]) -> None:
        """Run part ``name`` if ``needed_s`` seconds are left, record result, error or skip."""
        print(f"[gpu_speed] {name} (budget left {budget.left():.0f} s, needs ~{needed_s:.0f} s)",
              flush=True)
        if not budget.allows(needed_s):
            out: dict[str, Any] = {"skipped": f"time budget: {budget.left():.0f} s left, "
                                              f"part needs about {needed_s:.0f} s"}
        else:
            started = time.perf_counter()
            try:
                out = fn()
            except Exception as err:  # one failed part must not lose the others
                out = {"error": f"{type(err).__name__}: {err}",
                       "traceback": traceback.format_exc(limit=6)}
                print(out["traceback"], file=sys.stderr, flush=True)
            out["wall_seconds"] = round(time.perf_counter() - started, 2)
        self.data["parts"][name] = out
        self.write()
        print(f"[gpu_speed] {name}: {json.dumps(_brief(out), default=str)[:400]}", flush=True)

    def part(self, name: str) -> dict:
        out = self.data["parts"].get(name, {})
        return out if "error" not in out and "skipped" not in out else {}


def _brief(out: dict) -> dict:
    return {k: v for k, v in out.items() if not isinstance(v, dict | list) or k == "skipped"}


# --- parts -----------------------------------------------------------------------------------


def env_part(device: torch.device, sizes: Sizes) -> dict[str, Any]:
    """Device, versions, datasheet bf16 peak and a measured bf16 matmul rate."""
    out: dict[str, Any] = {"device": str(device), "torch": torch.__version__,
                           "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
                           "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    peak = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        out["gpu"] = name
        out["cudnn"] = torch.backends.cudnn.version()
        out["allow_tf32_conv"] = torch.backends.cudnn.allow_tf32
        out["allow_tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        for key, value in BF16_DENSE_PEAK.items():  # longest names first in the dict order
            if key in name:
                peak = value
                break
    out["bf16_dense_peak_flops"] = peak
    n = sizes.matmul_size
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds = []
    for _ in range(5):
        with Stopwatch(device) as watch:
            for _ in range(10):
                a @ b
        seconds.append(watch.seconds / 10)
    out["matmul_flops_measured"] = 2 * n**3 / summarize(seconds)["median"]
    out["matmul"] = f"{n}x{n}x{n} {str(dtype).replace('torch.', '')}, median of 5x10"
    return out


def _engine(device, sizes: Sizes, precision: str = "auto", compile: bool | str = False,
            cuda_graphs: bool | None = None, channels_last: bool | None = None):
    from bench.train_throughput import build_engine

    return build_engine(device=device, width=sizes.width, batch_size=sizes.batch,
                        precision=precision, compile=compile, cuda_graphs=cuda_graphs,
                        channels_last=channels_last)


def _batches(images, labels, device, batch: int, channels_last: bool):
    from harness.data import DeviceBatches

    return DeviceBatches(images, labels, device, batch_size=batch, channels_last=channels_last)


def flops_part(device, sizes: Sizes, images, labels) -> dict[str, Any]:
    """FLOPs of one training step (ours and the reference), per image and per epoch."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench.reference_loop import (
        ReferenceBatches,
        reference_model,
        reference_optimizer,
        reference_train,
    )
    from harness.step import train_one_epoch

    b = sizes.batch
    engine, cl = _engine(device, sizes)
    one = _batches(images[:b], labels[:b], device, b, cl)
    with FlopCounterMode(display=False) as counter:
        train_one_epoch(engine, one, 0)
    ours = counter.get_total_flops() / b
    model = reference_model(sizes.width).to(device)
    ref_batches = ReferenceBatches(images[:b], labels[:b], b, device, num_workers=0)
    with FlopCounterMode(display=False) as counter:
        reference_train(model, ref_batches, reference_optimizer(model), 1)
    ref = counter.get_total_flops() / b
    n = sizes.train_images
    return {"ours_flops_per_image_step": ours, "reference_flops_per_image_step": ref,
            "ours_flops_per_epoch": ours * n, "reference_flops_per_epoch": ref * n,
            "reference_over_ours": ref / ours, "images_per_epoch": n,
            "protocol_estimate_flops_per_image": 25.5e9,
            "note": "FlopCounterMode counts convolution and matmul FLOPs (2 per MAC), "
                    "not elementwise ops; one step = PGD-10 + training pass + clean pass"}


def _time_epochs(engine, batches, epochs: int, first_epoch: int = 1) -> list[float]:
    from harness.step import train_one_epoch

    seconds = []
    for e in range(epochs):
        with Stopwatch(engine.device) as watch:
            train_one_epoch(engine, batches, first_epoch + e)
        seconds.append(watch.seconds)
    return seconds


def _warmup_batches(images, labels, device, sizes: Sizes, cl: bool):
    # Ends with a partial batch like the epoch does (45,000 = 351 x 128 + 72), so a shape
    # first seen at the end of an epoch is compiled/tuned here, not in the timed epoch.
    tail = sizes.train_images % sizes.batch
    n = min(len(images), sizes.warmup_steps * sizes.batch + tail)
    return _batches(images[:n], labels[:n], device, sizes.batch, cl)


def ours_epoch_part(device, sizes: Sizes, images, labels, results: Results,
                    precision: str = "auto", compile: bool | str = False,
                    cuda_graphs: bool | None = None,
                    channels_last: bool | None = None) -> dict[str, Any]:
    """Seconds per full training epoch of ours (median over ``ours_epochs``) and FLOP/s."""
    from harness.runtime import precision_name

    engine, cl = _engine(device, sizes, precision, compile, cuda_graphs, channels_last)
    full = _batches(images, labels, device, sizes.batch, cl)
    warm = _warmup_batches(images, labels, device, sizes, cl)
    with Stopwatch(device) as warm_watch:
        _time_epochs(engine, warm, 1, first_epoch=0)
    seconds = _time_epochs(engine, full, sizes.ours_epochs)
    out = {"seconds_per_epoch": summarize(seconds),
           "seconds_each": [round(s, 4) for s in seconds],
           "warmup_seconds": warm_watch.seconds, "warmup_steps": sizes.warmup_steps,
           "images": len(images), "batch": sizes.batch, "width": sizes.width,
           "precision": precision_name(engine.amp), "channels_last": cl,
           "compile": compile, "cuda_graphs": engine.cuda_graphs,
           "data": "synthetic uniform uint8 images, random labels"}
    if engine.cuda_graphs:
        out["graphs"] = {name: step.stats() for name, step in
                         zip(("robust", "clean"), engine.steps(), strict=True)}
    _add_flop_rate(out, results, out["seconds_per_epoch"]["median"])
    return out


def _with_cudnn_benchmark(fn: Callable[[], dict]) -> dict:
    """``fn()`` with ``torch.backends.cudnn.benchmark`` on (cuDNN times its algorithms)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        return fn() | {"cudnn_benchmark": True}
    finally:
        torch.backends.cudnn.benchmark = before


def _add_flop_rate(out: dict, results: Results, seconds_per_epoch: float) -> None:
    flops = results.part("flops").get("ours_flops_per_epoch")
    env = results.part("env")
    if flops:
        out["achieved_flops"] = flops / seconds_per_epoch
        if env.get("bf16_dense_peak_flops"):
            out["fraction_of_bf16_peak"] = out["achieved_flops"] / env["bf16_dense_peak_flops"]
            out["limit_seconds_per_epoch_at_peak"] = flops / env["bf16_dense_peak_flops"]
        if env.get("matmul_flops_measured"):
            out["fraction_of_measured_matmul"] = (out["achieved_flops"]
                                                  / env["matmul_flops_measured"])


def reference_part(device, sizes: Sizes, images, labels) -> dict[str, Any]:
    """The reference loop: a few hundred steps timed, seconds per epoch extrapolated."""
    from bench.train_throughput import reference_train_throughput

    out = reference_train_throughput(images, labels, device=device, width=sizes.width,
                                     batch_size=sizes.batch, steps=sizes.reference_steps,
                                     repeats=sizes.reference_repeats,
                                     warmup_steps=sizes.reference_warmup)
    out["seconds_per_epoch_extrapolated"] = sizes.train_images / out["images_per_s"]["median"]
    out["extrapolated_from_steps"] = sizes.reference_steps * sizes.reference_repeats
    return out


def kernel_kind(name: str) -> str:
    """``"batchnorm"``, ``"convolution"`` or ``"other"`` for a kernel or operator name.

    BatchNorm is matched first: cuDNN's BatchNorm kernels (``cudnn::batchnorm_fwtr_nhwc...``)
    also carry "cudnn", which otherwise marks convolution kernels.
    """
    name = name.lower()
    if any(w in name for w in ("batch_norm", "batchnorm", "bn_")):
        return "batchnorm"
    if any(w in name for w in ("conv", "gemm", "cudnn")):
        return "convolution"
    return "other"


def profile_part(device, sizes: Sizes, images, labels, steps: int = 3,
                 top: int = 25, precision: str = "auto") -> dict[str, Any]:
    """Where a training step's device time goes: ``torch.profiler`` over ``steps`` eager steps
    (``precision``, channels_last as on CUDA; CUDA graphs off so that every kernel is seen), the
    ``top`` CUDA kernels by device time (on a CPU: operators by self CPU time), and the shares of
    convolution and BatchNorm kernels (:func:`kernel_kind`)."""
    from torch.profiler import ProfilerActivity, profile

    from harness.step import train_one_epoch

    engine, cl = _engine(device, sizes, precision, cuda_graphs=False)
    warm = _batches(images[: 2 * sizes.batch], labels[: 2 * sizes.batch], device, sizes.batch, cl)
    train_one_epoch(engine, warm, 0)
    timed = _batches(images[: steps * sizes.batch], labels[: steps * sizes.batch], device,
                     sizes.batch, cl)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        train_one_epoch(engine, timed, 1)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    if cuda:  # the kernels themselves: an operator's self device time repeats its kernels'
        from torch.autograd import DeviceType

        events = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA]
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0

    def share(kind: str) -> float:
        return sum(getattr(e, key) for e in events if kernel_kind(e.key) == kind) / total

    return {"steps": steps, "clock": key, "total_ms_per_step": total / 1e3 / steps,
            "share_convolution": share("convolution"),
            "share_batchnorm": share("batchnorm"),
            "top": [{"op": e.key[:120], "ms_per_step": getattr(e, key) / 1e3 / steps,
                     "share": getattr(e, key) / total, "calls_per_step": e.count / steps}
                    for e in events[:top]]}


def ours_fp32_part(device, sizes: Sizes, images, labels) -> dict[str, Any]:
    """Our step in fp32 (no autocast; channels_last as on CUDA), partial epoch extrapolated."""
    from bench.train_throughput import ours_train_throughput

    out = ours_train_throughput(images, labels, device=device, width=sizes.width,
                                batch_size=sizes.batch, steps=sizes.fp32_steps, repeats=1,
                                warmup_steps=sizes.warmup_steps, precision="fp32")
    out["seconds_per_epoch_extrapolated"] = sizes.train_images / out["images_per_s"]["median"]
    return out


def eval_part(device, sizes: Sizes, images, labels, budget: Budget) -> dict[str, Any]:
    """PGD-20 x 5 on ``eval_images``: ours auto (all), ours fp32 and reference (subsets)."""
    from bench.eval_throughput import ours_eval_throughput, reference_eval_throughput

    n = sizes.eval_images
    out: dict[str, Any] = {"images": n, "attack": "PGD-20, 5 restarts, eps 8/255, step 2/255"}
    # "auto": fp16 autocast and channels_last on CUDA (the fast path), bf16 or fp32 on a CPU
    sub = sizes.eval_subset_fp32
    runs = [("ours_auto", lambda: ours_eval_throughput(
                images[:n], labels[:n], device=device, width=sizes.width, repeats=1,
                precision="auto", channels_last=device.type == "cuda"), n),
            ("ours_auto_eager", lambda: ours_eval_throughput(
                images[:sub], labels[:sub], device=device, width=sizes.width, repeats=1,
                precision="auto", channels_last=device.type == "cuda", cuda_graphs=False),
             sub),
            ("ours_fp32", lambda: ours_eval_throughput(
                images[:sizes.eval_subset_fp32], labels[:sizes.eval_subset_fp32],
                device=device, width=sizes.width, repeats=1, precision="fp32"),
             sizes.eval_subset_fp32),
            ("reference", lambda: reference_eval_throughput(
                images[:sizes.eval_subset_reference], labels[:sizes.eval_subset_reference],
                device=device, width=sizes.width, repeats=1), sizes.eval_subset_reference)]
    for name, fn, timed_on in runs:
        if not budget.allows(20):
            out[name] = {"skipped": "time budget"}
            continue
        try:
            r = fn()
            r[f"seconds_for_{n}"] = n / r["images_per_s"]["median"]
            r["extrapolated"] = timed_on < n
            out[name] = r
        except Exception as err:
            out[name] = {"error": f"{type(err).__name__}: {err}"}
    return out


def _imagefolder_from_npz(npz_path: Path, root: Path) -> str:
    """Write an exported subset as an ImageFolder tree of PNGs; returns the dataset spec."""
    from PIL import Image

    data = np.load(npz_path)
    classes = [str(c) for c in data["classes"]]
    for part in ("train", "test"):
        for i, (image, label) in enumerate(zip(data[f"images_{part}"], data[f"labels_{part}"],
                                               strict=True)):
            folder = root / part / classes[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i:05d}.png")
    return f"imagefolder:{root}"


def equality_part(device, sizes: Sizes, budget: Budget, npz: Path | None,
                  tiny: bool, data_spec: str | None = None,
                  train_subset: int = 5000,
                  precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")) -> dict[str, Any]:
    """Short training runs: fp32 vs bf16 vs fp16 (same seed), and a second seed of each for
    the run-to-run spread.

    Data: ``data_spec`` (a ``harness train --dataset`` spec, e.g. ``imagefolder:PATH`` of the
    CIFAR-10 JPEG copy; ``train_subset`` training images, 1,000 validation, 2,000 test), else
    the ``npz`` subset, else scikit-learn's digits.
    """
    from harness.config import TrainConfig
    from harness.train import run_training

    with tempfile.TemporaryDirectory() as tmp:
        spec = data_spec or (_imagefolder_from_npz(npz, Path(tmp) / "data") if npz else "digits")
        base = {"dataset": spec, "epochs": sizes.equality_epochs, "width": sizes.equality_width,
                "device": str(device), "lr_milestones": None, "data_dir": tmp,
                "download": False}
        if data_spec and not tiny:
            base.update(train_subset=train_subset, val_subset=1000, test_subset=2000)
        if tiny:
            base.update(train_subset=64, val_subset=16, test_subset=32, batch_size=32,
                        train_steps=2, eval_steps=2)
        runs: dict[str, Any] = {}
        last_seconds = 0.0
        for seed, precision in ((s, p) for s in (0, 1) for p in precisions):
            name = f"{precision}_seed{seed}"
            if not budget.allows(1.3 * last_seconds + 10):
                runs[name] = {"skipped": "time budget"}
                continue
            cfg = TrainConfig.from_dict({**base, "precision": precision, "seed": seed})
            started = time.perf_counter()
            rows = run_training(cfg, Path(tmp) / name, progress=False)
            last_seconds = time.perf_counter() - started
            final = rows[-1]
            runs[name] = {k: final[k] for k in ("test_clean_acc", "test_robust_acc",
                                                "train_clean_acc", "train_robust_acc",
                                                "val_robust_acc", "loss_scale") if k in final}
            runs[name]["seconds"] = round(last_seconds, 2)
    label = (f"{data_spec} ({base.get('train_subset', 'all')} training images)" if data_spec else
             f"CIFAR-10 subset from {npz.name}" if npz else "digits (scikit-learn)")
    out: dict[str, Any] = {"dataset": label,
                           "epochs": sizes.equality_epochs, "width": sizes.equality_width,
                           "runs": runs}
    out.update(_equality_verdict(runs, precisions))
    return out


def _equality_verdict(runs: dict[str, Any],
                      precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict[str, Any]:
    """|fp32 - p| at the same seed, for each lower precision p, against |seed0 - seed1| within
    each precision (the run-to-run spread)."""
    def acc(name, key):
        r = runs.get(name, {})
        return r.get(key) if "skipped" not in r else None

    def pair(a, b):
        return None if a is None or b is None else abs(a - b)

    out = {}
    for key in ("test_clean_acc", "test_robust_acc"):
        spread = [d for p in precisions if (d := pair(acc(f"{p}_seed0", key),
                                                       acc(f"{p}_seed1", key))) is not None]
        out[f"{key}_seed_spread"] = max(spread) if spread else None
        for low in precisions[1:]:
            same_seed = [d for s in (0, 1) if (d := pair(acc(f"fp32_seed{s}", key),
                                                          acc(f"{low}_seed{s}", key))) is not None]
            out[f"{key}_fp32_vs_{low}"] = max(same_seed) if same_seed else None
            if same_seed and spread:
                # within the spread, with one accuracy quantum of slack for tiny test sets
                out[f"{key}_{low}_within_spread"] = max(same_seed) <= max(spread) + 0.01
    return out


def compile_part(device, sizes: Sizes, images, labels, results: Results,
                 mode: str = "default", precision: str = "auto") -> dict[str, Any]:
    """Our step under torch.compile (inside the CUDA graphs): compile time, seconds per epoch.

    Timed on whole batches only (351 x 128 = 44,928 images, scaled to 45,000), so that the
    compile covers three graphs (attack, training pass, clean pass) and not three more for the
    smaller last batch of an epoch.
    """
    whole = sizes.train_images - sizes.train_images % sizes.batch
    sizes_one = Sizes(**{**sizes.__dict__, "ours_epochs": 1, "train_images": whole})
    out = ours_epoch_part(device, sizes_one, images[:whole], labels[:whole], results,
                          precision=precision, compile=mode)
    out["compile_mode"] = mode
    out["compile_and_warmup_seconds"] = out.pop("warmup_seconds")
    scale = sizes.train_images / whole
    timed = out["seconds_per_epoch"]["median"]
    out["seconds_per_epoch"] = {**out["seconds_per_epoch"], "median": timed * scale}
    out["timed_images"] = whole
    out["scaled_to_images"] = sizes.train_images
    _add_flop_rate(out, results, out["seconds_per_epoch"]["median"])
    return out


# --- the run ---------------------------------------------------------------------------------


PARTS = ("env", "flops", "ours_epoch", "ours_eager", "ours_cudnn_benchmark", "ours_nchw",
         "ours_bf16", "reference", "ours_fp32", "eval", "equality", "compile", "compile_bf16",
         "compile_max_autotune", "profile", "profile_bf16", "bn_kernels")


def run(sizes: Sizes, budget_s: float, out_dir: Path, device: torch.device,
        npz: Path | None = None, tiny: bool = False, compile: bool | None = None,
        data_spec: str | None = None, parts: set[str] | None = None) -> Results:
    """The parts (all, or those in ``parts``) in order of importance, within ``budget_s``."""
    budget = Budget(budget_s)
    results = Results(out_dir / "gpu_speed.json")
    results.data["sizes"] = sizes.__dict__
    results.data["budget_s"] = budget_s
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (sizes.train_images, 3, 32, 32), generator=g,
                           dtype=torch.uint8)
    labels = torch.randint(0, 10, (sizes.train_images,), generator=g).numpy()
    scale = 0.02 if tiny else 1.0  # rough seconds each part needs on an H100
    one = Sizes(**{**sizes.__dict__, "ours_epochs": 1})
    cuda = device.type == "cuda"
    if compile is None:
        compile = cuda
    plan = [
        ("env", 5, lambda: env_part(device, sizes)),
        ("flops", 10, lambda: flops_part(device, sizes, images, labels)),
        ("ours_epoch", 30, lambda: ours_epoch_part(device, sizes, images, labels, results)),
        ("ours_eager", 45, lambda: ours_epoch_part(device, one, images, labels, results,
                                                   cuda_graphs=False)),
        ("ours_cudnn_benchmark", 20, lambda: _with_cudnn_benchmark(
            lambda: ours_epoch_part(device, one, images, labels, results))),
        ("ours_nchw", 20, lambda: ours_epoch_part(device, one, images, labels, results,
                                                  channels_last=False)),
        ("ours_bf16", 20, lambda: ours_epoch_part(device, one, images, labels, results,
                                                  precision="bf16")),
        ("reference", 60, lambda: reference_part(device, sizes, images, labels)),
        ("ours_fp32", 20, lambda: ours_fp32_part(device, sizes, images, labels)),
        ("eval", 40, lambda: eval_part(device, sizes, images, labels, budget)),
        ("equality", 60, lambda: equality_part(device, sizes, budget, npz, tiny, data_spec)),
        ("compile", 150, lambda: compile_part(device, sizes, images, labels, results)),
        ("compile_bf16", 150, lambda: compile_part(device, sizes, images, labels, results,
                                                   precision="bf16")),
        ("compile_max_autotune", 240, lambda: compile_part(
            device, sizes, images, labels, results, mode="max-autotune-no-cudagraphs")),
        ("profile", 20, lambda: profile_part(device, sizes, images, labels)),
        ("profile_bf16", 20, lambda: profile_part(device, sizes, images, labels,
                                                  precision="bf16")),
        ("bn_kernels", 30, lambda: bn_kernels.bench(device, sizes.batch)),
    ]
    for name, needed, fn in plan:
        if parts is not None and name not in parts:
            continue
        if name in ("ours_eager", "ours_cudnn_benchmark", "ours_nchw", "ours_bf16",
                    "profile_bf16", "bn_kernels") and not cuda:
            continue
        if name.startswith("compile") and not compile:
            results.data["parts"][name] = {"skipped": "off (default off on CPU; --compile)"}
            results.write()
            continue
        results.run(name, needed * scale, budget, fn)
    return results


def table(results: Results) -> str:
    """The short final table."""
    p = results.data["parts"]
    lines = ["", "=" * 78, "GPU speed summary (synthetic images for timing; see gpu_speed.json)"]

    def get(part, *keys):
        cur = p.get(part, {})
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return None
            cur = cur[k]
        return cur

    def status(part):
        out = p.get(part, {})
        if "error" in out:
            return "FAILED: " + out["error"][:60]
        if "skipped" in out:
            return "skipped: " + out["skipped"][:60]
        return None

    env = p.get("env", {})
    lines.append(f"device: {env.get('gpu', env.get('device'))}, torch {env.get('torch')}")
    if env.get("bf16_dense_peak_flops"):
        lines.append(f"bf16 dense peak {env['bf16_dense_peak_flops'] / 1e12:.0f} TFLOP/s "
                     f"(datasheet), measured matmul {env['matmul_flops_measured'] / 1e12:.0f}")
    flops = get("flops", "ours_flops_per_image_step")
    if flops:
        lines.append(f"FLOPs per image per step: ours {flops / 1e9:.2f} G, reference "
                     f"{get('flops', 'reference_flops_per_image_step') / 1e9:.2f} G")
    fast = p.get("ours_epoch", {})
    fast_label = (f"ours ({fast.get('precision', '?')}, channels_last={fast.get('channels_last')}, "
                  f"graphs={fast.get('cuda_graphs')})")
    rows = [(fast_label, "ours_epoch", ("seconds_per_epoch", "median")),
            ("ours without CUDA graphs", "ours_eager", ("seconds_per_epoch", "median")),
            ("ours, cudnn.benchmark on", "ours_cudnn_benchmark",
             ("seconds_per_epoch", "median")),
            ("ours fp32 [extrapolated]", "ours_fp32", ("seconds_per_epoch_extrapolated",)),
            ("reference fp32 [extrapolated]", "reference",
             ("seconds_per_epoch_extrapolated",)),
            ("ours torch.compile", "compile", ("seconds_per_epoch", "median")),
            ("ours torch.compile, bf16", "compile_bf16", ("seconds_per_epoch", "median")),
            ("ours torch.compile max-autotune", "compile_max_autotune",
             ("seconds_per_epoch", "median")),
            ("ours NCHW (not channels_last)", "ours_nchw", ("seconds_per_epoch", "median")),
            ("ours bf16 (PyTorch's BatchNorm)", "ours_bf16", ("seconds_per_epoch", "median"))]
    lines.append(f"{'training epoch, 45k images, PGD-10':<40}{'s/epoch':>10}{'vs ref':>9}"
                 f"{'of peak':>9}")
    ref = get("reference", "seconds_per_epoch_extrapolated")
    for label, part, keys in rows:
        s = status(part)
        value = get(part, *keys)
        if s or value is None:
            lines.append(f"  {label:<38}{s or 'n/a'}")
            continue
        speedup = f"{ref / value:.1f}x" if ref else "-"
        peak = get(part, "fraction_of_bf16_peak")
        lines.append(f"  {label:<38}{value:>10.2f}{speedup:>9}"
                     f"{(f'{100 * peak:.0f}%' if peak else '-'):>9}")
    limit = get("ours_epoch", "limit_seconds_per_epoch_at_peak")
    if limit:
        lines.append(f"  {'arithmetic limit at bf16 peak':<38}{limit:>10.2f}")
    lines.append(f"  target: <= 5 s/epoch; paper's code: ~{PAPER_REFERENCE_SECONDS_PER_EPOCH:.0f}"
                 f" s/epoch (2020 GPU)")
    n = get("eval", "images")
    if n:
        lines.append(f"PGD-20 x 5 evaluation, {n} images:")
        for name in ("ours_auto", "ours_auto_eager", "ours_fp32", "reference"):
            r = get("eval", name) or {}
            if f"seconds_for_{n}" in r:
                extra = " [extrapolated]" if r.get("extrapolated") else ""
                lines.append(f"  {name:<38}{r[f'seconds_for_{n}']:>10.2f} s{extra}")
            else:
                lines.append(f"  {name:<38}{r.get('error') or r.get('skipped') or 'n/a'}")
    elif status("eval"):
        lines.append(f"eval: {status('eval')}")
    eq = p.get("equality", {})
    if status("equality"):
        lines.append(f"equality: {status('equality')}")
    elif eq:
        lines.append(f"fp32 vs bf16 vs fp16, {eq['epochs']} epochs on {eq['dataset']}:")
        for name, r in eq["runs"].items():
            if "skipped" in r:
                lines.append(f"  {name:<14} skipped")
            else:
                lines.append(f"  {name:<14} test clean {100 * r['test_clean_acc']:5.1f}%  "
                             f"robust {100 * r['test_robust_acc']:5.1f}%  ({r['seconds']:.0f} s)")
        for key in ("test_clean_acc", "test_robust_acc"):
            for low in ("bf16", "fp16"):
                d, s = eq.get(f"{key}_fp32_vs_{low}"), eq.get(f"{key}_seed_spread")
                if d is not None and s is not None:
                    lines.append(f"  {key}: |fp32-{low}| {100 * d:.1f} pts, seed spread "
                                 f"{100 * s:.1f} pts, within: "
                                 f"{eq.get(f'{key}_{low}_within_spread')}")
    for name in ("profile", "profile_bf16"):
        prof = p.get(name, {})
        if prof.get("top"):
            lines.append(f"{name} (eager step): {prof['total_ms_per_step']:.1f} ms per step, "
                         f"convolutions {100 * prof['share_convolution']:.0f}%, BatchNorm "
                         f"{100 * prof['share_batchnorm']:.0f}%; top: "
                         f"{prof['top'][0]['op'][:50]}")
    for name, row in p.get("bn_kernels", {}).get("variants", {}).items():
        lines.append(f"BatchNorm fwd+bwd, all 17 layers, {name:<10} "
                     f"{row['forward_backward_all_layers_us']:8.0f} us")
    comp = get("compile", "compile_and_warmup_seconds")
    if comp:
        lines.append(f"torch.compile: compile + warm-up {comp:.1f} s")
    lines.append("=" * 78)
    return "\n".join(lines)


def export_cifar_subset(path: Path, n_train: int, n_test: int, data: Path | None) -> None:
    """Write a class-balanced CIFAR-10 (JPEG copy) subset as uint8 npz for ``--equality-npz``."""
    from bench.train_throughput import DEFAULT_DATA
    from harness.data import stratified_subset
    from harness.datasets import open_source

    source = open_source(f"imagefolder:{data or DEFAULT_DATA}", "data", download=False)
    arrays = {}
    for part, n in (("train", n_train), ("test", n_test)):
        labels = source.labels(part)
        idx = stratified_subset(labels, np.arange(len(labels)), n, 0)
        arrays[f"images_{part}"] = source.images(part, idx).numpy()
        arrays[f"labels_{part}"] = labels[idx]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, classes=np.array(source.classes), **arrays)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes, runs on a CPU in about a minute (smoke test)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="stop starting new parts when fewer seconds than they need remain")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: $OUT, else ./out)")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--equality-npz", type=Path, default=None,
                        help="CIFAR subset from --export-cifar-subset for the equality runs "
                             "(default: scikit-learn digits)")
    parser.add_argument("--equality-data", default=None, metavar="SPEC",
                        help="dataset spec for the equality runs, e.g. imagefolder:PATH of the "
                             "CIFAR-10 JPEG copy (5,000-image subset); overrides --equality-npz")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="run the torch.compile part (default: on CUDA only)")
    parser.add_argument("--parts", default=None,
                        help=f"comma list of parts to run (default all): {', '.join(PARTS)}")
    parser.add_argument("--export-cifar-subset", type=Path, default=None, metavar="PATH",
                        help="only write a CIFAR-10 subset npz (5,000 train, 1,000 test) and exit")
    parser.add_argument("--table-only", type=Path, default=None, metavar="JSON",
                        help="only print the table of an existing gpu_speed.json and exit")
    args = parser.parse_args(argv)
    if args.table_only is not None:
        results = Results(args.table_only)
        results.data = json.loads(args.table_only.read_text())
        print(table(results))
        return
    if args.export_cifar_subset is not None:
        export_cifar_subset(args.export_cifar_subset, 5000, 1000, None)
        return
    from harness.runtime import resolve_device

    device = resolve_device(args.device)
    out_dir = args.out or Path(os.environ.get("OUT") or "out")
    sizes = Sizes.tiny() if args.tiny else Sizes()
    if device.type == "cpu" and not args.tiny:
        print("[gpu_speed] warning: full sizes on a CPU take hours; use --tiny", flush=True)
    parts = None
    if args.parts:
        parts = {p.strip() for p in args.parts.split(",") if p.strip()}
        unknown = sorted(parts - set(PARTS))
        if unknown:
            parser.error(f"unknown part(s) {', '.join(unknown)}; allowed: {', '.join(PARTS)}")
    results = run(sizes, args.budget_s, out_dir, device, args.equality_npz, args.tiny,
                  args.compile, args.equality_data, parts)
    print(table(results), flush=True)
    print(f"JSON: {results.path}")


if __name__ == "__main__":
    main()

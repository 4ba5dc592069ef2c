"""Evaluation throughput: PGD-20 x 5 restarts (the paper's reporting attack), ours vs reference.

Ours is what ``harness eval`` runs: :func:`harness.evaluate.evaluate_robust` (model in eval mode,
:func:`harness.attacks.pgd`, batch 256 by default, fp32 unless ``precision`` says otherwise)
over ``harness.data.DeviceBatches``. The reference is the test loop of Rice et al.'s code
(:func:`bench.reference_loop.reference_eval`, batch 128 as theirs). Both attack the same images
with an untrained PreActResNet-18 of the same width; early stop is off for both (see
``reference_eval``). Images/s is the median over ``repeats`` passes after one warm-up batch.

Example::

    >>> images, labels, _ = bench_images(512, synthetic=True)
    >>> compare_eval_throughput(images, labels, width=0.25)["ratio"]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.timing import Stopwatch, rate_summary


def ours_eval_throughput(images: torch.Tensor, labels, *, device: str | torch.device = "cpu",
                         width: float = 0.25, batch_size: int = 256, steps: int = 20,
                         restarts: int = 5, repeats: int = 3, precision: str = "fp32",
                         channels_last: bool = False,
                         cuda_graphs: bool | None = None) -> dict[str, Any]:
    """Images/s of ``harness.evaluate.evaluate_robust`` over all ``images`` (per repeat).

    ``cuda_graphs`` (default: on for CUDA): batches replay a CUDA graph captured during the
    warm-up (``harness train`` does the same); off elsewhere.
    """
    from bench.train_throughput import _cifar_model_config
    from harness.attacks import ThreatModel, make_attack
    from harness.data import DeviceBatches
    from harness.evaluate import evaluate_robust
    from harness.models import build_model
    from harness.runtime import autocast_dtype_for, precision_name, resolve_device

    dev = resolve_device(str(device))
    amp = autocast_dtype_for(precision, dev)
    torch.manual_seed(0)
    model = build_model(_cifar_model_config(width)).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    batches = DeviceBatches(images, np.asarray(labels), dev, batch_size=batch_size,
                            channels_last=channels_last)
    graphs = dev.type == "cuda" and cuda_graphs is not False
    graph_cache = {} if graphs else None
    warm_n = batch_size * (5 if graphs else 1)  # graphs: 3 warm-up calls, capture, a replay
    warm = DeviceBatches(images[:warm_n], np.asarray(labels)[:warm_n], dev,
                         batch_size=batch_size, channels_last=channels_last)

    attack = make_attack("pgd", ThreatModel.from_255(eps_255=8, step_255=2, steps=steps,
                                                     restarts=restarts))

    def run(b):
        generator = torch.Generator(device=dev).manual_seed(0)
        return evaluate_robust(model, b, attack, generator=generator, autocast_dtype=amp,
                               graph_cache=graph_cache)

    with Stopwatch(dev) as warm_watch:
        run(warm)
    seconds, result = [], {}
    for _ in range(repeats):
        with Stopwatch(dev) as watch:
            result = run(batches)
        seconds.append(watch.seconds)
    return {"images_per_s": rate_summary(len(images), seconds),
            "warmup_seconds": warm_watch.seconds, "robust_acc": result.get("robust_acc"),
            "settings": {"loop": "harness.evaluate.evaluate_robust", "width": width,
                         "batch_size": batch_size, "steps": steps, "restarts": restarts,
                         "precision": precision_name(amp),
                         "channels_last": channels_last, "cuda_graphs": graphs,
                         "images": len(images),
                         "repeats": repeats, "device": str(dev)}}


def reference_eval_throughput(images: torch.Tensor, labels, *,
                              device: str | torch.device = "cpu", width: float = 0.25,
                              batch_size: int = 128, steps: int = 20, restarts: int = 5,
                              repeats: int = 3, num_workers: int = 2) -> dict[str, Any]:
    """Images/s of :func:`bench.reference_loop.reference_eval` over all ``images`` (per repeat)."""
    from bench.reference_loop import ReferenceBatches, reference_eval, reference_model

    device = torch.device(device)
    torch.manual_seed(0)
    model = reference_model(width).to(device)
    batches = ReferenceBatches(images, np.asarray(labels), batch_size, device, augment=False,
                               shuffle=False, num_workers=num_workers)
    with Stopwatch(device) as warm_watch:
        reference_eval(model, batches, attack_iters=steps, restarts=restarts, max_batches=1)
    seconds = []
    for _ in range(repeats):
        with Stopwatch(device) as watch:
            reference_eval(model, batches, attack_iters=steps, restarts=restarts)
        seconds.append(watch.seconds)
    return {"images_per_s": rate_summary(len(images), seconds),
            "warmup_seconds": warm_watch.seconds,
            "settings": {"loop": "bench.reference_loop.reference_eval", "width": width,
                         "batch_size": batch_size, "steps": steps, "restarts": restarts,
                         "precision": "fp32", "early_stop": False, "images": len(images),
                         "repeats": repeats, "num_workers": num_workers,
                         "device": str(device)}}


def compare_eval_throughput(images: torch.Tensor, labels, *, device: str = "cpu",
                            width: float = 0.25, steps: int = 20, restarts: int = 5,
                            repeats: int = 3, batch_size: int = 256,
                            reference_batch_size: int = 128,
                            precision: str = "fp32",
                            reference_images: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ours and the reference on the same images; ``ratio`` = ours / reference images/s.

    ``reference_images``: the ``bench_images`` arguments that made ``images``; the reference
    then runs in a process of its own (see :func:`bench.train_throughput.compare_train_throughput`).
    """
    common = {"device": device, "width": width, "steps": steps, "restarts": restarts,
              "repeats": repeats}
    if reference_images is not None:
        from bench.reference_process import RemoteReference

        remote = RemoteReference("eval", reference_images,
                                 {**common, "device": str(device),
                                  "batch_size": reference_batch_size,
                                  "threads": torch.get_num_threads()})
        remote.close()
        ref = remote.first
        ref["settings"]["process"] = "separate, malloc untuned"
    else:
        ref = reference_eval_throughput(images, labels, batch_size=reference_batch_size,
                                        **common)
    ours = ours_eval_throughput(images, labels, batch_size=batch_size, precision=precision,
                                **common)
    return {"ours": ours, "reference": ref,
            "ratio": ours["images_per_s"]["median"] / ref["images_per_s"]["median"]}

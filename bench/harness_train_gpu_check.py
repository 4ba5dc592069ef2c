"""GPU check of harness.train's fast path (bf16 autocast, channels_last, data on the GPU).

Random CIFAR-shaped data (the real images are not on the GPU machine): timing only, accuracies
are meaningless. Prints seconds per training epoch of PreActResNet-18 (width 1, PGD-10, batch 128)
scaled to 45,000 images, bf16 vs fp32, the number of host syncs inside the training loop
(torch.cuda.set_sync_debug_mode), and that the attack stays in the ball.

    PYTHONPATH=. python3 bench/harness_train_gpu_check.py [--images 10000] [--compile]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import harness.data as data_module
from harness.data import ArraySource


def _random_source(n_train: int, n_test: int) -> ArraySource:
    rng = np.random.default_rng(0)
    arrays = {"train": rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
              "test": rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)}
    labels = {"train": rng.integers(0, 10, n_train), "test": rng.integers(0, 10, n_test)}
    return ArraySource("random-cifar", arrays, labels, [str(i) for i in range(10)],
                       (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    source = _random_source(args.images, 2000)
    data_module.open_source = lambda *a, **k: source  # train.load_run_data imports it lazily

    from harness.attacks import pgd
    from harness.train import Engine, TrainConfig, _build_engine, load_run_data, run_training

    print("torch", torch.__version__, torch.cuda.get_device_name(0), flush=True)
    report = {}
    for precision, epochs, compile_ in (("bf16", 2, False), ("fp32", 1, False)) + (
            (("bf16", 2, True),) if args.compile else ()):
        cfg = TrainConfig.from_dict(dict(dataset="random", epochs=epochs, precision=precision,
                                         val_subset=300, test_subset=1000, lr_milestones=None,
                                         compile=compile_))
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            rows = run_training(cfg, Path(tmp) / "run", progress=False, log=print)
            total = time.perf_counter() - started
        n_train = int(0.9 * args.images)
        per_epoch = rows[-1]["train_seconds"]
        key = f"{precision}{'-compile' if compile_ else ''}"
        report[key] = {"train_seconds_last_epoch": per_epoch, "images": n_train,
                       "seconds_per_45k_epoch": per_epoch * 45000 / n_train,
                       "eval_seconds_1500_images_pgd10": rows[-1]["eval_seconds"],
                       "wall_seconds": round(total, 1)}
        print(key, json.dumps(report[key]), flush=True)

    # host syncs inside one training epoch (bf16 fast path)
    cfg = TrainConfig.from_dict(dict(dataset="random", epochs=1, train_subset=1280,
                                     val_subset=100, test_subset=100))
    device = torch.device("cuda")
    run_data = load_run_data(cfg, device, True)
    engine: Engine = _build_engine(cfg, {"arch": "preactresnet18", "act": {"name": "relu"},
                                         "num_classes": 10, "in_channels": 3, "width": 1.0,
                                         "mean": [0.5] * 3, "std": [0.25] * 3},
                                   device, torch.bfloat16, True)
    from harness.train import train_one_epoch

    train_one_epoch(engine, run_data.train, 0)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(run_data.train.epoch(1, 0, True))
        for x, y in batches:
            delta = pgd(engine.forward, x, y, eps=8 / 255, alpha=2 / 255, steps=10,
                        bn_mode="train", autocast_dtype=torch.bfloat16,
                        generator=torch.Generator(device=device).manual_seed(0))
        torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message)[:120] for w in caught if "synchroniz" in str(w.message).lower()]
    print("host syncs in 10 PGD calls:", len(syncs), syncs[:3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        result = train_one_epoch(engine, run_data.train, 2)
        torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message)[:120] for w in caught if "synchroniz" in str(w.message).lower()]
    print("host syncs in one train_one_epoch (10 steps; one .tolist() at the end expected):",
          len(syncs), syncs[:3], result)
    x, y = batches[-1]  # delta is the attack on the last batch
    ok = (delta.abs().max().item() <= 8 / 255 + 1e-6 and (x + delta).min().item() >= 0
          and (x + delta).max().item() <= 1)
    print("pgd inside the ball and [0,1] on CUDA:", ok, "delta dtype", delta.dtype,
          "channels_last", delta.is_contiguous(memory_format=torch.channels_last))
    print("REPORT", json.dumps(report))


if __name__ == "__main__":
    main()

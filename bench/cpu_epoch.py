"""One epoch at the CPU science scale, per speed lever, each against landed main's defaults.

The scale of the curvature experiment (``harness/specs/pswish-curvature.json``, ``cpu-fit``):
1,000 training images in batches of 128 (PGD-5, BatchNorm in train mode), then the per-epoch
evaluation of 250 validation and 500 test images (clean and PGD-5, eval mode), PreActResNet-18 at
width 0.25, bf16 autocast, one thread. Every configuration runs in its own fresh process (the
malloc settings and torch.compile are process-wide), the configurations alternate, and each is
repeated; per configuration the median seconds of training and of evaluation per epoch, the
compile time, and the projected wall time of a 150-epoch run. Figures are ratios against
``main`` measured in the same invocation.

Configurations (cumulative where named so):

* ``main``: landed main before this work: malloc left alone (``LOWCURV_KEEP_FREED_MEMORY=0``),
  per-epoch evaluation in batches of 512 with the zero-gradient check it then ran;
* ``defaults``: today's defaults: the malloc settings (:mod:`curvtools.cpu_allocator`), no
  zero-gradient check in per-epoch evaluation; evaluation batches still 512;
* ``eval256``: ``defaults`` + evaluation batches of 256 (the experiment's spec);
* ``compile``: ``eval256`` + ``torch.compile`` (compile time counted separately);
* ``channels_last``: ``eval256`` + channels_last;
* ``compile_channels_last``: both.

Thread layout (``--layout``): the experiment's throughput with two one-thread runs side by side
against one two-thread run (epochs per hour of the machine).

    python -m bench.cpu_epoch --json bench_cpu_epoch.json          # about 20 minutes, alone
    python -m bench.cpu_epoch --quick                               # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
CONFIGS: dict[str, dict[str, Any]] = {
    "main": {"allocator": False, "eval_batch": 512, "masking_check": True},
    "defaults": {"allocator": True, "eval_batch": 512, "masking_check": False},
    "eval256": {"allocator": True, "eval_batch": 256, "masking_check": False},
    "compile": {"allocator": True, "eval_batch": 256, "masking_check": False, "compile": True},
    "channels_last": {"allocator": True, "eval_batch": 256, "masking_check": False,
                      "channels_last": True},
    "compile_channels_last": {"allocator": True, "eval_batch": 256, "masking_check": False,
                              "compile": True, "channels_last": True},
}
SIZES = {"full": {"train": 1000, "val": 250, "test": 500, "width": 0.25, "epochs": 2},
         "quick": {"train": 64, "val": 16, "test": 16, "width": 0.0625, "epochs": 1}}


def one_config(name: str, size: dict[str, Any], threads: int) -> dict[str, Any]:
    """Build the engine of ``name`` in this process, warm up one epoch, time ``epochs``."""
    import torch

    settings = CONFIGS[name]
    torch.set_num_threads(threads)
    if settings["allocator"]:
        from curvtools.cpu_allocator import keep_freed_memory

        keep_freed_memory()
    from bench.train_throughput import bench_images, build_engine
    from harness.data import DeviceBatches
    from harness.evaluate import evaluate_sharded
    from harness.step import (
        STREAM_TEST_ATTACK,
        STREAM_VAL_ATTACK,
        attack_generator,
        train_one_epoch,
    )

    n_train, n_val, n_test = size["train"], size["val"], size["test"]
    images, labels, source = bench_images(n_train + n_val + n_test)
    engine, cl = build_engine(device="cpu", width=size["width"], batch_size=128,
                              precision="bf16", channels_last=settings.get("channels_last", False),
                              compile=settings.get("compile", False), attack_steps=5,
                              eval_steps=5, act="silu")

    def part(lo: int, hi: int, batch: int, drop_last: bool = False):
        return DeviceBatches(images[lo:hi], labels[lo:hi], "cpu", batch_size=batch,
                             drop_last=drop_last, channels_last=cl)

    train = part(0, n_train, min(128, n_train))
    val = part(n_train, n_train + n_val, settings["eval_batch"])
    test = part(n_train + n_val, n_train + n_val + n_test, settings["eval_batch"])

    def epoch(index: int) -> tuple[float, float]:
        started = time.perf_counter()
        train_one_epoch(engine, train, index)
        trained = time.perf_counter()
        for batches, stream in ((val, STREAM_VAL_ATTACK), (test, STREAM_TEST_ATTACK)):
            evaluate_sharded(engine.forward, batches, engine.dist, engine.eval_attack,
                             generator=attack_generator(engine.device, 0, index, stream),
                             autocast_dtype=engine.amp,
                             masking_check=settings["masking_check"])
        return trained - started, time.perf_counter() - trained

    warm_train, warm_eval = epoch(0)
    times = [epoch(i + 1) for i in range(size["epochs"])]
    return {"config": name, "settings": settings, "data": source, "threads": threads,
            "warmup_train_seconds": round(warm_train, 3),
            "warmup_eval_seconds": round(warm_eval, 3),
            "train_seconds": [round(t, 3) for t, _ in times],
            "eval_seconds": [round(e, 3) for _, e in times]}


def _spawn(name: str, size_name: str, threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(BENCH_DIR.parent))
    if not CONFIGS[name]["allocator"]:
        env["LOWCURV_KEEP_FREED_MEMORY"] = "0"
    return subprocess.Popen([sys.executable, "-m", "bench.cpu_epoch", "--one", name,
                             "--size", size_name, "--threads", str(threads)],
                            cwd=BENCH_DIR.parent, env=env, stdout=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict[str, Any]:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"a configuration exited {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def summarize(runs: list[dict[str, Any]], epochs_per_run: int = 150) -> dict[str, Any]:
    """Median train/eval seconds per epoch, compile seconds, projected run wall time."""
    train = statistics.median(t for r in runs for t in r["train_seconds"])
    evaluation = statistics.median(e for r in runs for e in r["eval_seconds"])
    warm = statistics.median(r["warmup_train_seconds"] + r["warmup_eval_seconds"]
                             for r in runs)
    compile_s = max(0.0, warm - train - evaluation)
    return {"train_s_per_epoch": round(train, 3), "eval_s_per_epoch": round(evaluation, 3),
            "epoch_s": round(train + evaluation, 3), "compile_s": round(compile_s, 1),
            f"projected_{epochs_per_run}_epoch_minutes":
                round((compile_s + epochs_per_run * (train + evaluation)) / 60, 1),
            "repeats": len(runs)}


def run(size_name: str, repeats: int, configs: list[str], layout: bool) -> dict[str, Any]:
    from bench.run_all import machine_info

    results: dict[str, Any] = {"machine": machine_info(), "size": SIZES[size_name],
                               "configs": {}, "raw": []}
    for _ in range(repeats):
        for name in configs:
            raw = _result(_spawn(name, size_name, 1))
            results["raw"].append(raw)
            print(f"[cpu_epoch] {name}: train {raw['train_seconds']} eval "
                  f"{raw['eval_seconds']}", file=sys.stderr, flush=True)
    for name in configs:
        results["configs"][name] = summarize([r for r in results["raw"]
                                              if r["config"] == name])
    if "main" in configs:
        base = results["configs"]["main"]["epoch_s"]
        for summary in results["configs"].values():
            summary["speedup_vs_main"] = round(base / summary["epoch_s"], 3)
    if layout:
        results["layout"] = thread_layout(size_name)
    return results


def thread_layout(size_name: str, name: str = "eval256") -> dict[str, Any]:
    """Epochs per hour of the machine: two one-thread runs side by side vs one two-thread run."""
    pair = [_spawn(name, size_name, 1) for _ in range(2)]
    side = [_result(p) for p in pair]
    alone = _result(_spawn(name, size_name, 2))
    per_epoch_side = statistics.median(t + e for r in side for t, e in
                                       zip(r["train_seconds"], r["eval_seconds"], strict=True))
    per_epoch_two = statistics.median(t + e for t, e in
                                      zip(alone["train_seconds"], alone["eval_seconds"],
                                          strict=True))
    return {"config": name,
            "two_one_thread_runs": {"epoch_s_each": round(per_epoch_side, 3),
                                    "epochs_per_hour": round(2 * 3600 / per_epoch_side, 1)},
            "one_two_thread_run": {"epoch_s": round(per_epoch_two, 3),
                                   "epochs_per_hour": round(3600 / per_epoch_two, 1)},
            "throughput_ratio": round(2 * per_epoch_two / per_epoch_side, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_epoch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated subset of: " + ", ".join(CONFIGS))
    parser.add_argument("--layout", action="store_true",
                        help="also measure two one-thread runs against one two-thread run")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_config(args.one, SIZES[args.size], args.threads)))
        return
    size = "quick" if args.quick else args.size
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}")
    results = run(size, 1 if args.quick else args.repeats, configs, args.layout)
    text = json.dumps(results, indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

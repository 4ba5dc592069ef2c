"""Run every CPU benchmark and write one JSON: ``python -m bench.run_all [--quick] [--json PATH]``.

Parts (each figure is a ratio against a baseline measured in the same run):

* ``train``: our PGD-10 training step with ``harness train``'s defaults vs the reference loop
  (images/s, ratio); on a CPU with bf16 units (AVX512-BF16, AMX) the default is bf16 autocast;
* ``train_fp32``: the same with ``--precision fp32`` (the reference's precision);
* ``train_channels_last``: the defaults plus ``--channels-last`` (opt-in on a CPU);
* ``train_fold``: our step with the attack's restart-selection forward folded into the robust
  forward (the default) vs running it separately (the reference's order), alternating;
* ``eval``: PGD-20 x 5 evaluation, ours (fp32, the ``harness eval`` default) vs the reference's
  test loop (images/s, ratio); ``eval_bf16``: ours with ``--precision bf16``;
* ``hessian``: ``bench/hessian_bench.py`` (owned elsewhere), run as a subprocess at a small size,
  the JSON it prints kept (its own ratios: batched Lanczos against per-example power iteration);
* ``cold_start``: ``curvtools curvature --act mish`` vs ``python -c "import torch"``.

A part that fails records ``{"error": ...}`` and the others still run; the JSON is rewritten
after every part, so an interrupted run keeps what it measured. Load averages before and after
each part are recorded: the machine may be shared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent

# Sizes: "full" is what docs/benchmarks.md reports; "quick" is a smoke run (seconds).
SIZES = {
    "full": {"width": 0.25, "batch": 128, "train_steps": 4, "train_repeats": 3, "warmup": 1,
             "fold_steps": 2, "fold_repeats": 4,
             "eval_images": 64, "eval_repeats": 2, "cold_repeats": 5},
    "quick": {"width": 0.0625, "batch": 8, "train_steps": 1, "train_repeats": 2, "warmup": 1,
              "fold_steps": 1, "fold_repeats": 2,
              "eval_images": 4, "eval_repeats": 2, "cold_repeats": 2},
}


def machine_info() -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    import numpy as np

    info = {"date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        model = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                 if line.startswith("model name")]
        info["cpu"] = model[0] if model else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def run_part(results: dict, name: str, fn: Callable[[], dict], json_path: Path | None) -> None:
    """Run one part; store its result or its error; rewrite the JSON file."""
    print(f"[bench] {name} ...", flush=True)
    load_before, started = _load(), time.perf_counter()
    try:
        out = fn()
    except Exception as err:  # a failed part must not lose the others
        out = {"error": f"{type(err).__name__}: {err}",
               "traceback": traceback.format_exc(limit=4)}
    out["wall_seconds"] = round(time.perf_counter() - started, 2)
    out["load_before"], out["load_after"] = load_before, _load()
    results["parts"][name] = out
    if json_path is not None:
        write_json(json_path, results)
    print(f"[bench] {name}: {summary_line(name, out)}", flush=True)


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(data, f, indent=2)
    os.replace(f.name, path)


def hessian_part(quick: bool, threads: int | None = None) -> dict[str, Any]:
    """Run ``bench/hessian_bench.py`` (owned elsewhere) and keep the JSON it prints."""
    if not (BENCH_DIR / "hessian_bench.py").is_file():
        return {"skipped": "bench/hessian_bench.py does not exist (yet)"}
    size = (["--n", "8", "--width", "0.125", "--train-steps", "20"] if quick
            else ["--n", "64", "--width", "0.25", "--train-steps", "150"])
    cmd = [sys.executable, str(BENCH_DIR / "hessian_bench.py"), *size]
    cmd += ["--threads", str(threads)] if threads else []
    proc = subprocess.run(cmd, cwd=BENCH_DIR.parent, capture_output=True, text=True,
                          timeout=3600)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise RuntimeError(f"hessian_bench exited {proc.returncode}: {last}")
    text = proc.stdout
    return {"command": " ".join(["python", *cmd[1:]]),
            "result": json.loads(text[text.index("{"):])}


def summary_line(name: str, out: dict) -> str:
    """One line per part for the final table."""
    if "error" in out:
        return f"FAILED: {out['error']}"
    if "skipped" in out:
        return f"skipped: {out['skipped']}"
    if name == "train_fold":
        f, u = out["folded"]["images_per_s"], out["unfolded"]["images_per_s"]
        return (f"folded {f['median']:.2f} img/s, unfolded {u['median']:.2f} img/s, "
                f"ratio {out['ratio']:.3f}x")
    if name.startswith(("train", "eval")):
        o, r = out["ours"]["images_per_s"], out["reference"]["images_per_s"]
        return (f"ours {o['median']:.2f} img/s (spread {100 * o['spread']:.0f}%), reference "
                f"{r['median']:.2f} img/s (spread {100 * r['spread']:.0f}%), "
                f"ratio {out['ratio']:.2f}x")
    if name == "cold_start":
        c, b = out["command"]["seconds"], out["baseline"]["seconds"]
        return (f"curvtools curvature {c['median']:.2f} s, import torch {b['median']:.2f} s, "
                f"ratio {out['ratio']:.2f}")
    return "done"


def run_all(quick: bool = False, json_path: Path | None = None, synthetic: bool = False,
            threads: int | None = None) -> dict[str, Any]:
    """Run all parts at the ``quick`` or ``full`` size; returns (and writes) the results."""
    from bench.cold_start import cold_start
    from bench.eval_throughput import compare_eval_throughput
    from bench.train_throughput import (
        bench_images,
        compare_selection_fold,
        compare_train_throughput,
    )
    from curvtools.cpu_allocator import keep_freed_memory

    size = SIZES["quick" if quick else "full"]
    # ours runs with harness's defaults, which include its malloc settings (the CLIs apply
    # them); the reference runs in a process of its own without them (bench.reference_process)
    allocator = keep_freed_memory()
    results: dict[str, Any] = {"size": "quick" if quick else "full", "settings": size,
                               "machine": machine_info(), "parts": {},
                               "ours_malloc_settings": allocator,
                               "reference_process": "separate, malloc untuned"}
    n_train = (size["warmup"] + size["train_steps"] * size["train_repeats"]) * size["batch"]
    image_args = {"n": max(n_train, size["eval_images"]), "synthetic": synthetic}
    images, labels, source = bench_images(**image_args)
    results["data"] = source
    train = {"width": size["width"], "batch_size": size["batch"], "steps": size["train_steps"],
             "repeats": size["train_repeats"], "warmup_steps": size["warmup"],
             "reference_images": image_args}
    run_part(results, "train", lambda: compare_train_throughput(images, labels, **train),
             json_path)
    run_part(results, "train_fp32", lambda: compare_train_throughput(
        images, labels, precision="fp32", **train), json_path)
    # the opt-in CPU fast path (off by default: a multi-threaded oneDNN crash, harness.train)
    run_part(results, "train_channels_last", lambda: compare_train_throughput(
        images, labels, channels_last=True, **train), json_path)
    run_part(results, "train_fold", lambda: compare_selection_fold(
        images, labels, width=size["width"], batch_size=size["batch"],
        steps=size["fold_steps"], repeats=size["fold_repeats"],
        warmup_steps=size["warmup"]), json_path)
    n_eval = size["eval_images"]
    for name, precision in (("eval", "fp32"), ("eval_bf16", "bf16")):
        run_part(results, name, lambda p=precision: compare_eval_throughput(
            images[:n_eval], labels[:n_eval], width=size["width"],
            repeats=size["eval_repeats"], precision=p,
            reference_images={**image_args, "n": n_eval}), json_path)
    run_part(results, "cold_start", lambda: cold_start(size["cold_repeats"]), json_path)
    run_part(results, "hessian", lambda: hessian_part(quick, threads), json_path)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (a smoke run of seconds), not for reporting")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="write the results here (rewritten after every part)")
    parser.add_argument("--synthetic", action="store_true",
                        help="random uint8 images instead of the CIFAR-10 JPEG copy")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = run_all(args.quick, args.json, args.synthetic, args.threads)
    print(f"\nBenchmarks ({results['size']}, {results['machine']['cpu']}, "
          f"{results['machine']['torch_threads']} threads, torch {results['machine']['torch']}, "
          f"data: {results['data']})")
    for name, out in results["parts"].items():
        print(f"  {name:<11} {summary_line(name, out)}  [load {out['load_before'][0]}]")


if __name__ == "__main__":
    main()

"""lambda_max and lambda_min of the input Hessian for every test image, in float64, with bounds.

The whole CIFAR-10 test set (10,000 images) of a full-width PreActResNet-18: ``--ckpt PATH`` (a
harness checkpoint; its own test set), or, without one, a PreActResNet-18 of ``--width`` and
``--act`` built here and trained for ``--train-steps`` plain SGD steps on a random subset of
``--train-images`` training images of ``--data`` (0 steps: freshly initialized; the output says
which). Per image: both extreme eigenvalues of the cross-entropy's input Hessian by batched
Lanczos (:func:`curvtools.spectra.input_hessian_eigenvalues`: float64 products, stopped on the
error bound, tol 1e-3), each with its bound (the distance to the nearest eigenvalue), the
probabilistic bound on the extreme eigenvalue (``miss_probability`` 1e-2), and the convergence
flags. Images go in batches of ``--batch``; the Hessian timing starts after a warm-up batch of 2
images and synchronizes CUDA around each batch. ``--limit-s`` stops starting batches when the
next one would not fit (the JSON then says ``"complete": false``).

Writes one JSON (``--json``: settings, device, date, seconds, images/s, HVPs, a summary and
one record per image) and prints the summary. Goal on one H100/H200: all 10,000 in under 2
minutes (``bash bench/gpu_run.sh``, section ``fulltest``).

    python bench/full_test_hessian.py --data imagefolder:../shared/data/cifar10-jpg \
        --json full_test_hessian.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curvtools.activations import resolve  # noqa: E402
from curvtools.hvp import DTYPES  # noqa: E402
from curvtools.spectra import input_hessian_eigenvalues  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_model(args, device):
    """A PreActResNet-18 built here, trained ``--train-steps`` SGD steps; (model, x, y, label)
    with the first ``--n`` test images of ``--data`` (all of them by default)."""
    from harness.datasets import open_source
    from harness.models import build_model

    source = open_source(args.data, args.data_dir or "data", download=False)
    config = {"arch": "preactresnet18", "act": resolve(args.act).config(),
              "num_classes": source.num_classes, "in_channels": source.in_channels,
              "width": args.width, "mean": list(source.mean), "std": list(source.std)}
    torch.manual_seed(args.seed)
    model = build_model(config).to(device)
    if args.train_steps:
        labels = source.labels("train")
        rng = np.random.default_rng(args.seed)
        take = np.sort(rng.permutation(len(labels))[: min(args.train_images, len(labels))])
        train_x = source.images("train", take).float().div(255).to(device)
        train_y = torch.as_tensor(labels[take], device=device)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        gen = torch.Generator(device="cpu").manual_seed(args.seed)
        model.train()
        for _ in range(args.train_steps):
            idx = torch.randint(0, len(train_y), (128,), generator=gen).to(device)
            loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    labels = source.labels("test")
    n = len(labels) if args.n is None else min(args.n, len(labels))
    indices = np.arange(n)
    x = source.images("test", indices).float().div(255)
    y = torch.as_tensor(labels[indices], dtype=torch.long)
    used = min(args.train_images, len(source.labels("train")))
    trained = (f"{args.train_steps} SGD steps on {used} training images" if args.train_steps
               else "FRESHLY INITIALIZED")
    label = f"PreActResNet-18 width {args.width} {args.act}, {args.data}, {trained}"
    return model, x, y, indices, label


def checkpoint_model(args, device):
    from curvtools.testset import load_test_images
    from harness.checkpoint import load_model

    model, ckpt = load_model(args.ckpt, device=device)
    x, y, indices = load_test_images(ckpt, args.n or 10**9, args.seed, args.data_dir)
    return model, x, y, indices, f"checkpoint {args.ckpt} (epoch {ckpt.get('epoch')})"


def summarize(res: dict, tol: float) -> dict:
    """Shares and quantiles of the per-image arrays (numpy) in ``res``."""
    lam_max, lam_min = res["lambda_max"], res["lambda_min"]
    rel_max = res["lambda_max_bound"] / np.maximum(np.abs(lam_max), 1e-300)

    def q(a):
        return {p: float(np.quantile(a, v)) for p, v in (("p05", .05), ("median", .5),
                                                         ("p95", .95))} if len(a) else {}

    return {"n": int(len(lam_max)), "share_converged": float(np.mean(res["converged"])),
            "share_limited_by_rounding": float(np.mean(res["limited"])),
            "not_converged": int(np.sum(~res["converged"])),
            "lambda_max": q(lam_max), "lambda_min": q(lam_min),
            "lambda_max_rel_bound_max": float(np.max(rel_max)) if len(rel_max) else None,
            "share_negative_dominates": float(np.mean(np.abs(lam_min) > lam_max)),
            "iterations": q(res["iterations"].astype(float)), "tol": tol}


FIELDS = ("lambda_max", "lambda_max_bound", "lambda_max_upper", "lambda_min",
          "lambda_min_bound", "lambda_min_lower", "iterations", "converged", "limited",
          "error_bound")


def run(model, x, y, args, device) -> tuple[dict, dict]:
    """The spectra of all images in batches; (per-image numpy arrays, timing). A batch that
    runs out of GPU memory is retried at half the size (the size then stays halved)."""
    options = {"which": ("max", "min"), "tol": args.tol, "max_iter": args.max_iter,
               "dtype": DTYPES[args.dtype], "seed": args.seed}
    input_hessian_eigenvalues(model, x[:2].to(device), y[:2].to(device), **options)  # warm-up
    parts = {k: [] for k in FIELDS}
    hvps, done, seconds, complete, per_image_s, batch = 0, 0, 0.0, True, 0.0, args.batch
    while done < len(y):
        if args.limit_s and seconds + 1.2 * per_image_s * min(batch, len(y) - done) > args.limit_s:
            complete = False
            break
        xb, yb = x[done : done + batch].to(device), y[done : done + batch].to(device)
        _sync(device)
        start = time.perf_counter()
        try:
            res = input_hessian_eigenvalues(model, xb, yb, **options)
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            del xb, yb
            torch.cuda.empty_cache()
            batch //= 2
            print(f"[full_test_hessian] out of memory: batch {batch} now", file=sys.stderr)
            continue
        _sync(device)
        took = time.perf_counter() - start
        seconds += took
        per_image_s = max(per_image_s, took / len(yb))
        for key in parts:
            parts[key].append(getattr(res, key).numpy())
        hvps += res.hvps_computed
        done += len(yb)
        print(f"[full_test_hessian] {done}/{len(y)} images, {seconds:.1f} s", file=sys.stderr,
              flush=True)
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    timing = {"seconds": round(seconds, 3), "images": done, "complete": complete,
              "batch_used": batch,
              "images_per_second": round(done / seconds, 2) if seconds else None,
              "hvps_computed": int(hvps), "hvps_per_image": round(hvps / max(done, 1), 2)}
    return out, timing


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default=None, help="harness checkpoint (default: build a net here)")
    p.add_argument("--data", default="cifar10", help="dataset of the net built here: cifar10, "
                   "imagefolder:PATH (the CIFAR-10 JPEG copy) or digits")
    p.add_argument("--data-dir", default=None, help="dataset folder (CIFAR download cache)")
    p.add_argument("--n", type=int, default=None, help="test images (default: all)")
    p.add_argument("--width", type=float, default=1.0, help="PreActResNet-18 width multiplier")
    p.add_argument("--act", default="silu", help="activation of the net built here")
    p.add_argument("--train-steps", type=int, default=200, help="SGD steps (0: fresh net)")
    p.add_argument("--train-images", type=int, default=10000, help="training images used")
    p.add_argument("--batch", type=int, default=None,
                   help="images per Lanczos batch (default: 500 on CUDA, halved on running "
                   "out of memory; 64 on CPU)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float64")
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--limit-s", type=float, default=0.0, help="stop starting batches after this "
                   "many Hessian seconds (0: no limit)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.batch = args.batch or (500 if device.type == "cuda" else 64)
    started = time.perf_counter()
    model, x, y, indices, label = (checkpoint_model if args.ckpt else fresh_model)(args, device)
    prepared = time.perf_counter() - started
    res, timing = run(model, x, y, args, device)
    body = {
        "net": label, "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "settings": {"dtype": args.dtype, "tol": args.tol, "max_iter": args.max_iter,
                     "batch": args.batch, "seed": args.seed, "stop": "residual",
                     "which": ["max", "min"], "miss_probability": 1e-2},
        "input_shape": list(x.shape[1:]), "prepare_seconds": round(prepared, 1), **timing,
        "summary": summarize(res, args.tol),
        "images": [{"index": int(indices[i]), "label": int(y[i]),
                    **{k: (bool(res[k][i]) if res[k].dtype == bool else
                           int(res[k][i]) if k == "iterations" else float(res[k][i]))
                       for k in FIELDS}} for i in range(timing["images"])],
    }
    s = body["summary"]
    print(f"{label}\n{timing['images']} images on {body['device_name']} ({args.dtype}, tol "
          f"{args.tol}): {timing['seconds']:.1f} s, {timing['images_per_second']} images/s, "
          f"{timing['hvps_per_image']} HVPs per image"
          + ("" if timing["complete"] else f" (stopped at --limit-s {args.limit_s:g})"))
    print(f"  converged {s['share_converged']:.2%} ({s['not_converged']} not, "
          f"{s['share_limited_by_rounding']:.2%} limited by rounding); lambda_max median "
          f"{s['lambda_max'].get('median', float('nan')):.4g}, lambda_min median "
          f"{s['lambda_min'].get('median', float('nan')):.4g}; |lambda_min| > lambda_max for "
          f"{s['share_negative_dominates']:.2%}")
    if args.json:
        Path(args.json).write_text(json.dumps(body) + "\n")
    return body


if __name__ == "__main__":
    main()

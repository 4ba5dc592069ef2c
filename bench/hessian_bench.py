"""Input-Hessian lambda_max per example: batched Lanczos vs per-example power iteration vs eigsh,
every row checked against a float64 reference, bounds included.

Same net, same test images, target ``--tol`` (1e-3) relative accuracy per example. Methods:

- ``lanczos``: :func:`curvtools.spectra.input_hessian_eigenvalues` with the library's defaults
  (stop once the error bound is <= tol, a check every step, the float64 loss head, the Hessian
  restricted to the active examples once they are half of those it holds), in ``--dtype``;
  ``--stop``, ``--check-every``, ``--compact``, ``--hvp-mode`` change it;
- ``lanczos_old``: the library's behaviour before 2026-12-06 (stop on the estimate
  ``min(r, r^2/gap) <= tol/2``, a check every 2 steps, the loss in the working precision,
  restriction at every check) -- what ``harness train --hessian-every`` still runs;
- ``--lanczos-configs STOP/CHECK/compact|always|nocompact[/HVP_MODE[/DTYPE[/LOSS]]],...`` adds rows
  (e.g. ``residual/1/compact/rev-rev/float64``: the bound rule in float64);
- ``power``: per-example power iteration with double backward, the PyHessian method
  (``autograd.grad(create_graph=True)`` once, then ``grad(g . v)`` per step; stop when the
  Rayleigh quotient changes by < tol relative), one example at a time;
- ``power_oracle``: the same, but stopped once within tol of the reference (time to 1e-3 relative
  accuracy; examples where it heads for the wrong eigenvalue run to ``--power-max-iter``);
- ``eigsh``: ``scipy.sparse.linalg.eigsh(which="LA", k=1, tol=1e-3)`` per example, with the same
  double-backward HVP as a LinearOperator.

Reference: float64 batched Lanczos stopped at an error bound <= 1e-9 (max_iter = input dimension,
i.e. exact when run to the end). Columns of a Lanczos row besides time, products and errors:
``share_converged`` (error bound <= tol), ``share_error_exceeds_bound`` (|value - reference| >
bound + the reference's bound: a bound that failed; must be 0), ``converged_but_outside_tol``,
``error_over_estimate_max`` (the former estimate against the true error: > 1 where it failed),
``share_above_probabilistic_upper`` (the reference above ``lambda_max_upper``). "wrong
eigenvalue": the estimate is closer to lambda_min than to lambda_max. ``--repeat N`` times the
Lanczos rows N times, interleaved, and reports the median.

The net: ``--ckpt PATH`` (a harness checkpoint; images from its test set) or, by default, a
PreActResNet-18 of ``--width`` with ``--act`` trained for ``--train-steps`` SGD steps on ``--data``
(default the digits dataset, scikit-learn, offline, 16x16x1 images; or ``imagefolder:PATH``, e.g.
the CIFAR-10 JPEG copy, 3x32x32, a random subset of ``--train-images`` training
images), or random-init with ``--train-steps 0`` (then the output says so). Prints one JSON
object; ``--json PATH`` also writes it to a file.

    python bench/hessian_bench.py --n 64 --batch 64 --width 0.25 --train-steps 300 --threads 1 \
        --dtype float32 --methods lanczos_old,lanczos,power,eigsh --repeat 3
"""

from __future__ import annotations

import argparse
import copy
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


def _random_subset(total: int, n: int, seed: int) -> np.ndarray:
    """``min(n, total)`` sorted indices drawn without replacement (seeded)."""
    return np.sort(np.random.default_rng(seed).permutation(total)[: min(n, total)])


def digits_model(args, device):
    """PreActResNet-18 (width ``args.width``) trained briefly on ``args.data``; returns
    (model, x, y, label)."""
    from harness.datasets import open_source
    from harness.models import build_model

    source = open_source(args.data, "data", download=False)
    config = {"arch": "preactresnet18", "act": resolve(args.act).config(),
              "num_classes": source.num_classes, "in_channels": source.in_channels,
              "width": args.width, "mean": list(source.mean), "std": list(source.std)}
    torch.manual_seed(args.seed)
    model = build_model(config).to(device)
    labels = source.labels("train")
    # a random subset: an ImageFolder lists its images class by class (the first N: one class)
    take = _random_subset(len(labels), args.train_images, args.seed)
    train_y = torch.as_tensor(labels[take], device=device)
    train_x = source.images("train", take).float().div(255).to(device)
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
    test_labels = source.labels("test")
    test_take = _random_subset(len(test_labels), max(args.n, 1000), args.seed)
    test_y = torch.as_tensor(test_labels[test_take], device=device)
    test_x = source.images("test", test_take).float().div(255).to(device)
    with torch.no_grad():
        acc = float((model(test_x).argmax(1) == test_y).float().mean())
    keep = torch.randperm(len(test_y), generator=gen)[: args.n].sort().values.to(device)
    data = "digits" if args.data == "digits" else f"{args.data} ({len(take)} train images)"
    label = (f"PreActResNet-18 width {args.width} {args.act}, {data}, "
             + (f"{args.train_steps} SGD steps, test acc {acc:.3f}" if args.train_steps
                else "RANDOM INIT (timing only)"))
    return model, test_x[keep], test_y[keep], label


def checkpoint_model(args, device):
    from curvtools.testset import load_test_images
    from harness.checkpoint import load_model

    model, ckpt = load_model(args.ckpt, device=device)
    x, y, _ = load_test_images(ckpt, args.n, args.seed, args.data_dir)
    return model, x.to(device), y.to(device), f"checkpoint {args.ckpt}"


def double_backward_hvp(model, x1, y1):
    """The PyHessian-style HVP closure for one example: grad with create_graph, then grad(g.v)."""
    x1 = x1.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x1), y1, reduction="sum")
    (g,) = torch.autograd.grad(loss, x1, create_graph=True)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        (hv,) = torch.autograd.grad((g * v.reshape(g.shape)).sum(), x1, retain_graph=True)
        return hv.reshape(-1)

    return hvp


def lanczos_config(text: str) -> dict:
    """``STOP/CHECK_EVERY/compact|always|nocompact[/HVP_MODE[/DTYPE[/LOSS]]]`` -> keyword
    arguments of the library (compact: restrict at half, the default; always: at every check,
    as before 2026-12-06; DTYPE: float32 or float64, default ``--dtype``; LOSS: the loss head's
    precision, float64 (default) or same (the working dtype, as before 2026-12-06))."""
    parts = text.split("/")
    modes = {"compact": 0.5, "always": True, "nocompact": False}
    if len(parts) not in (3, 4, 5, 6) or parts[2] not in modes:
        raise SystemExit(f"--lanczos-configs entry {text!r}: use STOP/CHECK_EVERY/compact|always|"
                         "nocompact[/HVP_MODE[/DTYPE[/LOSS]]], e.g. residual/5/nocompact")
    out = {"stop": parts[0], "check_every": int(parts[1]), "compact": modes[parts[2]]}
    for key, value in zip(("hvp_mode", "dtype", "loss_dtype"), parts[3:], strict=False):
        out[key] = value
    return out


# The library's behaviour until 2026-12-06 (what harness train --hessian-every still uses): stop
# on the estimate, a check every 2 steps, the loss in the working precision.
OLD_RULE = {"stop": "eigenvalue", "check_every": 2, "loss_dtype": "same", "compact": True}


def run_lanczos(model, x, y, args, device, config=None):
    """Batched Lanczos in batches of ``--batch``; ``config`` overrides stop/check/compact/mode/
    dtype."""
    options = {"stop": args.stop, "check_every": args.check_every, "compact": args.compact,
               "hvp_mode": args.hvp_mode, "dtype": args.dtype, "loss_dtype": "float64",
               **(config or {})}
    loss = options["dtype"] if options["loss_dtype"] == "same" else options["loss_dtype"]
    _sync(device)
    start = time.perf_counter()
    keys = ("lambda_max", "lambda_max_bound", "lambda_max_upper", "iterations", "converged",
            "limited", "error_estimate")
    parts = {k: [] for k in keys}
    work = calls = 0
    for lo in range(0, len(y), args.batch):
        res = input_hessian_eigenvalues(model, x[lo : lo + args.batch], y[lo : lo + args.batch],
                                        tol=args.tol, max_iter=args.max_iter, seed=args.seed,
                                        which=("max",) if args.which == "max" else ("max", "min"),
                                        **{**options, "dtype": DTYPES[options["dtype"]],
                                           "loss_dtype": DTYPES[loss]})
        for k in keys:
            parts[k].append(getattr(res, k).numpy())
        work += res.hvps_computed
        calls += res.hvp_batches
    _sync(device)
    out = {k: np.concatenate(v) for k, v in parts.items()}
    return {"seconds": time.perf_counter() - start, "hvps_per_example": out.pop("iterations"),
            "hvps_computed": work, "batched_calls": calls, "options": options, **out}


def run_power(model, x, y, args, device, oracle=None):
    """Per-example power iteration; stops by PyHessian's rule, or, with ``oracle`` (reference
    lambda_max per example), once within ``tol`` of it (time-to-accuracy; never for examples
    where it converges to the wrong eigenvalue: those run to the cap)."""
    _sync(device)
    start = time.perf_counter()
    lam, iters = [], []
    gen = torch.Generator(device=device).manual_seed(args.seed)
    with torch.enable_grad():
        for i in range(len(y)):
            hvp = double_backward_hvp(model, x[i : i + 1], y[i : i + 1])
            v = torch.randn(x[i].numel(), device=device, generator=gen, dtype=x.dtype)
            v = v / v.norm()
            est, used = float("nan"), 0
            while used < args.power_max_iter:
                hv = hvp(v)
                used += 1
                new = float(hv @ v)  # PyHessian syncs here too (it compares on the host)
                v = hv / hv.norm()
                settled = (abs(new - est) <= args.tol * abs(new) if oracle is None
                           else abs(new - oracle[i]) <= args.tol * abs(oracle[i]))
                est = new
                if settled:
                    break
            lam.append(est)
            iters.append(used)
    _sync(device)
    return {"seconds": time.perf_counter() - start, "lambda_max": np.array(lam),
            "hvps_per_example": np.array(iters), "hvps_computed": int(np.sum(iters))}


def run_eigsh(model, x, y, args, device):
    from scipy.sparse.linalg import LinearOperator, eigsh

    _sync(device)
    start = time.perf_counter()
    lam, calls = [], []
    n = x[0].numel()
    with torch.enable_grad():
        for i in range(len(y)):
            hvp = double_backward_hvp(model, x[i : i + 1], y[i : i + 1])
            count = [0]

            def matvec(v, hvp=hvp, count=count):
                count[0] += 1
                t = torch.as_tensor(np.asarray(v).reshape(-1), dtype=x.dtype, device=device)
                return hvp(t).double().cpu().numpy()

            op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
            v0 = np.random.default_rng(args.seed + i).standard_normal(n)
            lam.append(float(eigsh(op, k=1, which="LA", tol=args.tol, v0=v0,
                                   maxiter=args.max_iter * 10)[0][0]))
            calls.append(count[0])
    _sync(device)
    return {"seconds": time.perf_counter() - start, "lambda_max": np.array(lam),
            "hvps_per_example": np.array(calls), "hvps_computed": int(np.sum(calls))}


def summarize(name, out, ref_max, ref_min, ref_bound, tol):
    """One row of the table. With bounds (Lanczos rows): is the reported bound a bound? The true
    error of a value is at most ``|value - reference| + reference bound`` away from what the
    row compares, so an error above ``bound + reference bound`` is a bound that failed."""
    abs_err = np.abs(out["lambda_max"] - ref_max)
    err = abs_err / np.maximum(np.abs(ref_max), 1e-30)
    wrong = np.abs(out["lambda_max"] - ref_min) < np.abs(out["lambda_max"] - ref_max)
    row = {"method": name, "seconds": round(out["seconds"], 3),
           "hvps_per_example_mean": float(np.mean(out["hvps_per_example"])),
           "hvps_computed": int(out["hvps_computed"]),
           "rel_err_median": float(np.median(err)), "rel_err_max": float(np.max(err)),
           "share_within_tol": float(np.mean(err <= tol)),
           "wrong_eigenvalue_count": int(np.sum(wrong))}
    if "converged" in out:
        bound = out["lambda_max_bound"]
        row["share_converged"] = float(np.mean(out["converged"]))
        row["share_limited"] = float(np.mean(out["limited"]))
        row["batched_calls"] = int(out["batched_calls"])
        row["rel_bound_max"] = float(np.max(bound / np.maximum(np.abs(out["lambda_max"]),
                                                                1e-300)))
        row["share_error_exceeds_bound"] = float(np.mean(abs_err > bound + ref_bound))
        row["error_over_bound_max"] = float(np.max(abs_err / np.maximum(bound, 1e-300)))
        # converged and yet off by more than tol: what a bound must never let through
        row["converged_but_outside_tol"] = int(np.sum(out["converged"] & (err > tol)))
        # the former figure of merit: the estimate against the true error (< 1: it held)
        row["error_over_estimate_max"] = float(np.max(err / np.maximum(out["error_estimate"],
                                                                      1e-300)))
        upper = out["lambda_max_upper"]
        row["share_above_probabilistic_upper"] = float(np.mean(ref_max > upper + ref_bound))
        row["probabilistic_upper_rel_median"] = float(np.median(
            (upper - out["lambda_max"]) / np.maximum(np.abs(out["lambda_max"]), 1e-300)))
        row["options"] = out["options"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=str, default=None, help="harness checkpoint (default: train "
                   "a digits net here)")
    p.add_argument("--data-dir", type=str, default=None, help="dataset folder for --ckpt")
    p.add_argument("--n", type=int, default=256, help="test images")
    p.add_argument("--batch", type=int, default=256, help="Lanczos batch size")
    p.add_argument("--width", type=float, default=0.25, help="PreActResNet-18 width multiplier")
    p.add_argument("--data", type=str, default="digits", help="digits or imagefolder:PATH "
                   "(e.g. the CIFAR-10 JPEG copy) for the default trained net")
    p.add_argument("--train-images", type=int, default=2000, help="training images used "
                   "(first N) for the default trained net")
    p.add_argument("--act", type=str, default="silu", help="activation (registry name)")
    p.add_argument("--train-steps", type=int, default=300, help="SGD steps on digits (0: random)")
    p.add_argument("--tol", type=float, default=1e-3, help="target relative accuracy")
    p.add_argument("--max-iter", type=int, default=100, help="Lanczos iteration cap")
    p.add_argument("--stop", choices=["residual", "eigenvalue"], default="residual",
                   help="stop rule of the 'lanczos' row: the error bound (the library's "
                   "default) or the former estimate")
    p.add_argument("--check-every", type=int, default=1, help="Lanczos iterations per check")
    p.add_argument("--compact", type=float, default=0.5, help="restrict the Hessian to the "
                   "active examples once they are at most this fraction of those it holds (the "
                   "library's default 0.5; 1: at every check, as before 2026-12-06)")
    p.add_argument("--hvp-mode", choices=["fwd-rev", "rev-rev"], default="rev-rev",
                   help="Lanczos HVPs: jvp of grad, or double backward on a kept graph")
    p.add_argument("--lanczos-configs", type=str, default="",
                   help="extra Lanczos rows, comma list of STOP/CHECK_EVERY/compact|nocompact"
                   "[/HVP_MODE[/DTYPE]], e.g. residual/1/compact/rev-rev/float32")
    p.add_argument("--json", type=str, default=None, help="also write the JSON to this file")
    p.add_argument("--power-max-iter", type=int, default=300, help="power iteration cap")
    p.add_argument("--ref-max-iter", type=int, default=256, help="reference Lanczos cap")
    p.add_argument("--methods", type=str, default="lanczos,lanczos_old,power,power_oracle,eigsh",
                   help="comma list of lanczos (the library's defaults), lanczos_old (the "
                   "defaults until 2026-12-06: stop on the estimate, check every 2), power, "
                   "power_oracle, eigsh")
    p.add_argument("--which", choices=["max", "both"], default="max",
                   help="Lanczos convergence on lambda_max only (like power iteration) or on "
                   "lambda_max and lambda_min")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="precision of the HVPs of every method (the reference is float64)")
    p.add_argument("--device", type=str, default=None, help="cpu or cuda (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--repeat", type=int, default=1, help="timing rounds of the Lanczos rows "
                   "(interleaved; the median is reported)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    model, x, y, label = (checkpoint_model if args.ckpt else digits_model)(args, device)
    n_dim = x[0].numel()
    # Warm-up (one-time imports and kernel selection) outside the timings.
    input_hessian_eigenvalues(model, x[:2], y[:2], tol=1e-1, max_iter=5,
                              dtype=DTYPES[args.dtype])
    double_backward_hvp(model, x[:1], y[:1])(torch.ones(n_dim, device=device))

    ref = input_hessian_eigenvalues(model, x, y, tol=1e-9, max_iter=min(n_dim, args.ref_max_iter),
                                    dtype=torch.float64, seed=args.seed + 1, stop="residual")
    ref_max, ref_min = ref.lambda_max.numpy(), ref.lambda_min.numpy()
    ref_bound = ref.lambda_max_bound.numpy()

    def run_power_oracle(*a):
        return run_power(*a, oracle=ref_max)

    runners = {"lanczos": run_lanczos, "power": run_power, "power_oracle": run_power_oracle,
               "eigsh": run_eigsh,
               "lanczos_old": lambda *a: run_lanczos(*a, config=OLD_RULE)}
    methods = [m for m in args.methods.split(",") if m]
    for text in filter(None, args.lanczos_configs.split(",")):
        config = lanczos_config(text)
        runners[f"lanczos {text}"] = (lambda *a, config=config: run_lanczos(*a, config=config))
        methods.append(f"lanczos {text}")
    # The per-example baselines run in the same precision as the Lanczos HVPs.
    model_b, x_b = copy.deepcopy(model).to(DTYPES[args.dtype]), x.to(DTYPES[args.dtype])
    # Lanczos rows: --repeat rounds, the rows interleaved within a round (a shared machine's
    # load then falls on all of them alike); the median wall time is reported.
    outs: dict[str, dict] = {}
    times: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        for m in (m for m in methods if m.startswith("lanczos")):
            outs[m] = runners[m](model, x, y, args, device)
            times.setdefault(m, []).append(outs[m]["seconds"])
    rows = []
    for m in methods:
        if m in outs:
            out = {**outs[m], "seconds": float(np.median(times[m]))}
        else:  # the per-example baselines, once
            out = runners[m](model_b, x_b, y, args, device)
        rows.append(summarize(m, out, ref_max, ref_min, ref_bound, args.tol))
        if m in times:
            rows[-1]["seconds_all"] = [round(t, 3) for t in times[m]]
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    by = {r["method"]: r for r in rows}
    speedup = ({k: round(by[k]["seconds"] / by["lanczos"]["seconds"], 2)
                for k in by if k != "lanczos"} if "lanczos" in by else {})
    text = json.dumps({
        "net": label, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "n": len(y), "input_dim": n_dim,
        "tol": args.tol, "batch": args.batch, "dtype": args.dtype, "which": args.which,
        "torch": torch.__version__,
        "reference": {"method": "float64 batched Lanczos, error bound <= 1e-9",
                      "share_converged": float(ref.converged.float().mean()),
                      "rel_bound_max": float(np.max(ref_bound / np.abs(ref_max))),
                      "lambda_max_median": float(np.median(ref_max)),
                      "lambda_min_median": float(np.median(ref_min)),
                      "share_negative_dominates": float(np.mean(np.abs(ref_min) > ref_max))},
        "methods": rows, "wall_time_ratio_vs_lanczos": speedup}, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()

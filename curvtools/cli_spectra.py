"""``curvtools hessian`` and ``curvtools lemma``: input-Hessian spectra and Lemma 1 on trained nets.

``hessian`` rebuilds a model from a checkpoint (``harness.checkpoint.load_model``), takes test
images of the checkpoint's dataset and computes, per example, the largest and smallest algebraic
eigenvalues of the input Hessian (batched Lanczos, :mod:`curvtools.spectra`). Given a run
directory it does this for every saved checkpoint: lambda_max per epoch, the data of Figure 3.

``lemma`` evaluates the two bounds of Lemma 1 (Eq. 1) per test example and, beside them, the
smallest l2 perturbation that PGD-l2 finds (bisection over epsilon). Mapping of the multi-class
net onto the lemma's binary f: with margin ``m(x) = z_y - max_{j != y} z_j`` (runner-up fixed at
x), take ``f = -m``; then ``c = -f(x) = m(x) >= 0`` for a correctly classified example, ``f >= 0``
means misclassified, ``g = grad f = -grad m`` and ``nu = lambda_max(Hess f) = -lambda_min(Hess m)``
with ``u`` its unit eigenvector. The bounds are for the quadratic (second-order Taylor) model of f
at x; the attack runs on the real net.

torch (and harness) are imported inside the commands so that ``curvtools --help`` starts fast.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import typer

from curvtools.clirun import PLOT_SUFFIXES, check_output_path
from curvtools.errors import BadInput, check_seed

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
CHECKPOINT_NAME = re.compile(r"^epoch_(\d+)\.pt$")
BOUNDS_NOTE = ("Lemma 1 bounds are for the second-order (quadratic) model of f = -margin at x; "
               "the attack distance is measured on the real network (PGD-l2, bisection over eps).")


# --- validation and inputs -----------------------------------------------------------------------


def _check_positive_int(name: str, value: int) -> None:
    if value < 1:
        raise BadInput(f"{name}={value} is not allowed: need an integer >= 1")


def _check_tol(tol: float) -> None:
    """A relative accuracy: 0 < tol < 1 (tol >= 1 or inf would report convergence falsely)."""
    if not 0 < tol < 1:
        raise BadInput(f"--tol {tol} is not allowed: need a number in (0, 1)")


def _torch_dtype(name: str):
    from curvtools.hvp import DTYPES

    if name not in DTYPES:
        raise BadInput(f"--dtype {name!r} is not allowed: use float32 or float64")
    return DTYPES[name]


def _device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadInput(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"--device {name!r}: CUDA is not available on this machine")
    return device


def checkpoints_in_run(run_dir: Path) -> list[Path]:
    """The checkpoints of a run: ``epoch_*.pt`` by epoch, then ``best.pt``, ``last.pt``."""
    epochs = sorted((int(m.group(1)), p) for p in run_dir.iterdir()
                    if (m := CHECKPOINT_NAME.match(p.name)))
    found = [p for _, p in epochs]
    found += [run_dir / name for name in ("best.pt", "last.pt") if (run_dir / name).is_file()]
    if not found:
        raise BadInput(f"run directory {str(run_dir)!r} holds no checkpoints "
                       "(epoch_*.pt, best.pt, last.pt)")
    return found


def load_test_images(ckpt: dict[str, Any], n: int, seed: int, data_dir: str | None):
    """``(x float [n, C, H, W] in [0, 1], y int64 [n], indices)`` from the checkpoint's test set.

    A class-stratified subset (``harness.data.stratified_subset``, seeded) when n is smaller than
    the test set and at least the number of classes; a seeded random subset when n is smaller
    than the number of classes; the whole test set when n is at least its size.
    """
    import numpy as np
    import torch

    from harness.data import open_source, stratified_subset

    train_config = ckpt.get("train_config") or {}
    if "dataset" not in train_config:
        raise BadInput("the checkpoint has no train_config['dataset']: cannot tell which test "
                       "images to use")
    source = open_source(train_config["dataset"], data_dir or train_config.get("data_dir", "data"))
    labels = source.labels("test")
    everything = np.arange(len(labels), dtype=np.int64)
    if n >= len(labels):
        indices = everything
    elif n >= source.num_classes:
        indices = stratified_subset(labels, everything, n, seed)
    else:
        indices = np.sort(np.random.default_rng(seed).permutation(len(labels))[:n])
    x = source.images("test", indices).float() / 255.0
    y = torch.as_tensor(labels[indices], dtype=torch.long)
    return x, y, indices


def _progress():
    from curvtools.progress import new_progress

    return new_progress(transient=True, stderr=True)


def _advance(progress, task, done_examples: int, seconds: float) -> None:
    rate = f"{done_examples / seconds:.1f} ex/s" if seconds > 0 else ""
    progress.update(task, completed=done_examples, rate=rate)


# --- summaries and writers -----------------------------------------------------------------------


def _stats(values) -> dict[str, float]:
    import numpy as np

    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return {"mean": math.nan, "median": math.nan,
                **{f"q{int(q * 100):02d}": math.nan for q in QUANTILES}}
    return {"mean": float(finite.mean()), "median": float(np.median(finite)),
            **{f"q{int(q * 100):02d}": float(np.quantile(finite, q)) for q in QUANTILES}}


def spectra_summary(lambda_max, lambda_min, converged, iterations) -> dict[str, Any]:
    """Mean, median and quantiles of lambda_max and lambda_min, and the share of examples whose
    most negative eigenvalue is larger in magnitude than the largest one (where power iteration
    would return the wrong eigenvalue)."""
    import numpy as np

    lmax, lmin = np.asarray(lambda_max, float), np.asarray(lambda_min, float)
    return {
        "n": int(lmax.size),
        "lambda_max": _stats(lmax),
        "lambda_min": _stats(lmin),
        "share_negative_dominates": float(np.mean(np.abs(lmin) > lmax)) if lmax.size else math.nan,
        "share_converged": float(np.mean(np.asarray(converged, bool))) if lmax.size else math.nan,
        "iterations_mean": float(np.mean(iterations)) if lmax.size else math.nan,
        "iterations_max": int(np.max(iterations)) if lmax.size else 0,
    }


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def _write_text(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder, then rename (never a torn file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _write_json(path: Path, payload: dict) -> None:
    _write_text(path, json.dumps(_json_safe(payload), indent=1) + "\n")


def _write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    flat = [{k: (";".join(f"{v:.10g}" for v in val) if isinstance(val, list) else val)
             for k, val in row.items()} for row in rows]
    writer = csv.DictWriter(buffer, fieldnames=list(flat[0]) if flat else ["index"])
    writer.writeheader()
    writer.writerows(flat)
    _write_text(path, buffer.getvalue())


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    """Plain right-aligned columns (readable in logs, never truncated to a terminal width)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)))


def _print_summary(title: str, summary: dict) -> None:
    print(title)
    keys = ["mean", "median", *[f"q{int(q * 100):02d}" for q in QUANTILES]]
    _print_table(["", *keys], [[name, *[f"{summary[name][k]:.4g}" for k in keys]]
                               for name in ("lambda_max", "lambda_min")])
    print(f"n={summary['n']}  share |lambda_min| > lambda_max: "
          f"{summary['share_negative_dominates']:.3f}  converged: {summary['share_converged']:.3f}"
          f"  iterations mean/max: {summary['iterations_mean']:.1f}/{summary['iterations_max']}")


# --- the computation -----------------------------------------------------------------------------


def compute_spectra(model, x, y, *, batch: int, device, label: str, **options):
    """Per-example spectra of all of x in batches of ``batch`` on ``device``, with a progress bar.

    Returns a dict of numpy arrays: lambda_max, lambda_min, top_k [n, k], iterations, residual,
    error_estimate, converged.
    """
    import time

    import numpy as np

    from curvtools.spectra import input_hessian_eigenvalues

    parts: dict[str, list] = {k: [] for k in ("lambda_max", "lambda_min", "top_k", "iterations",
                                              "residual", "error_estimate", "converged")}
    start = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task(label, total=len(y), rate="")
        for lo in range(0, len(y), batch):
            xb = x[lo : lo + batch].to(device)
            yb = y[lo : lo + batch].to(device)
            res = input_hessian_eigenvalues(model, xb, yb, **options)
            for key in parts:
                parts[key].append(getattr(res, key).numpy())
            _advance(progress, task, min(lo + batch, len(y)), time.perf_counter() - start)
    return {k: np.concatenate(v) for k, v in parts.items()}


def _records(indices, labels, spectra: dict) -> list[dict]:
    return [{"index": int(indices[i]), "label": int(labels[i]),
             "lambda_max": float(spectra["lambda_max"][i]),
             "lambda_min": float(spectra["lambda_min"][i]),
             "top_k": [float(v) for v in spectra["top_k"][i]],
             "iterations": int(spectra["iterations"][i]),
             "residual": float(spectra["residual"][i]),
             "error_estimate": float(spectra["error_estimate"][i]),
             "converged": bool(spectra["converged"][i])} for i in range(len(indices))]


def _plot_histogram(path: Path, spectra: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, color in (("lambda_max", "tab:red"), ("lambda_min", "tab:blue")):
        values = np.asarray(spectra[key], float)
        values = values[np.isfinite(values)]
        if values.size:
            ax.hist(values, bins=40, alpha=0.6, color=color, label=key)
    ax.set_xlabel("eigenvalue of the input Hessian")
    ax.set_ylabel("test examples")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_curve(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted((r["epoch"], r["summary"]["lambda_max"]["mean"],
                     r["summary"]["lambda_max"]["median"]) for r in rows
                    if CHECKPOINT_NAME.match(r["checkpoint"]) and r["epoch"] is not None)
    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        epochs, means, medians = zip(*points, strict=True)
        ax.plot(epochs, means, marker="o", label="mean lambda_max")
        ax.plot(epochs, medians, marker="s", label="median lambda_max")
    ax.set_xlabel("epoch")
    ax.set_ylabel("largest eigenvalue of the input Hessian")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- commands ------------------------------------------------------------------------------------


def hessian(
    ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint (.pt) or a run directory "
                              "(then every epoch_*.pt, best.pt and last.pt in it)."),
    n: int = typer.Option(1000, "--n", help="Number of test images (class-stratified, seeded)."),
    batch: int = typer.Option(128, "--batch", help="Examples per batched Lanczos run."),
    function: str = typer.Option("ce", "--function", help="ce: cross-entropy at the true label; "
                                 "margin: true logit minus the largest other (runner-up fixed at "
                                 "the point)."),
    tol: float = typer.Option(1e-3, "--tol", help="Relative accuracy at which an example "
                              "counts as converged (judged by --stop)."),
    stop: str = typer.Option("eigenvalue", "--stop", help="eigenvalue: stop when the estimated "
                             "eigenvalue error min(r, r^2/gap) is at most tol/2; residual: "
                             "when the relative Ritz residual r is at most tol (rigorous; "
                             "1.1-1.4x the products in our CPU measurements)."),
    check_every: int = typer.Option(2, "--check-every", help="Lanczos iterations between "
                                    "convergence checks (each check is one host sync)."),
    hvp_mode: str = typer.Option("rev-rev", "--hvp-mode", help="rev-rev: double backward on a "
                                 "gradient graph built once per batch; fwd-rev: torch.func jvp "
                                 "of grad (re-runs forward and backward per product)."),
    max_iter: int = typer.Option(100, "--max-iter", help="Hessian-vector products per example "
                                 "at most."),
    k: int = typer.Option(1, "--k", help="How many of the largest eigenvalues to compute."),
    json_path: Path | None = typer.Option(None, "--json", help="Write per-example results "
                                          "(and the summary) as JSON to this file."),
    csv_path: Path | None = typer.Option(None, "--csv", help="Write per-example results as "
                                         "CSV to this file."),
    plot: Path | None = typer.Option(None, "--plot", help="Save a histogram (a curve over "
                                     "epochs for a run directory) to this image file."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: cuda "
                                      "if available)."),
    dtype: str = typer.Option("float64", "--dtype", help="float64 (per-example values to "
                              "1e-3) or float32 (faster; ~1e-3 noise per HVP on confidently "
                              "classified examples, fine for distributions)."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Dataset folder (default: the "
                                        "checkpoint's train_config data_dir)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the test subset and the Lanczos start "
                             "vectors."),
) -> None:
    """Largest and smallest eigenvalues of each test example's input Hessian (Figure 3)."""
    for name, value in (("--n", n), ("--batch", batch), ("--max-iter", max_iter), ("--k", k),
                        ("--check-every", check_every)):
        _check_positive_int(name, value)
    if stop not in ("eigenvalue", "residual"):
        raise BadInput(f"--stop {stop!r} is not allowed: use eigenvalue or residual")
    if hvp_mode not in ("rev-rev", "fwd-rev"):
        raise BadInput(f"--hvp-mode {hvp_mode!r} is not allowed: use rev-rev or fwd-rev")
    if function not in ("ce", "margin"):
        raise BadInput(f"--function {function!r} is not allowed: use ce or margin")
    _check_tol(tol)
    check_seed("--seed", seed)
    if not ckpt.exists():
        raise BadInput(f"--ckpt {str(ckpt)!r} does not exist")
    paths = checkpoints_in_run(ckpt) if ckpt.is_dir() else [ckpt]
    run_dir = ckpt if ckpt.is_dir() else ckpt.parent
    for option, path, suffixes in (("--json", json_path, None), ("--csv", csv_path, None),
                                   ("--plot", plot, PLOT_SUFFIXES)):
        check_output_path(option, path, inputs=paths, run_dirs=[run_dir], suffixes=suffixes)
    torch_dtype = _torch_dtype(dtype)
    dev = _device(device)

    from harness.checkpoint import load_model

    # Every checkpoint is loaded once before any work: a damaged later one must not cost the
    # results of the earlier ones (each model is freed; the loop loads it again).
    for path in paths[1:]:
        load_model(path, device="cpu")

    options = {"function": function, "k": k, "tol": tol, "max_iter": max_iter,
               "dtype": torch_dtype, "seed": seed, "stop": stop, "check_every": check_every,
               "hvp_mode": hvp_mode}
    settings = {"function": function, "k": k, "tol": tol, "max_iter": max_iter, "dtype": dtype,
                "n": n, "batch": batch, "seed": seed, "device": str(dev), "stop": stop,
                "check_every": check_every, "hvp_mode": hvp_mode}
    rows, all_records = [], []
    data = None
    for path in paths:
        model, payload = load_model(path, device=dev)
        if data is None:  # the same test images for every checkpoint of a run
            data = load_test_images(payload, n, seed, data_dir)
        x, y, indices = data
        spectra = compute_spectra(model, x, y, batch=batch, device=dev, label=path.name,
                                  **options)
        summary = spectra_summary(spectra["lambda_max"], spectra["lambda_min"],
                                  spectra["converged"], spectra["iterations"])
        records = _records(indices, y.numpy(), spectra)
        rows.append({"checkpoint": path.name, "epoch": payload.get("epoch"), "summary": summary,
                     "examples": records})
        all_records += [{"checkpoint": path.name, **r} for r in records]
        _print_summary(f"{path} (function={function}, dtype={dtype})", summary)
    if len(rows) > 1:
        _print_curve(rows)

    if json_path is not None:
        body = ({"checkpoint": str(ckpt), **rows[0]} if not ckpt.is_dir()
                else {"run_dir": str(ckpt), "checkpoints": rows})
        _write_json(json_path, {"settings": settings, **body})
    if csv_path is not None:
        _write_csv(csv_path, all_records)
    if plot is not None:
        if ckpt.is_dir():
            _plot_curve(plot, rows, f"{ckpt.name}: input-Hessian lambda_max over training")
        else:
            _plot_histogram(plot, {k2: [r[k2] for r in rows[0]["examples"]]
                                   for k2 in ("lambda_max", "lambda_min")}, ckpt.name)


def _print_curve(rows: list[dict]) -> None:
    print("lambda_max per checkpoint (Figure 3)")
    _print_table(["checkpoint", "epoch", "mean", "median", "q95", "lambda_min median"],
                 [[r["checkpoint"], str(r["epoch"]),
                   *[f"{r['summary'][a][b]:.4g}" for a, b in (
                       ("lambda_max", "mean"), ("lambda_max", "median"), ("lambda_max", "q95"),
                       ("lambda_min", "median"))]] for r in rows])


# --- Lemma 1 on trained nets ---------------------------------------------------------------------


def lemma_quantities(model, x, y, *, tol: float, max_iter: int, dtype, seed: int) -> dict:
    """Per example: c = margin, |g|, nu, g.u for f = -margin (see the module docstring).

    Returns numpy arrays ``c, g_norm, nu, g_dot_u, nu_residual, nu_converged`` of shape [B].
    """
    import torch

    from curvtools.hvp import InputHessian, eval_mode
    from curvtools.spectra import input_hessian_eigenvalues

    with eval_mode(model):
        f, g = InputHessian(model, x, y, function="neg_margin", dtype=dtype).values_and_gradients()
    # The residual rule: g.u needs the eigenVECTOR, whose error follows the residual.
    res = input_hessian_eigenvalues(model, x, y, function="neg_margin", which=("max",), k=1,
                                    tol=tol, max_iter=max_iter, dtype=dtype, seed=seed,
                                    return_vectors=True, stop="residual")
    g = g.detach().to("cpu", torch.float64)
    u = res.top_vectors[:, 0].to(torch.float64)
    return {"c": (-f).to("cpu", torch.float64).numpy(), "g_norm": g.norm(dim=1).numpy(),
            "nu": res.lambda_max.numpy(), "g_dot_u": (g * u).sum(dim=1).numpy(),
            "nu_residual": res.residual.numpy(), "nu_converged": res.converged.numpy()}


def _attack_succeeds(model, x, y, eps: float, *, steps: int, restarts: int, seed: int):
    """PGD-l2 at radius eps (step 2.5 eps / steps); True where the prediction changed."""
    import torch

    from harness.attacks import pgd

    generator = torch.Generator(device=x.device).manual_seed(seed)
    delta = pgd(model, x, y, eps=float(eps), alpha=2.5 * float(eps) / steps, steps=steps,
                restarts=restarts, norm="l2", bn_mode="eval", generator=generator)
    with torch.no_grad():
        return (model(x + delta).argmax(dim=1) != y).cpu().numpy()


def smallest_l2_attack(model, x, y, *, eps_max: float, bisect_steps: int, steps: int,
                       restarts: int, seed: int):
    """Per example, the smallest l2 radius at which PGD-l2 changes the prediction (bisection).

    Misclassified examples get 0; examples PGD cannot break at ``eps_max`` get inf. Each example
    runs its own bisection over [0, eps_max]; examples whose current midpoints coincide share one
    batched PGD call (the midpoints are dyadic, so early steps batch well). The result is the upper
    end of the final bracket: PGD succeeded there, and failed at the lower end (eps_max / 2^steps
    apart).
    """
    import numpy as np
    import torch

    with torch.no_grad():
        correct = (model(x).argmax(dim=1) == y).cpu().numpy()
    breakable = correct & _attack_succeeds(model, x, y, eps_max, steps=steps,
                                           restarts=restarts, seed=seed)
    lo = np.zeros(len(y))
    hi = np.full(len(y), float(eps_max))
    for _ in range(bisect_steps):
        mid = (lo + hi) / 2
        for value in np.unique(mid[breakable]):
            idx = np.flatnonzero(breakable & (mid == value))
            sel = torch.as_tensor(idx, device=x.device)
            ok = _attack_succeeds(model, x[sel], y[sel], value, steps=steps, restarts=restarts,
                                  seed=seed)
            hi[idx[ok]] = value
            lo[idx[~ok]] = value
    return np.where(~correct, 0.0, np.where(breakable, hi, np.inf))


def lemma(
    ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint (.pt) written by harness."),
    n: int = typer.Option(100, "--n", help="Number of test images (class-stratified, seeded)."),
    batch: int = typer.Option(64, "--batch", help="Examples per batch."),
    json_path: Path | None = typer.Option(None, "--json", help="Write per-example results as "
                                          "JSON to this file."),
    eps_max: float = typer.Option(4.0, "--eps-max", help="Largest l2 radius tried by the "
                                  "attack (pixels in [0, 1])."),
    bisect_steps: int = typer.Option(8, "--bisect-steps", help="Bisection steps over epsilon "
                                     "(resolution eps_max / 2^steps)."),
    steps: int = typer.Option(20, "--steps", help="PGD-l2 steps per attack."),
    restarts: int = typer.Option(1, "--restarts", help="PGD random restarts per attack."),
    tol: float = typer.Option(1e-4, "--tol", help="Relative Ritz residual for nu."),
    max_iter: int = typer.Option(200, "--max-iter", help="Hessian-vector products for nu at "
                                 "most."),
    show: int = typer.Option(20, "--show", help="Rows of the per-example table to print."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: cuda "
                                      "if available)."),
    dtype: str = typer.Option("float64", "--dtype", help="float32 or float64 for the Hessian "
                              "work."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Dataset folder (default: the "
                                        "checkpoint's train_config data_dir)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the test subset, Lanczos and PGD."),
) -> None:
    """Lemma 1 (Eq. 1) bounds on the l2 distance to misclassification, beside a real attack.

    f = -margin (runner-up fixed at x): c = margin, g = -grad margin, nu = lambda_max(Hess f).
    """
    import numpy as np

    for name, value in (("--n", n), ("--batch", batch), ("--bisect-steps", bisect_steps),
                        ("--steps", steps), ("--restarts", restarts), ("--max-iter", max_iter)):
        _check_positive_int(name, value)
    if not (eps_max > 0) or not math.isfinite(eps_max):
        raise BadInput(f"--eps-max {eps_max} is not allowed: need a finite number > 0")
    _check_tol(tol)
    check_seed("--seed", seed)
    if not ckpt.is_file():
        raise BadInput(f"--ckpt {str(ckpt)!r} is not a checkpoint file")
    check_output_path("--json", json_path, inputs=[ckpt], run_dirs=[ckpt.parent])
    torch_dtype = _torch_dtype(dtype)
    dev = _device(device)

    from curvtools.lemma import lemma1_bounds
    from harness.checkpoint import load_model

    model, payload = load_model(ckpt, device=dev)
    x, y, indices = load_test_images(payload, n, seed, data_dir)
    parts: dict[str, list] = {}
    with _progress() as progress:
        task = progress.add_task("lemma 1", total=len(y), rate="")
        import time

        start = time.perf_counter()
        for lo in range(0, len(y), batch):
            xb, yb = x[lo : lo + batch].to(dev), y[lo : lo + batch].to(dev)
            q = lemma_quantities(model, xb, yb, tol=tol, max_iter=max_iter, dtype=torch_dtype,
                                 seed=seed)
            q["attack_l2"] = smallest_l2_attack(model, xb, yb, eps_max=eps_max,
                                                bisect_steps=bisect_steps, steps=steps,
                                                restarts=restarts, seed=seed)
            for key, value in q.items():
                parts.setdefault(key, []).append(np.asarray(value))
            _advance(progress, task, min(lo + batch, len(y)), time.perf_counter() - start)
    q = {k: np.concatenate(v) for k, v in parts.items()}
    lower, upper = lemma1_bounds(q["c"], q["g_norm"], q["nu"], q["g_dot_u"])
    rows = [{"index": int(indices[i]), "label": int(y[i]), "correct": bool(q["c"][i] > 0),
             "c": float(q["c"][i]), "g_norm": float(q["g_norm"][i]), "nu": float(q["nu"][i]),
             "g_dot_u": float(q["g_dot_u"][i]), "lower_bound": float(lower[i]),
             "upper_bound": float(upper[i]), "attack_l2": float(q["attack_l2"][i]),
             "nu_residual": float(q["nu_residual"][i]),
             "nu_converged": bool(q["nu_converged"][i])} for i in range(len(y))]
    _print_lemma(rows, show, eps_max)
    if json_path is not None:
        _write_json(json_path, {
            "checkpoint": str(ckpt), "note": BOUNDS_NOTE,
            "mapping": "f = -(z_y - max_{j!=y} z_j), runner-up fixed at x; c = margin; "
                       "g = grad f; nu = lambda_max(Hess f); u its unit eigenvector",
            "settings": {"n": n, "eps_max": eps_max, "bisect_steps": bisect_steps,
                         "steps": steps, "restarts": restarts, "tol": tol,
                         "max_iter": max_iter, "dtype": dtype, "seed": seed},
            "examples": rows})


def _print_lemma(rows: list[dict], show: int, eps_max: float) -> None:
    import numpy as np

    print("Lemma 1 on the trained net (l2, pixels in [0, 1])")
    _print_table(["index", "label", "c=margin", "|g|", "nu", "lower", "upper", "attack l2"],
                 [[str(r["index"]), str(r["label"]),
                   *[f"{r[k]:.4g}" for k in ("c", "g_norm", "nu", "lower_bound", "upper_bound",
                                             "attack_l2")]] for r in rows[:show]])
    correct = [r for r in rows if r["correct"]]
    broken = [r for r in correct if math.isfinite(r["attack_l2"])]
    print(f"{len(correct)}/{len(rows)} correctly classified; PGD-l2 broke {len(broken)} of them "
          f"within eps {eps_max:g}")
    if broken:
        attack = np.array([r["attack_l2"] for r in broken])
        lower = np.array([r["lower_bound"] for r in broken])
        upper = np.array([r["upper_bound"] for r in broken])
        print(f"median attack l2 {np.median(attack):.4g}; median lower bound "
              f"{np.nanmedian(lower):.4g}; median upper bound {np.nanmedian(upper):.4g}; "
              f"share attack >= lower bound: {np.mean(attack >= lower):.3f}")
    converged = sum(r["nu_converged"] for r in rows)
    print(f"nu converged (relative Ritz residual <= --tol) for {converged}/{len(rows)} examples"
          + ("" if converged == len(rows) else "; the bounds of the others use an unconverged "
             "nu (raise --max-iter)"))
    print(f"note: {BOUNDS_NOTE}")


def register(app: typer.Typer) -> None:
    """Add the ``hessian`` and ``lemma`` commands to the ``curvtools`` app."""
    app.command("hessian")(hessian)
    app.command("lemma")(lemma)

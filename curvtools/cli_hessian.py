"""``curvtools hessian``: per-example input-Hessian spectra of trained nets (Figure 3).

Rebuilds a model from a checkpoint (``harness.checkpoint.load_model``), takes test images of the
checkpoint's dataset and computes, per example, the largest and smallest algebraic eigenvalues of
the input Hessian (batched Lanczos, :mod:`curvtools.spectra`). Given a run directory it does this
for every distinct saved checkpoint (:mod:`curvtools.checkpoint_paths`): lambda_max per epoch.

torch and harness are imported inside the command so that ``curvtools --help`` starts fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from curvtools.checkpoint_paths import checkpoints_in_run, path_problem, resolve_checkpoints
from curvtools.checks import is_int, require_positive_int, require_unit_open
from curvtools.clirun import PLOT_SUFFIXES, check_output_path
from curvtools.errors import BadInput, check_seed, shown

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps (auto: cuda if available, else cpu)."


def torch_dtype(option: str, name: str):
    """``"float32"``/``"float64"`` as a torch dtype; :class:`BadInput` for anything else."""
    from curvtools.hvp import DTYPES

    if name not in DTYPES:
        raise BadInput(f"{option} {shown(name)} is not allowed: use float32 or float64")
    return DTYPES[name]


def compute_spectra(model, x, y, *, batch: int, device, label: str, **options):
    """Per-example spectra of all of x ([n, C, H, W]) in batches of ``batch`` on ``device``,
    with a progress bar; ``options`` go to :func:`curvtools.spectra.input_hessian_eigenvalues`.

    Returns a dict of numpy arrays: lambda_max, lambda_min, top_k [n, k], iterations, residual,
    error_estimate, converged, and the bounds (lambda_max_bound, lambda_max_upper,
    lambda_min_bound, lambda_min_lower, error_bound, limited) ([n] each).
    """
    import numpy as np

    from curvtools.progress import advance, new_progress
    from curvtools.spectra import input_hessian_eigenvalues

    parts: dict[str, list] = {k: [] for k in (
        "lambda_max", "lambda_min", "top_k", "iterations", "residual", "error_estimate",
        "converged", "lambda_max_bound", "lambda_max_upper", "lambda_min_bound",
        "lambda_min_lower", "error_bound", "limited")}
    with new_progress(transient=True, stderr=True) as progress:
        task = progress.add_task(label, total=len(y), rate="")
        for lo in range(0, len(y), batch):
            xb = x[lo : lo + batch].to(device)
            yb = y[lo : lo + batch].to(device)
            res = input_hessian_eigenvalues(model, xb, yb, **options)
            for key in parts:
                parts[key].append(getattr(res, key).numpy())
            advance(progress, task, unit="ex", steps=len(yb))
    return {k: np.concatenate(v) for k, v in parts.items()}


def hessian(
    ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint (.pt) or a run directory "
                              "(then its distinct checkpoints: every epoch_*.pt, plus last.pt/"
                              "best.pt when they hold an epoch without an epoch file)."),
    n: int = typer.Option(1000, "--n", help="Number of test images (class-stratified, seeded)."),
    batch: int = typer.Option(128, "--batch", help="Examples per batched Lanczos run."),
    function: str = typer.Option("ce", "--function", help="ce: cross-entropy at the true label; "
                                 "margin: true logit minus the largest other (runner-up fixed at "
                                 "the point)."),
    tol: float = typer.Option(1e-3, "--tol", help="Relative accuracy: an example counts as "
                              "converged when its error bound is at most tol."),
    stop: str = typer.Option("residual", "--stop", help="residual (default): stop when the "
                             "error bound (residual plus rounding) is at most tol; eigenvalue: "
                             "the former default, stop on the estimate min(r, r^2/gap) <= tol/2 "
                             "(not a bound; converged still reports the bound)."),
    check_every: int = typer.Option(1, "--check-every", help="Lanczos iterations between "
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
                                     "epochs for a run directory) to this .png/.pdf/.svg."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float64", "--dtype", help="float64 (the default, as in the "
                              "Python API) or float32 (faster; its products err by ~1e-6 "
                              "relative with the float64 loss head)."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Dataset folder (default: the "
                                        "checkpoint's train_config data_dir)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the test subset and the Lanczos start "
                             "vectors."),
) -> None:
    """Largest and smallest eigenvalues of each test example's input Hessian (Figure 3)."""
    for name, value in (("--n", n), ("--batch", batch), ("--max-iter", max_iter), ("--k", k),
                        ("--check-every", check_every)):
        require_positive_int(name, value)
    if stop not in ("eigenvalue", "residual"):
        raise BadInput(f"--stop {shown(stop)} is not allowed: use eigenvalue or residual")
    if hvp_mode not in ("rev-rev", "fwd-rev"):
        raise BadInput(f"--hvp-mode {shown(hvp_mode)} is not allowed: use rev-rev or fwd-rev")
    if function not in ("ce", "margin"):
        raise BadInput(f"--function {shown(function)} is not allowed: use ce or margin")
    require_unit_open("--tol", tol)
    check_seed("--seed", seed)
    problem = path_problem(ckpt)
    if problem is not None:
        raise BadInput(f"--ckpt {str(ckpt)!r} {problem}")
    every_file = checkpoints_in_run(ckpt) if ckpt.is_dir() else [ckpt]
    run_dir = ckpt if ckpt.is_dir() else ckpt.parent
    for option, path, suffixes in (("--json", json_path, None), ("--csv", csv_path, None),
                                   ("--plot", plot, PLOT_SUFFIXES)):
        check_output_path(option, path, inputs=every_file, run_dirs=[run_dir],
                          suffixes=suffixes)
    dtype_ = torch_dtype("--dtype", dtype)

    from harness.checkpoint import load_checkpoint
    from harness.eval_checkpoint import run_data_settings
    from harness.rundir import RunDir
    from harness.runtime import resolve_device

    dev = resolve_device(device)
    # Every checkpoint is read once before any work (a damaged later one must not cost the
    # results of the earlier ones), and in a run directory each must be of that run (a
    # foreign best.pt is no epoch of it); last.pt/best.pt are read for their epoch, to skip
    # copies.
    payloads = {path: load_checkpoint(path) for path in every_file}
    for payload in payloads.values():
        run_data_settings(payload.get("train_config") or {})
    if ckpt.is_dir():
        RunDir(ckpt).check_series(payloads)
    choice = resolve_checkpoints(ckpt, "--ckpt", series=True,
                                 epoch_of=lambda p: _epoch(payloads[p]))
    if choice.note:
        print(choice.note)

    options = {"function": function, "k": k, "tol": tol, "max_iter": max_iter, "dtype": dtype_,
               "seed": seed, "stop": stop, "check_every": check_every, "hvp_mode": hvp_mode}
    settings = {"function": function, "k": k, "tol": tol, "max_iter": max_iter, "dtype": dtype,
                "n": n, "batch": batch, "seed": seed, "device": str(dev), "stop": stop,
                "check_every": check_every, "hvp_mode": hvp_mode}
    rows = _run(choice.paths, n=n, seed=seed, data_dir=data_dir, batch=batch, dev=dev,
                title=f"(function={function}, dtype={dtype})", options=options)
    _write_outputs(ckpt, choice, rows, settings, json_path, csv_path, plot)


def _epoch(payload) -> int | None:
    """A checkpoint's epoch when it is an integer (a hostile file may hold anything)."""
    epoch = payload.get("epoch")
    return epoch if is_int(epoch) else None


def _run(paths: list[Path], *, n: int, seed: int, data_dir: str | None, batch: int, dev,
         title: str, options: dict) -> list[dict]:
    """The spectra of each checkpoint, on the same test images; prints a summary of each."""
    from curvtools import spectra_report as report
    from curvtools.testset import activation_label, load_test_images
    from harness.checkpoint import load_model

    rows = []
    data = None
    for path in paths:
        model, payload = load_model(path, device=dev)
        if data is None:  # the same test images for every checkpoint of a run
            data = load_test_images(payload, n, seed, data_dir)
        x, y, indices = data
        spectra = compute_spectra(model, x, y, batch=batch, device=dev, label=path.name,
                                  **options)
        summary = report.spectra_summary(spectra["lambda_max"], spectra["lambda_min"],
                                         spectra["converged"], spectra["iterations"])
        rows.append({"checkpoint": path.name, "epoch": _epoch(payload),
                     "activation": activation_label(payload), "summary": summary,
                     "examples": report.spectra_records(indices, y.numpy(), spectra)})
        report.print_summary(f"{path} {title}", summary)
    if len(rows) > 1:
        report.print_curve(rows)
    return rows


def _write_outputs(ckpt: Path, choice, rows: list[dict], settings: dict,
                   json_path: Path | None, csv_path: Path | None, plot: Path | None) -> None:
    from curvtools import spectra_plots
    from curvtools import spectra_report as report

    if json_path is not None:
        skipped = [{"checkpoint": c.name, "same_epoch_as": kept.name}
                   for c, kept in choice.skipped]
        body = ({"checkpoint": str(ckpt), **rows[0]} if choice.run_dir is None
                else {"run_dir": str(ckpt), "checkpoints": rows, "skipped_copies": skipped})
        report.write_json(json_path, {"settings": settings, **body})
    if csv_path is not None:
        report.write_csv(csv_path, [{"checkpoint": r["checkpoint"], **e}
                                    for r in rows for e in r["examples"]])
    if plot is not None:
        first = rows[0]
        n = first["summary"]["n"]
        if choice.run_dir is not None:
            fig = spectra_plots.curve_figure(
                rows, f"{first['activation']}, run {ckpt.name}: input-Hessian lambda_max over "
                      f"training ({n} test examples)")
        else:
            fig = spectra_plots.histogram_figure(
                [e["lambda_max"] for e in first["examples"]],
                [e["lambda_min"] for e in first["examples"]],
                f"{first['activation']}: {ckpt.name} (epoch {first['epoch']}), input-Hessian "
                f"eigenvalues of {n} test examples")
        spectra_plots.save(fig, plot)

"""``curvtools lemma``: Lemma 1 (Eq. 1) bounds per test example of a trained net, beside the
smallest l2 perturbation that PGD-l2 finds (bisection over epsilon).

Mapping of the multi-class net onto the lemma's binary f: with margin
``m(x) = z_y - max_{j != y} z_j`` (runner-up fixed at x), take ``f = -m``; then
``c = -f(x) = m(x) >= 0`` for a correctly classified example, ``f >= 0`` means misclassified,
``g = grad f = -grad m`` and ``nu = lambda_max(Hess f) = -lambda_min(Hess m)`` with ``u`` its
unit eigenvector. The bounds are for the quadratic (second-order Taylor) model of f at x; the
attack runs on the real net. torch and harness are imported inside the functions.
"""

from __future__ import annotations

import math
from pathlib import Path

import typer

from curvtools.checkpoint_paths import resolve_checkpoints
from curvtools.checks import require_positive_finite, require_positive_int, require_unit_open
from curvtools.cli_hessian import DEVICE_HELP, torch_dtype
from curvtools.clirun import check_output_path
from curvtools.errors import check_seed

BOUNDS_NOTE = ("Lemma 1 bounds are for the second-order (quadratic) model of f = -margin at x; "
               "the attack distance is measured on the real network (PGD-l2, bisection over eps).")


def lemma_quantities(model, x, y, *, tol: float, max_iter: int, dtype, seed: int) -> dict:
    """Per example: c = margin, |g|, nu, g.u for f = -margin (see the module docstring).

    ``x`` [B, C, H, W], ``y`` [B]. Returns numpy arrays ``c, g_norm, nu, g_dot_u, nu_residual,
    nu_converged`` of shape [B].
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
    apart). Returns a numpy array [B].
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
    ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint (.pt) written by harness, or a "
                              "run directory (then its last.pt)."),
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
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
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
        require_positive_int(name, value)
    require_positive_finite("--eps-max", eps_max)
    require_unit_open("--tol", tol)
    check_seed("--seed", seed)
    choice = resolve_checkpoints(ckpt, "--ckpt", series=False)
    (path,) = choice.paths
    check_output_path("--json", json_path, inputs=[path], run_dirs=[path.parent])
    dtype_ = torch_dtype("--dtype", dtype)

    from curvtools.lemma import lemma1_bounds
    from curvtools.progress import advance, new_progress
    from curvtools.testset import load_test_images
    from harness.checkpoint import load_model
    from harness.eval_checkpoint import run_data_settings
    from harness.rundir import RunDir
    from harness.runtime import resolve_device

    dev = resolve_device(device)
    if choice.note:
        print(choice.note)
    model, payload = load_model(path, device=dev)
    if choice.run_dir is not None:  # its last.pt must be of that run
        RunDir(choice.run_dir).check_member(payload, path)
    run_data_settings(payload.get("train_config") or {})
    x, y, indices = load_test_images(payload, n, seed, data_dir)
    parts: dict[str, list] = {}
    with new_progress(transient=True, stderr=True) as progress:
        task = progress.add_task("lemma 1", total=len(y), rate="")
        for lo in range(0, len(y), batch):
            xb, yb = x[lo : lo + batch].to(dev), y[lo : lo + batch].to(dev)
            q = lemma_quantities(model, xb, yb, tol=tol, max_iter=max_iter, dtype=dtype_,
                                 seed=seed)
            q["attack_l2"] = smallest_l2_attack(model, xb, yb, eps_max=eps_max,
                                                bisect_steps=bisect_steps, steps=steps,
                                                restarts=restarts, seed=seed)
            for key, value in q.items():
                parts.setdefault(key, []).append(np.asarray(value))
            advance(progress, task, unit="ex", steps=len(yb))
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
        from curvtools.spectra_report import write_json

        write_json(json_path, {
            "checkpoint": str(path), "note": BOUNDS_NOTE,
            "mapping": "f = -(z_y - max_{j!=y} z_j), runner-up fixed at x; c = margin; "
                       "g = grad f; nu = lambda_max(Hess f); u its unit eigenvector",
            "settings": {"n": n, "eps_max": eps_max, "bisect_steps": bisect_steps,
                         "steps": steps, "restarts": restarts, "tol": tol,
                         "max_iter": max_iter, "dtype": dtype, "seed": seed},
            "examples": rows})


def _print_lemma(rows: list[dict], show: int, eps_max: float) -> None:
    import numpy as np

    from curvtools.spectra_report import print_table

    print("Lemma 1 on the trained net (l2, pixels in [0, 1])")
    print_table(["index", "label", "c=margin", "|g|", "nu", "lower", "upper", "attack l2"],
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

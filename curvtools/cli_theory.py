"""The theory commands of ``curvtools``: ``curvature`` (certified max f'') and ``twolayer``
(Eq. 2 and Lemma 1 on random two-layer nets). Heavy imports happen inside the commands:
``curvature`` never imports torch.
"""

from __future__ import annotations

import math
from pathlib import Path

import typer

from curvtools.checks import require_int_in, require_unit_open
from curvtools.clirun import check_output_path, require_expr
from curvtools.errors import BadInput, check_seed
from curvtools.fileio import json_safe, write_json_atomic

ACT_HELP = ("activation name (`curvtools curvature --act all` lists the built-in ones; expr "
            "needs --expr), or 'all' for every built-in one")


def _resolve_all(act: str, k: float | None, beta: float | None, alpha: float | None,
                 expr: str | None) -> list:
    from curvtools.activations import builtin_names, resolve

    require_expr(act, expr)
    if act.strip().lower() == "all":
        if any(v is not None for v in (k, beta, alpha, expr)):
            raise BadInput("--act all uses default parameters; drop --k/--beta/--alpha/--expr")
        return [resolve(name) for name in builtin_names()]
    return [resolve(act, k=k, beta=beta, alpha=alpha, expr=expr)]


def _fmt(v: float) -> str:
    return f"{v + 0.0:.10g}" if math.isfinite(v) else str(v)  # + 0.0 turns -0 into 0


def _arg(x: float, at_infinity: bool) -> str:
    return "|x| -> inf" if at_infinity else _fmt(x)


def _enclosure(lower: float, upper: float, certified: bool) -> str:
    """"certified enclosure [a, b]" only when the width reached --tol; else "enclosure"."""
    return f"{'certified ' if certified else ''}enclosure [{_fmt(lower)}, {_fmt(upper)}]"


def _print_one(c) -> None:
    print(f"== {c.label}")
    print(f"  f(x)   = {c.f}")
    print(f"  f'(x)  = {c.f1}")
    print(f"  f''(x) = {c.f2}")
    if c.max_upper == c.min_lower:  # piecewise linear: f'' is one constant off the kinks
        print(f"  f'' = {_fmt(c.max_value)} everywhere away from the kinks")
        print(f"  curvature = {_fmt(c.curvature)}  [{c.kind}]")
        for note in c.notes:
            print(f"  note: {note}")
        return
    exact = f" = {c.max_exact} at x = {c.argmax_exact}" if c.max_exact else ""
    print(f"  max f'' = {_fmt(c.max_value)}{exact} (argmax {_arg(c.argmax, c.argmax_at_infinity)})"
          f"; {_enclosure(c.max_lower, c.max_upper, c.max_certified)}")
    print(f"  min f'' = {_fmt(c.min_value)} (argmin {_arg(c.argmin, c.argmin_at_infinity)})"
          f"; {_enclosure(c.min_lower, c.min_upper, c.min_certified)}")
    print(f"  curvature = {_fmt(c.curvature)}  [{c.kind}]")
    for note in c.notes:
        print(f"  note: {note}")


def curvature_command(
    act: str = typer.Option(..., "--act", help=ACT_HELP),
    k: str | None = typer.Option(None, "--k", help="LeakyReLU negative slope k"),
    beta: str | None = typer.Option(None, "--beta", help="PSwish / Softplus beta (> 0)"),
    alpha: str | None = typer.Option(None, "--alpha", help="ELU alpha (> 0)"),
    expr: str | None = typer.Option(None, "--expr", help="user activation in x (--act expr)"),
    json_path: Path | None = typer.Option(None, "--json", help="write the numbers to this file"),
    plot: Path | None = typer.Option(None, "--plot",
                                     help="draw f, f', f'' (Figure 2) to this .png/.pdf"),
    tol: float = typer.Option(1e-9, "--tol", help="certified enclosure width: absolute for "
                              "values below 1 in magnitude, relative above; in (0, 1)"),
) -> None:
    """f, f', f'' and the certified global max/min of f'' (the paper's curvature)."""
    acts = _resolve_all(act, k, beta, alpha, expr)
    # run_files=(): which names make up a harness run is harness's knowledge, not the theory's;
    # *.pt names stay refused
    check_output_path("--json", json_path, suffixes=(".json",), run_files=())
    # curvtools.figures draws Figure 2 as .png or .pdf only
    check_output_path("--plot", plot, suffixes=(".png", ".pdf"), run_files=())
    require_unit_open("--tol", tol)
    from curvtools.symbolic import curvature

    results = [curvature(a, tol=tol) for a in acts]
    for c in results:
        _print_one(c)
    if len(results) > 1:
        print("\nranked by curvature (highest first):")
        for rank, c in enumerate(sorted(results, key=lambda r: -r.curvature), start=1):
            print(f"  {rank:2d}. {c.label:18s} {_fmt(c.curvature):>14s}  {c.kind}")
    if json_path is not None:
        write_json_atomic(json_path, json_safe({"activations": [c.to_json() for c in results]}))
        print(f"wrote {json_path}")
    if plot is not None:
        from curvtools.figures import plot_activation_derivatives

        plot_activation_derivatives(acts, plot)
        print(f"wrote {plot}")


def twolayer_command(
    act: str = typer.Option(..., "--act", help="activation name (`curvtools curvature --act "
                            "all` lists the built-in ones; expr needs --expr)"),
    k: str | None = typer.Option(None, "--k", help="LeakyReLU negative slope k"),
    beta: str | None = typer.Option(None, "--beta", help="PSwish / Softplus beta (> 0)"),
    alpha: str | None = typer.Option(None, "--alpha", help="ELU alpha (> 0)"),
    expr: str | None = typer.Option(None, "--expr", help="user activation in x (--act expr)"),
    dim: int = typer.Option(10, "--dim", help="input dimension d"),
    hidden: int = typer.Option(32, "--hidden", help="hidden width h"),
    seed: int = typer.Option(0, "--seed", help="random seed"),
    n: int = typer.Option(10, "--n", help="number of random nets / points"),
    slsqp_starts: int = typer.Option(20, "--slsqp-starts",
                                     help="SLSQP starts for the cross-check solver"),
    json_path: Path | None = typer.Option(None, "--json", help="write the numbers to this file"),
) -> None:
    """Eq. 2 vs torch.func.hessian and Lemma 1 vs the exact minimal perturbation, random nets."""
    if act.strip().lower() == "all":
        raise BadInput("--act all is only for 'curvature'; give one activation")
    (activation,) = _resolve_all(act, k, beta, alpha, expr)
    for name, value, lo, hi in (("--dim", dim, 1, 2000), ("--hidden", hidden, 1, 20000),
                                ("--n", n, 1, 100000), ("--slsqp-starts", slsqp_starts, 1, 1000)):
        require_int_in(name, value, lo, hi)
    check_seed("--seed", seed)
    check_output_path("--json", json_path, suffixes=(".json",), run_files=())
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from curvtools.twolayer import random_instance

    gen = torch.Generator().manual_seed(seed)
    rows = []
    with Progress(TextColumn("instances"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.speed} it/s"), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task("twolayer", total=n)
        for _ in range(n):
            rows.append(random_instance(activation, dim, hidden, gen, slsqp_starts))
            bar.advance(task)
    head = ("c", "||g||", "nu", "g.u", "lower", "exact", "slsqp", "upper", "inside")
    print(f"{activation.label}: d={dim} h={hidden} seed={seed}; quadratic model min ||delta||")
    print(" ".join(f"{h:>11s}" for h in head))
    inside_all = True
    for r in rows:
        slack = 1e-9 * max(1.0, r.exact) if math.isfinite(r.exact) else 0.0
        inside = r.lower - slack <= r.exact <= r.upper + slack
        inside_all &= inside
        values = (r.c, r.g_norm, r.nu, r.g_dot_u, r.lower, r.exact, r.slsqp, r.upper)
        print(" ".join(f"{v:11.5g}" for v in values) + f" {'yes' if inside else 'NO':>11s}")
    eq2 = max(r.eq2_max_abs_err for r in rows)
    grad = max(r.grad_max_abs_err for r in rows)
    agree = max((abs(r.exact - r.slsqp) for r in rows if math.isfinite(r.exact)), default=0.0)
    print(f"Eq. 2 vs torch.func.hessian: max abs error {eq2:.3g} (gradient {grad:.3g}); "
          f"exact vs SLSQP max |diff| {agree:.3g}; all inside Lemma 1 bounds: {inside_all}")
    if not activation.smooth:
        print("note: the activation is not twice differentiable; Eq. 2 uses f'' away from kinks")
    if json_path is not None:
        write_json_atomic(json_path, json_safe({
            "activation": activation.config(), "dim": dim, "hidden": hidden, "seed": seed,
            "eq2_max_abs_err": eq2, "grad_max_abs_err": grad, "all_inside_bounds": inside_all,
            "instances": [r.to_json() for r in rows]}))
        print(f"wrote {json_path}")


def register(app: typer.Typer) -> None:
    """Add ``curvature`` and ``twolayer`` to the ``curvtools`` app."""
    app.command("curvature")(curvature_command)
    app.command("twolayer")(twolayer_command)

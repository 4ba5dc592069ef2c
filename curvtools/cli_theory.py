"""The theory commands of ``curvtools``: ``curvature`` (certified max f'') and ``twolayer``
(Eq. 2 and Lemma 1 on random two-layer nets). Heavy imports happen inside the commands:
``curvature`` never imports torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from curvtools.act_options import with_activation_options
from curvtools.checks import require_int_in, require_unit_open
from curvtools.clirun import PLOT_SUFFIXES, check_output_path, require_expr
from curvtools.errors import BadInput, check_seed
from curvtools.fileio import json_safe, write_json_atomic

DEFAULT_TOL = 1e-9  # = curvtools.certified_table.DEFAULT_TOL (a test checks they agree)
ACT_HELP = ("activation name (`curvtools curvature --act all` lists the built-in ones; expr "
            "needs --expr), or 'all' for every built-in one")


def _resolve_all(act: str, act_params: dict[str, Any]) -> list:
    """The activations ``--act`` names with the given parameters (None: not given)."""
    from curvtools.activations import builtin_names, resolve

    require_expr(act, act_params.get("expr"))
    if act.strip().lower() == "all":
        given = [f"--{k}" for k, v in act_params.items() if v is not None]
        if given:
            raise BadInput(f"--act all uses default parameters; drop {'/'.join(given)}")
        return [resolve(name) for name in builtin_names()]
    return [resolve(act, **act_params)]


def _curvatures(acts: list, tol: float) -> list:
    """Stored results where the table has them (no sympy import then), else computed."""
    from curvtools.certified_table import lookup

    results = [lookup(a, tol) for a in acts]
    if any(r is None for r in results):
        from curvtools.certified import curvature

        results = [r if r is not None else curvature(a, tol=tol)
                   for a, r in zip(acts, results, strict=True)]
    return results


def _fmt(v: float) -> str:
    return f"{v + 0.0:.10g}" if math.isfinite(v) else str(v)  # + 0.0 turns -0 into 0


def _number(value: float, exact: str | None) -> str:
    """``0.5 = 1/2`` for an exact value that reads differently from its float, else the float
    once (``2``, not ``2 = 2``)."""
    shown = _fmt(value)
    if exact is None or exact == shown:
        return shown
    try:  # "2.0" / "2" from sympy: the same number, written once
        if float(exact) == value and "/" not in exact:
            return shown
    except ValueError:
        pass
    return f"{shown} = {exact}"


def _extremum(what: str, value: float, exact: str | None, arg: float, arg_exact: str | None,
              at_infinity: bool, limit: float | None) -> str:
    """``max f'' = 0.5 = 1/2 (argmax 0)``, or for a bound approached as x -> +-inf and not
    attained ``min f'' = inf 0 (not attained, x -> -inf)`` (its exact limit when known)."""
    if at_infinity:
        value = value if limit is None else limit
        exact = exact if limit is not None else None
        bound = "sup" if what == "max" else "inf"
        towards = "-inf" if arg < 0 else "inf"
        return f"{what} f'' = {bound} {_number(value, exact)} (not attained, x -> {towards})"
    where = arg_exact if arg_exact is not None and not arg_exact.endswith("oo") else _fmt(arg)
    return f"{what} f'' = {_number(value, exact)} (arg{what} {where})"


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
    top = _extremum("max", c.max_value, c.max_exact, c.argmax, c.argmax_exact,
                    c.argmax_at_infinity, c.max_limit)
    bottom = _extremum("min", c.min_value, c.min_exact, c.argmin, None, c.argmin_at_infinity,
                       c.min_limit)
    print(f"  {top}; {_enclosure(c.max_lower, c.max_upper, c.max_certified)}")
    print(f"  {bottom}; {_enclosure(c.min_lower, c.min_upper, c.min_certified)}")
    print(f"  curvature = {_fmt(c.curvature)}  [{c.kind}]")
    for note in c.notes:
        print(f"  note: {note}")


@with_activation_options
def curvature_command(
    act: str = typer.Option(..., "--act", help=ACT_HELP),
    json_path: Path | None = typer.Option(None, "--json", help="write the numbers to this file"),
    plot: Path | None = typer.Option(None, "--plot", help="draw f, f', f'' (Figure 2) to this "
                                     ".png/.pdf/.svg"),
    tol: float = typer.Option(DEFAULT_TOL, "--tol", help="certified enclosure width: absolute "
                              "for values below 1 in magnitude, relative above; in (0, 1)"),
    *,
    act_params: dict[str, Any],
) -> None:
    """f, f', f'' and the certified global max/min of f'' (the paper's curvature)."""
    acts = _resolve_all(act, act_params)
    check_output_path("--json", json_path, suffixes=(".json",))
    check_output_path("--plot", plot, suffixes=PLOT_SUFFIXES)
    require_unit_open("--tol", tol)
    results = _curvatures(acts, tol)
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


@with_activation_options
def twolayer_command(
    act: str = typer.Option(..., "--act", help="activation name (`curvtools curvature --act "
                            "all` lists the built-in ones; expr needs --expr)"),
    dim: int = typer.Option(10, "--dim", help="input dimension d"),
    hidden: int = typer.Option(32, "--hidden", help="hidden width h"),
    seed: int = typer.Option(0, "--seed", help="random seed"),
    n: int = typer.Option(10, "--n", help="number of random nets / points"),
    slsqp_starts: int = typer.Option(20, "--slsqp-starts",
                                     help="SLSQP starts for the cross-check solver"),
    json_path: Path | None = typer.Option(None, "--json", help="write the numbers to this file"),
    *,
    act_params: dict[str, Any],
) -> None:
    """Eq. 2 vs torch.func.hessian and Lemma 1 vs the exact minimal perturbation, random nets."""
    if act.strip().lower() == "all":
        raise BadInput("--act all is only for 'curvature'; give one activation")
    (activation,) = _resolve_all(act, act_params)
    for name, value, lo, hi in (("--dim", dim, 1, 2000), ("--hidden", hidden, 1, 20000),
                                ("--n", n, 1, 100000), ("--slsqp-starts", slsqp_starts, 1, 1000)):
        require_int_in(name, value, lo, hi)
    check_seed("--seed", seed)
    check_output_path("--json", json_path, suffixes=(".json",))
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

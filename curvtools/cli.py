"""``curvtools``: the theory and diagnostics command.

Subcommands live in their own modules: ``cli_theory`` (curvature, two-layer Hessian, Lemma 1 on
a quadratic model), ``cli_hessian`` (input-Hessian spectra of trained nets) and ``cli_lemma``
(Lemma 1 on trained nets). Heavy imports (torch, sympy, harness) happen inside the commands, so
``curvtools curvature`` starts fast; only ``hessian`` and ``lemma`` import harness.
"""

from __future__ import annotations

from curvtools import cli_theory
from curvtools.cli_hessian import hessian
from curvtools.cli_lemma import lemma
from curvtools.clirun import new_app, run_app

app = new_app("Activation curvature, the two-layer input Hessian (Eq. 2), Lemma 1 bounds, "
              "and input-Hessian spectra of trained nets (Singla et al., ICCV 2021).")
cli_theory.register(app)
app.command("hessian")(hessian)
app.command("lemma")(lemma)


def main(argv: list[str] | None = None) -> None:
    from curvtools.cpu_allocator import keep_freed_memory

    keep_freed_memory()  # ~10% on CPU, nothing computed changes (see its module)
    run_app(app, "curvtools", argv)


if __name__ == "__main__":
    main()

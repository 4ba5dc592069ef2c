"""Registers ``curvtools hessian`` (:mod:`curvtools.cli_hessian`) and ``curvtools lemma``
(:mod:`curvtools.cli_lemma`).

The names below were defined here before the split and stay importable for older callers
(``bench/hessian_bench.py`` imports ``load_test_images``); new code imports them from their
homes.
"""

from __future__ import annotations

import typer

from curvtools.checkpoint_paths import checkpoints_in_run
from curvtools.cli_hessian import compute_spectra, hessian
from curvtools.cli_lemma import lemma, lemma_quantities, smallest_l2_attack
from curvtools.spectra_report import spectra_summary
from curvtools.testset import load_test_images

__all__ = ["checkpoints_in_run", "compute_spectra", "lemma_quantities", "load_test_images",
           "register", "smallest_l2_attack", "spectra_summary"]


def register(app: typer.Typer) -> None:
    """Add the ``hessian`` and ``lemma`` commands to the ``curvtools`` app."""
    app.command("hessian")(hessian)
    app.command("lemma")(lemma)

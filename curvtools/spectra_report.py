"""Summaries, records, files and printed tables of input-Hessian spectra (``curvtools hessian``)
and of Lemma 1 results (``curvtools lemma``). numpy only; files go through
:mod:`curvtools.fileio` (atomic, strict JSON).

Example::

    >>> s = spectra_summary([1.0, 2.0], [-0.5, -3.0], [True, True], [10, 12])
    >>> s["lambda_max"]["median"], s["share_negative_dominates"]
    (1.5, 0.5)
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from curvtools.fileio import json_safe, write_json_atomic, write_text_atomic

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# per-example bounds of curvtools.spectra, written when present
BOUND_KEYS = ("lambda_max_bound", "lambda_max_upper", "lambda_min_bound", "lambda_min_lower",
              "error_bound", "limited")


def quantile_key(q: float) -> str:
    """``0.05 -> "q05"``: the key of a quantile in a summary."""
    return f"q{int(round(q * 100)):02d}"


def _stats(values) -> dict[str, float]:
    import numpy as np

    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return {"mean": math.nan, "median": math.nan,
                **{quantile_key(q): math.nan for q in QUANTILES}}
    return {"mean": float(finite.mean()), "median": float(np.median(finite)),
            **{quantile_key(q): float(np.quantile(finite, q)) for q in QUANTILES}}


def spectra_summary(lambda_max, lambda_min, converged, iterations) -> dict[str, Any]:
    """Mean, median and quantiles of lambda_max and lambda_min, and the share of examples whose
    most negative eigenvalue is larger in magnitude than the largest one (where power iteration
    would return the wrong eigenvalue). Inputs: arrays of shape [n]."""
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


def spectra_records(indices, labels, spectra: dict) -> list[dict]:
    """One JSON-able dict per example from :func:`curvtools.cli_hessian.compute_spectra`'s
    arrays (``top_k`` [n, k], the others [n])."""
    return [{"index": int(indices[i]), "label": int(labels[i]),
             "lambda_max": float(spectra["lambda_max"][i]),
             "lambda_min": float(spectra["lambda_min"][i]),
             "top_k": [float(v) for v in spectra["top_k"][i]],
             "iterations": int(spectra["iterations"][i]),
             "residual": float(spectra["residual"][i]),
             "error_estimate": float(spectra["error_estimate"][i]),
             "converged": bool(spectra["converged"][i]),
             **{key: (bool(spectra[key][i]) if key == "limited" else float(spectra[key][i]))
                for key in BOUND_KEYS if key in spectra}} for i in range(len(indices))]


def write_json(path: Path, payload: dict) -> None:
    """Strict JSON (NaN/inf as null), atomically."""
    write_json_atomic(path, json_safe(payload), indent=1)


def write_csv(path: Path, rows: list[dict]) -> None:
    """One row per dict (list values joined by ';'), atomically."""
    buffer = io.StringIO()
    flat = [{k: (";".join(f"{v:.10g}" for v in val) if isinstance(val, list) else val)
             for k, val in row.items()} for row in rows]
    writer = csv.DictWriter(buffer, fieldnames=list(flat[0]) if flat else ["index"])
    writer.writeheader()
    writer.writerows(flat)
    write_text_atomic(path, buffer.getvalue())


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Plain right-aligned columns (readable in logs, never truncated to a terminal width)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)))


def print_summary(title: str, summary: dict) -> None:
    """The summary of one checkpoint: a two-row table and one line of shares."""
    print(title)
    keys = ["mean", "median", *[quantile_key(q) for q in QUANTILES]]
    print_table(["", *keys], [[name, *[f"{summary[name][k]:.4g}" for k in keys]]
                              for name in ("lambda_max", "lambda_min")])
    print(f"n={summary['n']}  share |lambda_min| > lambda_max: "
          f"{summary['share_negative_dominates']:.3f}  converged: {summary['share_converged']:.3f}"
          f"  iterations mean/max: {summary['iterations_mean']:.1f}/{summary['iterations_max']}")


def print_curve(rows: list[dict]) -> None:
    """lambda_max per checkpoint of a run (the data of Figure 3)."""
    print("lambda_max per checkpoint (Figure 3)")
    print_table(["checkpoint", "epoch", "mean", "median", "q95", "lambda_min median"],
                [[r["checkpoint"], str(r["epoch"]),
                  *[f"{r['summary'][a][b]:.4g}" for a, b in (
                      ("lambda_max", "mean"), ("lambda_max", "median"), ("lambda_max", "q95"),
                      ("lambda_min", "median"))]] for r in rows])

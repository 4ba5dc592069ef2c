"""paper_figs' own list of the runs each figure and table reads, for run trees without a manifest.

``harness sweep`` writes ``RUNS_DIR/SCALE/SPEC/spec.json`` (the manifest: run names in order and
their paper-scale settings); :mod:`paper_figs.runsets` reads it. Run trees made before the sweep
wrote manifests lack it: then the run order and the paper-scale labels come from this list
(a copy of the bundled specs' run names and labelling settings, kept in step with them by a
test), and anything else from each run's own ``config.json``. paper_figs imports nothing from
harness: this list is data, not the specs.
"""

from __future__ import annotations

from typing import Any

_PRE = {"arch": "preactresnet18", "width": 1.0}


def _acts(dataset: str) -> list[tuple[str, dict[str, Any]]]:
    return [(a, {"dataset": dataset, **_PRE, "act": a})
            for a in ("relu", "lisht", "gelu", "mish", "silu")]


# spec name -> [(run name, paper-scale settings: dataset, arch, width, act, k, beta)]
CATALOG: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "table1-cifar10": _acts("cifar10"),
    "table1-cifar100": _acts("cifar100"),
    "table2-pswish": [(f"beta{b:g}", {"dataset": "cifar10", **_PRE, "act": "pswish",
                                      "beta": float(b)}) for b in (0.5, 1, 2, 4, 10)],
    "table3-leakyrelu": [(f"k{k:g}", {"dataset": "cifar10", **_PRE, "act": "leakyrelu",
                                      "k": float(k)}) for k in (0.5, 0.3, 0.2, 0, -0.2)],
    "fig7-width": [(f"{a}-w{w}", {"dataset": "cifar10", "arch": f"wrn-28-{w}", "width": 1.0,
                                  "act": a})
                   for a in ("relu", "silu") for w in (1, 2, 4, 6, 8, 10, 15, 20)],
    "curvature-sweep": (
        [(f"pswish-beta{b:g}", {"dataset": "cifar10", **_PRE, "act": "pswish", "beta": float(b)})
         for b in (0.25, 0.5, 1, 2, 4, 10, 20, 40)]
        + [(f"leakyrelu-k{k:g}", {"dataset": "cifar10", **_PRE, "act": "leakyrelu",
                                  "k": float(k)}) for k in (0.8, 0.5, 0.3, 0, -0.2, -0.5)]),
    "pswish-curvature": [(f"pswish-beta{b:g}", {"dataset": "cifar10", **_PRE, "act": "pswish",
                                                "beta": float(b)})
                         for b in (0.5, 1, 2, 4, 10, 20)],
    "lisht-fit": [("lisht-lr0.02", {"dataset": "cifar10", **_PRE, "act": "lisht"})],
}

# Scales the bundled specs define (for checking --scale when the runs folder has none yet).
KNOWN_SCALES = ("paper", "mini", "cpu-overfit", "cpu-fit", "gpu-mini")

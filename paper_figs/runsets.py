"""Find the run directories of a spec at a scale and load them (files only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paper_figs.rundir import RunData, load_run
from paper_figs.specs import load_spec, run_dir

# Display names used in figures and tables, in the paper's spelling.
ACT_LABELS = {"relu": "ReLU", "lisht": "LiSHT", "gelu": "GeLU", "mish": "Mish", "silu": "SiLU",
              "pswish": "PSwish", "leakyrelu": "LeakyReLU"}


@dataclass
class Context:
    """Where to read runs from and write outputs to, and which runs were missing."""

    runs_dir: Path
    out_dir: Path
    scale: str = "paper"
    missing: dict[str, list[str]] = field(default_factory=dict)  # entry -> missing run paths

    def runs(self, spec_name: str) -> dict[str, tuple[dict[str, Any], RunData | None]]:
        """``{run name: (spec config at the paper scale, loaded run or None)}`` in spec order.

        The spec config is the paper-scale one, so labels (activation, beta, k) are the paper's
        even when a scale changes the architecture. Runs the scale leaves out are omitted.
        """
        spec = load_spec(spec_name)
        paper_cfgs = dict(spec.run_configs("paper"))
        names = spec.run_names(self.scale if self.scale in spec.scale_names() else "paper")
        if self.scale not in spec.scale_names():
            names = []  # e.g. CIFAR-100 has no mini scale: nothing to read
        return {n: (paper_cfgs[n], load_run(run_dir(self.runs_dir, self.scale, spec.name, n)))
                for n in names}

    def note_missing(self, entry: str, spec_name: str, run_name: str) -> None:
        path = run_dir(self.runs_dir, self.scale, spec_name, run_name)
        self.missing.setdefault(entry, []).append(str(path))

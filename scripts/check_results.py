"""Recompute the numbers of docs/results.md from committed records, independently of paper_figs.

Every number in results.md's tables that rests on committed files is recomputed here with its own
few lines of arithmetic (no paper_figs, no harness: a second implementation, so a bug in one
shows up as a disagreement) and looked for in the row it belongs to. Exit code 0 when every
number is found, 1 otherwise, each disagreement on its own line.

* ``cpu-overfit``: ``docs/figures/cpu-overfit/table1.csv`` (the run folders are lost; numbers
  marked * in results.md come from them and are not checked); the trend slope of ``gap_paper``
  on log2 curvature and its exact one-sided permutation p, all five runs and the four fitted.
* ``cpu-fit``: every finished run under ``docs/experiments/*/runs/cpu-fit/``: its ``gap_paper``
  (train robust over the last 5 epochs minus eval_last.json), ``gap_like`` and Final Test, found
  in the row of its run in results.md's per-run table (when results.md has one).

    python scripts/check_results.py [RESULTS_MD]
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results.md"
# max f'' (certified; ReLU: the paper's approximate curvature |1 - k| with k = 0)
CURVATURE = {"ReLU": 1.0, "LiSHT": 2.0, "GeLU": 0.7978845608028654,
             "Mish": 0.644204637236902, "SiLU": 0.5}


def slope(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return (sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
            / sum((a - mx) ** 2 for a in x))


def exact_p_greater(x: list[float], y: list[float]) -> float:
    """One seed: the share of the len(x)! orderings of x whose slope is >= the observed one."""
    observed = slope(x, y)
    perms = list(itertools.permutations(x))
    return sum(slope(list(p), y) >= observed - 1e-12 for p in perms) / len(perms)


def row_of(text: str, label: str) -> str:
    """The markdown table row whose first cell starts with ``label``."""
    for line in text.splitlines():
        if line.startswith(f"| {label}"):
            return line
    return ""


def check_cpu_overfit(text: str) -> list[str]:
    problems = []
    section = text[text.index("## Scale `cpu-overfit`"):]
    section = section[:section.index("\n## ", 5)]
    rows = list(csv.DictReader(open(ROOT / "docs/figures/cpu-overfit/table1.csv")))
    for r in rows:
        line = row_of(section, r["label"] + " (")
        f = {k: float(r[k]) for k in ("ours_robust_final_train", "ours_robust_final_test",
                                      "ours_robust_best_val", "ours_standard_final_train")}
        want = [f"{f['ours_standard_final_train']:.1f} / {f['ours_robust_final_train']:.1f}",
                f"| {f['ours_robust_final_test']:.1f} |",
                f"| {f['ours_robust_best_val']:.1f} ({r['best_val_epoch']}) |",
                f"| {f['ours_robust_final_train'] - f['ours_robust_final_test']:.1f} |",
                r["regime"]]
        problems += [f"cpu-overfit {r['label']}: {w!r} not in its row" for w in want
                     if w not in line]
    summary = row_of(text, "`cpu-overfit`, Table 1")
    for subset, keep in (("all 5", lambda r: True),
                         ("4 fitted", lambda r: r["regime"] != "underfit")):
        chosen = [r for r in rows if keep(r)]
        x = [math.log2(CURVATURE[r["label"]]) for r in chosen]
        y = [float(r["ours_robust_final_train"]) - float(r["ours_robust_final_test"])
             for r in chosen]
        for value in (f"{slope(x, y):+.1f}", f"{exact_p_greater(x, y):.2f}"):
            if value not in summary:
                problems.append(f"cpu-overfit summary ({subset}): {value} not found")
    return problems


def check_cpu_fit(text: str) -> list[str]:
    problems = []
    for run in sorted(ROOT.glob("docs/experiments/*/runs/cpu-fit/*/*/eval_last.json")):
        folder = run.parent
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
                if line.strip()]
        train = sum(r["train_robust_acc"] for r in rows[-5:]) / 5 * 100
        test = json.loads(run.read_text())["robust_acc"] * 100
        line = row_of(text, f"{folder.parent.name}/{folder.name}")
        if not line:
            continue  # results.md lists no per-run row for it (yet)
        values = [f"{test:.1f}", f"{train - test:.1f}"]
        train_eval = folder / "eval_train_last.json"
        if train_eval.is_file():
            values.append(f"{json.loads(train_eval.read_text())['robust_acc'] * 100 - test:.1f}")
        problems += [f"cpu-fit {folder.name}: {v} not in its row" for v in values
                     if not re.search(rf"(?<![\d.]){re.escape(v)}(?![\d])", line)]
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = (Path(args[0]) if args else RESULTS).read_text()
    problems = check_cpu_overfit(text) + check_cpu_fit(text)
    for p in problems:
        print(p)
    print(f"{'OK' if not problems else 'MISMATCH'}: docs/results.md against the committed "
          f"records ({len(problems)} problem{'s' if len(problems) != 1 else ''})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Read a run directory (files only): config.json, metrics.jsonl and optional evaluations.

Files read (all optional except ``metrics.jsonl``):

* ``metrics.jsonl``: one flat JSON object per finished epoch, keys as in docs/architecture.md
  (accuracies are fractions; paper_figs shows percent).
* ``config.json``: the resolved training settings; only ``epochs`` is used (to tell finished
  from partial runs), looked up at the top level or under ``train_config``/``train``/``config``.
* ``DONE``: the run finished.
* ``eval_last.json`` / ``eval_best.json``: ``harness eval --ckpt RUN/last.pt --json ...`` on the
  last / best-validation checkpoint (the paper reports PGD-20 with 5 restarts). Preferred over
  the per-epoch numbers when present and of the right epoch: a file whose ``epoch`` is not the
  run's last (``eval_last``) or best-validation (``eval_best``) epoch was made before the run
  went on; it is not used, and :attr:`RunData.stale_evals` says so. A file that records
  another ``split`` than ``test`` is not used either.
* ``eval_train_last.json``: ``harness eval --ckpt RUN/last.pt --split train --json ...``, the
  same attack on the run's own training images (``"split": "train"``; a file without that key,
  or of another epoch, is not used and named): the synthesis' like-for-like gap.
* ``hessian_curve.json``: ``curvtools hessian --ckpt RUNDIR --json RUNDIR/hessian_curve.json``
  over the saved ``epoch_NNNN.pt`` checkpoints; see :func:`hessian_points`. A curve that ends
  before the run's last epoch while ``metrics.jsonl`` is newer than it was made before the run
  went on (e.g. extended with ``--set epochs=6``): it is not used, and
  :attr:`RunData.stale_hessian` says so.

Example::

    >>> run = load_run(Path("runs/paper/table1-cifar10/relu"))
    >>> run.final("test_robust_acc"), run.best_val_epoch
    (0.4925, 104)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curvtools.checks import is_int
from curvtools.errors import shown
from curvtools.runfiles import read_epochs, settings_of


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _total_epochs(config: Any) -> int | None:
    epochs = settings_of(config).get("epochs")
    return epochs if is_int(epochs) else None


@dataclass
class RunData:
    """The contents of one run directory."""

    path: Path
    rows: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    eval_last: dict[str, Any] | None = None
    eval_best: dict[str, Any] | None = None
    eval_train_last: dict[str, Any] | None = None
    hessian_curve: Any = None
    stale_evals: list[str] = field(default_factory=list)  # eval files of another epoch, unused
    stale_hessian: str = ""  # why hessian_curve.json was not used ("" when fresh or absent)

    @property
    def epochs_done(self) -> int:
        return self.rows[-1]["epoch"] if self.rows else 0

    @property
    def epochs_total(self) -> int | None:
        return _total_epochs(self.config)

    @property
    def finished(self) -> bool:
        total = self.epochs_total
        return self.done or (total is not None and self.epochs_done >= total)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(epochs, values) of a metrics key, skipping epochs without a finite value."""
        epochs, values = [], []
        for row in self.rows:
            v = row.get(key)
            if isinstance(v, int | float) and math.isfinite(v):
                epochs.append(row["epoch"])
                values.append(float(v))
        return epochs, values

    def final(self, key: str) -> float | None:
        """The last epoch's value of ``key`` (None when absent)."""
        v = self.rows[-1].get(key) if self.rows else None
        return float(v) if isinstance(v, int | float) else None

    @property
    def best_val_row(self) -> dict[str, Any] | None:
        """The epoch with the highest ``val_robust_acc`` (the earliest among ties)."""
        best = None
        for row in self.rows:
            v = row.get("val_robust_acc")
            if isinstance(v, int | float) and (best is None or v > best["val_robust_acc"]):
                best = row
        return best

    @property
    def best_val_epoch(self) -> int | None:
        row = self.best_val_row
        return None if row is None else row["epoch"]

    def mean_last(self, key: str, n: int = 3) -> float | None:
        """Mean of ``key`` over the last ``n`` epochs that have it (Figure 7's points)."""
        _, values = self.series(key)
        if not values:
            return None
        tail = values[-n:]
        return sum(tail) / len(tail)


def load_run(path: str | Path) -> RunData | None:
    """Load a run directory; None when it has no metrics.jsonl with at least one epoch."""
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        return None
    rows = read_epochs(metrics)
    if not rows:
        return None
    config = _read_json(path / "config.json")
    run = RunData(path=path, rows=rows, config=config if isinstance(config, dict) else {},
                  done=(path / "DONE").exists(),
                  hessian_curve=_read_json(path / "hessian_curve.json"))
    run.stale_hessian = _stale_curve(path, run)
    if run.stale_hessian:
        run.hessian_curve = None
    for name, epoch, split in (("eval_last", run.epochs_done, "test"),
                               ("eval_best", run.best_val_epoch, "test"),
                               ("eval_train_last", run.epochs_done, "train")):
        info = _read_eval(path / f"{name}.json")
        if info is not None and info["epoch"] is not None and info["epoch"] != epoch:
            run.stale_evals.append(f"{info['file']} is of epoch {info['epoch']}, the run's "
                                   f"{'best-val' if name == 'eval_best' else 'last'} epoch is "
                                   f"{epoch}")
            info = None
        if info is not None and info["split"] != split and (info["split"] or split != "test"):
            what = f"split {shown(info['split'])}" if info["split"] else "no split"
            run.stale_evals.append(f"{info['file']} records {what}, not {split!r}")
            info = None
        setattr(run, name, info)
    return run


def _stale_curve(path: Path, run: RunData) -> str:
    """Why ``hessian_curve.json`` predates the run's metrics ("" when it does not)."""
    curve = path / "hessian_curve.json"
    pts = _curve_rows(run.hessian_curve)
    if not pts:
        return ""
    last = pts[-1][0]
    try:
        newer = (path / "metrics.jsonl").stat().st_mtime > curve.stat().st_mtime
    except OSError:
        return ""
    if last < run.epochs_done and newer:
        return (f"hessian_curve.json ends at epoch {last} and is older than metrics.jsonl "
                f"(now at epoch {run.epochs_done}): not used; rerun `curvtools hessian --ckpt "
                f"{path} --json {curve}`")
    return ""


_ROBUST_KEYS = ("test_robust_acc", "robust_acc", "adv_acc", "robust_accuracy")
_CLEAN_KEYS = ("test_clean_acc", "clean_acc", "accuracy", "clean_accuracy")


def _find(data: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for scope in (data, data.get("test"), data.get("results"), data.get("summary")):
        if isinstance(scope, dict):
            for key in keys:
                if isinstance(scope.get(key), int | float):
                    return float(scope[key])
    return None


def _read_eval(path: Path) -> dict[str, Any] | None:
    """``{"robust_acc", "clean_acc", "attack", "detail", "file", "epoch", "split"}`` from a
    ``harness eval --json`` file (``epoch``/``split`` None when the file does not say), or None."""
    data = _read_json(path)
    if not isinstance(data, dict):
        return None
    robust, clean = _find(data, _ROBUST_KEYS), _find(data, _CLEAN_KEYS)
    if robust is None and clean is None:
        return None
    epoch, split = data.get("epoch"), data.get("split")
    return {"robust_acc": robust, "clean_acc": clean, "attack": describe_attack(data),
            "detail": describe_eval(data), "file": path.name,
            "epoch": epoch if is_int(epoch) else None,
            "split": split if isinstance(split, str) else None}


def describe_eval(data: dict[str, Any]) -> str:
    """Attack, steps x restarts, threat model, number of images and attack seed of a
    ``harness eval --json`` file, e.g. ``PGD-20x5, linf eps 8/255 step 2/255, 10000 test images,
    attack seed 0`` (parts the file does not record are named unknown)."""
    parts = [describe_attack(data)]
    eps, alpha = data.get("eps_255"), data.get("alpha_255")
    if isinstance(eps, int | float):
        step = f" step {alpha:g}/255" if isinstance(alpha, int | float) else ""
        parts.append(f"{data.get('norm', 'linf')} eps {eps:g}/255{step}")
    n, split = data.get("n"), data.get("split")
    where = split if split in ("train", "val", "test") else "test"
    parts.append(f"{n} {where} images" if isinstance(n, int) else "number of images not recorded")
    if isinstance(data.get("seed"), int):
        parts.append(f"attack seed {data['seed']}")
    return ", ".join(parts)


def describe_attack(data: dict[str, Any]) -> str:
    """A short attack label such as ``PGD-20x5`` from an eval JSON (best effort)."""
    if isinstance(data.get("attack"), str) and data["attack"].lower() != "pgd":
        return data["attack"]
    for scope in (data, data.get("attack"), data.get("config")):
        if isinstance(scope, dict):
            steps = scope.get("steps", scope.get("eval_steps"))
            restarts = scope.get("restarts", scope.get("eval_restarts", 1))
            if isinstance(steps, int):
                return f"PGD-{steps}x{restarts}" if restarts and restarts != 1 else f"PGD-{steps}"
    if isinstance(data.get("attack"), str):
        return data["attack"]
    return "harness eval"


def _curve_rows(curve: Any) -> list[tuple[int, float]]:
    """(epoch, lambda_max mean) pairs from the accepted hessian_curve.json layouts."""
    if isinstance(curve, dict):
        curve = next((curve[k] for k in ("checkpoints", "points", "curve") if
                      isinstance(curve.get(k), list)), None)
    if not isinstance(curve, list):
        return []
    pts = {}
    for row in curve:
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            continue
        name = row.get("checkpoint")
        if isinstance(name, str) and not name.startswith("epoch_"):
            continue  # best.pt / last.pt repeat an epoch_NNNN.pt or are off the grid
        summary = row.get("summary", {}).get("lambda_max", {}) if isinstance(
            row.get("summary"), dict) else {}
        v = summary.get("mean") if isinstance(summary, dict) else None
        if v is None:
            v = row.get("lambda_max_mean", row.get("hessian_lambda_max_mean"))
        if isinstance(v, int | float) and math.isfinite(v):
            pts[row["epoch"]] = float(v)
    return sorted(pts.items())


def hessian_points(run: RunData) -> tuple[list[int], list[float], str] | None:
    """(epochs, lambda_max mean, source) for Figure 3, or None when the run has neither source.

    ``hessian_curve.json`` is preferred: the ``--json`` output of
    ``curvtools hessian --ckpt RUNDIR --json RUNDIR/hessian_curve.json`` (``{"checkpoints":
    [{"checkpoint": "epoch_0010.pt", "epoch": 10, "summary": {"lambda_max": {"mean": ...}}}]}``;
    rows of best.pt/last.pt are skipped). A plain list of ``{"epoch", "lambda_max_mean"}`` rows
    (or ``{"points": [...]}``) is accepted too. Otherwise the metrics key
    ``hessian_lambda_max_mean`` (training with ``hessian_every``) is used.
    """
    pts = _curve_rows(run.hessian_curve)
    if pts:
        return [p[0] for p in pts], [p[1] for p in pts], "hessian_curve.json"
    epochs, values = run.series("hessian_lambda_max_mean")
    if epochs:
        return epochs, values, "metrics.jsonl"
    return None


def hessian_image_spread(run: RunData) -> tuple[list[int], list[float], list[float]] | None:
    """(epochs, 25%, 75% quantile of lambda_max over the test images) from
    ``hessian_curve.json`` (``summary.lambda_max.q25``/``q75``), or None when the run has no
    such file (metrics.jsonl holds only the mean and median over images)."""
    curve = run.hessian_curve
    if isinstance(curve, dict):
        curve = curve.get("checkpoints")
    if not isinstance(curve, list):
        return None
    pts = {}
    for row in curve:
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            continue
        name = row.get("checkpoint")
        if isinstance(name, str) and not name.startswith("epoch_"):
            continue
        lam = row.get("summary", {}).get("lambda_max") if isinstance(row.get("summary"),
                                                                     dict) else None
        if isinstance(lam, dict) and all(isinstance(lam.get(q), int | float)
                                         and math.isfinite(lam[q]) for q in ("q25", "q75")):
            pts[row["epoch"]] = (float(lam["q25"]), float(lam["q75"]))
    if not pts:
        return None
    epochs = sorted(pts)
    return epochs, [pts[e][0] for e in epochs], [pts[e][1] for e in epochs]

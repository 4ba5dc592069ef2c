"""``harness demo``: adversarial training end to end in about two minutes on a laptop CPU.

Offline, on scikit-learn's digits (1,797 images, 8x8 upsampled to 16x16, embedded): for each
activation (ReLU and SiLU by default) train a narrow PreActResNet-18 (width 1/8: 8 to 64
channels) with PGD adversarial training and report activation curvature, train/test robust
accuracy and the robust generalization gap.

Threat model for digits: l_inf with eps = 32/255 (0.125); digit strokes are near 1 on a 0
background, so this is a visible but not class-changing perturbation (CIFAR's 8/255 barely
touches these images). Training attack PGD-2 with step 16/255 (BatchNorm in train mode, as
the paper); per-epoch monitoring with PGD-3 on 100 validation and 100 test images; the table's
numbers come from PGD-10 with step 8/255 (eval mode, one restart) on the whole training split
and test set. These are demo settings, not the paper's protocol.

Example::

    >>> rows = run_demo(epochs=4)
    >>> print(format_table(rows))
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from curvtools.errors import BadInput

# No augmentation: CIFAR's pipeline (horizontal flips, crops shifting a 16x16 digit by up to 4
# pixels) changes what a digit is, and with it the nets stayed near chance for 6 epochs (clean
# train accuracy ~20%); without it they reach ~97% clean in 3 epochs.
DEMO_SETTINGS: dict[str, Any] = {
    "dataset": "digits", "arch": "preactresnet18", "width": 0.125, "batch_size": 32,
    "augment": False,
    "val_subset": 100, "test_subset": 100,
    "eval_batch_size": 512, "lr": 0.05, "eps_255": 32.0, "alpha_255": 16.0, "train_steps": 2,
    "eval_steps": 3, "lr_milestones": None, "device": "cpu", "precision": "fp32",
}
DEMO_EVAL_STEP_255 = 8.0
DEMO_EVAL_STEPS = 10


def activation_curvature(act) -> tuple[float | None, str]:
    """(curvature, how it was obtained) from ``curvtools.symbolic``."""
    from curvtools.certified import curvature

    try:
        result = curvature(act)
    except Exception as err:  # symbolic work on an exotic expression may fail: say so
        return None, f"n/a ({type(err).__name__})"
    return float(result.curvature), result.kind


def run_demo(acts: Sequence[str] = ("relu", "silu"), epochs: int = 4,
             out_dir: str | Path | None = None, seed: int = 0, progress: bool = True,
             log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Train one small net per activation on digits; returns one summary row per activation.

    Rows: ``act``, ``curvature``, ``curvature_kind``, ``train_robust_acc`` / ``test_robust_acc``
    (PGD-10 in eval mode on the training split and the test set, at the last epoch),
    ``robust_gap`` (train minus test), clean accuracies, ``seconds`` and ``run_dir``.
    Runs go to ``out_dir/<act>-digits`` (a temporary folder, deleted afterwards, when None).
    """
    from curvtools.activations import resolve
    from harness.train import run_training

    # everything is checked before the first run trains: activations, settings, folders
    activations = [resolve(name) for name in acts]
    configs = [demo_config(name, epochs, seed) for name in acts]
    if out_dir is not None:
        check_demo_dirs(acts, out_dir)
    holder = tempfile.TemporaryDirectory(prefix="lowcurv-demo-") if out_dir is None else None
    base = Path(holder.name if holder is not None else out_dir)
    rows = []
    try:
        for name, act, cfg in zip(acts, activations, configs, strict=True):
            run_dir = base / f"{name}-digits"
            # overwrite=True only replaces a previous demo run (check_demo_dirs) or nothing
            history = run_training(cfg, run_dir, overwrite=True, progress=progress, log=log)
            rows.append(_summary(act, cfg, run_dir, history))
    finally:
        if holder is not None:
            holder.cleanup()
    return rows


def demo_config(name: str, epochs: int, seed: int):
    """The :class:`harness.config.TrainConfig` of the demo run of activation ``name``."""
    from harness.config import TrainConfig

    return TrainConfig.from_dict(DEMO_SETTINGS | {"act": name, "epochs": epochs, "seed": seed})


def is_demo_run(run_dir: Path, name: str) -> bool:
    """Whether ``run_dir/config.json`` records a demo run of ``name`` (any epochs and seed).

    The demo is rerun over its own runs (``make demo`` twice); any other run must survive.
    """
    try:
        stored = json.loads((run_dir / "config.json").read_text())["train_config"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not isinstance(stored, dict):
        return False
    expected = demo_config(name, 1, 0).to_dict()
    keys = set(DEMO_SETTINGS) | {"act", "k", "beta", "alpha", "expr"}
    return all(stored.get(key) == expected.get(key) for key in keys)


def check_demo_dirs(acts: Sequence[str], out_dir: str | Path) -> list[Path]:
    """The run folders ``out_dir/<act>-digits``; :class:`BadInput` when one holds anything but a
    previous demo run of that activation (the demo replaces its own runs, nothing else)."""
    from curvtools.clirun import check_output_dir

    out_dir = Path(out_dir)
    check_output_dir("--out", out_dir)
    run_dirs = []
    for name in acts:
        run_dir = out_dir / f"{name}-digits"
        check_output_dir("--out", run_dir)
        # hidden entries are lock and temporary files, never a run's data
        used = run_dir.is_dir() and any(not p.name.startswith(".") for p in run_dir.iterdir())
        if used and not is_demo_run(run_dir, name):
            raise BadInput(f"--out {str(out_dir)!r}: {str(run_dir)!r} holds something other "
                           "than a previous demo run; the demo would delete it: choose another "
                           "--out")
        run_dirs.append(run_dir)
    return run_dirs


def _summary(act, cfg, run_dir: Path, history: list[dict]) -> dict[str, Any]:
    """Robust accuracy on the training split (eval mode, PGD-10) and the test set."""
    import torch

    from harness.attacks import ThreatModel, make_attack
    from harness.checkpoint import load_model
    from harness.evaluate import evaluate_robust
    from harness.run_data import load_run_data

    model, _ = load_model(run_dir / "last.pt")
    data = load_run_data(cfg, torch.device("cpu"), channels_last=False)
    attack = make_attack("pgd", ThreatModel.from_255(eps_255=cfg.eps_255,
                                                     step_255=DEMO_EVAL_STEP_255,
                                                     steps=DEMO_EVAL_STEPS))
    train = evaluate_robust(model, data.train.in_order(), attack,
                            generator=torch.Generator().manual_seed(1))
    test = evaluate_robust(model, data.test, attack, generator=torch.Generator().manual_seed(2))
    curv, kind = activation_curvature(act)
    return {"act": act.label, "curvature": curv, "curvature_kind": kind,
            "train_clean_acc": train["clean_acc"], "train_robust_acc": train["robust_acc"],
            "test_clean_acc": test["clean_acc"], "test_robust_acc": test["robust_acc"],
            "robust_gap": train["robust_acc"] - test["robust_acc"],
            "epochs": len(history),
            "seconds": round(sum(r["train_seconds"] + r["eval_seconds"] for r in history), 1),
            "run_dir": str(run_dir)}


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text table, accuracies in percent."""
    head = (f"{'activation':<14} {'curvature':>9} {'train rob':>9} {'test rob':>8} "
            f"{'gap':>6} {'train cln':>9} {'test cln':>8} {'seconds':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        curv = f"{r['curvature']:.3g}" if r["curvature"] is not None else "n/a"
        lines.append(
            f"{r['act']:<14} {curv:>9} {100 * r['train_robust_acc']:>9.1f} "
            f"{100 * r['test_robust_acc']:>8.1f} {100 * r['robust_gap']:>6.1f} "
            f"{100 * r['train_clean_acc']:>9.1f} {100 * r['test_clean_acc']:>8.1f} "
            f"{r['seconds']:>7.1f}")
    lines.append("robust: PGD-10, eps 32/255 (l_inf), eval mode; gap = train robust - test robust;"
                 " curvature: max f'' (smooth) or the paper's |1 - k| (ReLU)")
    return "\n".join(lines)

"""One run's pre-registered outcomes (percentage points) and its place on the curvature axis.

Outcomes (all from files of the run directory; None, with the reason in ``missing``, when a file
is absent or the run did not finish):

* ``gap_paper``: mean ``train_robust_acc`` over the last 5 epochs (the training attack, PGD with
  BatchNorm in train mode: the paper's "final train robust") minus Final Test robust
  (``eval_last.json``);
* ``gap_like``: ``eval_train_last.json`` minus ``eval_last.json`` robust accuracy (the same
  eval-mode attack on the run's training images and on test images: like for like);
* ``test_robust``: ``eval_last.json`` robust accuracy; secondary: Best-Val test robust
  (``eval_best.json``), the two clean gaps, lambda_max at the last measured epoch, the regime.

The curvature comes from the activation registry (``curvtools.activations``): the certified max
f'' of a smooth activation, the registry's ``approx_curvature`` of a non-smooth one; x is its
log2. A name that is not registered in this process (a plugin ``module:ATTRIBUTE``) is never
imported: its curvature is unknown and the run is listed but not placed on the axis.

Example::

    >>> out = run_outcome("pswish-curvature", "beta4", 0, load_run(path), {})
    >>> out.x, out.gap_paper
    (1.0, 31.2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from curvtools.errors import BadInput, shown
from paper_figs.actnames import act_label
from paper_figs.rundir import RunData, hessian_points
from paper_figs.runsets import settings_of
from paper_figs.tables import fit_regime

LAST_EPOCHS = 5  # the paper's "final train robust": mean of the training attack's accuracy
_LEGACY_PARAMS = ("k", "beta", "alpha", "expr")


@dataclass
class RunOutcome:
    """One run: where it sits (level, seed, x) and its outcomes in percentage points."""

    spec: str
    level: str  # the run's name in the spec (a level of the design)
    folder: str  # RUN (seed 0) or RUN-seedN
    seed: int
    act: str  # as config.json records it (a built-in or a plugin reference)
    params: dict[str, Any]
    label: str
    curvature: float | None
    x: float | None  # log2(curvature)
    curvature_source: str
    regime: str
    finished: bool
    epochs: str  # "done/total"
    train_clean_final: float | None
    train_robust_last5: float | None
    gap_paper: float | None
    gap_like: float | None
    test_robust: float | None
    test_robust_best: float | None
    clean_gap_paper: float | None
    clean_gap_like: float | None
    lambda_max_last: float | None
    lambda_max_epoch: int | None
    missing: list[str] = field(default_factory=list)


def activation_of(run: RunData, fallback: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, parameters) of a run's activation: config.json's ``model_config.act``, else its
    settings (``act`` and ``act_params``, or the legacy top-level ``k``/``beta``/...), else the
    manifest's paper-scale labels ``fallback``."""
    model = run.config.get("model_config")
    if isinstance(model, dict) and isinstance(model.get("act"), dict):
        act = model["act"]
        params = act.get("params") if isinstance(act.get("params"), dict) else {}
        return str(act.get("name")), _clean(params)
    s = {**fallback, **settings_of(run.config)}
    params = dict(s["act_params"]) if isinstance(s.get("act_params"), dict) else {}
    params.update({k: s[k] for k in _LEGACY_PARAMS if s.get(k) is not None and k not in params})
    return str(s.get("act")), _clean(params)


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    return {str(k): float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
            for k, v in params.items() if isinstance(v, int | float | str)}


_CURVATURES: dict[str, tuple[float | None, str]] = {}


def curvature_of(name: str, params: dict[str, Any]) -> tuple[float | None, str]:
    """(curvature, where it came from) from the registry, or (None, why not).

    Only names registered in this process are resolved (``curvtools.activations.REGISTRY``);
    a plugin reference from a file is never imported. Smooth: certified max f''
    (``curvtools.certified.curvature``); non-smooth: ``Activation.approx_curvature()``.
    """
    from curvtools.activations import REGISTRY, resolve

    key = f"{name}|{sorted(params.items())}"
    if key in _CURVATURES:
        return _CURVATURES[key]
    if str(name).strip().lower() not in REGISTRY:
        answer: tuple[float | None, str] = (
            None, f"activation {shown(name)} is not built in: paper_figs does not import "
                  "plugins a run names, so its curvature is unknown here")
    else:
        try:
            act = resolve(str(name), **params)
        except BadInput as err:
            answer = None, f"activation {shown(name)}: {err}"
        else:
            answer = _registry_curvature(act)
    _CURVATURES[key] = answer
    return answer


def _registry_curvature(act) -> tuple[float | None, str]:
    if not act.smooth:
        approx = act.approx_curvature()
        if approx is None:
            return None, f"{act.label} is not smooth and the registry gives no approximation"
        return approx, "approximate curvature (registry)"
    from curvtools.certified import curvature

    return float(curvature(act).max_value), "certified max f''"


def _pct(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def run_outcome(spec: str, level: str, seed: int, run: RunData,
                fallback: dict[str, Any]) -> RunOutcome:
    """The outcomes of one run directory (see the module docstring)."""
    act, params = activation_of(run, fallback)
    curvature, source = curvature_of(act, params)
    x = math.log2(curvature) if curvature is not None and curvature > 0 else None
    if curvature is not None and x is None:
        source += f" = {curvature:g}: no log2"
    missing = [] if x is not None else [source]
    last = run.eval_last or {}
    train_eval = run.eval_train_last or {}
    _, robust = run.series("train_robust_acc")
    _, clean = run.series("train_clean_acc")
    robust5 = _pct(sum(robust[-LAST_EPOCHS:]) / len(robust[-LAST_EPOCHS:])) if robust else None
    clean5 = _pct(sum(clean[-LAST_EPOCHS:]) / len(clean[-LAST_EPOCHS:])) if clean else None
    test_r, test_c = _pct(last.get("robust_acc")), _pct(last.get("clean_acc"))
    like_r, like_c = _pct(train_eval.get("robust_acc")), _pct(train_eval.get("clean_acc"))
    hess = hessian_points(run)
    out = RunOutcome(
        spec=spec, level=level, folder=run.path.name, seed=seed, act=act, params=params,
        label=act_label(act, params), curvature=curvature, x=x, curvature_source=source,
        regime=fit_regime(_pct(run.final("train_clean_acc"))), finished=run.finished,
        epochs=f"{run.epochs_done}/{run.epochs_total or '?'}",
        train_clean_final=_pct(run.final("train_clean_acc")), train_robust_last5=robust5,
        gap_paper=_diff(robust5, test_r), gap_like=_diff(like_r, test_r), test_robust=test_r,
        test_robust_best=_pct((run.eval_best or {}).get("robust_acc")),
        clean_gap_paper=_diff(clean5, test_c), clean_gap_like=_diff(like_c, test_c),
        lambda_max_last=hess[1][-1] if hess else None,
        lambda_max_epoch=hess[0][-1] if hess else None, missing=missing)
    where = run.path
    if run.eval_last is None:
        out.missing.append(f"no eval_last.json of the last epoch (harness eval --ckpt "
                           f"{where}/last.pt --json {where}/eval_last.json)")
    if run.eval_train_last is None:
        out.missing.append(f"no eval_train_last.json of the last epoch (harness eval --ckpt "
                           f"{where}/last.pt --split train --json "
                           f"{where}/eval_train_last.json)")
    out.missing += run.stale_evals
    if not run.finished:  # a run still training has no final numbers yet
        out.missing.insert(0, f"not finished ({out.epochs} epochs): outcomes not used")
        out.gap_paper = out.gap_like = out.test_robust = out.test_robust_best = None
        out.clean_gap_paper = out.clean_gap_like = None
    return out

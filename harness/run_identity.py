"""Which run a file belongs to: the id every run gets when it starts, and the settings that
define it.

A run's ``config.json`` and each of its checkpoints hold the same entry
``"run": {"id": <uuid4 hex>, "settings_sha256": ..., "summary": ...}``: the id is drawn when the
run starts (``os.urandom``, so no random stream of training moves) and kept by every resume;
the fingerprint hashes the settings that define the run (the ``train_config`` without
:data:`harness.config.RESUMABLE_CHANGES`, and the model config) and the summary names them
for people (``relu preactresnet18 x1, cifar10, seed 0``).

:func:`check_member` decides whether a checkpoint belongs to a run directory. With an id on
both sides the ids decide. Files written before ids existed (or a ``last.pt`` of the epochs
before a resume that gave the run its id) are judged by what both files hold: the checkpoint's
``metrics`` row must equal ``metrics.jsonl``'s row of its epoch (timings included: a foreign
run of the same settings differs there) and its settings must agree with ``config.json``'s.

Example::

    >>> claim = Claim.of_checkpoint(load_checkpoint("runs/a/last.pt"))
    >>> claim.describe()
    'run 3f2a9c1b0d4e (relu preactresnet18 x1, cifar10, seed 0; settings 9b1c04aa2e7f)'
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from curvtools.checks import is_int, is_number
from curvtools.errors import BadInput, shown
from harness.config import RESUMABLE_CHANGES, upgrade_legacy

RUN_ENTRY = "run"  # the key of the identity in config.json and in checkpoints
_ID = re.compile(r"^[0-9a-f]{32}$")


def new_run_id() -> str:
    """A fresh run id: 32 hex digits from ``os.urandom`` (no random stream of torch, numpy or
    Python's ``random`` is touched, so training stays bit for bit the same)."""
    return uuid.uuid4().hex


def _canonical(value: Any) -> str:
    """One JSON text per value (sorted keys; NaN equal to NaN), for hashing and comparing."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=shown)
    except (TypeError, ValueError, RecursionError):  # mixed key types: compare the quoted form
        return shown(value, 10_000)


def _text(value: Any, limit: int = 40) -> str:
    """A short untrusted value as plain text in a summary (quoted when it is odd or long)."""
    if isinstance(value, str) and value.isprintable() and len(value) <= limit:
        return value
    return shown(value, limit)


def defining_settings(train_config: Any) -> dict[str, Any]:
    """The settings of ``train_config`` that define a run: all but
    :data:`~harness.config.RESUMABLE_CHANGES`, legacy activation keys upgraded."""
    if not isinstance(train_config, Mapping):
        return {}
    try:
        settings = upgrade_legacy(train_config)
    except Exception:  # noqa: BLE001 - odd legacy keys from a file: compare what is there
        settings = dict(train_config)
    return {k: v for k, v in settings.items() if k not in RESUMABLE_CHANGES}


def settings_fingerprint(train_config: Any, model_config: Any) -> str:
    """sha256 of the defining settings and the model config (hex)."""
    text = _canonical({"train_config": defining_settings(train_config),
                       "model_config": model_config if isinstance(model_config, Mapping)
                       else None})
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def settings_summary(train_config: Any, model_config: Any) -> str:
    """``"relu preactresnet18 x1, cifar10, seed 0"`` from a file's entries (any of them may be
    missing or odd: each is quoted, bounded)."""
    tc = train_config if isinstance(train_config, Mapping) else {}
    mc = model_config if isinstance(model_config, Mapping) else {}
    act = mc.get("act")
    if isinstance(act, Mapping):
        name, params = act.get("name", "?"), act.get("params")
    else:
        name, params = tc.get("act", "?"), tc.get("act_params")
    label = _text(name)
    if isinstance(params, Mapping) and params:
        label += "(" + ", ".join(f"{_text(k, 12)}={_text(v, 12)}"
                                 for k, v in list(params.items())[:3]) + ")"
    arch = mc.get("arch", tc.get("arch", "?"))
    if arch == "user-module":
        arch = mc.get("class", arch)
    width = mc.get("width", tc.get("width"))
    return (f"{label} {_text(arch)}" + (f" x{width:g}" if is_number(width) else "")
            + f", {_text(tc.get('dataset', '?'), 60)}, seed {_text(tc.get('seed', '?'), 24)}")


@dataclass(frozen=True)
class Claim:
    """What one file (``config.json`` or a checkpoint) says about the run it belongs to."""

    run_id: str | None
    train_config: Mapping[str, Any] | None
    model_config: Mapping[str, Any] | None

    @classmethod
    def of_record(cls, record: Mapping[str, Any]) -> Claim:
        """The claim of a parsed ``config.json``."""
        return cls(_stored_id(record), _mapping(record.get("train_config")),
                   _mapping(record.get("model_config")))

    @classmethod
    def of_checkpoint(cls, ckpt: Mapping[str, Any]) -> Claim:
        """The claim of a loaded checkpoint."""
        return cls(_stored_id(ckpt), _mapping(ckpt.get("train_config")),
                   _mapping(ckpt.get("config")))

    def describe(self) -> str:
        """``run 3f2a9c1b0d4e (relu preactresnet18 x1, cifar10, seed 0; settings 9b1c04aa2e7f)``."""
        who = f"run {self.run_id[:12]}" if self.run_id else "a run without id"
        return (f"{who} ({settings_summary(self.train_config, self.model_config)}; settings "
                f"{settings_fingerprint(self.train_config, self.model_config)[:12]})")


def _mapping(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _stored_id(entries: Mapping[str, Any]) -> str | None:
    run = entries.get(RUN_ENTRY)
    value = run.get("id") if isinstance(run, Mapping) else None
    return value if isinstance(value, str) and _ID.match(value) else None


def identity_entry(run_id: str, train_config: Mapping[str, Any],
                   model_config: Mapping[str, Any]) -> dict[str, str]:
    """The ``"run"`` entry of config.json and of each checkpoint."""
    return {"id": run_id, "settings_sha256": settings_fingerprint(train_config, model_config),
            "summary": settings_summary(train_config, model_config)}


def _auto_milestones(settings: Mapping[str, Any]) -> list[float] | None:
    epochs = settings.get("epochs")
    return [0.5 * epochs, 0.75 * epochs] if is_int(epochs) else None


def _same_milestones(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal lists, or both auto (the epochs may grow), or a list equal to the other side's
    auto milestones (a run extended with its auto milestones given explicitly)."""
    ma, mb = a.get("lr_milestones"), b.get("lr_milestones")
    if ma is None and mb is None:
        return True
    if ma is None:
        return _canonical(mb) == _canonical(_auto_milestones(a))
    if mb is None:
        return _canonical(ma) == _canonical(_auto_milestones(b))
    return _canonical(ma) == _canonical(mb)


def settings_difference(run: Claim, ckpt: Claim) -> str | None:
    """The first defining setting on which two claims disagree (``"lr"``), or None. Only keys
    both hold are compared: a newer version may record settings an older one did not."""
    a, b = defining_settings(run.train_config), defining_settings(ckpt.train_config)
    for key in sorted(set(a) & set(b)):
        if key == "lr_milestones":
            if not _same_milestones(run.train_config or {}, ckpt.train_config or {}):
                return "train_config.lr_milestones"
        elif _canonical(a[key]) != _canonical(b[key]):
            return f"train_config.{key}"
    ma, mb = run.model_config or {}, ckpt.model_config or {}
    for key in sorted(set(ma) & set(mb)):
        if _canonical(ma[key]) != _canonical(mb[key]):
            return f"model config {key}"
    return None


def check_member(run: Claim | None, rows: list[dict], ckpt: Mapping[str, Any], where: str,
                 holder: str = "the run directory") -> str | None:
    """Refuse (:class:`BadInput`, one line naming both runs) a checkpoint that is not of the run.

    ``run``: the claim of the run's ``config.json`` (None when there is none); ``rows``: its
    ``metrics.jsonl``. Returns the run id to carry on with: the run's, else the checkpoint's,
    else None (a run written before ids: the caller draws one). Nothing to compare with (no
    config.json, no row of the checkpoint's epoch) is no evidence against the checkpoint.
    """
    mine = Claim.of_checkpoint(ckpt)
    if run is not None and run.run_id and mine.run_id:
        if run.run_id != mine.run_id:
            _refuse(where, "its run id differs", run, mine, holder)
        return run.run_id
    epoch = ckpt.get("epoch")
    same_epoch = [r for r in rows if is_int(epoch) and r.get("epoch") == epoch]
    metrics = ckpt.get("metrics")
    if same_epoch and not any(_canonical(r) == _canonical(metrics) for r in same_epoch):
        _refuse(where, f"its epoch-{epoch} metrics row differs from metrics.jsonl's", run, mine,
                holder)
    if run is not None:
        differs = settings_difference(run, mine)
        if differs:
            _refuse(where, f"its {differs} differs from config.json's", run, mine, holder)
    return (run.run_id if run is not None and run.run_id else None) or mine.run_id


def _refuse(where: str, reason: str, run: Claim | None, mine: Claim, holder: str) -> None:
    theirs = run.describe() if run is not None else "?"
    raise BadInput(f"{where} is not of this run ({reason}): {holder} holds {theirs}, the "
                   f"checkpoint {mine.describe()}; refused")

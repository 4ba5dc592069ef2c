"""Experiment specs: which training runs each table and figure of the paper needs.

A spec is a JSON file (bundled ones live in ``harness/specs/``, package data)::

    {"name": "table1-cifar10",
     "description": "...",
     "defaults": {<TrainConfig fields shared by every run>},
     "runs": [{"name": "relu", "overrides": {"act": "relu"}}, ...],
     "resources": {"gpus": 1, "hours": 0.5},            # per run, for a scheduler
     "seeds": [0],                                      # optional: training seeds per run
     "scales": {"mini": {"description": "...",
                         "defaults": {<overrides applied on top of defaults>},
                         "run_overrides": {"relu": {...}},   # optional, per run
                         "only": ["relu", ...],              # optional subset of runs
                         "seeds": [0, 1, 2],                 # optional, replaces the spec's
                         "resources": {...}}}}

A run's config is ``defaults | scale.defaults | run.overrides | scale.run_overrides[run]``
(later wins). The scale ``"paper"`` is the spec as written (no scale section needed).

Run directories are laid out as ``RUNS_DIR/SCALE/SPEC/RUN`` for seed 0 and
``RUNS_DIR/SCALE/SPEC/RUN-seedN`` for another seed N (see :func:`run_dir`), so runs of different
scales never mix and the seed-0 runs made before seeds existed still count. This module reads
JSON only (no torch). The sweep owns the specs; ``python -m paper_figs`` never imports them: it
reads the manifest ``RUNS_DIR/SCALE/SPEC/spec.json`` the sweep writes (:func:`manifest`).

Example::

    >>> spec = load_spec("table1-cifar10")
    >>> [name for name, _ in spec.run_configs("paper")][:2]
    ['relu', 'lisht']
    >>> run_dir("runs", "mini", spec.name, "relu", seed=2)
    PosixPath('runs/mini/table1-cifar10/relu-seed2')
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from curvtools.checks import is_int
from curvtools.errors import BadInput, shown
from curvtools.fileio import write_json_atomic
from curvtools.runfiles import MANIFEST  # RUNS_DIR/SCALE/SPEC/spec.json, read by paper_figs

PAPER_SCALE = "paper"

# Bundled specs write relative ``imagefolder:`` paths (the CIFAR-10 JPEG copy beside the
# checkout); they are relative to the repository root, not to the caller's working directory.
REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST_FORMAT = "lowcurv-sweep-manifest/1"
# The settings that name a run in a figure or table (its paper-scale identity).
LABEL_KEYS = ("dataset", "arch", "width", "act", "k", "beta", "alpha", "epochs")


@dataclass(frozen=True)
class Scale:
    """A named variant of a spec (e.g. ``mini`` for CPU)."""

    name: str
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    run_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    only: tuple[str, ...] | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Spec:
    """A parsed experiment spec (see the module docstring for the file format)."""

    name: str
    description: str
    defaults: dict[str, Any]
    runs: tuple[tuple[str, dict[str, Any]], ...]
    resources: dict[str, Any]
    scales: dict[str, Scale]
    source: str = ""
    seeds: tuple[int, ...] | None = None

    def scale_names(self) -> list[str]:
        """The scales this spec offers; ``paper`` always comes first."""
        return [PAPER_SCALE, *self.scales]

    def scale(self, name: str) -> Scale:
        """The named scale; ``paper`` is the spec as written."""
        if name == PAPER_SCALE:
            return Scale(PAPER_SCALE, resources=dict(self.resources))
        if name not in self.scales:
            raise BadInput(f"spec {shown(self.name)} has no scale {shown(name)}; "
                           f"available: {', '.join(self.scale_names())}")
        return self.scales[name]

    def run_names(self, scale: str = PAPER_SCALE) -> list[str]:
        """Names of the runs at this scale, in spec order."""
        sc = self.scale(scale)
        names = [name for name, _ in self.runs]
        return names if sc.only is None else [n for n in names if n in sc.only]

    def run_configs(self, scale: str = PAPER_SCALE) -> list[tuple[str, dict[str, Any]]]:
        """``[(run name, merged config dict)]`` at this scale (no validation of the fields)."""
        sc = self.scale(scale)
        keep = set(self.run_names(scale))
        out = []
        for name, overrides in self.runs:
            if name not in keep:
                continue
            cfg = {**self.defaults, **sc.defaults, **overrides, **sc.run_overrides.get(name, {})}
            out.append((name, resolve_relative_data(cfg)))
        return out

    def seeds_for(self, scale: str = PAPER_SCALE) -> tuple[int, ...]:
        """Training seeds of every run at this scale: the scale's, else the spec's, else (0,)."""
        return self.scale(scale).seeds or self.seeds or (0,)

    def resources_for(self, scale: str = PAPER_SCALE) -> dict[str, Any]:
        """Per-run resources at this scale (scale entries override the spec's)."""
        return {**self.resources, **self.scale(scale).resources}


def resolve_relative_data(cfg: dict[str, Any]) -> dict[str, Any]:
    """Make a relative dataset path (``imagefolder:PATH``) absolute, relative to the repository
    root: the bundled specs name the CIFAR-10 JPEG copy beside the checkout, wherever the sweep
    is started. (On the command line, ``--dataset``/``--data`` paths are relative to the working
    directory, as usual for a path typed there.)"""
    from harness.datasets import absolute_spec

    dataset = cfg.get("dataset")
    if isinstance(dataset, str):
        cfg = {**cfg, "dataset": absolute_spec(dataset, REPO_ROOT)}
    return cfg


def bundled_spec_names() -> list[str]:
    """Names of the specs shipped in ``harness/specs/`` (file stems), sorted."""
    folder = resources.files("harness.specs")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_spec(name_or_path: str | Path) -> Spec:
    """Load a bundled spec by name (``table1-cifar10``) or a spec file by path.

    Raises :class:`BadInput` when the spec is unknown or malformed.
    """
    text = str(name_or_path)
    path = Path(text)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise BadInput(f"spec file {shown(text)} does not exist")
        try:
            raw, source = path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as err:
            raise BadInput(f"spec file {shown(text)} is not UTF-8 text (byte {err.start}); "
                           f"allowed: a UTF-8 JSON file") from None
    else:
        entry = resources.files("harness.specs") / f"{text}.json"
        if not entry.is_file():
            raise BadInput(f"unknown spec {shown(text)}; bundled: "
                           f"{', '.join(bundled_spec_names())} "
                           "(or give a path to a .json file)")
        raw, source = entry.read_text(), f"harness/specs/{text}.json"
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise BadInput(f"spec {source}: not valid JSON ({err.msg} at line {err.lineno})") from None
    return parse_spec(data, source)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInput(f"{where} must be a JSON object")
    return dict(value)


def _is_folder_name(name: Any) -> bool:
    """Spec and run names become folders (:func:`run_dir`): exactly one path component."""
    return (isinstance(name, str) and name not in ("", ".", "..")
            and not any(c in name for c in "/\\\0"))


def parse_spec(data: Any, source: str = "<spec>") -> Spec:
    """Validate the structure of a spec dict (not the TrainConfig fields) and build a Spec."""
    if not isinstance(data, dict):
        raise BadInput(f"spec {source}: must be a JSON object")
    unknown = set(data) - {"name", "description", "defaults", "runs", "resources", "scales",
                           "seeds"}
    if unknown:
        raise BadInput(f"spec {source}: unknown keys {sorted(unknown)}; allowed: name, "
                       "description, defaults, runs, resources, seeds, scales")
    name = data.get("name")
    if not _is_folder_name(name):
        raise BadInput(f"spec {source}: 'name' {shown(name)} must be a folder name: non-empty, not "
                       f"'.' or '..', without '/', '\\' or NUL")
    runs_raw = data.get("runs")
    if not isinstance(runs_raw, list) or not runs_raw:
        raise BadInput(f"spec {source}: 'runs' must be a non-empty list")
    runs: list[tuple[str, dict[str, Any]]] = []
    for i, run in enumerate(runs_raw):
        if not isinstance(run, dict) or not isinstance(run.get("name"), str) or not run["name"]:
            raise BadInput(f"spec {source}: runs[{i}] needs a non-empty 'name'")
        if not _is_folder_name(run["name"]) or run["name"] in {r for r, _ in runs}:
            raise BadInput(f"spec {source}: run name {shown(run['name'])} is repeated or not a "
                           f"folder name (non-empty, not '.' or '..', without '/', '\\' or NUL)")
        runs.append((run["name"], _mapping(run.get("overrides"), f"{source} runs[{i}].overrides")))
    scales = {}
    for sname, sraw in _mapping(data.get("scales"), f"{source} scales").items():
        scales[sname] = _parse_scale(sname, sraw, {r for r, _ in runs}, source)
    return Spec(name=name, description=str(data.get("description", "")),
                defaults=_mapping(data.get("defaults"), f"{source} defaults"), runs=tuple(runs),
                resources=_mapping(data.get("resources"), f"{source} resources"), scales=scales,
                source=source, seeds=parse_seeds(data.get("seeds"), f"spec {source}: 'seeds'"))


def _parse_scale(name: str, raw: Any, run_names: set[str], source: str) -> Scale:
    where = f"spec {source}: scale {shown(name)}"
    if name == PAPER_SCALE:
        raise BadInput(f"{where}: 'paper' is the spec as written and cannot be redefined")
    raw = _mapping(raw, where)
    unknown = set(raw) - {"description", "defaults", "run_overrides", "only", "resources",
                          "seeds"}
    if unknown:
        raise BadInput(f"{where}: unknown keys {sorted(unknown)}")
    run_overrides = {k: _mapping(v, f"{where} run_overrides[{k}]")
                     for k, v in _mapping(raw.get("run_overrides"), where).items()}
    only = raw.get("only")
    if only is not None:
        if not isinstance(only, list) or not only:
            raise BadInput(f"{where}: 'only' must be a non-empty list of run names")
        only = tuple(only)
    for run in [*run_overrides, *(only or ())]:
        if run not in run_names:
            raise BadInput(f"{where}: names unknown run {shown(run)}")
    return Scale(name, str(raw.get("description", "")), _mapping(raw.get("defaults"), where),
                 run_overrides, only, _mapping(raw.get("resources"), where),
                 parse_seeds(raw.get("seeds"), f"{where}: 'seeds'"))


def parse_seeds(value: Any, where: str = "--seeds") -> tuple[int, ...] | None:
    """Seeds from a JSON list or a ``"0,1,2"`` string: distinct integers >= 0 (None: absent)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise BadInput(f"{where} {shown(value)}: expected integers separated by commas, "
                           "e.g. 0,1,2") from None
    if (not isinstance(value, list | tuple) or not value
            or not all(is_int(s) and s >= 0 for s in value)
            or len(set(value)) != len(value)):
        raise BadInput(f"{where} {shown(value)}: expected a non-empty list of distinct integers "
                       ">= 0, e.g. 0,1,2")
    return tuple(value)


def run_folder_name(run_name: str, seed: int = 0) -> str:
    """``RUN`` for seed 0 (the layout from before seeds existed), ``RUN-seedN`` otherwise."""
    return run_name if seed == 0 else f"{run_name}-seed{seed}"


def run_dir(runs_dir: str | Path, scale: str, spec_name: str, run_name: str,
            seed: int = 0) -> Path:
    """Where a run of a spec lives: ``RUNS_DIR/SCALE/SPEC/RUN`` (``RUN-seedN`` for seed N)."""
    return Path(runs_dir) / scale / spec_name / run_folder_name(run_name, seed)


def manifest(spec: Spec, scale: str, seeds: Sequence[int],
             overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest the sweep writes to ``RUNS_DIR/SCALE/SPEC/spec.json`` for paper_figs.

    It names the spec, scale, seeds and the runs in spec order, each with its folder per seed,
    its paper-scale settings (``paper``: act, k, beta, width, ... -- the labels of a table row)
    and its settings at this scale before ``--set`` (``scale_settings``), plus the ``--set``
    overrides of the sweep that wrote it. paper_figs compares each run's config.json with
    ``scale_settings`` to say when a table's runs were changed from the scale.
    """
    paper = dict(spec.run_configs(PAPER_SCALE))
    runs = []
    for name, cfg in spec.run_configs(scale):
        runs.append({"name": name,
                     "folders": {str(s): run_folder_name(name, s) for s in seeds},
                     "paper": {k: paper[name].get(k) for k in LABEL_KEYS if k in paper[name]},
                     "scale_settings": cfg})
    sc = spec.scale(scale)
    return {"format": MANIFEST_FORMAT, "spec": spec.name, "description": spec.description,
            "scale": scale, "scale_description": sc.description, "seeds": list(seeds),
            "overrides": dict(overrides or {}), "runs": runs}


def write_manifest(spec: Spec, runs_dir: str | Path, scale: str, seeds: Sequence[int],
                   overrides: Mapping[str, Any] | None = None) -> Path:
    """Write :func:`manifest` to ``RUNS_DIR/SCALE/SPEC/spec.json`` (atomically); its path.

    Seeds recorded by an earlier sweep of the same spec and scale are kept (a sweep with
    ``--seeds 1,2`` after one with seed 0 lists all three).
    """
    folder = Path(runs_dir) / scale / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MANIFEST
    earlier: list[int] = []
    try:
        old = json.loads(path.read_text())
        earlier = [s for s in old.get("seeds", []) if isinstance(s, int)]
    except (OSError, ValueError, AttributeError):
        pass
    all_seeds = sorted(set(earlier) | set(seeds))
    write_json_atomic(path, manifest(spec, scale, all_seeds, overrides))
    return path

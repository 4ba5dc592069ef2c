"""Find the run directories of a spec at a scale and load them (files only, never harness).

The run list of ``RUNS_DIR/SCALE/SPEC`` comes from the manifest ``spec.json`` that
``harness sweep`` writes there (run names in order, each run's paper-scale settings for labels,
its settings at the scale, the seeds). Without a manifest (run trees made by older code) it
comes from :data:`paper_figs.catalog.CATALOG` plus each run's ``config.json``, and a note says so.

Seeds: seed 0 of run ``RUN`` lives in ``RUN``, seed N in ``RUN-seedN``; every such folder with
metrics on disk is read, whether or not the manifest lists its seed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curvtools.runfiles import MANIFEST, settings_of
from paper_figs.catalog import CATALOG
from paper_figs.rundir import RunData, load_run

_SEED_SUFFIX = re.compile(r"^(?P<run>.+)-seed(?P<seed>\d+)$")


@dataclass
class RunGroup:
    """One run of a spec over its seeds: paper-scale settings and the loaded seed runs."""

    name: str
    paper: dict[str, Any]
    scale_settings: dict[str, Any] | None
    seeds: dict[int, RunData] = field(default_factory=dict)  # seed -> loaded run, by seed

    @property
    def runs(self) -> list[RunData]:
        return [self.seeds[s] for s in sorted(self.seeds)]

    @property
    def first(self) -> RunData | None:
        return self.runs[0] if self.seeds else None


@dataclass
class SpecRuns:
    """The runs of one spec at one scale, read from disk."""

    spec: str
    folder: Path
    manifest: dict[str, Any] | None
    groups: list[RunGroup]

    @property
    def overrides(self) -> dict[str, Any]:
        return dict((self.manifest or {}).get("overrides") or {})


def _labels_from_config(run: RunData) -> dict[str, Any]:
    s = settings_of(run.config)
    out = {k: s.get(k) for k in ("dataset", "arch", "width", "act", "k", "beta") if k in s}
    if isinstance(s.get("act_params"), dict):
        out.update({k: v for k, v in s["act_params"].items() if k in ("k", "beta")})
    act = run.config.get("model_config", {}).get("act") if isinstance(
        run.config.get("model_config"), dict) else None
    if isinstance(act, dict):
        out.setdefault("act", act.get("name"))
        params = act.get("params") if isinstance(act.get("params"), dict) else {}
        out.update({k: v for k, v in params.items() if k in ("k", "beta")})
    return out


def _seed_folders(folder: Path, name: str) -> dict[int, Path]:
    found = {0: folder / name}
    if folder.is_dir():
        for p in folder.iterdir():
            m = _SEED_SUFFIX.match(p.name)
            if m and m.group("run") == name and p.is_dir():
                found[int(m.group("seed"))] = p
    return found


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """``folder/spec.json`` when it is a readable manifest with a run list, else None."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        return None
    return data


def load_spec_runs(runs_dir: Path, scale: str, spec: str) -> SpecRuns:
    """Read ``RUNS_DIR/SCALE/SPEC``: the manifest (or the catalog) and every seed's run."""
    folder = Path(runs_dir) / scale / spec
    manifest = read_manifest(folder)
    if manifest is not None:
        listed = [(r["name"], dict(r.get("paper") or {}), r.get("scale_settings"))
                  for r in manifest["runs"] if isinstance(r, dict) and "name" in r]
    else:
        listed = [(n, dict(cfg), None) for n, cfg in CATALOG.get(spec, [])]
        known = {n for n, _, _ in listed}
        if folder.is_dir():  # runs on disk the catalog does not know: after it, by name
            extra = sorted(p.name for p in folder.iterdir() if p.is_dir()
                           and (p / "metrics.jsonl").is_file()
                           and not _SEED_SUFFIX.match(p.name) and p.name not in known)
            listed += [(n, {}, None) for n in extra]
    groups = []
    for name, paper, scale_settings in listed:
        group = RunGroup(name, paper, scale_settings)
        for seed, path in sorted(_seed_folders(folder, name).items()):
            run = load_run(path)
            if run is not None:
                group.seeds[seed] = run
        if not group.paper and group.first is not None:
            group.paper = _labels_from_config(group.first)
        groups.append(group)
    return SpecRuns(spec, folder, manifest, groups)


@dataclass
class Context:
    """Where to read runs from and write outputs to; what was missing; notes for the reader."""

    runs_dir: Path
    out_dir: Path
    scale: str = "paper"
    missing: dict[str, list[str]] = field(default_factory=dict)  # entry -> missing run paths
    notes: dict[str, list[str]] = field(default_factory=dict)  # entry -> lines for the output
    _cache: dict[str, SpecRuns] = field(default_factory=dict, repr=False)

    def spec_runs(self, spec_name: str, entry: str | None = None) -> SpecRuns:
        """The runs of ``spec_name`` at this scale (read once); notes a missing manifest."""
        if spec_name not in self._cache:
            self._cache[spec_name] = load_spec_runs(self.runs_dir, self.scale, spec_name)
        found = self._cache[spec_name]
        if entry and found.manifest is None and found.folder.is_dir():
            self.note(entry, f"{found.folder} has no {MANIFEST} (made before `harness sweep` "
                             "wrote manifests): run list and labels from paper_figs' built-in "
                             "list, settings from each run's config.json")
        return found

    def runs(self, spec_name: str, entry: str | None = None
             ) -> dict[str, tuple[dict[str, Any], RunData | None]]:
        """``{run name: (paper-scale settings, the first seed's run or None)}`` in spec order.

        The settings are the paper-scale ones, so labels (activation, beta, k) are the paper's
        even when a scale changes the architecture. Empty when the spec has no folder here.
        """
        found = self.spec_runs(spec_name, entry)
        if not found.folder.is_dir():
            return {}
        return {g.name: (g.paper, g.first) for g in found.groups}

    def groups(self, spec_name: str, entry: str | None = None) -> list[RunGroup]:
        """The runs of a spec with all their seeds; [] when the spec has no folder here."""
        found = self.spec_runs(spec_name, entry)
        return found.groups if found.folder.is_dir() else []

    def note(self, entry: str, line: str) -> None:
        lines = self.notes.setdefault(entry, [])
        if line not in lines:
            lines.append(line)

    def note_missing(self, entry: str, spec_name: str, run_name: str) -> None:
        path = Path(self.runs_dir) / self.scale / spec_name / run_name
        self.missing.setdefault(entry, []).append(str(path))

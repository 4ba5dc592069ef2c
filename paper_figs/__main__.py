"""``python -m paper_figs``: every figure and table of the paper that the run directories allow.

Prints what was written and what is missing (which runs, which figures were skipped); exit 0
when anything rendered, 1 when nothing did.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _forget_working_folder() -> None:
    """``python -m`` puts the working folder first on sys.path, so a module planted there (a
    run tree's ``runs/paper/evil.py``) would be importable; paper_figs needs only the folder
    it comes from. (paper_figs never imports a name a run records either:
    :mod:`paper_figs.outcomes`, :mod:`paper_figs.actnames`.)"""
    home = os.path.realpath(Path(__file__).resolve().parents[1])
    here = os.path.realpath(os.getcwd())
    sys.path[:] = [p for p in sys.path
                   if os.path.realpath(p or ".") != here or here == home]


if __name__ == "__main__":  # only the command, never a process that imports this module
    _forget_working_folder()

import typer  # noqa: E402

from curvtools.clirun import check_output_dir, check_output_path, new_app, run_app  # noqa: E402
from curvtools.errors import BadInput, shown  # noqa: E402

app = new_app("Render the paper's figures and tables from run directories.")


def _missing_lines(missing: list[str]) -> list[str]:
    """Missing runs grouped by their spec folder: 'missing in RUNS/mini/spec: relu, silu'."""
    groups: dict[str, list[str]] = {}
    others = []
    for item in missing:
        path = Path(item)
        if " " in item or path.parent == path:
            others.append(item)
        else:
            groups.setdefault(str(path.parent), []).append(path.name)
    lines = [f"missing in {folder}: {', '.join(names)}" for folder, names in groups.items()]
    return lines + [f"missing: {item}" for item in others]


def where_runs_are(runs_dir: Path, limit: int = 12) -> str:
    """What ``runs_dir`` holds, two levels deep: ``mini: table1-cifar10 (5 runs), ...``."""
    if not runs_dir.is_dir():
        return f"{shown(str(runs_dir))} does not exist"
    found = []
    for scale in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        specs = []
        for spec in sorted(p for p in scale.iterdir() if p.is_dir()):
            n = sum((r / "metrics.jsonl").is_file() for r in spec.iterdir() if r.is_dir())
            if n:
                specs.append(f"{spec.name} ({n} run{'s' if n != 1 else ''})")
        if specs:
            found.append(f"{scale.name}: {', '.join(specs)}")
    if not found:
        return f"{shown(str(runs_dir))} holds no runs at all (RUNS_DIR/SCALE/SPEC/RUN)"
    more = f"; and {len(found) - limit} more scales" if len(found) > limit else ""
    return f"{shown(str(runs_dir))} holds " + "; ".join(found[:limit]) + more


def _has_runs(folder: Path) -> bool:
    return folder.is_dir() and any((r / "metrics.jsonl").is_file()
                                   for spec in folder.iterdir() if spec.is_dir()
                                   for r in spec.iterdir() if r.is_dir())


@app.command()
def main(
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir",
                                  help="Folder of run directories (RUNS_DIR/SCALE/SPEC/RUN), as "
                                       "written by `harness sweep`."),
    out: Path = typer.Option(Path("docs/figures"), "--out",
                             help="Folder for the PNG/PDF figures and Markdown/CSV tables."),
    scale: str = typer.Option("paper", "--scale",
                              help="Which runs to read: 'paper' or a spec scale such as 'mini'."),
    only: list[str] = typer.Option(None, "--only",
                                   help="Render only this entry (fig1..fig7, table1..table3, "
                                        "synthesis); "
                                        "repeatable."),
    json_path: Path = typer.Option(None, "--json",
                                   help="Also write the report (outputs, missing runs) as JSON."),
) -> None:
    """Render every figure and table the runs allow and report what is missing."""
    from paper_figs.catalog import KNOWN_SCALES
    from paper_figs.entries import ENTRIES, render_all
    from paper_figs.runsets import Context

    on_disk = sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() \
        else []
    if scale not in KNOWN_SCALES and scale not in on_disk:
        raise BadInput(f"--scale {shown(scale)}: not a folder of {shown(str(runs_dir))} "
                       f"({', '.join(on_disk) or 'none'}) nor a bundled scale "
                       f"({', '.join(KNOWN_SCALES)})")
    names = [e.name for e in ENTRIES]
    for name in only or []:
        if name not in names:
            raise BadInput(f"--only {shown(name)}: entries are {', '.join(names)}")
    check_output_dir("--out", out)
    check_output_path("--json", json_path)
    results = render_all(Context(runs_dir, out, scale), only or None)
    for r in results:
        if r.outputs:
            status = "rendered " + ", ".join(p.name for p in r.outputs)
        elif r.unavailable:
            status = f"unavailable: {r.unavailable}"
        elif r.error:
            status = f"FAILED: {r.error}"
        else:
            status = "skipped: no runs"
        print(f"{r.name:<9} {r.title}: {status}")
        for line in _missing_lines(r.missing):
            print("          " + line)
        for line in r.notes:
            print("          note: " + line)
    rendered = [r.name for r in results if r.outputs]
    print(f"{len(rendered)}/{len(results)} entries rendered into {out}")
    if not _has_runs(runs_dir / scale):
        print(f"no runs at scale {scale!r} ({runs_dir / scale}); {where_runs_are(runs_dir)}")
    if json_path is not None:
        json_path.write_text(json.dumps([{"name": r.name, "outputs": [str(p) for p in r.outputs],
                                          "missing": r.missing, "unavailable": r.unavailable,
                                          "error": r.error, "notes": r.notes}
                                         for r in results], indent=2))
    if not rendered:
        raise typer.Exit(1)


if __name__ == "__main__":
    run_app(app, "python -m paper_figs")

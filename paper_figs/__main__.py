"""``python -m paper_figs``: every figure and table of the paper that the run directories allow.

Prints what was written and what is missing (which runs, which figures were skipped); exit 0
when anything rendered, 1 when nothing did.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from curvtools.clirun import check_output_dir, check_output_path, new_app, run_app
from curvtools.errors import BadInput

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
        raise BadInput(f"--scale {scale!r}: not a folder of {str(runs_dir)!r} "
                       f"({', '.join(on_disk) or 'none'}) nor a bundled scale "
                       f"({', '.join(KNOWN_SCALES)})")
    names = [e.name for e in ENTRIES]
    for name in only or []:
        if name not in names:
            raise BadInput(f"--only {name!r}: entries are {', '.join(names)}")
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
    if json_path is not None:
        json_path.write_text(json.dumps([{"name": r.name, "outputs": [str(p) for p in r.outputs],
                                          "missing": r.missing, "unavailable": r.unavailable,
                                          "error": r.error, "notes": r.notes}
                                         for r in results], indent=2))
    if not rendered:
        raise typer.Exit(1)


if __name__ == "__main__":
    run_app(app, "python -m paper_figs")

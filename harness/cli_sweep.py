"""``harness sweep SPEC``: run the missing runs of an experiment spec, skip finished ones.

The planning and the execution live in :mod:`harness.sweep`; this module is the typer command.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from curvtools.act_options import trust_typed_plugins
from curvtools.clirun import check_output_dir, check_output_path, quoted_path
from curvtools.fileio import write_json_atomic
from harness.datasets import help_text as dataset_help_text
from harness.specs import bundled_spec_names


def spec_help() -> str:
    """SPEC's help, from the bundled specs (:func:`harness.specs.bundled_spec_names`)."""
    return (f"Bundled spec name ({', '.join(bundled_spec_names())}; in harness/specs/) or a "
            f"path to a spec .json file.")


def _plan_rows(plan) -> list[dict]:
    return [{"name": r.name, "status": r.status, "epochs_done": r.epochs_done,
             "epochs_total": r.epochs_total, "out_dir": str(r.out_dir), "detail": r.detail,
             "settings": r.settings} for r in plan]


def sweep(
    spec: str = typer.Argument(..., help=spec_help()),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir",
                                  help="Folder of run directories; runs go to "
                                       "RUNS_DIR/SCALE/SPEC/RUN."),
    scale: str = typer.Option("paper", "--scale",
                              help="'paper' (the paper's settings) or a scale the spec defines, "
                                   "e.g. 'mini' (CPU-sized), 'gpu-mini' (one GPU)."),
    only: list[str] = typer.Option(None, "--only",
                                   help="Run only this run of the spec (repeatable)."),
    seeds: str = typer.Option(None, "--seeds",
                              help="Training seeds, comma-separated, e.g. 0,1,2 (default: the "
                                   "spec's 'seeds', else 0). Seed 0 trains in "
                                   "RUNS_DIR/SCALE/SPEC/RUN, seed N in .../RUN-seedN."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Print the plan (finished / resume / start) and exit."),
    executor: str = typer.Option("local", "--executor",
                                 help="Where runs execute: 'local' (here: one after another, "
                                      "or one per GPU with --gpus N) or 'slurm' (one job per "
                                      "run through submitit; see docs/scale.md)."),
    gpus: int = typer.Option(None, "--gpus", min=1,
                             help="--executor local: run N runs at a time, each in its own "
                                  "process pinned to one GPU (CUDA_VISIBLE_DEVICES); logs in "
                                  "RUNS_DIR/SCALE/SPEC/logs/."),
    partition: str = typer.Option(None, "--partition",
                                  help="--executor slurm: the SLURM partition."),
    account: str = typer.Option(None, "--account",
                                help="--executor slurm: the SLURM account to charge."),
    timeout_min: int = typer.Option(None, "--timeout-min", min=1,
                                    help="--executor slurm: wall-clock limit per job in "
                                         "minutes (default: the spec's resources.hours)."),
    wait: bool = typer.Option(False, "--wait/--no-wait",
                              help="--executor slurm: block until all jobs ended and report "
                                   "them (default: return after submitting)."),
    data: str = typer.Option(None, "--data",
                             help=f"Override every run's dataset: {dataset_help_text()} (a "
                                  f"relative PATH is from the current folder; the bundled "
                                  f"specs' own paths are from the repository root)."),
    data_dir: str = typer.Option(None, "--data-dir",
                                 help="Override every run's data_dir (download/cache folder)."),
    set_: list[str] = typer.Option(None, "--set",
                                   help="Override a TrainConfig field in every run, KEY=VALUE "
                                        "(VALUE read as JSON if it parses), repeatable; e.g. "
                                        "--set device=cuda --set epochs=1."),
    keep_going: bool = typer.Option(False, "--keep-going",
                                    help="After a failed run (e.g. diverged), go on with the "
                                         "next; exit code 1 at the end if any failed."),
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="Show each run's progress bar."),
    json_path: Path = typer.Option(None, "--json",
                                   help="Also write the plan (and the runs done) as JSON here."),
) -> None:
    """Run every missing run of SPEC in sequence; finished runs are skipped, unfinished resumed."""
    from harness.executors import make_executor  # local, local --gpus N, slurm
    from harness.specs import parse_seeds
    from harness.sweep import (
        STATUSES,
        check_no_conflicts,
        load_spec,
        parse_settings,
        plan_sweep,
        write_manifest,
    )

    check_output_dir("--runs-dir", runs_dir, writable=False)  # --dry-run only reads
    spec_file = [Path(spec)] if Path(spec).is_file() else []
    spec_obj = load_spec(spec)
    settings = parse_settings(set_ or [])
    trust_typed_plugins(settings.get("act"), settings.get("arch"))  # --set act=mypkg.acts:X
    if data is not None:
        settings["dataset"] = data
    if data_dir is not None:
        settings["data_dir"] = data_dir
    runner = make_executor(executor, progress=progress, keep_going=keep_going, gpus=gpus,
                           resources=spec_obj.resources_for(scale), partition=partition,
                           account=account, timeout_min=timeout_min, wait=wait)
    seed_list = parse_seeds(seeds) if seeds is not None else spec_obj.seeds_for(scale)
    plan = plan_sweep(spec_obj, runs_dir, scale, only=only or None, settings=settings,
                      seeds=seed_list)
    # before any output: a plan file inside a run folder could replace that run's config.json
    check_output_path("--json", json_path, inputs=spec_file,
                      run_dirs=[Path(r.out_dir) for r in plan])
    counts = {s: sum(r.status == s for r in plan) for s in STATUSES}
    print(f"spec {spec_obj.name} ({spec_obj.source}), scale {scale}, seeds "
          f"{','.join(map(str, seed_list))}: {len(plan)} runs; "
          + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for run in plan:
        print("  " + run.describe())
    res = spec_obj.resources_for(scale)
    if res:
        print("  resources per run: " + ", ".join(f"{k}={v}" for k, v in res.items()))
    ran: list[str] = []
    failed: dict[str, str] = {}
    if not dry_run:
        check_no_conflicts(plan)
        if any(r.needs_work for r in plan) and hasattr(runner, "check_ready"):
            runner.check_ready()  # e.g. no sbatch: refuse before writing anything
        # the manifest python -m paper_figs reads (run order, labels, the scale's settings)
        print(f"  manifest: {write_manifest(spec_obj, runs_dir, scale, seed_list, settings)}")
        from harness.train import TrainingDiverged

        try:
            ran = runner.execute(plan)
        except TrainingDiverged as err:  # as `harness train`: one line, exit code 3
            print(f"error: {err} (rerun with --keep-going to go on with the other runs)",
                  file=sys.stderr)
            raise typer.Exit(3) from None
        except KeyboardInterrupt:  # where the sweep stands; the runs resume from last.pt
            print(interrupted_line(spec_obj.name, plan, json_path), file=sys.stderr)
            raise typer.Exit(130) from None
        failed = getattr(runner, "failed", {})
        done = "submitted" if executor == "slurm" and not wait else "finished"
        print(f"sweep {spec_obj.name}: {done} {len(ran)} runs, {len(failed)} failed, "
              f"{counts['finished']} were already finished")
    if json_path is not None:
        write_json_atomic(json_path, {"spec": spec_obj.name, "scale": scale,
                                      "seeds": list(seed_list), "dry_run": dry_run,
                                      "plan": _plan_rows(plan), "ran": ran, "failed": failed})
    if failed:
        raise typer.Exit(1)


def interrupted_line(spec_name: str, plan, json_path: Path | None) -> str:
    """Ctrl-C during a sweep: which runs are finished now, which are not, how to continue."""
    from harness.sweep import finished_epochs

    finished, unfinished = [], []
    for run in plan:
        done = finished_epochs(run.out_dir) if run.out_dir.exists() else 0
        (finished if done >= run.epochs_total else unfinished).append(
            run.name if done >= run.epochs_total else f"{run.name} ({done}/{run.epochs_total})")
    written = f"; {quoted_path(json_path)} was not written" if json_path is not None else ""
    return (f"interrupted: sweep {spec_name} has {len(finished)} of {len(plan)} runs finished"
            + (f"; unfinished: {', '.join(unfinished)}" if unfinished else "")
            + f"{written}; run the same harness sweep command again to continue (finished runs "
              "are skipped, the others resume from their last.pt)")


def register(app: typer.Typer) -> None:
    """Add the ``sweep`` command to the ``harness`` app."""
    app.command("sweep")(sweep)

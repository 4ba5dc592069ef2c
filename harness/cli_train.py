"""``harness train``, ``harness eval`` and ``harness demo``.

Every :class:`harness.config.TrainConfig` setting is an option of ``train`` with the paper's
default (``tests/test_recipes.py`` checks both ways, and that docs/guide.md lists each). Exit
codes: 0 done, 2 bad input (one line on stderr), 3 training diverged (NaN/inf loss;
``best.pt``/``last.pt`` keep the last good epoch).
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from curvtools.act_options import (
    activation_parameters,
    trust_typed_plugins,
    with_activation_options,
)
from curvtools.clirun import check_output_path, quoted_path, require_expr
from curvtools.errors import BadInput, check_seed, shown
from curvtools.fileio import json_safe, write_json_atomic
from curvtools.progress import advance, new_progress
from harness.datasets import REGISTRY as DATASETS
from harness.models import arch_help as registered_archs
from harness.report import robust_above_clean_note

EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
# The attack registry imports torch (1-2 s), which --help does not wait for: the help names
# the registry and a few of its entries (a test checks they are registered) instead of listing
# it, so a new attack changes no file here. A wrong name lists every registered one.
ATTACK_HELP = ("A name of the attack registry (harness.attacks; a wrong name lists them all), "
               "e.g. pgd (ours, the paper's), autoattack (linf or l2), apgd-ce, fgsm, or "
               "torchattacks:NAME[:key=value,...] for any torchattacks attack.")


def dataset_help() -> str:
    """``--dataset``'s help, from the dataset registry (:mod:`harness.datasets`, no torch)."""
    forms = [f"{s.name}{':PATH' if s.takes_path else ''}: {s.help}" for s in DATASETS.values()]
    return "; ".join(forms) + ". A relative PATH is from the current folder."


def arch_help() -> str:
    """``--arch``'s help, from the architecture registry (:mod:`harness.models`, no torch)."""
    return (f"{registered_archs()}; or a plugin: module:ATTRIBUTE naming an ArchSpec, or a "
            f"name a package declares in the lowcurv.architectures entry points.")


# harness eval's options that set a threat-model field (refused when the attack ignores them):
# the field of harness.eval_checkpoint.EvalThreat each sets
THREAT_OPTIONS = {"steps": "steps", "restarts": "restarts", "eps_255": "eps_255",
                  "alpha_255": "step_255", "norm": "norm"}


def _write_json(path: Path | None, payload: Any) -> None:
    """Write ``payload``; the path was checked by ``check_output_path`` before any work."""
    if path is not None:
        write_json_atomic(path, json_safe(payload))


def _parse_milestones(text: str) -> list[float] | None:
    if text.strip().lower() == "auto":
        return None
    try:
        return [float(t) for t in re.split(r"[,\s]+", text.strip()) if t]
    except ValueError:
        raise BadInput(f"--lr-milestones {shown(text)} must be comma-separated epochs "
                       f"(e.g. 100,150) or 'auto'") from None


def default_run_name(act_label: str, dataset: str) -> str:
    """``runs/<act label>-<dataset>`` as a safe folder name, e.g. ``pswish-beta-4-cifar10``."""
    from harness.datasets import parse

    entry, path = parse(dataset)
    data = Path(path.rstrip("/")).name if path else entry.name
    data = data or "data"
    return re.sub(r"[^A-Za-z0-9.]+", "-", f"{act_label}-{data}").strip("-")


def _explicit_options(ctx: typer.Context) -> set[str]:
    """Names of the parameters the user typed on the command line."""
    from curvtools.clirun import click

    source = click.core.ParameterSource
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) in (source.COMMANDLINE, source.ENVIRONMENT)}


def _resume_settings(out: Path, given: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """The run's stored settings, overridden by the options typed for this invocation.

    ``last.pt`` is checked to be this run's first (a foreign one's settings would otherwise be
    taken for the run's). An activation typed without its parameters takes the run's
    parameters when it is the run's activation, else none of them (another activation's
    parameters would not fit it, hiding the real difference: the activation).
    """
    from harness.rundir import CLI, RunDir

    run = RunDir(out, caller=CLI)
    if not run.last.is_file():
        return given  # run_training explains what to do (start, or start over)
    from harness.config import upgrade_legacy

    ckpt, _, _ = run.load_last()
    stored = upgrade_legacy(ckpt.get("train_config") or {})
    settings = stored | {k: v for k, v in given.items() if k in explicit}
    if "act" in explicit and "act_params" not in explicit and given["act"] != stored.get("act"):
        settings["act_params"] = given["act_params"]
    return settings


@with_activation_options
def train_command(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option(help=dataset_help())] = "cifar10",
    data_dir: Annotated[str, typer.Option(help="Where torchvision keeps/downloads CIFAR.")
                        ] = "data",
    download: Annotated[bool, typer.Option(help="Download CIFAR when missing.")] = True,
    val_fraction: Annotated[float, typer.Option(help="Validation share of the training images "
                                                     "(paper: 0.1 = 5,000 of 50,000).")] = 0.1,
    split_seed: Annotated[int, typer.Option(help="Seed of the train/val split and subsets.")] = 0,
    train_subset: Annotated[int | None, typer.Option(help="Class-balanced subset of the "
                                                          "training split (default: all).")] = None,
    val_subset: Annotated[int | None, typer.Option(help="Subset of the validation split used "
                                                        "each epoch (default: all).")] = None,
    test_subset: Annotated[int | None, typer.Option(help="Subset of the test set used each "
                                                         "epoch (default: all).")] = None,
    augment: Annotated[bool, typer.Option(help="Reflect-pad 4, random crop, horizontal flip.")
                       ] = True,
    arch: Annotated[str, typer.Option(help=arch_help())] = "preactresnet18",
    width: Annotated[float, typer.Option(help="Channel multiplier (1.0 = paper).")] = 1.0,
    act: Annotated[str, typer.Option(help="Activation name from the registry "
                                          "(`curvtools curvature --act all` lists the "
                                          "built-in ones; expr needs --expr).")] = "relu",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 200,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 128,
    eval_every: Annotated[int, typer.Option(
        help="Evaluate validation and test every N epochs and at the last epoch; best.pt is "
             "then the best of the evaluated epochs. 1 (default) is the paper's protocol: every "
             "epoch.")] = 1,
    eval_batch_size: Annotated[int, typer.Option(help="Batch size of per-epoch evaluation.")
                               ] = 512,
    lr: Annotated[float, typer.Option(help="Initial learning rate.")] = 0.1,
    lr_milestones: Annotated[str, typer.Option(help="Epochs where lr is multiplied by "
                                                    "--lr-gamma, comma-separated, or 'auto' "
                                                    "(default: 50% and 75% of --epochs, "
                                                    "the paper's 100,150 of 200).")] = "auto",
    lr_gamma: Annotated[float, typer.Option(help="LR factor at each milestone.")] = 0.1,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="Weight decay on all parameters.")] = 5e-4,
    eps_255: Annotated[float, typer.Option(help="Attack radius in 1/255 units.")] = 8.0,
    alpha_255: Annotated[float, typer.Option(help="PGD step in 1/255 units.")] = 2.0,
    norm: Annotated[str, typer.Option(help="Threat model: linf or l2.")] = "linf",
    train_steps: Annotated[int, typer.Option(help="PGD steps of the training attack.")] = 10,
    train_restarts: Annotated[int, typer.Option(help="Restarts of the training attack.")] = 1,
    eval_steps: Annotated[int, typer.Option(help="PGD steps of the per-epoch evaluation.")] = 10,
    eval_restarts: Annotated[int, typer.Option(help="Restarts of the per-epoch evaluation.")
                             ] = 1,
    attack_bn: Annotated[str, typer.Option(help="BatchNorm mode during the training attack: "
                                                "train (authors' code) or eval.")] = "train",
    allow_unusual_eps: Annotated[bool, typer.Option(
        "--allow-unusual-eps",
        help="Accept an --eps-255 below 1 or above 255 (else refused: likely given in the "
             "wrong units).")] = False,
    train_attack: Annotated[str, typer.Option(
        help="Attack of the training: pgd (the paper's) or another name of the attack registry, "
             "as harness eval --attack takes; one that runs the model in eval mode (torchattacks' "
             "do) needs --attack-bn eval.")] = "pgd",
    eval_attack: Annotated[str, typer.Option(
        help="Attack of the per-epoch validation and test evaluation: pgd or another name of "
             "the attack registry, as harness eval --attack takes.")] = "pgd",
    seed: Annotated[int, typer.Option(help="Seed of init, data order and attack starts.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (fp16 autocast with loss scaling on "
                                                "CUDA, bf16 on CPUs with bf16 units, else "
                                                "fp32), fp32, bf16 or fp16.")] = "auto",
    channels_last: Annotated[bool | None, typer.Option(
        "--channels-last/--no-channels-last",
        help="channels_last memory format (default: on for CUDA, off on CPU).")
    ] = None,
    compile: Annotated[bool, typer.Option(help="torch.compile the model.")] = False,
    compile_mode: Annotated[str, typer.Option(help="torch.compile mode with --compile: default "
                                                   "or max-autotune-no-cudagraphs (tunes "
                                                   "kernels; minutes of compiling).")
                            ] = "default",
    cuda_graphs: Annotated[bool | None, typer.Option(
        "--cuda-graphs/--no-cuda-graphs", help="Replay each training step from a CUDA graph "
                                               "(default: on for CUDA).")] = None,
    sync_bn: Annotated[bool, typer.Option(help="Data parallel (torchrun): BatchNorm "
                                              "statistics over the global batch "
                                              "(SyncBatchNorm).")] = False,
    save_every: Annotated[int, typer.Option(help="Also keep epoch_NNNN.pt every N epochs "
                                                 "(0 = off).")] = 0,
    hessian_every: Annotated[int, typer.Option(help="Log input-Hessian lambda_max every N "
                                                    "epochs (0 = off).")] = 0,
    hessian_examples: Annotated[int, typer.Option(help="Test images for --hessian-every.")] = 100,
    out: Annotated[Path | None, typer.Option(help="Run directory (default "
                                                  "runs/<act>-<dataset>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from last.pt "
                                              "(stored settings; options typed now override "
                                              "epochs, device, ...).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete the run in --out and start over.")
                         ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the final metrics "
                                                                  "row and run info as JSON.")
                         ] = None,
    *,
    act_params: dict[str, Any],
) -> None:
    """PGD adversarial training (the paper's protocol by default) into a run directory."""
    check_seed("--seed", seed)
    check_seed("--split-seed", split_seed)
    require_expr(act, act_params.get("expr"))
    act_params = {k: v for k, v in act_params.items() if v is not None}
    from harness.config import TrainConfig
    from harness.datasets import absolute_data_settings
    from harness.distributed import context_from_env
    from harness.rundir import CLI
    from harness.train import TrainingDiverged, run_training

    typed = {*activation_parameters(), "act_param"}  # the activation's options
    given = {name: value for name, value in ctx.params.items()
             if name not in ("out", "resume", "overwrite", "progress", "json_path", *typed)}
    given["act_params"] = act_params
    given["lr_milestones"] = _parse_milestones(lr_milestones)
    given = absolute_data_settings(given)  # the run must find its data from any directory
    if out is None:
        label = TrainConfig.from_dict(given).activation().label
        out = Path("runs") / default_run_name(label, dataset)
    check_output_path("--json", json_path, run_dirs=[out], made_folders=[out])
    explicit = _explicit_options(ctx)
    if explicit & typed:
        explicit.add("act_params")
    settings = _resume_settings(out, given, explicit) if resume else given
    cfg = TrainConfig.from_dict(settings)
    try:
        rows = run_training(cfg, out, resume=resume, overwrite=overwrite, progress=progress,
                            log=None if progress else print, caller=CLI)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(EXIT_DIVERGED) from None
    if not context_from_env().is_main:  # torchrun: rank 0 reports
        return
    evaluated = [r for r in rows if "val_robust_acc" in r]
    best = max(evaluated, key=lambda r: r["val_robust_acc"]) if evaluated else None
    print(f"done: {out} ({len(rows)} epoch{'' if len(rows) == 1 else 's'}; best val robust "
          f"{100 * best['val_robust_acc']:.2f}% at epoch {best['epoch']})" if best else
          f"done: {out}")
    _write_json(json_path, {"run_dir": str(out), "last": rows[-1] if rows else None,
                            "best_val": best})


def eval_command(
    ctx: typer.Context,
    ckpt: Annotated[Path, typer.Option(help="Checkpoint (best.pt, last.pt, epoch_NNNN.pt), or "
                                            "a run directory (its last.pt).")],
    n: Annotated[int | None, typer.Option(help="Images of the split (class-balanced subset; "
                                               "default all).")] = None,
    split: Annotated[str, typer.Option(
        help="test (default), or train / val: the run's own training / validation images "
             "(its split and subsets, unaugmented), for a like-for-like train-test gap.")
    ] = "test",
    steps: Annotated[int, typer.Option(help="PGD steps.")] = 20,
    restarts: Annotated[int | None, typer.Option(
        help="Restarts, worst case kept per example (default: 5 for pgd, the paper's "
             "PGD-20 x 5; 1 for other attacks).")] = None,
    eps_255: Annotated[float | None, typer.Option(
        help="Attack radius in 1/255 units (default: the run's; 8 for the paper).")] = None,
    alpha_255: Annotated[float | None, typer.Option(
        help="PGD step in 1/255 units (default: the run's; 2 for the paper).")] = None,
    norm: Annotated[str | None, typer.Option(help="linf or l2 (default: the run's).")] = None,
    attack: Annotated[str, typer.Option(help=ATTACK_HELP)] = "pgd",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the random starts.")] = 0,
    precision: Annotated[str, typer.Option(help="fp32 (default), bf16 or fp16 autocast, or "
                                                "auto (as harness train).")] = "fp32",
    dataset: Annotated[str | None, typer.Option(help="Override the run's dataset.")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Override the run's data_dir.")] = None,
    allow_unusual_eps: Annotated[bool, typer.Option(
        "--allow-unusual-eps",
        help="Accept an --eps-255 below 1 (else refused: likely a [0, 1] fraction such as "
             "0.031 given where 1/255 units belong).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the result as JSON.")
                         ] = None,
) -> None:
    """Clean and robust test accuracy of a checkpoint (PGD-20, 5 restarts by default)."""
    check_seed("--seed", seed)
    check_eval_eps(eps_255, allow_unusual_eps)
    from harness.attacks import check_attack_name

    check_attack_name(attack)  # torchattacks:APGD:steps=1 beside --steps: refused before work
    from curvtools.checkpoint_paths import resolve_checkpoints

    choice = resolve_checkpoints(ckpt, "--ckpt", series=False)
    if choice.note:
        print(choice.note, file=sys.stderr)
    ckpt = choice.paths[0]
    check_output_path("--json", json_path, inputs=[ckpt], run_dirs=[ckpt.parent])
    from harness.eval_checkpoint import EvalThreat, evaluate_checkpoint

    # the threat options typed; the others are the run's or the reporting protocol's
    values = {"norm": norm, "eps_255": eps_255, "alpha_255": alpha_255, "steps": steps,
              "restarts": restarts}
    threat = EvalThreat(**{THREAT_OPTIONS[o]: values[o] for o in _explicit_options(ctx)
                           if o in THREAT_OPTIONS})
    bar = _EvalBar(progress, requested=n, split=split)
    try:
        with bar:
            result = evaluate_checkpoint(
                choice.run_dir or ckpt, threat, attack=attack, n=n, split=split, device=device,
                batch_size=batch_size, seed=seed, precision=precision, dataset=dataset,
                data_dir=data_dir, on_start=bar.start, on_batch=bar.step)
    except KeyboardInterrupt:
        print(bar.interrupted(json_path), file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    print(f"{ckpt} (epoch {result['epoch']}), {result['n']} {split} images: clean "
          f"{100 * result['clean_acc']:.2f}%, robust {100 * result['robust_acc']:.2f}% "
          f"[{bar.what}, {result['precision']}, {result['seconds']:.1f}s]"
          + robust_above_clean_note(result["clean_acc"], result["robust_acc"]))
    _write_json(json_path, result)


def check_eval_eps(eps_255: float | None, allow_unusual: bool) -> None:
    """``harness eval --eps-255``: 0 or a plausible radius in 1/255 units (``TrainConfig``'s
    rule); a value in (0, 1) only with ``--allow-unusual-eps``, one above 255 never."""
    if eps_255 is None or eps_255 == 0 or not math.isfinite(eps_255):
        return  # negative and non-finite values are refused with the other numbers
    if 0 < eps_255 < 1 and not allow_unusual:
        raise BadInput(f"--eps-255 {eps_255:g} is below 1/255: it looks like a radius in [0, 1] "
                       f"pixel units ({eps_255:g} = {255 * eps_255:.3g}/255); give --eps-255 "
                       f"{255 * eps_255:.3g}, or add --allow-unusual-eps if you mean it")
    if eps_255 > 255:
        raise BadInput(f"--eps-255 {eps_255:g} is above 255/255, a radius beyond the [0, 1] "
                       f"image range")


class _EvalBar:
    """Says what will run before the work starts (images, attack; a capped ``--n``), then a rich
    progress bar over evaluation batches (rate and ETA)."""

    def __init__(self, enabled: bool, requested: int | None = None, split: str = "test"):
        self.enabled, self.progress, self.task = enabled, None, None
        self.requested, self.what, self.split = requested, "", split
        self.done, self.total = 0, None

    def __enter__(self):
        if self.enabled:
            self.progress = new_progress(transient=True)  # the result line replaces it
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False

    def start(self, total: int, attack: Any, images: int) -> None:
        self.what, self.total = attack.describe(), total
        if self.requested is not None and self.requested > images:
            print(f"note: --n {self.requested} asks for more {self.split} images than the set "
                  f"has; evaluating all {images}", file=sys.stderr)
        print(f"evaluating {images} {self.split} images in {total} batches with {self.what}",
              file=sys.stderr, flush=True)
        if self.progress is not None:
            self.task = self.progress.add_task("eval", total=total, rate="")

    def step(self) -> None:
        self.done += 1
        if self.progress is not None and self.task is not None:
            advance(self.progress, self.task, unit="batch")

    def interrupted(self, json_path: Path | None) -> str:
        """Ctrl-C: where the evaluation stood, that nothing was written, how to continue."""
        where = (f"after {self.done} of {self.total} batches" if self.total is not None
                 else "before the first batch")
        written = f"; {quoted_path(json_path)} was not written" if json_path is not None else ""
        return (f"interrupted {where}: no result{written} (an evaluation does not resume: run "
                f"the same command again, or a smaller --n, to get one)")


def demo_command(
    epochs: Annotated[int, typer.Option(help="Epochs per activation.")] = 4,
    act: Annotated[list[str] | None, typer.Option(help="Activations (repeat the option); "
                                                       "default relu and silu.")] = None,
    out: Annotated[Path | None, typer.Option(help="Keep the runs here (default: a temporary "
                                                  "folder, deleted).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every run.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the table as JSON.")
                         ] = None,
) -> None:
    """Offline demo: adversarially train small nets on digits with ReLU and SiLU, compare."""
    import torch

    from harness.demo import (
        DEMO_SETTINGS,
        check_demo_dirs,
        demo_config,
        format_table,
        run_demo,
    )

    if epochs < 1:
        raise BadInput(f"--epochs {epochs} must be >= 1")
    check_seed("--seed", seed)
    acts = act or ["relu", "silu"]
    trust_typed_plugins(*acts)
    for name in acts:  # run_demo checks again; here so that nothing is printed first
        demo_config(name, epochs, seed)
    run_dirs = check_demo_dirs(acts, out) if out is not None else []
    check_output_path("--json", json_path, run_dirs=run_dirs, made_folders=run_dirs)
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    print(f"demo: digits (16x16), PreActResNet-18 width {DEMO_SETTINGS['width']}, "
          f"PGD-{DEMO_SETTINGS['train_steps']} training at eps {DEMO_SETTINGS['eps_255']:g}/255,"
          f" {epochs} epochs per activation: {', '.join(acts)}")
    rows = run_demo(acts, epochs=epochs, out_dir=out, seed=seed, progress=progress,
                    log=None if progress else print)
    print(format_table(rows))
    _write_json(json_path, {"settings": DEMO_SETTINGS | {"epochs": epochs}, "rows": rows})


def register(app: typer.Typer) -> None:
    """Add ``train``, ``eval`` and ``demo`` to the ``harness`` app."""
    app.command("train")(train_command)
    app.command("eval")(eval_command)
    app.command("demo")(demo_command)

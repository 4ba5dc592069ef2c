# ruff: noqa: E501
"""Write docs/guide.md: hand-written prose per command + option tables from the real CLIs.

    python scripts/make_guide.py      # tests/test_cli_theory.py checks the committed file
"""
from pathlib import Path

import typer

from curvtools.cli import app as capp
from harness.cli import app as happ
from paper_figs.__main__ import app as papp

PROSE = {
 "curvtools curvature": "The curvature of an activation from its sympy expression: f, f', f'' and certified enclosures of the global max/min of f'' (the paper's curvature is max f''); for non-smooth activations the paper's approximate curvature (|1 - k| for LeakyReLU). `--plot` draws Figure 2 style panels.",
 "curvtools twolayer": "Checks the theory on random two-layer nets: the closed-form input Hessian of Eq. 2 against `torch.func.hessian`, and Lemma 1's bounds against the exact minimal perturbation.",
 "curvtools hessian": "Per-example largest (and smallest) algebraic eigenvalues of the input Hessian of a trained net, by batched Lanczos (float32/float64, never bf16). Given a run directory it evaluates its distinct checkpoints, every `epoch_NNNN.pt` plus `last.pt`/`best.pt` only when no epoch file holds their epoch (the output names the copies it skipped): the data of Figure 3. Save it as `RUN/hessian_curve.json` with `--json` and `python -m paper_figs` uses it for Figure 3.",
 "curvtools lemma": "Lemma 1 (Eq. 1): the two bounds on the l2 distance to misclassification per test example, for the quadratic model of f = -margin, beside the smallest l2 perturbation PGD-l2 finds. `--ckpt` takes a checkpoint or a run directory (then its `last.pt`, and the output says so).",
 "harness train": "PGD adversarial training with the paper's protocol (defaults), writing a run directory: `config.json`, `metrics.jsonl`, `best.pt` (best validation robust accuracy), `last.pt`, `epoch_NNNN.pt` (`--save-every`), `DONE`. `--resume` continues an interrupted run exactly.",
 "harness eval": "Clean and robust accuracy of a checkpoint on its test set, by default the paper's reporting attack (PGD-20, 5 restarts). Write `RUN/eval_last.json` / `RUN/eval_best.json` with `--json` and the tables use them for Final Test / Best Val.",
 "harness demo": "The offline demo (`make demo`): adversarially trains small nets on the embedded digits data (scikit-learn, no download) with ReLU and SiLU and compares them, in minutes on a CPU.",
 "harness sweep": "Runs every missing run of an experiment spec (`docs/reproduction.md`), one after another: finished runs are skipped, unfinished ones resumed from `last.pt`, and a directory holding a different run stops the sweep before anything is touched. `--dry-run` prints the plan. Runs go to `RUNS_DIR/SCALE/SPEC/RUN`.",
 "python -m paper_figs": "Renders every figure (PNG, PDF) and table (Markdown, CSV, each cell `ours (paper)`) that the run directories allow, prints which runs are missing and which entries were skipped; exit 0 when anything rendered. Column definitions: `docs/reproduction.md`.",
}
EXAMPLES = {
 "curvtools curvature": ["curvtools curvature --act all", "curvtools curvature --act pswish --beta 4 --json pswish4.json"],
 "harness train": ["harness train --act silu --out runs/silu                      # the paper's protocol", "harness train --act silu --out runs/silu --resume             # after an interruption", "harness train --dataset imagefolder:../shared/data/cifar10-jpg --train-subset 1000 --val-subset 500 --test-subset 500 --width 0.25 --train-steps 5 --eval-steps 5 --epochs 2 --act silu --out runs/try"],
 "harness eval": ["harness eval --ckpt runs/silu/last.pt --json runs/silu/eval_last.json", "harness eval --ckpt runs/silu/best.pt --attack autoattack --n 1000"],
 "harness sweep": ["harness sweep table1-cifar10 --scale mini --dry-run", "harness sweep table1-cifar10 --set device=cuda", "harness sweep fig7-width --only relu-w10 --runs-dir /scratch/runs"],
 "python -m paper_figs": ["python -m paper_figs --runs-dir runs --out docs/figures", "python -m paper_figs --scale mini --only table1 --only fig4"],
 "curvtools hessian": ["curvtools hessian --ckpt runs/paper/table1-cifar10/silu --json runs/paper/table1-cifar10/silu/hessian_curve.json"],
}
ORDER = ["curvtools curvature", "curvtools twolayer", "curvtools hessian", "curvtools lemma",
         "harness train", "harness eval", "harness demo", "harness sweep", "python -m paper_figs"]

def commands():
    found = {}
    for app, prog in ((capp, "curvtools"), (happ, "harness")):
        cmd = typer.main.get_command(app)
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                found[f"{prog} {name}"] = sub
        elif prog == "harness":  # only one command registered: typer collapses the group
            found["harness sweep"] = cmd
    found["python -m paper_figs"] = typer.main.get_command(papp)
    return found

def table(sub):
    out = []
    args = [p for p in sub.params if p.param_type_name == "argument"]
    opts = [p for p in sub.params if p.param_type_name == "option" and p.name != "help"]
    for a in args:
        out.append(f"Argument `{a.name.upper()}`: {(getattr(a, 'help', '') or '').strip()}\n")
    if opts:
        out += ["| option | default | meaning |", "| --- | --- | --- |"]
        for o in opts:
            flag = " / ".join(f"`{f}`" for f in o.opts + (o.secondary_opts or []))
            d = o.default
            ds = "" if d is None or d in ([], ()) or callable(d) else f"`{d}`"
            if o.is_flag and o.secondary_opts == [] and d is False:
                ds = "off"
            h = (o.help or "").replace("\n", " ").replace("|", "\\|")
            out.append(f"| {flag} | {ds} | {h} |")
    return "\n".join(out)


def generate() -> str:
    """The text of docs/guide.md."""
    found = commands()
    lines = ["# Guide to every command", "",
             "Generated from the commands' own `--help` (option names, defaults, help texts) plus a short",
             "description of each. `curvtools COMMAND --help` / `harness COMMAND --help` print the same.",
             "Bad input anywhere gives one line `error: ...` on stderr and exit code 2; nothing on disk is",
             "overwritten. Every command that produces numbers takes `--json PATH`.", "",
             "Output files (`--json`, `--csv`, `--plot`), one rule for every command: an existing file is",
             "replaced, and the command says so (`note: --json 'PATH' existed and was replaced`); it is",
             "written when the work is done, so a command that fails, is refused or is interrupted leaves it",
             "as it was. An input of the command, a checkpoint (`*.pt`) or a run file (`config.json`,",
             "`metrics.jsonl`, `DONE`) is never an output file: refused before any work. Ctrl-C exits with",
             "code 130; `harness train`, `eval` and `sweep` first say what finished and how to continue.", "",
             "Plugins: a `module:ATTRIBUTE` activation or architecture typed on the command line is imported;",
             "one named by a file (checkpoint, config.json, spec) only when `LOWCURV_PLUGINS` lists its module",
             "(`LOWCURV_PLUGINS=mypkg.acts harness eval --ckpt ...`; `docs/trust.md`).", ""]
    lines.append("Contents: " + ", ".join(f"`{c}`" for c in ORDER) + ".\n")
    for name in ORDER + sorted(set(found) - set(ORDER)):
        lines += [f"## `{name}`", ""]
        if name in PROSE:
            lines += [PROSE[name], ""]
        first = (found[name].help or "").strip().split("\n\n")[0].replace("\n", " ")
        if first:
            lines += [f"*{first}*", ""]
        if name in EXAMPLES:
            lines += ["    " + e for e in EXAMPLES[name]] + [""]
        lines += [table(found[name]), ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    found = commands()
    Path(__file__).resolve().parent.parent.joinpath("docs", "guide.md").write_text(generate())
    print("documented:", list(found))

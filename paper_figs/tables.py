"""Tables 1-3 of the paper from run directories, as Markdown and CSV, beside the paper's numbers.

Column definitions (all in percent; accuracies in metrics.jsonl are fractions):

* Final Train: the last epoch's training accuracy, robust = on the PGD examples the training
  attack made during that epoch (``train_robust_acc``), standard = ``train_clean_acc``.
* Final Test: the last epoch's test accuracy (``test_robust_acc`` / ``test_clean_acc``, with the
  run's per-epoch evaluation attack). When the run directory holds ``eval_last.json``
  (``harness eval --ckpt RUN/last.pt --json RUN/eval_last.json``, the paper's PGD-20 with 5
  restarts) that is used instead; a footnote says which rows did.
* Best Val: the paper's caption says it "use[s] the best checkpoint based on best robust accuracy
  on the validation set", and its text compares Best Val with Final Test as "the gap due to robust
  overfitting (decay in performance from peak robust accuracy)" (e.g. LiSHT 50.31 - 47.21 = 3.1).
  So the column is the **test** accuracy of the checkpoint from the epoch with the highest
  **validation robust** accuracy (early stopping on the validation split), robust and standard
  both taken at that one epoch -- not the validation accuracy itself. ``eval_best.json``
  (``harness eval --ckpt RUN/best.pt``) is preferred when present.
* Diff: Final Train - Final Test (the generalization gap).
* Regime: how far training fit the training set (final train clean / robust accuracy), because a
  small gap can come from underfitting (see PROTOCOL.md): ``underfit`` when train clean accuracy
  < 60%, ``interpolates`` when >= 95%, ``partial fit`` in between.
* Seeds: a run trained with several seeds (``RUN``, ``RUN-seed1``, ...) gives mean +- sample
  standard deviation over its seeds; the ``Seeds`` column states n and which seeds.

Every table states where each number comes from: the runs' own settings (read from each
config.json, and compared with the scale's settings in the sweep's manifest ``spec.json``:
"with overrides: epochs=6"), the per-epoch evaluation attack and how many images it used, and for
``eval_last.json`` / ``eval_best.json`` the attack, steps x restarts, threat model and number of
images recorded in the file.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curvtools.runfiles import same_setting
from paper_figs import paper_numbers
from paper_figs.actnames import act_label
from paper_figs.rundir import RunData
from paper_figs.runsets import Context, RunGroup, settings_of

KINDS = ("robust", "standard")
COLUMN_TITLES = {"final_train": "Final Train", "final_test": "Final Test",
                 "best_val": "Best Val", "diff": "Diff."}
UNDERFIT_BELOW, INTERPOLATES_FROM = 60.0, 95.0


def pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def fit_regime(train_clean_pct: float | None) -> str:
    """``underfit`` (< 60% train clean), ``partial fit``, or ``interpolates`` (>= 95%)."""
    if train_clean_pct is None:
        return "unknown"
    if train_clean_pct < UNDERFIT_BELOW:
        return "underfit"
    return "interpolates" if train_clean_pct >= INTERPOLATES_FROM else "partial fit"


@dataclass
class TableLine:
    """One row of a table: our numbers (percent, None = not available) and the paper's."""

    group: str
    label: str
    run: str
    ours: dict[str, dict[str, float | None]] | None  # mean over seeds
    paper: dict[str, dict[str, float]] | None
    meta: dict[str, Any] = field(default_factory=dict)
    spread: dict[str, dict[str, float | None]] | None = None  # sample std over seeds (n > 1)
    seeds: list[int] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)  # describe_settings of each seed's run


def run_numbers(run: RunData) -> tuple[dict[str, dict[str, float | None]], dict[str, Any]]:
    """Our Table columns (percent) for one run, and how they were obtained."""
    keys = {"robust": ("train_robust_acc", "test_robust_acc", "robust_acc"),
            "standard": ("train_clean_acc", "test_clean_acc", "clean_acc")}
    best = run.best_val_row
    ours: dict[str, dict[str, float | None]] = {}
    for kind, (train_key, test_key, eval_key) in keys.items():
        train = pct(run.final(train_key))
        test = pct(run.final(test_key))
        if run.eval_last and run.eval_last.get(eval_key) is not None:
            test = pct(run.eval_last[eval_key])
        best_val = pct(best.get(test_key)) if best else None
        if run.eval_best and run.eval_best.get(eval_key) is not None:
            best_val = pct(run.eval_best[eval_key])
        diff = None if train is None or test is None else train - test
        ours[kind] = {"final_train": train, "final_test": test, "best_val": best_val,
                      "diff": diff}
    meta = {
        "epochs_done": run.epochs_done, "epochs_total": run.epochs_total,
        "finished": run.finished, "best_val_epoch": run.best_val_epoch,
        "best_val_robust_acc_on_val": pct(best.get("val_robust_acc")) if best else None,
        "final_test_source": (f"{run.eval_last['file']} ({run.eval_last['attack']})"
                              if run.eval_last else "metrics.jsonl (per-epoch eval attack)"),
        "best_val_source": (f"{run.eval_best['file']} ({run.eval_best['attack']})"
                            if run.eval_best else "metrics.jsonl (per-epoch eval attack)"),
        "stale_evals": "; ".join(run.stale_evals),
        "regime": fit_regime(ours["standard"]["final_train"]),
        "run_dir": str(run.path),
        "dataset": _dataset(run.config),
        "eval_details": [f"{e['file']}: {e['detail']}" for e in (run.eval_last, run.eval_best)
                         if e],
    }
    return ours, meta


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    got = [v for v in values if v is not None and math.isfinite(v)]
    if len(got) < len(values) or not got:
        return None, None  # a seed without the number: no mean that hides it
    return statistics.fmean(got), (statistics.stdev(got) if len(got) > 1 else None)


def group_numbers(group: RunGroup) -> tuple[dict, dict, dict[str, Any]]:
    """(mean, std, meta) of a run over its seeds; meta is the first seed's plus the seeds'."""
    per_seed = [run_numbers(run) for run in group.runs]
    mean: dict[str, dict[str, float | None]] = {}
    std: dict[str, dict[str, float | None]] = {}
    for kind in KINDS:
        mean[kind], std[kind] = {}, {}
        for col in per_seed[0][0][kind]:
            mean[kind][col], std[kind][col] = _mean_std([o[kind][col] for o, _ in per_seed])
    meta = dict(per_seed[0][1])
    metas = [m for _, m in per_seed]
    meta["finished"] = all(m["finished"] for m in metas)
    meta["epochs_done"] = min(m["epochs_done"] for m in metas)
    if len(metas) > 1:  # one per seed, in seed order
        meta["best_val_epoch"] = "/".join(str(m["best_val_epoch"] or "—") for m in metas)
    for key in ("final_test_source", "best_val_source", "stale_evals"):
        values = list(dict.fromkeys(m[key] for m in metas if m[key]))
        meta[key] = values[0] if len(values) == 1 else "; ".join(values)
    meta["eval_details"] = list(dict.fromkeys(d for m in metas for d in m["eval_details"]))
    meta["epochs_by_seed"] = [(m["epochs_done"], m["epochs_total"]) for m in metas]
    meta["regime"] = fit_regime(mean["standard"]["final_train"])
    return mean, std, meta


def describe_settings(config: dict[str, Any]) -> str:
    """The settings that decide what a run's numbers mean, from its config.json, in one line."""
    s = settings_of(config)
    if "epochs" not in s:
        return "settings not recorded in config.json"
    parts = [f"{s.get('arch', '?')} width {s.get('width', '?')}",
             f"{s['epochs']} epochs (LR {s.get('lr', '?')}, /10 at "
             f"{', '.join(f'{m:g}' for m in s.get('lr_milestones') or []) or 'never'})",
             f"{s.get('train_subset') or 'all'} training images",
             f"PGD-{s.get('train_steps', '?')} training (eps {_g(s.get('eps_255'))}/255, step "
             f"{_g(s.get('alpha_255'))}/255)"]
    if s.get("precision"):
        parts.append(f"precision {s['precision']}")
    return ", ".join(parts)


def describe_epoch_eval(config: dict[str, Any]) -> str:
    """The per-epoch evaluation of metrics.jsonl: attack and number of images (config.json)."""
    s = settings_of(config)
    if "eval_steps" not in s:
        return "per-epoch evaluation settings not recorded in config.json"
    restarts = s.get("eval_restarts", 1)
    attack = f"PGD-{s['eval_steps']}" + (f"x{restarts}" if restarts and restarts != 1 else "")
    test = s.get("test_subset") or "all"
    val = s.get("val_subset") or "all"
    return f"{attack} on {test} test / {val} validation images"


# Settings that may differ from the scale's without changing what a number means.
_NOT_OVERRIDES = {"seed", "device", "data_dir", "download", "channels_last", "compile",
                  "compile_mode", "cuda_graphs", "eval_batch_size"}


def overrides_of(group: RunGroup) -> dict[str, Any]:
    """Settings in which the group's runs differ from the scale's (the manifest's
    ``scale_settings``): ``{key: value on disk}``; {} without a manifest."""
    if not group.scale_settings:
        return {}
    out: dict[str, Any] = {}
    for run in group.runs:
        actual = settings_of(run.config)
        for key, want in group.scale_settings.items():
            if key in actual and key not in _NOT_OVERRIDES and not same_setting(actual[key], want):
                out[key] = actual[key]
    return out


def _dataset(config: dict[str, Any]) -> str | None:
    dataset = settings_of(config).get("dataset")
    return dataset if isinstance(dataset, str) else None


def _lines_for(ctx: Context, entry: str, spec_name: str, group: str, label_of, paper_of
               ) -> list[TableLine]:
    found = ctx.spec_runs(spec_name, entry)
    lines = []
    if not found.folder.is_dir():
        ctx.missing.setdefault(entry, []).append(
            f"{spec_name}: no runs at scale {ctx.scale!r} (no folder {found.folder})")
        return lines
    overrides: dict[str, Any] = {}
    for g in found.groups:
        if not g.runs:
            ctx.note_missing(entry, spec_name, g.name)
            lines.append(TableLine(group, _label(label_of, g.paper, g.name), f"{spec_name}/"
                                   f"{g.name}", None, _paper(paper_of, g.paper)))
            continue
        mean, std, meta = group_numbers(g)
        overrides.update(overrides_of(g))
        lines.append(TableLine(group, _label(label_of, g.paper, g.name), f"{spec_name}/{g.name}",
                               mean, _paper(paper_of, g.paper), meta, std, sorted(g.seeds),
                               [describe_settings(r.config) + "; per-epoch eval "
                                + describe_epoch_eval(r.config) for r in g.runs]))
    scale_text = f"{spec_name}: scale {ctx.scale!r}"
    if found.manifest is None:
        scale_text += (" (no spec.json from the sweep: whether the runs were changed from the "
                       "scale's settings is unknown; the settings listed are the runs' own)")
    elif overrides:
        scale_text += " with overrides: " + ", ".join(f"{k}={v}" for k, v in overrides.items())
    else:
        scale_text += " as the spec defines it"
    ctx.note(entry + ":scale", scale_text)
    return lines


def _label(label_of, cfg: dict[str, Any], name: str) -> str:
    try:
        return label_of(cfg)
    except (KeyError, TypeError, ValueError):
        return name


def _paper(paper_of, cfg: dict[str, Any]):
    try:
        return paper_of(cfg)
    except (KeyError, TypeError, ValueError):
        return None


def table1_lines(ctx: Context) -> list[TableLine]:
    """Table 1: CIFAR-10 and CIFAR-100 x activation, rows in the paper's order."""
    order = list(paper_numbers.TABLE1["cifar10"])  # lisht, relu, gelu, mish, silu
    lines = []
    for dataset in ("cifar10", "cifar100"):
        block = _lines_for(ctx, "table1", f"table1-{dataset}", dataset.upper().replace("CIFAR",
                           "CIFAR-"), lambda c: act_label(c["act"]),
                           lambda c, d=dataset: paper_numbers.TABLE1[d].get(c["act"]))
        block.sort(key=lambda ln: order.index(ln.run.split("/")[1])
                   if ln.run.split("/")[1] in order else len(order))
        lines += block
    return lines


def table2_lines(ctx: Context) -> list[TableLine]:
    """Table 2: PSwish with beta in {0.5, 1, 2, 4, 10}."""
    return _lines_for(ctx, "table2", "table2-pswish", "CIFAR-10",
                      lambda c: f"{float(c['beta']):g}",
                      lambda c: paper_numbers.TABLE2.get(float(c["beta"])))


def table3_lines(ctx: Context) -> list[TableLine]:
    """Table 3: LeakyReLU with k in {0.5, 0.3, 0.2, 0, -0.2}."""
    return _lines_for(ctx, "table3", "table3-leakyrelu", "CIFAR-10",
                      lambda c: f"{float(c['k']):g}",
                      lambda c: paper_numbers.TABLE3.get(float(c["k"])))


def _cell(ours: float | None, paper: float | None, std: float | None = None) -> str:
    mine = "—" if ours is None else f"{ours:.2f}"
    if ours is not None and std is not None:
        mine += f" ± {std:.2f}"
    return mine if paper is None else f"{mine} ({paper:g})"


def _seeds_text(seeds: list[int]) -> str:
    return f"n={len(seeds)} (seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))})"


def to_markdown(title: str, first_column: str, lines: list[TableLine],
                columns: tuple[str, ...], scale: str, scale_notes: list[str] | None = None
                ) -> str:
    """The table as Markdown: each cell 'ours (paper)', then regime columns and footnotes that
    state every number's source: settings, attack, images, seeds."""
    head = ["Dataset", first_column]
    for kind in KINDS:
        head += [f"{kind.capitalize()} {COLUMN_TITLES[c]}" for c in columns]
    head += ["Train clean / robust", "Regime", "Epochs", "Best-val epoch", "Seeds"]
    out = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    marks: list[str] = []
    stale: list[str] = []
    common = _common_length(lines)
    for ln in lines:
        cells = [ln.group, ln.label]
        for kind in KINDS:
            for c in columns:
                mine = ln.ours[kind][c] if ln.ours else None
                sd = ln.spread[kind][c] if ln.spread else None
                paper = ln.paper[kind].get(c) if ln.paper else None
                cells.append(_cell(mine, paper, sd))
        if ln.ours:
            m = ln.meta
            tc, tr = ln.ours["standard"]["final_train"], ln.ours["robust"]["final_train"]
            fit = "—" if tc is None or tr is None else f"{tc:.1f} / {tr:.1f}"
            epochs = _epochs_cell(m, common)
            if not m["finished"]:
                epochs += " (partial)"
            cells += [fit, m["regime"], epochs, str(m["best_val_epoch"] or "—"),
                      _seeds_text(ln.seeds)]
            if m["final_test_source"].startswith("eval_") or \
                    m["best_val_source"].startswith("eval_"):
                marks.append(f"{ln.group} {ln.label}: Final Test from {m['final_test_source']}, "
                             f"Best Val from {m['best_val_source']} ("
                             + "; ".join(m["eval_details"]) + ")")
            if m.get("stale_evals"):
                stale.append(f"{ln.group} {ln.label}: {m['stale_evals']}")
        else:
            cells += ["—", "missing", "—", "—", "n=0"]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Cells: ours (paper), percent; ours is the mean ± sample standard deviation over "
            "the row's seeds when it has more than one (Seeds: n and which). "
            + _definitions(columns)]
    datasets = sorted({ln.meta["dataset"] for ln in lines if ln.meta.get("dataset")})
    if datasets:
        jpeg = any("cifar10-jpg" in d for d in datasets)
        out.append("Data (from the runs' config.json): " + ", ".join(datasets)
                   + (" -- the CIFAR-10 JPEG copy (lossy re-encoding): label results "
                      "'CIFAR-10 (JPEG copy)'." if jpeg else "."))
    settings: dict[str, list[str]] = {}
    for ln in lines:
        for text in dict.fromkeys(ln.settings):
            settings.setdefault(text, []).append(f"{ln.group} {ln.label}")
    for text, rows in settings.items():
        who = "every row" if len(rows) == sum(1 for ln in lines if ln.ours) else ", ".join(rows)
        out.append(f"Run settings (config.json) of {who}: {text}.")
    for note in scale_notes or []:
        out.append(f"Scale: {note}.")
    if scale != "paper":
        out.append(f"Scale {scale!r} is a reduced setting; its numbers are not comparable "
                   "with the paper's, only the trends across rows are.")
    if marks:
        out.append("Evaluation files used (each: attack, threat model, images, attack seed): "
                   + "; ".join(marks) + ". All other numbers come from metrics.jsonl (the "
                   "per-epoch evaluation named in the run settings).")
    else:
        out.append("All numbers come from metrics.jsonl (the per-epoch evaluation named in the "
                   "run settings, not the paper's PGD-20x5 on the 10,000 test images; run "
                   "`harness eval` to add eval_last.json / eval_best.json).")
    if stale:
        out.append("Not used, made before the run went on (rerun `harness eval`): "
                   + "; ".join(stale) + ".")
    return "\n".join(out) + "\n"


def _length(done: int, total: int | None) -> int:
    return total if total is not None else done


def _common_length(lines: list[TableLine]) -> int | None:
    """The run length (epochs) most runs of the table have; None without runs."""
    lengths = [_length(*e) for ln in lines if ln.ours for e in ln.meta.get("epochs_by_seed", [])]
    return max(set(lengths), key=lengths.count) if lengths else None


def _epochs_cell(meta: dict[str, Any], common: int | None) -> str:
    """``done/total``; per seed when the seeds differ; and a warning when the row's runs are
    not as long as the table's other rows (their numbers are then not comparable)."""
    by_seed = meta.get("epochs_by_seed") or [(meta["epochs_done"], meta["epochs_total"])]
    cells = list(dict.fromkeys(f"{d}/{t or '?'}" for d, t in by_seed))
    text = cells[0] if len(cells) == 1 else "by seed " + ", ".join(
        f"{d}/{t or '?'}" for d, t in by_seed)
    own = {_length(d, t) for d, t in by_seed}
    if common is not None and own != {common}:
        text += f" (run length differs from the table's other rows: {common} epochs)"
    return text


def _definitions(columns: tuple[str, ...]) -> str:
    text = ("Final Train/Test: last epoch (robust = PGD accuracy). Diff. = Final Train - Final "
            "Test. ")
    if "best_val" in columns:
        text += ("Best Val: test accuracy of the checkpoint from the epoch with the highest "
                 "validation robust accuracy (early stopping on the 10% validation split). ")
    text += (f"Regime: underfit if final train clean accuracy < {UNDERFIT_BELOW:g}%, "
             f"interpolates if >= {INTERPOLATES_FROM:g}%, else partial fit.")
    return text


def write_csv(path: Path, lines: list[TableLine], columns: tuple[str, ...]) -> None:
    """One CSV row per table row: ours_*, paper_* and the run's regime and sources."""
    fields = ["group", "label", "run", "status", "n_seeds", "seeds"]
    for who in ("ours", "sd", "paper"):
        fields += [f"{who}_{kind}_{c}" for kind in KINDS for c in columns]
    meta_keys = ["epochs_done", "epochs_total", "finished", "best_val_epoch",
                 "best_val_robust_acc_on_val", "regime", "final_test_source", "best_val_source",
                 "stale_evals", "dataset", "run_dir"]
    fields += meta_keys
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for ln in lines:
            row: dict[str, Any] = {"group": ln.group, "label": ln.label, "run": ln.run,
                                   "status": "missing" if ln.ours is None else
                                   ("finished" if ln.meta["finished"] else "partial"),
                                   "n_seeds": len(ln.seeds),
                                   "seeds": " ".join(map(str, ln.seeds))}
            for kind in KINDS:
                for c in columns:
                    mine = ln.ours[kind][c] if ln.ours else None
                    row[f"ours_{kind}_{c}"] = "" if mine is None else f"{mine:.4f}"
                    sd = ln.spread[kind][c] if ln.spread else None
                    row[f"sd_{kind}_{c}"] = "" if sd is None else f"{sd:.4f}"
                    paper = ln.paper[kind].get(c) if ln.paper else None
                    row[f"paper_{kind}_{c}"] = "" if paper is None else paper
            row.update({k: ln.meta.get(k, "") for k in meta_keys})
            writer.writerow(row)


TABLES = {
    "table1": ("Table 1: activations on CIFAR-10 and CIFAR-100 (PreActResNet-18)", "Activation",
               table1_lines, paper_numbers.TABLE1_COLUMNS),
    "table2": ("Table 2: PSwish with different beta (CIFAR-10, final checkpoint)", "beta",
               table2_lines, paper_numbers.TABLE23_COLUMNS),
    "table3": ("Table 3: LeakyReLU with different slope k (CIFAR-10, final checkpoint)", "k",
               table3_lines, paper_numbers.TABLE23_COLUMNS),
}


def render_table(ctx: Context, name: str) -> list[Path]:
    """Write ``name``.md and ``name``.csv into ``ctx.out_dir``; [] when no run exists."""
    title, first, build, columns = TABLES[name]
    ctx.notes.pop(name + ":scale", None)
    lines = build(ctx)
    if not any(ln.ours for ln in lines):
        return []
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    md, csv_path = ctx.out_dir / f"{name}.md", ctx.out_dir / f"{name}.csv"
    md.write_text(to_markdown(title, first, lines, columns, ctx.scale,
                              ctx.notes.get(name + ":scale", [])))
    write_csv(csv_path, lines, columns)
    return [md, csv_path]


def _g(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else "?"

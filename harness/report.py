"""What a training run shows while it works: a progress bar and one line per epoch."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from curvtools.progress import advance, new_progress


class Reporter:
    """Rich progress bar (rate and ETA) over all training batches, plus one line per epoch."""

    def __init__(self, enabled: bool, log: Callable[[str], None] | None, epochs: int,
                 start_epoch: int, n_train: int, n_val: int, n_test: int):
        self.enabled, self.log = enabled, log
        self.epochs, self.epoch = epochs, start_epoch
        self.n_train, self.n_eval = n_train, n_val + n_test
        self.progress = None

    def __enter__(self):
        if self.enabled:
            self.progress = new_progress()
            self.progress.__enter__()
            done = self.epoch * self.n_train
            self.task = self.progress.add_task("train", total=self.epochs * self.n_train,
                                               completed=done, rate="")
            self.eval_task = self.progress.add_task("eval", total=self.n_eval, visible=False,
                                                    rate="")
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False

    def train_step(self) -> None:
        if self.progress is not None:
            advance(self.progress, self.task, unit="batch")

    def start_eval(self) -> None:
        if self.progress is not None:
            self.progress.reset(self.eval_task, total=self.n_eval, visible=True,
                                description=f"eval epoch {self.epoch + 1}")

    def eval_step(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.eval_task)

    def end_eval(self) -> None:
        if self.progress is not None:
            self.progress.update(self.eval_task, visible=False)
        self.epoch += 1

    def line(self, text: str) -> None:
        if self.log is not None:
            self.log(text)
        if self.progress is not None:
            self.progress.console.print(text, highlight=False, soft_wrap=True)

    def epoch_line(self, row: dict) -> None:
        self.line(format_epoch_line(row, self.epochs))

    def start_line(self, out_dir: Any, resolved: Mapping[str, Any], resumed: bool,
                   more_epochs: str = "pass --epochs N with N > {epochs}") -> None:
        """What will run, before the first epoch: where, which epochs, device and precision
        (training's ``auto`` precision differs from ``harness eval``'s fp32: say it here).
        ``more_epochs``: how the caller asks for more epochs."""
        where = f"{resolved.get('device_name', resolved.get('device'))}, {resolved['precision']}"
        if resumed and self.epoch >= self.epochs:
            self.line(f"{out_dir}: the run has trained all {_epochs(self.epochs)} already; "
                      f"nothing to do ({more_epochs.format(epochs=self.epochs)} to train further)")
            return
        verb = f"resuming from epoch {self.epoch}" if resumed else "training"
        self.line(f"{out_dir}: {verb}, epochs {self.epoch + 1}-{self.epochs} of {self.epochs} "
                  f"({where})")

    def interrupted(self, out_dir: Any, again: str | None = None) -> None:
        """Ctrl-C: take the bars off the screen and say how to continue (``again``: the
        caller's way, default the command line's)."""
        if self.progress is not None:
            for task in self.progress.task_ids:
                self.progress.update(task, visible=False)
        saved = (f"last.pt holds epoch {self.epoch}" if self.epoch else "no epoch was saved")
        again = again or f"harness train --out {out_dir} --resume"
        self.line(f"interrupted in epoch {self.epoch + 1}; {saved}: continue with {again}")


def _epochs(n: int) -> str:
    return "1 epoch" if n == 1 else f"{n} epochs"


# Why robust accuracy can exceed clean accuracy in this code (docs/trust.md), said where it shows:
# - evaluation (harness eval, val/test each epoch): clean and robust correctness are counted at
#   different points, x and the attack's end point x + delta; the attack never keeps x itself,
#   and from a random start in few steps it can end where the model is right although it is
#   wrong at x;
# - training (train clean/robust each epoch): robust is measured on the adversarial batch before
#   the optimizer step, with that batch's BatchNorm statistics; clean on the clean batch after
#   the step, with the clean batch's statistics: other weights and other statistics.
EVAL_NOTE = ("note: robust > clean can happen: robust accuracy is counted at the attack's end "
             "point only, never at the clean image, and a random start with few steps can end "
             "where the model is right (more --steps/--restarts, or --attack autoattack, give a "
             "tighter number)")
EPOCH_NOTE = {
    "train": "train robust > clean: robust is measured before the step with the adversarial "
             "batch's BatchNorm statistics, clean after it",
    "val": "val robust > clean: the attack's random start never tries the clean image",
    "test": "test robust > clean: the attack's random start never tries the clean image",
}


def robust_above_clean_note(clean_acc: float, robust_acc: float) -> str:
    """``"; note: robust > clean can happen: ..."`` for a result line whose robust accuracy
    exceeds its clean accuracy, else ``""``."""
    return f"; {EVAL_NOTE}" if robust_acc > clean_acc else ""


def format_epoch_line(row: Mapping[str, Any], epochs: int) -> str:
    """One-line epoch summary, accuracies in percent; a part whose robust accuracy exceeds its
    clean accuracy gets a short why (:data:`EPOCH_NOTE`)."""
    def pct(key):
        return f"{100 * row[key]:5.1f}" if key in row else "  -  "

    text = (f"epoch {row['epoch']:>3}/{epochs} lr {row['lr']:.4g} | train clean "
            f"{pct('train_clean_acc')}"
            f" robust {pct('train_robust_acc')} | val clean {pct('val_clean_acc')} robust "
            f"{pct('val_robust_acc')} | test clean {pct('test_clean_acc')} robust "
            f"{pct('test_robust_acc')} | {row['train_seconds']:.1f}s + {row['eval_seconds']:.1f}s")
    if "hessian_lambda_max_mean" in row:
        text += f" | lambda_max mean {row['hessian_lambda_max_mean']:.3g}"
    if row.get("evaluated") is False:
        text += " | val/test not evaluated this epoch (--eval-every)"
    for part, note in EPOCH_NOTE.items():
        clean, robust = row.get(f"{part}_clean_acc"), row.get(f"{part}_robust_acc")
        if clean is not None and robust is not None and robust > clean:
            text += f" | {note}"
    return text



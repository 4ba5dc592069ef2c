"""Which checkpoint files a ``--ckpt PATH`` means: the project's one rule (paths only).

A run directory (written by ``harness train``) holds ``epoch_NNNN.pt`` (every ``save_every``
epochs), ``last.pt`` and ``best.pt``; the last two are copies of an epoch's weights, usually of
one that also has an epoch file. The rule:

* a checkpoint file means itself;
* a run directory, for a command that reads ONE checkpoint (``series=False``), means its
  ``last.pt`` (the result says so, for the command to print);
* a run directory, for a command that reads a SERIES (``series=True``, e.g. lambda_max over
  training), means its distinct checkpoints: every ``epoch_NNNN.pt`` by epoch, plus ``last.pt``
  and then ``best.pt`` only when no file already taken holds their epoch; the others are
  reported as skipped copies.

The epoch inside ``last.pt``/``best.pt`` is only known by reading the file, so the caller passes
``epoch_of`` (e.g. harness's checkpoint loader); without it they are kept (nothing is skipped on
a guess). No torch, no harness: ``harness eval`` can call the same function.

Example::

    >>> choice = resolve_checkpoints(Path("runs/silu"), "--ckpt", series=True,
    ...                              epoch_of=lambda p: load_checkpoint(p)["epoch"])
    >>> [p.name for p in choice.paths], choice.skipped_text()
    (['epoch_0025.pt', 'epoch_0050.pt'], 'skipped as copies: last.pt (= epoch_0050.pt), ...')
"""

from __future__ import annotations

import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from curvtools.errors import BadInput

CHECKPOINT_NAME = re.compile(r"^epoch_(\d+)\.pt$")
COPIES = ("last.pt", "best.pt")  # in order of preference when both hold a new epoch


def epoch_file_name(epoch: int) -> str:
    """``epoch_NNNN.pt``: the name of the checkpoint ``harness train`` keeps every
    ``save_every`` epochs (what :data:`CHECKPOINT_NAME` matches)."""
    return f"epoch_{epoch:04d}.pt"


def path_problem(path: Path) -> str | None:
    """None for an existing folder or regular file (or a link to one); else what is wrong,
    e.g. ``"does not exist"`` or ``"is not a regular file (a FIFO)"``. Never opens the path
    (reading a FIFO would block)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as err:
        return f"cannot be read ({err.strerror or type(err).__name__})"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kinds = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    what = next((name for test, name in kinds if test(mode)), "a special file")
    return f"is not a regular file ({what})"


def epoch_in_name(path: Path) -> int | None:
    """The epoch NNNN of ``epoch_NNNN.pt``, else None."""
    found = CHECKPOINT_NAME.match(Path(path).name)
    return int(found.group(1)) if found else None


def checkpoints_in_run(run_dir: Path) -> list[Path]:
    """Every checkpoint file of a run: ``epoch_*.pt`` by epoch, then ``best.pt``, ``last.pt``.

    Copies included (see :func:`resolve_checkpoints` for the distinct ones). Raises
    :class:`BadInput` when there is none.
    """
    run_dir = Path(run_dir)
    epochs = sorted((epoch, p) for p in run_dir.iterdir()
                    if (epoch := epoch_in_name(p)) is not None and p.is_file())
    found = [p for _, p in epochs]
    found += [run_dir / name for name in ("best.pt", "last.pt") if (run_dir / name).is_file()]
    if not found:
        raise BadInput(f"run directory {str(run_dir)!r} holds no checkpoints "
                       "(epoch_*.pt, best.pt, last.pt)")
    return found


@dataclass
class CheckpointChoice:
    """The checkpoint files a ``--ckpt`` path stands for.

    ``paths``: to read, in order; ``run_dir``: the folder given, or None for a file;
    ``skipped``: ``(copy, same-epoch file kept instead)`` pairs; ``note``: one line for the
    command to print when the path was a folder (None for a file).
    """

    paths: list[Path]
    run_dir: Path | None = None
    skipped: list[tuple[Path, Path]] = field(default_factory=list)
    note: str | None = None

    def skipped_text(self) -> str | None:
        """``"skipped as copies: last.pt (= epoch_0002.pt)"``, or None when nothing was."""
        if not self.skipped:
            return None
        return "skipped as copies: " + ", ".join(f"{c.name} (= {k.name})" for c, k in self.skipped)


def resolve_checkpoints(path: Path, option: str, *, series: bool,
                        epoch_of: Callable[[Path], int | None] | None = None) -> CheckpointChoice:
    """Apply the rule of the module docstring to ``path`` (given as ``option`` on the CLI).

    Raises :class:`BadInput` (naming ``option`` and the path) when the path does not exist or a
    run directory holds no checkpoint this command can use.
    """
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise BadInput(f"{option} {str(path)!r} {problem}")
    if not path.is_dir():
        return CheckpointChoice([path])
    if not series:
        last = path / "last.pt"
        if not last.is_file():
            raise BadInput(f"{option} {str(path)!r} is a folder without last.pt: give a "
                           "checkpoint file or a run directory with last.pt")
        return CheckpointChoice([last], path, note=f"{option} {path}: a run directory, using "
                                                   f"its last checkpoint {last.name}")
    everything = checkpoints_in_run(path)
    taken = [p for p in everything if epoch_in_name(p) is not None]
    held = {epoch_in_name(p): p for p in taken}
    skipped: list[tuple[Path, Path]] = []
    extra: list[Path] = []
    for name in COPIES:
        copy = path / name
        if not copy.is_file():
            continue
        epoch = epoch_of(copy) if epoch_of is not None else None
        if epoch is not None and epoch in held:
            skipped.append((copy, held[epoch]))
            continue
        extra.append(copy)
        if epoch is not None:
            held[epoch] = copy
    kept = taken + sorted(extra, key=lambda p: COPIES.index(p.name), reverse=True)  # best, last
    choice = CheckpointChoice(kept, path, skipped)
    choice.note = (f"{option} {path}: a run directory, {len(kept)} distinct checkpoint(s)"
                   + (f"; {choice.skipped_text()}" if skipped else ""))
    return choice

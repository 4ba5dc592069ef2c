"""The project's one progress bar: rich, with a rate and an ETA.

Shared by both CLIs and the training loop so that every long job looks the same. rich is
imported when a bar is made, not when this module is imported.
"""

from __future__ import annotations

from typing import Any


def new_progress(*, transient: bool = False, stderr: bool = False):
    """A ``rich.progress.Progress`` showing description, bar, done/total, rate, elapsed and ETA.

    Tasks must be added with a ``rate=""`` field; :func:`advance` fills it in.

    Example::

        with new_progress() as bar:
            task = bar.add_task("eval", total=10, rate="")
            for _ in range(10):
                advance(bar, task, unit="batch")
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=stderr)
    # A transient bar shows nothing on an output that is no terminal, yet rich ends it with a
    # blank line there (which would stand before an error line): no bar at all then.
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=console, transient=transient,
                    disable=transient and not console.is_interactive)


def advance(progress: Any, task: Any, *, unit: str, steps: float = 1) -> None:
    """Advance ``task`` by ``steps`` and show the measured rate in ``unit``/s."""
    progress.advance(task, steps)
    speed = progress.tasks[task].speed
    if speed:
        progress.update(task, rate=f"{speed:.2f} {unit}/s")

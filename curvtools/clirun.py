"""Run a typer app so that bad input gives one line and exit code 2, never a traceback.

Shared by both console scripts (``curvtools`` and ``harness``). Imports nothing of harness: the
run directory's file names come from :mod:`curvtools.runfiles` (the format's bottom layer).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

import typer

# typer >= 0.20 vendors click as typer._click; older releases use the click package.
if importlib.util.find_spec("typer._click") is not None:
    from typer import _click as click
else:  # pragma: no cover - depends on the installed typer
    import click

from curvtools.errors import BadInput, shown
from curvtools.plugins import ALLOW_ENV
from curvtools.runfiles import RUN_FILES


def _flag_has_no_type(original):
    """typer >= 0.2x prints a type column for every option, ``<bool>`` for flags (``--help``,
    ``--resume/--no-resume``), which take no value: show nothing there instead."""
    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        return original(self, ctx)

    display_type_rich.__wrapped__ = original
    return display_type_rich


_option_class = getattr(getattr(typer, "core", None), "TyperOption", None)
if _option_class is not None and hasattr(_option_class, "display_type_rich") \
        and not hasattr(_option_class.display_type_rich, "__wrapped__"):
    _option_class.display_type_rich = _flag_has_no_type(_option_class.display_type_rich)


def new_app(help_text: str) -> typer.Typer:
    """A typer app with the project's settings (no rich tracebacks, no completion options)."""
    return typer.Typer(
        help=help_text,
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )


def fail(message: str) -> None:
    """Print ``error: message`` as one line on stderr and exit 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(2)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {category.__name__}: {' '.join(str(message).split())}", file=sys.stderr)


def run_app(app: typer.Typer, prog_name: str, argv: list[str] | None = None) -> None:
    """Invoke ``app``; usage errors and :class:`BadInput` become one line and exit code 2.

    Warnings (e.g. ``harness.evaluate.GradientMaskingWarning``) print as one ``warning:`` line;
    an output file that existed and was replaced (:func:`check_output_path`) as one ``note:``
    line when the command has finished. Plugin modules the command allows
    (:func:`curvtools.plugins.allow`) are allowed for this command only: ``LOWCURV_PLUGINS`` is
    restored afterwards.
    """
    allowed = os.environ.get(ALLOW_ENV)  # --act/--arch plugins typed now are allowed (plugins)
    _replaced.clear()
    try:
        with warnings.catch_warnings():  # restores the previous showwarning afterwards
            warnings.showwarning = _one_line_warning
            _run_app(app, prog_name, argv)
    finally:
        for note, (path, before) in _replaced.items():  # only files the command did replace
            if _signature(path) != before:
                print(note, file=sys.stderr)
        _replaced.clear()  # ... for this command only (tests run many commands in one process)
        if allowed is None:
            os.environ.pop(ALLOW_ENV, None)
        else:
            os.environ[ALLOW_ENV] = allowed


def _run_app(app: typer.Typer, prog_name: str, argv: list[str] | None) -> None:
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError:  # bare command: help was shown
        raise SystemExit(0) from None
    except click.exceptions.UsageError as err:
        fail(err.format_message())
    except click.exceptions.ClickException as err:
        fail(err.format_message())
    except typer.Abort:  # click's form of Ctrl-C (KeyboardInterrupt) inside a command
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except typer.Exit as err:
        raise SystemExit(err.exit_code) from None
    except BadInput as err:
        fail(str(err))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as err:
        # a full disk or a folder that became unwritable mid-run: not the user's input (exit 1),
        # but still one line; files written before (checkpoints) were replaced atomically
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(1) from None
    if isinstance(rv, int) and rv:
        raise SystemExit(rv)


# --- checks shared by every command ----------------------------------------------------------

PLOT_SUFFIXES = (".png", ".pdf", ".svg")
# The one --json/--csv/--plot overwrite rule (docs/guide.md): an existing output file is
# replaced, and the command says so (one note line at its end, when it did replace it). It is
# written when the work is done, so a command that fails or is interrupted leaves it as it
# was. Inputs, checkpoints and run files are never output files (check_output_path refuses them).
REPLACED_NOTE = "note: {option} {path} existed and was replaced"
# note -> (path, its state when checked); run_app prints the notes of the files that changed
_replaced: dict[str, tuple[Path, tuple[int, int, int] | None]] = {}


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def quoted_path(path: Path | str) -> str:
    """A path for a message: its repr when short and printable, else :func:`shown` (bounded)."""
    text = str(path)
    return repr(text) if len(text) <= 200 and text.isprintable() else shown(text)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)  # hard links
    except OSError:
        return False


def check_output_path(option: str, path: Path | None, *, inputs: Iterable[Path] = (),
                      run_dirs: Iterable[Path] = (), made_folders: Iterable[Path] = (),
                      suffixes: tuple[str, ...] | None = None) -> None:
    """Refuse, before any work, an output file that cannot be written or would destroy data.

    Refused: a directory; a path whose folder is missing, is a file or is not writable; a
    read-only existing file; one of ``inputs`` (e.g. the checkpoint a command reads); a
    checkpoint name (``*.pt``); an existing run file (a name in
    :data:`curvtools.runfiles.RUN_FILES`: ``config.json``, ``metrics.jsonl``, ``DONE``) or such a
    name inside one of
    ``run_dirs`` (folders the command writes a run into); a suffix not in ``suffixes`` when
    given. The folder may be missing only when it is
    one of ``made_folders`` (the command creates it, e.g. a new run directory). An existing file
    that passes is replaced by the command, and :func:`run_app` says so in one ``note:`` line
    when the command has finished (:data:`REPLACED_NOTE`, the one overwrite rule of every
    command). Example::

        check_output_path("--json", Path("r/last.pt"), inputs=[Path("r/last.pt")])  # BadInput
    """
    if path is None:
        return
    path = Path(path)
    named = f"{option} {quoted_path(path)}"
    if path.is_dir():
        raise BadInput(f"{named} is a directory; give a file path")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise BadInput(f"{named} must end in {' or '.join(suffixes)}")
    blocker = next((p for p in path.parents if p.exists()), Path("."))
    if not blocker.is_dir():
        raise BadInput(f"{named} cannot be created: {quoted_path(blocker)} is a file")
    made = any(path.parent.resolve() == Path(d).resolve() for d in made_folders)
    if not path.parent.is_dir() and not made:
        raise BadInput(f"{named}: folder {quoted_path(path.parent)} does not exist")
    for source in inputs:
        if _same_file(path, Path(source)):
            raise BadInput(f"{named} is an input of this command ({quoted_path(source)}); "
                           "give another output file")
    in_run = any(path.parent.resolve() == Path(d).resolve() for d in run_dirs)
    run_file = path.name in RUN_FILES and (path.exists() or in_run)
    if path.suffix == ".pt" or run_file:
        file_names = ", ".join(n for n in RUN_FILES if not n.endswith(".pt"))
        raise BadInput(f"{named} is a run file (*.pt{', ' if file_names else ''}"
                       f"{file_names}); give another output file")
    folder = path.parent if path.parent.is_dir() else blocker
    if not _writable(folder) or (path.exists() and not os.access(path, os.W_OK)):
        raise BadInput(f"{named} is not writable (permission denied or a read-only file system)")
    if path.exists():
        _replaced.setdefault(REPLACED_NOTE.format(option=option, path=quoted_path(path)),
                             (path, _signature(path)))


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (asked without writing anything there)."""
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)  # root passes os.access
    except (OSError, AttributeError):  # no statvfs (Windows): os.access alone
        read_only = False
    return not read_only and os.access(folder, os.W_OK)


def check_output_dir(option: str, path: Path, *, writable: bool = True) -> None:
    """Refuse an output folder that exists as a file or cannot be created under a file (or,
    with ``writable``, whose nearest existing folder is not writable)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{option} {quoted_path(path)} is a file; give a folder")
    blocker = next((p for p in path.parents if p.exists()), Path("."))
    if not blocker.is_dir():
        raise BadInput(f"{option} {quoted_path(path)} cannot be created: {quoted_path(blocker)} "
                       f"is a file")
    if writable and not _writable(blocker):
        raise BadInput(f"{option} {quoted_path(path)} is not writable (permission denied)")


def require_expr(act: str, expr: str | None) -> None:
    """``--act expr`` names a user activation: refuse it without ``--expr`` (no silent default)."""
    if act.strip().lower() == "expr" and expr is None:
        raise BadInput("--act expr needs --expr EXPRESSION in x, e.g. --expr 'x*tanh(x)'")

"""Run a typer app so that bad input gives one line and exit code 2, never a traceback.

Shared by both console scripts (``curvtools`` and ``harness``).
"""

from __future__ import annotations

import importlib.util
import sys
import warnings

import typer

# typer >= 0.20 vendors click as typer._click; older releases use the click package.
if importlib.util.find_spec("typer._click") is not None:
    from typer import _click as click
else:  # pragma: no cover - depends on the installed typer
    import click

from curvtools.errors import BadInput


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

    Warnings (e.g. ``harness.evaluate.GradientMaskingWarning``) print as one ``warning:`` line.
    """
    with warnings.catch_warnings():  # restores the previous showwarning afterwards
        warnings.showwarning = _one_line_warning
        _run_app(app, prog_name, argv)


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
    except (typer.Abort, typer.Exit) as err:
        code = getattr(err, "exit_code", 130)
        raise SystemExit(code) from None
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

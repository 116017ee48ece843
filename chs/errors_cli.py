"""Turn expected failures into one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

try:  # typer >= 0.20 carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer on click
    from click.exceptions import ClickException, NoArgsIsHelpError

from chs.runtime.errors import ChsError, first_line

EXIT_BAD_INPUT = 2


def printable(text: str) -> str:
    """Control characters (a newline in a file name) escaped, so one record or message stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def fail(message: str) -> None:
    typer.echo(f"error: {printable(message.strip())}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _stdout_closed() -> None:
    """The reader of stdout went away (``| head -1``): a normal end. Later writes and the interpreter's final
    flush go to /dev/null, so no 'Exception ignored ... BrokenPipeError' follows."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (a test runner's buffer)
        pass
    sys.exit(0)


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
            sys.stdout.flush()  # a closed pipe shows up here when the output was buffered
            return result
        except typer.Exit:
            raise
        except BrokenPipeError:
            _stdout_closed()
        except ChsError as e:
            fail(str(e) or type(e).__name__)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
            fail(f"{e.strerror or type(e).__name__}: {e.filename}")
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # a bug, not bad input: still one line, the traceback on request
            if os.environ.get("CHS_DEBUG"):
                raise
            first = first_line(e, 300, empty="")
            typer.echo(f"error: internal error ({type(e).__name__}: {first}); set CHS_DEBUG=1 for the traceback",
                       err=True)
            raise typer.Exit(1) from None

    return wrapper


class OneLineTyper(typer.Typer):
    """A typer app whose usage errors (an unknown option, ``--epochs 1.5``, a missing argument) end like every
    other bad input: one ``error:`` line and exit 2, not click's multi-line usage panel. ``--help`` and a bare
    command that shows its help are unchanged."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().__call__(*args, **kwargs)
        except NoArgsIsHelpError as e:  # the help text, as click shows it
            e.show()
            code = e.exit_code
        except ClickException as e:  # usage errors carry exit code 2, like every other bad input
            typer.echo(f"error: {printable(' '.join(e.format_message().split()))}", err=True)
            code = e.exit_code
        except typer.Abort:
            typer.echo("interrupted", err=True)
            code = 130
        sys.exit(code if isinstance(code, int) else 0)

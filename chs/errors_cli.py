"""Turn expected failures into one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

from chs.runtime.errors import ChsError

EXIT_BAD_INPUT = 2


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except ChsError as e:
            fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
            fail(f"{e.strerror or type(e).__name__}: {e.filename}")
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # a bug, not bad input: still one line, the traceback on request
            if os.environ.get("CHS_DEBUG"):
                raise
            first = (str(e).strip().splitlines() or [""])[0][:300]
            typer.echo(f"error: internal error ({type(e).__name__}: {first}); set CHS_DEBUG=1 for the traceback",
                       err=True)
            raise typer.Exit(1) from None

    return wrapper

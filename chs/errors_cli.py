"""Turn expected failures into one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import typer

try:  # typer >= 0.20 carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer on click
    from click.exceptions import ClickException, NoArgsIsHelpError

from chs.runtime.errors import ChsError, first_line

EXIT_BAD_INPUT = 2
# optional packages a command may need, and the install that brings them (pyproject's extras)
_TORCH = "pip install torch==2.13.0 (CPU; or your CUDA build), then pip install 'chs[torch]'"
EXTRA_FOR = {"torch": _TORCH, "safetensors": _TORCH, "onnx": _TORCH, "onnxscript": _TORCH, "onnxsim": _TORCH,
             "polygraphy": _TORCH, "matplotlib": "pip install 'chs[plot]'", "dlib": "pip install 'chs[detect]'",
             "tritonclient": "pip install 'chs[serve]'", "tensorrt": "pip install 'chs[tensorrt-cu12]' (or -cu13)",
             "cuda": "pip install 'chs[tensorrt-cu12]' (or -cu13)"}


def missing_package(e: ModuleNotFoundError) -> str | None:
    """'this command needs X: <install>' for an optional package of an extra, else None (a real bug)."""
    top = (e.name or "").split(".")[0]
    return f"this command needs {top}, which is not installed: {EXTRA_FOR[top]}" if top in EXTRA_FOR else None


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
        except ModuleNotFoundError as e:
            install = missing_package(e)
            if install is None:
                raise _internal(e) from None
            fail(install)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # a bug, not bad input: still one line, the traceback on request
            raise _internal(e) from None

    return wrapper


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a job scheduler's or torchrun's stop) ends the block like Ctrl-C: cleanups run, e.g. the
    checkpoint being written is removed, instead of the process dying with a half-written folder left."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _internal(e: Exception) -> typer.Exit:
    """One line for a bug (exit 1); with CHS_DEBUG set, the original exception and its traceback."""
    if os.environ.get("CHS_DEBUG"):
        raise e
    first = first_line(e, 300, empty="")
    typer.echo(f"error: internal error ({type(e).__name__}: {first}); set CHS_DEBUG=1 for the traceback", err=True)
    return typer.Exit(1)


class OneLineTyper(typer.Typer):
    """A typer app whose usage errors (an unknown option, ``--epochs 1.5``, a missing argument) end like every
    other bad input: one ``error:`` line and exit 2, not click's multi-line usage panel. ``--help`` and a bare
    command that shows its help are unchanged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # help texts are plain text: "chs[detect]" and "[default: 30]" must not be read as rich markup and vanish
        kwargs.setdefault("rich_markup_mode", None)
        super().__init__(*args, **kwargs)

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
        # click hands back typer.Exit's code (the commands return None); anything else is a normal end
        sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)

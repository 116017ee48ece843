"""``chs-export``: prune, export, convert precision, check parity, build engines."""

from __future__ import annotations

from typing import Annotated

import typer

from chs.errors_cli import one_line_errors
from chs.export.options import ExportOptions
from chs.options_cli import options_command


def _export_extra(force: Annotated[bool, typer.Option("--force", help="Replace an existing export in --out (whole, "
                                                      "at the end; without it a non-empty --out is refused).")] = False
                  ) -> None:
    """The command line's own switch (the library takes ``if_exists``)."""


@one_line_errors
@options_command(ExportOptions, arguments=("model",), extra=_export_extra)
def export(opts: ExportOptions, force: bool) -> None:
    """Export a CHS checkpoint for deployment, refusing any file that drifts from PyTorch."""
    from dataclasses import replace

    from chs.export.pipeline import run_export

    run_export(replace(opts, if_exists="replace") if force else opts, log=typer.echo)

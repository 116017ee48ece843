"""``chs-bench``: the complexity table of the paper, latency, accuracy and the latency-vs-NME trade-off."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from chs.errors_cli import one_line_errors

bench_app = typer.Typer(help="Benchmarks: complexity (Table 9), latency, accuracy, trade-off.", no_args_is_help=True,
                        pretty_exceptions_enable=False, add_completion=False)


@bench_app.callback()
def _group() -> None:
    """Keeps ``chs-bench`` a command group even while it has few sub-commands."""


@bench_app.command()
@one_line_errors
def complexity(
    preset: Annotated[str, typer.Option(help="Model preset (paper figures are shown for wflw).")] = "wflw",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of rows.")] = False,
) -> None:
    """Params and GMACs of AWing and CHS with 0/1/2/4 CCR stages, beside the paper's Table 9."""
    from chs.benchmarks.complexity import complexity_rows, format_table
    from chs.model.config import get_preset

    get_preset(preset)  # one-line error for unknown presets before any work
    rows = complexity_rows(preset)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        typer.echo(format_table(rows))

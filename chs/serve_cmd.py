"""``chs-serve``: a real Triton Inference Server on a model repository, until SIGINT/SIGTERM."""

from __future__ import annotations

import signal

import typer

from chs.errors_cli import one_line_errors
from chs.options_cli import options_command
from chs.runtime.errors import ChsError
from chs.runtime.triton_server import ServeOptions, TritonServer, last_error_line


@one_line_errors
@options_command(ServeOptions, arguments=("repository",))
def serve(opts: ServeOptions) -> None:
    """Start Triton on REPOSITORY, wait until its models are ready, print the endpoints, stop cleanly on Ctrl-C."""
    server = TritonServer(opts)
    stop = server.cancel
    received: list[str] = []

    def on_signal(signum, _frame) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        typer.echo(f"tritonserver {server.install.binary} ready (log: {server.log_path})")
        for name, value in server.endpoints().items():
            typer.echo(f"  {name:<10} {value}")
        typer.echo("Ctrl-C or SIGTERM stops it.")
        while not stop.wait(0.5):
            if not server.running():
                raise ChsError(f"tritonserver exited unexpectedly (code {server.process.returncode}): "
                               f"{last_error_line(server.log_path)}")
        typer.echo(f"{received[0]}: stopping tritonserver")
    finally:
        code = server.stop()
        for s, h in previous.items():
            signal.signal(s, h)
    typer.echo(f"tritonserver stopped (exit code {code})")

"""``chs-serve``: a real Triton Inference Server on a model repository, until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from chs.errors_cli import one_line_errors
from chs.runtime.errors import ChsError
from chs.runtime.triton_server import ServeOptions, TritonServer, last_error_line

_D = ServeOptions(repository="")  # option defaults live in the dataclass


@one_line_errors
def serve(
    repo: Annotated[str, typer.Argument(help="Model repository (chs-export ... --triton NAME writes OUT/triton).")],
    http_port: Annotated[int, typer.Option(help="HTTP/REST port.")] = _D.http_port,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = _D.grpc_port,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = _D.metrics_port,
    host: Annotated[str, typer.Option(help="Address every endpoint binds (0.0.0.0 serves other machines).")] = _D.host,
    tritonserver: Annotated[str | None, typer.Option(
        help="tritonserver binary (default: the nvidia-pytriton wheel's, else PATH's).")] = _D.tritonserver,
    startup_timeout: Annotated[float, typer.Option(help="Seconds to wait for the models to be ready.")] = (
        _D.startup_timeout),
    log_file: Annotated[str | None, typer.Option(help="Write the server's log here (default: a temp file).")] = (
        _D.log_file),
) -> None:
    """Start Triton on REPO, wait until its models are ready, print the endpoints, stop cleanly on Ctrl-C."""
    opts = ServeOptions(repository=repo, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                        host=host, tritonserver=tritonserver, startup_timeout=startup_timeout, log_file=log_file)
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

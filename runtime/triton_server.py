"""Start, wait for and stop a real ``tritonserver`` on a model repository (what ``chs-serve`` runs).

The binary comes from the ``nvidia-pytriton`` wheel (installed with ``--no-deps``: its Python package pins
numpy<2, and only its server binary and python backend are used) or from PATH (a full Triton). The wheel's
binary needs what PyTriton's API would otherwise arrange, each measured on these machines:
- a backend folder holding ``libtriton_python.so``, ``triton_python_backend_utils.py`` and the stub built
  for the running Python (``python_backend_stubs/3.X/triton_python_backend_stub``);
- ``LD_LIBRARY_PATH`` with the wheel's ``nvidia_pytriton.libs`` and the running interpreter's LIBDIR (the
  stub links ``libpython3.X.so``; another build of the same version mixes library and stdlib);
- the serving environment's ``sys.path`` in ``CHS_TRITON_SYS_PATH``, which the repository's ``model.py``
  puts first (the stub's own path starts with the system site-packages and its numpy 1.x).
The server runs in its own process group so a stop reaches the python-backend stubs too.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from chs.runtime.errors import ChsError
from chs.runtime.options import option

PYTRITON_HINT = "pip install --no-deps nvidia-pytriton==0.7.0"


@dataclass(frozen=True)
class ServeOptions:
    """How ``chs-serve`` starts Triton. ``host`` is the address every endpoint binds (loopback by default;
    0.0.0.0 serves other machines). ``tritonserver``: a binary path; default the wheel's, else PATH's."""

    repository: str = option(help="Model repository (chs-export ... --triton NAME writes OUT/triton).")
    http_port: int = option(8000, "HTTP/REST port.")
    grpc_port: int = option(8001, "gRPC port.")
    metrics_port: int = option(8002, "Prometheus metrics port.")
    host: str = option("127.0.0.1", "Address every endpoint binds (0.0.0.0 serves other machines).")
    tritonserver: str | None = option(None, "tritonserver binary (default: the nvidia-pytriton wheel's, else PATH's).")
    startup_timeout: float = option(120.0, "Seconds to wait for the models to be ready.")
    exit_timeout: int = 5  # Triton's own drain on SIGTERM: it waits this long for open client connections
    kill_after: float = 10.0  # then this much more before the whole process group is killed
    log_file: str | None = option(None, "Write the server's log here (default: a temp file).")


@dataclass(frozen=True)
class ServerInstall:
    binary: Path
    wheel_root: Path | None  # pytriton's tritonserver/ folder when the binary is the wheel's
    libs: Path | None  # the wheel's bundled shared libraries


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks; closed again before returning)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_tritonserver(explicit: str | None = None) -> ServerInstall:
    """The server binary: ``explicit``, else the ``nvidia-pytriton`` wheel's, else ``tritonserver`` on PATH."""
    if explicit:
        p = Path(explicit)
        if not p.is_file() or not os.access(p, os.X_OK):
            raise ChsError(f"tritonserver binary {p} does not exist or is not executable")
        return _install_for(p.absolute())  # a bare name (script.py) would be looked up on PATH by Popen
    spec = find_spec("pytriton")  # locates the package without importing it (its __init__ wants numpy<2)
    if spec is not None and spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
        if (root / "bin" / "tritonserver").is_file():
            return _install_for(root / "bin" / "tritonserver")
    on_path = shutil.which("tritonserver")
    if on_path:
        return _install_for(Path(on_path))
    raise ChsError(f"no tritonserver found: install the serve extra and the server binary ({PYTRITON_HINT}), "
                   "or put a Triton Inference Server's tritonserver on PATH")


def _install_for(binary: Path) -> ServerInstall:
    root = binary.resolve().parent.parent
    if (root / "python_backend_stubs").is_dir():
        libs = root.parent.parent / "nvidia_pytriton.libs"
        return ServerInstall(binary, root, libs if libs.is_dir() else None)
    return ServerInstall(binary, None, None)


def repository_models(repository: str | Path) -> dict[str, str]:
    """Model name -> its backend (``python``, ``onnxruntime``, ``tensorrt``...) from each ``config.pbtxt``."""
    repo = Path(repository)
    if not repo.is_dir():
        raise ChsError(f"model repository {repo} is not a folder")
    models = {}
    for cfg in sorted(repo.glob("*/config.pbtxt")):
        text = cfg.read_text(errors="replace")
        m = re.search(r'^\s*(?:backend|platform)\s*:\s*"([^"]+)"', text, re.M)
        kind = m.group(1) if m else "unknown"
        models[cfg.parent.name] = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}.get(kind, kind)
    if not models:
        raise ChsError(f"{repo} holds no model (no */config.pbtxt): write one with chs-export ... --triton NAME")
    return models


def python_backend_dir(install: ServerInstall, dest: Path) -> Path:
    """Lay out ``dest/python/`` as the wheel's binary expects it, with the stub for this Python."""
    assert install.wheel_root is not None
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = install.wheel_root / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.is_file():
        raise ChsError(f"the installed nvidia-pytriton has no python backend stub for Python {ver}")
    py = dest / "python"
    py.mkdir(parents=True, exist_ok=True)
    src = install.wheel_root / "backends" / "python"
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(src / name, py / name)
    shutil.copy2(stub, py / "triton_python_backend_stub")
    return dest


def server_environment(install: ServerInstall) -> dict[str, str]:
    """The server's environment: library path for the wheel's binary and stub, this environment's sys.path."""
    env = dict(os.environ)
    libdirs = [str(install.libs)] if install.libs else []
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        libdirs.append(libdir)
    if env.get("LD_LIBRARY_PATH"):
        libdirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libdirs)
    env["CHS_TRITON_SYS_PATH"] = json.dumps([p for p in sys.path if p and Path(p).exists()])
    return env


def _get(url: str, timeout: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (our own loopback server)
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, ValueError):
        return 0


def last_error_line(log: Path | None) -> str:
    """The server log's most telling error, shortened to its message: a model that failed to load first,
    then the last error line (not the CPU-only CUDA notices)."""
    if log is None:
        return "no log"
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    loads = [ln for ln in lines if re.search(r"failed to load '[^']*' version", ln)]
    errors = [ln for ln in lines if re.match(r"^E\d{4} ", ln) and "CudaDriverHelper" not in ln]
    other = [ln for ln in lines if "error" in ln.lower()]
    line = (loads or errors or other or lines or ["no output"])[-1]
    line = re.sub(r"^[EWI]\d{4} [\d:.]+ \d+ [\w.]+:\d+\] ", "", line).strip().strip('"')
    return line.split("\\n")[0].strip()[:300]


class TritonServer:
    """One running ``tritonserver``; a context manager that always stops it (and its stubs)."""

    def __init__(self, opts: ServeOptions):
        self.opts = opts
        self.models = repository_models(opts.repository)
        for port in (opts.http_port, opts.grpc_port, opts.metrics_port):
            if not 0 < int(port) < 65536:
                raise ChsError(f"port {port} must be in 1..65535")
        if len({opts.http_port, opts.grpc_port, opts.metrics_port}) != 3:
            raise ChsError("the HTTP, gRPC and metrics ports must differ")
        if not 0 < opts.startup_timeout < math.inf:  # NaN or <= 0 would start a server and never wait for it
            raise ChsError(f"--startup-timeout must be a finite number of seconds > 0, got {opts.startup_timeout}")
        self.install = find_tritonserver(opts.tritonserver)
        if self.install.wheel_root is not None:
            other = {m: b for m, b in self.models.items() if b != "python"}
            if other:
                name, kind = next(iter(other.items()))
                raise ChsError(f"the tritonserver from nvidia-pytriton has only the python backend; model '{name}' "
                               f"needs {kind}: export with --triton-backend python, or serve it with a full Triton")
        self.cancel = threading.Event()  # set (e.g. by a signal handler) to abandon a start in progress
        self.process: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.log_path: Path | None = None

    # ----------------------------------------------------------------------------------------- endpoints
    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.opts.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.opts.grpc_port}"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.opts.host in ("0.0.0.0", "") else self.opts.host

    def endpoints(self) -> dict[str, str]:
        o = self.opts
        out = {"http": f"http://{o.host}:{o.http_port}", "grpc": f"{o.host}:{o.grpc_port}",
               "metrics": f"http://{o.host}:{o.metrics_port}/metrics"}
        for name in self.models:
            out[f"model {name}"] = f"triton://{self.http_url}/{name}  (gRPC: triton+grpc://{self.grpc_url}/{name})"
        return out

    # ----------------------------------------------------------------------------------------- lifecycle
    def command(self, backend_dir: Path | None) -> list[str]:
        o = self.opts
        cmd = [str(self.install.binary), "--model-repository", str(Path(o.repository).resolve()),
               "--http-address", o.host, "--http-port", str(o.http_port),
               "--grpc-address", o.host, "--grpc-port", str(o.grpc_port),
               "--metrics-address", o.host, "--metrics-port", str(o.metrics_port),
               "--allow-gpu-metrics", "false", "--strict-readiness", "true", "--exit-on-error", "true",
               "--exit-timeout-secs", str(int(o.exit_timeout))]
        if backend_dir is not None:
            cmd += ["--backend-directory", str(backend_dir)]
        return cmd

    def start(self) -> TritonServer:
        """Start the server and wait until every model in the repository is ready; ChsError otherwise."""
        self._tmp = tempfile.TemporaryDirectory(prefix="chs-triton-")
        tmp = Path(self._tmp.name)
        try:
            backend_dir = python_backend_dir(self.install, tmp / "backends") if self.install.wheel_root else None
            self.log_path = Path(self.opts.log_file) if self.opts.log_file else tmp / "tritonserver.log"
            with open(self.log_path, "wb") as log:
                try:
                    self.process = subprocess.Popen(self.command(backend_dir), stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, env=server_environment(self.install),
                                                    start_new_session=True)
                except OSError as e:  # e.g. a script without a shebang line: Exec format error
                    raise ChsError(f"cannot run tritonserver {self.install.binary}: {e.strerror or e}") from None
            self.wait_ready()
        except BaseException:  # not ready, or interrupted while waiting: never leave a server behind
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.opts.startup_timeout
        base = f"http://{self.http_url}/v2"
        while time.monotonic() < deadline:
            if self.cancel.is_set():
                raise ChsError("interrupted while tritonserver was starting")
            code = self.process.poll() if self.process else -1
            if code is not None:
                raise ChsError(f"tritonserver exited with code {code} before it was ready: "
                               f"{last_error_line(self.log_path)}")
            if _get(f"{base}/health/ready", 1.0) == 200 and all(
                    _get(f"{base}/models/{m}/ready", 1.0) == 200 for m in self.models):
                return
            time.sleep(0.2)
        raise ChsError(f"tritonserver was not ready within {self.opts.startup_timeout:g} s: "
                       f"{last_error_line(self.log_path)}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM (Triton finishes in-flight requests), then SIGKILL to the whole group after the timeout."""
        p, code = self.process, None
        if p is not None:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(self.opts.exit_timeout + self.opts.kill_after)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the stubs, and the server if it did not stop in time
            except (ProcessLookupError, PermissionError):
                pass
            code = p.wait()
            self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

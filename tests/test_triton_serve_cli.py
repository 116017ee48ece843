"""``chs-serve`` as a user runs it: start, serve 8 client threads, SIGTERM mid-run, clean exit.

The clients must each end with a one-line ChsError within their timeout once the server goes, never hang;
every answer they got before that must be correct. Plus the one-line errors of chs-serve itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("tritonclient.http", reason="the serve extra (tritonclient) is not installed")

from chs.export.triton import write_triton_repository  # noqa: E402
from chs.runtime.backends.ort import OrtRunner  # noqa: E402
from chs.runtime.backends.triton import TritonRunner  # noqa: E402
from chs.runtime.errors import ChsError  # noqa: E402
from chs.runtime.landmarks import DEFAULT_MODEL  # noqa: E402
from chs.runtime.triton_server import find_tritonserver, free_port  # noqa: E402

try:
    INSTALL = find_tritonserver()
except ChsError as e:
    pytest.skip(str(e), allow_module_level=True)

SERVE = [sys.executable, "-c", "from chs.cli import serve_app; serve_app()"]
CLIENT_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve_repo")
    write_triton_repository(d, "chs", onnx_path=DEFAULT_MODEL, meta=OrtRunner(DEFAULT_MODEL).meta, backend="python")
    return d


def _read_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    """chs-serve's stdout up to the line holding ``marker`` (a reader thread: readline alone could block)."""
    seen: list[str] = []
    done = threading.Event()

    def reader():
        for line in proc.stdout:
            seen.append(line)
            if marker in line:
                done.set()
                return
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    done.wait(timeout)
    return "".join(seen)


def test_sigterm_mid_run_clients_fail_fast_with_one_line(repo):
    ports = [free_port(), free_port(), free_port()]
    proc = subprocess.Popen([*SERVE, str(repo), "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
                             "--metrics-port", str(ports[2])], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out = _read_until(proc, "SIGTERM stops it", 90)
        assert f"triton://127.0.0.1:{ports[0]}/chs" in out, out + proc.stderr.read() if proc.poll() else out
        local = OrtRunner(DEFAULT_MODEL, providers="cpu")
        x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 128, 128)).astype(np.float32)
        want = local.infer(x)["landmarks"]
        ok, failures, wrong = [0] * 8, [None] * 8, []
        ended = [0.0] * 8

        def client(t: int, url: str) -> None:
            runner = TritonRunner(url, timeout=CLIENT_TIMEOUT)
            for i in range(10_000):  # bounded: the server goes away long before
                k = (t + i) % 4
                try:
                    lm = runner.infer(x[k : k + 1])["landmarks"][0]
                except ChsError as e:
                    failures[t] = str(e)
                    break
                ok[t] += 1
                if np.abs(lm - want[k]).max() > 1e-4:
                    wrong.append((t, i))
            ended[t] = time.monotonic()

        urls = [f"triton://127.0.0.1:{ports[0]}/chs"] * 4 + [f"triton+grpc://127.0.0.1:{ports[1]}/chs"] * 4
        threads = [threading.Thread(target=client, args=(t, u), daemon=True) for t, u in enumerate(urls)]
        for th in threads:
            th.start()
        time.sleep(3.0)
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for th in threads:
            th.join(60)
        assert not any(th.is_alive() for th in threads), "a client hung after the server stopped"
        assert wrong == [] and all(n > 0 for n in ok), ok
        assert all(f is not None and "\n" not in f and f.startswith("Triton at 127.0.0.1:") for f in failures), failures
        # each client fails within its timeout of the stop (plus the server's own drain of in-flight requests)
        assert max(ended) - stopped_at < CLIENT_TIMEOUT + 15
        code = proc.wait(30)
        rest = proc.stdout.read()
        assert code == 0 and "SIGTERM: stopping tritonserver" in rest and "tritonserver stopped" in rest
        with pytest.raises(ProcessLookupError):  # nothing of the server's process group is left
            os.killpg(proc.pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _serve_fails(*args: str) -> str:
    proc = subprocess.run([*SERVE, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_serve_errors_are_one_line(repo, tmp_path):
    assert "no model" in _serve_fails(str(tmp_path))
    assert "is not a folder" in _serve_fails(str(tmp_path / "missing"))
    assert "does not exist or is not executable" in _serve_fails(str(repo), "--tritonserver", str(tmp_path / "nope"))
    assert "ports must differ" in _serve_fails(str(repo), "--http-port", "9000", "--grpc-port", "9000")
    ort_repo = tmp_path / "ort"
    write_triton_repository(ort_repo, "m", onnx_path=DEFAULT_MODEL, meta=OrtRunner(DEFAULT_MODEL).meta)
    if INSTALL.wheel_root is not None:
        assert "needs onnxruntime: export with --triton-backend python" in _serve_fails(str(ort_repo))
    broken = tmp_path / "broken"
    meta = OrtRunner(DEFAULT_MODEL).meta
    write_triton_repository(broken, "chs", onnx_path=DEFAULT_MODEL, meta=meta, backend="python")
    (broken / "chs" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    msg = _serve_fails(str(broken), "--http-port", str(free_port()), "--grpc-port", str(free_port()),
                       "--metrics-port", str(free_port()))
    assert "failed to load 'chs' version 1" in msg and "cannot load ONNX model" in msg, msg
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        msg = _serve_fails(str(repo), "--http-port", str(port), "--grpc-port", str(free_port()),
                           "--metrics-port", str(free_port()))
        assert "tritonserver exited with code" in msg, msg
    finally:
        busy.close()

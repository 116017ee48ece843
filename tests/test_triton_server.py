"""A real Triton Inference Server on loopback serving the bundled model through the python backend.

One server for the module (started in a fixture that always stops it). Skipped with the reason when the
serve extra (tritonclient) or the server binary (nvidia-pytriton, or tritonserver on PATH) is missing.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.http", reason="the serve extra (tritonclient) is not installed")

from chs.export.triton import write_triton_repository  # noqa: E402
from chs.runtime.backends.ort import OrtRunner  # noqa: E402
from chs.runtime.backends.triton import TritonRunner  # noqa: E402
from chs.runtime.datasets import load_pts_folder  # noqa: E402
from chs.runtime.errors import ChsError  # noqa: E402
from chs.runtime.evaluate import crop_batch  # noqa: E402
from chs.runtime.geometry import box_from_landmarks  # noqa: E402
from chs.runtime.imageio import read_image  # noqa: E402
from chs.runtime.landmarks import DEFAULT_MODEL, LandmarkRuntime  # noqa: E402
from chs.runtime.triton_server import ServeOptions, TritonServer, find_tritonserver, free_port  # noqa: E402

try:
    find_tritonserver()
except ChsError as e:
    pytest.skip(str(e), allow_module_level=True)

NAME = "chs"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local() -> OrtRunner:
    return OrtRunner(DEFAULT_MODEL, providers="cpu")


@pytest.fixture(scope="module")
def server(tmp_path_factory, local):
    repo = tmp_path_factory.mktemp("triton_repo")
    write_triton_repository(repo, NAME, onnx_path=DEFAULT_MODEL, meta=local.meta, backend="python")
    opts = ServeOptions(str(repo), http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                        startup_timeout=90)
    srv = TritonServer(opts)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        assert not srv.running()


@pytest.fixture(scope="module", params=["http", "grpc"])
def url(request, server) -> str:
    return f"triton://{server.http_url}/{NAME}" if request.param == "http" else f"triton+grpc://{server.grpc_url}/{NAME}"


def real_faces(fixtures_dir: Path, shared_root: Path | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The fixture photos (always here) and, where the shared data is present, 60 ytf68 val faces."""
    samples = load_pts_folder(fixtures_dir / "pts")
    if shared_root is not None and (shared_root / "ytf68" / "val").is_dir():
        samples += load_pts_folder(shared_root / "ytf68" / "val")[:60]
    images = [read_image(s.image_path) for s in samples]
    return images, [box_from_landmarks(s.landmarks) for s in samples]


def test_landmarks_equal_in_process_onnx_runtime_on_real_faces(url, local, fixtures_dir):
    images, boxes = real_faces(fixtures_dir, Path(os.environ.get("CHS_DATA_ROOT") or REPO.parent / "shared" / "data"))
    remote = LandmarkRuntime.load(url, detector=None, max_batch=16)
    here = LandmarkRuntime(local, detector=None, max_batch=16)
    assert remote.meta == here.meta and remote.runner.name in ("triton-http", "triton-grpc")
    got = remote.predict_batch(images, [[b] for b in boxes])
    want = here.predict_batch(images, [[b] for b in boxes])
    diff = max(float(np.abs(g[0].landmarks - w[0].landmarks).max()) for g, w in zip(got, want, strict=True))
    assert len(got) == len(images) >= 4 and diff <= 1e-4, diff
    assert all(np.allclose(g[0].scores, w[0].scores, atol=1e-6) for g, w in zip(got, want, strict=True))


def test_eight_threads_times_100_requests_all_correct(url, local, fixtures_dir):
    """The acceptance run over HTTP; gRPC takes a quarter of the requests (the suite runs on 2 cores)."""
    requests = 100 if url.startswith("triton://") else 25
    images, boxes = real_faces(fixtures_dir, None)
    crops, _ = crop_batch(images, boxes, local.meta)
    reference = local.infer(crops)["landmarks"]
    runner = TritonRunner(url, timeout=30)
    results: dict[tuple[int, int], float] = {}
    errors: list[str] = []

    def client(t: int) -> None:
        for i in range(requests):
            k = (t + i) % len(crops)
            try:
                lm = runner.infer(crops[k : k + 1])["landmarks"][0]
                results[(t, i)] = float(np.abs(lm - reference[k]).max())
            except ChsError as e:
                errors.append(str(e))

    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not any(th.is_alive() for th in threads), "a client hung"
    assert errors == [] and len(results) == 8 * requests  # none lost
    assert max(results.values()) <= 1e-4
    runner.close()


def test_wrong_shape_dtype_and_values_are_refused_by_the_server(url, local):
    s = local.meta.input_size
    runner = TritonRunner(url, timeout=30)
    with pytest.raises(ChsError, match=r"unexpected shape for input .input.*Expected \[-1,3,128,128\], got \[1,3,64"):
        runner.infer(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(ChsError, match="data-type is 'FP64', but model 'chs' expects 'FP32'"):
        runner.infer(np.zeros((1, 3, s, s), np.float64))
    nan = np.zeros((2, 3, s, s), np.float32)
    nan[1, 0, 0, 0] = np.nan
    with pytest.raises(ChsError, match="NaN or infinity"):
        runner.infer(nan)
    ok = runner.infer(np.zeros((40, 3, s, s), np.float32))  # beyond max_batch_size 32: sent in two chunks
    assert ok["landmarks"].shape == (40, 68, 2) and np.isfinite(ok["landmarks"]).all()


def test_raw_client_gets_the_servers_message(server):
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    c = th.InferenceServerClient(server.http_url, network_timeout=10)
    x = np.zeros((1, 3, 128, 128), np.float16)
    inp = th.InferInput("input", list(x.shape), "FP16")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="data-type is 'FP16', but model 'chs' expects 'FP32'"):
        c.infer(NAME, [inp])
    cfg = c.get_model_config(NAME)
    assert cfg["backend"] == "python" and cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert json.loads(cfg["parameters"]["chs.meta"]["string_value"])["input_size"] == 128
    c.close()


def test_dead_wrong_and_silent_servers_give_one_line_errors(server):
    port = free_port()
    for url in (f"triton://127.0.0.1:{port}/chs", f"triton+grpc://127.0.0.1:{port}/chs"):
        with pytest.raises(ChsError, match=f"Triton at 127.0.0.1:{port}") as e:
            TritonRunner(url, timeout=5)
        assert "\n" not in str(e.value)
    with pytest.raises(ChsError, match="no ready model 'other'"):
        TritonRunner(f"triton://{server.http_url}/other", timeout=5)
    with pytest.raises(ChsError, match=f"Triton at 127.0.0.1:{server.opts.metrics_port}"):
        TritonRunner(f"triton://127.0.0.1:{server.opts.metrics_port}/chs", timeout=5)  # metrics, not Triton HTTP

    # a port that accepts connections and never answers: the timeout ends the call
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        for scheme in ("triton", "triton+grpc"):
            t0 = time.monotonic()
            with pytest.raises(ChsError, match="timed out after 2 s"):
                TritonRunner(f"{scheme}://127.0.0.1:{silent.getsockname()[1]}/chs", timeout=2)
            assert time.monotonic() - t0 < 10
    finally:
        silent.close()


def test_chs_align_with_a_triton_url(server, tmp_path):
    from typer.testing import CliRunner

    from chs.cli import align_app

    url = f"triton://{server.http_url}/{NAME}"
    remote = CliRunner().invoke(align_app, ["--demo", "--json", "--model", url, "--out", str(tmp_path / "r")])
    local = CliRunner().invoke(align_app, ["--demo", "--json", "--out", str(tmp_path / "l")])
    assert remote.exit_code == 0 and local.exit_code == 0, remote.output
    lines = [json.loads(ln) for ln in remote.output.splitlines() if ln.startswith("{")]
    want = [json.loads(ln) for ln in local.output.splitlines() if ln.startswith("{")]
    assert len(lines) == len(want) == 1
    assert np.abs(np.array(lines[0]["landmarks"]) - np.array(want[0]["landmarks"])).max() <= 1e-3  # JSON rounds
    bad = CliRunner().invoke(align_app, ["--demo", "--model", f"triton://127.0.0.1:{free_port()}/chs"])
    assert bad.exit_code == 2 and "connection refused" in bad.output


def test_serve_benchmark_against_the_running_server(server):
    from chs.benchmarks.serve import ServeBenchOptions, format_serve, run_serve_bench

    url = f"triton://{server.http_url}/{NAME}"
    res = run_serve_bench(ServeBenchOptions(clients=3, requests=4, passes=1, protocols=("http",), url=url),
                          log=lambda *_: None)
    rows = {r["row"]: r for r in res["rows"]}
    assert list(rows) == ["in-process ORT, 1 client", "in-process ORT, 3 clients", "Triton http, 3 clients"]
    served = rows["Triton http, 3 clients"]
    assert served["answered"] == served["requests"] == 12 and served["wrong"] == 0 and served["errors"] == 0
    assert 1.0 <= served["mean_server_batch"] <= 3.0 and served["faces_per_s"] > 0
    assert rows["in-process ORT, 1 client"]["answered"] == 4
    assert "| Triton http, 3 clients |" in format_serve(res, "machine")
    with pytest.raises(ChsError, match="--clients must be >= 1"):
        run_serve_bench(ServeBenchOptions(clients=0, url=url))
    with pytest.raises(ChsError, match="--protocol: unknown value 'udp'"):
        run_serve_bench(ServeBenchOptions(protocols=("udp",), url=url))


def test_chs_eval_measures_nme_through_the_server(server, fixtures_dir):
    from typer.testing import CliRunner

    from chs.cli import eval_app
    from chs.model.runner import open_runner

    url = f"triton+grpc://{server.grpc_url}/{NAME}"
    assert isinstance(open_runner(url), TritonRunner)
    with pytest.raises(ChsError, match="served as exported: no --backend, no --ccr"):
        open_runner(url, ccr=1)
    remote = CliRunner().invoke(eval_app, [url, "--data", str(fixtures_dir / "pts"), "--json"])
    local = CliRunner().invoke(eval_app, [str(DEFAULT_MODEL), "--data", str(fixtures_dir / "pts"), "--json"])
    assert remote.exit_code == 0 and local.exit_code == 0, remote.output
    r, loc = json.loads(remote.output), json.loads(local.output)
    assert r["n"] == loc["n"] == 4 and abs(r["nme_iod"] - loc["nme_iod"]) < 1e-6


def test_a_hung_server_times_out_then_recovers(server, local):
    """SIGSTOP: the server holds the connection and answers nothing; each call ends at its timeout."""
    import signal

    x = np.zeros((1, 3, 128, 128), np.float32)
    runners = [TritonRunner(f"triton://{server.http_url}/{NAME}?timeout=2"),
               TritonRunner(f"triton+grpc://{server.grpc_url}/{NAME}?timeout=2")]
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        for r in runners:
            t0 = time.monotonic()
            with pytest.raises(ChsError, match="timed out after 2 s") as e:
                r.infer(x)
            assert time.monotonic() - t0 < 8 and "\n" not in str(e.value)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    for r in runners:  # the same runners work again once the server does
        assert np.abs(r.infer(x)["landmarks"] - local.infer(x)["landmarks"]).max() <= 1e-4


def test_readme_triton_block_runs(server, local, tmp_path, monkeypatch):
    """The README's triton:// example, as written but for this server's ports, gives local ONNX Runtime's
    landmarks."""
    import shutil

    from chs.runtime import DEMO_IMAGE
    from tests.test_readme import _python_blocks

    (block,) = _python_blocks(remote=True)
    http_port, grpc_port = server.http_url.rsplit(":", 1)[1], server.grpc_url.rsplit(":", 1)[1]
    block = block.replace("127.0.0.1:8000", f"127.0.0.1:{http_port}").replace("127.0.0.1:8001",
                                                                             f"127.0.0.1:{grpc_port}")
    shutil.copy(DEMO_IMAGE, tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md triton block", "exec"), namespace)
    (face,) = namespace["faces"]
    want = LandmarkRuntime.load(DEFAULT_MODEL).predict("photo.jpg", boxes=[face.box])
    assert np.abs(face.landmarks - want[0].landmarks).max() <= 1e-4

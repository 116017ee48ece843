"""``chs-bench serve``: N client threads x M requests against a model served by Triton on loopback, with
the same load in-process beside it, so the serving cost and the dynamic batcher's gain are visible.

Each row: faces/s over the whole run, p50/p99 per face (request latency / crops per request), requests
that failed or whose landmarks differ from in-process ONNX Runtime by more than 1e-4 px, and for served
rows the mean batch the dynamic batcher formed (Triton's inference_count / execution_count). Rows run
interleaved in ``passes`` rounds, so a change of machine load hits every row alike.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from chs.runtime.errors import ChsError
from chs.runtime.options import comma_list, option, whole_number

TOLERANCE_PX = 1e-4
PROTOCOLS = ("http", "grpc")


@dataclass(frozen=True)
class ServeBenchOptions:
    model: str = option("default", "Exported .onnx file or 'default' (the bundled model).")
    clients: int = option(8, "Client threads.")
    requests: int = option(100, "Requests per client and pass.")
    batch: int = option(1, "Crops per request.")
    protocols: tuple[str, ...] = option(PROTOCOLS, "Comma list of http, grpc.", flag="--protocol",
                                        parse=lambda text: tuple(comma_list(text, "--protocol")), show=",".join)
    passes: int = option(2, "Interleaved rounds over all rows.")
    data: str | None = option(None, "Annotated faces to crop (default: the demo photo).")
    faces: int = 64  # at most this many faces from ``data``
    timeout: float = 30.0
    url: str | None = option(None, "Bench this running server (triton://HOST:PORT/NAME) instead of starting one.")


def check_options(o: ServeBenchOptions) -> None:
    for name in ("clients", "requests", "batch", "passes", "faces"):
        whole_number(getattr(o, name), f"--{name}", 1)
    bad = [p for p in o.protocols if p not in PROTOCOLS]
    if bad or not o.protocols:
        raise ChsError(f"--protocol: unknown value '{bad[0] if bad else ''}' (choose from http, grpc)")
    if not o.timeout > 0:
        raise ChsError(f"--timeout must be > 0 s, got {o.timeout}")


def real_crops(runner, data: str | None, limit: int) -> np.ndarray:
    """Crops of real faces with the boxes the model was trained on (or the demo photo's stored box)."""
    from chs.runtime.evaluate import crop_batch

    if data:
        from chs.runtime.datasets import load_dataset
        from chs.runtime.evaluate import sample_box

        samples = [s for s in load_dataset(data) if s.image_path is not None][:limit]
        if not samples:
            raise ChsError(f"no faces with images in {data}")
        images = [s.load_image() for s in samples]
        boxes = [sample_box(s, runner.meta) for s in samples]
    else:
        from chs.runtime.assets import demo_face

        image, box = demo_face()
        images, boxes = [image], [box]
    return crop_batch(images, boxes, runner.meta)[0]


def _load(infer, crops: np.ndarray, reference: np.ndarray, clients: int, requests: int, batch: int) -> dict:
    """``clients`` threads each sending ``requests`` batches; latencies, failures and wrong answers."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    wrong = [0]
    lock = threading.Lock()

    def client(t: int) -> None:
        for i in range(requests):
            idx = [(t * requests + i * batch + j) % len(crops) for j in range(batch)]
            t0 = time.perf_counter()
            try:
                lm = infer(crops[idx])["landmarks"]
            except ChsError as e:
                with lock:
                    errors.append(str(e))
                continue
            lat[t].append(time.perf_counter() - t0)
            if not np.abs(lm - reference[idx]).max() <= TOLERANCE_PX:
                with lock:
                    wrong[0] += 1

    threads = [threading.Thread(target=client, args=(t,), daemon=True) for t in range(clients)]
    start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    times = np.array([x for per in lat for x in per])
    done = len(times)
    return {"wall_s": wall, "times": times, "requests": clients * requests, "answered": done, "errors": len(errors),
            "first_error": errors[0] if errors else None, "wrong": wrong[0], "faces_per_s": done * batch / wall}


def run_serve_bench(o: ServeBenchOptions, log=print) -> dict:
    """Start a server (unless ``o.url``), run every row ``o.passes`` times interleaved, return the table."""
    from chs.runtime.backends.opener import open_model

    check_options(o)
    local = open_model(o.model, backend="ort", providers="cpu")
    crops = real_crops(local, o.data, o.faces)
    reference = local.infer(crops)["landmarks"]
    from chs.runtime.backends.triton import TritonRunner, parse_triton_url

    with tempfile.TemporaryDirectory(prefix="chs-bench-serve-") as tmp:
        server = None
        if o.url is None:
            from chs.export.triton import write_triton_repository
            from chs.runtime.triton_server import ServeOptions, TritonServer, free_port

            write_triton_repository(tmp, "chs", onnx_path=local.path, meta=local.meta, backend="python")
            server = TritonServer(ServeOptions(tmp, http_port=free_port(), grpc_port=free_port(),
                                               metrics_port=free_port()))
            log(f"starting tritonserver ({server.install.binary})")
            server.start()
            urls = {"http": f"triton://{server.http_url}/chs", "grpc": f"triton+grpc://{server.grpc_url}/chs"}
        else:
            urls = {parse_triton_url(o.url)[0]: o.url}  # triton:// and triton+http:// are http
        remote: dict[str, TritonRunner] = {}
        try:
            for p in o.protocols:
                if p in urls:
                    remote[p] = TritonRunner(urls[p], timeout=o.timeout)
            rows = {"in-process ORT, 1 client": (local.infer, 1, None),
                    f"in-process ORT, {o.clients} clients": (local.infer, o.clients, None)}
            for p, r in remote.items():
                rows[f"Triton {p}, {o.clients} clients"] = (r.infer, o.clients, r)
            for fn, _, _r in rows.values():  # warm-up: sessions, connections, the server's first batches
                fn(crops[: o.batch])
            results: dict[str, list[dict]] = {name: [] for name in rows}
            for _ in range(o.passes):
                for name, (fn, clients, r) in rows.items():
                    before = r.batch_counts() if r is not None else None
                    res = _load(fn, crops, reference, clients, o.requests, o.batch)
                    if before is not None:
                        after = r.batch_counts()
                        res["server_batch"] = (after[0] - before[0]) / max(1, after[1] - before[1])
                    log(f"{name}: {res['faces_per_s']:.1f} faces/s")
                    results[name].append(res)
        finally:  # clients first (also when a row or a second client failed), then the server
            for r in remote.values():
                r.close()
            if server is not None:
                server.stop()
    table = [_row(name, runs, o.batch) for name, runs in results.items()]
    return {"options": asdict(o), "faces_in_pool": int(len(crops)), "rows": table}


def _row(name: str, runs: list[dict], batch: int) -> dict:
    from chs.runtime.timing import percentiles

    times = np.concatenate([r["times"] for r in runs]) if any(len(r["times"]) for r in runs) else np.zeros(1)
    pct = percentiles(times, per=batch)
    row = {"row": name, "faces_per_s": float(np.median([r["faces_per_s"] for r in runs])),
           "faces_per_s_per_pass": [round(r["faces_per_s"], 2) for r in runs],
           "p50_ms_per_face": pct["p50_ms"], "p99_ms_per_face": pct["p99_ms"],
           "requests": sum(r["requests"] for r in runs), "answered": sum(r["answered"] for r in runs),
           "errors": sum(r["errors"] for r in runs), "wrong": sum(r["wrong"] for r in runs)}
    if any(r["first_error"] for r in runs):
        row["first_error"] = next(r["first_error"] for r in runs if r["first_error"])
    if "server_batch" in runs[0]:
        row["mean_server_batch"] = float(np.mean([r["server_batch"] for r in runs]))
    return row


def format_serve(result: dict, machine: str) -> str:
    o = result["options"]
    lines = [f"# chs-bench serve: {o['clients']} clients x {o['requests']} requests x {o['passes']} passes, "
             f"{o['batch']} crop(s) per request", "", f"{machine}", "",
             "| row | faces/s (median of passes) | per pass | p50 ms/face | p99 ms/face | answered / sent | wrong "
             "| mean server batch |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        sb = f"{r['mean_server_batch']:.2f}" if "mean_server_batch" in r else "–"
        per_pass = ", ".join(f"{v:.1f}" for v in r["faces_per_s_per_pass"])
        lines.append(f"| {r['row']} | {r['faces_per_s']:.1f} | {per_pass} | {r['p50_ms_per_face']:.2f} "
                     f"| {r['p99_ms_per_face']:.2f} | {r['answered']} / {r['requests']} | {r['wrong']} | {sb} |")
    return "\n".join(lines)

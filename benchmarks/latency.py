"""``chs-bench latency``: per-face latency of every (CCR count, backend, precision, batch), beside its floor.

Every row carries p50/p90/p99 ms per face, faces/s, the GMACs of that CCR count and a compute floor
(2 x MACs / matmul peak of the same machine, measured in the same run), so ``efficiency = floor / p50`` says
how close a backend gets to the hardware. CUDA timings are synchronised after every call (unsynchronised
GPU timings are a classic benchmarking mistake). The whole timing runs twice; rows whose two p50s differ
by more than 10 % are flagged ``noisy`` (shared or virtualised cores).

ONNX files are exported once per CCR count into ``work_dir/ccr{k}/`` with :func:`chs.export.pipeline.run_export`
and reused while the checkpoint (and calibration source) is unchanged. Combinations that cannot run here
(TensorRT without a GPU, torch FP16 on CPU, INT8 without calibration data, ...) become rows with
``status: "skipped"`` and a ``reason``, so a table always shows what was asked for.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chs.runtime.errors import ChsError
from chs.runtime.timing import percentiles, time_calls

BACKENDS = ("torch", "ort", "trt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
NOISE_THRESHOLD = 0.10
DEMO = Path(__file__).resolve().parent.parent / "runtime" / "assets" / "demo"
SOURCE_STAMP = "bench_source.json"
ONNX_FILES = {"fp32": "model_fp32.onnx", "fp16": "model_fp16.onnx", "int8-u8s8": "model_int8_u8s8.onnx",
              "int8-s8s8": "model_int8_s8s8.onnx"}

Log = Callable[[str], None]


class Skip(Exception):
    """A combination that cannot run on this machine; the message is the row's reason."""


# --------------------------------------------------------------------------------------------- helpers


def _quiet(msg: str) -> None:
    pass


def trained_ccr(model: str | os.PathLike) -> int:
    """CCR stages the checkpoint was trained with (one-line ChsError if it is not a checkpoint)."""
    from chs.model.checkpoint import read_checkpoint_config, resolve_model_path
    from chs.model.config import ChsConfig

    meta = read_checkpoint_config(resolve_model_path(model))
    return ChsConfig.from_dict(meta["config"]).ccr_stages


def check_request(model: str | os.PathLike, backends: Sequence[str], precisions: Sequence[str],
                  ccrs: Sequence[int], batches: Sequence[int] = (1,)) -> None:
    """Reject unknown backends/precisions and unavailable CCR counts before any work."""
    for b in backends:
        if b not in BACKENDS:
            raise ChsError(f"unknown backend '{b}' (choose from {', '.join(BACKENDS)})")
    for p in precisions:
        if p not in PRECISIONS:
            raise ChsError(f"unknown precision '{p}' (choose from {', '.join(PRECISIONS)})")
    for n in batches:
        if n < 1:
            raise ChsError(f"batch sizes must be >= 1, got {n}")
    trained = trained_ccr(model)
    for k in ccrs:
        if k < 0 or k > trained:
            raise ChsError(f"--ccr {k} is not available: {model} was trained with {trained} CCR stage(s)")


def model_complexity(model: str | os.PathLike, ccr: int) -> tuple[int, int]:
    """(params, MACs per face) of the checkpoint's architecture pruned to ``ccr`` stages, built on ``meta``."""
    import torch

    from chs.model.checkpoint import read_checkpoint_config, resolve_model_path
    from chs.model.chs import build_model
    from chs.model.complexity import count_complexity
    from chs.model.config import ChsConfig

    cfg = ChsConfig.from_dict(read_checkpoint_config(resolve_model_path(model))["config"]).replace(ccr_stages=ccr)
    with torch.device("meta"):
        net = build_model(cfg)
    c = count_complexity(net, cfg.input_size)
    return c.params, c.macs


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'."""
    if device not in ("auto", "cpu", "cuda"):
        raise ChsError(f"--device must be auto, cpu or cuda, got '{device}'")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise ChsError("--device cuda: torch sees no CUDA device")
    return "cpu"


def demo_crops(meta: Any) -> np.ndarray:
    """Real face crops (the bundled demo face, 16 jittered cuts) for timing; shape (16, 3, S, S)."""
    from chs.export.parity import parity_crops

    crops, _, _ = parity_crops(meta)
    return crops


def batch_of(crops: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(crops, (n, *crops.shape[1:])), dtype=np.float32)


# --------------------------------------------------------------------------------------------- exports


def _stamp(model: str | os.PathLike, ccr: int, calib: str | None) -> dict:
    from chs.model.checkpoint import WEIGHTS, resolve_model_path

    path = resolve_model_path(model).resolve()
    st = (path / WEIGHTS).stat()
    return {"model": str(path), "weights_size": st.st_size, "weights_mtime_ns": st.st_mtime_ns, "ccr": ccr,
            "calib": str(Path(calib).resolve()) if calib else None}


def ensure_exports(model: str | os.PathLike, ccr: int, work_dir: str | os.PathLike, precisions: Iterable[str],
                   calib: str | None = None, log: Log = _quiet, parity_data: str | None = None
                   ) -> dict[str, Path | str]:
    """ONNX files of one CCR count in ``work_dir/ccr{k}``: {key: path, or the reason it is missing}.

    Keys: fp32, fp16, int8-u8s8, int8-s8s8. Files are reused while the checkpoint and calibration source are
    unchanged (``bench_source.json``); ``parity_data`` (annotated faces) makes the export's parity gate
    measure ΔNME instead of bounding it on the demo face; a failed FP16/INT8 step (e.g. its parity gate)
    falls back to an FP32 export and the failure is remembered, not retried."""
    from chs.export.pipeline import ExportOptions, run_export

    want = set(precisions)
    out = Path(work_dir) / f"ccr{ccr}"
    stamp = _stamp(model, ccr, calib)
    stamp_file = out / SOURCE_STAMP
    old = json.loads(stamp_file.read_text()) if stamp_file.is_file() else None
    failed: dict[str, str] = {}
    if old and old.get("source") == stamp:
        failed = dict(old.get("failed", {}))
    elif out.exists():  # another model or calibration set: never reuse its files
        for name in ONNX_FILES.values():
            (out / name).unlink(missing_ok=True)
        stamp_file.unlink(missing_ok=True)

    result: dict[str, Path | str] = {}
    need_fp16 = "fp16" in want and "fp16" not in failed and not (out / ONNX_FILES["fp16"]).is_file()
    need_int8 = "int8" in want and calib is not None and "int8" not in failed and not all(
        (out / ONNX_FILES[k]).is_file() for k in ("int8-u8s8", "int8-s8s8"))
    need_fp32 = not (out / ONNX_FILES["fp32"]).is_file()

    def export(fp16: bool, int8: bool) -> None:
        what = "+".join(["fp32"] + (["fp16"] if fp16 else []) + (["int8"] if int8 else []))
        log(f"exporting CCR {ccr} ({what}) into {out}")
        opts = ExportOptions(model=str(model), out=str(out), ccr=ccr, fp16=fp16, int8=int8, calib=calib,
                             parity_data=parity_data, engine="never", time_int8=False)
        with contextlib.redirect_stdout(sys.stderr):  # exporters print; keep stdout for --json
            run_export(opts, log=log)

    if need_fp32 or need_fp16 or need_int8:
        try:
            export(need_fp16, need_int8)
        except ChsError as e:
            if not (need_fp16 or need_int8):
                raise
            reason = f"export failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            for p, needed in (("fp16", need_fp16), ("int8", need_int8)):
                if needed:
                    failed[p] = reason
            log(f"CCR {ccr}: {reason}; exporting FP32 only")
            if not (out / ONNX_FILES["fp32"]).is_file():
                export(False, False)
        out.mkdir(parents=True, exist_ok=True)
        stamp_file.write_text(json.dumps({"source": stamp, "failed": failed}, indent=2))

    for key, name in ONNX_FILES.items():
        prec = key.split("-")[0]
        if (out / name).is_file():
            result[key] = out / name
        elif prec == "int8" and calib is None:
            result[key] = "int8 needs calibration data (--calib DATA)"
        elif prec in failed:
            result[key] = failed[prec]
        else:
            result[key] = f"{name} was not exported"
    return result


# --------------------------------------------------------------------------------------------- runners


class TorchCudaRunner:
    """A CHSNet on CUDA, eager or replayed from a CUDA graph, FP32 or FP16/BF16 autocast.

    Host batch in, host landmarks/scores out (copies included in the time, as for every other runner).
    Not exercised on the project's CPU-only CI."""

    def __init__(self, model: Any, precision: str = "fp32", graphs: bool = False):
        import torch

        from chs.model.runner import model_meta

        self.model = model.eval().to("cuda")
        self.dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.meta = model_meta(model, precision)
        self.graphs = graphs
        self.name = "torch-cuda-graph" if graphs else "torch-cuda"
        self._captured: dict[tuple, tuple] = {}

    def _forward(self, x: Any) -> tuple[Any, Any]:
        import torch

        with torch.autocast("cuda", dtype=self.dtype or torch.float16, enabled=self.dtype is not None):
            out = self.model(x)
        return out["landmarks"][-1].float(), out["scores"].float()

    def _graph(self, shape: tuple) -> tuple:
        import torch

        if shape not in self._captured:
            x = torch.zeros(shape, device="cuda")
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._forward(x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outs = self._forward(x)
            self._captured[shape] = (graph, x, outs)
        return self._captured[shape]

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        from chs.runtime.geometry import heatmap_to_crop

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with torch.no_grad():
            if self.graphs:
                graph, static_x, (lm, sc) = self._graph(tuple(x.shape))
                static_x.copy_(x)
                graph.replay()
            else:
                lm, sc = self._forward(x.to("cuda"))
            lm, sc = lm.cpu().numpy(), sc.cpu().numpy()
        return {"landmarks": heatmap_to_crop(lm, self.meta.heatmap_stride).astype(np.float32),
                "scores": sc.astype(np.float32)}


@dataclass(frozen=True)
class Combo:
    """One runner configuration; ``mode`` is eager/cudagraph for torch on CUDA, '' otherwise."""

    ccr: int
    backend: str
    precision: str
    mode: str = ""


class RunnerFactory:
    """Builds (and caches) the runner of each :class:`Combo`, exporting ONNX/engines on first use."""

    def __init__(self, model: str | os.PathLike, work_dir: str | os.PathLike, precisions: Sequence[str],
                 calib: str | None = None, device: str = "auto", ort_providers: str = "auto",
                 max_batch: int = 32, threads: int | None = None, log: Log = _quiet,
                 parity_data: str | None = None):
        self.model, self.work_dir, self.precisions = str(model), Path(work_dir), tuple(precisions)
        self.calib, self.device, self.ort_providers = calib, resolve_device(device), ort_providers
        self.max_batch, self.threads, self.log = max_batch, threads, log
        self.parity_data = parity_data
        self._runners: dict[Combo, Any] = {}
        self._exports: dict[int, dict[str, Path | str]] = {}

    def combos(self, backends: Sequence[str], precisions: Sequence[str], ccrs: Sequence[int]) -> list[Combo]:
        modes = ("eager", "cudagraph") if self.device == "cuda" else ("",)
        out = []
        for k in ccrs:
            for b in backends:
                for p in precisions:
                    for m in (modes if b == "torch" else ("",)):
                        out.append(Combo(k, b, p, m))
        return out

    def exports(self, ccr: int) -> dict[str, Path | str]:
        if ccr not in self._exports:
            precs = [p for p in self.precisions if p in ("fp16", "int8")]
            self._exports[ccr] = ensure_exports(self.model, ccr, self.work_dir, ["fp32", *precs], self.calib,
                                                self.log, self.parity_data)
        return self._exports[ccr]

    def _file(self, ccr: int, key: str) -> Path:
        got = self.exports(ccr)[key]
        if isinstance(got, str):
            raise Skip(got)
        return got

    def get(self, c: Combo) -> Any:
        """The runner for ``c``; raises :class:`Skip` with the reason when it cannot run here."""
        if c not in self._runners:
            self._runners[c] = self._build(c)
        return self._runners[c]

    def _build(self, c: Combo) -> Any:
        if c.backend == "torch":
            from chs.model.checkpoint import load_checkpoint, resolve_model_path

            if c.precision == "int8":
                raise Skip("torch INT8 is not benchmarked: INT8 runs through ONNX Runtime (u8s8) or TensorRT (s8s8)")
            if self.device == "cpu":
                if c.precision != "fp32":
                    raise Skip(f"torch {c.precision} is measured on CUDA only (CPU rows are FP32)")
                from chs.model.runner import TorchRunner

                return TorchRunner(load_checkpoint(resolve_model_path(self.model), ccr=c.ccr), "cpu")
            return TorchCudaRunner(load_checkpoint(resolve_model_path(self.model), ccr=c.ccr), c.precision,
                                   graphs=c.mode == "cudagraph")
        if c.backend == "ort":
            if c.precision == "bf16":
                raise Skip("no BF16 ONNX export")
            from chs.runtime.backends.ort import OrtRunner

            key = "int8-u8s8" if c.precision == "int8" else c.precision
            if c.precision == "int8" and self.ort_providers == "tensorrt":
                key = "int8-s8s8"
            return OrtRunner(self._file(c.ccr, key), providers=self.ort_providers, threads=self.threads or 0)
        if c.backend == "trt":
            from chs.export.tensorrt import tensorrt_available

            ok, why = tensorrt_available()
            if not ok:
                raise Skip(why)
            if c.precision == "bf16":
                raise Skip("no BF16 ONNX export for TensorRT")
            return self._trt(c)
        raise Skip(f"unknown backend {c.backend}")

    def _trt(self, c: Combo) -> Any:
        from chs.export.tensorrt import build_engine_subprocess
        from chs.runtime.backends.trt import TensorRTRunner

        key = "int8-s8s8" if c.precision == "int8" else c.precision
        src = self._file(c.ccr, key)
        engine = src.with_name(f"{src.stem}_b{self.max_batch}.engine")
        if not engine.is_file() or engine.stat().st_mtime < src.stat().st_mtime:
            self.log(f"building TensorRT engine {engine.name}")
            hi = self.max_batch
            build_engine_subprocess(src, engine, batch=(1, min(8, hi), hi), timing_cache=src.parent / "timing.cache")
        return TensorRTRunner(engine)


# --------------------------------------------------------------------------------------------- timing


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (None = leave as is); restored afterwards."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _sync_for(runner: Any) -> Callable[[], None] | None:
    name = getattr(runner, "name", "")
    if "cuda" in name or name.startswith("trt"):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.synchronize
    return None


def _peak_key(precision: str, device: str) -> str:
    """Which GEMM bounds a precision: x86 CPUs have no FP16 GEMM, so FP16 graphs run on FP32 kernels there."""
    if device == "cpu" and precision == "fp16":
        return "fp32"
    return precision


def _finish(row: dict, samples: list[np.ndarray], per: int, noise: float) -> None:
    stats = percentiles(np.concatenate(samples), per=per)
    row.update(stats)
    p = [float(np.median(s) * 1e3 / per) for s in samples]
    row["p50_ms_passes"] = p
    row["noisy"] = bool(len(p) > 1 and max(p) / min(p) - 1 > noise)
    row["faces_per_s"] = 1e3 / stats["p50_ms"]


def _base_row(c: Combo, batch: int | None, device: str) -> dict:
    return {"kind": "landmarks", "ccr": c.ccr, "backend": c.backend, "mode": c.mode, "precision": c.precision,
            "batch": batch, "device": device, "status": "ok", "reason": "", "runner": None, "file": None}


def latency_rows(model: str | os.PathLike, backends: Sequence[str] = ("torch", "ort"),
                 precisions: Sequence[str] = ("fp32",), ccrs: Sequence[int] = (0, 1, 2),
                 batches: Sequence[int] = (1, 8), work_dir: str | os.PathLike = "bench-work", repeats: int = 20,
                 calib: str | None = None, *, warmup: int = 2, passes: int = 2, max_seconds: float = 30.0,
                 device: str = "auto", ort_providers: str = "auto", peak_seconds: float = 2.0,
                 detector: bool = True, peer: bool = True, noise_threshold: float = NOISE_THRESHOLD,
                 threads: int | None = None, factory: RunnerFactory | None = None, log: Log = _quiet) -> list[dict]:
    """One row per (ccr, backend, precision[, torch mode], batch), then a detector row and a dlib peer row.

    Times are per face (per image for the detector); p50/p90/p99 pool both passes, ``p50_ms_passes`` keeps
    each pass's p50 and ``noisy`` flags a > ``noise_threshold`` difference between them. ``threads`` sets
    torch's and ONNX Runtime's intra-op threads (None: their defaults)."""
    check_request(model, backends, precisions, ccrs, batches)
    if passes < 1 or repeats < 1:
        raise ChsError("--repeats and passes must be >= 1")
    factory = factory or RunnerFactory(model, work_dir, precisions, calib, device, ort_providers,
                                       max_batch=max(batches), threads=threads, log=log)
    with torch_threads(factory.threads):
        return _latency_rows(factory, model, backends, precisions, ccrs, batches, repeats, warmup, passes,
                             max_seconds, peak_seconds, detector, peer, noise_threshold, log)


def _latency_rows(factory: RunnerFactory, model: str | os.PathLike, backends: Sequence[str],
                  precisions: Sequence[str], ccrs: Sequence[int], batches: Sequence[int], repeats: int, warmup: int,
                  passes: int, max_seconds: float, peak_seconds: float, detector: bool, peer: bool,
                  noise_threshold: float, log: Log) -> list[dict]:
    import torch

    dev = factory.device
    macs = {k: model_complexity(model, k) for k in ccrs}
    peaks: dict[str, list[float] | str] = {}

    def probe(key: str) -> None:
        from chs.benchmarks.machine import matmul_peak

        try:
            got = matmul_peak(key, peak_seconds, dev)
        except ChsError as e:
            peaks[key] = str(e)
            return
        prev = peaks.get(key)
        peaks[key] = [*prev, got] if isinstance(prev, list) else [got]

    def peak(precision: str) -> float | None:
        key = _peak_key(precision, dev)
        if key not in peaks:
            probe(key)
        v = peaks[key]
        return max(v) if isinstance(v, list) else None

    rows: list[dict] = []
    jobs: list[tuple[dict, Any, np.ndarray, Callable[[], None] | None]] = []
    crops: dict[int, np.ndarray] = {}
    for c in factory.combos(backends, precisions, ccrs):
        try:
            runner = factory.get(c)
        except Skip as e:
            for b in batches:
                rows.append(_base_row(c, b, dev) | {"status": "skipped", "reason": str(e)})
            continue
        meta = runner.meta
        if meta.input_size not in crops:
            crops[meta.input_size] = demo_crops(meta)
        for b in batches:
            row = _base_row(c, b, dev)
            params, mac = macs[c.ccr]
            pk = peak(c.precision)
            floor = 2.0 * mac / (pk * 1e9) * 1e3 if pk else None
            threads = torch.get_num_threads() if c.backend == "torch" else (factory.threads or "default")
            row.update(runner=runner.name, file=str(getattr(runner, "path", "")) or None, threads=threads,
                       params=params, macs=mac, gmacs=mac / 1e9, peak_dtype=_peak_key(c.precision, dev),
                       peak_gflops=pk, floor_ms=floor)
            if pk is None:
                row["peak_error"] = peaks.get(row["peak_dtype"])
            rows.append(row)
            jobs.append((row, runner, batch_of(crops[meta.input_size], b), _sync_for(runner)))

    samples: dict[int, list[np.ndarray]] = {id(r): [] for r, *_ in jobs}
    for p in range(passes):
        for row, runner, x, sync in jobs:
            if row["status"] != "ok":
                continue
            log(f"pass {p + 1}/{passes}: ccr {row['ccr']} {row['backend']} {row['mode']} {row['precision']} "
                f"batch {row['batch']}")
            try:
                t = time_calls(lambda r=runner, x=x: r.infer(x), repeats=repeats, warmup=warmup if p == 0 else 1,
                               sync=sync, max_seconds=max_seconds)
            except ChsError as e:  # e.g. an engine profile too small, out of memory on a device
                row.update(status="skipped", reason=str(e).splitlines()[0])
                continue
            except RuntimeError as e:  # e.g. CUDA graph capture of an op that cannot be captured
                row.update(status="skipped", reason=f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
                continue
            samples[id(row)].append(t)
    for key in [k for k, v in peaks.items() if isinstance(v, list)]:
        probe(key)  # again after the timing: the faster of two probes, around the rows it bounds
    for row, *_ in jobs:
        if row["status"] != "ok":
            continue
        _finish(row, samples[id(row)], row["batch"], noise_threshold)
        probes = peaks.get(row["peak_dtype"])
        if isinstance(probes, list):
            row["peak_gflops"], row["peak_gflops_probes"] = max(probes), probes
            row["floor_ms"] = 2.0 * row["macs"] / (row["peak_gflops"] * 1e9) * 1e3
        row["efficiency"] = row["floor_ms"] / row["p50_ms"] if row["floor_ms"] else None
    if detector:
        rows.append(detector_row(repeats=repeats, warmup=warmup, passes=passes, noise_threshold=noise_threshold))
    if peer:
        rows.append(peer_latency_row(repeats=repeats, passes=passes, noise_threshold=noise_threshold))
    return rows


# --------------------------------------------------------------------------------------------- extra rows


def _extra_row(kind: str, backend: str, reason: str = "") -> dict:
    return {"kind": kind, "ccr": None, "backend": backend, "mode": "", "precision": "", "batch": 1,
            "device": "cpu", "status": "skipped" if reason else "ok", "reason": reason, "runner": backend,
            "file": None}


def demo_image() -> tuple[np.ndarray, np.ndarray]:
    """The bundled demo image (RGB) and its face box [x0, y0, x1, y1]."""
    from chs.runtime.imageio import read_image

    image = read_image(DEMO / "astronaut.png")
    box = json.loads((DEMO / "astronaut_box.json").read_text())["astronaut.png"][0]
    return image, np.asarray(box, dtype=np.float64)


def _time_rows(row: dict, fn: Callable[[], object], repeats: int, warmup: int, passes: int, noise: float) -> dict:
    samples = []
    for p in range(passes):
        samples.append(time_calls(fn, repeats=repeats, warmup=warmup if p == 0 else 1))
    _finish(row, samples, 1, noise)
    return row


def detector_row(repeats: int = 20, warmup: int = 2, passes: int = 2,
                 noise_threshold: float = NOISE_THRESHOLD) -> dict:
    """Face detector time per image on the demo image (reported apart from the per-face landmark rows)."""
    try:
        from chs.runtime.detector import default_detector
    except ImportError as e:
        return _extra_row("detector", "detector", f"no detector module ({e})")
    try:
        det = default_detector()
    except ChsError as e:
        return _extra_row("detector", "detector", str(e))
    image, _ = demo_image()
    row = _extra_row("detector", getattr(det, "name", type(det).__name__))
    row["image"] = f"astronaut.png {image.shape[1]}x{image.shape[0]}"
    row["faces"] = int(len(det.detect(image)[0]))
    return _time_rows(row, lambda: det.detect(image), repeats, warmup, passes, noise_threshold)


def dlib_peer() -> tuple[Any, str]:
    """(dlib 68-point shape predictor or None, reason when missing)."""
    try:
        import dlib
    except ImportError:
        return None, "dlib peer skipped: dlib is not installed"
    model = dlib_68_model_path()
    if model is None:
        return None, "dlib peer skipped: face_recognition_models (the 68-point predictor) is not installed"
    return dlib.shape_predictor(str(model)), ""


def dlib_68_model_path() -> Path | None:
    """The 68-point model file inside the installed face_recognition_models package, found without importing
    it (its __init__ needs pkg_resources, which recent setuptools no longer ships)."""
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "models" / "shape_predictor_68_face_landmarks.dat"
        if path.is_file():
            return path
    return None


def dlib_predict(predictor: Any, image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(68, 2) points of dlib's predictor inside ``box`` (0-based pixel centres, as the project's data)."""
    import dlib

    x0, y0, x1, y1 = (int(round(v)) for v in box)
    shape = predictor(np.ascontiguousarray(image), dlib.rectangle(x0, y0, x1, y1))
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)


def peer_latency_row(repeats: int = 20, passes: int = 2, noise_threshold: float = NOISE_THRESHOLD) -> dict:
    """dlib's 68-point predictor on the demo face, when dlib and face_recognition_models are installed."""
    predictor, why = dlib_peer()
    if predictor is None:
        return _extra_row("peer", "dlib-68", why)
    image, box = demo_image()
    row = _extra_row("peer", "dlib-68")
    return _time_rows(row, lambda: dlib_predict(predictor, image, box), repeats, 2, passes, noise_threshold)


# --------------------------------------------------------------------------------------------- ratios, table


def _ok(rows: Iterable[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok" and r.get("kind") == "landmarks"]


def speed_ratios(rows: Sequence[dict], accuracy: Sequence[dict] | None = None) -> list[dict]:
    """Ratios measured in this one run: ORT FP32 vs torch eager FP32, and INT8 vs FP32 (with ΔNME if known)."""
    ok = _ok(rows)
    by = {(r["ccr"], r["backend"], r["mode"], r["precision"], r["batch"]): r for r in ok}
    nme = {(a["ccr"], a["backend"], a["precision"]): a.get("nme") for a in (accuracy or [])
           if a.get("status") == "ok"}
    out = []
    torch_mode = "eager" if any(r["mode"] == "eager" for r in ok) else ""
    for r in ok:
        k, b = r["ccr"], r["batch"]
        if r["backend"] == "ort" and r["precision"] == "fp32":
            t = by.get((k, "torch", torch_mode, "fp32", b))
            if t:
                out.append({"what": "ort_fp32_vs_torch_eager_fp32", "ccr": k, "batch": b, "base_ms": t["p50_ms"],
                            "new_ms": r["p50_ms"], "speedup": t["p50_ms"] / r["p50_ms"]})
        if r["precision"] == "int8":
            f = by.get((k, r["backend"], r["mode"], "fp32", b))
            if f:
                n8, n32 = nme.get((k, r["backend"], "int8")), nme.get((k, r["backend"], "fp32"))
                out.append({"what": f"{r['backend']}_int8_vs_fp32", "ccr": k, "batch": b, "base_ms": f["p50_ms"],
                            "new_ms": r["p50_ms"], "speedup": f["p50_ms"] / r["p50_ms"],
                            "dnme_pt": (n8 - n32) * 100 if n8 is not None and n32 is not None else None})
    return out


def format_ratios(ratios: Sequence[dict]) -> str:
    lines = []
    for q in ratios:
        name = ("ORT FP32 vs torch eager FP32" if q["what"].startswith("ort_fp32")
                else f"{q['what'].split('_')[0].upper()} INT8 vs FP32")
        extra = f", ΔNME {q['dnme_pt']:+.3f} pt" if q.get("dnme_pt") is not None else ""
        lines.append(f"{name}, CCR {q['ccr']}, batch {q['batch']}: {q['base_ms']:.3f} -> {q['new_ms']:.3f} ms/face "
                     f"= {q['speedup']:.2f}x{extra}")
    return "\n".join(lines)


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_latency(rows: Sequence[dict], machine: str | None = None) -> str:
    """Plain-text table (machine line on top); skipped rows show their reason."""
    head = (f"{'ccr':>3} {'GMACs':>7} {'backend':<16} {'prec':<5} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} "
            f"{'p99 ms':>9} {'faces/s':>9} {'floor ms':>9} {'eff':>6}  note")
    lines = [machine] if machine else []
    lines += [head, "-" * len(head)]
    for r in rows:
        name = r["runner"] or r["backend"]
        if r.get("mode") == "cudagraph" and "graph" not in name:
            name += "-graph"
        ccr = "-" if r["ccr"] is None else str(r["ccr"])
        unit = " /image" if r["kind"] == "detector" else ""
        if r["status"] != "ok":
            lines.append(f"{ccr:>3} {_f(r.get('gmacs'), '.3f'):>7} {name:<16} {r['precision']:<5} "
                         f"{_f(r['batch'], 'd'):>5} {'skipped: ' + r['reason']}")
            continue
        note = ("noisy: passes " + "/".join(f"{p:.3f}" for p in r["p50_ms_passes"]) + " ms") if r["noisy"] else ""
        lines.append(f"{ccr:>3} {_f(r.get('gmacs'), '.3f'):>7} {name:<16} {r['precision']:<5} {r['batch']:>5} "
                     f"{r['p50_ms']:>9.3f} {r['p90_ms']:>9.3f} {r['p99_ms']:>9.3f} {r['faces_per_s']:>9.1f} "
                     f"{_f(r.get('floor_ms'), '.3f'):>9} {_f(r.get('efficiency'), '.0%'):>6}  {note}{unit}".rstrip())
    lines.append("ms per face (detector: per image), p50/p90/p99 over both passes; floor = 2 x MACs / measured "
                 "matmul peak; eff = floor / p50.")
    return "\n".join(lines)

"""Activation ranges for INT8, computed once per (model, crops, method) and cached.

One calibration feeds both Q/DQ flavours (u8s8 for ONNX Runtime on CPU, s8s8 for TensorRT), and a second
export of the same model with the same crops reads the cached JSON instead of running the network again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationMethod, create_calibrator

from chs.calibration.reader import CropReader
from chs.runtime.errors import ChsError
from chs.runtime.files import atomic_output

log = logging.getLogger(__name__)

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# the quantizers need ranges for the inputs/outputs of these ops only (the s8s8 Q/DQ file quantizes the
# first three; the u8s8 ORT CPU form also BN-as-conv, Add, Concat, pooling, ReLU, Mul); fewer is faster
CALIBRATED_OPS = ("Conv", "Gemm", "MatMul", "BatchNormalization", "Add", "Concat", "AveragePool", "MaxPool",
                  "Relu", "Mul")
CACHE_VERSION = 2


class TensorRanges(dict):
    """tensor name -> (low, high); ``cache_hit`` says whether they came from the cache, not the network."""

    def __init__(self, ranges: dict[str, tuple[float, float]], method: str, cache_hit: bool = False,
                 seconds: float = 0.0):
        super().__init__(ranges)
        self.method, self.cache_hit, self.seconds = method, cache_hit, seconds


def cache_key(model_bytes: bytes, crops: np.ndarray, method: str) -> str:
    """sha256 over everything the ranges depend on: the model, the crops (values, shape) and the method."""
    x = np.ascontiguousarray(crops, dtype=np.float32)
    h = hashlib.sha256()
    h.update(f"chs-calib-v{CACHE_VERSION}|{method}|{','.join(CALIBRATED_OPS)}|{x.shape}|".encode())
    h.update(hashlib.sha256(model_bytes).digest())
    h.update(x.tobytes())
    return h.hexdigest()


def _read_cache(path: Path, method: str) -> dict[str, tuple[float, float]] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != CACHE_VERSION or data.get("method") != method:
            return None
        return {k: (float(v[0]), float(v[1])) for k, v in data["ranges"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        log.warning("ignoring unreadable calibration cache %s", path)
        return None


def _write_cache(path: Path, ranges: dict[str, tuple[float, float]], method: str) -> None:
    payload = {"version": CACHE_VERSION, "method": method, "ranges": {k: list(v) for k, v in sorted(ranges.items())}}
    with atomic_output(path) as tmp:  # a concurrent export never reads half a file; a failed write leaves none
        tmp.write_text(json.dumps(payload), encoding="utf-8")


def calibrate(fp32_path: str | os.PathLike, crops: np.ndarray, method: str = "minmax",
              cache_dir: str | os.PathLike | None = None, batch_size: int = 8,
              stride_batches: int = 4) -> TensorRanges:
    """Ranges of the input and output tensors of the ``CALIBRATED_OPS`` of the FP32 ONNX over ``crops``.

    ``method``: "minmax", "entropy" or "percentile" (ORT's calibrators). With ``cache_dir`` the ranges are
    stored as ``<sha256>.json`` and reused. Batches are collected ``stride_batches`` at a time so memory
    stays flat for large calibration sets.
    """
    if method not in METHODS:
        raise ChsError(f"unknown calibration method '{method}' (minmax, entropy, percentile)")
    model_path = Path(fp32_path)
    if not model_path.is_file():
        raise ChsError(f"model not found: {model_path}")
    reader = CropReader(crops, batch_size)  # validates the crops
    key = cache_key(model_path.read_bytes(), reader.crops, method)
    cache_path = Path(cache_dir) / f"{key}.json" if cache_dir is not None else None
    if cache_path is not None and cache_path.is_file():
        cached = _read_cache(cache_path, method)
        if cached is not None:
            log.info("calibration cache hit: %s", cache_path)
            return TensorRanges(cached, method, cache_hit=True)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chs-calib-") as tmp:
        calibrator = create_calibrator(
            model_path, list(CALIBRATED_OPS), augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=METHODS[method], providers=["CPUExecutionProvider"],
        )
        try:  # ORT's histogram calibrators print progress to stdout: keep the CLI output ours
            with contextlib.redirect_stdout(io.StringIO()):
                for start in range(0, len(reader), stride_batches):
                    reader.set_range(start, start + stride_batches)
                    calibrator.collect_data(reader)
                data = calibrator.compute_data()
        finally:
            del calibrator
    ranges = {}
    for name, td in data.items():
        lo, hi = td.range_value
        ranges[name] = (float(np.asarray(lo).min()), float(np.asarray(hi).max()))
    seconds = time.perf_counter() - t0
    log.info("calibrated %d tensors on %d crops (%s) in %.1f s", len(ranges), len(reader.crops), method, seconds)
    if cache_path is not None:
        _write_cache(cache_path, ranges, method)
    return TensorRanges(ranges, method, cache_hit=False, seconds=seconds)


__all__ = ["CALIBRATED_OPS", "METHODS", "TensorRanges", "cache_key", "calibrate"]

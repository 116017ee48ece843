"""The runner of each benchmarked combination (CCR count, backend, precision, torch mode), built once.

Every runner comes from the project's one opener (:func:`chs.runtime.backends.opener.open_model`, with
checkpoints served by :class:`chs.model.runner.TorchRunner`), so the benchmarks time what users run.
Combinations that cannot run here raise :class:`Skip` with the reason the row shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chs.benchmarks.exports import ensure_exports
from chs.benchmarks.request import BenchRequest, Log, quiet, resolve_device


class Skip(Exception):
    """A combination that cannot run on this machine; the message is the row's reason."""


@dataclass(frozen=True)
class Combo:
    """One runner configuration; ``mode`` is eager/cudagraph for torch on CUDA, '' otherwise."""

    ccr: int
    backend: str
    precision: str
    mode: str = ""


def demo_crops(meta: Any) -> np.ndarray:
    """Real face crops (the bundled demo face, 16 jittered cuts) for timing; shape (16, 3, S, S)."""
    from chs.export.parity import parity_crops

    crops, _, _ = parity_crops(meta)
    return crops


def batch_of(crops: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(crops, (n, *crops.shape[1:])), dtype=np.float32)


class RunnerFactory:
    """Builds (and caches) the runner of each :class:`Combo`, exporting ONNX/engines on first use."""

    def __init__(self, request: BenchRequest, log: Log = quiet):
        self.request, self.log = request, log
        self.model, self.work_dir = str(request.model), Path(request.work_dir)
        self.device = resolve_device(request.device)
        self.threads = request.threads
        self.max_batch = max(request.batches)
        self._runners: dict[Combo, Any] = {}
        self._exports: dict[int, dict[str, Path | str]] = {}

    def combos(self) -> list[Combo]:
        r = self.request
        modes = ("eager", "cudagraph") if self.device == "cuda" else ("",)
        return [Combo(k, b, p, m) for k in r.ccrs for b in r.backends for p in r.precisions
                for m in (modes if b == "torch" else ("",))]

    def exports(self, ccr: int) -> dict[str, Path | str]:
        if ccr not in self._exports:
            r = self.request
            precs = [p for p in r.precisions if p in ("fp16", "int8")]
            self._exports[ccr] = ensure_exports(self.model, ccr, self.work_dir, ["fp32", *precs], r.calib,
                                                self.log, r.data)
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

    def close(self) -> None:
        for runner in self._runners.values():
            getattr(runner, "close", lambda: None)()
        self._runners.clear()

    def _build(self, c: Combo) -> Any:
        from chs.runtime.backends.opener import open_model

        if c.backend == "torch":
            return self._torch(c)
        if c.backend == "ort":
            if c.precision == "bf16":
                raise Skip("no BF16 ONNX export")
            providers = self.request.ort_providers
            key = "int8-u8s8" if c.precision == "int8" else c.precision
            if c.precision == "int8" and providers == "tensorrt":
                key = "int8-s8s8"
            return open_model(self._file(c.ccr, key), "ort", providers, threads=self.threads or 0)
        if c.backend == "trt":
            from chs.export.tensorrt import tensorrt_available

            ok, why = tensorrt_available()
            if not ok:
                raise Skip(why)
            if c.precision == "bf16":
                raise Skip("no BF16 ONNX export for TensorRT")
            return open_model(self._engine(c), "tensorrt")
        raise Skip(f"unknown backend {c.backend}")

    def _torch(self, c: Combo) -> Any:
        from chs.model.checkpoint import load_checkpoint
        from chs.model.runner import TorchRunner

        if c.precision == "int8":
            raise Skip("torch INT8 is not benchmarked: INT8 runs through ONNX Runtime (u8s8) or TensorRT (s8s8)")
        if self.device == "cpu" and c.precision != "fp32":
            raise Skip(f"torch {c.precision} is measured on CUDA only (CPU rows are FP32)")
        model = load_checkpoint(self.model, ccr=c.ccr)
        return TorchRunner(model, self.device, c.precision, graphs=c.mode == "cudagraph")

    def _engine(self, c: Combo) -> Path:
        """The TensorRT engine of the combination's ONNX file, built (or rebuilt when older) on first use."""
        from chs.export.tensorrt import build_engine_subprocess

        key = "int8-s8s8" if c.precision == "int8" else c.precision
        src = self._file(c.ccr, key)
        engine = src.with_name(f"{src.stem}_b{self.max_batch}.engine")
        if not engine.is_file() or engine.stat().st_mtime < src.stat().st_mtime:
            self.log(f"building TensorRT engine {engine.name}")
            hi = self.max_batch
            build_engine_subprocess(src, engine, batch=(1, min(8, hi), hi), timing_cache=src.parent / "timing.cache")
        return engine

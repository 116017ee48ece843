"""The runner of each benchmarked combination (CCR count, backend, precision, torch mode), built once.

Every runner comes from the project's one opener (:func:`chs.runtime.backends.opener.open_model`, with
checkpoints served by :class:`chs.model.runner.TorchRunner`), so the benchmarks time what users run.
ONNX files are exported once per CCR count into ``work_dir/ccr{k}/`` by :func:`chs.export.pipeline.run_export`
(the same parity gate as ``chs-export``) and reused while the checkpoint and calibration source are
unchanged. Combinations that cannot run here raise :class:`Skip` with the reason the row shows.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chs.benchmarks.request import BenchRequest, Log, quiet, resolve_device
from chs.runtime.assets import resolve_model_path
from chs.runtime.errors import ChsError, first_line

SOURCE_STAMP = "bench_source.json"
ONNX_FILES = {"fp32": "model_fp32.onnx", "fp16": "model_fp16.onnx", "int8-u8s8": "model_int8_u8s8.onnx",
              "int8-s8s8": "model_int8_s8s8.onnx"}


def _stamp(model: str | os.PathLike, ccr: int, calib: str | None) -> dict:
    """What the exported files depend on: the checkpoint, the CCR count, the calibration set and the export's form."""
    from chs.export.options import EXPORT_FORM
    from chs.model.checkpoint import WEIGHTS

    path = resolve_model_path(model).resolve()
    st = (path / WEIGHTS).stat()
    return {"model": str(path), "weights_size": st.st_size, "weights_mtime_ns": st.st_mtime_ns, "ccr": ccr,
            "calib": str(Path(calib).resolve()) if calib else None, "export_form": EXPORT_FORM}


def ensure_exports(model: str | os.PathLike, ccr: int, work_dir: str | os.PathLike, precisions: Iterable[str],
                   calib: str | None = None, log: Log = quiet, parity_data: str | None = None,
                   timing_only: bool = False
                   ) -> dict[str, Path | str]:
    """ONNX files of one CCR count in ``work_dir/ccr{k}``: {key: path, or the reason it is missing}.

    Keys: fp32, fp16, int8-u8s8, int8-s8s8. Files are reused while the checkpoint and calibration source are
    unchanged (``bench_source.json``); ``parity_data`` (annotated faces) makes the export's parity gate
    measure ΔNME instead of bounding it on the demo face; a failed FP16/INT8 step (e.g. its parity gate)
    falls back to an FP32 export and the failure is remembered, not retried. ``timing_only`` (random
    weights): the parity gate is reported, not enforced, and INT8 is calibrated on a few demo images."""
    from chs.benchmarks.presets import TIMING_CALIB, TIMING_CALIB_IMAGES
    from chs.export.pipeline import ExportOptions, run_export

    if timing_only and calib is None:
        calib = TIMING_CALIB
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
        opts = ExportOptions(model=str(model), out=str(out), ccr=ccr, fp16=fp16, int8=int8,
                             calib=calib if int8 else None, parity_data=parity_data, engine="never",
                             time_int8=False, if_exists="merge")
        if timing_only:
            opts.gate = False
            if int8:
                opts.calib_images = TIMING_CALIB_IMAGES
        with contextlib.redirect_stdout(sys.stderr):  # exporters print; keep stdout for --json
            run_export(opts, log=log)

    if need_fp32 or need_fp16 or need_int8:
        try:
            export(need_fp16, need_int8)
        except ChsError as e:
            if not (need_fp16 or need_int8):
                raise
            reason = f"export failed: {first_line(e, 1000)}"
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


class Skip(Exception):
    """A combination that cannot run on this machine; the message is the row's reason."""


@dataclass(frozen=True)
class Combo:
    """One runner configuration; ``mode`` is eager/cudagraph for torch on CUDA, 'parallel' for ONNX Runtime's
    parallel executor, '' otherwise."""

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
        modes = {"torch": ("eager", "cudagraph") if self.device == "cuda" else ("",),
                 "ort": tuple("" if e == "sequential" else e for e in r.ort_executors)}
        return [Combo(k, b, p, m) for k in r.ccrs for b in r.backends for p in r.precisions
                for m in modes.get(b, ("",))]

    def exports(self, ccr: int) -> dict[str, Path | str]:
        if ccr not in self._exports:
            r = self.request
            precs = [p for p in r.precisions if p in ("fp16", "int8")]
            # a split set (mtfl5) is partially labelled: it cannot drive the export's parity gate (demo face)
            self._exports[ccr] = ensure_exports(self.model, ccr, self.work_dir, ["fp32", *precs], r.calib,
                                                self.log, r.data if r.split is None else None, r.timing_only)
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
        """Close every runner built (ONNX Runtime's split-session thread pools, device buffers)."""
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()

    def __enter__(self) -> RunnerFactory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            parallel = c.mode == "parallel"  # batches the sequential runner splits are timed on its split sessions
            return open_model(self._file(c.ccr, key), "ort", providers, threads=self.threads or 0,
                              sessions=1 if parallel else self.request.ort_sessions,
                              executor="parallel" if parallel else "sequential")
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
        from chs.model.runner import open_checkpoint
        from chs.runtime.backends.opener import open_model

        if c.precision == "int8":
            raise Skip("torch INT8 is not benchmarked: INT8 runs through ONNX Runtime (u8s8) or TensorRT (s8s8)")
        if self.device == "cpu" and c.precision != "fp32":
            raise Skip(f"torch {c.precision} is measured on CUDA only (CPU rows are FP32)")
        opener = functools.partial(open_checkpoint, precision=c.precision, graphs=c.mode == "cudagraph")
        return open_model(self.model, "torch", ccr=c.ccr, device=self.device, checkpoint=opener)

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


@contextlib.contextmanager
def runner_factory(request: BenchRequest, factory: RunnerFactory | None = None, log: Log = quiet
                   ) -> Iterator[RunnerFactory]:
    """``factory`` as given (its owner closes it), else a new one, closed when the block ends."""
    if factory is not None:
        yield factory
        return
    with RunnerFactory(request, log=log) as own:
        yield own

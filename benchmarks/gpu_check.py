"""One prepared GPU check: latency and parity of every GPU path in one table, in a few minutes.

Rows: torch eager FP32, torch CUDA graph FP32, torch FP16 and BF16 autocast through the project's ``TorchRunner`` (host
batch in, host landmarks out, copies timed as in every host row; each against torch CPU FP32 on the same crops), ONNX
Runtime CUDA where its provider is installed, and TensorRT (engine build, host ``infer``, and ``infer_device`` fed by
torch CUDA tensors) where TensorRT is installed; the rest are listed with the reason they were skipped. It needs no
network and no install: ``python benchmarks/gpu_check.py`` from a checkout finds the package itself. On a machine
without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

NO_CUDA = "gpu check: no CUDA device (torch.cuda.is_available() is False): nothing to measure"
BATCHES = (1, 8)
WARMUP = 5  # untimed runs before each row (cuDNN autotuning, lazy CUDA init)


def ensure_chs_importable(root: Path | None = None) -> None:
    """Make ``import chs.*`` work from a bare checkout (the package maps folders to subpackages)."""
    if importlib.util.find_spec("chs") is not None and importlib.util.find_spec("chs.runtime") is not None:
        return
    import tomllib

    root = root or Path(__file__).resolve().parents[1]
    mapping = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for name, folder in sorted(mapping.items(), key=lambda kv: kv[0].count(".")):
        spec = importlib.util.spec_from_file_location(
            name, root / folder / "__init__.py", submodule_search_locations=[str(root / folder)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def _median_ms(fn: Callable[[], Any], sync: Callable[[], None], iters: int) -> float:
    from chs.runtime.timing import time_calls

    return float(np.median(time_calls(fn, iters, WARMUP, sync))) * 1e3


def _load_model() -> tuple[Any, str]:
    """The bundled checkpoint, or (without safetensors) the same preset with seeded random weights."""
    import torch

    try:
        from chs.model.checkpoint import load_checkpoint

        return load_checkpoint("default"), "bundled model"
    except ImportError as e:
        from chs.model.chs import build_model
        from chs.model.config import get_preset

        torch.manual_seed(0)
        return build_model(get_preset("ytf68")), f"ytf68 preset, random weights ({e.name} missing)"


def _torch_rows(model: Any, crops: np.ndarray, iters: int, device: str = "cuda",
                only: tuple[str, ...] | None = None) -> list[dict]:
    """torch rows through :class:`TorchRunner` on ``device`` ("cpu" only in tests: the CUDA graph row is
    then skipped with the runner's reason); host batch in, host landmarks out, as in every other row."""
    import torch

    from chs.model.runner import TorchRunner
    from chs.runtime.errors import ChsError

    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 rows must be FP32, not TF32
    torch.backends.cudnn.allow_tf32 = False
    ref = TorchRunner(model, "cpu").infer(crops)["landmarks"]
    rows = []
    for label, precision, graphs in (("torch eager FP32", "fp32", False), ("torch CUDA graph FP32", "fp32", True),
                                     ("torch FP16 autocast", "fp16", False), ("torch BF16 autocast", "bf16", False)):
        if only is not None and label not in only:
            continue
        try:
            runner = TorchRunner(model, device, precision, graphs)
        except ChsError as e:
            rows.append(_skip(label, str(e)))
            continue
        with runner:
            for b in BATCHES:
                x = crops[:b]
                ms = _median_ms(partial(runner.infer, x), runner.synchronize, iters)
                diff = float(np.abs(runner.infer(x)["landmarks"] - ref[:b]).max())
                rows.append({"path": label, "batch": b, "ms_per_face": ms / b, "max_dpx": diff, "note": ""})
    return rows


def _ort_cuda_rows(onnx_path: Path, crops: np.ndarray, iters: int) -> list[dict]:
    import onnxruntime as ort

    from chs.runtime.backends.ort import OrtRunner

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return [_skip("ONNX Runtime CUDA", "onnxruntime has no CUDAExecutionProvider (CPU build)")]
    cpu, gpu = OrtRunner(onnx_path, providers="cpu"), OrtRunner(onnx_path, providers="cuda")
    rows = []
    for b in BATCHES:
        x = crops[:b]
        ms = _median_ms(lambda x=x: gpu.infer(x), lambda: None, iters)
        diff = float(np.abs(gpu.infer(x)["landmarks"] - cpu.infer(x)["landmarks"]).max())
        rows.append({"path": "ONNX Runtime CUDA FP32", "batch": b, "ms_per_face": ms / b, "max_dpx": diff,
                     "note": "vs ORT CPU, same file"})
    return rows


def _trt_rows(onnx_path: Path, crops: np.ndarray, iters: int, work: Path) -> list[dict]:
    from chs.export.tensorrt import build_engine_subprocess, tensorrt_available

    ok, why = tensorrt_available()
    if not ok:
        return [_skip("TensorRT", why)]
    import torch

    from chs.runtime.backends.ort import OrtRunner
    from chs.runtime.backends.trt import TensorRTRunner

    t0 = time.perf_counter()
    engine = work / "model.engine"
    build_engine_subprocess(onnx_path, engine, batch=(1, max(BATCHES), max(BATCHES)), timeout=420)
    build_s = time.perf_counter() - t0
    cpu = OrtRunner(onnx_path, providers="cpu")
    rows = []
    with TensorRTRunner(engine) as trt:
        for b in BATCHES:
            x = crops[:b]
            ref = cpu.infer(x)["landmarks"]
            ms = _median_ms(lambda x=x: trt.infer(x), lambda: None, iters)
            diff = float(np.abs(trt.infer(x)["landmarks"] - ref).max())
            rows.append({"path": "TensorRT infer (host)", "batch": b, "ms_per_face": ms / b, "max_dpx": diff,
                         "note": f"vs ORT CPU; engine built in {build_s:.0f} s"})
            xd = torch.from_numpy(x).cuda()
            ms = _median_ms(lambda xd=xd: trt.infer_device(xd), torch.cuda.synchronize, iters)
            out = trt.infer_device(xd, to_host=True)["landmarks"]
            rows.append({"path": "TensorRT infer_device (torch CUDA)", "batch": b, "ms_per_face": ms / b,
                         "max_dpx": float(np.abs(out - ref).max()), "note": "vs ORT CPU"})
    return rows


def _skip(path: str, why: str) -> dict:
    return {"path": path, "batch": None, "ms_per_face": None, "max_dpx": None, "note": f"skipped: {why}"}


def format_table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| path | batch | ms/face | max abs Δ (px) vs CPU FP32 | note |", "|---|---|---|---|---|"]
    for r in rows:
        ms = "" if r["ms_per_face"] is None else f"{r['ms_per_face']:.3f}"
        dpx = "" if r["max_dpx"] is None else f"{r['max_dpx']:.4f}"
        lines.append(f"| {r['path']} | {r['batch'] or ''} | {ms} | {dpx} | {r['note']} |")
    return "\n".join(lines)


def run_gpu_check(iters: int = 50, json_path: str | None = None) -> int:
    """Print the table (or the no-CUDA line); 0 unless something broke."""
    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    from chs.runtime.errors import first_line
    from chs.runtime.landmarks import DEFAULT_MODEL

    model, source = _load_model()
    s = model.cfg.input_size
    crops = np.random.default_rng(0).normal(size=(max(BATCHES), 3, s, s)).astype(np.float32)
    rows = _torch_rows(model, crops, iters)
    rows += _ort_cuda_rows(DEFAULT_MODEL, crops, iters)
    with tempfile.TemporaryDirectory(prefix="chs-gpu-check-") as work:
        try:
            rows += _trt_rows(DEFAULT_MODEL, crops, iters, Path(work))
        except Exception as e:  # report the TensorRT failure as a row: the other rows still stand
            rows.append(_skip("TensorRT", f"failed: {type(e).__name__}: {first_line(e)}"))
    header = (f"GPU check on {torch.cuda.get_device_name(0)} (torch {torch.__version__}, {source}, "
              f"{iters} timed runs, median); parity: torch rows vs torch CPU FP32, ORT/TensorRT vs ORT CPU")
    print(format_table(rows, header))
    if json_path:
        Path(json_path).write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], argument_default=argparse.SUPPRESS)
    ap.add_argument("--iters", type=int, help="timed runs per row (default: run_gpu_check's)")
    ap.add_argument("--json", dest="json_path", help="also write the rows to this JSON file")
    return run_gpu_check(**vars(ap.parse_args(argv)))


if __name__ == "__main__":
    ensure_chs_importable()
    sys.exit(main())

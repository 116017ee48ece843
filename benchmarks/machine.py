"""What machine a benchmark ran on, and its measured matmul peak (the compute floor of every latency row).

Latency numbers mean little without the machine beside them, and an "efficiency" means little without a
peak measured on the same machine, under the same load, in the same run: :func:`matmul_peak` times a
square GEMM with torch (``torch._int_mm`` for int8) and keeps the fastest call.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from chs.runtime.backends.trt_env import nvidia_smi
from chs.runtime.errors import ChsError, first_line

CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16",
                         "amx_int8", "avx_vnni")
PEAK_DTYPES = ("fp32", "fp16", "bf16", "int8")


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = "", []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            have = set(value.split())
            flags = [f for f in CPU_FLAGS_OF_INTEREST if f in have]
    return model or platform.processor() or platform.machine(), flags


def _gpus() -> list[dict]:
    """[{name, driver, memory_mib}] from nvidia-smi; empty without one (or when it fails)."""
    out = nvidia_smi("--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits")
    gpus = []
    for line in out:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2:
            gpus.append({"name": parts[0], "driver": parts[1], "memory_mib": parts[2] if len(parts) > 2 else None})
    return gpus


def machine_info(threads: int | None = None) -> dict:
    """CPU, cores, threads, library versions, OS and GPU of this machine (cheap: no measurement).

    ``threads``: the intra-op threads a benchmark will set (recorded as ``bench_threads``)."""
    import numpy as np

    cpu, flags = _cpu_model_and_flags()
    info: dict = {"cpu": cpu, "cpu_flags": flags, "logical_cores": os.cpu_count(), "os": platform.platform(),
                  "python": platform.python_version(), "numpy": np.__version__}
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)  # other work on the cores skews every timing
    except OSError:
        info["load_avg_1m"] = None
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    cuda_available=bool(torch.cuda.is_available()), cuda_version=torch.version.cuda)
    except ImportError:
        info.update(torch=None, torch_threads=None, cuda_available=False, cuda_version=None)
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["ort_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"], info["ort_providers"] = None, []
    info["bench_threads"] = threads
    gpus = _gpus()
    info["gpus"] = gpus
    info["gpu"] = gpus[0]["name"] if gpus else None
    info["gpu_driver"] = gpus[0]["driver"] if gpus else None
    return info


def machine_line(info: dict) -> str:
    """One line for the top of a table."""
    threads = info.get("bench_threads") or info.get("torch_threads")
    cpu = f"{info.get('cpu')} ({info.get('logical_cores')} logical cores, {threads} threads)"
    gpu = f"GPU {info['gpu']} (driver {info['gpu_driver']})" if info.get("gpu") else "no GPU"
    return (f"{cpu}; {gpu}; torch {info.get('torch')}, onnxruntime {info.get('onnxruntime')}, "
            f"numpy {info.get('numpy')}; {info.get('os')}; load {info.get('load_avg_1m')}")


def matmul_peak(dtype: str = "fp32", seconds: float = 2.0, device: str = "cpu", n: int | None = None) -> float:
    """GFLOP/s (GOP/s for int8) of square n x n x n matmuls on ``device``: 2 n^3 / the fastest call.

    The fastest call, not the median: other load only slows calls down, so the minimum is the best estimate of what the
    hardware can do. Without ``n``, CPU probes 256, 512 and 1024 (``seconds`` split between them) and keeps the best:
    large GEMMs run closest to peak, small ones fit between preemptions on busy shared cores. CUDA probes 8192."""
    import torch

    if dtype not in PEAK_DTYPES:
        raise ChsError(f"unknown matmul dtype '{dtype}' ({', '.join(PEAK_DTYPES)})")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ChsError("matmul peak on CUDA requested but torch sees no CUDA device")
    sizes = [n] if n else ([8192] if dev.type == "cuda" else [256, 512, 1024])
    return max(_probe(dtype, dev, size, seconds / len(sizes)) for size in sizes)


def _probe(dtype: str, dev, n: int, seconds: float) -> float:
    import torch

    gen = torch.Generator().manual_seed(0)
    if dtype == "int8":
        if not hasattr(torch, "_int_mm"):
            raise ChsError("this torch has no torch._int_mm: no int8 matmul probe")
        a = torch.randint(-64, 64, (n, n), dtype=torch.int8, generator=gen).to(dev)
        b = torch.randint(-64, 64, (n, n), dtype=torch.int8, generator=gen).to(dev)

        def fn() -> object:
            return torch._int_mm(a, b)
    else:
        dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        a = torch.randn(n, n, generator=gen).to(dev, dt)
        b = torch.randn(n, n, generator=gen).to(dev, dt)
        out = torch.empty(n, n, dtype=dt, device=dev)

        def fn() -> object:
            return torch.mm(a, b, out=out)

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    try:
        with torch.inference_mode():
            for _ in range(2):
                fn()
            sync()
            best, start, calls = float("inf"), time.perf_counter(), 0
            while calls < 5 or time.perf_counter() - start < seconds:
                t0 = time.perf_counter()
                fn()
                sync()
                best = min(best, time.perf_counter() - t0)
                calls += 1
    except RuntimeError as e:  # e.g. no int8/fp16 GEMM kernel for this device
        raise ChsError(f"{dtype} matmul probe failed on {dev}: {first_line(e)}") from None
    return 2.0 * n**3 / best / 1e9

"""Latency measurement shared by ``chs-export`` (INT8 vs FP32 ratio) and ``chs-bench latency``."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def time_calls(fn: Callable[[], object], repeats: int = 20, warmup: int = 3, sync: Callable[[], None] | None = None,
               max_seconds: float = 30.0) -> np.ndarray:
    """Wall times (s) of ``repeats`` calls after ``warmup``; ``sync`` is called after each (device sync).

    Stops early once ``max_seconds`` have been spent measuring (at least 3 samples are always taken)."""
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times = []
    start = time.perf_counter()
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - start > max_seconds:
            break
    return np.asarray(times)


def percentiles(times: np.ndarray, per: int = 1) -> dict[str, float]:
    """p50/p90/p99 and mean in milliseconds, divided by ``per`` (faces per call)."""
    ms = np.asarray(times) * 1e3 / per
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "n": int(len(ms))}

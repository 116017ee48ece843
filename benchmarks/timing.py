"""Timing helpers of the benchmarks: torch's thread count, pass statistics, and the matmul-peak floor."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from chs.runtime.errors import ChsError
from chs.runtime.timing import percentiles


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


def finish_row(row: dict, samples: list[np.ndarray], per: int, noise: float) -> None:
    """p50/p90/p99 over every pass, each pass's p50, the ``noisy`` flag and faces/s, into ``row``."""
    stats = percentiles(np.concatenate(samples), per=per)
    row.update(stats)
    p = [float(np.median(s) * 1e3 / per) for s in samples]
    row["p50_ms_passes"] = p
    row["noisy"] = bool(len(p) > 1 and max(p) / min(p) - 1 > noise)
    row["faces_per_s"] = 1e3 / stats["p50_ms"]


def peak_key(precision: str, device: str) -> str:
    """Which GEMM bounds a precision: x86 CPUs have no FP16 GEMM, so FP16 graphs run on FP32 kernels there."""
    if device == "cpu" and precision == "fp16":
        return "fp32"
    return precision


class PeakProbes:
    """Matmul peaks (GFLOP/s) per GEMM dtype, probed when first needed and again after the timing."""

    def __init__(self, device: str, seconds: float):
        self.device, self.seconds = device, seconds
        self.found: dict[str, list[float] | str] = {}  # probes, or why the dtype cannot be probed

    def probe(self, key: str) -> None:
        from chs.benchmarks.machine import matmul_peak

        try:
            got = matmul_peak(key, self.seconds, self.device)
        except ChsError as e:
            self.found[key] = str(e)
            return
        prev = self.found.get(key)
        self.found[key] = [*prev, got] if isinstance(prev, list) else [got]

    def peak(self, precision: str) -> float | None:
        key = peak_key(precision, self.device)
        if key not in self.found:
            self.probe(key)
        v = self.found[key]
        return max(v) if isinstance(v, list) else None

    def reprobe(self) -> None:
        """Probe every measurable dtype again: the faster of two probes, around the rows it bounds."""
        for key in [k for k, v in self.found.items() if isinstance(v, list)]:
            self.probe(key)

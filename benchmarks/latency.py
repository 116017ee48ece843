"""``chs-bench latency``: per-face latency of every (CCR count, backend, precision, batch), beside its floor.

Every row carries p50/p90/p99 ms per face, faces/s, the GMACs of that CCR count and a compute floor
(2 x MACs / matmul peak of the same machine, measured in the same run), so ``efficiency = floor / p50`` says
how close a backend gets to the hardware. Device runners are synchronised after every call through their
``synchronize()`` (unsynchronised GPU timings are a classic benchmarking mistake). The whole timing runs
twice; rows whose two p50s differ by more than 10 % are flagged ``noisy`` (shared or virtualised cores).

The pieces: :mod:`~chs.benchmarks.request` (what to run), :mod:`~chs.benchmarks.runners` (ONNX files
and one runner per combination), :mod:`~chs.benchmarks.timing`,
:mod:`~chs.benchmarks.peers` (detector and dlib rows) and :mod:`~chs.benchmarks.report` (ratios, table).
Combinations that cannot run here become rows with ``status: "skipped"`` and a ``reason``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from chs.benchmarks.peers import detector_row, peer_latency_row
from chs.benchmarks.request import BenchRequest, Log, model_complexity, quiet
from chs.benchmarks.runners import Combo, RunnerFactory, Skip, batch_of, demo_crops, runner_factory
from chs.benchmarks.timing import PeakProbes, finish_row, peak_key, torch_threads
from chs.runtime.backends.ort import split_count
from chs.runtime.errors import ChsError, first_line
from chs.runtime.timing import time_calls


def base_row(c: Combo, batch: int | None, device: str) -> dict:
    return {"kind": "landmarks", "ccr": c.ccr, "backend": c.backend, "mode": c.mode, "precision": c.precision,
            "batch": batch, "device": device, "status": "ok", "reason": "", "runner": None, "file": None}


def latency_rows(req: BenchRequest, *, factory: RunnerFactory | None = None, log: Log = quiet) -> list[dict]:
    """One row per (ccr, backend, precision[, torch mode], batch), then a detector row and a dlib peer row.

    Times are per face (per image for the detector); p50/p90/p99 pool every pass, ``p50_ms_passes`` keeps
    each pass's p50 and ``noisy`` flags a > ``noise_threshold`` difference between them."""
    with runner_factory(req, factory, log) as factory, torch_threads(factory.threads):
        jobs, rows = _plan(req, factory)
        probes = _peaks(req, factory.device, jobs)
        samples = _time(req, jobs, log)
        _summarise(req, jobs, samples, probes)
    if req.detector:
        rows.append(detector_row(repeats=req.repeats, warmup=req.warmup, passes=req.passes,
                                 noise_threshold=req.noise_threshold))
    if req.peer:
        rows.append(peer_latency_row(repeats=req.repeats, passes=req.passes, noise_threshold=req.noise_threshold))
    if req.timing_only:
        for r in rows:
            if r["kind"] == "landmarks":
                r["timing_only"] = True
    return rows


def _plan(req: BenchRequest, factory: RunnerFactory) -> tuple[list[tuple[dict, Any, np.ndarray]], list[dict]]:
    """(timed jobs (row, runner, batch), every row in table order: skipped combinations included)."""
    import torch

    dev = factory.device
    macs = {k: model_complexity(req.model, k) for k in req.ccrs}
    rows: list[dict] = []
    jobs: list[tuple[dict, Any, np.ndarray]] = []
    crops: dict[int, np.ndarray] = {}
    for c in factory.combos():
        try:
            runner = factory.get(c)
        except Skip as e:
            rows += [base_row(c, b, dev) | {"status": "skipped", "reason": str(e)} for b in req.batches]
            continue
        size = runner.meta.input_size
        if size not in crops:
            crops[size] = demo_crops(runner.meta)
        for b in req.batches:
            params, mac = macs[c.ccr]
            threads = torch.get_num_threads() if c.backend == "torch" else (factory.threads or "default")
            name = runner.name
            if c.mode == "parallel" and (n := split_count(req.ort_sessions, b)):  # the sequential runner splits it
                rows.append(base_row(c, b, dev) | {"status": "skipped", "reason": (
                    f"batch {b} runs on the {n} single-thread sessions (--ort-sessions): the sequential row")})
                continue
            split = runner.split_for(b) if hasattr(runner, "split_for") else 0
            if split:  # batch split over single-thread sessions
                name, threads = f"{name}/{split}x1", 1
            row = base_row(c, b, dev) | {
                "runner": name, "file": str(getattr(runner, "path", "")) or None, "threads": threads,
                "params": params, "macs": mac, "gmacs": mac / 1e9, "peak_dtype": peak_key(c.precision, dev)}
            rows.append(row)
            jobs.append((row, runner, batch_of(crops[size], b)))
    return jobs, rows


def _peaks(req: BenchRequest, device: str, jobs: list[tuple[dict, Any, np.ndarray]]) -> PeakProbes:
    """Probe the matmul peak each row is bounded by (before the timing; again after it, in _summarise)."""
    probes = PeakProbes(device, req.peak_seconds)
    for row, _, _ in jobs:
        pk = probes.peak(row["precision"])
        row.update(peak_gflops=pk, floor_ms=2.0 * row["macs"] / (pk * 1e9) * 1e3 if pk else None)
        if pk is None:
            row["peak_error"] = probes.found.get(row["peak_dtype"])
    return probes


def _time(req: BenchRequest, jobs: list[tuple[dict, Any, np.ndarray]], log: Log) -> dict[int, list[np.ndarray]]:
    """Every pass over every job (passes interleave the rows); a row whose call fails becomes skipped."""
    samples: dict[int, list[np.ndarray]] = {id(r): [] for r, *_ in jobs}
    for p in range(req.passes):
        for row, runner, x in jobs:
            if row["status"] != "ok":
                continue
            log(f"pass {p + 1}/{req.passes}: ccr {row['ccr']} {row['backend']} {row['mode']} {row['precision']} "
                f"batch {row['batch']}")
            try:
                t = time_calls(lambda r=runner, x=x: r.infer(x), repeats=req.repeats,
                               warmup=req.warmup if p == 0 else 1, sync=runner.synchronize,
                               max_seconds=req.max_seconds)
            except ChsError as e:  # e.g. an engine profile too small, out of memory on a device
                row.update(status="skipped", reason=first_line(e))
                continue
            except RuntimeError as e:  # e.g. CUDA graph capture of an op that cannot be captured
                row.update(status="skipped", reason=f"{type(e).__name__}: {first_line(e)}")
                continue
            samples[id(row)].append(t)
    return samples


def _summarise(req: BenchRequest, jobs: list, samples: dict[int, list[np.ndarray]], probes: PeakProbes) -> None:
    probes.reprobe()
    for row, *_ in jobs:
        if row["status"] != "ok":
            continue
        finish_row(row, samples[id(row)], row["batch"], req.noise_threshold)
        found = probes.found.get(row["peak_dtype"])
        if isinstance(found, list):
            row["peak_gflops"], row["peak_gflops_probes"] = max(found), found
            row["floor_ms"] = 2.0 * row["macs"] / (row["peak_gflops"] * 1e9) * 1e3
        row["efficiency"] = row["floor_ms"] / row["p50_ms"] if row["floor_ms"] else None

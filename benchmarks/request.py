"""What a ``chs-bench latency / accuracy / tradeoff`` run is asked to do: one validated request object.

Option defaults live here only (the CLI reads them from :class:`BenchRequest`); the request is checked once,
when it is made, before any export or timing starts.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from chs.runtime.assets import resolve_model_path
from chs.runtime.backends.base import DEFAULT_BATCH
from chs.runtime.backends.ort import MAX_SESSIONS, check_executor
from chs.runtime.errors import ChsError
from chs.runtime.options import whole_number

BACKENDS = ("torch", "ort", "trt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
NOISE_THRESHOLD = 0.10
Log = Callable[[str], None]


def quiet(msg: str) -> None:
    """A log function that drops its messages."""


@dataclass(frozen=True)
class BenchRequest:
    """Rows of (CCR count, backend, precision[, batch]) of one checkpoint, and how to time/evaluate them.

    ``ccrs`` None: 0, 1, 2 as far as the checkpoint was trained. ``threads`` sets torch's and ONNX Runtime's
    intra-op threads (None: their defaults); ``ort_sessions`` > 1 splits ONNX Runtime CPU batches over that
    many single-thread sessions (:class:`~chs.runtime.backends.ort.OrtRunner`); ``ort_executors`` times ONNX
    Runtime rows with each executor given (sequential, parallel: one row each). ``data`` is the annotated
    split for accuracy rows (and the exports' parity gate). ``work_dir`` None: :func:`default_work_dir`."""

    model: str | os.PathLike = "default"
    backends: Sequence[str] = ("torch", "ort")
    precisions: Sequence[str] = ("fp32",)
    ccrs: Sequence[int] | None = None
    batches: Sequence[int] = (1, 8)
    work_dir: str | os.PathLike | None = None
    repeats: int = 20
    calib: str | None = None
    warmup: int = 2
    passes: int = 2
    max_seconds: float = 30.0
    device: str = "auto"
    ort_providers: str = "auto"
    peak_seconds: float = 2.0
    detector: bool = True
    peer: bool = True
    noise_threshold: float = NOISE_THRESHOLD
    threads: int | None = None
    ort_sessions: int = 1
    ort_executors: Sequence[str] = ("sequential",)
    data: str | None = None
    max_samples: int | None = None
    batch_size: int = DEFAULT_BATCH
    split: str | None = None  # part of a set that defines splits (mtfl5: train, val)
    timing_only: bool = False  # random weights (chs.benchmarks.presets): rows marked, exports not gated

    def __post_init__(self) -> None:
        for b in self.backends:
            if b not in BACKENDS:
                raise ChsError(f"unknown backend '{b}' (choose from {', '.join(BACKENDS)})")
        for p in self.precisions:
            if p not in PRECISIONS:
                raise ChsError(f"unknown precision '{p}' (choose from {', '.join(PRECISIONS)})")
        for n in self.batches:
            whole_number(n, "batch sizes", 1)
        if not 1 <= self.ort_sessions <= MAX_SESSIONS:
            raise ChsError(f"--ort-sessions must be 1-{MAX_SESSIONS}, got {self.ort_sessions}")
        for e in self.ort_executors:
            check_executor(e)
        if not self.ort_executors:
            raise ChsError("--ort-executor needs at least one executor")
        whole_number(self.repeats, "--repeats", 1)
        whole_number(self.passes, "passes", 1)
        whole_number(self.warmup, "--warmup", 0)
        if not 0 < self.max_seconds < math.inf:  # NaN fails too: it would never stop a row
            raise ChsError(f"--max-seconds must be a finite number > 0, got {self.max_seconds}")
        check_threads(self.threads)
        trained = trained_ccr(self.model)
        ccrs = tuple(range(min(2, trained) + 1)) if self.ccrs is None else tuple(self.ccrs)
        for k in ccrs:
            if k < 0 or k > trained:
                raise ChsError(f"--ccr {k} is not available: {self.model} was trained with {trained} CCR stage(s)")
        object.__setattr__(self, "ccrs", ccrs)
        if not self.work_dir:  # None (or an empty --work-dir)
            object.__setattr__(self, "work_dir", default_work_dir(self.model))
        for name in ("backends", "precisions", "batches", "ort_executors"):
            object.__setattr__(self, name, tuple(getattr(self, name)))


def check_threads(threads: int | None) -> None:
    """Intra-op threads: None (the libraries' default) or >= 1 (torch raises a RuntimeError on others)."""
    if threads is not None:
        whole_number(threads, "--threads", 1)


def trained_ccr(model: str | os.PathLike) -> int:
    """CCR stages the checkpoint was trained with (one-line ChsError if it is not a checkpoint)."""
    from chs.model.checkpoint import checkpoint_config

    return checkpoint_config(model).ccr_stages


def default_work_dir(model: str | os.PathLike) -> Path:
    """``~/.cache/chs/bench/<model folder>-<hash of its path>``: one checkpoint's exports, reused between runs."""
    from chs.export.options import cache_dir

    path = resolve_model_path(model).resolve()
    tag = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    return cache_dir("bench") / f"{path.name}-{tag}"


def model_complexity(model: str | os.PathLike, ccr: int) -> tuple[int, int]:
    """(params, MACs per face) of the checkpoint's architecture pruned to ``ccr`` stages, built on ``meta``."""
    import torch

    from chs.model.checkpoint import checkpoint_config
    from chs.model.chs import build_model
    from chs.model.complexity import count_complexity

    cfg = checkpoint_config(model).replace(ccr_stages=ccr)
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

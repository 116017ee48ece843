"""One runner interface for every backend (PyTorch, ONNX Runtime, TensorRT).

A runner takes a batch of normalised crops (N, 3, S, S) float32 and returns at least
``landmarks`` (N, n, 2) float32 in crop pixels and ``scores`` (N, n) float32. Everything around it
(cropping, batching, mapping back to the image) is shared and lives in ``chs.runtime``.

:class:`Runner` is the protocol callers may rely on (any object with ``name``, ``meta`` and ``infer``);
:class:`RunnerBase` is what the project's backends derive from: it checks every batch once against the
metadata, and gives ``close()`` / ``synchronize()`` / ``with`` to every backend.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from chs.runtime.artifact import ModelMeta
from chs.runtime.errors import ChsError


@runtime_checkable
class Runner(Protocol):
    name: str  # e.g. "torch-cpu", "ort-cpu", "ort-cuda", "trt"
    meta: ModelMeta

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; thread-safe."""
        ...


def check_batch(batch: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """The batch as a C-contiguous float32 (N, 3, S, S) array of finite values, else a one-line ChsError."""
    x = np.asarray(batch)
    s = meta.input_size
    if x.dtype != np.float32:
        raise ChsError(f"input batch must be float32, got {x.dtype}")
    if x.ndim != 4 or x.shape[1:] != (3, s, s):
        raise ChsError(f"input batch must have shape (N, 3, {s}, {s}), got {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise ChsError("input batch contains NaN or infinity")
    return np.ascontiguousarray(x)


class RunnerBase:
    """Shared runner behaviour: ``infer`` checks the batch once, then calls the backend's ``_run``."""

    name: str
    meta: ModelMeta

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch of normalised crops; thread-safe."""
        return self._run(check_batch(batch, self.meta))

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for work this runner queued on a device (host-synchronous backends: nothing to wait for)."""

    def close(self) -> None:
        """Release sessions, engines and device memory (idempotent)."""

    def __enter__(self) -> RunnerBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""One runner interface for every backend (PyTorch, ONNX Runtime, TensorRT).

A runner takes a batch of normalised crops (N, 3, S, S) float32 and returns at least
``landmarks`` (N, n, 2) float32 in crop pixels and ``scores`` (N, n) float32. Everything around it
(cropping, batching, mapping back to the image) is shared and lives in ``chs.runtime``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from chs.runtime.artifact import ModelMeta


@runtime_checkable
class Runner(Protocol):
    name: str  # e.g. "torch", "ort-cpu", "ort-cuda", "trt"
    meta: ModelMeta

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; thread-safe."""
        ...

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

# crops per inference batch where a caller does not choose: big enough to amortise a call, small enough that
# a batch of 128x128 crops stays a few MB
DEFAULT_BATCH = 32


@runtime_checkable
class Runner(Protocol):
    name: str  # e.g. "torch-cpu", "ort-cpu", "ort-cuda", "trt"
    meta: ModelMeta

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; thread-safe."""
        ...


def check_shape(shape: tuple[int, ...], meta: ModelMeta, what: str = "input batch") -> int:
    """The batch size of a (N, 3, S, S) shape, else a one-line ChsError (host and device inputs alike)."""
    s = meta.input_size
    if len(shape) != 4 or tuple(shape[1:]) != (3, s, s):
        raise ChsError(f"{what} must have shape (N, 3, {s}, {s}), got {tuple(shape)}")
    return int(shape[0])


def check_batch(batch: np.ndarray, meta: ModelMeta, dtypes: tuple[type, ...] = (np.float32,)) -> np.ndarray:
    """The batch as a C-contiguous (N, 3, S, S) array of finite values in one of ``dtypes`` (the first
    named in the error), else a one-line ChsError."""
    if not isinstance(batch, np.ndarray):
        raise ChsError(f"input batch must be a numpy array (N, 3, S, S), got {type(batch).__name__}")
    if batch.dtype not in dtypes:
        raise ChsError(f"input batch must be {np.dtype(dtypes[0]).name}, got {batch.dtype}")
    check_shape(batch.shape, meta)
    if not np.isfinite(batch).all():
        raise ChsError("input batch contains NaN or infinity")
    return np.ascontiguousarray(batch)


def check_outputs(out: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """The outputs, unless the model answered NaN or infinity for finite crops: a model file with damaged
    weights (the ONNX and engine openers read no weights) must not hand out landmarks piled on one point."""
    for key in ("landmarks", "scores"):
        if key in out and not np.isfinite(out[key]).all():
            raise ChsError(f"{name}: the model answered NaN or infinity ({key}) for finite input: "
                           "are its weights damaged?")
    return out


class RunnerBase:
    """Shared runner behaviour: ``infer`` checks the batch once, then calls the backend's ``_run``."""

    name: str
    meta: ModelMeta
    input_dtypes: tuple[type, ...] = (np.float32,)  # host batch dtypes accepted; the first is named in errors

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch of normalised crops; thread-safe."""
        return check_outputs(self._run(check_batch(batch, self.meta, self.input_dtypes)), self.name)

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

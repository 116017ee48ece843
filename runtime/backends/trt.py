"""TensorRT engine runner: host batches through :meth:`TensorRTRunner.infer`, GPU crops through
:meth:`TensorRTRunner.infer_device` (no host round trip when the crops were cut on the GPU).

Status: written against the TensorRT 10/11 Python API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``) and cuda-python's runtime bindings; the names, signatures and enum values it uses
are checked against the real ``tensorrt_lean`` and ``cuda.bindings`` wheels in the tests, and its data
flow against the fakes in ``tests/fake_tensorrt.py``. It has NOT been run with a real TensorRT on a GPU.
``tensorrt`` and cuda-python are imported lazily, in the constructor. CUDA interop lives in
:mod:`.cuda_interop`, the sidecar (model metadata, engine facts) in :mod:`.trt_sidecar`.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chs.runtime.artifact import INPUT_NAME, OUTPUT_LANDMARKS, OUTPUT_SCORES
from chs.runtime.backends.base import RunnerBase, check_shape
from chs.runtime.backends.cuda_interop import (
    ALIGNMENT,
    DeviceTensor,
    compute_capability,
    cuda_call,
    device_input,
    import_cudart,
    stream_handle,
)
from chs.runtime.backends.trt_env import shared_logger, tensorrt_version
from chs.runtime.backends.trt_sidecar import read_sidecar
from chs.runtime.errors import ChsError
from chs.runtime.meta_checks import validate_meta


@dataclass
class _IO:
    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass
class _ThreadState:
    context: Any
    stream: Any
    handle: int
    buffers: dict[str, int] = field(default_factory=dict)


class TensorRTRunner(RunnerBase):
    """A runner over a serialized TensorRT engine; one execution context and stream per thread. Host
    batches are checked by :class:`RunnerBase` (float16 ones too, for a float16-input engine)."""

    name = "trt"

    def __init__(self, engine_path: str | Path, sidecar_path: str | Path | None = None, *, device: int = 0,
                 trt: Any | None = None, cudart: Any | None = None) -> None:
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise ChsError(f"engine file {self.engine_path} does not exist")
        self.sidecar = read_sidecar(self.engine_path, sidecar_path)
        self.sidecar_path = self.sidecar.path
        self.meta = self.sidecar.meta
        validate_meta(self.meta, f"engine sidecar {self.sidecar_path.name}")
        data = self.engine_path.read_bytes()
        broken = f"engine file {self.engine_path} is truncated or was built by another TensorRT version"
        if not data:
            raise ChsError(broken)
        self.sidecar.check_engine_bytes(self.engine_path, data)

        if trt is None:
            import tensorrt as trt  # lazy: never at module import
        self._trt = trt
        self._cudart = cudart if cudart is not None else import_cudart()
        self.device = int(device)
        cuda_call(self._cudart, self._cudart.cudaSetDevice(self.device), "cudaSetDevice")
        self.sidecar.check_compatible(tensorrt_version(trt), compute_capability(self._cudart, self.device))
        self._runtime = trt.Runtime(shared_logger(trt))  # the engine needs its runtime alive
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise ChsError(broken)

        self._io: dict[str, _IO] = {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dt = self._engine.get_tensor_dtype(name)
            try:
                np_dtype = np.dtype(trt.nptype(dt))
            except TypeError:
                raise ChsError(f"engine tensor '{name}' has dtype {dt}, which numpy cannot hold") from None
            shape = tuple(int(d) for d in self._engine.get_tensor_shape(name))
            self._io[name] = _IO(name, is_input, shape, np_dtype)
        self._check_io()
        self._outputs = [t.name for t in self._io.values() if not t.is_input]

        inp = self._io[INPUT_NAME]
        if inp.shape[0] < 0:
            lo, _, hi = self._engine.get_tensor_profile_shape(INPUT_NAME, 0)
            self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        else:
            self.min_batch = self.max_batch = inp.shape[0]
        self.input_dtype = inp.dtype
        self.input_dtypes = (np.float32,) if inp.dtype == np.float32 else (np.float16, np.float32)

        self._local = threading.local()
        self._lock = threading.Lock()
        self._states: list[_ThreadState] = []
        self._closed = False

    # ----------------------------------------------------------------------------------------- set-up

    def _check_io(self) -> None:
        inputs = [t for t in self._io.values() if t.is_input]
        names = ", ".join(self._io)
        if [t.name for t in inputs] != [INPUT_NAME]:
            raise ChsError(f"engine must have exactly one input '{INPUT_NAME}', it has: {names}")
        missing = [n for n in (OUTPUT_LANDMARKS, OUTPUT_SCORES) if n not in self._io or self._io[n].is_input]
        if missing:
            raise ChsError(f"engine lacks output(s) {', '.join(missing)} (tensors: {names})")
        s = self.meta.input_size
        if tuple(self._io[INPUT_NAME].shape[1:]) != (3, s, s):
            raise ChsError(f"engine input shape {list(self._io[INPUT_NAME].shape)} does not match the sidecar's "
                           f"input_size {s} (expected [-1, 3, {s}, {s}])")
        if self._io[INPUT_NAME].dtype not in (np.float32, np.float16):
            raise ChsError(f"engine input dtype {self._io[INPUT_NAME].dtype} is not float32/float16")
        for t in self._io.values():
            if not t.is_input and any(d < 0 for d in t.shape[1:]):
                raise ChsError(f"engine output '{t.name}' has data-dependent shape {list(t.shape)}")

    def _max_shape(self, t: _IO) -> tuple[int, ...]:
        return tuple(self.max_batch if (i == 0 and d < 0) else d for i, d in enumerate(t.shape))

    def _state(self) -> _ThreadState:
        st = getattr(self._local, "state", None)
        if st is not None:
            return st
        cu = self._cudart
        with self._lock:
            if self._closed:
                raise ChsError("TensorRT runner is closed")
            cuda_call(cu, cu.cudaSetDevice(self.device), "cudaSetDevice")
            context = self._engine.create_execution_context()
            if context is None:
                raise ChsError("TensorRT could not create an execution context (out of GPU memory?)")
            stream = cuda_call(cu, cu.cudaStreamCreate(), "cudaStreamCreate")
            st = _ThreadState(context, stream, int(stream))
            self._states.append(st)  # registered first, so close() frees a half-built state too
            for t in self._io.values():
                nbytes = max(1, math.prod(self._max_shape(t)) * t.dtype.itemsize)
                st.buffers[t.name] = int(cuda_call(cu, cu.cudaMalloc(nbytes), "cudaMalloc"))
        self._local.state = st
        return st

    def synchronize(self) -> None:
        """Wait until every thread's queued work on the runner's own streams has finished."""
        cu = self._cudart
        with self._lock:
            for st in self._states:
                cuda_call(cu, cu.cudaStreamSynchronize(st.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        """Free every thread's device buffers and streams (idempotent)."""
        cu = self._cudart
        with self._lock:
            self._closed = True
            for st in self._states:
                cu.cudaStreamSynchronize(st.stream)
                for ptr in st.buffers.values():
                    cu.cudaFree(ptr)
                st.buffers.clear()
                cu.cudaStreamDestroy(st.stream)
                st.context = None
            self._states.clear()
        self._local = threading.local()

    # ----------------------------------------------------------------------------------------- checks

    def _check_batch_size(self, n: int) -> int:
        """``n`` must fit the engine's optimisation profile (the shape itself is checked by the base)."""
        if n > self.max_batch:
            raise ChsError(f"batch of {n} exceeds the engine's profile maximum {self.max_batch}: "
                           "split it or rebuild the engine with a larger max batch")
        if 0 < n < self.min_batch:
            raise ChsError(f"batch of {n} is below the engine's profile minimum {self.min_batch}")
        return n

    # ----------------------------------------------------------------------------------------- running

    def _bind(self, ctx: Any, name: str, ptr: int) -> None:
        # TensorRT refuses null or misaligned addresses by returning False; ignoring that would run the
        # engine on the previous call's buffer
        if not ctx.set_tensor_address(name, int(ptr)):
            raise ChsError(f"TensorRT refused the device address 0x{int(ptr):x} for tensor '{name}'")

    def _enqueue(self, st: _ThreadState, input_ptr: int, shape: tuple[int, ...], stream: int) -> list[tuple]:
        ctx = st.context
        if not ctx.set_input_shape(INPUT_NAME, tuple(int(d) for d in shape)):
            raise ChsError(f"TensorRT rejected input shape {tuple(shape)}")
        self._bind(ctx, INPUT_NAME, input_ptr)
        for name in self._outputs:
            self._bind(ctx, name, st.buffers[name])
        if not ctx.execute_async_v3(stream):
            raise ChsError("TensorRT execution failed (see the TensorRT log above)")
        return [(name, tuple(int(d) for d in ctx.get_tensor_shape(name)), self._io[name].dtype, st.buffers[name])
                for name in self._outputs]

    def _empty(self) -> dict[str, np.ndarray]:
        out = {}
        for name in self._outputs:
            t = self._io[name]
            dtype = np.float32 if t.dtype == np.float16 else t.dtype
            out[name] = np.empty((0, *t.shape[1:]), dtype)
        return out

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._check_batch_size(len(batch)) == 0:
            return self._empty()
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        st = self._state()
        cu = self._cudart
        h2d, d2h = cu.cudaMemcpyKind.cudaMemcpyHostToDevice, cu.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(cu, cu.cudaMemcpyAsync(st.buffers[INPUT_NAME], x.ctypes.data, x.nbytes, h2d, st.stream), "H2D copy")
        results = {}
        for name, shape, dtype, ptr in self._enqueue(st, st.buffers[INPUT_NAME], x.shape, st.handle):
            out = np.empty(shape, dtype)
            cuda_call(cu, cu.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, d2h, st.stream), "D2H copy")
            results[name] = out
        cuda_call(cu, cu.cudaStreamSynchronize(st.stream), "cudaStreamSynchronize")  # x stays alive until here
        return {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in results.items()}

    def infer_device(self, x: Any, shape: tuple[int, ...] | None = None, stream: Any = None, *,
                     dtype: str | None = None, to_host: bool = False) -> dict[str, Any]:
        """Run crops already on the GPU: a DLPack tensor (torch, cupy, jax; preferred, so the producer's stream is
        ordered before the engine's), a ``__cuda_array_interface__`` object, or a raw int pointer + shape.

        With an external ``stream`` the work is queued on it and nothing waits; otherwise the runner's own stream is
        synchronised before returning. An input that is not 256-byte aligned is first copied into the runner's own input
        buffer. Outputs are :class:`DeviceTensor` s (valid until this thread's next call) unless ``to_host``.
        """
        st = self._state()
        ext = stream_handle(stream)
        handle = ext if ext is not None else st.handle
        inp = device_input(x, handle, shape, dtype or self.input_dtype.name)
        if inp.dtype != self.input_dtype.name:
            raise ChsError(f"device input must be {self.input_dtype.name} for this engine, got {inp.dtype}")
        n = self._check_batch_size(check_shape(inp.shape, self.meta, "device input"))
        if n < 1:
            raise ChsError("device input batch is empty")
        if not inp.ptr:
            raise ChsError("device input pointer is null")
        cu = self._cudart
        if inp.producer_stream is not None and inp.producer_stream not in (int(handle), 0):
            cuda_call(cu, cu.cudaStreamSynchronize(inp.producer_stream), "cudaStreamSynchronize(producer)")
        ptr = inp.ptr
        if ptr % ALIGNMENT:
            own = st.buffers[INPUT_NAME]
            nbytes = math.prod(inp.shape) * self.input_dtype.itemsize
            d2d = cu.cudaMemcpyKind.cudaMemcpyDeviceToDevice
            cuda_call(cu, cu.cudaMemcpyAsync(own, ptr, nbytes, d2d, handle), "cudaMemcpyAsync (alignment copy)")
            ptr = own
        outs = self._enqueue(st, ptr, inp.shape, handle)
        if ext is None:
            cuda_call(cu, cu.cudaStreamSynchronize(st.stream), "cudaStreamSynchronize")
            sync = None
        else:
            sync = handle or 1  # CUDA array interface v3: 1 = legacy default stream, 0 is not allowed
        result = {name: DeviceTensor(ptr_o, shape_o, dtype_o, cu, handle, sync, keepalive=inp.keepalive)
                  for name, shape_o, dtype_o, ptr_o in outs}
        if to_host:
            return {k: v.to_host() for k, v in result.items()}
        return result

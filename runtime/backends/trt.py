"""TensorRT engine runner: host batches through :meth:`TensorRTRunner.infer`, GPU crops through
:meth:`TensorRTRunner.infer_device` (no host round trip when the crops were cut on the GPU).

Status: written against the documented TensorRT 10/11 Python API (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) and cuda-python's runtime bindings, and tested only on CPU
against the fakes in ``tests/fake_tensorrt.py``; it has NOT been run with a real TensorRT on a GPU.
``tensorrt`` and cuda-python are imported lazily, in the constructor, so importing this module is safe
on machines without either. The engine's sidecar JSON (written by ``chs.export.tensorrt``) supplies the
model metadata: an engine file alone does not say how its crops must be cut.
"""

from __future__ import annotations

import ctypes
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chs.runtime.artifact import INPUT_NAME, OUTPUT_LANDMARKS, OUTPUT_SCORES, ModelMeta
from chs.runtime.contract import validate_contract
from chs.runtime.errors import ChsError

_TYPESTRS = {"<f4": "float32", "<f2": "float16"}
_KDL_CUDA = 2
_KDL_CUDA_MANAGED = 13


# --------------------------------------------------------------------------------------------- CUDA arrays


def _c_contiguous(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> bool:
    if len(shape) != len(strides):
        return False
    expected = itemsize
    for dim, stride in zip(reversed(shape), reversed(strides), strict=True):
        if dim > 1 and stride != expected:
            return False
        expected *= dim
    return True


def _typestr_name(typestr: str) -> str:
    if typestr in _TYPESTRS:
        return _TYPESTRS[typestr]
    try:
        dt = np.dtype(typestr)
    except TypeError:
        raise ChsError(f"unreadable CUDA array typestr {typestr!r}") from None
    if dt.byteorder == ">" or (dt.byteorder == "=" and np.little_endian is False):
        raise ChsError(f"big-endian CUDA arrays are not supported (typestr {typestr!r})")
    return dt.name


def parse_cuda_array(obj: Any) -> tuple[int, tuple[int, ...], str]:
    """(device pointer, shape, dtype name) of a ``__cuda_array_interface__`` object or dict, or of a raw
    ``(ptr, shape)`` / ``(ptr, shape, dtype)`` tuple (dtype defaults to float32).

    Non-contiguous arrays are rejected: the engine reads one dense NCHW block.
    """
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is None and isinstance(obj, dict) and "data" in obj and "shape" in obj:
        cai = obj
    if cai is not None:
        if not isinstance(cai, dict):
            raise ChsError("__cuda_array_interface__ is not a dict")
        version = cai.get("version", 0)
        if version not in (2, 3):
            raise ChsError(f"__cuda_array_interface__ version {version} is not supported (need 2 or 3)")
        if cai.get("mask") is not None:
            raise ChsError("masked CUDA arrays are not supported")
        try:
            ptr = int(cai["data"][0] or 0)
            shape = tuple(int(d) for d in cai["shape"])
            typestr = str(cai["typestr"])
        except (KeyError, TypeError, IndexError, ValueError):
            raise ChsError("__cuda_array_interface__ lacks data/shape/typestr") from None
        dtype = _typestr_name(typestr)
        strides = cai.get("strides")
        if strides is not None and not _c_contiguous(
            shape, tuple(int(s) for s in strides), np.dtype(dtype).itemsize
        ):
            raise ChsError(f"CUDA array with shape {shape} and strides {tuple(strides)} is not C-contiguous")
        return ptr, shape, dtype
    if isinstance(obj, (tuple, list)) and len(obj) in (2, 3) and isinstance(obj[0], int):
        try:
            shape = tuple(int(d) for d in obj[1])
        except TypeError:
            raise ChsError(f"raw device pointer needs a shape, got {obj[1]!r}") from None
        dtype = np.dtype(obj[2]).name if len(obj) == 3 else "float32"
        return int(obj[0]), shape, dtype
    raise ChsError(
        f"{type(obj).__name__} is not a CUDA array (no __cuda_array_interface__, not (ptr, shape))"
    )


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi)
)


def parse_dlpack(
    obj: Any, stream: int | None = None, *, require_cuda: bool = True
) -> tuple[int, tuple, str, Any]:
    """(pointer, shape, dtype name, capsule) of a DLPack producer; keep the capsule alive while in use.

    ``stream`` is passed to ``__dlpack__`` so the producer orders its pending work before that stream.
    """
    dev = obj.__dlpack_device__() if hasattr(obj, "__dlpack_device__") else None
    if require_cuda and (dev is None or int(dev[0]) not in (_KDL_CUDA, _KDL_CUDA_MANAGED)):
        raise ChsError(
            f"{type(obj).__name__} lives on DLPack device {dev}, not on a CUDA GPU: "
            "use infer() for host arrays"
        )
    if stream is None:
        capsule = obj.__dlpack__()
    else:
        try:
            capsule = obj.__dlpack__(stream=stream)
        except TypeError:
            capsule = obj.__dlpack__()
    addr = _capsule_pointer(capsule, b"dltensor")
    if not addr:
        raise ChsError("DLPack capsule is empty or already consumed")
    t = _DLManagedTensor.from_address(addr).dl_tensor
    shape = tuple(int(t.shape[i]) for i in range(t.ndim))
    if t.dtype.lanes != 1 or t.dtype.code != 2 or t.dtype.bits not in (16, 32):
        raise ChsError(
            f"DLPack tensor has dtype code {t.dtype.code} / {t.dtype.bits} bits: need float32/float16"
        )
    dtype = "float32" if t.dtype.bits == 32 else "float16"
    if t.strides:
        strides = tuple(int(t.strides[i]) for i in range(t.ndim))
        if not _c_contiguous(shape, strides, 1):
            raise ChsError(f"DLPack tensor with shape {shape} and strides {strides} is not C-contiguous")
    return int(t.data or 0) + int(t.byte_offset), shape, dtype, capsule


def stream_handle(stream: Any) -> int | None:
    """Integer handle of an external CUDA stream: an int, torch (``cuda_stream``), cupy (``ptr``),
    numba (``handle``) or cuda-python (``int()``) stream; None stays None."""
    if stream is None:
        return None
    if isinstance(stream, int):
        return stream
    for attr in ("cuda_stream", "ptr", "handle"):
        value = getattr(stream, attr, None)
        if value is not None:
            value = getattr(value, "value", value)  # ctypes.c_void_p
            return int(value or 0)
    try:
        return int(stream)
    except (TypeError, ValueError):
        raise ChsError(f"cannot get a CUDA stream handle from {type(stream).__name__}") from None


# --------------------------------------------------------------------------------------------- the runner


def _cuda(cudart: Any, ret: Any, what: str) -> Any:
    """Unpack cuda-python's (err, *values) tuples; ChsError on a CUDA error."""
    if isinstance(ret, tuple):
        err, rest = ret[0], ret[1:]
    else:
        err, rest = ret, ()
    if int(err) != 0:
        raise ChsError(f"CUDA call {what} failed: {err}")
    return rest[0] if len(rest) == 1 else (rest or None)


def import_cudart(required: bool = True) -> Any | None:
    """cuda-python's runtime module (``cuda.bindings.runtime`` >= 12.6, else ``cuda.cudart``); when it is
    missing: ChsError if ``required``, else None."""
    try:
        from cuda.bindings import runtime as cudart

        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart

        return cudart
    except ImportError:
        if not required:
            return None
        raise ChsError("the TensorRT runner needs cuda-python: pip install 'cuda-python>=12'") from None


class DeviceTensor:
    """An output left on the GPU. Exposes ``__cuda_array_interface__`` (cupy/torch/numba can wrap it).

    It is the runner's per-thread output buffer: valid until the next call from the same thread.
    """

    def __init__(
        self,
        ptr: int,
        shape: tuple[int, ...],
        dtype: np.dtype,
        cudart: Any,
        stream: int,
        sync_stream: int | None,
        keepalive: Any = None,
    ) -> None:
        self.ptr, self.shape, self.dtype = int(ptr), tuple(shape), np.dtype(dtype)
        self._cudart, self._stream, self._sync_stream, self._keepalive = (
            cudart,
            stream,
            sync_stream,
            keepalive,
        )

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def __cuda_array_interface__(self) -> dict:
        return {
            "version": 3,
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self.ptr, False),
            "strides": None,
            "stream": self._sync_stream,
        }

    def to_host(self) -> np.ndarray:
        """Copy to a numpy array (float16 outputs come back as float32)."""
        out = np.empty(self.shape, self.dtype)
        if out.nbytes:
            cu = self._cudart
            kind = cu.cudaMemcpyKind.cudaMemcpyDeviceToHost
            _cuda(
                cu,
                cu.cudaMemcpyAsync(out.ctypes.data, self.ptr, out.nbytes, kind, self._stream),
                "cudaMemcpyAsync",
            )
            _cuda(cu, cu.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return out.astype(np.float32) if out.dtype == np.float16 else out

    def __repr__(self) -> str:
        return f"DeviceTensor(ptr=0x{self.ptr:x}, shape={self.shape}, dtype={self.dtype.name})"


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


def _read_sidecar(engine_path: Path, sidecar_path: str | Path | None) -> tuple[Path, dict]:
    p = Path(sidecar_path) if sidecar_path is not None else engine_path.with_name(engine_path.name + ".json")
    if not p.is_file():
        raise ChsError(
            f"engine sidecar {p} is missing: it carries the crop rule and normalisation; "
            "rebuild the engine with chs-export or pass sidecar_path"
        )
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ChsError(f"engine sidecar {p} is not valid JSON") from None
    if not isinstance(data, dict):
        raise ChsError(f"engine sidecar {p} is not a JSON object")
    return p, data


class TensorRTRunner:
    """Runner protocol over a serialized TensorRT engine; one execution context and stream per thread."""

    name = "trt"

    def __init__(
        self,
        engine_path: str | Path,
        sidecar_path: str | Path | None = None,
        *,
        device: int = 0,
        trt: Any | None = None,
        cudart: Any | None = None,
    ) -> None:
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise ChsError(f"engine file {self.engine_path} does not exist")
        self.sidecar_path, self.sidecar = _read_sidecar(self.engine_path, sidecar_path)
        contract = self.sidecar.get("contract")
        if contract is not None:
            validate_contract(contract, f"contract in {self.sidecar_path}")
        meta = self.sidecar.get("meta") or (contract or {}).get("meta")
        if not meta:
            raise ChsError(f"engine sidecar {self.sidecar_path} carries no model metadata ('meta')")
        self.meta = ModelMeta.from_dict(meta)

        data = self.engine_path.read_bytes()
        broken = f"engine file {self.engine_path} is truncated or was built by another TensorRT version"
        if not data:
            raise ChsError(broken)
        size, sha = self.sidecar.get("engine_bytes"), self.sidecar.get("engine_sha256")
        if (size is not None and size != len(data)) or (sha is not None and _sha256(data) != sha):
            raise ChsError(
                f"engine file {self.engine_path} does not match its sidecar {self.sidecar_path} "
                "(truncated, or rebuilt without its sidecar)"
            )

        if trt is None:
            import tensorrt as trt  # lazy: never at module import
        self._trt = trt
        self._cudart = cudart if cudart is not None else import_cudart()
        self.device = int(device)
        _cuda(self._cudart, self._cudart.cudaSetDevice(self.device), "cudaSetDevice")
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")  # ROIAlign_TRT lives in the plugin library
        self._runtime = trt.Runtime(self._logger)
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
            raise ChsError(
                f"engine input shape {list(self._io[INPUT_NAME].shape)} does not match the sidecar's "
                f"input_size {s} (expected [-1, 3, {s}, {s}])"
            )
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
            _cuda(cu, cu.cudaSetDevice(self.device), "cudaSetDevice")
            context = self._engine.create_execution_context()
            if context is None:
                raise ChsError("TensorRT could not create an execution context (out of GPU memory?)")
            stream = _cuda(cu, cu.cudaStreamCreate(), "cudaStreamCreate")
            st = _ThreadState(context, stream, int(stream))
            self._states.append(st)  # registered first, so close() frees a half-built state too
            for t in self._io.values():
                nbytes = max(1, math.prod(self._max_shape(t)) * t.dtype.itemsize)
                st.buffers[t.name] = int(_cuda(cu, cu.cudaMalloc(nbytes), "cudaMalloc"))
        self._local.state = st
        return st

    def close(self) -> None:
        """Free every thread's device buffers and streams."""
        cu = self._cudart
        with self._lock:
            self._closed = True
            for st in self._states:
                for ptr in st.buffers.values():
                    cu.cudaFree(ptr)
                st.buffers.clear()
                cu.cudaStreamDestroy(st.stream)
                st.context = None
            self._states.clear()
        self._local = threading.local()

    def __enter__(self) -> TensorRTRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------- checks

    def _check_shape(self, shape: tuple[int, ...], what: str) -> int:
        s = self.meta.input_size
        if len(shape) != 4 or tuple(shape[1:]) != (3, s, s):
            raise ChsError(f"{what} must have shape (N, 3, {s}, {s}), got {tuple(shape)}")
        n = int(shape[0])
        if n > self.max_batch:
            raise ChsError(
                f"batch of {n} exceeds the engine's profile maximum {self.max_batch}: "
                "split it or rebuild the engine with a larger max batch"
            )
        if 0 < n < self.min_batch:
            raise ChsError(f"batch of {n} is below the engine's profile minimum {self.min_batch}")
        return n

    # ----------------------------------------------------------------------------------------- running

    def _enqueue(self, st: _ThreadState, input_ptr: int, shape: tuple[int, ...], stream: int) -> list[tuple]:
        ctx = st.context
        if not ctx.set_input_shape(INPUT_NAME, tuple(int(d) for d in shape)):
            raise ChsError(f"TensorRT rejected input shape {tuple(shape)}")
        ctx.set_tensor_address(INPUT_NAME, int(input_ptr))
        for name in self._outputs:
            ctx.set_tensor_address(name, st.buffers[name])
        if not ctx.execute_async_v3(stream):
            raise ChsError("TensorRT execution failed (see the TensorRT log above)")
        return [
            (name, tuple(int(d) for d in ctx.get_tensor_shape(name)), self._io[name].dtype, st.buffers[name])
            for name in self._outputs
        ]

    def _empty(self) -> dict[str, np.ndarray]:
        out = {}
        for name in self._outputs:
            t = self._io[name]
            dtype = np.float32 if t.dtype == np.float16 else t.dtype
            out[name] = np.empty((0, *t.shape[1:]), dtype)
        return out

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one host batch (N, 3, S, S) float32 (float16 too for a float16-input engine); thread-safe."""
        if not isinstance(batch, np.ndarray):
            raise ChsError(f"TensorRT runner takes a numpy array (N, 3, S, S), got {type(batch).__name__}")
        allowed = (np.float32,) if self.input_dtype == np.float32 else (np.float16, np.float32)
        if batch.dtype not in allowed:
            raise ChsError(f"input batch must be {self.input_dtype.name}, got {batch.dtype}")
        n = self._check_shape(batch.shape, "input batch")
        if n == 0:
            return self._empty()
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        st = self._state()
        cu = self._cudart
        h2d, d2h = cu.cudaMemcpyKind.cudaMemcpyHostToDevice, cu.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _cuda(
            cu,
            cu.cudaMemcpyAsync(st.buffers[INPUT_NAME], x.ctypes.data, x.nbytes, h2d, st.stream),
            "H2D copy",
        )
        results = {}
        for name, shape, dtype, ptr in self._enqueue(st, st.buffers[INPUT_NAME], x.shape, st.handle):
            out = np.empty(shape, dtype)
            _cuda(cu, cu.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, d2h, st.stream), "D2H copy")
            results[name] = out
        _cuda(cu, cu.cudaStreamSynchronize(st.stream), "cudaStreamSynchronize")  # x stays alive until here
        return {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in results.items()}

    def infer_device(
        self,
        x: Any,
        shape: tuple[int, ...] | None = None,
        stream: Any = None,
        *,
        dtype: str | None = None,
        to_host: bool = False,
    ) -> dict[str, Any]:
        """Run crops already on the GPU: ``__cuda_array_interface__``, DLPack, or a raw int pointer + shape.

        With an external ``stream`` the work is queued on it and nothing waits; otherwise the runner's own
        stream is synchronised before returning. Outputs are :class:`DeviceTensor` s (valid until this
        thread's next call) unless ``to_host``.
        """
        st = self._state()
        ext = stream_handle(stream)
        handle = ext if ext is not None else st.handle
        keep: Any = None
        producer: int | None = None
        if isinstance(x, int):
            if shape is None:
                raise ChsError("a raw device pointer needs shape=(N, 3, S, S)")
            ptr, shp, dt = int(x), tuple(int(d) for d in shape), dtype or self.input_dtype.name
        elif hasattr(x, "__cuda_array_interface__") or isinstance(x, (tuple, list, dict)):
            ptr, shp, dt = parse_cuda_array(x)
            cai = getattr(x, "__cuda_array_interface__", x if isinstance(x, dict) else {})
            producer = cai.get("stream") if isinstance(cai, dict) else None
        elif hasattr(x, "__dlpack__"):
            ptr, shp, dt, keep = parse_dlpack(x, handle or 1)
        else:
            raise ChsError(
                f"infer_device takes a CUDA array, a DLPack tensor or an int pointer, not {type(x).__name__}"
            )
        if dt != self.input_dtype.name:
            raise ChsError(f"device input must be {self.input_dtype.name} for this engine, got {dt}")
        n = self._check_shape(shp, "device input")
        if n < 1:
            raise ChsError("device input batch is empty")
        if not ptr:
            raise ChsError("device input pointer is null")
        cu = self._cudart
        if producer is not None and int(producer) not in (int(handle), 0):
            _cuda(cu, cu.cudaStreamSynchronize(int(producer)), "cudaStreamSynchronize(producer)")
        outs = self._enqueue(st, ptr, shp, handle)
        if ext is None:
            _cuda(cu, cu.cudaStreamSynchronize(st.stream), "cudaStreamSynchronize")
            sync = None
        else:
            sync = handle or 1  # CUDA array interface v3: 1 = legacy default stream, 0 is not allowed
        result = {
            name: DeviceTensor(ptr_o, shape_o, dtype_o, cu, handle, sync, keepalive=(x, keep))
            for name, shape_o, dtype_o, ptr_o in outs
        }
        if to_host:
            return {k: v.to_host() for k, v in result.items()}
        return result


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()

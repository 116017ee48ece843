"""CUDA interop for the TensorRT runner: cuda-python's runtime, device pointers from other libraries
(``__dlpack__``, ``__cuda_array_interface__``, raw pointers), stream handles and outputs left on the GPU.

Torch-free and import-safe without CUDA: cuda-python is imported only by :func:`import_cudart`.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from chs.runtime.errors import ChsError, first_line

ALIGNMENT = 256  # TensorRT refuses tensor addresses that are not 256-byte aligned
_INSUFFICIENT_DRIVER = 35  # cudaErrorInsufficientDriver
_NO_DEVICE = 100  # cudaErrorNoDevice

_TYPESTRS = {"<f4": "float32", "<f2": "float16"}
_KDL_CUDA = 2
_KDL_CUDA_MANAGED = 13


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
        if strides is not None and not _c_contiguous(shape, tuple(int(s) for s in strides), np.dtype(dtype).itemsize):
            raise ChsError(f"CUDA array with shape {shape} and strides {tuple(strides)} is not C-contiguous")
        return ptr, shape, dtype
    if isinstance(obj, (tuple, list)) and len(obj) in (2, 3) and isinstance(obj[0], int):
        try:
            shape = tuple(int(d) for d in obj[1])
        except TypeError:
            raise ChsError(f"raw device pointer needs a shape, got {obj[1]!r}") from None
        dtype = np.dtype(obj[2]).name if len(obj) == 3 else "float32"
        return int(obj[0]), shape, dtype
    raise ChsError(f"{type(obj).__name__} is not a CUDA array (no __cuda_array_interface__, not (ptr, shape))")


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


def parse_dlpack(obj: Any, stream: int | None = None, *, require_cuda: bool = True) -> tuple[int, tuple, str, Any]:
    """(pointer, shape, dtype name, capsule) of a DLPack producer; keep the capsule alive while in use.

    ``stream`` is passed to ``__dlpack__`` so the producer orders its pending work before that stream.
    """
    dev = obj.__dlpack_device__() if hasattr(obj, "__dlpack_device__") else None
    if require_cuda and (dev is None or int(dev[0]) not in (_KDL_CUDA, _KDL_CUDA_MANAGED)):
        raise ChsError(f"{type(obj).__name__} lives on DLPack device {dev}, not on a CUDA GPU: "
                       "use infer() for host arrays")
    try:
        if stream is None:
            capsule = obj.__dlpack__()
        else:
            try:
                capsule = obj.__dlpack__(stream=stream)
            except TypeError:  # a producer without the stream keyword (DLPack before v0.6)
                capsule = obj.__dlpack__()
    except (RuntimeError, BufferError, ValueError) as e:
        raise ChsError(f"{type(obj).__name__} cannot be shared through DLPack: {first_line(e)}") from None
    addr = _capsule_pointer(capsule, b"dltensor")
    if not addr:
        raise ChsError("DLPack capsule is empty or already consumed")
    t = _DLManagedTensor.from_address(addr).dl_tensor
    shape = tuple(int(t.shape[i]) for i in range(t.ndim))
    if t.dtype.lanes != 1 or t.dtype.code != 2 or t.dtype.bits not in (16, 32):
        raise ChsError(f"DLPack tensor has dtype code {t.dtype.code} / {t.dtype.bits} bits: need float32/float16")
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


def _cuda_major(version: int) -> int:
    return int(version) // 1000


def driver_mismatch_hint(cudart: Any) -> str:
    """Which CUDA flavour cuda-python targets and which the driver supports, with the extra that fits."""
    try:
        runtime = int(cudart.cudaRuntimeGetVersion()[1] or 0)
        driver = int(cudart.cudaDriverGetVersion()[1] or 0)
    except Exception:  # an unusual cudart: say what we can
        runtime = driver = 0
    try:
        from cuda import bindings

        pkg = f"cuda-python {bindings.__version__}"
    except (ImportError, AttributeError):
        pkg = "cuda-python"
    rt = f"{pkg} is built for CUDA {_cuda_major(runtime)}" if runtime else f"{pkg}'s CUDA runtime"
    if not driver:
        return f"{rt}, and no NVIDIA driver is installed"
    have = _cuda_major(driver)
    return (f"{rt}, but the NVIDIA driver supports CUDA {have}.{driver % 1000 // 10} only: "
            f"install chs[tensorrt-cu{have}] (cuda-python {have}.x and TensorRT's -cu{have} flavour) "
            "or upgrade the driver (CUDA 13 needs R580 or newer)")


def cuda_call(cudart: Any, ret: Any, what: str) -> Any:
    """Unpack cuda-python's ``(err, *values)`` tuples; one-line ChsError on a CUDA error, naming the
    driver/flavour mismatch when that is the cause."""
    if isinstance(ret, tuple):
        err, rest = ret[0], ret[1:]
    else:
        err, rest = ret, ()
    code = int(err)
    if code != 0:
        name = getattr(err, "name", str(err))
        if code == _INSUFFICIENT_DRIVER:
            raise ChsError(f"CUDA call {what} failed: {name}: {driver_mismatch_hint(cudart)}")
        if code == _NO_DEVICE:
            raise ChsError(f"CUDA call {what} failed: {name}: this machine has no CUDA GPU")
        raise ChsError(f"CUDA call {what} failed: {name} ({code})")
    return rest[0] if len(rest) == 1 else (rest or None)


def import_cudart(required: bool = True) -> Any | None:
    """cuda-python's runtime module (``cuda.bindings.runtime``, cuda-python >= 12.6; ``cuda.cudart`` before);
    when it is missing: ChsError if ``required``, else None."""
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
        raise ChsError("the TensorRT runner needs cuda-python matching the driver: "
                       "pip install 'chs[tensorrt-cu12]' or 'chs[tensorrt-cu13]'") from None


def compute_capability(cudart: Any, device: int = 0) -> str:
    """``"major.minor"`` of a CUDA device (ChsError when cuda-python cannot tell)."""
    prop = cuda_call(cudart, cudart.cudaGetDeviceProperties(int(device)), "cudaGetDeviceProperties")
    return f"{int(prop.major)}.{int(prop.minor)}"


@dataclass
class DeviceInput:
    """A device batch as the runner binds it: pointer, shape, dtype name, what keeps it alive, and the
    producer's stream to wait for (only a ``__cuda_array_interface__`` v3 producer names one)."""

    ptr: int
    shape: tuple[int, ...]
    dtype: str
    keepalive: Any = None
    producer_stream: int | None = None


def _dlpack_stream(handle: int) -> int:
    # DLPack for CUDA: 1 = legacy default stream, 2 = per-thread default; 0 is not allowed
    return handle if handle not in (0, None) else 1


def device_input(x: Any, stream: int, shape: tuple[int, ...] | None = None, dtype: str | None = None) -> DeviceInput:
    """Resolve what :meth:`TensorRTRunner.infer_device` was given.

    ``__dlpack__(stream=...)`` is preferred: the producer (torch, cupy, jax) then orders its pending work
    before ``stream``. torch's ``__cuda_array_interface__`` is version 2 and names no stream, so it would
    let the engine read a tensor its producer is still writing. A tensor that requires grad is refused
    with one line (torch itself raises on export).
    """
    if getattr(x, "requires_grad", False):
        raise ChsError("the device input requires grad: pass tensor.detach() to infer_device")
    if isinstance(x, int):
        if shape is None:
            raise ChsError("a raw device pointer needs shape=(N, 3, S, S)")
        return DeviceInput(int(x), tuple(int(d) for d in shape), dtype or "float32")
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        ptr, shp, dt, capsule = parse_dlpack(x, _dlpack_stream(stream))
        return DeviceInput(ptr, shp, dt, keepalive=(x, capsule))
    if hasattr(x, "__cuda_array_interface__") or isinstance(x, (tuple, list, dict)):
        ptr, shp, dt = parse_cuda_array(x)
        cai = getattr(x, "__cuda_array_interface__", x if isinstance(x, dict) else {})
        producer = cai.get("stream") if isinstance(cai, dict) else None
        return DeviceInput(ptr, shp, dt, keepalive=x, producer_stream=None if producer is None else int(producer))
    raise ChsError(f"infer_device takes a CUDA array, a DLPack tensor or an int pointer, not {type(x).__name__}")


class DeviceTensor:
    """An output left on the GPU. Exposes ``__cuda_array_interface__`` (cupy/torch/numba can wrap it).

    It is the runner's per-thread output buffer: valid until the next call from the same thread.
    """

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype, cudart: Any, stream: int,
                 sync_stream: int | None, keepalive: Any = None) -> None:
        self.ptr, self.shape, self.dtype = int(ptr), tuple(shape), np.dtype(dtype)
        self._cudart, self._stream, self._sync_stream, self._keepalive = cudart, stream, sync_stream, keepalive

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
            cuda_call(cu, cu.cudaMemcpyAsync(out.ctypes.data, self.ptr, out.nbytes, kind, self._stream),
                      "cudaMemcpyAsync")
            cuda_call(cu, cu.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return out.astype(np.float32) if out.dtype == np.float16 else out

    def __repr__(self) -> str:
        return f"DeviceTensor(ptr=0x{self.ptr:x}, shape={self.shape}, dtype={self.dtype.name})"

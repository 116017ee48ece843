"""Recorded fakes of the TensorRT Python API and of cuda-python's runtime, for CPU-only tests.

They mimic only the surface ``chs.export.tensorrt`` and ``chs.runtime.backends.trt`` use, with the real
parameter names, return values and enum values (``tests/test_trt_real_api.py`` holds them to the real
``tensorrt_lean`` / ``cuda.bindings`` wheels where those have them, and to TensorRT's binding sources where
only the full TensorRT has them). Where the real API refuses something it says so the same way:
``set_tensor_address`` returns False for a misaligned pointer, ``create_timing_cache`` returns None for a
corrupt cache, ``set_timing_cache`` False for another GPU's, configs start with TF32 on, and TensorRT 11's
``NetworkDefinitionCreationFlag`` values differ from 10's. A fake engine is JSON behind a magic header that
records how it was built; a fake execution context reads its input from the fake device memory and writes
``landmarks`` = per-sample input mean and ``scores`` = mean + 1.
"""

from __future__ import annotations

import ctypes
import enum
import json
import math
import types
from typing import Any

import numpy as np

from chs.runtime.backends.cuda_interop import _DLDataType, _DLDevice, _DLManagedTensor  # the layout the runner parses

ENGINE_MAGIC = b"FAKETRT1"
CORRUPT_CACHE = b"CORRUPT"  # create_timing_cache returns None for these bytes
OTHER_GPU_CACHE = b"OTHERGPU"  # set_timing_cache refuses these (another device or TensorRT version)
REMOVED_IN_11 = (
    "FP16",
    "INT8",
    "BF16",
    "FP8",
    "INT4",
    "PREFER_PRECISION_CONSTRAINTS",
    "OBEY_PRECISION_CONSTRAINTS",
)


class Recorder:
    """Ordered log of (name, args) calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def __call__(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def find(self, name: str) -> list[tuple]:
        return [c[1] for c in self.calls if c[0] == name]

    def index(self, name: str) -> int:
        return self.names().index(name)


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


_NP = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
    DataType.INT64: np.int64,
}
_ONNX_TO_TRT = {1: DataType.FLOAT, 10: DataType.HALF, 6: DataType.INT32, 7: DataType.INT64, 9: DataType.BOOL}


def nptype(dt: DataType) -> type:
    if dt not in _NP:
        raise TypeError(f"Could not resolve TensorRT datatype to an equivalent numpy datatype: {dt}")
    return _NP[dt]


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4
    TACTIC_SHARED_MEMORY = 5


class _FlagNamespace:
    """``BuilderFlag``: records every attribute read; removed names raise AttributeError."""

    def __init__(self, rec: Recorder, present: dict[str, int], removed: tuple[str, ...]) -> None:
        object.__setattr__(self, "_rec", rec)
        object.__setattr__(self, "_present", present)
        object.__setattr__(self, "_removed", removed)

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_"):
            return object.__getattribute__(self, name)
        object.__getattribute__(self, "_rec")("BuilderFlag." + name)
        present = object.__getattribute__(self, "_present")
        if name in present:
            return present[name]
        raise AttributeError(f"type object 'tensorrt.BuilderFlag' has no attribute '{name}'")


class _Tensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType) -> None:
        self.name, self.shape, self.dtype = name, tuple(shape), dtype


class _ParserError:
    def __init__(self, msg: str) -> None:
        self.msg = msg

    def desc(self) -> str:
        return self.msg

    def __str__(self) -> str:
        return f"In node -1 with name:  and operator:  (parse): INVALID_GRAPH: {self.msg}"


class _HostMemory(bytes):
    """IHostMemory stand-in (bytes support the buffer protocol, like the real one)."""


def make_fake_trt(
    version: str = "11.0.0",
    *,
    cudart: FakeCudart | None = None,
    strongly_typed_flag: bool = True,
    parse_errors: list[str] | None = None,
    fail_build: bool = False,
    cache_out: bool = True,
) -> types.ModuleType:
    """A fresh fake ``tensorrt`` module with its own recorder (``mod.recorder``)."""
    rec = Recorder()
    mod = types.ModuleType(f"fake_tensorrt_{version.replace('.', '_')}")
    mod.__version__ = version
    mod.recorder = rec
    mod.cudart = cudart
    mod.DataType, mod.TensorIOMode, mod.MemoryPoolType, mod.nptype = (
        DataType,
        TensorIOMode,
        MemoryPoolType,
        nptype,
    )
    mod.volume = lambda shape: math.prod(shape)
    major = int(version.split(".")[0])

    if major < 11:  # 10.x: EXPLICIT_BATCH = 0 (deprecated), STRONGLY_TYPED = 1
        flags = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if strongly_typed_flag else {"EXPLICIT_BATCH": 0}
    else:  # 11.x: STRONGLY_TYPED = 0 is deprecated and ignored (every network is strongly typed)
        flags = {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}
    flag_names = {v: k for k, v in flags.items()}
    mod.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flags)
    # values as in the real 11.x wheel (TF32 = 6 in 10.x too); 10.x also has FP16 = 0, INT8 = 1
    present = {"REFIT": 4, "TF32": 6, "VERSION_COMPATIBLE": 12, "ERROR_ON_TIMING_CACHE_MISS": 15}
    if major < 11:
        present.update({"FP16": 0, "INT8": 1})
    removed = () if major < 11 else REMOVED_IN_11
    mod.BuilderFlag = _FlagNamespace(rec, present, removed)

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = 0, 1, 2, 3, 4

        def __init__(self, min_severity: int = 2) -> None:
            rec("Logger", min_severity)
            self.min_severity = min_severity

    def init_libnvinfer_plugins(logger: Logger, namespace: str) -> bool:
        rec("init_libnvinfer_plugins", namespace)
        mod.plugin_logger = logger  # the real plugin library keeps a raw pointer to it
        return True

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            set_bits = [flag_names.get(b, f"bit{b}") for b in range(8) if flags >> b & 1]
            if major >= 11:  # STRONGLY_TYPED (0) cannot be requested as a bit: 1 << 0 is PREFER_JIT...
                self.strongly_typed, self.flag_names = True, set_bits
            else:
                self.strongly_typed = "STRONGLY_TYPED" in set_bits
                self.flag_names = set_bits
            self.inputs: list[_Tensor] = []
            self.outputs: list[_Tensor] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        @property
        def num_outputs(self) -> int:
            return len(self.outputs)

        def get_input(self, i: int) -> _Tensor:
            return self.inputs[i]

        def get_output(self, i: int) -> _Tensor:
            return self.outputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            rec("OnnxParser")
            self.network = network
            self.errors: list[_ParserError] = []

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> _ParserError:
            return self.errors[index]

        def parse_from_file(self, model: str) -> bool:
            rec("parse_from_file", model)
            path = model
            if parse_errors:
                self.errors = [_ParserError(m) for m in parse_errors]
                return False
            import onnx

            try:
                graph = onnx.load(path).graph
            except Exception as e:  # anything onnx cannot read
                self.errors = [_ParserError(f"Failed to parse ONNX model: {type(e).__name__}")]
                return False
            inits = {i.name for i in graph.initializer}

            def tensor(vi: Any) -> _Tensor:
                tt = vi.type.tensor_type
                shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
                return _Tensor(vi.name, shape, _ONNX_TO_TRT.get(tt.elem_type, DataType.FLOAT))

            self.network.inputs = [tensor(v) for v in graph.input if v.name not in inits]
            self.network.outputs = [tensor(v) for v in graph.output]
            return True

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def combine(self, input_cache: TimingCache, ignore_mismatch: bool) -> bool:
            return True

        def reset(self) -> bool:
            self.data = b""
            return True

        def serialize(self) -> _HostMemory:
            rec("timing_cache.serialize")
            return _HostMemory(self.data + b"|fake-timing-entries")

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, input: str, min: tuple, opt: tuple, max: tuple) -> None:  # noqa: A002
            rec("profile.set_shape", input, tuple(min), tuple(opt), tuple(max))
            self.shapes[input] = (tuple(min), tuple(opt), tuple(max))

    class Config:
        def __init__(self) -> None:
            object.__setattr__(self, "profiles", [])
            object.__setattr__(self, "cache", None)
            object.__setattr__(self, "flag_set", {present["TF32"]})  # TF32 is on by default

        def __setattr__(self, name: str, value: Any) -> None:
            rec("config." + name, value)
            object.__setattr__(self, name, value)

        def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
            rec("set_memory_pool_limit", pool, pool_size)

        def set_flag(self, flag: int) -> None:
            rec("set_flag", flag)
            self.flag_set.add(int(flag))

        def clear_flag(self, flag: int) -> None:
            rec("clear_flag", flag)
            self.flag_set.discard(int(flag))

        def get_flag(self, flag: int) -> bool:
            return int(flag) in self.flag_set

        def add_optimization_profile(self, profile: Profile) -> int:
            rec("add_optimization_profile", profile)
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, serialized_timing_cache: bytes) -> TimingCache | None:
            data = bytes(serialized_timing_cache)
            rec("create_timing_cache", data)
            return None if data.startswith(CORRUPT_CACHE) else TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            rec("set_timing_cache", cache, ignore_mismatch)
            if cache.data.startswith(OTHER_GPU_CACHE) and not ignore_mismatch:
                return False
            object.__setattr__(self, "cache", cache)
            return True

        def get_timing_cache(self) -> TimingCache | None:
            rec("get_timing_cache")
            return self.cache if cache_out else None

    class Builder:
        def __init__(self, logger: Logger) -> None:
            rec("Builder")

        def create_network(self, flags: int = 0) -> Network:
            rec("create_network", flags)
            return Network(flags)

        def create_builder_config(self) -> Config:
            rec("create_builder_config")
            return Config()

        def create_optimization_profile(self) -> Profile:
            rec("create_optimization_profile")
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> _HostMemory | None:
            rec("build_serialized_network")
            if fail_build:
                return None
            shapes: dict[str, Any] = {}
            for p in config.profiles:
                shapes.update({k: [list(s) for s in v] for k, v in p.shapes.items()})
            for t in network.inputs:
                if any(d < 0 for d in t.shape) and t.name not in shapes:
                    return None  # the real builder refuses dynamic inputs without a profile
            tensors = [(t, "INPUT") for t in network.inputs] + [(t, "OUTPUT") for t in network.outputs]
            spec = {
                "version": version,
                "strongly_typed": network.strongly_typed,
                "network_flags": network.flag_names,
                "tf32": config.get_flag(present["TF32"]),
                "tensors": [
                    {"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name, "mode": m}
                    for t, m in tensors
                ],
                "profiles": shapes,
            }
            data = _HostMemory(engine_bytes_from_spec(spec))
            rec("serialized", data)
            return data

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            rec("Runtime")

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> Engine | None:
            rec("deserialize_cuda_engine", len(serialized_engine))
            data = bytes(serialized_engine)
            if not data.startswith(ENGINE_MAGIC):
                return None
            try:
                spec = json.loads(data[len(ENGINE_MAGIC) :])
            except (json.JSONDecodeError, UnicodeDecodeError):
                return None
            if spec.get("version", version).split(".")[0] != version.split(".")[0]:
                return None
            return Engine(spec)

    class Engine:
        def __init__(self, spec: dict) -> None:
            self.spec = spec
            self.tensors = {t["name"]: t for t in spec["tensors"]}
            self.names = [t["name"] for t in spec["tensors"]]

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        def get_tensor_name(self, index: int) -> str:
            return self.names[index]

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            return TensorIOMode[self.tensors[name]["mode"]]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return tuple(self.tensors[name]["shape"])

        def get_tensor_dtype(self, name: str) -> DataType:
            return DataType[self.tensors[name]["dtype"]]

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
            return [tuple(s) for s in self.spec["profiles"][name]]

        def create_execution_context(self) -> Context:
            rec("create_execution_context")
            return Context(self)

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            rec("set_input_shape", name, tuple(shape))
            prof = self.engine.spec["profiles"].get(name)
            if prof is not None:
                lo, _, hi = prof
                if len(shape) != len(lo) or any(
                    not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)
                ):
                    return False
            self.shapes[name] = tuple(shape)
            return True

        def set_tensor_address(self, name: str, memory: int) -> bool:
            rec("set_tensor_address", name, memory)
            if name not in self.engine.tensors or not memory or int(memory) % 256:
                return False  # the real one refuses null and misaligned addresses (and keeps the old one)
            self.addresses[name] = int(memory)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            if name in self.shapes:
                return self.shapes[name]
            n = next(iter(self.shapes.values()))[0]
            return tuple(n if d < 0 else d for d in self.engine.get_tensor_shape(name))

        def execute_async_v3(self, stream_handle: int) -> bool:
            rec("execute_async_v3", int(stream_handle))
            cu = mod.cudart
            io = self.engine.tensors
            if set(self.addresses) != set(io) or cu is None:
                return False
            (inp,) = [n for n in io if io[n]["mode"] == "INPUT"]
            shape = self.shapes[inp]
            dt = np.dtype(nptype(DataType[io[inp]["dtype"]]))
            x = cu.download(self.addresses[inp], shape, dt).astype(np.float32)
            mean = x.reshape(shape[0], -1).mean(axis=1)
            for name, t in io.items():
                if t["mode"] != "OUTPUT":
                    continue
                oshape = self.get_tensor_shape(name)
                odt = np.dtype(nptype(DataType[t["dtype"]]))
                if oshape == shape:
                    y = x
                else:
                    y = np.broadcast_to(mean.reshape(-1, *([1] * (len(oshape) - 1))), oshape)
                    y = y + 1.0 if name == "scores" else y
                cu.write(self.addresses[name], np.ascontiguousarray(y, dtype=odt).tobytes())
            return True

    mod.Logger, mod.Builder, mod.OnnxParser, mod.Runtime = Logger, Builder, OnnxParser, Runtime
    mod.init_libnvinfer_plugins = init_libnvinfer_plugins
    return mod


def engine_bytes_from_spec(spec: dict) -> bytes:
    return ENGINE_MAGIC + json.dumps(spec).encode()


def landmark_engine_bytes(
    input_size: int = 8,
    num_points: int = 5,
    *,
    batch: tuple[int, int, int] = (1, 2, 4),
    input_dtype: str = "FLOAT",
    output_dtype: str = "FLOAT",
    version: str = "11.0.0",
) -> bytes:
    """A fake engine with the CHS I/O: input (-1,3,S,S), landmarks (-1,n,2), scores (-1,n)."""
    s = input_size
    spec = {
        "version": version,
        "tensors": [
            {"name": "input", "shape": [-1, 3, s, s], "dtype": input_dtype, "mode": "INPUT"},
            {"name": "landmarks", "shape": [-1, num_points, 2], "dtype": output_dtype, "mode": "OUTPUT"},
            {"name": "scores", "shape": [-1, num_points], "dtype": output_dtype, "mode": "OUTPUT"},
        ],
        "profiles": {"input": [[b, 3, s, s] for b in batch]},
    }
    return engine_bytes_from_spec(spec)


# ------------------------------------------------------------------------------------------ fake cudart


class FakeCudart:
    """cuda-python runtime stand-in: device memory is a dict of bytearrays keyed by (increasing) pointers.

    Host pointers are real addresses (numpy ``ctypes.data``); the copy kind says which side is which.
    """

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorMemoryAllocation = 2
        cudaErrorInsufficientDriver = 35

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToHost = 0
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2
        cudaMemcpyDeviceToDevice = 3
        cudaMemcpyDefault = 4

    class cudaStream_t:
        def __init__(self, handle: int) -> None:
            self.handle = handle

        def __int__(self) -> int:
            return self.handle

    def __init__(self, capability: tuple[int, int] = (9, 0), runtime: int = 12090, driver: int = 12090) -> None:
        self.recorder = Recorder()
        self.capability, self.runtime, self.driver = capability, runtime, driver
        self.mem: dict[int, bytearray] = {}
        self._next = 1 << 32
        self._next_stream = 0x5000
        self.streams: set[int] = set()

    # -- helpers for tests
    def _locate(self, ptr: int, count: int) -> tuple[bytearray, int]:
        for base, buf in self.mem.items():
            if base <= ptr and ptr + count <= base + len(buf):
                return buf, ptr - base
        raise KeyError(f"0x{ptr:x}+{count} is not inside a fake device allocation")

    def read(self, ptr: int, count: int) -> bytes:
        buf, off = self._locate(ptr, count)
        return bytes(buf[off : off + count])

    def write(self, ptr: int, data: bytes) -> None:
        buf, off = self._locate(ptr, len(data))
        buf[off : off + len(data)] = data

    def download(self, ptr: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dt = np.dtype(dtype)
        return np.frombuffer(self.read(ptr, math.prod(shape) * dt.itemsize), dt).reshape(shape).copy()

    def upload(self, arr: np.ndarray) -> int:
        a = np.ascontiguousarray(arr)
        _, ptr = self.cudaMalloc(max(1, a.nbytes))
        self.write(ptr, a.tobytes())
        return ptr

    # -- the API surface
    def _driver_ok(self) -> bool:
        return self.driver // 1000 >= self.runtime // 1000

    def cudaDriverGetVersion(self) -> tuple:
        return self.cudaError_t.cudaSuccess, self.driver

    def cudaRuntimeGetVersion(self) -> tuple:
        return self.cudaError_t.cudaSuccess, self.runtime

    def cudaSetDevice(self, device: int) -> tuple:
        self.recorder("cudaSetDevice", device)
        if not self._driver_ok():
            return (self.cudaError_t.cudaErrorInsufficientDriver,)
        return (self.cudaError_t.cudaSuccess,)

    def cudaGetDeviceProperties(self, device: int) -> tuple:
        major, minor = self.capability
        props = types.SimpleNamespace(name=b"Fake GPU 80GB\x00\x00", major=major, minor=minor)
        return self.cudaError_t.cudaSuccess, props

    def cudaMalloc(self, size: int) -> tuple:
        self.recorder("cudaMalloc", size)
        ptr = self._next
        self.mem[ptr] = bytearray(int(size))
        self._next += (int(size) + 255) // 256 * 256 + 256
        return self.cudaError_t.cudaSuccess, ptr

    def cudaFree(self, ptr: int) -> tuple:
        self.recorder("cudaFree", ptr)
        if self.mem.pop(int(ptr), None) is None:
            return (self.cudaError_t.cudaErrorInvalidValue,)
        return (self.cudaError_t.cudaSuccess,)

    def cudaMemcpy(self, dst: Any, src: Any, count: int, kind: int) -> tuple:
        return self._copy(dst, src, count, kind, None)

    def cudaMemcpyAsync(self, dst: Any, src: Any, count: int, kind: int, stream: Any) -> tuple:
        return self._copy(dst, src, count, kind, stream)

    def _copy(self, dst: Any, src: Any, count: int, kind: int, stream: Any) -> tuple:
        self.recorder("memcpy", int(kind), int(count), None if stream is None else int(stream))
        k = self.cudaMemcpyKind
        try:
            if kind == k.cudaMemcpyHostToDevice:
                self.write(int(dst), ctypes.string_at(int(src), count))
            elif kind == k.cudaMemcpyDeviceToHost:
                data = self.read(int(src), count)
                ctypes.memmove(int(dst), data, count)
            elif kind == k.cudaMemcpyDeviceToDevice:
                self.write(int(dst), self.read(int(src), count))
            else:
                return (self.cudaError_t.cudaErrorInvalidValue,)
        except KeyError:
            return (self.cudaError_t.cudaErrorInvalidValue,)
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamCreate(self) -> tuple:
        self._next_stream += 16
        self.streams.add(self._next_stream)
        self.recorder("cudaStreamCreate", self._next_stream)
        return self.cudaError_t.cudaSuccess, self.cudaStream_t(self._next_stream)

    def cudaStreamSynchronize(self, stream: Any) -> tuple:
        self.recorder("cudaStreamSynchronize", int(stream))
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamDestroy(self, stream: Any) -> tuple:
        self.recorder("cudaStreamDestroy", int(stream))
        self.streams.discard(int(stream))
        return (self.cudaError_t.cudaSuccess,)


class FakeCudaArray:
    """An object exposing ``__cuda_array_interface__`` over fake device memory (or any pointer)."""

    def __init__(
        self,
        ptr: int,
        shape: tuple[int, ...],
        typestr: str = "<f4",
        strides: tuple[int, ...] | None = None,
        version: int = 3,
        stream: int | None = None,
    ) -> None:
        self.__cuda_array_interface__ = {
            "version": version,
            "shape": tuple(shape),
            "typestr": typestr,
            "data": (ptr, False),
            "strides": strides,
            "stream": stream,
        }


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


class FakeCudaTensor:
    """A torch-like CUDA tensor over fake device memory: ``__dlpack__(stream=...)`` (recording the stream it
    was asked to order its work before) and torch's ``__cuda_array_interface__`` v2, which names no stream
    and raises for a tensor that requires grad."""

    def __init__(self, ptr: int, shape: tuple[int, ...], *, requires_grad: bool = False) -> None:
        self.ptr, self.shape, self.requires_grad = int(ptr), tuple(shape), requires_grad
        self.dlpack_streams: list[Any] = []
        self._keep: list[Any] = []

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, 0)  # kDLCUDA, device 0

    def __dlpack__(self, stream: Any = None) -> Any:
        if self.requires_grad:
            raise RuntimeError("Can't export tensors that require gradient, use tensor.detach()")
        self.dlpack_streams.append(stream)
        shape = (ctypes.c_int64 * len(self.shape))(*self.shape)
        mt = _DLManagedTensor()
        mt.dl_tensor.data = self.ptr
        mt.dl_tensor.device = _DLDevice(2, 0)
        mt.dl_tensor.ndim = len(self.shape)
        mt.dl_tensor.dtype = _DLDataType(2, 32, 1)
        mt.dl_tensor.shape = shape
        self._keep += [shape, mt]
        return _capsule_new(ctypes.addressof(mt), b"dltensor", None)

    @property
    def __cuda_array_interface__(self) -> dict:
        if self.requires_grad:
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad.")
        return {"version": 2, "shape": self.shape, "typestr": "<f4", "data": (self.ptr, False), "strides": None}

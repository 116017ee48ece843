"""What TensorRT needs once per process: one logger that outlives every TensorRT object, the plugin
library registered with it, the major version that decides the network flags, and what GPU this is
(:func:`gpu_present` asks no CUDA library; :func:`gpu_info` records name and compute capability).

``init_libnvinfer_plugins`` keeps a raw pointer to the logger it is given: a logger owned by a runner or
a builder call would be garbage-collected while the plugin library still logs through it. So the logger
lives here, module-level, for the life of the process. ``tensorrt`` itself is never imported here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from typing import Any

from chs.runtime.backends.cuda_interop import import_cudart
from chs.runtime.errors import ChsError

_lock = threading.Lock()
# id(trt module) -> (module, logger); the module is held too, so its id cannot be reused
_LOGGERS: dict[int, tuple[Any, Any]] = {}
_PLUGINS_READY: set[int] = set()


def shared_logger(trt: Any) -> Any:
    """The process-wide ``trt.Logger(WARNING)`` of this TensorRT module, with its plugins registered once
    (``tensorrt_lean`` has no plugin library: then there is nothing to register)."""
    key = id(trt)
    with _lock:
        entry = _LOGGERS.get(key)
        if entry is None:
            entry = (trt, trt.Logger(trt.Logger.WARNING))
            _LOGGERS[key] = entry
        logger = entry[1]
        init = getattr(trt, "init_libnvinfer_plugins", None)
        if init is not None and key not in _PLUGINS_READY:
            if init(logger, "") is False:  # ROIAlign_TRT lives in the plugin library
                raise ChsError("TensorRT could not register its plugin library (ROIAlign_TRT)")
            _PLUGINS_READY.add(key)
    return logger


def tensorrt_version(trt: Any) -> str:
    return str(getattr(trt, "__version__", "unknown"))


def tensorrt_major(trt: Any) -> int:
    """Major version of a TensorRT module (0 when unreadable)."""
    try:
        return int(tensorrt_version(trt).split(".")[0])
    except ValueError:
        return 0


def nvidia_smi(*args: str) -> list[str]:
    """The output lines of ``nvidia-smi ARGS``; empty without nvidia-smi or when it fails (the one caller
    of nvidia-smi, for the TensorRT probes and the benchmarks' machine record alike)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return r.stdout.strip().splitlines() if r.returncode == 0 else []


def gpu_present() -> tuple[bool, str]:
    """(True, what was found) when this machine shows an NVIDIA GPU, asking no CUDA library."""
    listed = [line for line in nvidia_smi("-L") if "GPU" in line]
    if listed:
        return True, listed[0]
    if os.path.exists("/dev/nvidia0"):
        return True, "/dev/nvidia0"
    return False, "no NVIDIA GPU found (nvidia-smi -L failed and /dev/nvidia0 is missing)"


def gpu_info(cudart: Any | None = None) -> dict:
    """Name and compute capability of device 0: cuda-python first, then nvidia-smi, else "unknown"."""
    cudart = cudart if cudart is not None else import_cudart(required=False)
    if cudart is not None:
        try:
            err, prop = cudart.cudaGetDeviceProperties(0)
            if int(err) == 0:
                name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
                name = name.split("\x00", 1)[0].strip()
                return {"name": name, "compute_capability": f"{prop.major}.{prop.minor}", "source": "cuda-python"}
        except Exception:  # any failure just means "ask someone else"
            pass
    for line in nvidia_smi("--query-gpu=name,compute_cap", "--format=csv,noheader")[:1]:
        name, _, cc = line.rpartition(",")
        return {"name": name.strip(), "compute_capability": cc.strip(), "source": "nvidia-smi"}
    return {"name": "unknown", "compute_capability": "unknown", "source": "unknown"}

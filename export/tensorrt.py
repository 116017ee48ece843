"""ONNX -> TensorRT engine, the modern strongly typed way (TensorRT 10.x and 11.x).

The ONNX file carries the precision (float16 tensors for FP16, Q/DQ pairs for INT8), so the builder
never sets FP16/INT8/BF16 flags or a calibrator: TensorRT 11 removed them. ``RoiAlign`` is mapped to the
built-in ``ROIAlign_TRT`` plugin, hence ``init_libnvinfer_plugins`` before parsing.

Status: written against the documented TensorRT Python API and exercised only against the recorded fake
in ``tests/fake_tensorrt.py``; it has NOT been run with a real TensorRT on a GPU. ``tensorrt`` is never
imported at module import time (creating TensorRT objects without a driver can crash the interpreter at
exit): check :func:`tensorrt_available` first, or build in a child process with
:func:`build_engine_subprocess`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from chs.runtime.artifact import ModelMeta
from chs.runtime.backends.trt import import_cudart
from chs.runtime.contract import io_contract
from chs.runtime.errors import ChsError

SIDECAR_VERSION = 1
_REASON = "TensorRT engine step needs the tensorrt package and an NVIDIA GPU"
_OK_MARKER = "chs-trt-build: ok "


def sidecar_path_for(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def _gpu_present() -> tuple[bool, str]:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
            if r.returncode == 0 and "GPU" in r.stdout:
                return True, r.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    if os.path.exists("/dev/nvidia0"):
        return True, "/dev/nvidia0"
    return False, "no NVIDIA GPU found (nvidia-smi -L failed and /dev/nvidia0 is missing)"


def tensorrt_available() -> tuple[bool, str]:
    """(ok, reason) without importing tensorrt in this process; reason is empty when ok."""
    try:
        spec = importlib.util.find_spec("tensorrt")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return False, f"{_REASON}: tensorrt not installed"
    ok, why = _gpu_present()
    if not ok:
        return False, f"{_REASON}: {why}"
    return True, ""


def gpu_info(cudart: Any | None = None) -> dict:
    """Name and compute capability of device 0: cuda-python first, then nvidia-smi, else "unknown"."""
    cudart = cudart if cudart is not None else import_cudart(required=False)
    if cudart is not None:
        try:
            err, prop = cudart.cudaGetDeviceProperties(0)
            if int(err) == 0:
                name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
                name = name.split("\x00", 1)[0].strip()
                return {
                    "name": name,
                    "compute_capability": f"{prop.major}.{prop.minor}",
                    "source": "cuda-python",
                }
        except Exception:  # any failure just means "ask someone else"
            pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run(
                [smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            if r.returncode == 0 and r.stdout.strip():
                name, _, cc = r.stdout.strip().splitlines()[0].rpartition(",")
                return {"name": name.strip(), "compute_capability": cc.strip(), "source": "nvidia-smi"}
        except (OSError, subprocess.SubprocessError):
            pass
    return {"name": "unknown", "compute_capability": "unknown", "source": "unknown"}


def _dtype_name(trt: Any, dt: Any) -> str:
    try:
        import numpy as np

        return np.dtype(trt.nptype(dt)).name
    except Exception:  # bf16/fp8/int4 have no numpy type
        return str(dt).rsplit(".", 1)[-1].lower()


def _tensor_desc(trt: Any, t: Any) -> dict:
    return {"name": t.name, "shape": [int(d) for d in t.shape], "dtype": _dtype_name(trt, t.dtype)}


def _meta_from_onnx(onnx_path: Path) -> ModelMeta | None:
    try:
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
        return ModelMeta.from_props({p.key: p.value for p in model.metadata_props}, str(onnx_path))
    except Exception:  # metadata is optional here
        return None


def _check_batch(batch: tuple[int, int, int]) -> tuple[int, int, int]:
    try:
        b = tuple(int(v) for v in batch)
    except (TypeError, ValueError):
        raise ChsError(f"batch must be three integers (min, opt, max), got {batch!r}") from None
    if len(b) != 3 or not 1 <= b[0] <= b[1] <= b[2]:
        raise ChsError(f"batch must be (min, opt, max) with 1 <= min <= opt <= max, got {batch!r}")
    return b  # type: ignore[return-value]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    batch: tuple[int, int, int] = (1, 8, 32),
    input_name: str = "input",
    workspace_mb: int = 2048,
    timing_cache: str | Path | None = None,
    trt: Any | None = None,
    meta: ModelMeta | None = None,
    cudart: Any | None = None,
) -> dict:
    """Build a strongly typed engine with one batch profile; write it and its sidecar JSON.

    ``trt`` / ``cudart`` replace the ``tensorrt`` / cuda-python modules (tests inject fakes). ``meta``
    defaults to the CHS metadata inside the ONNX file. Returns the sidecar dict.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise ChsError(f"ONNX file {onnx_path} does not exist")
    b_min, b_opt, b_max = _check_batch(batch)
    if workspace_mb <= 0:
        raise ChsError(f"workspace_mb must be positive, got {workspace_mb}")
    if trt is None:
        ok, why = tensorrt_available()
        if not ok:
            raise ChsError(why)
        import tensorrt as trt  # lazy on purpose
    if meta is None:
        meta = _meta_from_onnx(onnx_path)
    version = str(getattr(trt, "__version__", "unknown"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0

    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # ROIAlign_TRT and the other built-in plugins
    builder = trt.Builder(logger)
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly is not None:
        network = builder.create_network(1 << int(strongly))
    elif major >= 11:
        network = builder.create_network(0)  # strongly typed is the only mode
    else:
        raise ChsError(f"TensorRT {version} has no strongly typed networks: use TensorRT 10.x or newer")

    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ChsError(
            f"TensorRT could not parse {onnx_path}: " + ("; ".join(errors) or "unknown parser error")
        )

    inputs = [_tensor_desc(trt, network.get_input(i)) for i in range(network.num_inputs)]
    outputs = [_tensor_desc(trt, network.get_output(i)) for i in range(network.num_outputs)]
    by_name = {t["name"]: t for t in inputs}
    if input_name not in by_name:
        raise ChsError(f"{onnx_path} has no input '{input_name}' (inputs: {', '.join(by_name) or 'none'})")
    in_shape = by_name[input_name]["shape"]
    if any(d < 0 for d in in_shape[1:]):
        raise ChsError(f"input '{input_name}' of {onnx_path} has dynamic non-batch dims {in_shape}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if in_shape[0] < 0:
        profile = builder.create_optimization_profile()
        rest = tuple(in_shape[1:])
        profile.set_shape(input_name, (b_min, *rest), (b_opt, *rest), (b_max, *rest))
        config.add_optimization_profile(profile)
        prof = {"input": input_name, "min": [b_min, *rest], "opt": [b_opt, *rest], "max": [b_max, *rest]}
    else:
        if (b_min, b_max) != (in_shape[0], in_shape[0]):
            raise ChsError(
                f"{onnx_path} has a fixed batch of {in_shape[0]}; re-export it with a dynamic batch axis "
                f"to build for batch {b_min}..{b_max}"
            )
        prof = {"input": input_name, "min": in_shape, "opt": in_shape, "max": in_shape}

    cache_path = Path(timing_cache) if timing_cache is not None else None
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ChsError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    data = bytes(memoryview(serialized))
    if not data:
        raise ChsError(f"TensorRT produced an empty engine from {onnx_path}")
    _atomic_write(engine_path, data)
    if cache_path is not None:
        _atomic_write(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))

    gpu = gpu_info(cudart)
    engine_info = {
        "file": engine_path.name,
        "tensorrt_version": version,
        "gpu": gpu,
        "profile": prof,
        "strongly_typed": True,
    }
    sidecar = {
        "sidecar_version": SIDECAR_VERSION,
        "engine": engine_path.name,
        "engine_bytes": len(data),
        "engine_sha256": hashlib.sha256(data).hexdigest(),
        "onnx": onnx_path.name,
        "onnx_sha256": _sha256(onnx_path),
        "tensorrt_version": version,
        "strongly_typed": True,
        "gpu": gpu,
        "precision": meta.precision if meta is not None else "unknown",
        "profile": prof,
        "workspace_mb": int(workspace_mb),
        "timing_cache": str(cache_path) if cache_path is not None else None,
        "inputs": inputs,
        "outputs": outputs,
        "meta": meta.to_dict() if meta is not None else None,
        "contract": io_contract(meta, inputs, outputs, engine_info) if meta is not None else None,
    }
    _atomic_write(
        sidecar_path_for(engine_path), (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode()
    )
    return sidecar


def _load_factory(spec: str) -> Any:
    mod, _, attr = spec.partition(":")
    obj = getattr(importlib.import_module(mod), attr or "make_fake_trt")
    return obj() if callable(obj) else obj


def interpret_child(rc: int, stdout: str, stderr: str, sidecar: Path) -> dict:
    """Decide a child build's outcome: its "ok" line and a sidecar on disk win over a crash at exit."""
    if _OK_MARKER in stdout and sidecar.is_file():
        return json.loads(sidecar.read_text())
    tail = "\n".join(ln for ln in stderr.strip().splitlines()[-5:])
    for line in reversed(stderr.strip().splitlines()):
        if line.startswith("error: "):
            raise ChsError(line[len("error: ") :])
    raise ChsError(f"TensorRT build process failed (exit code {rc}): {tail or 'no output'}")


def build_engine_subprocess(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    batch: tuple[int, int, int] = (1, 8, 32),
    input_name: str = "input",
    workspace_mb: int = 2048,
    timing_cache: str | Path | None = None,
    meta: ModelMeta | None = None,
    timeout: float | None = None,
    python: str | None = None,
    trt_factory: str | None = None,
    env: dict[str, str] | None = None,
) -> dict:
    """Run :func:`build_engine` in a child interpreter so a TensorRT crash cannot take this process down.

    ``trt_factory`` ("module:callable") makes the child use a fake TensorRT (tests only).
    """
    engine_path = Path(engine_path)
    cmd = [python or sys.executable, "-m", "chs.export.tensorrt", str(onnx_path), str(engine_path)]
    cmd += ["--batch", *(str(v) for v in _check_batch(batch))]
    cmd += ["--input-name", input_name, "--workspace-mb", str(int(workspace_mb))]
    if timing_cache is not None:
        cmd += ["--timing-cache", str(timing_cache)]
    if trt_factory:
        cmd += ["--trt-factory", trt_factory]
    with tempfile.TemporaryDirectory(prefix="chs-trt-") as tmp:
        if meta is not None:
            meta_file = Path(tmp) / "meta.json"
            meta_file.write_text(meta.to_json())
            cmd += ["--meta", str(meta_file)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise ChsError(f"TensorRT build of {onnx_path} took longer than {timeout} s") from None
    return interpret_child(r.returncode, r.stdout, r.stderr, sidecar_path_for(engine_path))


def main(argv: list[str] | None = None) -> int:
    """``python -m chs.export.tensorrt ONNX ENGINE``: the child side of :func:`build_engine_subprocess`."""
    ap = argparse.ArgumentParser(prog="python -m chs.export.tensorrt", description="Build a TensorRT engine.")
    ap.add_argument("onnx")
    ap.add_argument("engine")
    ap.add_argument("--batch", type=int, nargs=3, default=[1, 8, 32], metavar=("MIN", "OPT", "MAX"))
    ap.add_argument("--input-name", default="input")
    ap.add_argument("--workspace-mb", type=int, default=2048)
    ap.add_argument("--timing-cache", default=None)
    ap.add_argument("--meta", default=None, help="JSON file with the ModelMeta (default: from the ONNX)")
    ap.add_argument("--trt-factory", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        meta = ModelMeta.from_dict(json.loads(Path(args.meta).read_text())) if args.meta else None
        trt = _load_factory(args.trt_factory) if args.trt_factory else None
        build_engine(
            args.onnx,
            args.engine,
            batch=tuple(args.batch),
            input_name=args.input_name,
            workspace_mb=args.workspace_mb,
            timing_cache=args.timing_cache,
            trt=trt,
            meta=meta,
        )
    except ChsError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"{_OK_MARKER}{sidecar_path_for(args.engine)}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        rc = main()
    except SystemExit as e:  # argparse --help / usage errors
        rc = e.code if isinstance(e.code, int) else 2
    except BaseException:  # report, then still skip the teardown below
        import traceback

        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # skip interpreter teardown, where TensorRT objects without a driver can crash

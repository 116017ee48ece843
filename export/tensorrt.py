"""ONNX -> TensorRT engine, the modern strongly typed way (TensorRT 10.x and 11.x).

The ONNX file carries the precision (float16 tensors for FP16, Q/DQ pairs for INT8), so the builder
never sets FP16/INT8/BF16 flags or a calibrator: TensorRT 11 removed them. ``RoiAlign`` is mapped to the
built-in ``ROIAlign_TRT`` plugin, hence ``init_libnvinfer_plugins`` before parsing.

Status: written against the documented TensorRT Python API, checked for names and enum values against the real
``tensorrt_lean`` wheel where it has them, and exercised against the fake in ``tests/fake_tensorrt.py``; it has NOT been
run with a real TensorRT on a GPU. ``tensorrt`` is never imported at module import time (creating TensorRT objects
without a driver can crash the interpreter at exit): check :func:`tensorrt_available` first, or build in a child process
with :func:`build_engine_subprocess`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chs.export.options import BATCH_PROFILE, check_batch_profile
from chs.runtime.artifact import INPUT_NAME, ModelMeta, read_onnx_meta
from chs.runtime.backends.trt_env import gpu_info, gpu_present, shared_logger, tensorrt_major, tensorrt_version
from chs.runtime.backends.trt_sidecar import sha256_bytes, sidecar_path_for, sidecar_record, write_engine_and_sidecar
from chs.runtime.contract import io_contract
from chs.runtime.errors import ChsError
from chs.runtime.files import atomic_output

_REASON = "TensorRT engine step needs the tensorrt package and an NVIDIA GPU"
_OK_MARKER = "chs-trt-build: ok "


def tensorrt_available() -> tuple[bool, str]:
    """(ok, reason) without importing tensorrt in this process; reason is empty when ok."""
    try:
        spec = importlib.util.find_spec("tensorrt")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return False, f"{_REASON}: tensorrt not installed"
    ok, why = gpu_present()
    if not ok:
        return False, f"{_REASON}: {why}"
    return True, ""


def _dtype_name(trt: Any, dt: Any) -> str:
    try:
        import numpy as np

        return np.dtype(trt.nptype(dt)).name
    except Exception:  # bf16/fp8/int4 have no numpy type
        return str(dt).rsplit(".", 1)[-1].lower()


def _tensor_desc(trt: Any, t: Any) -> dict:
    return {"name": t.name, "shape": [int(d) for d in t.shape], "dtype": _dtype_name(trt, t.dtype)}


def _meta_from_onnx(onnx_path: Path) -> ModelMeta:
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # the parser reports unreadable files with TensorRT's own words below
        raise ChsError(f"{onnx_path} is not a readable ONNX file") from None
    return read_onnx_meta(model, f"ONNX model {onnx_path.name}")


@dataclass(frozen=True)
class BuildOptions:
    """How an engine is built; the one home of these defaults (the child's argparse has none)."""

    batch: tuple[int, int, int] = BATCH_PROFILE  # (min, opt, max) of the batch profile
    input_name: str = INPUT_NAME
    workspace_mb: int = 2048
    timing_cache: str | None = None  # a file, read if present and rewritten after the build
    tf32: bool = False  # TensorRT enables TF32 by default: FP32 engines would then miss the FP32 gate

    def checked(self) -> BuildOptions:
        if self.workspace_mb <= 0:
            raise ChsError(f"workspace_mb must be positive, got {self.workspace_mb}")
        cache = None if self.timing_cache is None else str(self.timing_cache)
        return dataclasses.replace(self, batch=check_batch_profile(self.batch), timing_cache=cache)


def _options(options: BuildOptions | None, overrides: dict) -> BuildOptions:
    try:
        return dataclasses.replace(options or BuildOptions(), **overrides).checked()
    except TypeError as e:
        raise ChsError(f"unknown engine build option: {e}") from None


def _create_network(trt: Any, builder: Any) -> Any:
    """A strongly typed network: TensorRT 11 networks always are (its STRONGLY_TYPED = 0 is deprecated and
    ignored, and ``1 << 0`` would set PREFER_JIT_PYTHON_PLUGINS); 10.x needs the flag (value 1)."""
    major, version = tensorrt_major(trt), tensorrt_version(trt)
    if major >= 11:
        return builder.create_network(0)
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if major < 10 or strongly is None:
        raise ChsError(f"TensorRT {version} has no strongly typed networks: use TensorRT 10.x or newer")
    return builder.create_network(1 << int(strongly))


def _load_timing_cache(config: Any, path: Path | None) -> str:
    """Give the config a timing cache; returns how it went. ``create_timing_cache`` returns None for a
    corrupt cache and ``set_timing_cache`` False for another device's or version's: then start empty."""
    if path is None:
        return "none"
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return "loaded" if data else "new"
    if data:
        warnings.warn(f"TensorRT refused the timing cache {path} (corrupt, or from another GPU or TensorRT "
                      "version): building with an empty one", stacklevel=3)
        cache = config.create_timing_cache(b"")
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return "refused, rebuilt"
    raise ChsError("TensorRT could not create an empty timing cache")


def _serialized_timing_cache(config: Any) -> bytes | None:
    cache = config.get_timing_cache()
    return None if cache is None else bytes(memoryview(cache.serialize()))


def build_engine(onnx_path: str | Path, engine_path: str | Path, options: BuildOptions | None = None, *,
                 trt: Any | None = None, meta: ModelMeta | None = None, cudart: Any | None = None,
                 **overrides: Any) -> dict:
    """Build a strongly typed engine with one batch profile; write it and its sidecar (both or neither).

    ``overrides`` replace fields of ``options`` (``batch=(1, 8, 32)`` etc.). ``trt`` / ``cudart`` replace
    the ``tensorrt`` / cuda-python modules (tests inject fakes). ``meta`` defaults to the CHS metadata
    inside the ONNX file. Returns the sidecar dict.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise ChsError(f"ONNX file {onnx_path} does not exist")
    opts = _options(options, overrides)
    b_min, b_opt, b_max = opts.batch
    if trt is None:
        ok, why = tensorrt_available()
        if not ok:
            raise ChsError(why)
        import tensorrt as trt  # lazy on purpose
    if meta is None:
        meta = _meta_from_onnx(onnx_path)

    logger = shared_logger(trt)  # also registers the plugins (ROIAlign_TRT) before parsing
    builder = trt.Builder(logger)
    network = _create_network(trt, builder)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ChsError(f"TensorRT could not parse {onnx_path}: " + ("; ".join(errors) or "unknown parser error"))

    inputs = [_tensor_desc(trt, network.get_input(i)) for i in range(network.num_inputs)]
    outputs = [_tensor_desc(trt, network.get_output(i)) for i in range(network.num_outputs)]
    by_name = {t["name"]: t for t in inputs}
    name = opts.input_name
    if name not in by_name:
        raise ChsError(f"{onnx_path} has no input '{name}' (inputs: {', '.join(by_name) or 'none'})")
    in_shape = by_name[name]["shape"]
    if any(d < 0 for d in in_shape[1:]):
        raise ChsError(f"input '{name}' of {onnx_path} has dynamic non-batch dims {in_shape}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_mb) << 20)
    if not opts.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if in_shape[0] < 0:
        profile = builder.create_optimization_profile()
        rest = tuple(in_shape[1:])
        profile.set_shape(name, (b_min, *rest), (b_opt, *rest), (b_max, *rest))
        config.add_optimization_profile(profile)
        prof = {"input": name, "min": [b_min, *rest], "opt": [b_opt, *rest], "max": [b_max, *rest]}
    else:
        if (b_min, b_max) != (in_shape[0], in_shape[0]):
            raise ChsError(f"{onnx_path} has a fixed batch of {in_shape[0]}; re-export it with a dynamic batch axis "
                           f"to build for batch {b_min}..{b_max}")
        prof = {"input": name, "min": in_shape, "opt": in_shape, "max": in_shape}
    cache_path = Path(opts.timing_cache) if opts.timing_cache is not None else None
    cache_status = _load_timing_cache(config, cache_path)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ChsError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    data = bytes(memoryview(serialized))
    if not data:
        raise ChsError(f"TensorRT produced an empty engine from {onnx_path}")
    cache_bytes = _serialized_timing_cache(config) if cache_path is not None else None
    if cache_path is not None and cache_bytes is None:
        cache_status += ", not saved (TensorRT returned no timing cache)"

    engine = {"file": engine_path.name, "bytes": len(data), "sha256": sha256_bytes(data),
              "tensorrt_version": tensorrt_version(trt), "gpu": gpu_info(cudart), "profile": prof,
              "strongly_typed": True, "tf32": bool(config.get_flag(trt.BuilderFlag.TF32))}
    record = sidecar_record(
        io_contract(meta, inputs, outputs, engine),
        onnx={"file": onnx_path.name, "sha256": sha256_bytes(onnx_path.read_bytes())},
        build={"workspace_mb": int(opts.workspace_mb), "timing_cache": opts.timing_cache,
               "timing_cache_status": cache_status},
    )
    write_engine_and_sidecar(engine_path, data, record)
    if cache_path is not None and cache_bytes is not None:
        try:
            with atomic_output(cache_path) as tmp:
                tmp.write_bytes(cache_bytes)
        except OSError as e:  # the engine is fine; only the next build is slower
            warnings.warn(f"could not save the timing cache {cache_path}: {e}", stacklevel=2)
    return record


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


def build_engine_subprocess(onnx_path: str | Path, engine_path: str | Path, options: BuildOptions | None = None, *,
                            meta: ModelMeta | None = None, timeout: float | None = None, python: str | None = None,
                            trt_factory: str | None = None, env: dict[str, str] | None = None,
                            **overrides: Any) -> dict:
    """Run :func:`build_engine` in a child interpreter so a TensorRT crash cannot take this process down.

    ``trt_factory`` ("module:callable") makes the child use a fake TensorRT (tests only).
    """
    engine_path = Path(engine_path)
    opts = _options(options, overrides)
    cmd = [python or sys.executable, "-m", "chs.export.tensorrt", str(onnx_path), str(engine_path)]
    cmd += ["--batch", *(str(v) for v in opts.batch)]
    cmd += ["--input-name", opts.input_name, "--workspace-mb", str(opts.workspace_mb)]
    if opts.timing_cache is not None:
        cmd += ["--timing-cache", opts.timing_cache]
    if opts.tf32:
        cmd += ["--tf32"]
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
    """``python -m chs.export.tensorrt ONNX ENGINE``: the child side of :func:`build_engine_subprocess`.

    Options the caller leaves out keep :class:`BuildOptions`' defaults (argparse holds none of its own).
    """
    ap = argparse.ArgumentParser(prog="python -m chs.export.tensorrt", description="Build a TensorRT engine.",
                                 argument_default=argparse.SUPPRESS)
    ap.add_argument("onnx")
    ap.add_argument("engine")
    ap.add_argument("--batch", type=int, nargs=3, metavar=("MIN", "OPT", "MAX"))
    ap.add_argument("--input-name", dest="input_name")
    ap.add_argument("--workspace-mb", dest="workspace_mb", type=int)
    ap.add_argument("--timing-cache", dest="timing_cache")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 in float32 layers (off by default)")
    ap.add_argument("--meta", help="JSON file with the ModelMeta (default: from the ONNX)")
    ap.add_argument("--trt-factory", dest="trt_factory", help=argparse.SUPPRESS)
    args = vars(ap.parse_args(argv))
    onnx_path, engine_path = args.pop("onnx"), args.pop("engine")
    meta_file, factory = args.pop("meta", None), args.pop("trt_factory", None)
    if "batch" in args:
        args["batch"] = tuple(args["batch"])
    try:
        meta = ModelMeta.from_dict(json.loads(Path(meta_file).read_text())) if meta_file else None
        trt = _load_factory(factory) if factory else None
        build_engine(onnx_path, engine_path, trt=trt, meta=meta, **args)
    except ChsError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"{_OK_MARKER}{sidecar_path_for(engine_path)}", flush=True)
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

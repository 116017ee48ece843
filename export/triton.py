"""Triton Inference Server model repository for a CHS model (ONNX Runtime, python or TensorRT backend).

Triton's dynamic batcher groups single-face requests into the batches the model was built for; the config must agree
with the artifact (input name and size, batch limit within the engine profile), and the crop/normalisation rule must
travel with it: the I/O contract is copied next to ``config.pbtxt`` and the model metadata rides in the config's
``chs.meta`` parameter, so a remote client (``triton://``) reads it from the server. The python backend serves the
exported ONNX file with the project's own ONNX Runtime runner (``chs.runtime.triton_model``): it is what the
``nvidia-pytriton`` server binary can run, and what the tests start on loopback.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from chs.runtime.artifact import INPUT_NAME, META_KEY, OUTPUT_LANDMARKS, OUTPUT_SCORES, ModelMeta
from chs.runtime.backends.trt_sidecar import EngineSidecar, read_sidecar, sidecar_path_for
from chs.runtime.contract import CONTRACT_FILE, io_contract, write_contract
from chs.runtime.errors import ChsError
from chs.runtime.options import whole_number

_TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32", "int64": "TYPE_INT64"}
_KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU")
BACKENDS = ("onnxruntime", "python", "tensorrt")
# model.py of a python-backend repository: the server's Python may start with another environment's
# site-packages (the stub's own sys.path), so the serving environment's paths, handed over by chs-serve in
# CHS_TRITON_SYS_PATH, go first; then the project's model class does the work.
PYTHON_MODEL_PY = '''"""CHS crop-level landmark model for Triton's python backend (written by chs-export)."""
import json as _json
import os as _os
import sys as _sys

for _p in reversed(_json.loads(_os.environ.get("CHS_TRITON_SYS_PATH", "[]"))):
    if _p in _sys.path:
        _sys.path.remove(_p)
    _sys.path.insert(0, _p)

from chs.runtime.triton_model import TritonPythonModel  # noqa: E402,F401
'''


def _triton_type(dtype: str) -> str:
    if dtype not in _TRITON_TYPES:
        raise ChsError(f"no Triton data type for {dtype!r}")
    return _TRITON_TYPES[dtype]


def _engine_sidecar(engine_path: Path) -> EngineSidecar | None:
    """The engine's sidecar, read by the one sidecar reader; None when the engine has none."""
    return read_sidecar(engine_path) if sidecar_path_for(engine_path).is_file() else None


def _pbtxt_string(text: str) -> str:
    """A protobuf text-format string literal (backslashes and quotes escaped; JSON has no raw newlines)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensor_block(kind: str, tensors: list[tuple[str, str, list[int]]]) -> list[str]:
    lines = [f"{kind} ["]
    for i, (name, dtype, dims) in enumerate(tensors):
        lines += [
            "  {",
            f'    name: "{name}"',
            f"    data_type: {dtype}",
            f"    dims: [ {', '.join(str(d) for d in dims)} ]",
            "  }" + ("," if i < len(tensors) - 1 else ""),
        ]
    return lines + ["]"]


def check_model_name(model_name: str) -> None:
    """A Triton model name is one folder name: no separators, no '..' (``--triton ../../escape``)."""
    if not model_name or not re.fullmatch(r"[A-Za-z0-9_.\-]+", model_name) or model_name in (".", ".."):
        raise ChsError(f"Triton model name {model_name!r} must be letters, digits, '_', '-' or '.'")


@dataclass(frozen=True)
class TritonModelSettings:
    """How Triton batches and places the model. The input stays TYPE_FP32 (this project's fp16 ONNX still
    takes float32) unless ``input_dtype`` says otherwise. ``instance_kind`` None: KIND_GPU for an engine,
    KIND_CPU for the python backend and KIND_AUTO (GPU if present) for ONNX Runtime."""

    max_batch: int = 32
    preferred_batch: tuple[int, ...] = (8, 16)  # kept sorted, without repeats
    max_queue_delay_us: int = 2000
    input_dtype: str = "float32"
    instance_count: int = 1
    instance_kind: str | None = None

    def __post_init__(self) -> None:
        whole_number(self.max_batch, "max_batch", 1)
        pref = tuple(sorted({int(b) for b in self.preferred_batch}))
        if any(b < 1 or b > self.max_batch for b in pref):
            raise ChsError(f"preferred batch sizes {list(self.preferred_batch)} must lie in 1..{self.max_batch}")
        object.__setattr__(self, "preferred_batch", pref)
        whole_number(self.max_queue_delay_us, "max_queue_delay_us", 0)
        whole_number(self.instance_count, "instance_count", 1)
        if self.instance_kind is not None and self.instance_kind not in _KINDS:
            raise ChsError(f"instance_kind must be one of {', '.join(_KINDS)}, got {self.instance_kind!r}")

    @classmethod
    def up_to(cls, max_batch: int) -> TritonModelSettings:
        """The defaults for a model served up to ``max_batch`` faces (chs-export's ``--batch`` MAX): the default
        preferred batch sizes that fit (``--batch 1:2:4`` was refused for preferred sizes [8, 16] nobody gave)."""
        return cls(max_batch=max_batch, preferred_batch=tuple(b for b in cls.preferred_batch if b <= max_batch))


def write_triton_repository(out_dir: str | Path, model_name: str, *, onnx_path: str | Path | None = None,
                            engine_path: str | Path | None = None, meta: ModelMeta,
                            settings: TritonModelSettings = TritonModelSettings(), backend: str | None = None) -> Path:
    """Write ``out_dir/model_name/{config.pbtxt, chs_contract.json, 1/model.onnx|model.plan}``.

    Exactly one of ``onnx_path`` / ``engine_path``. ``backend``: ``onnxruntime`` (the default for ONNX),
    ``python`` (ONNX served by ``chs.runtime.triton_model``; adds ``1/model.py``) or ``tensorrt`` (needs
    ``engine_path``). For an engine, its sidecar's dtypes win over ``settings.input_dtype`` and
    ``settings.max_batch`` must fit the engine's profile. Returns the model directory.
    """
    if (onnx_path is None) == (engine_path is None):
        raise ChsError("give exactly one of onnx_path or engine_path for the Triton model")
    check_model_name(model_name)
    backend = backend or ("tensorrt" if engine_path is not None else "onnxruntime")
    if backend not in BACKENDS:
        raise ChsError(f"Triton backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if (backend == "tensorrt") != (engine_path is not None):
        raise ChsError("the tensorrt Triton backend serves a TensorRT engine; onnxruntime and python serve ONNX"
                       f" (got backend {backend!r} with {'an engine' if engine_path is not None else 'an ONNX file'})")

    src = Path(onnx_path if onnx_path is not None else engine_path)  # type: ignore[arg-type]
    if not src.is_file():
        raise ChsError(f"model file {src} does not exist")
    s, n = int(meta.input_size), int(meta.num_points)
    in_dtype, out_dtype, kind, max_batch = settings.input_dtype, "float32", settings.instance_kind, settings.max_batch
    contract = None
    if engine_path is not None:
        platform, target, kind = "tensorrt_plan", "model.plan", kind or "KIND_GPU"
        sidecar = _engine_sidecar(src)
        if sidecar is not None:
            dtypes = {t["name"]: t.get("dtype", "float32") for t in sidecar.inputs + sidecar.outputs}
            in_dtype = dtypes.get(INPUT_NAME, in_dtype)
            out_dtype = dtypes.get(OUTPUT_LANDMARKS, out_dtype)
            prof_max = sidecar.profile.get("max")
            if prof_max and max_batch > int(prof_max[0]):
                raise ChsError(f"max_batch {max_batch} exceeds the engine's profile maximum {prof_max[0]}: "
                               "lower it or rebuild the engine")
            contract = sidecar.contract
    elif backend == "python":
        platform, target, kind = "python", "model.onnx", kind or "KIND_CPU"
    else:
        platform, target, kind = "onnxruntime_onnx", "model.onnx", kind or "KIND_AUTO"

    inputs = [(INPUT_NAME, _triton_type(in_dtype), [3, s, s])]
    outputs = [(OUTPUT_LANDMARKS, _triton_type(out_dtype), [n, 2]), (OUTPUT_SCORES, _triton_type(out_dtype), [n])]
    engine_line = 'backend: "python"' if backend == "python" else f'platform: "{platform}"'
    lines = [f'name: "{model_name}"', engine_line, f"max_batch_size: {int(max_batch)}"]
    lines += _tensor_block("input", inputs) + _tensor_block("output", outputs)
    lines += ["dynamic_batching {"]
    if settings.preferred_batch:
        lines += [f"  preferred_batch_size: [ {', '.join(str(b) for b in settings.preferred_batch)} ]"]
    lines += [f"  max_queue_delay_microseconds: {int(settings.max_queue_delay_us)}", "}"]
    lines += ["instance_group [", "  {", f"    count: {int(settings.instance_count)}", f"    kind: {kind}", "  }", "]"]
    lines += ["parameters {", f'  key: "{META_KEY}"', f"  value: {{ string_value: {_pbtxt_string(meta.to_json())} }}",
              "}"]

    if contract is None:
        contract = io_contract(
            meta,
            [{"name": t[0], "shape": [-1, *t[2]], "dtype": in_dtype} for t in inputs],
            [{"name": t[0], "shape": [-1, *t[2]], "dtype": out_dtype} for t in outputs],
            {"server": "triton", "platform": platform, "max_batch_size": int(max_batch)},
        )

    model_dir = Path(out_dir) / model_name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    for stale in ("model.onnx", "model.plan", "model.py"):
        if stale != target and (model_dir / "1" / stale).exists():
            (model_dir / "1" / stale).unlink()
    shutil.copyfile(src, model_dir / "1" / target)
    if backend == "python":
        (model_dir / "1" / "model.py").write_text(PYTHON_MODEL_PY)
    (model_dir / "config.pbtxt").write_text("\n".join(lines) + "\n")
    write_contract(model_dir / CONTRACT_FILE, contract)
    return model_dir

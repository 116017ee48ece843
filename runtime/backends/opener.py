"""The one model opener: a model name or file -> a runner, for the CLI, the runtime and the benchmarks.

Dispatch is by file type: ``.onnx`` -> ONNX Runtime, ``.engine``/``.plan`` -> TensorRT, a checkpoint folder
(or its ``config.json``) -> PyTorch, ``triton://HOST:PORT/NAME`` -> a Triton server. ``"default"`` is the
bundled model folder, which holds both a checkpoint and its ONNX export: callers that can serve checkpoints
get the checkpoint (so ``ccr`` can prune it), the torch-free runtime gets the ONNX. Serving a checkpoint
needs torch, so this torch-free module takes the checkpoint opener as an argument
(``chs.model.runner.open_checkpoint``) instead of importing it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from chs.runtime.assets import DEFAULT_MODEL, resolve_model_path
from chs.runtime.backends.base import Runner
from chs.runtime.errors import ChsError

BACKENDS = ("auto", "torch", "ort", "onnxruntime", "tensorrt", "trt")
CheckpointOpener = Callable[[Path, "int | None", str], Runner]


def is_checkpoint(path: Path) -> bool:
    """A training checkpoint: a folder holding ``config.json``, or that file itself."""
    return (path / "config.json").is_file() or path.name == "config.json"


def open_model(model: str | os.PathLike, backend: str = "auto", providers: str = "auto", *, ccr: int | None = None,
               device: str = "cpu", threads: int = 0, sessions: int = 1, executor: str = "sequential",
               checkpoint: CheckpointOpener | None = None) -> Runner:
    """A runner for ``model`` ('default', a checkpoint folder, an .onnx or an .engine/.plan file).

    ``backend``: auto (by file type), torch, ort or tensorrt. ``ccr`` prunes a checkpoint to its first
    stages; ``device`` is the torch device; ``providers``/``threads``/``sessions``/``executor`` configure ONNX
    Runtime (:class:`~chs.runtime.backends.ort.OrtRunner`).
    ``triton://HOST:PORT/NAME`` (or ``triton+grpc://``) is a model served by Triton: crops go there."""
    from chs.runtime.backends.triton import TritonRunner, is_triton_url

    if is_triton_url(model):
        if backend != "auto" or ccr is not None:
            raise ChsError("a triton:// model is served as exported: no --backend, no --ccr")
        return TritonRunner(str(model))
    if backend not in BACKENDS:
        raise ChsError(f"unknown backend '{backend}' (auto, torch, ort, tensorrt)")
    if str(model) == "":
        raise ChsError("the model path is empty ('')")  # Path('') would be the current folder
    if str(model) == "default" and (checkpoint is None or backend not in ("auto", "torch")):
        if not DEFAULT_MODEL.is_file():
            raise ChsError(f"the bundled default model is not installed ({DEFAULT_MODEL}); pass a model file")
        model = DEFAULT_MODEL
    path = resolve_model_path(model)
    if not path.exists():
        raise ChsError(f"model not found: {path}")
    suffix = path.suffix.lower()
    if path.is_dir() and not (path / "config.json").is_file():
        what = "a folder, not a model file" if suffix in (".onnx", ".engine", ".plan") else "a folder without a model"
        raise ChsError(f"model {path} is {what} (expected an .onnx, .engine or .plan file, or a checkpoint folder "
                       "with config.json)")
    if is_checkpoint(path):
        if checkpoint is None:
            raise ChsError(f"{path} is a training checkpoint: export it with chs-export (the runtime serves .onnx "
                           "and .engine files), or wrap chs.model.runner.open_runner(...) in LandmarkRuntime")
        if backend not in ("auto", "torch"):
            raise ChsError(f"backend '{backend}' cannot run a checkpoint folder (export it with chs-export)")
        return checkpoint(path, ccr, device)
    if ccr is not None:
        raise ChsError("--ccr applies to checkpoints; an exported .onnx has its CCR count fixed at export")
    if suffix == ".onnx" and backend in ("auto", "ort", "onnxruntime"):
        from chs.runtime.backends.ort import OrtRunner

        return OrtRunner(path, providers=providers, threads=threads, sessions=sessions, executor=executor)
    if suffix in (".engine", ".plan") and backend in ("auto", "tensorrt", "trt"):
        from chs.runtime.backends.trt import TensorRTRunner

        try:
            return TensorRTRunner(path)
        except ImportError:  # the sidecar and file checks passed; the tensorrt package itself is missing
            raise ChsError("TensorRT is not installed: pip install tensorrt (NVIDIA GPUs only), "
                           "or serve the .onnx model") from None
    if suffix in (".onnx", ".engine", ".plan"):
        raise ChsError(f"backend '{backend}' cannot run a {suffix} file")
    raise ChsError(f"unknown model file '{path.name}' (expected 'default', a checkpoint folder, an .onnx, "
                   ".engine or .plan file)")

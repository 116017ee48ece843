"""Open any model artifact as a runner: a checkpoint folder (PyTorch), an .onnx file (ONNX Runtime),
an .engine file (TensorRT), or 'default' (the bundled model). Sits above runtime and model, so the
runtime itself never imports torch."""

from __future__ import annotations

import os
from pathlib import Path

from chs.runtime.errors import ChsError


def open_runner(model: str | os.PathLike, ccr: int | None = None, backend: str = "auto", device: str = "cpu"):
    """``backend``: auto (by file type), torch, ort."""
    if str(model) == "default" and backend in ("auto", "torch"):
        from chs.model.checkpoint import default_model_dir

        model = default_model_dir()
    path = Path(model)
    if not path.exists():
        raise ChsError(f"model not found: {path}")
    if path.is_dir() or path.name == "config.json":
        from chs.model.checkpoint import load_checkpoint
        from chs.model.runner import TorchRunner

        return TorchRunner(load_checkpoint(path, ccr=ccr), device)
    if path.suffix == ".onnx":
        if ccr is not None:
            raise ChsError("--ccr applies to checkpoints; an exported .onnx has its CCR count fixed at export")
        from chs.runtime.backends.ort import OrtRunner

        return OrtRunner(path)
    if path.suffix in (".engine", ".plan"):
        from chs.runtime.backends.trt import TensorRTRunner

        return TensorRTRunner(path)
    raise ChsError(f"unknown model file '{path.name}' (expected a checkpoint folder, .onnx or .engine)")

"""ONNX Runtime runner: CPU, CUDA or TensorRT execution providers, chosen by what is installed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from chs.runtime.artifact import INPUT_NAME, OUTPUT_LANDMARKS, OUTPUT_SCORES, ModelMeta
from chs.runtime.errors import ChsError

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def pick_providers(requested: str = "auto") -> list[str]:
    """'auto' = the best installed provider first; or 'cpu', 'cuda', 'tensorrt'."""
    available = ort.get_available_providers()
    if requested == "auto":
        return [p for p in PROVIDER_ORDER if p in available] or ["CPUExecutionProvider"]
    name = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
            "tensorrt": "TensorrtExecutionProvider"}.get(requested)
    if name is None:
        raise ChsError(f"unknown ONNX Runtime provider '{requested}' (auto, cpu, cuda, tensorrt)")
    if name not in available:
        raise ChsError(f"ONNX Runtime provider {name} is not installed (available: {', '.join(available)})")
    return [name, "CPUExecutionProvider"] if name != "CPUExecutionProvider" else [name]


class OrtRunner:
    """Runs an exported CHS model; InferenceSession.run is thread-safe, so one runner serves many threads."""

    def __init__(self, path: str | os.PathLike, providers: str = "auto", threads: int = 0):
        p = Path(path)
        if not p.is_file():
            raise ChsError(f"model not found: {p}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(p), opts, providers=pick_providers(providers))
        except ChsError:
            raise
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ChsError(f"cannot load ONNX model {p}: {first[:200]}") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta = ModelMeta.from_props(props, source=f"ONNX model {p.name}")
        names = {o.name for o in self.session.get_outputs()}
        if {OUTPUT_LANDMARKS, OUTPUT_SCORES} - names or INPUT_NAME not in {i.name for i in self.session.get_inputs()}:
            raise ChsError(f"ONNX model {p.name} lacks the '{INPUT_NAME}' -> '{OUTPUT_LANDMARKS}', "
                           f"'{OUTPUT_SCORES}' interface")
        self.path = p
        self.name = "ort-" + self.session.get_providers()[0].replace("ExecutionProvider", "").lower()

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(batch)
        s = self.meta.input_size
        if x.dtype != np.float32:
            raise ChsError(f"input batch must be float32, got {x.dtype}")
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ChsError(f"input batch must have shape (N, 3, {s}, {s}), got {tuple(x.shape)}")
        if not np.isfinite(x).all():
            raise ChsError("input batch contains NaN or infinity")
        lm, sc = self.session.run([OUTPUT_LANDMARKS, OUTPUT_SCORES], {INPUT_NAME: np.ascontiguousarray(x)})
        return {"landmarks": lm.astype(np.float32), "scores": sc.astype(np.float32)}

"""PyTorch reference runner with the same interface as the ONNX Runtime and TensorRT runners."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import torch

from chs import __version__
from chs.model.chs import CHSNet
from chs.runtime.artifact import ModelMeta
from chs.runtime.backends.base import Runner
from chs.runtime.backends.opener import open_model
from chs.runtime.geometry import heatmap_to_crop


def model_meta(model: CHSNet, precision: str = "fp32") -> ModelMeta:
    cfg = model.cfg
    return ModelMeta(
        scheme=cfg.scheme, num_points=cfg.num_points, input_size=cfg.input_size,
        heatmap_stride=cfg.heatmap_stride, ccr=cfg.ccr_stages, precision=precision, preset=cfg.name,
        crop_rule=cfg.crop_rule, normalization=cfg.normalization,
        versions={"chs": __version__, "torch": torch.__version__},
    )


class TorchRunner:
    """Runs a CHSNet on numpy batches; also returns every cascade stage (``stages``: (K+1, N, n, 2))."""

    def __init__(self, model: CHSNet, device: str = "cpu"):
        self.model = model.eval().to(device)
        self.device = device
        self.meta = model_meta(model)
        self.name = f"torch-{device}"
        self._lock = threading.Lock()

    @torch.inference_mode()
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        with self._lock:
            out = self.model(x)
        stride = self.meta.heatmap_stride
        stages = np.stack([heatmap_to_crop(s.float().cpu().numpy(), stride) for s in out["landmarks"]])
        return {"landmarks": stages[-1].astype(np.float32), "scores": out["scores"].float().cpu().numpy(),
                "stages": stages.astype(np.float32)}


def open_checkpoint(path: Path, ccr: int | None = None, device: str = "cpu") -> TorchRunner:
    """A checkpoint folder as a runner (the checkpoint opener :func:`open_model` is given by this layer)."""
    from chs.model.checkpoint import load_checkpoint

    return TorchRunner(load_checkpoint(path, ccr=ccr), device)


def open_runner(model: str | os.PathLike, ccr: int | None = None, backend: str = "auto", device: str = "cpu",
                **kw) -> Runner:
    """:func:`chs.runtime.backends.opener.open_model` able to serve checkpoints ('default' = the checkpoint)."""
    return open_model(model, backend, ccr=ccr, device=device, checkpoint=open_checkpoint, **kw)

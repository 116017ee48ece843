"""The PyTorch runner (reference and benchmark backend) with the same interface as ONNX Runtime and TensorRT."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import numpy as np
import torch

from chs import __version__
from chs.model.chs import CHSNet
from chs.runtime.artifact import ModelMeta
from chs.runtime.backends.base import Runner, RunnerBase
from chs.runtime.backends.opener import open_model
from chs.runtime.errors import ChsError


def model_meta(model: CHSNet, precision: str = "fp32") -> ModelMeta:
    cfg = model.cfg
    return ModelMeta(scheme=cfg.scheme, num_points=cfg.num_points, input_size=cfg.input_size,
                     heatmap_stride=cfg.heatmap_stride, ccr=cfg.ccr_stages, precision=precision, preset=cfg.name,
                     crop_rule=cfg.crop_rule, normalization=cfg.normalization,
                     versions={"chs": __version__, "torch": torch.__version__})


AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchRunner(RunnerBase):
    """Runs a CHSNet on numpy batches: CPU or CUDA, eager or replayed from a CUDA graph, FP32 or FP16/BF16
    autocast. Host batch in, host arrays out (copies included, as for every runner); also returns every
    cascade stage (``stages``: (K+1, N, n, 2) crop pixels). The CUDA paths have not run on the CPU-only CI."""

    def __init__(self, model: CHSNet, device: str = "cpu", precision: str = "fp32", graphs: bool = False):
        if precision not in AUTOCAST:
            raise ChsError(f"unknown torch precision '{precision}' ({', '.join(AUTOCAST)})")
        self.kind = torch.device(device).type
        if graphs and self.kind != "cuda":
            raise ChsError(f"CUDA graphs need a CUDA device, got '{device}'")
        self.model = model.eval().to(device)
        self.device, self.graphs, self.dtype = device, graphs, AUTOCAST[precision]
        self.codec = model.cfg.codec
        self.meta = model_meta(model, precision)
        self.name = f"torch-{device}" + ("-graph" if graphs else "")
        self._lock = threading.Lock()
        self._captured: dict[tuple, tuple] = {}

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(stages (K+1, N, n, 2) heatmap cells, scores (N, n)), float32."""
        cast = torch.autocast(self.kind, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()
        with cast:
            out = self.model(x)
        return torch.stack([s.float() for s in out["landmarks"]]), out["scores"].float()

    def _graph(self, shape: tuple) -> tuple:
        """A CUDA graph of the forward for one input shape, captured on first use (after a warm-up)."""
        if shape not in self._captured:
            x = torch.zeros(shape, device=self.device)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._forward(x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outs = self._forward(x)
            self._captured[shape] = (graph, x, outs)
        return self._captured[shape]

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(batch)
        with self._lock, torch.no_grad() if self.graphs else torch.inference_mode():
            if self.graphs:
                graph, static_x, (stages, scores) = self._graph(tuple(x.shape))
                static_x.copy_(x)
                graph.replay()
            else:
                stages, scores = self._forward(x.to(self.device))
            stages, scores = stages.cpu().numpy(), scores.cpu().numpy()
        stages = self.codec.to_crop(stages).astype(np.float32)
        return {"landmarks": stages[-1], "scores": scores.astype(np.float32), "stages": stages}

    def synchronize(self) -> None:
        if self.kind == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self._captured.clear()


def open_checkpoint(path: Path, ccr: int | None = None, device: str = "cpu", precision: str = "fp32",
                    graphs: bool = False) -> TorchRunner:
    """A checkpoint folder as a runner (the checkpoint opener :func:`open_model` is given by this layer)."""
    from chs.model.checkpoint import load_checkpoint

    return TorchRunner(load_checkpoint(path, ccr=ccr), device, precision, graphs)


def open_runner(model: str | os.PathLike, ccr: int | None = None, backend: str = "auto", device: str = "cpu",
                **kw) -> Runner:
    """:func:`chs.runtime.backends.opener.open_model` able to serve checkpoints ('default' = the checkpoint)."""
    return open_model(model, backend, ccr=ccr, device=device, checkpoint=open_checkpoint, **kw)

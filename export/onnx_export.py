"""PyTorch -> ONNX: a wrapper with the deployment I/O, the dynamo exporter, metadata, checker, onnxsim."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from chs.model.chs import CHSNet
from chs.model.runner import model_meta
from chs.runtime.artifact import INPUT_NAME, OUTPUT_LANDMARKS, OUTPUT_SCORES, ModelMeta, write_onnx_meta
from chs.runtime.errors import ChsError


class DeployWrapper(nn.Module):
    """Normalised crop -> (landmarks in crop pixels, per-landmark scores): what every backend serves."""

    def __init__(self, model: CHSNet):
        super().__init__()
        self.model = model
        self.codec = model.cfg.codec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(x)
        return self.codec.to_crop(out["landmarks"][-1]), out["scores"]


def export_onnx(model: CHSNet, path: str | Path, opset: int = 18, meta: ModelMeta | None = None) -> onnx.ModelProto:
    """Export with a dynamic batch axis and RoiAlign as the standard op; write metadata_props."""
    if not 16 <= opset <= 20:
        raise ChsError(f"--opset {opset} is not supported: RoiAlign needs opset 16-20 (ONNX Runtime CPU has no 22)")
    model = model.eval()
    wrapper = DeployWrapper(model).eval()
    size = model.cfg.input_size
    x = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" is expected
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (x,), dynamic_shapes={"x": {0: batch}}, input_names=[INPUT_NAME],
            output_names=[OUTPUT_LANDMARKS, OUTPUT_SCORES], opset_version=opset, dynamo=True,
            external_data=False, optimize=True, verbose=False,
        )
    proto = program.model_proto
    meta = meta or model_meta(model)
    write_onnx_meta(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return proto


def count_ops(proto: onnx.ModelProto, op_type: str) -> int:
    return sum(1 for n in proto.graph.node if n.op_type == op_type)


def simplify(proto: onnx.ModelProto, check_input: np.ndarray) -> onnx.ModelProto:
    """onnxsim with a real input; the caller compares outputs before and after (parity gate)."""
    import onnxsim

    size = check_input.shape[-1]
    simplified, ok = onnxsim.simplify(
        proto, overwrite_input_shapes=None, test_input_shapes={INPUT_NAME: [1, 3, size, size]},
        check_n=0,
    )
    if not ok:
        raise ChsError("onnxsim could not validate the simplified model")
    return simplified  # FP16/INT8 placement reads parameter names (chs.model.sensitive), not node metadata

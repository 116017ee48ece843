"""INT8 ONNX with explicit QuantizeLinear/DequantizeLinear pairs, written from cached calibration ranges.

TensorRT 11 has no implicit INT8 calibration: the ONNX carries the precision. Two flavours from one set
of ranges: ``s8s8`` (symmetric int8 activations, zero points 0, float bias: what TensorRT accepts) and
``u8s8`` (uint8 activations, what ONNX Runtime CPU turns into fast QLinearConv). Weights are per-channel
symmetric int8 in both. Nodes in ``exclude`` (the heatmap head, decode, RoiAlign, CCR regression head)
stay float and read float tensors: a shared Q/DQ pair in front of a Conv is not allowed to leak into them.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, QuantType
from onnxruntime.quantization.calibrate import TensorData, TensorsData
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
from onnxruntime.quantization.shape_inference import quant_pre_process

from chs.runtime.artifact import ModelMeta
from chs.runtime.errors import ChsError

log = logging.getLogger(__name__)

FLAVOURS = {"s8s8": QuantType.QInt8, "u8s8": QuantType.QUInt8}  # activation type; weights are always QInt8
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


def _preprocessed(fp32_path: Path, tmp: Path) -> onnx.ModelProto:
    """ORT's pre-processing limited to ONNX shape inference: no graph optimisation, so node and tensor
    names still match the calibration ranges and the exclude set; symbolic shapes fail on RoiAlign."""
    out = tmp / "pre.onnx"
    try:
        quant_pre_process(str(fp32_path), str(out), skip_optimization=True, skip_symbolic_shape=True)
        return load_model_with_shape_infer(out)
    except Exception as e:  # pre-processing is an optional nicety: quantize the plain model instead
        log.warning("quant_pre_process failed (%s); quantizing without it", str(e).splitlines()[0][:120])
        return load_model_with_shape_infer(fp32_path)


def _float_inputs_for_excluded(model: onnx.ModelProto, exclude: set[str]) -> int:
    """Point excluded nodes back at the float tensor where ORT gave them a shared Q/DQ output; drop Q/DQ
    nodes nobody reads any more. Returns how many inputs were rewired."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    rewired = 0
    for node in graph.node:
        if node.name not in exclude:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
                rewired += 1
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        keep = [copy.deepcopy(n) for n in graph.node if n not in dead]
        del graph.node[:]
        graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    inits = [t for t in graph.initializer if t.name in used or t.name in outputs]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return rewired


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike | None,
                  ranges: dict[str, tuple[float, float]], flavour: str = "s8s8",
                  exclude: set[str] | None = None) -> onnx.ModelProto:
    """Write the ``flavour`` ("s8s8" or "u8s8") Q/DQ model of ``fp32_path`` to ``out_path`` (None: don't
    write); ``exclude`` = node names left in float (default: :func:`chs.export.sensitive.float32_nodes`)."""
    from chs.export.onnx_export import set_metadata  # torch-side module: import only when quantizing
    from chs.export.sensitive import float32_nodes

    if flavour not in FLAVOURS:
        raise ChsError(f"unknown INT8 flavour '{flavour}' (s8s8 for TensorRT, u8s8 for ONNX Runtime CPU)")
    if not ranges:
        raise ChsError("no calibration ranges: run calibration first")
    src = Path(fp32_path)
    if not src.is_file():
        raise ChsError(f"model not found: {src}")
    fp32 = onnx.load(str(src))
    meta = ModelMeta.from_props({p.key: p.value for p in fp32.metadata_props}, source=f"ONNX model {src.name}")
    exclude = float32_nodes(fp32) if exclude is None else set(exclude)

    with tempfile.TemporaryDirectory(prefix="chs-int8-") as tmp:
        model = _preprocessed(src, Path(tmp))
    tensors = TensorsData(
        CalibrationMethod.MinMax,  # only lowest/highest matter to the quantizer, whatever the method
        {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in ranges.items()},
    )
    quantizer = QDQQuantizer(
        model, True, False, QuantType.QInt8, FLAVOURS[flavour], tensors, [], sorted(exclude),
        list(QUANTIZED_OPS),
        {"ActivationSymmetric": flavour == "s8s8", "WeightSymmetric": True, "QuantizeBias": False},
    )
    try:
        q = quantizer.quantize_model()
    except Exception as e:  # ORT raises bare ValueError/KeyError, e.g. for a tensor without a range
        raise ChsError(f"INT8 quantization failed: {str(e).splitlines()[0][:200]}") from None
    rewired = _float_inputs_for_excluded(q, exclude)
    quantizer.model.topological_sort()  # ORT appends Q/DQ nodes; its own save_model_to_file sorts too
    log.debug("rewired %d float inputs of excluded nodes", rewired)
    meta.precision = f"int8-{flavour}"
    set_metadata(q, meta)
    try:
        onnx.checker.check_model(q, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ChsError(f"INT8 quantization produced an invalid ONNX: {str(e).splitlines()[0][:200]}") from None
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(q, str(out_path))
    return q


__all__ = ["FLAVOURS", "QUANTIZED_OPS", "quantize_int8"]

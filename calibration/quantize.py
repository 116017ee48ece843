"""INT8 ONNX with explicit QuantizeLinear/DequantizeLinear pairs, written from cached calibration ranges.

TensorRT 11 has no implicit INT8 calibration: the ONNX carries the precision. Two flavours from one set
of ranges: ``s8s8`` (symmetric int8 activations, zero points 0, float bias: plain Q/DQ around the
convolutions, what TensorRT accepts and fuses) and ``u8s8`` (uint8 activations in ONNX Runtime's operator
format with BatchNorm, Add, Concat and pooling quantized too: the form ORT's CPU kernels run fast, see
:mod:`chs.calibration.ort_cpu`, saved after ORT's own layout pass with its RoiAlign windowed, :func:`ort_cpu_file`;
``ort_cpu=False`` gives the plain Q/DQ u8s8 file instead). Weights are
per-channel symmetric int8 in both. Nodes in ``exclude`` (the heatmap head, decode, RoiAlign, CCR
regression head) stay float; in the Q/DQ files they read float tensors: a shared Q/DQ pair in front of a
Conv is not allowed to leak into them.
"""

from __future__ import annotations

import copy
import dataclasses
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

from chs.calibration.bn_shift import write_folded
from chs.calibration.calibrate import calibrate
from chs.calibration.onnx_graph import drop_dead_nodes, drop_unused_initializers
from chs.calibration.ort_cpu import quantize_ort_cpu
from chs.calibration.ort_layout import ort_optimized, two_axis_transposes
from chs.calibration.ort_roi_align import windowed_roi_aligns
from chs.model.sensitive import float32_nodes
from chs.runtime.artifact import read_onnx_meta, write_onnx_meta
from chs.runtime.errors import ChsError, first_line

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
        log.warning("quant_pre_process failed (%s); quantizing without it", first_line(e))
        return load_model_with_shape_infer(fp32_path)


def _float_inputs_for_excluded(model: onnx.ModelProto, exclude: set[str], max_depth: int = 4) -> int:
    """Make the float32 region read float tensors; returns how many node inputs were changed.

    ORT gives every consumer of a quantized tensor the shared DequantizeLinear output and quantizes Conv
    outputs, so a float head would still read 8-bit values (the last heatmap head read Relu(DQ(Q(x)))).
    Excluded nodes are pointed at the float tensor before the Q/DQ pair; excluded Conv/Gemm/MatMul nodes
    also get float copies of the few unquantized ops (Relu, Add, Concat ...) between them and the Q/DQ
    pairs, up to ``max_depth`` ops deep. Q/DQ and other nodes nobody reads any more are removed.
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    twins: dict[str, str] = {}
    clones: list[onnx.NodeProto] = []

    def float_twin(name: str, depth: int) -> str:
        """The float version of tensor ``name``: itself, the input of its Q/DQ pair, or a cloned op's output."""
        if name in twins:
            return twins[name]
        node = producer.get(name)
        result = name
        if node is None or node.name in exclude or node.op_type in QUANTIZED_OPS:
            pass
        elif node.op_type == "DequantizeLinear":
            q = producer.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear":  # and look further: Relu(DQ(Q(conv)))
                result = float_twin(q.input[0], depth)
        elif node.op_type != "QuantizeLinear":
            if depth >= max_depth:
                return name
            inputs = [float_twin(i, depth + 1) if i else i for i in node.input]
            if inputs != list(node.input):
                clone = copy.deepcopy(node)
                clone.name = f"{node.name}_float"
                del clone.input[:]
                clone.input.extend(inputs)
                del clone.output[:]
                clone.output.extend(f"{o}_float" if o else o for o in node.output)
                clones.append(clone)
                for o in node.output:
                    if o:
                        twins[o] = f"{o}_float"
                result = twins[name]
        if result != name:  # only definite answers are cached; "unchanged" may be depth-limited
            twins[name] = result
        return result

    changed = 0
    for node in graph.node:
        if node.name not in exclude:
            continue
        depth = 0 if node.op_type in QUANTIZED_OPS else max_depth  # others: only a direct Q/DQ pair
        for i, name in enumerate(node.input):
            twin = float_twin(name, depth) if name else name
            if twin != name:
                node.input[i] = twin
                changed += 1
    graph.node.extend(clones)  # callers sort topologically afterwards

    drop_dead_nodes(graph)  # the now unused Q/DQ pairs, Relus ...
    drop_unused_initializers(graph)
    return changed


def _quantize_qdq(model: onnx.ModelProto, tensors: TensorsData, exclude: set[str], flavour: str) -> onnx.ModelProto:
    """Plain Q/DQ around Conv/Gemm/MatMul; the float32 region reads float tensors."""
    quantizer = QDQQuantizer(
        model, True, False, QuantType.QInt8, FLAVOURS[flavour], tensors, [], sorted(exclude),
        list(QUANTIZED_OPS),
        {"ActivationSymmetric": flavour == "s8s8", "WeightSymmetric": True, "QuantizeBias": False},
    )
    q = quantizer.quantize_model()
    changed = _float_inputs_for_excluded(q, exclude)
    quantizer.model.topological_sort()  # Q/DQ nodes and float clones were appended; ORT's save sorts too
    log.debug("%d inputs of float32 nodes now read float tensors", changed)
    return q


def ort_cpu_file(model: onnx.ModelProto) -> onnx.ModelProto:
    """The u8s8 operator form as it is saved: ONNX Runtime's optimized graph (:mod:`chs.calibration.ort_layout`),
    each CCR stage's RoiAlign as a window gather and two MatMuls (:mod:`chs.calibration.ort_roi_align`), then every
    NCHW -> NHWC Transpose left, the layout pass's and the rewrite's, in its two-axis form."""
    optimized = ort_optimized(model)
    windowed_roi_aligns(optimized)
    two_axis_transposes(optimized)
    return optimized


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike | None,
                  ranges: dict[str, tuple[float, float]], flavour: str = "s8s8",
                  exclude: set[str] | None = None, ort_cpu: bool = True) -> onnx.ModelProto:
    """Write the ``flavour`` ("s8s8" or "u8s8") INT8 model of ``fp32_path`` to ``out_path`` (None: don't
    write); ``exclude`` = node names left in float (default: :func:`chs.model.sensitive.float32_nodes`);
    ``ort_cpu`` (u8s8 only): ONNX Runtime's fast operator form rather than plain Q/DQ."""
    if flavour not in FLAVOURS:
        raise ChsError(f"unknown INT8 flavour '{flavour}' (s8s8 for TensorRT, u8s8 for ONNX Runtime CPU)")
    if not ranges:
        raise ChsError("no calibration ranges: run calibration first")
    src = Path(fp32_path)
    if not src.is_file():
        raise ChsError(f"model not found: {src}")
    fp32 = onnx.load(str(src))
    meta = read_onnx_meta(fp32, source=f"ONNX model {src.name}")
    exclude = float32_nodes(fp32) if exclude is None else set(exclude)

    with tempfile.TemporaryDirectory(prefix="chs-int8-") as tmp:
        model = _preprocessed(src, Path(tmp))
    tensors = TensorsData(
        CalibrationMethod.MinMax,  # only lowest/highest matter to the quantizer, whatever the method
        {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in ranges.items()},
    )
    try:
        if flavour == "u8s8" and ort_cpu:
            q = ort_cpu_file(quantize_ort_cpu(model, tensors, exclude))
        else:
            q = _quantize_qdq(model, tensors, exclude, flavour)
    except Exception as e:  # ORT raises bare ValueError/KeyError, e.g. for a tensor without a range
        raise ChsError(f"INT8 quantization failed: {first_line(e)}") from None
    write_onnx_meta(q, dataclasses.replace(meta, precision=f"int8-{flavour}"))
    try:
        onnx.checker.check_model(q, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ChsError(f"INT8 quantization produced an invalid ONNX: {first_line(e)}") from None
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(q, str(out_path))
    return q


def quantize_u8s8_folded(fp32_path: str | os.PathLike, out_path: str | os.PathLike | None, crops: np.ndarray,
                         method: str = "minmax", cache_dir: str | os.PathLike | None = None) -> onnx.ModelProto:
    """The u8s8 file the export ships: ``fp32_path`` with its pre-activation BatchNorms folded into the convs
    around them (:mod:`chs.calibration.bn_shift`), calibrated on ``crops`` on its own (the folds give many
    tensors a per-channel offset, so the FP32 file's ranges do not fit them) and quantized in ONNX Runtime's
    operator form. The folded BNs' ReLUs become uint8 Clips instead of depthwise requantizations: INT8 at
    batch 1 on two threads 1.907 -> 1.841 ms (bundled model, 1 CCR, AMD Zen 4), ΔNME on ytf68 val +0.025 -> +0.024
    points."""
    with tempfile.TemporaryDirectory(prefix="chs-bn-fold-") as tmp:
        folded = Path(tmp) / "model_fp32.bn-folded.onnx"
        write_folded(fp32_path, folded)
        ranges = calibrate(folded, crops, method, cache_dir=cache_dir)
        return quantize_int8(folded, out_path, ranges, "u8s8")


__all__ = ["FLAVOURS", "QUANTIZED_OPS", "ort_cpu_file", "quantize_int8", "quantize_u8s8_folded"]

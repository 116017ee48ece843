"""FP16 ONNX: float16 tensors in the conv trunk, float32 where coordinates live, float32 I/O.

TensorRT 10 (strongly typed) and 11 take precision from the ONNX file, so the FP16 artifact is an ONNX
whose tensors are float16 except the nodes :func:`chs.model.sensitive.float32_nodes` names. Before
converting, :func:`fp16_range_scan` runs the FP32 model on real crops and reports every tensor that would
overflow float16 (|x| > 65504 becomes inf), so the export can refuse instead of shipping NaN landmarks.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from chs.model.sensitive import ALWAYS_FLOAT32_OPS, float32_nodes
from chs.runtime.artifact import INPUT_NAME, read_onnx_meta, write_onnx_meta
from chs.runtime.errors import ChsError, first_line

FP16_MAX = 65504.0

ModelLike = str | os.PathLike | onnx.ModelProto


def _load(model: ModelLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return copy.deepcopy(model)
    p = Path(model)
    if not p.is_file():
        raise ChsError(f"model not found: {p}")
    return onnx.load(str(p))


def to_fp16(model: ModelLike, keep_float32: set[str] | None = None) -> onnx.ModelProto:
    """Convert an FP32 CHS ONNX to FP16, keeping ``keep_float32`` nodes (default: the sensitive set) and
    RoiAlign in float32 and the graph input/outputs float32 (callers feed the same crops to every precision).
    """
    from onnxruntime.quantization.onnx_model import ONNXModel
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    proto = _load(model)
    keep = float32_nodes(proto) if keep_float32 is None else set(keep_float32)
    meta = read_onnx_meta(proto, source="FP32 model")
    _drop_initializer_value_info(proto)  # else the converter types float32-kept weights float16 and Casts them
    fp16 = convert_float_to_float16(proto, keep_io_types=True,
                                    op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(ALWAYS_FLOAT32_OPS)),
                                    node_block_list=sorted(keep))
    try:  # the converter appends its input/output Casts at the end of the node list
        ONNXModel(fp16).topological_sort()
    except AssertionError:
        raise ChsError("FP16 graph has a cycle or a node with a missing input") from None
    _drop_initializer_value_info(fp16)
    _drop_round_trip_casts(fp16)
    write_onnx_meta(fp16, dataclasses.replace(meta, precision="fp16"))
    try:
        onnx.checker.check_model(fp16, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ChsError(f"FP16 conversion produced an invalid ONNX: {first_line(e)}") from None
    return fp16


def _drop_initializer_value_info(model: onnx.ModelProto) -> None:
    inits = {i.name for i in model.graph.initializer}
    vis = [v for v in model.graph.value_info if v.name not in inits]
    del model.graph.value_info[:]
    model.graph.value_info.extend(vis)


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _drop_round_trip_casts(model: onnx.ModelProto) -> None:
    """Remove float32 -> float16 -> float32 Cast pairs (and float32 -> float32 Casts).

    The converter wraps every blocked node in its own Casts, so two neighbouring float32 nodes talk through
    a float16 tensor: exactly the rounding of coordinates the block list is meant to avoid.
    """
    graph = model.graph
    typed = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(typed.graph.value_info) + list(typed.graph.input) + list(typed.graph.output)}
    types.update({i.name: i.data_type for i in graph.initializer})
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    for node in list(graph.node):
        if _cast_to(node) != TensorProto.FLOAT:
            continue
        src = producer.get(node.input[0])
        if types.get(node.input[0]) == TensorProto.FLOAT:  # a no-op Cast
            origin = node.input[0]
        elif src is not None and _cast_to(src) == TensorProto.FLOAT16 and types.get(src.input[0]) == TensorProto.FLOAT:
            origin = src.input[0]
        else:
            continue
        if node.output[0] in outputs:  # keep the output name: a no-op Identity instead of the Cast
            node.op_type = "Identity"
            del node.attribute[:]
            node.input[0] = origin
        else:
            rename[node.output[0]] = origin
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    used = {i for n in graph.node for i in n.input} | outputs
    live = [n for n in graph.node if n.output[0] not in rename]
    while True:  # drop Casts whose outputs nobody reads any more
        dead = {id(n) for n in live if n.op_type == "Cast" and not any(o in used for o in n.output)}
        if not dead:
            break
        live = [n for n in live if id(n) not in dead]
        used = {i for n in live for i in n.input} | outputs
    kept = [copy.deepcopy(n) for n in live]
    del graph.node[:]
    graph.node.extend(kept)
    gone = set(rename) | {o for n in producer.values() for o in n.output} - {o for n in kept for o in n.output}
    vis = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(vis)


def _fp16_tensors(fp32: onnx.ModelProto, keep: set[str]) -> tuple[list[str], list[str]]:
    """(activations, initializers) of the FP32 graph that the FP16 model holds as float16."""
    fp16 = to_fp16(fp32, keep)
    inferred = onnx.shape_inference.infer_shapes(fp16)
    half = {vi.name for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
            if vi.type.tensor_type.elem_type == TensorProto.FLOAT16}
    half_inits = {i.name for i in fp16.graph.initializer if i.data_type == TensorProto.FLOAT16}
    produced = {o for n in fp32.graph.node for o in n.output if o}
    fp32_inits = {i.name for i in fp32.graph.initializer if i.data_type == TensorProto.FLOAT}
    return sorted(half & produced), sorted(half_inits & fp32_inits)


def fp16_range_scan(fp32_path: ModelLike, crops: np.ndarray, limit: float = FP16_MAX,
                    keep_float32: set[str] | None = None, batch_size: int = 8, top: int = 10) -> dict:
    """Max |value| of every tensor the FP16 model would hold in float16, measured in FP32 on real crops.

    Returns ``max_abs`` {tensor: value} (activations and float16 initializers), ``worst`` [(tensor, value)]
    largest first, ``overflow`` (tensors above ``limit``, or non-finite: FP16 would give inf/NaN) and
    ``near_overflow`` (above ``limit / 8``: one unlucky face away), plus ``n_crops`` and ``n_tensors``.
    """
    x = np.asarray(crops, dtype=np.float32)
    if x.ndim != 4 or len(x) == 0:
        raise ChsError(f"range scan needs a (N, 3, S, S) batch of crops, got shape {tuple(x.shape)}")
    proto = _load(fp32_path)
    keep = float32_nodes(proto) if keep_float32 is None else set(keep_float32)
    acts, inits = _fp16_tensors(proto, keep)

    # reduce in the graph (Abs -> ReduceMax per tensor): fetching a large model's every activation at once
    # would take gigabytes
    probe = copy.deepcopy(proto)
    outputs = {}
    for k, name in enumerate(acts):
        out = f"chs_range_scan_{k}"
        probe.graph.node.extend([onnx.helper.make_node("Abs", [name], [f"{out}_abs"], name=f"{out}_abs"),
                                 onnx.helper.make_node("ReduceMax", [f"{out}_abs"], [out], name=out, keepdims=0)])
        probe.graph.output.append(onnx.helper.make_tensor_value_info(out, TensorProto.FLOAT, []))
        outputs[out] = name
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # measure the graph as written
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    max_abs = {name: 0.0 for name in acts}
    for i in range(0, len(x), batch_size):
        values = sess.run(list(outputs), {INPUT_NAME: x[i : i + batch_size]})
        for out, v in zip(outputs, values, strict=True):
            m = float(v)
            max_abs[outputs[out]] = max(max_abs[outputs[out]], m if np.isfinite(m) else float("inf"))
    init_map = {i.name: i for i in proto.graph.initializer}
    for name in inits:
        w = numpy_helper.to_array(init_map[name]).astype(np.float64)
        max_abs[name] = float(np.abs(w).max()) if np.isfinite(w).all() else float("inf")

    worst = sorted(max_abs.items(), key=lambda kv: kv[1], reverse=True)
    return {"limit": float(limit), "n_crops": int(len(x)), "n_tensors": len(max_abs), "max_abs": max_abs,
            "worst": worst[:top], "overflow": [n for n, v in worst if not v <= limit],
            "near_overflow": [n for n, v in worst if v > limit / 8]}


def require_fp16_safe(report: dict) -> None:
    """Raise ChsError (one line) when the range scan found tensors that would overflow float16."""
    if report["overflow"]:
        names = ", ".join(f"{n} ({report['max_abs'][n]:.3g})" for n in report["overflow"][:3])
        more = f" and {len(report['overflow']) - 3} more" if len(report["overflow"]) > 3 else ""
        raise ChsError(f"FP16 would overflow (|x| > {report['limit']:g}) in {names}{more}: export FP32 or INT8")


__all__ = ["FP16_MAX", "fp16_range_scan", "require_fp16_safe", "to_fp16"]

"""The u8s8 INT8 form that ONNX Runtime's CPU kernels run fast (ORT only; TensorRT gets plain Q/DQ s8s8).

Why the graph's form, not the int8 kernels, decides CPU speed here: the CHS blocks are pre-activation
(BN -> ReLU -> Conv) and every conv output also feeds a Concat + skip Add, so BatchNormalization cannot be
folded into a neighbouring conv. A Q/DQ file that quantizes only convolutions leaves each BN, Add, Concat
and pooling in float between Quantize/Dequantize pairs and layout Transposes, which cost more than the
int8 convolutions save (0.9x FP32 on AMD Zen 4). This form:

- starts, in the file the export ships, from the graph whose BatchNorms that read a conv's output are folded
  away (:mod:`chs.calibration.bn_shift`: the shift into that conv's bias, the scale into the next conv), so
  their ReLUs read the conv's uint8 output directly and run as a uint8 Clip at the zero point
  (:func:`relus_as_clips`; ORT's quantizer would drop them);
- rewrites each other trunk BatchNormalization as the per-channel scale/shift it is at inference, a depthwise
  1x1 Conv with bias (ONNX Runtime's own FP32 NCHWc pass does the same), so it quantizes to a
  QLinearConv whose uint8 output range absorbs the ReLU after it;
- rewrites each unpadded AveragePool as a depthwise conv with weights 1/area (ORT's QLinearAveragePool
  is slow);
- quantizes Add, Concat, Mul and the ReLUs too (ORT operator format, ``QLinearConv`` /
  ``QLinearAdd`` / ``QLinearConcat``), so activations stay uint8 NHWC from one
  conv to the next and ORT's layout pass drops the Transposes between them;
- gives each block Concat's inputs the Concat's own range, so the conv producing each part requantizes
  straight into the Concat's scale and QLinearConcat copies instead of remapping every byte;
- rewrites the selective-feature attention's ReduceMean over H, W as GlobalAveragePool, which is
  quantized, instead of a DequantizeLinear pass over the feature map in front of a float ReduceMean;
- quantizes the float32 region's Concats that only quantized convs read (each CCR stage's features +
  heatmap slice): their output was quantized anyway;
- gives each CCR stage's regression fc int8 weights in ONNX Runtime's DynamicQuantizeMatMul, its input
  quantized on its own range at every call (:func:`regression_fc_dynamic`);
- keeps the bilinear Resize in float (quantizing it cost 0.02-0.03 NME points on ytf68 val for little time:
  ORT's uint8 Resize truncates, 0.46 steps low on average, where DequantizeLinear -> Resize -> QuantizeLinear
  rounds), and the rest of the float32 region (heatmap head, decode, RoiAlign, the CCR's 1x1 output conv) as the
  Q/DQ files do.

The file is then saved after ONNX Runtime's own layout pass with the Transposes that pass adds written in a form
that does not slow down on a second thread (:mod:`chs.calibration.ort_layout`), and each CCR stage's RoiAlign
as a window gather and two MatMuls (:mod:`chs.calibration.ort_roi_align`).

Measured (bundled model, ytf68 val, AMD Zen 4 with 2 cores, ORT 1.32, 2 intra-op threads, sessions timed
in alternating blocks): NME 3.945 % vs FP32 3.926 % (1 CCR), 3.955 % vs 3.941 % (2 CCR); 1.33x / 1.31x FP32
speed at batch 1 / 8 (1 CCR), 1.33x / 1.36x (2 CCR); on one thread 1.65x / 1.71x; after the layout pass,
~1.45x / 1.47x (one 2-thread session; the pass is described above); with the CCR stage's RoiAlign windowed and its
fc in int8 (below and :mod:`chs.calibration.ort_roi_align`), ~1.5x at batch 1 for 1 CCR and ~1.55x for 2 CCR, 1.9x /
2.1x at batch 8 over two single-thread sessions (``chs-bench tradeoff``). Tried and not kept:
BN -> ReLU -> Conv as a per-channel Add -> ReLU -> Conv with the BN scale folded into the conv weights
(exact here, every BN scale is positive, but ORT's broadcasting QLinearAdd is slower than the depthwise
QLinearConv: 1.0x FP32; :mod:`chs.calibration.bn_shift` moves that Add into the producing conv's bias
instead), per-tensor weights (no gain on 2 threads, +0.008 NME points), quantized Resize
(+0.03 NME points), ORT's dynamic block size and no-spinning options (no gain / slower), graph
optimisation below ORT_ENABLE_ALL (1.0x: the NHWC layout pass is what makes the int8 convs fast), the
stem's and first hourglass's coordinate channels folded into a constant map added after the conv (exact in
float; drops a layout Transpose of the input, but 1.02-1.05x at batch 1 for +0.006-0.009 NME points on
ytf68 val: one more 8-bit rounding at the stem), the stem conv left float (no gain), the five Concats ORT keeps
in NCHW between layout Transposes (an input from float ops) written in NHWC instead (2-3 % slower: the float
Transposes and a channel-last Concat cost as much; ``benchmarks/results/cpu-ytf68-amd/int8_bounds.md``).
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import QuantType
from onnxruntime.quantization.calibrate import TensorData, TensorsData
from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
from onnxruntime.quantization.quant_utils import QuantizationMode

from chs.calibration.onnx_graph import drop_unused_initializers, node_attributes, node_readers
from chs.model.sensitive import param_module

# op types quantized in the ORT CPU form (Resize stays float: see the module docstring)
ORT_CPU_OPS = ("Conv", "Gemm", "MatMul", "Add", "Concat", "AveragePool", "MaxPool", "Relu", "Mul",
               "GlobalAveragePool")
DW_SUFFIX = "_as_depthwise"
# Concat inputs made by these ops take the Concat's range in their own requantization, at no cost
QUANTIZED_PRODUCERS = ("Conv", "Add", "Concat", "AveragePool", "MaxPool")
# ... unless that widens an input's own range more than this (3 bits; the bundled model's widest is 3.7x)
SHARED_RANGE_MAX_WIDENING = 8.0
FC_MODULE = re.compile(r"^ccr\.\d+\.fc$")


def batchnorm_as_depthwise_conv(model: onnx.ModelProto, exclude: set[str]) -> int:
    """Replace every inference BatchNormalization not in ``exclude`` by the equal depthwise 1x1 Conv.

    The Conv keeps the node's name and output, and its weight/bias initializers are named after the BN's
    scale/bias (``<scale>_as_depthwise``), so module-path rules such as ``float32_nodes`` still apply.
    Returns how many nodes were replaced."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = list(graph.node)
    new_nodes, new_inits, replaced = [], [], 0
    made: dict[tuple, tuple[str, str]] = {}  # BNs sharing parameters share the conv's initializers
    for node in nodes:
        if node.op_type != "BatchNormalization" or node.name in exclude or len(node.output) != 1 or \
                not all(i in inits for i in node.input[1:5]):
            new_nodes.append(node)
            continue
        x, scale, bias, mean, var = node.input[:5]
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        s, b, m, v = (numpy_helper.to_array(inits[t]).astype(np.float64) for t in (scale, bias, mean, var))
        k = s / np.sqrt(v + eps)
        key = (scale, bias, mean, var, eps)
        if key not in made:
            tag = "" if not made else f"_{len(made)}"
            made[key] = (scale + DW_SUFFIX + tag, bias + DW_SUFFIX + tag)
            new_inits += [numpy_helper.from_array(k.reshape(-1, 1, 1, 1).astype(np.float32), made[key][0]),
                          numpy_helper.from_array((b - m * k).astype(np.float32), made[key][1])]
        w_name, b_name = made[key]
        new_nodes.append(helper.make_node("Conv", [x, w_name, b_name], list(node.output), name=node.name,
                                          group=int(len(k)), kernel_shape=[1, 1]))
        replaced += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    drop_unused_initializers(graph)
    return replaced


def shared_concat_ranges(model: onnx.ModelProto, exclude: set[str], tensors: TensorsData,
                         max_widening: float = SHARED_RANGE_MAX_WIDENING) -> int:
    """Give the inputs of a quantized Concat the Concat's own range (the union of its inputs' ranges).

    ORT's QLinearConcat copies an input whose scale and zero point equal the output's and requantizes
    every other one through a lookup table, byte by byte; an input that shares the output's range is made
    by its producer (a conv's requantization) directly in the Concat's scale, so the Concat is a memcpy for
    it. An input whose own range is narrower than the union by more than ``max_widening`` keeps its range
    (it would lose more than log2(max_widening) bits). Repeated until no range changes, since a tensor can
    feed several Concats. Returns how many Concat inputs now share their Concat's range."""
    producer = {o: n for n in model.graph.node for o in n.output}
    concats = [n for n in model.graph.node if n.op_type == "Concat" and n.name not in exclude and
               all(t in tensors for t in [*n.input, *n.output] if t)]

    def free(t: str) -> bool:
        """Whether ``t`` can take another range at no cost: a quantized op requantizes into it, or a float
        op's output is quantized by a QuantizeLinear of its own."""
        p = producer.get(t)
        return p is not None and (p.op_type in QUANTIZED_PRODUCERS or p.name in exclude)

    def bounds(t: str) -> tuple[float, float]:
        lo, hi = tensors[t].range_value
        return float(lo), float(hi)

    for _ in range(10):
        changed = False
        for n in concats:
            names = [t for t in [*n.input, *n.output] if t]
            lo, hi = min(bounds(t)[0] for t in names), max(bounds(t)[1] for t in names)
            for t in [t for t in n.input if t and free(t)] + list(n.output):
                t_lo, t_hi = bounds(t)
                if (t_lo, t_hi) != (lo, hi) and (hi - lo) <= max_widening * (t_hi - t_lo):
                    tensors.data[t] = TensorData(lowest=np.float32(lo), highest=np.float32(hi))
                    changed = True
        if not changed:
            break
    return sum(bounds(t) == bounds(n.output[0]) for n in concats for t in n.input if t and free(t))


def reducemean_as_global_pool(model: onnx.ModelProto, exclude: set[str]) -> int:
    """ReduceMean over H and W with keepdims (the selective-feature attention's squeeze) is GlobalAveragePool,
    which ORT quantizes (QLinearGlobalAveragePool): its input no longer needs a DequantizeLinear pass."""
    replaced = 0
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "ReduceMean" or node.name in exclude:
            continue
        attrs = node_attributes(node)
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1] in inits:
            axes = numpy_helper.to_array(inits[node.input[1]]).tolist()
        dims = _dims(model, node.input[0])
        rank = None if dims is None else len(dims)  # GlobalAveragePool averages every axis after 1
        if rank != 4 or not attrs.get("keepdims", 1) or axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            continue
        node.CopyFrom(helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name))
        replaced += 1
    return replaced


def concats_read_only_by_quantized_ops(model: onnx.ModelProto, exclude: set[str]) -> set[str]:
    """Excluded Concats whose output only quantized ops read (the CCR stages' feature + heatmap Concat).

    Their output is quantized for those readers anyway, so a float Concat only adds work: a
    DequantizeLinear of its quantized input and a QuantizeLinear of its output. As a QLinearConcat its
    float input is quantized once, straight into the Concat's range (:func:`shared_concat_ranges`), and the
    quantized one is copied (ORT still keeps it NCHW between two layout Transposes)."""
    readers = node_readers(model.graph)
    outputs = {o.name for o in model.graph.output}
    found = set()
    for n in model.graph.node:
        if n.op_type != "Concat" or n.name not in exclude or any(o in outputs for o in n.output):
            continue
        rs = [r for o in n.output for r in readers.get(o, [])]
        if rs and all(r.name not in exclude and r.op_type in ORT_CPU_OPS for r in rs):
            found.add(n.name)
    return found


def _dims(model: onnx.ModelProto, tensor: str) -> list | None:
    """The dimensions of ``tensor`` from the graph's shape information, if it has any."""
    for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        if vi.name == tensor:
            return list(vi.type.tensor_type.shape.dim)
    return None


def _channels(model: onnx.ModelProto, tensor: str) -> int | None:
    """Dimension 1 of ``tensor`` from the graph's shape information, if known."""
    dims = _dims(model, tensor) or []
    return int(dims[1].dim_value) if len(dims) > 1 and dims[1].dim_value > 0 else None


def avgpool_as_depthwise_conv(model: onnx.ModelProto, exclude: set[str]) -> int:
    """Replace unpadded AveragePool nodes by the equal depthwise Conv (weights 1 / kernel area).

    ORT's QLinearAveragePool is a slow generic kernel (7 pools took 9 % of the INT8 time, more than the
    40 quantized Adds); a depthwise QLinearConv runs on MLAS's NHWC depthwise kernel, and 1/4 is exact in
    symmetric int8 (127 x 0.25/127). Needs the input's channel count from shape inference; returns how
    many nodes were replaced."""
    graph = model.graph
    new_nodes, new_inits, replaced = [], [], 0
    for node in graph.node:
        attrs = node_attributes(node)
        channels = _channels(model, node.input[0]) if node.op_type == "AveragePool" else None
        if node.op_type != "AveragePool" or node.name in exclude or channels is None or \
                any(attrs.get("pads", [0])) or attrs.get("ceil_mode", 0) or \
                attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            new_nodes.append(node)
            continue
        kernel = list(attrs["kernel_shape"])
        w_name = f"{node.name}{DW_SUFFIX}_w"
        w = np.full((channels, 1, *kernel), 1.0 / float(np.prod(kernel)), np.float32)
        new_inits.append(numpy_helper.from_array(w, w_name))
        new_nodes.append(helper.make_node("Conv", [node.input[0], w_name], list(node.output), name=node.name,
                                          group=channels, kernel_shape=kernel,
                                          strides=list(attrs.get("strides", [1] * len(kernel)))))
        replaced += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    return replaced


def regression_fc_dynamic(model: onnx.ModelProto) -> int:
    """Each CCR stage's regression Gemm (``ccr.<k>.fc``, float in the other files) as ONNX Runtime's
    DynamicQuantizeMatMul: per-output symmetric int8 weights, the input quantized to uint8 on its own range at
    every call, float out. Its 3400 x 136 float weights (1.8 MB) are read from memory at every call, so the float
    Gemm takes 30-60 us inside the model at batch 1; int8 weights are a quarter of that. On the bundled model (1 CCR,
    batch 1, 2 threads, alternating rounds): INT8 1.88 -> 1.83-1.85 ms; the landmarks move by at most 0.016 px (of
    128) and the gate's ΔNME stays +0.0204 points. Returns how many."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes, replaced = [], 0
    for node in model.graph.node:
        nodes.append(node)
        attrs = node_attributes(node)
        bias = [b for b in node.input[2:] if b]
        if (node.op_type != "Gemm" or node.input[1] not in inits or any(b not in inits for b in bias)
                or not FC_MODULE.match(param_module(node.input[1]) or "") or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        w = w.T if attrs.get("transB", 0) else w  # (K, N)
        if any(numpy_helper.to_array(inits[b]).shape != (w.shape[1],) for b in bias):  # DynamicQuantizeMatMul: 1-D
            continue
        scale = np.maximum(np.abs(w).max(axis=0), np.finfo(np.float32).tiny) / 127.0
        prefix = f"{node.name}_dynamic"
        model.graph.initializer.extend([
            numpy_helper.from_array(np.clip(np.round(w / scale), -127, 127).astype(np.int8), f"{prefix}_w"),
            numpy_helper.from_array(scale.astype(np.float32), f"{prefix}_w_scale"),
            numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{prefix}_w_zero")])
        nodes[-1] = helper.make_node(
            "DynamicQuantizeMatMul", [node.input[0], f"{prefix}_w", f"{prefix}_w_scale", f"{prefix}_w_zero", *bias],
            list(node.output), name=prefix, domain="com.microsoft")
        replaced += 1
    if replaced:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        drop_unused_initializers(model.graph)
    return replaced


def quantize_ort_cpu(model: onnx.ModelProto, tensors: TensorsData, exclude: set[str]) -> onnx.ModelProto:
    """u8s8 in ONNX Runtime's operator format: uint8 activations, symmetric per-channel int8 weights,
    ``exclude`` left float (they read DequantizeLinear outputs), and so are ops on tensors that have no
    calibrated range (shape arithmetic: int64 Concat/Add/Mul). ``model`` is modified."""
    tensors = TensorsData(tensors.calibration_method, dict(tensors.items()))  # the caller's ranges stay as given
    exclude = set(exclude) - concats_read_only_by_quantized_ops(model, exclude)
    batchnorm_as_depthwise_conv(model, exclude)
    avgpool_as_depthwise_conv(model, exclude)
    reducemean_as_global_pool(model, exclude)
    shared_concat_ranges(model, exclude, tensors)
    ranged = set(tensors.keys())
    unranged = {n.name for n in model.graph.node
                if n.op_type in ORT_CPU_OPS and not all(o in ranged for o in n.output if o)}
    exclude = set(exclude) | unranged
    quantizer = ONNXQuantizer(
        model, True, False, QuantizationMode.QLinearOps, True, QuantType.QInt8, QuantType.QUInt8, tensors, [],
        sorted(exclude), list(ORT_CPU_OPS), {"WeightSymmetric": True, "ActivationSymmetric": False},
    )
    shared = shared_relus(model, exclude)
    quantized = quantizer.quantize_model()
    relus_as_clips(quantized, shared, quantizer.quantized_value_map)
    quantizer.model.topological_sort()
    regression_fc_dynamic(quantized)
    return quantized


def shared_relus(model: onnx.ModelProto, exclude: set[str]) -> dict[str, tuple[str, list[str]]]:
    """Quantized ReLUs whose input other nodes read too: name -> (output, names of the nodes that read it).

    ONNX Runtime's operator-format quantizer drops a ReLU after a quantized op and lets its readers take the op's
    uint8 output as it is, relying on that output's range starting at 0 (it narrows the range when the ReLU is the
    only reader). With other readers the range keeps its negative part, so the ReLU would be lost:
    :func:`relus_as_clips` puts it back as a uint8 Clip at the zero point (the BN folds of
    :mod:`chs.calibration.bn_shift` make such ReLUs)."""
    readers = node_readers(model.graph)
    return {n.name: (n.output[0], [r.name for r in readers.get(n.output[0], [])]) for n in model.graph.node
            if n.op_type == "Relu" and n.name not in exclude and len(readers.get(n.input[0], [])) > 1}


def relus_as_clips(model: onnx.ModelProto, shared: dict[str, tuple[str, list[str]]], quantized_values: dict) -> int:
    """Each ReLU of ``shared`` (:func:`shared_relus`, taken before quantizing) that the quantizer dropped, back as
    ``Clip(x, zero point, 255)`` on the uint8 tensor its readers were given: the ReLU in the quantized domain, same
    scale, no requantization (~1 us where a requantizing op costs 3-15 us). Raises when a reader is not a
    quantized op reading that tensor, which would silently miss the ReLU. Returns how many."""
    by_name = {n.name: n for n in model.graph.node}
    added = 0
    for name, (relu_out, reader_names) in shared.items():
        q = quantized_values.get(relu_out)
        if name in by_name or q is None:  # kept as an op (a float ReLU between Q/DQ): nothing was dropped
            continue
        readers = [by_name.get(f"{r}_quant") for r in reader_names]
        if not readers or any(r is None or q.q_name not in r.input for r in readers):
            raise ValueError(f"ReLU {name}: a reader of its quantized input is not a quantized op")
        clipped = f"{relu_out}_clipped_u8"
        model.graph.node.append(helper.make_node("Clip", [q.q_name, q.zp_name, "relu_clip_max_u8"], [clipped],
                                                 name=f"{name}_as_clip"))
        for r in readers:
            for i, t in enumerate(r.input):
                if t == q.q_name:
                    r.input[i] = clipped
        added += 1
    if added and not any(t.name == "relu_clip_max_u8" for t in model.graph.initializer):
        model.graph.initializer.append(helper.make_tensor("relu_clip_max_u8", onnx.TensorProto.UINT8, [], [255]))
    return added


__all__ = ["ORT_CPU_OPS", "avgpool_as_depthwise_conv", "batchnorm_as_depthwise_conv", "quantize_ort_cpu",
           "regression_fc_dynamic", "relus_as_clips", "shared_relus"]

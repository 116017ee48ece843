"""ONNX Runtime's CPU layout pass, run once at export on the u8s8 file, with its two-thread Transpose trap removed.

ONNX Runtime runs QLinearConv channel-last: when it loads the u8s8 file its layout pass rewrites the int8
convolutions to NHWC and puts a Transpose wherever a tensor crosses between the two layouts (the Concats of
features with float heatmap slices or coordinate channels, the stem's input, the CCR stage). It runs an
NCHW -> NHWC Transpose (perm 0, 2, 3, 1) through MLAS's threaded 2-D transpose, which with two threads gives each
thread half of the *channels* of every output pixel: both threads write every cache line of the output, and the
Transpose runs 2.5-5x slower than on one thread (uint8, 67-132 channels at 32x32: 37-63 us against 8-18 us, AMD
Zen 4, ORT 1.32). The same data movement written as Reshape (N, 1, C, H, W) -> Transpose (0, 3, 4, 1, 2) ->
Reshape (N, H, W, C) moves two axes, so ORT takes its generic single-threaded transpose (9-20 us on one or two
threads), and the result is byte for byte the same.

So the export runs ORT's own optimizer once (everything but the NCHWc pass, which would tie the file to this
CPU's vector width: the file stays portable across x86 CPUs) and rewrites those Transposes; ORT reloads the file
as it is (its layout pass finds nothing left to do) and still applies NCHWc to the float convolutions at load.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

# ORT's NCHWc blocking depends on the CPU's vector width: left to load time
HARDWARE_SPECIFIC_PASSES = ["NchwcTransformer"]
NCHW_TO_NHWC = [0, 2, 3, 1]
TWO_AXES = [0, 3, 4, 1, 2]  # (N, 1, C, H, W) -> (N, H, W, 1, C)
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
           "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


def _session(model: onnx.ModelProto, options: ort.SessionOptions) -> ort.InferenceSession:
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=HARDWARE_SPECIFIC_PASSES)


def ort_optimized(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` as ONNX Runtime's CPU provider optimizes it (ORT_ENABLE_ALL without the NCHWc pass)."""
    with tempfile.TemporaryDirectory(prefix="chs-ort-layout-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        _session(model, options)
        optimized = onnx.load(options.optimized_model_filepath)
    # ORT declares every domain it knows (ai.onnx.ml 5, com.microsoft.nchwc, ...); an older ONNX Runtime refuses
    # a version it does not know even when no node uses it: keep the domains the graph uses
    used = {n.domain for n in optimized.graph.node} | {""}
    kept = [o for o in optimized.opset_import if o.domain in used]
    del optimized.opset_import[:]
    optimized.opset_import.extend(kept)
    return optimized


def input_shapes(model: onnx.ModelProto, tensors: list[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of ``tensors`` for zero inputs (every free dimension 1: batch 1), read through Shape nodes (no
    element types needed)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for i, name in enumerate(tensors):
        probe.graph.node.append(helper.make_node("Shape", [name], [f"chs_probe_shape_{i}"]))
        probe.graph.output.append(helper.make_tensor_value_info(f"chs_probe_shape_{i}", onnx.TensorProto.INT64, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the graph as written
    session = _session(probe, options)
    feed = {x.name: np.zeros([d if isinstance(d, int) else 1 for d in x.shape], _DTYPES[x.type])
            for x in session.get_inputs()}
    outputs = session.run([f"chs_probe_shape_{i}" for i in range(len(tensors))], feed)
    return {name: tuple(int(d) for d in shape) for name, shape in zip(tensors, outputs, strict=True)}


def two_axis_transposes(model: onnx.ModelProto) -> int:
    """Rewrite each rank-4 NCHW -> NHWC Transpose as Reshape -> two-axis Transpose -> Reshape (same bytes);
    returns how many. The batch stays free (-1); channels and spatial size come from one batch-1 run."""
    targets = [n for n in model.graph.node if n.op_type == "Transpose"
               and [list(a.ints) for a in n.attribute if a.name == "perm"] == [NCHW_TO_NHWC]]
    if not targets:
        return 0
    shapes = input_shapes(model, [n.input[0] for n in targets])
    rewritten = {n.name for n in targets if len(shapes[n.input[0]]) == 4}
    nodes = []
    for n in model.graph.node:
        if n.name not in rewritten:
            nodes.append(n)
            continue
        _, c, h, w = shapes[n.input[0]]
        five, four = f"{n.name}_as_5d", f"{n.name}_as_nhwc"
        model.graph.initializer.extend([numpy_helper.from_array(np.array([-1, 1, c, h, w], np.int64), five),
                                        numpy_helper.from_array(np.array([-1, h, w, c], np.int64), four)])
        nodes += [helper.make_node("Reshape", [n.input[0], five], [five + "_out"], name=five),
                  helper.make_node("Transpose", [five + "_out"], [f"{n.name}_two_axes"], perm=TWO_AXES,
                                   name=f"{n.name}_two_axes"),
                  helper.make_node("Reshape", [f"{n.name}_two_axes", four], list(n.output), name=four)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return len(rewritten)


__all__ = ["HARDWARE_SPECIFIC_PASSES", "NCHW_TO_NHWC", "TWO_AXES", "input_shapes", "ort_optimized",
           "two_axis_transposes"]

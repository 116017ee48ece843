"""Which nodes of an exported CHS graph must stay float32 (FP16 export) and unquantized (INT8 export).

The rule reads module paths from parameter names (``model.ccr.0.fc.weight``), not from the per-node
metadata the dynamo exporter writes: onnxsim drops node metadata but keeps node and initializer names, so
the same rule classifies the raw export and the simplified graph the export pipeline ships.
"""

from __future__ import annotations

import re

import onnx

from chs.runtime.errors import ChsError

PARAM_PREFIX = "model."
# parameters of these modules make a node float32 (``{last}`` = the last stack)
_FLOAT_MODULES = (r"hourglass\.(conv_last|bn_end|head)\.{last}", r"ccr\.\d+\.out", r"ccr\.\d+\.fc")
_HEAD = re.compile(r"^hourglass\.head\.(\d+)$")
ALWAYS_FLOAT32_OPS = frozenset({"RoiAlign", "ArgMax"})


def param_module(name: str) -> str | None:
    """``model.ccr.0.fc.weight`` -> ``ccr.0.fc``; None for a tensor that is not a named module parameter."""
    if not name.startswith(PARAM_PREFIX) or "." not in name[len(PARAM_PREFIX):]:
        return None
    return name[len(PARAM_PREFIX):].rsplit(".", 1)[0]


def node_module(node: onnx.NodeProto, initializers: set[str]) -> str | None:
    """The module whose parameters the node reads (Conv, Gemm, BatchNormalization), else None."""
    for name in node.input:
        if name in initializers and (module := param_module(name)) is not None:
            return module
    return None


def float32_nodes(proto: onnx.ModelProto) -> set[str]:
    """Names of the nodes that stay float32 in FP16 and unquantized in INT8.

    Rule: a node that reads parameters of the last stack's heatmap head (``hourglass.head.<last>`` and the 1x1
    ``conv_last`` / ``bn_end`` feeding it) or of a CCR regression head (``ccr.<k>.out`` grouped conv, ``ccr.<k>.fc``
    Gemm) is float32; a node reading any other module's parameters is trunk. A node without parameters is float32 when
    it is RoiAlign or ArgMax or reads a tensor produced by a float32 node, else trunk. So the float32 region runs from
    the last heatmaps to the landmarks (decode: Slice, ArgMax, Gather, Log, Div, Clip ...; each stage's rois, RoiAlign
    and coordinate channels; the offsets; the wrapper's cell -> pixel scaling), interrupted only by the CCR stages' conv
    blocks (trunk again). Why: these tensors are coordinates or feed them 1:1 (FP16 steps by 0.125 px near 256 px; INT8
    error lands directly in the landmarks), and TensorRT's RoiAlign wants float rois of the features' dtype.
    ``conv_last`` is in because the head is linear: 8-bit noise on its input is 8-bit noise on the heatmaps (2-epoch
    ytf68 model, ytf68 val, INT8 NME 21.8-21.9 % with it float, 23.5 % quantized; FP32 21.8 %).
    """
    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    modules = [node_module(n, inits) for n in graph.node]
    heads = [int(m.group(1)) for mod in modules if mod and (m := _HEAD.match(mod))]
    if not heads:
        raise ChsError("the ONNX graph has no 'model.hourglass.head.*' parameters: not a CHS export, "
                       "cannot tell which nodes must stay float32")
    float_mod = re.compile("^(" + "|".join(p.format(last=max(heads)) for p in _FLOAT_MODULES) + ")$")
    keep: set[str] = set()
    float_tensors: set[str] = set()
    for node, module in zip(graph.node, modules, strict=True):
        if module is not None:
            is_float = bool(float_mod.match(module))
        else:
            is_float = node.op_type in ALWAYS_FLOAT32_OPS or any(i in float_tensors for i in node.input)
        if is_float:
            if not node.name:
                raise ChsError(f"unnamed {node.op_type} node in the float32 region: cannot keep it float32")
            keep.add(node.name)
            float_tensors.update(node.output)
    return keep


__all__ = ["ALWAYS_FLOAT32_OPS", "float32_nodes", "node_module", "param_module"]

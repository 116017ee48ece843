"""Which nodes of an exported CHS graph must stay float32 (FP16 export) and unquantized (INT8 export).

The rule works on the module path that torch's dynamo exporter writes into each node's metadata
(``pkg.torch.onnx.name_scopes``), so it follows the model's structure instead of guessing from op types.
"""

from __future__ import annotations

import ast
import re

import onnx

from chs.runtime.errors import ChsError

SCOPE_KEY = "pkg.torch.onnx.name_scopes"
NAMESPACE_KEY = "namespace"

# module scopes (below CHSNet) whose tensors are ordinary conv-net features: safe in FP16 and INT8
_TRUNK = re.compile(r"^(features|select|to_hg|awing_stem|hourglass|ccr\.\d+\.(select|link|block))(\.|$)")
_HEAD = re.compile(r"^hourglass\.head\.(\d+)(\.|$)")
_NO_SCOPE = "_empty_nn_module_stack_from_metadata_hook"


def node_scope(node: onnx.NodeProto) -> str | None:
    """Module path of the node relative to CHSNet (``"ccr.0.fc"``; ``""`` = CHSNet or the deploy wrapper).

    None when the exporter recorded no module (nodes created by graph optimisation, symbolic-size nodes).
    """
    md = {p.key: p.value for p in node.metadata_props}
    scopes: list[str] | None = None
    if SCOPE_KEY in md:
        try:
            scopes = list(ast.literal_eval(md[SCOPE_KEY]))
        except (ValueError, SyntaxError):
            scopes = None
    if scopes is None and NAMESPACE_KEY in md:  # "mod: Class/mod.sub: Class/op: aten.op"
        scopes = [part.split(":")[0].strip() for part in md[NAMESPACE_KEY].split("/")]
    if not scopes or len(scopes) < 2 or scopes[0] == _NO_SCOPE:
        return None
    module = scopes[-2]  # the last entry is the op itself
    if module == "model":
        return ""
    return module[len("model."):] if module.startswith("model.") else module


def float32_nodes(proto: onnx.ModelProto) -> set[str]:
    """Names of the nodes that stay float32 in FP16 and unquantized in INT8.

    Rule: a node is *trunk* (may be FP16 / INT8) when its module scope is under ``features``, ``select``,
    ``to_hg``, ``awing_stem``, ``hourglass`` or ``ccr.<k>.select|link|block``; every other node stays
    float: the last stack's heatmap head ``hourglass.head.<last>`` (its peaks are the landmarks), the
    heatmap -> coordinate decode (ArgMax, Gather, Log, Div, Clip ... in CHSNet's own scope), each CCR
    stage's RoiAlign and coordinate-channel arithmetic (``ccr.<k>`` itself), the regression head
    (``ccr.<k>.out`` grouped conv, ``ccr.<k>.fc`` Gemm) and the deploy wrapper's cell -> pixel scaling.
    Why: these carry coordinates, where FP16 steps by 0.125 px near 256 px and INT8 error turns directly
    into landmark error, and TensorRT's RoiAlign wants float rois of the features' dtype. A node without
    a recorded scope inherits the class of the node producing its first input (trunk if a graph input).
    """
    scoped = [(n, node_scope(n)) for n in proto.graph.node]
    if not any(s for _, s in scoped):
        raise ChsError("the ONNX graph carries no module scopes in its node metadata: re-export it with "
                       "chs-export (torch dynamo exporter) to get FP16/INT8 precision")
    heads = [int(m.group(1)) for _, s in scoped if s and (m := _HEAD.match(s))]
    last_head = f"hourglass.head.{max(heads)}" if heads else None
    keep: set[str] = set()
    producer: dict[str, str] = {}
    for node, scope in scoped:
        if scope is None:
            src = next((producer[i] for i in node.input if i in producer), None)
            is_float = src in keep if src is not None else False
        elif last_head and (scope == last_head or scope.startswith(last_head + ".")):
            is_float = True
        else:
            is_float = not _TRUNK.match(scope)
        if is_float:
            keep.add(node.name)
        for o in node.output:
            producer[o] = node.name
    return keep


__all__ = ["float32_nodes", "node_scope"]

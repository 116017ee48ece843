"""Small edits shared by the graph rewrites of the INT8 export."""

from __future__ import annotations

import copy

import onnx
from onnx import helper


def node_attributes(node: onnx.NodeProto) -> dict:
    """A node's attributes by name, as Python values."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def node_readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """tensor name -> the nodes that read it, in graph order."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return readers


def drop_dead_nodes(graph: onnx.GraphProto) -> int:
    """Remove the nodes whose outputs nothing reads (no node, no graph output), repeatedly: a rewrite's leftovers
    (Q/DQ pairs, Transposes) and what fed only them; returns how many."""
    outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    while True:
        used = {i for n in nodes for i in n.input} | outputs
        live = [n for n in nodes if any(o in used for o in n.output)]
        if len(live) == len(nodes):
            break
        nodes = live
    dropped = len(graph.node) - len(nodes)
    if dropped:
        kept = [copy.deepcopy(n) for n in nodes]  # the repeated field is cleared before they go back in
        del graph.node[:]
        graph.node.extend(kept)
    return dropped


def drop_unused_initializers(graph: onnx.GraphProto) -> int:
    """Remove the initializers no node reads and no graph output names (weights a rewrite replaced); returns how
    many."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    dropped = len(graph.initializer) - len(kept)
    if dropped:
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return dropped


__all__ = ["drop_dead_nodes", "drop_unused_initializers", "node_attributes", "node_readers"]

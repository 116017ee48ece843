"""Small edits shared by the graph rewrites of the INT8 export."""

from __future__ import annotations

import onnx


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


__all__ = ["drop_unused_initializers"]

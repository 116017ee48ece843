"""Each CCR stage's RoiAlign in the u8s8 file as a window gather and two batched MatMuls (same values, ORT only).

ONNX Runtime's CPU RoiAlign interpolates every channel of every sample point on its own: for the bundled model's
68 windows of 5x5 bins over 32 channels (4 samples per bin) it takes 428 us on one thread and 238 us on two (AMD
Zen 4, ORT 1.32), a tenth of the whole INT8 file's time. The CCR's windows are always ``roi_size`` cells wide
(centre -/+ roi_size / 2), so each window's samples fall inside a fixed block of (S + 2) x (S + 2) cells. The
rewrite gathers those blocks as NHWC rows of the dequantized uint8 map (no layout change: the u8s8 file's features
are uint8 NHWC) and interpolates them with per-window weight matrices,
``out[r, i, j, :] = sum_u,v wy[r, i, u] * wx[r, j, v] * block[r, u, v, :]``, the y then the x sum as batched
MatMuls. The weights are RoiAlign's own: each sample's bilinear weights (the hat function ``max(0, 1 - |s - p|)``
of its clamped position ``s`` at cell ``p``), nothing for a sample outside [-1, size], averaged over the bin's
samples. The values equal RoiAlign's to float rounding (1e-5), also for windows across or off the border. Where
the patches go on, with the coordinate channels, to the stage's grouped convs, the rewrite writes their uint8
NHWC input directly (the patches are NHWC per window already) instead of NCHW floats and a layout Transpose.

Measured on the bundled model (batch 1, medians of 9 alternating rounds of 40 calls): INT8 1 CCR 2.14 -> 1.96 ms
on two threads, 2.97 -> 2.65 ms on one; 2 CCR 2.93 -> 2.58 and 4.15 -> 3.47 ms; the landmarks are the same.

Only the u8s8 file (ORT's CPU form) gets it: the FP32 and s8s8 files keep the standard RoiAlign that TensorRT
maps to its plugin. (Applied to the FP32 file it would gain nothing on two threads, 2.91 vs 2.89 ms, as its
features are NCHW and need a layout change first; 5.08 -> 4.68 ms on one.)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from chs.calibration.onnx_graph import drop_dead_nodes, drop_unused_initializers, node_attributes, node_readers
from chs.calibration.ort_layout import NCHW_TO_NHWC, input_shapes

NHWC_TO_NCHW = [0, 3, 1, 2]


def _scalar(model: onnx.ModelProto, name: str) -> float | None:
    for init in model.graph.initializer:
        if init.name == name:
            value = numpy_helper.to_array(init)
            return float(value) if value.size == 1 else None
    return None


def _window_extent(model: onnx.ModelProto, rois: str, producers: dict[str, onnx.NodeProto]) -> float | None:
    """The rois' width in input units when the graph builds them as Concat(c - k, c + k) (the CCR's windows)."""
    cat = producers.get(rois)
    if cat is None or cat.op_type != "Concat" or node_attributes(cat).get("axis") not in (1, -1) or len(cat.input) != 2:
        return None
    low, high = (producers.get(t) for t in cat.input)
    if low is None or high is None or low.op_type != "Sub" or high.op_type != "Add":
        return None
    k_low, k_high = _scalar(model, low.input[1]), _scalar(model, high.input[1])
    if low.input[0] not in high.input or k_low is None or k_low != k_high or k_low <= 0:
        return None
    return 2 * k_low


def _uint8_nhwc_source(model: onnx.ModelProto, features: str, producers: dict[str, onnx.NodeProto]):
    """(uint8 NHWC tensor, scale, zero point) when ``features`` = DequantizeLinear(Transpose(x, NHWC -> NCHW))."""
    dq = producers.get(features)
    if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
        return None
    if _scalar(model, dq.input[1]) is None or _scalar(model, dq.input[2]) is None:
        return None
    tr = producers.get(dq.input[0])
    if tr is None or tr.op_type != "Transpose" or list(node_attributes(tr).get("perm", [])) != NHWC_TO_NCHW:
        return None
    return tr.input[0], dq.input[1], dq.input[2]


def _window(extent: float, scale: float, bins: int, ratio: int) -> int:
    """Cells that any window's samples can touch: first to last sample is extent * (1 - 1 / (bins * ratio)) cells,
    plus one cell each side for the bilinear neighbours, whatever the window's fraction."""
    return math.ceil(extent * scale * (1 - 1 / (bins * ratio))) + 2


def _only_consumer(consumers: dict[str, list[onnx.NodeProto]], tensor: str, op_type: str) -> onnx.NodeProto | None:
    readers = consumers.get(tensor, [])
    return readers[0] if len(readers) == 1 and readers[0].op_type == op_type else None


class _Tail(NamedTuple):
    """The CCR's path from RoiAlign to its grouped convs in the u8s8 file, which the rewrite replaces."""

    concat: onnx.NodeProto  # Concat(patches, coordinate channels), NCHW
    quantize: onnx.NodeProto  # its QuantizeLinear
    path: list[onnx.NodeProto]  # every node from the Concat to the NHWC tensor
    nhwc: str  # the grouped convs' uint8 NHWC input
    grouped: str  # the (N, n * channels, S, S) tensor before the layout change


def _nhwc_tail(model: onnx.ModelProto, node: onnx.NodeProto,
               consumers: dict[str, list[onnx.NodeProto]]) -> _Tail | None:
    """Concat(patches, coordinate channels) -> QuantizeLinear -> Reshape to (N, n * channels, S, S) -> Transpose NCHW
    -> NHWC after ``node`` (the layout pass's Transposes are rewritten only afterwards), or None when the graph
    differs."""
    cat = _only_consumer(consumers, node.output[0], "Concat")
    if cat is None or node_attributes(cat).get("axis") != 1 or cat.input[0] != node.output[0]:
        return None
    q = _only_consumer(consumers, cat.output[0], "QuantizeLinear")
    if q is None or len(q.input) < 3 or _scalar(model, q.input[1]) is None or _scalar(model, q.input[2]) is None:
        return None
    grouped = _only_consumer(consumers, q.output[0], "Reshape")
    if grouped is None:
        return None
    transpose = _only_consumer(consumers, grouped.output[0], "Transpose")
    if transpose is None or list(node_attributes(transpose).get("perm", [])) != NCHW_TO_NHWC:
        return None
    return _Tail(cat, q, [cat, q, grouped, transpose], transpose.output[0], grouped.output[0])


def _rewrite(node: onnx.NodeProto, extent: float, shapes: dict[str, tuple[int, ...]],
             source: tuple[str, str, str] | None, tail: _Tail | None) -> tuple[list, list]:
    """Nodes and initializers computing ``node``'s output (or, with ``tail``, the NHWC tensor at its end)."""
    a = node_attributes(node)
    s, sr, scale = int(a.get("output_height", 1)), int(a["sampling_ratio"]), float(a.get("spatial_scale", 1.0))
    _, c, h, w = shapes[node.input[0]]
    _, rois, batch = node.input
    win, k = _window(extent, scale, s, sr), s * sr
    p = f"{node.name}_win"
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), f"{p}_const_{name}"))
        return f"{p}_const_{name}"

    def op(kind: str, inputs: list[str], out: str, **kw) -> str:
        nodes.append(helper.make_node(kind, inputs, [f"{p}_{out}"], name=f"{p}_{out}", **kw))
        return f"{p}_{out}"

    def clip(x: str, low: tuple[float, float], high: tuple[float, float], out: str) -> str:
        if low[0] == low[1] and high[0] == high[1]:  # square map: Clip takes scalars (ORT's Max/Min are slower)
            return op("Clip", [x, const(f"{out}_lo", np.float32(low[0])), const(f"{out}_hi", np.float32(high[0]))], out)
        lo, hi = (const(f"{out}_{b}", np.array(v, np.float32).reshape(1, 2, 1, 1))
                  for b, v in (("lo", low), ("hi", high)))
        return op("Min", [op("Max", [x, lo], f"{out}_max"), hi], out)

    # sample positions, y then x, as one Gemm on the rois (x0, y0, x1, y1): x0 * (1 - t) + x1 * t - 0.5 (half-pixel)
    t = (np.arange(k) + 0.5) / k
    m = np.zeros((4, 2 * k), np.float32)
    m[1, :k], m[3, :k], m[0, k:], m[2, k:] = (1 - t) * scale, t * scale, (1 - t) * scale, t * scale
    gemm = op("Gemm", [rois, const("m", m), const("half", np.full(2 * k, -0.5, np.float32))], "gemm")
    smp = op("Reshape", [gemm, const("s4", np.array([-1, 2, k, 1], np.int64))], "samples")  # (R, 2, K, 1)
    # RoiAlign drops a sample outside [-1, size] and clamps the others to [0, size - 1]; a dropped one is moved
    # ~1e8 x its distance outside (>= 12 cells) so that it weighs nothing
    outside = op("Sub", [smp, clip(smp, (-1, -1), (h, w), "inside")], "outside")
    moved = op("Mul", [outside, const("far", np.full((1, 1, 1, 1), 1e8, np.float32))], "moved")
    at = op("Add", [clip(smp, (0, 0), (h - 1, w - 1), "clamped"), moved], "at")
    first = op("Gather", [smp, const("k0", np.array([0], np.int64))], "first", axis=2)  # (R, 2, 1, 1)
    start = op("Floor", [clip(first, (0, 0), (h - win, w - win), "first_in")], "start")
    rel = op("Sub", [at, start], "rel")  # (R, 2, K, 1): each sample from its window's first cell
    rel_col = op("Reshape", [rel, const("col", np.array([-1, 1], np.int64))], "rel_col")
    dist = op("Abs", [op("Gemm", [rel_col, const("ones", np.ones((1, win), np.float32)),
                                  const("steps", -np.arange(win, dtype=np.float32))], "diff")], "dist")
    hat = op("Relu", [op("Sub", [const("one", np.ones((1, 1), np.float32)), dist], "tri")], "hat")  # (R * 2 * K, WIN)
    hat3 = op("Reshape", [hat, const("hat3", np.array([-1, 2 * k, win], np.int64))], "hat3")
    avg = np.kron(np.eye(2 * s), np.ones((1, sr))) / sr  # (2S, 2K): the mean over each bin's samples, y and x
    weights = op("MatMul", [const("avg", avg.astype(np.float32)), hat3], "weights")  # (R, 2S, WIN)
    wy, wx3 = f"{p}_wy", f"{p}_wx3"  # (R, S, WIN) each
    nodes.append(helper.make_node("Split", [weights, const("halves", np.array([s, s], np.int64))], [wy, wx3],
                                  name=f"{p}_split", axis=1))
    wx = op("Unsqueeze", [wx3, const("ax1w", np.array([1], np.int64))], "wx")  # (R, 1, S, WIN): for every row i
    # each window's cells as rows of the NHWC map: image * H * W + y * W + x
    start2 = op("Reshape", [start, const("s2", np.array([-1, 2], np.int64))], "start2")
    grid = (np.arange(win)[:, None] * w + np.arange(win)[None]).reshape(-1).astype(np.float32)
    base = op("Gemm", [start2, const("strides", np.array([[w] * win * win, [1] * win * win], np.float32)),
                       const("grid", grid)], "base")  # (R, WIN * WIN)
    batch_f = op("Cast", [batch], "batchf", to=TensorProto.FLOAT)
    image = op("Unsqueeze", [batch_f, const("ax1", np.array([1], np.int64))], "image")
    offset = op("Mul", [image, const("hw", np.full((1, 1), h * w, np.float32))], "offset")
    rows = op("Cast", [op("Add", [base, offset], "rowsf")], "rows", to=TensorProto.INT64)
    if source is not None:  # the uint8 NHWC map dequantized as it is: no layout change
        x, x_scale, x_zero = source
        table = op("Reshape", [op("DequantizeLinear", [x, x_scale, x_zero], "map"),
                               const("table", np.array([-1, c], np.int64))], "table")
    else:  # NCHW float -> NHWC rows (the export's layout step then writes this Transpose in its two-axis form)
        nhwc_map = op("Transpose", [node.input[0]], "nhwc", perm=NCHW_TO_NHWC)
        table = op("Reshape", [nhwc_map, const("table", np.array([-1, c], np.int64))], "table")
    block = op("Reshape", [op("Gather", [table, rows], "gather", axis=0),
                           const("block", np.array([-1, win, win * c], np.int64))], "block")  # (R, WIN, WIN * C)
    ty = op("Reshape", [op("MatMul", [wy, block], "ty"), const("ty4", np.array([-1, s, win, c], np.int64))], "ty4")
    out = op("MatMul", [wx, ty], "out")  # (R, 1, S, WIN) @ (R, S, WIN, C) -> (R, S, S, C): NHWC per window
    if tail is None:
        flat = op("Reshape", [out, const("flat", np.array([-1, s * s, 1, c], np.int64))], "flat")
        nchw = op("Transpose", [flat], "nchw", perm=[0, 3, 2, 1])  # two axes move: ORT's single-threaded transpose
        nodes.append(helper.make_node("Reshape", [nchw, const("o4", np.array([-1, c, s, s], np.int64))],
                                      list(node.output), name=f"{p}_output"))
        return nodes, inits
    extra = [op("Reshape", [name, const(f"coord{i}", np.array([-1, s, s, 1], np.int64))], f"coord{i}")
             for i, name in enumerate(tail.concat.input[1:])]  # (R, 1, S, S) -> (R, S, S, 1): same bytes
    cat = op("Concat", [out, *extra], "cat", axis=3)
    quantized = op("QuantizeLinear", [cat, tail.quantize.input[1], tail.quantize.input[2]], "q")
    total = c + len(extra)
    n = shapes[tail.grouped][1] // total
    per_image = op("Reshape", [quantized, const("img", np.array([-1, n, s * s, total], np.int64))], "per_image")
    cells_first = op("Transpose", [per_image], "cells_first", perm=[0, 2, 1, 3])  # (N, S * S, n, C + 2)
    nodes.append(helper.make_node("Reshape", [cells_first, const("nhwc", np.array([-1, s, s, n * total], np.int64))],
                                  [tail.nhwc], name=f"{p}_output"))
    return nodes, inits


def windowed_roi_aligns(model: onnx.ModelProto) -> int:
    """Rewrite each RoiAlign whose rois are fixed-width windows (Concat(c - k, c + k)) in place; returns how many.
    Others (another mode or coordinate convention, adaptive sampling, rois of free width) are left as they are."""
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = node_readers(model.graph)
    found = []
    for node in model.graph.node:
        if node.op_type != "RoiAlign" or node.domain not in ("", "ai.onnx"):
            continue
        a = node_attributes(node)
        if (a.get("mode", b"avg") != b"avg" or a.get("sampling_ratio", 0) <= 0
                or a.get("coordinate_transformation_mode", b"half_pixel") != b"half_pixel"
                or a.get("output_height", 1) != a.get("output_width", 1)):
            continue
        extent = _window_extent(model, node.input[1], producers)
        if extent is not None:
            found.append((node, extent, _nhwc_tail(model, node, consumers)))
    if not found:
        return 0
    probed = [n.input[0] for n, _, _ in found]
    probed += [i for _, _, t in found if t for i in [t.grouped, *t.concat.input[1:]]]
    shapes = input_shapes(model, probed)
    replaced: dict[str, list] = {}  # first output of the node the new nodes go in place of -> the new nodes
    dropped: set[str] = set()  # first outputs of the nodes they replace
    for node, extent, tail in found:
        shape = shapes[node.input[0]]
        a = node_attributes(node)
        s = a.get("output_height", 1)
        win = _window(extent, float(a.get("spatial_scale", 1.0)), s, a["sampling_ratio"])
        if len(shape) != 4 or shape[2] < win or shape[3] < win:
            continue
        if tail is not None:
            channels, grouped = shape[1] + len(tail.concat.input) - 1, shapes[tail.grouped]
            if (any(shapes[i][1:] != (1, s, s) for i in tail.concat.input[1:]) or len(grouped) != 4
                    or grouped[1] % channels or grouped[2:] != (s, s)):
                tail = None  # not the CCR's layout: keep the NCHW output and the nodes after it
            else:
                dropped |= {n.output[0] for n in tail.path}
        nodes, inits = _rewrite(node, extent, shapes, _uint8_nhwc_source(model, node.input[0], producers), tail)
        model.graph.initializer.extend(inits)
        dropped.add(node.output[0])
        # where the last replaced node was: everything the new nodes read (rois, coordinates) exists by then
        replaced[(tail.path[-1] if tail else node).output[0]] = nodes
    kept = []
    for n in model.graph.node:
        kept += replaced.get(n.output[0], []) if n.output[0] in dropped else [n]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    drop_dead_nodes(model.graph)  # the float map's Transpose and DequantizeLinear
    drop_unused_initializers(model.graph)
    model.graph.ClearField("value_info")  # shapes of the removed tensors
    return len(replaced)


__all__ = ["windowed_roi_aligns"]

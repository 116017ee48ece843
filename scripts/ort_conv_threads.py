"""Probe: how ONNX Runtime's FP32 and int8 (u8s8 QLinearConv) 3x3 convolutions scale from 1 to 2 intra-op
threads at the sizes of the CHS hourglass (16-64 channels, 4x4 to 32x32), one crop; with ``--transposes``, the
layout Transposes that the u8s8 file keeps around its NCHW Concats (the coordinate channels, the heatmaps).

Each model is a chain of 20 identical ops, so the per-call overhead is shared and the time per op includes
the thread pool's dispatch. Weights and ranges are random: timing only.
``python scripts/ort_conv_threads.py [--transposes] [--out table.md]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SHAPES = ((32, 4), (32, 8), (64, 8), (32, 16), (64, 16), (32, 32), (64, 32))
# NCHW shapes the bundled u8s8 file transposes to NHWC: input + coordinates, CoordConv and heatmap Concats
TRANSPOSE_SHAPES = ((6, 128), (64, 32), (67, 32), (100, 32))
CHAIN = 20


def conv_chain(channels: int, side: int, int8: bool) -> bytes:
    """``CHAIN`` 3x3 convolutions channels -> channels at side x side (QLinearConv between Q and DQ if int8)."""
    rng = np.random.default_rng(0)
    c = channels
    nodes, inits, x = [], [], "x"
    if int8:
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                  numpy_helper.from_array(np.array(128, np.uint8), "z"),
                  numpy_helper.from_array(np.full(c, 0.01, np.float32), "ws"),
                  numpy_helper.from_array(np.zeros(c, np.int8), "wz")]
        nodes.append(helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]))
        x = "q"
    for i in range(CHAIN):
        w = rng.standard_normal((c, c, 3, 3)).astype(np.float32) * 0.05
        if int8:
            inits += [numpy_helper.from_array((w * 20).clip(-127, 127).astype(np.int8), f"w{i}"),
                      numpy_helper.from_array(np.zeros(c, np.int32), f"b{i}")]
            ins = [x, "s", "z", f"w{i}", "ws", "wz", "s", "z", f"b{i}"]
            nodes.append(helper.make_node("QLinearConv", ins, [f"y{i}"], pads=[1, 1, 1, 1]))
        else:
            inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(c, np.float32), f"b{i}")]
            nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"y{i}"], pads=[1, 1, 1, 1]))
        x = f"y{i}"
    nodes.append(helper.make_node("DequantizeLinear" if int8 else "Identity", [x, "s", "z"] if int8 else [x], ["y"]))
    io = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, side, side]),
          helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "chain", io[:1], io[1:], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def transpose_chain(channels: int, side: int, int8: bool) -> bytes:
    """``CHAIN`` alternating NCHW -> NHWC -> NCHW Transposes of a uint8 (``int8``) or float32 tensor."""
    elem = TensorProto.UINT8 if int8 else TensorProto.FLOAT
    nodes, x = [], "x"
    for i in range(CHAIN):
        perm = [0, 2, 3, 1] if i % 2 == 0 else [0, 3, 1, 2]
        nodes.append(helper.make_node("Transpose", [x], [f"t{i}"], perm=perm))
        x = f"t{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    io = [helper.make_tensor_value_info("x", elem, [1, channels, side, side]),
          helper.make_tensor_value_info("y", elem, None)]
    graph = helper.make_graph(nodes, "chain", io[:1], io[1:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def session(model: bytes, threads: int, optimize: bool = True) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if not optimize:  # ORT would cancel each Transpose against the next
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--transposes", action="store_true", help="time layout Transposes instead of convolutions")
    ap.add_argument("--out", help="also write the Markdown table here")
    args = ap.parse_args()
    op, kind = ("Transpose", "uint8") if args.transposes else ("conv", "int8")
    lines = [f"| channels | side | FP32 µs/{op} 1 thread | 2 threads | speed-up | {kind} µs/{op} 1 thread | 2 threads "
             "| speed-up |", "|---|---|---|---|---|---|---|---|"]
    build = transpose_chain if args.transposes else conv_chain
    for c, side in TRANSPOSE_SHAPES if args.transposes else SHAPES:
        x = np.random.default_rng(1).standard_normal((1, c, side, side)).astype(np.float32)
        runs = {(q, t): session(build(c, side, q), t, not args.transposes) for q in (False, True) for t in (1, 2)}
        # the Transpose chains take the tensor itself: uint8 for the int8 rows
        feeds = {q: {"x": (x * 40 + 128).clip(0, 255).astype(np.uint8) if args.transposes and q else x}
                 for q in (False, True)}
        times: dict = {k: [] for k in runs}
        for _ in range(args.rounds):  # the four sessions alternate, so each sees the same machine state
            for k, s in runs.items():
                feed = feeds[k[0]]
                for _ in range(3):
                    s.run(None, feed)
                calls = []
                for _ in range(30):
                    t0 = time.perf_counter()
                    s.run(None, feed)
                    calls.append(time.perf_counter() - t0)
                times[k].append(np.median(calls) / CHAIN * 1e6)
        m = {k: float(np.median(v)) for k, v in times.items()}
        cells = [f"{m[q, 1]:.1f} | {m[q, 2]:.1f} | {m[q, 1] / m[q, 2]:.2f}x" for q in (False, True)]
        lines.append(f"| {c} | {side}x{side} | {cells[0]} | {cells[1]} |")
        print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

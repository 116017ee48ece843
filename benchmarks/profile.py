"""``chs-bench profile``: where ONNX Runtime spends its time, per operator type.

Answers "why is INT8 not faster here": it shows the int8 convolutions beside the Quantize/Dequantize pairs, layout
Transposes and float islands (pre-activation BatchNorm) that a Q/DQ model adds. Uses ONNX Runtime's own profiler
(``SessionOptions.enable_profiling``); times are kernel times, summed per op type and averaged over the timed calls.
Two more figures bound what a graph form or a scheduler can gain: the convolutions' share of the kernel time, and the
longest dependency chain through the graph ONNX Runtime runs (what running independent branches side by side can
never shorten). The profiler adds a few microseconds to every node, so small ops weigh more here than in a timed run.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chs.benchmarks.request import check_threads
from chs.runtime.errors import ChsError
from chs.runtime.options import option, whole_number

# ONNX Runtime's convolution kernels after its graph optimizations (FP32 NCHWc, fused, int8)
CONV_OPS = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "QLinearConv", "ConvInteger"})


@dataclass(frozen=True)
class ProfileOptions:
    """``chs-bench profile``'s options: their one home (the CLI and :func:`op_profile` read the defaults here),
    checked when made, before any model is profiled."""

    batch: int = option(1, "Batch size of the zero input.")
    runs: int = option(30, "Profiled calls per model.")
    threads: int | None = option(None, "Intra-op threads of ONNX Runtime (default: its own).")
    top: int = option(10, "Op types shown per model.")
    warmup: int = 3

    def __post_init__(self) -> None:
        for name in ("batch", "runs", "top"):
            whole_number(getattr(self, name), f"--{name}", 1)
        whole_number(self.warmup, "warmup", 0)
        check_threads(self.threads)


def critical_path_us(nodes: list[tuple[list[str], list[str]]], durations: list[float]) -> float:
    """Longest chain of dependent kernel times through a graph whose ``(inputs, outputs)`` come in topological
    order: the time no scheduler of independent branches can go below on this graph."""
    finish: dict[str, float] = {}
    longest = 0.0
    for (inputs, outputs), dur in zip(nodes, durations, strict=True):
        end = max((finish[i] for i in inputs if i in finish), default=0.0) + dur
        finish.update((o, end) for o in outputs if o)
        longest = max(longest, end)
    return longest


def op_profile(model: str | os.PathLike, batch: int = ProfileOptions.batch, runs: int = ProfileOptions.runs,
               warmup: int = ProfileOptions.warmup, threads: int | None = ProfileOptions.threads) -> dict:
    """{"model", "precision", "batch", "threads", "ms_per_call", "kernel_ms", "conv_ms", "critical_path_ms", "ops":
    [{"op", "ms", "share", "nodes"}, ...]} sorted by time; ``critical_path_ms`` is None when ONNX Runtime cannot
    save its optimized graph."""
    import onnx
    import onnxruntime as ort

    from chs.runtime.artifact import INPUT_NAME
    from chs.runtime.backends.ort import OrtRunner

    ProfileOptions(batch=batch, runs=runs, threads=threads, warmup=warmup)  # one-line errors for bad values
    path = Path(model)
    meta = OrtRunner(path, providers="cpu").meta  # validates the file and reads its input size
    x = np.zeros((batch, 3, meta.input_size, meta.input_size), np.float32)
    with tempfile.TemporaryDirectory(prefix="chs-prof-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"

        def session(save_graph: bool) -> ort.InferenceSession:
            so = ort.SessionOptions()
            so.log_severity_level = 3  # ORT warns that a saved NCHWc graph is hardware specific: it is only read here
            if threads:
                so.intra_op_num_threads = threads
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tmp) / "ort")
            if save_graph:  # the graph ONNX Runtime runs (after fusions and layout passes), for the chain
                so.optimized_model_filepath = str(optimized)
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        try:
            sess = session(save_graph=True)
        except Exception:  # noqa: BLE001 - ORT refuses to save some optimized graphs: profile without the chain
            optimized.unlink(missing_ok=True)
            sess = session(save_graph=False)
        graph = onnx.load(str(optimized), load_external_data=False).graph if optimized.is_file() else None
        for _ in range(warmup):
            sess.run(None, {INPUT_NAME: x})
        # the profile records every call; keep only the last ``runs`` (after this session's warm-up)
        for _ in range(runs):
            sess.run(None, {INPUT_NAME: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    calls = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    timed = calls[-runs:]
    t0 = timed[0]["ts"] if timed else 0
    total_us: dict[str, float] = defaultdict(float)
    nodes: dict[str, set] = defaultdict(set)
    node_us: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= t0:
            op = e["args"]["op_name"]
            total_us[op] += e["dur"]
            nodes[op].add(e["name"])
            node_us[e["name"].removesuffix("_kernel_time")] += e["dur"]
    if not total_us:
        raise ChsError(f"ONNX Runtime recorded no kernel times for {path.name}")
    kernel_ms = sum(total_us.values()) / runs / 1e3
    critical = None
    if graph is not None and {n.name for n in graph.node} >= set(node_us):
        chain = critical_path_us([(list(n.input), list(n.output)) for n in graph.node],
                                 [node_us.get(n.name, 0.0) for n in graph.node])
        critical = chain / runs / 1e3
    ops = [{"op": op, "ms": us / runs / 1e3, "share": us / runs / 1e3 / kernel_ms, "nodes": len(nodes[op])}
           for op, us in sorted(total_us.items(), key=lambda t: -t[1])]
    wall = float(np.median([c["dur"] for c in timed])) / 1e3 if timed else float("nan")
    return {"model": path.name, "precision": meta.precision, "batch": batch, "threads": threads, "ms_per_call": wall,
            "kernel_ms": kernel_ms, "conv_ms": sum(o["ms"] for o in ops if o["op"] in CONV_OPS),
            "critical_path_ms": critical, "ops": ops}


def format_profiles(profiles: list[dict], top: int = ProfileOptions.top) -> str:
    """Markdown: one table per model, its top op types by kernel time."""
    ProfileOptions(top=top)  # a negative top would drop rows from the end instead
    out = []
    for p in profiles:
        out.append(f"### {p['model']} ({p['precision']}, batch {p['batch']}): {p['ms_per_call']:.2f} ms per call, "
                   f"{p['kernel_ms']:.2f} ms in kernels\n")
        line = f"Convolutions {p['conv_ms']:.2f} ms, other ops {p['kernel_ms'] - p['conv_ms']:.2f} ms"
        if p["critical_path_ms"] is not None:
            line += (f"; longest dependency chain {p['critical_path_ms']:.2f} ms "
                     f"({p['critical_path_ms'] / p['kernel_ms'] * 100:.0f} % of the kernel time)")
        out.append(line + ".\n")
        out.append("| op type | ms | share | nodes |\n|---|---|---|---|")
        for o in p["ops"][:top]:
            out.append(f"| {o['op']} | {o['ms']:.2f} | {o['share'] * 100:.1f} % | {o['nodes']} |")
        out.append("")
    return "\n".join(out)


__all__ = ["CONV_OPS", "ProfileOptions", "critical_path_us", "format_profiles", "op_profile"]

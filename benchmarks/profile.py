"""``chs-bench profile``: where ONNX Runtime spends its time, per operator type.

Answers "why is INT8 not faster here": it shows the int8 convolutions beside the Quantize/Dequantize pairs, layout
Transposes and float islands (pre-activation BatchNorm) that a Q/DQ model adds. Uses ONNX Runtime's own profiler
(``SessionOptions.enable_profiling``); times are kernel times, summed per op type and averaged over the timed calls.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from chs.runtime.errors import ChsError


def op_profile(model: str | os.PathLike, batch: int = 1, runs: int = 30, warmup: int = 3,
               threads: int | None = None) -> dict:
    """{"model", "batch", "ms_per_call", "ops": [{"op", "ms", "share", "nodes"}, ...]} sorted by time."""
    import onnxruntime as ort

    from chs.runtime.artifact import INPUT_NAME
    from chs.runtime.backends.ort import OrtRunner

    path = Path(model)
    meta = OrtRunner(path, providers="cpu").meta  # validates the file and reads its input size
    if runs < 1 or batch < 1:
        raise ChsError("--runs and --batch must be at least 1")
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    x = np.zeros((batch, 3, meta.input_size, meta.input_size), np.float32)
    with tempfile.TemporaryDirectory(prefix="chs-prof-") as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
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
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= t0:
            op = e["args"]["op_name"]
            total_us[op] += e["dur"]
            nodes[op].add(e["name"])
    if not total_us:
        raise ChsError(f"ONNX Runtime recorded no kernel times for {path.name}")
    kernel_ms = sum(total_us.values()) / runs / 1e3
    ops = [{"op": op, "ms": us / runs / 1e3, "share": us / runs / 1e3 / kernel_ms, "nodes": len(nodes[op])}
           for op, us in sorted(total_us.items(), key=lambda t: -t[1])]
    wall = float(np.median([c["dur"] for c in timed])) / 1e3 if timed else float("nan")
    return {"model": path.name, "precision": meta.precision, "batch": batch, "ms_per_call": wall,
            "kernel_ms": kernel_ms, "ops": ops}


def format_profiles(profiles: list[dict], top: int = 10) -> str:
    """Markdown: one table per model, its top op types by kernel time."""
    out = []
    for p in profiles:
        out.append(f"### {p['model']} ({p['precision']}, batch {p['batch']}): {p['ms_per_call']:.2f} ms per call, "
                   f"{p['kernel_ms']:.2f} ms in kernels\n")
        out.append("| op type | ms | share | nodes |\n|---|---|---|---|")
        for o in p["ops"][:top]:
            out.append(f"| {o['op']} | {o['ms']:.2f} | {o['share'] * 100:.1f} % | {o['nodes']} |")
        out.append("")
    return "\n".join(out)


__all__ = ["format_profiles", "op_profile"]

"""Latency rows as text: speed ratios measured within one run, and the plain-text table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def _ok(rows: Iterable[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok" and r.get("kind") == "landmarks"]


def _fastest(rows: Iterable[dict]) -> dict[tuple, dict]:
    """The fastest row of each (ccr, backend, precision, batch), over its modes (ORT executors, torch modes)."""
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["ccr"], r["backend"], r["precision"], r["batch"])
        if key not in best or r["p50_ms"] < best[key]["p50_ms"]:
            best[key] = r
    return best


def speed_ratios(rows: Sequence[dict], accuracy: Sequence[dict] | None = None) -> list[dict]:
    """Ratios measured in this one run: ORT FP32 vs torch eager FP32, and INT8 vs FP32 (with ΔNME if known).

    Each side is its fastest runner in the run (e.g. ONNX Runtime's sequential or parallel executor, both timed
    with ``--ort-executor sequential,parallel``): what a user who picks the faster setting of each gets. ``noisy``:
    either side's row is flagged noisy (its passes disagree), so the ratio rests on a machine that changed mid-run."""
    ok = _ok(rows)
    best = _fastest(ok)
    torch_mode = "eager" if any(r["mode"] == "eager" for r in ok) else ""
    eager = {(r["ccr"], r["batch"]): r for r in ok if r["backend"] == "torch" and r["precision"] == "fp32"
             and r["mode"] == torch_mode}
    nme = {(a["ccr"], a["backend"], a["precision"]): a.get("nme") for a in (accuracy or []) if a.get("status") == "ok"}
    out = []
    for (k, backend, precision, b), r in best.items():
        if backend == "ort" and precision == "fp32" and (t := eager.get((k, b))):
            out.append({"what": "ort_fp32_vs_torch_eager_fp32", "ccr": k, "batch": b, "base_ms": t["p50_ms"],
                        "new_ms": r["p50_ms"], "speedup": t["p50_ms"] / r["p50_ms"], "base_runner": t.get("runner"),
                        "new_runner": r.get("runner"), "noisy": bool(t.get("noisy") or r.get("noisy"))})
        if precision == "int8" and (f := best.get((k, backend, "fp32", b))):
            n8, n32 = nme.get((k, backend, "int8")), nme.get((k, backend, "fp32"))
            out.append({"what": f"{backend}_int8_vs_fp32", "ccr": k, "batch": b, "base_ms": f["p50_ms"],
                        "new_ms": r["p50_ms"], "speedup": f["p50_ms"] / r["p50_ms"], "base_runner": f.get("runner"),
                        "new_runner": r.get("runner"), "noisy": bool(f.get("noisy") or r.get("noisy")),
                        "dnme_pt": (n8 - n32) * 100 if n8 is not None and n32 is not None else None})
    return out


def format_ratios(ratios: Sequence[dict]) -> str:
    lines = []
    for q in ratios:
        name = ("ORT FP32 vs torch eager FP32" if q["what"].startswith("ort_fp32")
                else f"{q['what'].split('_')[0].upper()} INT8 vs FP32")
        extra = f", ΔNME {q['dnme_pt']:+.3f} pt" if q.get("dnme_pt") is not None else ""
        runners = f" ({q['base_runner']} -> {q['new_runner']})" if q.get("base_runner") else ""
        noisy = "; noisy: a row's two passes differ > 10 %" if q.get("noisy") else ""
        lines.append(f"{name}, CCR {q['ccr']}, batch {q['batch']}: {q['base_ms']:.3f} -> {q['new_ms']:.3f} ms/face "
                     f"= {q['speedup']:.2f}x{extra}{runners}{noisy}")
    return "\n".join(lines)


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_latency(rows: Sequence[dict], machine: str | None = None) -> str:
    """Plain-text table (machine line on top); skipped rows show their reason."""
    head = (f"{'ccr':>3} {'GMACs':>7} {'backend':<16} {'prec':<5} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} "
            f"{'p99 ms':>9} {'faces/s':>9} {'floor ms':>9} {'eff':>6}  note")
    lines = [machine] if machine else []
    if any(r.get("timing_only") for r in rows):
        from chs.benchmarks.presets import TIMING_ONLY

        lines.append(f"landmark rows: {TIMING_ONLY}")
    lines += [head, "-" * len(head)]
    for r in rows:
        name = r["runner"] or r["backend"]
        if r.get("mode") == "cudagraph" and "graph" not in name:
            name += "-graph"
        ccr = "-" if r["ccr"] is None else str(r["ccr"])
        unit = " /image" if r["kind"] == "detector" else ""
        if r["status"] != "ok":
            lines.append(f"{ccr:>3} {_f(r.get('gmacs'), '.3f'):>7} {name:<16} {r['precision']:<5} "
                         f"{_f(r['batch'], 'd'):>5} {'skipped: ' + r['reason']}")
            continue
        note = ("noisy: passes " + "/".join(f"{p:.3f}" for p in r["p50_ms_passes"]) + " ms") if r["noisy"] else ""
        lines.append(f"{ccr:>3} {_f(r.get('gmacs'), '.3f'):>7} {name:<16} {r['precision']:<5} {r['batch']:>5} "
                     f"{r['p50_ms']:>9.3f} {r['p90_ms']:>9.3f} {r['p99_ms']:>9.3f} {r['faces_per_s']:>9.1f} "
                     f"{_f(r.get('floor_ms'), '.3f'):>9} {_f(r.get('efficiency'), '.0%'):>6}  {note}{unit}".rstrip())
    lines.append("ms per face (detector: per image), p50/p90/p99 over both passes; floor = 2 x MACs / measured "
                 "matmul peak; eff = floor / p50.")
    return "\n".join(lines)

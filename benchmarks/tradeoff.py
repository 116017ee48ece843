"""``chs-bench tradeoff``: latency joined with accuracy, as Markdown / CSV / JSON and two plots.

The plots are the analogue of the paper's Figure 14 (NME against cost): NME vs p50 latency per face and
NME vs GMACs, one labelled point per (CCR count, precision), each drawn from the fastest backend measured
for it at the smallest batch.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

from chs.runtime.errors import ChsError
from chs.runtime.files import read_json

COLUMNS = ("kind", "ccr", "gmacs", "backend", "runner", "mode", "precision", "batch", "p50_ms", "p90_ms", "p99_ms",
           "faces_per_s", "floor_ms", "efficiency", "noisy", "nme", "nme_iod", "fr_10", "auc_10", "dnme_pt",
           "status", "reason")
MARKERS = {"fp32": "o", "fp16": "s", "bf16": "D", "int8": "^"}


def join_rows(latency: Sequence[dict], accuracy: Sequence[dict]) -> list[dict]:
    """One row per latency row, with the accuracy of its (ccr, backend, precision) and ΔNME vs FP32."""
    acc = {(a["ccr"], a["backend"], a["precision"]): a for a in accuracy if a.get("status") == "ok"}
    out = []
    for r in latency:
        a = acc.get((r["ccr"], r["backend"], r["precision"]))
        row = dict(r)
        row["dnme_pt"] = None
        for k in ("nme", "nme_iod", "nme_ipd", "fr_10", "auc_10", "n"):
            row[k] = a.get(k) if a else None
        if a:
            row["accuracy_runner"] = a.get("runner")
            base = acc.get((r["ccr"], r["backend"], "fp32"))
            if base and r["precision"] != "fp32" and a.get("nme") is not None and base.get("nme") is not None:
                row["dnme_pt"] = (a["nme"] - base["nme"]) * 100
        elif r.get("status") == "ok" and r.get("kind") == "landmarks":
            miss = [x for x in accuracy if (x["ccr"], x["backend"], x["precision"]) ==
                    (r["ccr"], r["backend"], r["precision"])]
            if miss and miss[0].get("reason"):
                row["reason"] = f"accuracy: {miss[0]['reason']}"
        out.append(row)
    return out


def _cell(v: object, fmt: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else ""
    return format(v, fmt) if fmt else str(v)


def _pct(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v * 100:.2f}"


def format_markdown(rows: Sequence[dict], machine: str | None = None) -> str:
    """A Markdown table, exactly one table line per row (a header line and the machine above it)."""
    head = ["CCR", "GMACs", "backend", "precision", "batch", "p50 ms/face", "p90", "p99", "faces/s", "efficiency",
            "NME %", "FR@10 %", "AUC@10", "ΔNME pt", "note"]
    lines = []
    if machine:
        lines += [f"Machine: {machine}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        name = r.get("runner") or r["backend"]
        if r.get("mode") == "cudagraph" and "graph" not in name:
            name += "-graph"
        if r.get("kind") == "detector":
            name += " (detector, ms/image)"
        note = r.get("reason") or ""
        if r.get("noisy"):
            note = ("noisy: passes " + "/".join(f"{p:.3f}" for p in r["p50_ms_passes"]) + " ms " + note).strip()
        cells = [_cell(r.get("ccr")), _cell(r.get("gmacs"), ".3f"), name, r.get("precision") or "-",
                 _cell(r.get("batch")), _cell(r.get("p50_ms"), ".3f"), _cell(r.get("p90_ms"), ".3f"),
                 _cell(r.get("p99_ms"), ".3f"), _cell(r.get("faces_per_s"), ".1f"),
                 "-" if r.get("efficiency") is None else f"{r['efficiency'] * 100:.0f} %", _pct(r.get("nme")),
                 _pct(r.get("fr_10")), _cell(r.get("auc_10"), ".4f"), _cell(r.get("dnme_pt"), "+.3f"),
                 note.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[dict], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})


def plot_points(rows: Sequence[dict]) -> list[dict]:
    """One point per (ccr, precision): the fastest measured backend at the smallest batch, with its NME."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("kind") == "landmarks" and r.get("nme") is not None]
    if not ok:
        return []
    b0 = min(r["batch"] for r in ok)
    best: dict[tuple, dict] = {}
    for r in ok:
        if r["batch"] != b0:
            continue
        key = (r["ccr"], r["precision"])
        if key not in best or r["p50_ms"] < best[key]["p50_ms"]:
            best[key] = r
    return [best[k] for k in sorted(best)]


def write_plots(rows: Sequence[dict], out_dir: str | Path, title: str = "") -> list[Path]:
    """nme_vs_latency.png and nme_vs_gmacs.png (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = plot_points(rows)
    peer = [r for r in rows if r.get("kind") == "peer" and r.get("status") == "ok" and r.get("nme") is not None]
    precs = sorted({p["precision"] for p in pts})
    label_prec = "fp32" if "fp32" in precs else (precs[0] if precs else None)
    runners = sorted({p["runner"] for p in pts if p.get("runner")})
    batch = next((p["batch"] for p in pts if p.get("batch")), None)
    paths = []
    for fname, xkey, xlabel in (("nme_vs_latency.png", "p50_ms",
                                 f"p50 latency (ms / face; {', '.join(runners)}, batch {batch})"),
                                ("nme_vs_gmacs.png", "gmacs", "GMACs per face")):
        fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
        for prec in precs:
            sel = sorted((p for p in pts if p["precision"] == prec), key=lambda p: p["ccr"])
            ax.plot([p[xkey] for p in sel], [p["nme"] * 100 for p in sel], marker=MARKERS.get(prec, "o"),
                    linestyle="-", label=prec.upper())
            if prec == label_prec:  # one label per CCR count; the legend tells the precisions apart
                for p in sel:
                    ax.annotate(f"{p['ccr']} CCR", (p[xkey], p["nme"] * 100), textcoords="offset points",
                                xytext=(-6, -14), fontsize=8)
        if xkey == "p50_ms":
            for p in peer:
                ax.scatter([p["p50_ms"]], [p["nme"] * 100], marker="x", color="k",
                           label="dlib 68-point (own detector boxes)")
        xs = [p[xkey] for p in pts if p.get(xkey)]
        if xs and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.margins(x=0.2, y=0.15)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("NME (%)")
        ax.set_title(title or "NME vs cost (cf. paper Fig. 14)", fontsize=9)
        ax.grid(alpha=0.3)
        if pts or peer:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no rows with both latency and NME", ha="center", transform=ax.transAxes)
        fig.tight_layout()
        path = Path(out_dir) / fname
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def write_tradeoff(rows: Sequence[dict], out_dir: str | Path, machine: dict | None = None,
                   machine_text: str | None = None, command: str | None = None,
                   ratios: Sequence[dict] | None = None, extra: dict | None = None) -> dict[str, Path]:
    """table.md, table.csv, table.json, the two plots, machine.json and command.txt in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"table.md": out / "table.md", "table.csv": out / "table.csv", "table.json": out / "table.json"}
    files["table.md"].write_text(format_markdown(rows, machine_text))
    write_csv(rows, files["table.csv"])
    payload = {"machine": machine, "command": command, "rows": list(rows), "ratios": list(ratios or []),
               **(extra or {})}
    files["table.json"].write_text(json.dumps(payload, indent=2, default=str))
    for p in write_plots(rows, out):
        files[p.name] = p
    if machine is not None:
        files["machine.json"] = out / "machine.json"
        files["machine.json"].write_text(json.dumps(machine, indent=2))
    if command is not None:
        files["command.txt"] = out / "command.txt"
        files["command.txt"].write_text(command + "\n")
    return files


def _timing_key(r: dict) -> tuple:
    return (r.get("kind"), r.get("ccr"), r.get("backend"), r.get("precision") or "", r.get("batch"),
            r.get("mode") or "")


def load_previous_rows(path: str | Path) -> list[dict]:
    """Rows of an earlier ``chs-bench tradeoff`` (table.json) or ``chs-bench latency --out`` (latency.json)."""
    p = Path(path)
    if p.is_dir():
        p = p / "table.json" if (p / "table.json").is_file() else p / "latency.json"
    payload = read_json(p, "--compare file")
    rows = payload.get("rows") if isinstance(payload, dict) else payload
    if not isinstance(rows, list):
        raise ChsError(f"--compare: {p} is not a chs-bench table.json or latency.json")
    return [r for r in rows if isinstance(r, dict)]


def compare_runs(rows: Sequence[dict], previous: Sequence[dict], threshold: float = 0.10) -> dict:
    """p50 of every timed row against the same row (same CCR, backend, precision, batch, mode) of an earlier
    run: the run-to-run check that one run's two passes cannot give (slow drifts of a shared machine)."""
    before = {_timing_key(r): r for r in previous if r.get("p50_ms")}
    out = []
    for r in rows:
        old = before.get(_timing_key(r))
        if not r.get("p50_ms") or old is None:
            continue
        change = r["p50_ms"] / old["p50_ms"] - 1
        out.append({"ccr": r.get("ccr"), "backend": r.get("runner") or r.get("backend"),
                    "precision": r.get("precision") or "", "batch": r.get("batch"), "p50_ms": r["p50_ms"],
                    "previous_p50_ms": old["p50_ms"], "change": change, "within": abs(change) <= threshold})
    return {"threshold": threshold, "compared": len(out), "within": sum(c["within"] for c in out), "rows": out}


def format_comparison(cmp: dict, source: str) -> str:
    """Markdown: how many rows agree with the earlier run, and the ones that do not."""
    pct = f"{cmp['threshold'] * 100:.0f} %"
    lines = [f"Run-to-run against {source}: {cmp['within']} of {cmp['compared']} timed rows within {pct} at p50."]
    off = [c for c in cmp["rows"] if not c["within"]]
    if off:
        lines += ["", "| CCR | backend | precision | batch | p50 ms/face | earlier | change |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {_cell(c['ccr'])} | {c['backend']} | {c['precision'] or '-'} | {_cell(c['batch'])} | "
                  f"{c['p50_ms']:.3f} | {c['previous_p50_ms']:.3f} | {c['change'] * 100:+.0f} % |" for c in off]
    return "\n".join(lines) + "\n"

"""The paper's Table 9 (params / FLOPs of AWing and CHS with 0, 1, 2, 4 CCR stages), measured."""

from __future__ import annotations

from chs.model.config import get_preset

PAPER_PRESET = "wflw"  # the paper's Table 9 figures are for WFLW (98 points); the default row set
# (row name, preset, CCR stages, paper params (M), paper GFLOPs (= GMACs, thop convention))
PAPER_TABLE9 = (
    ("AWing 4HG", "awing", 0, 24.15, 26.79),
    ("CHS 4->0 CCR", None, 0, 24.15, 26.80),
    ("CHS 4->1 CCR", None, 1, 56.62, 30.52),
    ("CHS 4->2 CCR", None, 2, 89.09, 34.25),
    ("CHS 4 CCR", None, 4, 154.04, 41.69),
)


def complexity_rows(preset: str = PAPER_PRESET) -> list[dict]:
    """One row per Table 9 model; paper figures are for WFLW (98 points) and only shown for that preset."""
    import torch  # here, not at import: chs-bench reads PAPER_PRESET when it starts

    from chs.model.chs import build_model
    from chs.model.complexity import count_complexity

    rows = []
    for name, row_preset, k, paper_p, paper_m in PAPER_TABLE9:
        if row_preset == "awing":
            base = get_preset("awing")
            if preset != PAPER_PRESET:
                src = get_preset(preset)
                base = base.replace(num_points=src.num_points, scheme=src.scheme, input_size=src.input_size)
            cfg = base
        else:
            cfg = get_preset(preset, ccr_stages=k)
        with torch.device("meta"):  # shapes only: no weights allocated or initialised
            model = build_model(cfg)
        c = count_complexity(model, cfg.input_size)
        rows.append({"name": name, "preset": preset, "ccr": k, "params": c.params, "macs": c.macs,
                     "paper_params": paper_p * 1e6 if preset == PAPER_PRESET else None,
                     "paper_macs": paper_m * 1e9 if preset == PAPER_PRESET else None})
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'model':<14} {'params (M)':>11} {'paper':>8} {'diff':>8} {'GMACs':>8} {'paper':>8} {'diff':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        pp, pm = r["paper_params"], r["paper_macs"]
        dp = f"{(r['params'] - pp) / pp * 100:+.3f}%" if pp else "-"
        dm = f"{(r['macs'] - pm) / pm * 100:+.3f}%" if pm else "-"
        lines.append(f"{r['name']:<14} {r['params'] / 1e6:>11.4f} {pp / 1e6 if pp else float('nan'):>8.2f} {dp:>8} "
                     f"{r['macs'] / 1e9:>8.3f} {pm / 1e9 if pm else float('nan'):>8.2f} {dm:>8}")
    lines.append("MACs counted as the paper did (thop 0.0.31): conv MACs + bias, BN 2/element, bilinear "
                 "upsample 11/element, functional ops free.")
    return "\n".join(lines)

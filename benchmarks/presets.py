"""Timing-only checkpoints: the paper's configurations with random weights, for ``chs-bench latency --preset``.

The paper-size presets (``300w``, ``wflw``: 4 hourglass stacks, 256 px, up to 4 CCR stages) have no trained
weights here, but their latency does not depend on the weights. Their rows are marked timing only: no
accuracy, and the export's parity gate is reported but not enforced (random weights have no meaningful
INT8 error), with a tiny calibration set (the bundled demo image) because ranges do not change the time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from chs.runtime.errors import ChsError

DEMO = Path(__file__).resolve().parent.parent / "runtime" / "assets" / "demo"
TIMING_ONLY = "timing only, no accuracy (random weights)"
TIMING_CALIB = str(DEMO)  # a plain image folder: enough for ranges when only the time matters
TIMING_CALIB_IMAGES = 8
STAMP = "preset.json"


def preset_checkpoint(preset: str, root: str | os.PathLike, seed: int = 0) -> Path:
    """A random-weights checkpoint of ``preset`` in ``root/preset-<name>-seed<seed>`` (reused when there)."""
    from chs.model.config import get_preset

    cfg = get_preset(preset)  # one-line error for an unknown preset
    out = Path(root) / f"preset-{cfg.name}-seed{seed}"
    stamp = {"preset": cfg.name, "seed": seed, "config": cfg.to_dict()}
    try:
        if json.loads((out / STAMP).read_text()) == stamp:
            return out
    except (OSError, ValueError):
        pass
    import torch

    from chs.model.checkpoint import save_checkpoint
    from chs.model.chs import build_model

    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    try:
        save_checkpoint(model, out, info={"random_weights": True, "note": TIMING_ONLY})
    except OSError as e:
        raise ChsError(f"cannot write the {preset} timing checkpoint to {out}: {e}") from None
    (out / STAMP).write_text(json.dumps(stamp, indent=2))
    return out


__all__ = ["TIMING_CALIB", "TIMING_CALIB_IMAGES", "TIMING_ONLY", "preset_checkpoint"]

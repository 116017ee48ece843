"""Release script: package a trained checkpoint as the bundled default model
(``python scripts/package_default.py RUN/best``).

Writes ``runtime/assets/default/``: ``model.safetensors`` + ``config.json`` (for chs-eval / chs-export)
and ``model.onnx`` (FP32, all trained CCR stages, for the torch-free runtime), the ONNX passing the same
parity gate as ``chs-export``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from chs.export.pipeline import ExportOptions, run_export
from chs.model.checkpoint import CONFIG, load_checkpoint, save_checkpoint
from chs.runtime.assets import DEFAULT_DIR


def package_default(checkpoint: str | Path, dest: Path | None = None) -> Path:
    dest = dest or DEFAULT_DIR
    src = Path(checkpoint)
    info = json.loads((src / CONFIG).read_text()).get("info", {})
    keep = {k: info[k] for k in ("epoch", "val", "options", "history") if k in info}
    model = load_checkpoint(src)
    save_checkpoint(model, dest, info={"packaged_from": str(src), **keep})
    with tempfile.TemporaryDirectory() as tmp:
        run_export(ExportOptions(model=str(dest), out=str(Path(tmp) / "e"), engine="never"))
        shutil.copy(Path(tmp) / "e" / "model_fp32.onnx", dest / "model.onnx")
    return dest


if __name__ == "__main__":
    print(package_default(sys.argv[1]))

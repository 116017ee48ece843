"""``chs-export``'s options: their one home, with their defaults (the CLI reads them from here). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from chs.runtime.errors import ChsError


@dataclass
class ExportOptions:
    model: str
    out: str
    ccr: int | None = None
    fp16: bool = False
    int8: bool = False
    calib: str | None = None
    calib_method: str = "minmax"
    calib_images: int = 256
    parity_data: str | None = None
    batch: tuple[int, int, int] = (1, 8, 32)
    opset: int = 18
    engine: str = "auto"  # auto | always | never
    triton: str | None = None
    triton_backend: str = "onnxruntime"  # onnxruntime | python | tensorrt (see chs.export.triton)
    time_int8: bool = True
    gate_faces: int = 128  # faces held out from a calibration set for the gate (never calibrated on)
    gate: bool = True  # False: timing-only exports (random weights): parity is reported, never enforced
    golden_faces: int = 16  # crops written as golden inputs/outputs for a later engine check
    if_exists: str = "refuse"  # an existing non-empty out: refuse | replace (a previous export) | merge

    def __post_init__(self) -> None:
        from chs.export.options_checks import check_export_options

        check_export_options(self)  # option values before any work (they once failed after 18 s of it)


def parse_batch(text: str) -> tuple[int, int, int]:
    try:
        lo, opt, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise ChsError(f"--batch must be MIN:OPT:MAX (e.g. 1:8:32), got '{text}'") from None
    if not 1 <= lo <= opt <= hi:
        raise ChsError(f"--batch needs 1 <= MIN <= OPT <= MAX, got {text}")
    return lo, opt, hi

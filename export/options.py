"""``chs-export``'s options: their one home, with their defaults (the CLI reads them from here). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chs.runtime.errors import ChsError
from chs.runtime.options import option


def cache_dir(name: str) -> Path:
    """``~/.cache/chs/<name>``: the one root of what chs keeps between runs (calibration ranges, bench exports)."""
    return Path.home() / ".cache" / "chs" / name


# what the export writes for a given checkpoint and options, as a number: bumped whenever a file's content changes
# (2: the u8s8 file starts from the BatchNorm-folded graph), so a cache of exported files is never reused across it
EXPORT_FORM = 2

BATCH_PROFILE = (1, 8, 32)  # TensorRT optimisation profile (min, opt, max): chs-export's and BuildOptions' default


def check_batch_profile(batch: object, option: str = "batch") -> tuple[int, int, int]:
    """The one check of a TensorRT batch profile (min, opt, max), for chs-export and the engine builder."""
    try:
        b = tuple(int(v) for v in batch)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ChsError(f"{option} must be three integers MIN:OPT:MAX, got {batch!r}") from None
    if len(b) != 3 or not 1 <= b[0] <= b[1] <= b[2]:
        raise ChsError(f"{option} needs 1 <= MIN <= OPT <= MAX, got {':'.join(map(str, b))}")
    return b  # type: ignore[return-value]


def parse_batch(text: str) -> tuple[int, int, int]:
    """``--batch MIN:OPT:MAX`` as typed."""
    try:
        values = tuple(int(v) for v in text.split(":"))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ChsError(f"--batch must be MIN:OPT:MAX (e.g. {':'.join(map(str, BATCH_PROFILE))}), got '{text}'")
    return check_batch_profile(values, "--batch")


@dataclass
class ExportOptions:
    model: str = option(help="Checkpoint folder or 'default' (the bundled model).")
    out: str = option("export", "Output folder.")
    ccr: int | None = option(None, "Keep the first K CCR stages (default: all trained).")
    fp16: bool = option(False, "Also write an FP16 ONNX (coordinates kept FP32).", flag="--fp16")
    int8: bool = option(False, "Also write INT8 Q/DQ ONNX files (needs --calib).", flag="--int8")
    calib: str | None = option(None, "Calibration images: a face folder or a dataset split.")
    calib_method: str = option("minmax", "minmax, entropy or percentile.")
    calib_images: int = option(256, "Calibration images used at most.")
    parity_data: str | None = option(None, "Annotated faces for the parity gate (default: the bundled demo face).")
    batch: tuple[int, int, int] = option(BATCH_PROFILE, "TensorRT optimisation profile MIN:OPT:MAX.",
                                         parse=parse_batch, show=lambda b: ":".join(map(str, b)))
    opset: int = option(18, "ONNX opset.")
    engine: str = option("auto", "auto (if TensorRT + GPU), always, never.")
    triton: str | None = option(None, "Also write a Triton model repository with this name.")
    triton_backend: str = option("onnxruntime", "Triton backend: onnxruntime, python (what chs-serve's binary "
                                 "runs) or tensorrt.")
    time_int8: bool = True
    gate_faces: int = 128  # faces held out from a calibration set for the gate (never calibrated on)
    gate: bool = True  # False: timing-only exports (random weights): parity is reported, never enforced
    golden_faces: int = 16  # crops written as golden inputs/outputs for a later engine check
    if_exists: str = "refuse"  # an existing non-empty out: refuse | replace (a previous export) | merge

    def __post_init__(self) -> None:
        from chs.export.options_checks import check_export_options

        check_export_options(self)  # option values before any work (they once failed after 18 s of it)

"""``chs-export`` option checks that run before any export work (they once came after 18 s of it), and the
rule for an output folder that already exists."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from chs.runtime.errors import ChsError
from chs.runtime.files import check_output_dir
from chs.runtime.options import whole_number

IF_EXISTS = ("refuse", "replace", "merge")


def check_export_options(o: Any) -> None:
    """Values only (no file system): ChsError naming the first bad option (o: an ExportOptions)."""
    from chs.calibration.calibrate import METHODS
    from chs.export.options import check_batch_profile
    from chs.export.triton import check_model_name

    if o.engine not in ("auto", "always", "never"):
        raise ChsError(f"--engine must be auto, always or never, got '{o.engine}'")
    if o.int8 and not o.calib:
        raise ChsError("--int8 needs --calib DATA (a folder of face images or a dataset split)")
    if o.calib_method not in METHODS:
        raise ChsError(f"--calib-method must be one of {', '.join(METHODS)}, got '{o.calib_method}'")
    whole_number(o.calib_images, "--calib-images", 1)
    if not o.int8:  # calibration options would be ignored: an FP32-only export that looked like an INT8 one
        for f in fields(o):
            if f.name in ("calib", "calib_method", "calib_images") and getattr(o, f.name) != f.default:
                flag = "--" + f.name.replace("_", "-")
                raise ChsError(f"{flag} is only used by --int8 (the INT8 calibration): add --int8 or drop {flag}")
    if o.ccr is not None:
        whole_number(o.ccr, "--ccr", 0)
    check_batch_profile(o.batch, "--batch")  # library callers pass a tuple the command line's parser never saw
    if o.triton is not None:
        check_model_name(o.triton)
        from chs.export.triton import BACKENDS

        if o.triton_backend not in BACKENDS:
            raise ChsError(f"--triton-backend must be one of {', '.join(BACKENDS)}, got '{o.triton_backend}'")
        if o.triton_backend == "tensorrt" and o.engine == "never":
            raise ChsError("--triton-backend tensorrt serves the TensorRT engine: drop --engine never")
    if o.if_exists not in IF_EXISTS:
        raise ChsError(f"if_exists must be one of {', '.join(IF_EXISTS)}, got '{o.if_exists}'")


def check_export_paths(o: Any) -> Path:
    """Inputs that must exist and the output folder, before the model is even loaded.

    An existing non-empty ``--out`` is refused (``if_exists='refuse'``), or replaced whole when it holds a
    previous export (``'replace'``, ``--force``): never a mix of old and new files. ``'merge'`` (library
    callers that add precisions to a cache folder) moves the new files in beside the old ones.
    """
    for option, value in (("--calib", o.calib if o.int8 else None), ("--parity-data", o.parity_data)):
        if value is not None and not Path(value).exists():
            raise ChsError(f"{option} {value} not found")
    out = check_output_dir(o.out)
    _refuse_out_holding_inputs(o, out)
    if out.is_dir() and any(out.iterdir()):
        if o.if_exists == "refuse":
            raise ChsError(f"--out {out} is not empty: pass --force to replace it, or choose a new folder")
        if o.if_exists == "replace" and not (out / "report.json").is_file():
            raise ChsError(f"--out {out} holds files that are not a chs export (no report.json): not replacing it")
    return out


def _refuse_out_holding_inputs(o: Any, out: Path) -> None:
    """An ``--out`` that is, or contains, an input would be replaced (``--force``) or merged into with the
    input gone or mixed with the export: refuse it before any work."""
    from chs.runtime.assets import resolve_model_path

    target = out.resolve()
    for option, value in (("model", resolve_model_path(o.model)), ("--calib", o.calib),
                          ("--parity-data", o.parity_data)):
        if value is None:
            continue
        src = Path(value).resolve()
        if src == target or target in src.parents:
            raise ChsError(f"--out {out} holds the {option} {value}: choose an output folder outside the inputs")


__all__ = ["IF_EXISTS", "check_export_options", "check_export_paths"]

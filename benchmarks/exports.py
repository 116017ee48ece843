"""The ONNX files a benchmark runs: exported once per CCR count into ``work_dir/ccr{k}/`` and reused.

Files are made with :func:`chs.export.pipeline.run_export` (the same parity gate as ``chs-export``) and
reused while the checkpoint (and calibration source) is unchanged; a failed FP16/INT8 step falls back to
an FP32 export and its reason becomes the skipped rows' reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from chs.benchmarks.request import Log, quiet
from chs.runtime.assets import resolve_model_path
from chs.runtime.errors import ChsError, first_line

SOURCE_STAMP = "bench_source.json"
ONNX_FILES = {"fp32": "model_fp32.onnx", "fp16": "model_fp16.onnx", "int8-u8s8": "model_int8_u8s8.onnx",
              "int8-s8s8": "model_int8_s8s8.onnx"}


def _stamp(model: str | os.PathLike, ccr: int, calib: str | None) -> dict:
    from chs.model.checkpoint import WEIGHTS

    path = resolve_model_path(model).resolve()
    st = (path / WEIGHTS).stat()
    return {"model": str(path), "weights_size": st.st_size, "weights_mtime_ns": st.st_mtime_ns, "ccr": ccr,
            "calib": str(Path(calib).resolve()) if calib else None}


def ensure_exports(model: str | os.PathLike, ccr: int, work_dir: str | os.PathLike, precisions: Iterable[str],
                   calib: str | None = None, log: Log = quiet, parity_data: str | None = None
                   ) -> dict[str, Path | str]:
    """ONNX files of one CCR count in ``work_dir/ccr{k}``: {key: path, or the reason it is missing}.

    Keys: fp32, fp16, int8-u8s8, int8-s8s8. Files are reused while the checkpoint and calibration source are
    unchanged (``bench_source.json``); ``parity_data`` (annotated faces) makes the export's parity gate
    measure ΔNME instead of bounding it on the demo face; a failed FP16/INT8 step (e.g. its parity gate)
    falls back to an FP32 export and the failure is remembered, not retried."""
    from chs.export.pipeline import ExportOptions, run_export

    want = set(precisions)
    out = Path(work_dir) / f"ccr{ccr}"
    stamp = _stamp(model, ccr, calib)
    stamp_file = out / SOURCE_STAMP
    old = json.loads(stamp_file.read_text()) if stamp_file.is_file() else None
    failed: dict[str, str] = {}
    if old and old.get("source") == stamp:
        failed = dict(old.get("failed", {}))
    elif out.exists():  # another model or calibration set: never reuse its files
        for name in ONNX_FILES.values():
            (out / name).unlink(missing_ok=True)
        stamp_file.unlink(missing_ok=True)

    result: dict[str, Path | str] = {}
    need_fp16 = "fp16" in want and "fp16" not in failed and not (out / ONNX_FILES["fp16"]).is_file()
    need_int8 = "int8" in want and calib is not None and "int8" not in failed and not all(
        (out / ONNX_FILES[k]).is_file() for k in ("int8-u8s8", "int8-s8s8"))
    need_fp32 = not (out / ONNX_FILES["fp32"]).is_file()

    def export(fp16: bool, int8: bool) -> None:
        what = "+".join(["fp32"] + (["fp16"] if fp16 else []) + (["int8"] if int8 else []))
        log(f"exporting CCR {ccr} ({what}) into {out}")
        opts = ExportOptions(model=str(model), out=str(out), ccr=ccr, fp16=fp16, int8=int8, calib=calib,
                             parity_data=parity_data, engine="never", time_int8=False)
        with contextlib.redirect_stdout(sys.stderr):  # exporters print; keep stdout for --json
            run_export(opts, log=log)

    if need_fp32 or need_fp16 or need_int8:
        try:
            export(need_fp16, need_int8)
        except ChsError as e:
            if not (need_fp16 or need_int8):
                raise
            reason = f"export failed: {first_line(e, 1000)}"
            for p, needed in (("fp16", need_fp16), ("int8", need_int8)):
                if needed:
                    failed[p] = reason
            log(f"CCR {ccr}: {reason}; exporting FP32 only")
            if not (out / ONNX_FILES["fp32"]).is_file():
                export(False, False)
        out.mkdir(parents=True, exist_ok=True)
        stamp_file.write_text(json.dumps({"source": stamp, "failed": failed}, indent=2))

    for key, name in ONNX_FILES.items():
        prec = key.split("-")[0]
        if (out / name).is_file():
            result[key] = out / name
        elif prec == "int8" and calib is None:
            result[key] = "int8 needs calibration data (--calib DATA)"
        elif prec in failed:
            result[key] = failed[prec]
        else:
            result[key] = f"{name} was not exported"
    return result

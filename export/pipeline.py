"""``chs-export``: checkpoint -> pruned model -> ONNX (FP32, FP16, INT8 Q/DQ) -> parity gate -> engine.

Everything is written to a temporary folder beside ``out`` and moved into place only when every step
passed, so a failed export leaves no partial files.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from chs import __version__
from chs.export.golden import write_golden
from chs.export.onnx_export import count_ops, export_onnx, simplify
from chs.export.options import ExportOptions, cache_dir
from chs.export.options_checks import check_export_options, check_export_paths
from chs.export.parity import CRITERIA, compare, held_out_crops, judge, parity_crops
from chs.model.checkpoint import load_checkpoint, resolve_model_path
from chs.model.runner import TorchRunner, model_meta
from chs.runtime.backends.ort import OrtRunner
from chs.runtime.errors import ChsError
from chs.runtime.files import replace_dir
from chs.runtime.timing import time_calls


def _versions() -> dict:
    return {"chs": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": ort.__version__, "python": platform.python_version()}


def _int8_speed(fp32: Path, int8: Path, crops: np.ndarray, log) -> dict:
    """INT8 (u8s8) vs FP32 on ONNX Runtime CPU at batch 1 and 8 (and 8 split over two single-thread sessions).

    The two files' calls alternate in rounds, so both see the same machine state (timed one after the other,
    whichever file ran first absorbed what the machine was doing: batch 8 read 1.37x in one export, 1.93x
    in another)."""
    speed = {}
    for batch, sessions in ((1, 1), (8, 1), (8, 2)):
        runners = [OrtRunner(f, providers="cpu", sessions=sessions) for f in (fp32, int8)]
        x = np.ascontiguousarray(np.resize(crops, (batch, *crops.shape[1:])))
        rounds: list[list[float]] = [[], []]
        for _ in range(5):
            for r, out in zip(runners, rounds, strict=True):
                calls = time_calls(lambda r=r, x=x: r.infer(x), repeats=12 // batch + 3, warmup=1)
                out.append(float(np.median(calls)))
        f, q = (1e3 * float(np.median(t)) / batch for t in rounds)
        how = f"batch {batch}" + (f" over {sessions} single-thread sessions" if sessions > 1 else "")
        speed[how] = {"fp32_ms": f, "int8_u8s8_ms": q, "speedup": f / q}
        log(f"ONNX Runtime CPU, {how}: FP32 {f:.2f} ms/face, INT8 (u8s8) {q:.2f} ms/face -> {f / q:.2f}x")
        for r in runners:
            r.close()
    return speed


def run_export(opts: ExportOptions, log=print) -> dict:
    """Run every step; returns the report (also written as report.json)."""
    check_export_options(opts)
    out = check_export_paths(opts)
    needs_engine = "--engine always" if opts.engine == "always" else (
        "--triton-backend tensorrt" if opts.triton and opts.triton_backend == "tensorrt" else None)
    if needs_engine:  # before the work, not after it (the Triton step found out at the very end)
        from chs.export.tensorrt import tensorrt_available

        ok, why = tensorrt_available()
        if not ok:
            raise ChsError(f"{needs_engine}: {why}")
    model = load_checkpoint(resolve_model_path(opts.model), ccr=opts.ccr)
    k = model.cfg.ccr_stages
    meta = dataclasses.replace(model_meta(model), versions=_versions())
    *parity, calib_crops = _gate_and_calibration_crops(opts, meta)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        report = _export_into(tmp, opts, model, meta, parity, calib_crops, log)
        if opts.if_exists == "merge" and out.is_dir():
            for f in tmp.iterdir():
                dest = out / f.name
                if dest.is_dir():
                    shutil.rmtree(dest)
                shutil.move(str(f), dest)
        else:
            replace_dir(tmp, out)  # the whole folder at once: no old file survives beside new ones
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["out"] = str(out)
    log(f"wrote {out} (CCR stages: {k})")
    return report


def _gate_and_calibration_crops(opts: ExportOptions, meta) -> tuple:
    """(gate crops, their ground truth or None, description, calibration crops or None).

    An INT8 export without ``parity_data`` (or with the calibration set itself as parity data) holds
    faces out of the calibration set for the gate: with labels the gate measures ΔNME on them, without
    labels the landmark shift. Sets too small to split fall back to the bundled demo face."""
    if not opts.int8:
        return (*parity_crops(meta, opts.parity_data), None)
    from chs.calibration.data import HeldOut, calibration_items, crops_from_items, split_held_out

    items, labelled = calibration_items(opts.calib)
    same = bool(opts.parity_data) and Path(opts.parity_data).resolve() == Path(opts.calib).resolve()
    if opts.parity_data and not same:
        held = HeldOut(items, [], "none")
    else:
        held = split_held_out(items, opts.gate_faces)
    calib_crops = crops_from_items(held.calib, meta, opts.calib_images, source=str(opts.calib))
    if held.gate:
        return (*held_out_crops(held.gate, labelled, meta, str(opts.calib), held.by), calib_crops)
    return (*parity_crops(meta, None if same else opts.parity_data), calib_crops)


def _export_into(tmp: Path, opts: ExportOptions, model, meta, parity: tuple, calib_crops, log) -> dict:
    crops, gt, parity_source = parity  # real face crops, their ground truth (or None), a description
    k = model.cfg.ccr_stages
    torch_out = TorchRunner(model).infer(crops)
    reference = torch_out["landmarks"]
    files: dict[str, Path] = {}

    # FP32 ONNX, checked and simplified; the simplified graph must give the same landmarks
    raw = tmp / "model_fp32.raw.onnx"
    export_onnx(model, raw, opset=opts.opset, meta=meta)
    raw_out = OrtRunner(raw, providers="cpu").infer(crops)["landmarks"]
    simplified = simplify(onnx.load(str(raw)), crops[:1])
    onnx.checker.check_model(simplified, full_check=True)
    fp32 = tmp / "model_fp32.onnx"
    onnx.save(simplified, str(fp32))
    raw.unlink()
    simp_out = OrtRunner(fp32, providers="cpu").infer(crops)["landmarks"]
    if np.abs(simp_out - raw_out).max() > 1e-4:
        raise ChsError(f"onnxsim changed the outputs (max {np.abs(simp_out - raw_out).max():.2e} px): not written")
    files["fp32"] = fp32
    roi_nodes = count_ops(simplified, "RoiAlign")
    if roi_nodes != k:
        raise ChsError(f"exported graph has {roi_nodes} RoiAlign nodes for {k} CCR stages")

    extra: dict = {}
    if opts.fp16:
        from chs.export.fp16 import fp16_range_scan, require_fp16_safe, to_fp16

        scan_crops = crops if calib_crops is None else np.concatenate([crops, calib_crops[:64]])
        scan = fp16_range_scan(fp32, scan_crops)
        require_fp16_safe(scan)
        extra["fp16_range_scan"] = {"n_crops": scan["n_crops"], "worst": scan["worst"][:5],
                                    "near_overflow": scan["near_overflow"]}
        path = tmp / "model_fp16.onnx"
        onnx.save(to_fp16(fp32), str(path))
        files["fp16"] = path
    if opts.int8:
        from chs.calibration.calibrate import calibrate
        from chs.calibration.quantize import quantize_int8, quantize_u8s8_folded

        ranges = calibrate(fp32, calib_crops, opts.calib_method, cache_dir=cache_dir("calibration"))
        log(f"calibration ({opts.calib_method}, {len(calib_crops)} crops): "
            f"{'cache hit' if getattr(ranges, 'cache_hit', False) else 'computed'}")
        path = tmp / "model_int8_s8s8.onnx"
        quantize_int8(fp32, path, ranges, "s8s8")
        files["int8-s8s8"] = path
        path = tmp / "model_int8_u8s8.onnx"
        quantize_u8s8_folded(fp32, path, calib_crops, opts.calib_method, cache_dir=cache_dir("calibration"))
        files["int8-u8s8"] = path
        extra["calibration"] = {"source": opts.calib, "method": opts.calib_method, "crops": len(calib_crops),
                                "cache_hit": bool(getattr(ranges, "cache_hit", False))}

    # parity gate: every file on the same real crops, against PyTorch
    rows, failures = [], []
    for precision, path in files.items():
        got = OrtRunner(path, providers="cpu").infer(crops)["landmarks"]
        row = {"file": path.name, "precision": precision, "backend": "onnxruntime-cpu", **compare(
            reference, got, meta.scheme, gt)}
        row.update(judge(precision, row), enforced=opts.gate)
        rows.append(row)
        if not row["passed"]:
            failures.append(f"{path.name}: {row['gate']}")
    _print_table(rows, parity_source, log)
    if failures and opts.gate:
        raise ChsError("parity gate failed: " + "; ".join(failures))
    if failures:
        log("parity gate not enforced (timing only, no accuracy): " + "; ".join(failures))

    if opts.int8 and opts.time_int8:
        extra["int8_speed_cpu"] = _int8_speed(files["fp32"], files["int8-u8s8"], crops, log)

    g = opts.golden_faces
    golden = write_golden(tmp, crops[:g], {"landmarks": reference[:g], "scores": torch_out["scores"][:g]}, "torch")
    engine = _engine_step(tmp, opts, files, meta, log)
    if opts.triton:
        from chs.export.triton import TritonModelSettings, write_triton_repository

        settings = TritonModelSettings.up_to(opts.batch[2])
        if opts.triton_backend == "tensorrt":
            if not engine.get("built"):
                raise ChsError(f"--triton-backend tensorrt needs the TensorRT engine: {engine.get('reason')}")
            served, src = engine["precision"], tmp / "model.engine"
            write_triton_repository(tmp / "triton", opts.triton, engine_path=src, settings=settings,
                                    meta=dataclasses.replace(meta, precision=served))
        else:  # the python backend runs ONNX Runtime on CPU, where FP32 is the fast file
            served = "fp16" if opts.triton_backend == "onnxruntime" and "fp16" in files else "fp32"
            src = files[served]
            write_triton_repository(tmp / "triton", opts.triton, onnx_path=src, settings=settings,
                                    meta=dataclasses.replace(meta, precision=served), backend=opts.triton_backend)
        extra["triton"] = {"name": opts.triton, "backend": opts.triton_backend, "serves": src.name,
                           "precision": served}
    report = {
        "model": str(opts.model), "ccr": k, "meta": meta.to_dict(), "parity_data": parity_source,
        "parity_gate": {"faces": int(len(crops)), "source": parity_source, "enforced": opts.gate,
                        "criteria": sorted({r["criterion"] for r in rows}),
                        "labelled": gt is not None},
        "parity": rows, "files": {p: f.name for p, f in files.items()}, "golden": golden, "engine": engine,
        "roi_align_nodes": k, **extra,
    }
    (tmp / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=float))
    return report


def _engine_step(tmp: Path, opts: ExportOptions, files: dict[str, Path], meta, log) -> dict:
    if opts.engine == "never":
        return {"built": False, "reason": "--engine never"}
    from chs.export.tensorrt import build_engine_subprocess, tensorrt_available

    ok, why = tensorrt_available()
    if not ok:
        log(f"engine step skipped: {why}; golden inputs/outputs written for `polygraphy run --trt` on a GPU machine")
        return {"built": False, "reason": why}
    precision = "int8-s8s8" if "int8-s8s8" in files else ("fp16" if "fp16" in files else "fp32")
    engine_path = tmp / "model.engine"
    sidecar = build_engine_subprocess(files[precision], engine_path, batch=opts.batch,
                                      meta=dataclasses.replace(meta, precision=precision),
                                      timing_cache=tmp / "timing.cache")
    log(f"built TensorRT engine {engine_path.name} from {files[precision].name}")
    return {"built": True, "precision": precision, "sidecar": sidecar}


def _print_table(rows: list[dict], source: str, log) -> None:
    log(f"parity vs PyTorch on {source}:")
    log(f"  {'file':<26} {'max px':>9} {'mean px':>9} {'shift %IOD':>10} {'ΔNME pt':>9}  gate")
    for r in rows:
        dnme = f"{r['dnme_pt']:>+9.4f}" if "dnme_pt" in r else f"{'-':>9}"
        verdict = ("PASS" if r["passed"] else "FAIL") if r.get("enforced", True) else "n/a "
        log(f"  {r['file']:<26} {r['max_px']:>9.4f} {r['mean_px']:>9.4f} {r['shift_pt']:>10.4f} {dnme}  "
            f"{verdict}  ({r['gate']})")
    for key in dict.fromkeys(r["criterion"] for r in rows):
        log(f"  {key}: {CRITERIA[key]}")

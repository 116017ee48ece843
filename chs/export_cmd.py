"""``chs-export``: prune, export, convert precision, check parity, build engines."""

from __future__ import annotations

from typing import Annotated

import typer

from chs.errors_cli import one_line_errors
from chs.export.options import ExportOptions, parse_batch

D = ExportOptions  # the option defaults: ExportOptions' field defaults
BATCH = ":".join(map(str, D.batch))


@one_line_errors
def export(
    model: Annotated[str, typer.Argument(help="Checkpoint folder or 'default' (the bundled model).")],
    ccr: Annotated[int | None, typer.Option(help="Keep the first K CCR stages (default: all trained).")] = D.ccr,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write an FP16 ONNX (coordinates kept FP32).")] = D.fp16,
    int8: Annotated[bool, typer.Option("--int8", help="Also write INT8 Q/DQ ONNX files (needs --calib).")] = D.int8,
    calib: Annotated[str | None, typer.Option(help="Calibration images: a face folder or a dataset split.")] = D.calib,
    calib_method: Annotated[str, typer.Option(help="minmax, entropy or percentile.")] = D.calib_method,
    calib_images: int = D.calib_images,
    parity_data: Annotated[str | None, typer.Option(
        help="Annotated faces for the parity gate (default: the bundled demo face).")] = D.parity_data,
    batch: Annotated[str, typer.Option(help="TensorRT optimisation profile MIN:OPT:MAX.")] = BATCH,
    opset: int = D.opset,
    out: Annotated[str, typer.Option(help="Output folder.")] = "export",
    engine: Annotated[str, typer.Option(help="auto (if TensorRT + GPU), always, never.")] = D.engine,
    triton: Annotated[str | None, typer.Option(help="Also write a Triton model repository with this name.")] = D.triton,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing export in --out (whole, at the end; "
                                        "without it a non-empty --out is refused).")] = False,
    triton_backend: Annotated[str, typer.Option(
        help="Triton backend: onnxruntime, python (what chs-serve's binary runs) or tensorrt.")] = D.triton_backend,
) -> None:
    """Export a CHS checkpoint for deployment, refusing any file that drifts from PyTorch."""
    from chs.export.pipeline import run_export

    run_export(ExportOptions(model=model, out=out, ccr=ccr, fp16=fp16, int8=int8, calib=calib,
                             calib_method=calib_method, calib_images=calib_images, parity_data=parity_data,
                             batch=parse_batch(batch), opset=opset, engine=engine, triton=triton,
                             if_exists="replace" if force else "refuse", triton_backend=triton_backend),
               log=typer.echo)

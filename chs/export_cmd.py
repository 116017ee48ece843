"""``chs-export``: prune, export, convert precision, check parity, build engines."""

from __future__ import annotations

from typing import Annotated

import typer

from chs.errors_cli import one_line_errors
from chs.export.options import ExportOptions, parse_batch
from chs.options import default


def _d(name: str):
    return default(ExportOptions, name)


@one_line_errors
def export(
    model: Annotated[str, typer.Argument(help="Checkpoint folder or 'default' (the bundled model).")],
    ccr: Annotated[int | None, typer.Option(help="Keep the first K CCR stages (default: all trained).")] = _d("ccr"),
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write an FP16 ONNX (coordinates kept FP32).")] = _d("fp16"),
    int8: Annotated[bool, typer.Option("--int8", help="Also write INT8 Q/DQ ONNX files (needs --calib).")] = _d("int8"),
    calib: Annotated[str | None, typer.Option(help="Calibration images: a face folder or a dataset split.")] = _d(
        "calib"),
    calib_method: Annotated[str, typer.Option(help="minmax, entropy or percentile.")] = _d("calib_method"),
    calib_images: int = _d("calib_images"),
    parity_data: Annotated[str | None, typer.Option(
        help="Annotated faces for the parity gate (default: the bundled demo face).")] = _d("parity_data"),
    batch: Annotated[str, typer.Option(help="TensorRT optimisation profile MIN:OPT:MAX.")] = ":".join(
        map(str, _d("batch"))),
    opset: int = _d("opset"),
    out: Annotated[str, typer.Option(help="Output folder.")] = "export",
    engine: Annotated[str, typer.Option(help="auto (if TensorRT + GPU), always, never.")] = _d("engine"),
    triton: Annotated[str | None, typer.Option(help="Also write a Triton model repository with this name.")] = _d(
        "triton"),
) -> None:
    """Export a CHS checkpoint for deployment, refusing any file that drifts from PyTorch."""
    from chs.export.pipeline import run_export

    run_export(ExportOptions(model=model, out=out, ccr=ccr, fp16=fp16, int8=int8, calib=calib,
                             calib_method=calib_method, calib_images=calib_images, parity_data=parity_data,
                             batch=parse_batch(batch), opset=opset, engine=engine, triton=triton),
               log=typer.echo)

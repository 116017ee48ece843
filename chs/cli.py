"""Thin typer commands over library functions. Heavy imports (torch) happen inside the commands, so
``chs-align`` runs in a torch-free install."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from chs.errors_cli import OneLineTyper, missing_package, one_line_errors
from chs.model.config import PRESETS
from chs.model.training.options import TrainOptions
from chs.options_cli import options_command
from chs.runtime.backends.base import DEFAULT_BATCH
from chs.runtime.errors import ChsError
from chs.runtime.options import option, whole_number

app = OneLineTyper(help="CHS face alignment: train, evaluate, export, align, benchmark.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)


def _single(fn) -> typer.Typer:
    """A one-command app for the ``chs-<verb>`` console scripts."""
    sub = OneLineTyper(pretty_exceptions_enable=False, add_completion=False)
    sub.command()(fn)
    return sub


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


# ---------------------------------------------------------------------------------------------- train
def _train_extra(
    preset: Annotated[str, typer.Option(help=f"Model preset: {', '.join(PRESETS)}.")] = "ytf68",
    ccr: Annotated[int | None, typer.Option(help="CCR stages to train (default: the preset's).")] = None,
    backward: Annotated[str | None, typer.Option(help="Backward connection: ccr, task or full.")] = None,
    resume: Annotated[str | None, typer.Option(help="Checkpoint folder to resume from (e.g. RUN/last).")] = None,
) -> None:
    """The model's options beside TrainOptions' (the preset and what overrides it)."""


@one_line_errors
@options_command(TrainOptions, extra=_train_extra)
def train(opts: TrainOptions, preset: str, ccr: int | None, backward: str | None, resume: str | None) -> None:
    """Train a CHS model (multi-task: heatmaps + cascaded coordinate regression)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from chs.model.config import get_preset
    from chs.model.training.trainer import Trainer

    overrides = {k: v for k, v in {"ccr_stages": ccr, "backward": backward}.items() if v is not None}
    cfg = get_preset(preset, **overrides)
    with Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]:.3f} lr {task.fields[lr]:.2e}"), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task("train", total=1, epoch=0, loss=0.0, lr=opts.lr)

        def progress(epoch, step, steps, loss, cur_lr):
            bar.update(task, completed=step, total=steps, epoch=epoch, loss=loss, lr=cur_lr)

        def log(message: str) -> None:  # one line per record, as written: `chs-train > log.jsonl` parses
            bar.console.out(message, highlight=False)  # print() would wrap it at the terminal width

        trainer = Trainer(cfg, opts, resume=resume, log=log)
        result = trainer.fit(progress)
    if trainer.rank == 0:  # under torchrun every process returns here; one report
        best = result["best_val_nme_iod"]
        typer.echo(f"best val NME (IOD): {'-' if best is None else f'{best * 100:.2f} %'}  checkpoints in {opts.out}")


# ---------------------------------------------------------------------------------------------- eval
@dataclass(frozen=True)
class EvalOptions:
    """``chs-eval``'s options (their one home)."""

    model: str = option(help="Checkpoint folder, exported .onnx, or 'default'.")
    data: str = option(help="Annotated dataset to evaluate on.")
    ccr: int | None = option(None, "Serve only the first K CCR stages.")
    batch_size: int = option(DEFAULT_BATCH, "Faces per inference batch.")
    as_json: bool = option(False, "Print the metrics as JSON.", flag="--json")
    plot: str | None = option(None, "Write the CED curve to this PNG.")
    boxes: str = option("gt", "gt (boxes from the ground-truth landmarks) or detector.")
    split: str | None = option(None, "Part of a set that defines splits (mtfl5: all, train, val).")
    detector: str = option("yunet", "With --boxes detector: yunet (bundled), dlib or a YuNet .onnx.")


def _is_checkpoint(model: str) -> bool:
    """A training checkpoint (folder with config.json, or that file); 'default' is the bundled model.onnx then."""
    from chs.runtime.assets import resolve_model_path
    from chs.runtime.backends.opener import is_checkpoint
    from chs.runtime.backends.triton import is_triton_url

    return not is_triton_url(model) and model != "default" and is_checkpoint(resolve_model_path(model))


@one_line_errors
@options_command(EvalOptions, arguments=("model",))
def evaluate(opts: EvalOptions) -> None:
    """NME / FR / AUC of a model on a dataset (ground-truth-landmark boxes, or the face detector's)."""
    model, data, batch_size, as_json, plot, boxes, split = (opts.model, opts.data, opts.batch_size, opts.as_json,
                                                           opts.plot, opts.boxes, opts.split)
    from chs.runtime.backends.opener import open_model
    from chs.runtime.datasets import load_dataset
    from chs.runtime.evaluate import evaluate_runner

    try:
        from chs.model.runner import open_checkpoint
    except ModuleNotFoundError as e:  # a torch-free install evaluates .onnx, engines, triton:// and the bundled ONNX
        install = missing_package(e)
        if install is None:
            raise
        if opts.ccr is not None or _is_checkpoint(model):
            raise ChsError(f"evaluating a checkpoint (or --ccr) needs torch: {install}") from None
        open_checkpoint = None

    if boxes not in ("gt", "detector"):
        raise ChsError(f"--boxes must be gt or detector, got '{boxes}'")
    whole_number(batch_size, "--batch-size", 1)
    if plot:
        from chs.benchmarks.plots import check_plot_path

        check_plot_path(plot)
    runner = open_model(model, "auto", ccr=opts.ccr, checkpoint=open_checkpoint)
    if boxes == "detector":
        from chs.runtime.detector import make_detector
        from chs.runtime.detector_eval import evaluate_with_detector

        res = evaluate_with_detector(runner, make_detector(opts.detector), load_dataset(data, split),
                                     batch_size=batch_size)
    else:
        res = evaluate_runner(runner, load_dataset(data, split), batch_size)
    if plot:
        from chs.benchmarks.plots import plot_ced

        plot_ced({f"{Path(model).name} (ccr {res['ccr']})": res["per_sample_nme"]}, plot)
    res.pop("per_sample_nme", None)
    if as_json:
        _print_json(res)
        return
    if boxes == "detector":
        typer.echo(f"n={res['n']} of {res['n_images']} (misses {res['misses']})  NME(IOD) "
                   f"{res['nme_iod'] * 100:.2f}%  FR@10 {res['fr_10'] * 100:.2f}%")
        return
    typer.echo(f"n={res['n']}  NME(IOD) {res['nme_iod'] * 100:.2f}%  NME(IPD) {res['nme_ipd'] * 100:.2f}%  "
               f"FR@10 {res['fr_10'] * 100:.2f}%  AUC@10 {res['auc_10']:.4f}  "
               f"mean offset x {res['offset_x'] * 100:+.2f}% y {res['offset_y'] * 100:+.2f}%")
    if "nme_shifted" in res:
        typer.echo(f"{res['scheme']}-point labels: after removing the set-wide shift NME "
                   f"{res['nme_shifted'] * 100:.2f}%  FR@10 {res['fr_10_shifted'] * 100:.2f}%  "
                   f"AUC@10 {res['auc_10_shifted']:.4f}")
    if "nme_iod_per_stage" in res:
        stages = "  ".join(f"k={i}: {v * 100:.2f}%" for i, v in enumerate(res["nme_iod_per_stage"]))
        typer.echo(f"NME(IOD) per CCR stage: {stages}")
    for name, sub in res.get("subsets", {}).items():
        shifted = f"  shifted NME {sub['nme_shifted'] * 100:.2f}%" if "nme_shifted" in sub else ""
        typer.echo(f"  {name:<12} n={sub['n']:<5} NME(IOD) {sub['nme_iod'] * 100:.2f}%  "
                   f"FR@10 {sub['fr_10'] * 100:.2f}%{shifted}")


from chs.align_cmd import align  # noqa: E402
from chs.bench_cmd import bench_app  # noqa: E402
from chs.export_cmd import export  # noqa: E402
from chs.serve_cmd import serve  # noqa: E402

app.add_typer(bench_app, name="bench")
app.command("train")(train)
app.command("eval")(evaluate)
app.command("export")(export)
app.command("align")(align)
app.command("serve")(serve)
train_app = _single(train)
eval_app = _single(evaluate)
export_app = _single(export)
align_app = _single(align)
serve_app = _single(serve)

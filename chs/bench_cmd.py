"""``chs-bench``: the complexity table of the paper, latency, accuracy and the latency-vs-NME trade-off."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from chs.benchmarks.complexity import PAPER_PRESET
from chs.benchmarks.profile import ProfileOptions
from chs.benchmarks.request import BACKENDS, PRECISIONS, BenchRequest
from chs.benchmarks.serve import ServeBenchOptions
from chs.benchmarks.video import ClipSpec, VideoBench
from chs.errors_cli import OneLineTyper, one_line_errors
from chs.options_cli import options_command, with_options
from chs.runtime.backends.ort import EXECUTORS
from chs.runtime.errors import ChsError
from chs.runtime.options import comma_list

D = BenchRequest  # the option defaults: BenchRequest's field defaults

bench_app = OneLineTyper(help="Benchmarks: complexity (Table 9), latency, accuracy, trade-off, serving.",
                        no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


@bench_app.callback()
def _group() -> None:
    """Keeps ``chs-bench`` a command group even while it has few sub-commands."""


@bench_app.command()
@one_line_errors
def complexity(
    preset: Annotated[str, typer.Option(help="Model preset (paper figures are shown for wflw).")] = PAPER_PRESET,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of rows.")] = False,
) -> None:
    """Params and GMACs of AWing and CHS with 0/1/2/4 CCR stages, beside the paper's Table 9."""
    from chs.benchmarks.complexity import complexity_rows, format_table
    from chs.model.config import get_preset

    get_preset(preset)  # one-line error for unknown presets before any work
    rows = complexity_rows(preset)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        typer.echo(format_table(rows))


# ------------------------------------------------------------------------- latency, accuracy, trade-off

Model = Annotated[str, typer.Option(help="Checkpoint folder, or 'default' (the bundled model).")]
Backends = Annotated[str, typer.Option("--backend", help="Comma list of torch, ort, trt.")]
Precisions = Annotated[str, typer.Option("--precision", help="Comma list of fp32, fp16, bf16, int8.")]
Ccrs = Annotated[str | None, typer.Option("--ccr", help="Comma list of CCR counts (default: 0,1,2 as trained).")]
Batches = Annotated[str, typer.Option("--batch", help="Comma list of batch sizes.")]
Calib = Annotated[str | None, typer.Option(help="Calibration images/dataset for INT8 (needed for int8 rows).")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda (torch rows; ONNX Runtime picks its provider).")]
WorkDir = Annotated[str | None, typer.Option(help="Where exported ONNX files are kept and reused "
                                                  "(default ~/.cache/chs/bench/<model>).")]
Repeats = Annotated[int, typer.Option(help="Timed calls per row and pass (two passes).")]
Warmup = Annotated[int, typer.Option(help="Untimed calls before the first pass.")]
MaxSeconds = Annotated[float, typer.Option(help="Time cap per row and pass.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
Threads = Annotated[int | None, typer.Option(help="Intra-op threads for torch and ONNX Runtime (default: theirs).")]
OrtSessions = Annotated[int, typer.Option(help="Split ONNX Runtime CPU batches of 2+ crops over this many "
                                                "single-thread sessions side by side (small CPUs, INT8).")]
OrtExecutor = Annotated[str, typer.Option(help="ONNX Runtime executor(s), a comma list: sequential (one node at a "
                                               "time on --threads threads), parallel (independent nodes side by "
                                               "side, a thread each); one row each.")]
Detector = Annotated[bool, typer.Option(help="Also time the face detector on the demo image.")]
MaxSamples = Annotated[int | None, typer.Option(help="Evaluate this many faces, spread over the split.")]


def _request_options(model: Model = D.model, backend: Backends = ",".join(D.backends),
                     precision: Precisions = ",".join(D.precisions), ccr: Ccrs = None, calib: Calib = D.calib,
                     device: Device = D.device, work_dir: WorkDir = None, threads: Threads = D.threads,
                     ort_sessions: OrtSessions = D.ort_sessions,
                     ort_executor: OrtExecutor = ",".join(D.ort_executors)) -> None:
    """The options every latency/accuracy/trade-off command takes (declared once, see ``with_options``)."""


def _json_option(as_json: AsJson = False) -> None:
    """Tables on stdout, or JSON."""


def _timing_options(batch: Batches = ",".join(map(str, D.batches)), repeats: Repeats = D.repeats,
                    warmup: Warmup = D.warmup, max_seconds: MaxSeconds = D.max_seconds,
                    detector: Detector = D.detector) -> None:
    """The options of the commands that time rows."""


def _ints(text: str, option: str, minimum: int) -> list[int]:
    out = []
    for t in comma_list(text, option):
        try:
            v = int(t)
        except ValueError:
            raise ChsError(f"{option} must be a comma list of integers, got '{text}'") from None
        if v < minimum:
            raise ChsError(f"{option} values must be >= {minimum}, got {v}")
        out.append(v)
    return out


def _choices(text: str, option: str, allowed: tuple[str, ...]) -> list[str]:
    items = [t.lower() for t in comma_list(text, option)]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise ChsError(f"{option}: unknown value '{bad[0]}' (choose from {', '.join(allowed)})")
    return items


def _request(model: str, backend: str, precision: str, ccr: str | None, batch: str | None = None,
             ort_executor: str = ",".join(D.ort_executors), **fields) -> BenchRequest:
    """The comma-list options parsed into the one validated request of the command."""
    return BenchRequest(
        model, backends=_choices(backend, "--backend", BACKENDS),
        precisions=_choices(precision, "--precision", PRECISIONS),
        ort_executors=_choices(ort_executor, "--ort-executor", EXECUTORS),
        ccrs=_ints(ccr, "--ccr", 0) if ccr is not None else None,
        **({"batches": _ints(batch, "--batch", 1)} if batch is not None else {}), **fields)


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


def _command_line(ctx: typer.Context) -> str:
    """The command as typed, then the same command with every option resolved (a reproducible line)."""
    import shlex

    resolved = ctx.command_path.split()
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(value, bool):  # --x/--no-x, or an on-only switch such as --json
            resolved += [param.opts[0]] if value else param.secondary_opts[:1]
        elif value is not None:
            resolved += [param.opts[0], str(value)]
    return f"{shlex.join(sys.argv)}\n# resolved: {shlex.join(resolved)}"


def _write_json(path, obj) -> None:
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, default=str))


def _check_out(out: str | None) -> None:
    """An --out that cannot become a folder (an existing file, a read-only parent) fails before the benchmark."""
    if out is not None:
        from chs.runtime.files import check_output_dir

        check_output_dir(out)


def _emit(ctx: typer.Context, out: str | None, name: str, payload: dict, as_json: bool, text: str) -> None:
    """``--out``: payload as ``name``, machine.json and command.txt; then JSON or the text table on stdout."""
    if out:
        from pathlib import Path

        _write_json(Path(out) / name, payload)
        _write_json(Path(out) / "machine.json", payload["machine"])
        (Path(out) / "command.txt").write_text(_command_line(ctx) + "\n")
    if as_json:
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    else:
        typer.echo(text)


@bench_app.command()
@one_line_errors
@with_options(_request_options, _timing_options, _json_option)
def latency(
    ctx: typer.Context,
    out: Annotated[str | None, typer.Option(help="Also write latency.json, machine.json, command.txt here.")] = None,
    preset: Annotated[str | None, typer.Option(
        help="Time this preset (e.g. 300w) with random weights instead of --model: timing only, no accuracy.")] = None,
    **opts,
) -> None:
    """Per-face latency (p50/p90/p99, faces/s) of each CCR count x backend x precision x batch, with its floor."""
    from chs.benchmarks.latency import latency_rows
    from chs.benchmarks.machine import machine_info, machine_line
    from chs.benchmarks.report import format_latency, format_ratios, speed_ratios

    _check_out(out)
    as_json = opts.pop("as_json")
    if preset:
        from pathlib import Path

        from chs.benchmarks.presets import preset_checkpoint
        from chs.export.options import cache_dir

        work_dir = opts.get("work_dir")
        root = Path(work_dir) if work_dir else cache_dir("bench")
        opts["model"] = str(preset_checkpoint(preset, root))
        opts["work_dir"] = work_dir and str(Path(work_dir) / Path(opts["model"]).name)
        opts["timing_only"] = True
    req = _request(**opts)
    info = machine_info(req.threads)
    rows = latency_rows(req, log=_log)
    ratios = speed_ratios(rows)
    text = format_latency(rows, machine_line(info)) + ("\n" + format_ratios(ratios) if ratios else "")
    _emit(ctx, out, "latency.json", {"machine": info, "rows": rows, "ratios": ratios}, as_json, text)


def _format_accuracy(rows: list[dict], machine: str) -> str:
    head = f"{'ccr':>3} {'GMACs':>7} {'backend':<12} {'prec':<5} {'n':>5} {'NME %':>7} {'FR@10 %':>8} {'AUC@10':>7}"
    lines = [machine, head, "-" * len(head)]
    for r in rows:
        ccr = "-" if r["ccr"] is None else str(r["ccr"])
        gm = "-" if r.get("gmacs") is None else f"{r['gmacs']:.3f}"
        name = r.get("runner") or r["backend"]
        if r["status"] != "ok":
            lines.append(f"{ccr:>3} {gm:>7} {name:<12} {r['precision'] or '-':<5} skipped: {r['reason']}")
            continue
        shifted = "" if r.get("nme_shifted") is None else f"  shift-corrected NME {r['nme_shifted'] * 100:.3f}"
        lines.append(f"{ccr:>3} {gm:>7} {name:<12} {r['precision'] or '-':<5} {r['n']:>5} {r['nme'] * 100:>7.3f} "
                     f"{r['fr_10'] * 100:>8.2f} {r['auc_10']:>7.4f}{shifted}")
    return "\n".join(lines)


@bench_app.command()
@one_line_errors
@with_options(_request_options, _json_option)
def accuracy(
    ctx: typer.Context,
    data: Annotated[str, typer.Option(help="Annotated dataset split to evaluate on.")],
    max_samples: MaxSamples = D.max_samples,
    out: Annotated[str | None, typer.Option(help="Also write accuracy.json, machine.json, command.txt here.")] = None,
    split: Annotated[str | None, typer.Option(help="Part of a set that defines splits (mtfl5: train, val).")] = D.split,
    **opts,
) -> None:
    """NME / FR@10 / AUC@10 of each CCR count x backend x precision on a dataset split."""
    from chs.benchmarks.accuracy import accuracy_rows
    from chs.benchmarks.machine import machine_info, machine_line

    _check_out(out)
    as_json = opts.pop("as_json")
    req = _request(**opts, data=data, max_samples=max_samples, split=split)
    info = machine_info(req.threads)
    rows = accuracy_rows(req, log=_log)
    text = _format_accuracy(rows, machine_line(info))
    _emit(ctx, out, "accuracy.json", {"machine": info, "rows": rows}, as_json, text)


@bench_app.command()
@one_line_errors
@with_options(_request_options, _timing_options, _json_option)
def tradeoff(
    ctx: typer.Context,
    data: Annotated[str, typer.Option(help="Annotated dataset split for NME / FR / AUC.")],
    out: Annotated[str, typer.Option(help="Folder for table.md/.csv/.json, the plots, machine.json, command.txt.")],
    max_samples: MaxSamples = D.max_samples,
    compare: Annotated[str | None, typer.Option(help="An earlier run's table.json (or its folder): report "
                                                     "run-to-run p50 agreement.")] = None,
    **opts,
) -> None:
    """Latency and accuracy in one table (Markdown/CSV/JSON) and the NME-vs-cost plots (cf. paper Fig. 14)."""
    from chs.benchmarks.accuracy import accuracy_rows
    from chs.benchmarks.latency import latency_rows
    from chs.benchmarks.machine import machine_info, machine_line
    from chs.benchmarks.report import format_ratios, speed_ratios
    from chs.benchmarks.runners import RunnerFactory
    from chs.benchmarks.tradeoff import (
        compare_runs,
        format_comparison,
        format_markdown,
        join_rows,
        load_previous_rows,
        write_tradeoff,
    )

    _check_out(out)
    as_json = opts.pop("as_json")
    req = _request(**opts, data=data, max_samples=max_samples)
    previous = load_previous_rows(compare) if compare else None  # bad path: fail before the long run
    info = machine_info(req.threads)
    with RunnerFactory(req, log=_log) as factory:  # one set of runners for both, closed after them
        acc = accuracy_rows(req, factory=factory, log=_log)
        lat = latency_rows(req, factory=factory, log=_log)
    rows = join_rows(lat, acc)
    ratios = speed_ratios(lat, acc)
    line = machine_line(info)
    extra: dict = {"accuracy": acc, "data": data}
    if previous is not None:
        extra["compare"] = compare_runs(rows, previous) | {"source": compare}
    files = write_tradeoff(rows, out, machine=info, machine_text=line, command=_command_line(ctx), ratios=ratios,
                           extra=extra)
    if previous is not None:
        with open(files["table.md"], "a") as f:
            f.write("\n" + format_comparison(extra["compare"], compare))
    if as_json:
        sys.stdout.write(json.dumps({"machine": info, "rows": rows, "ratios": ratios,
                                     "files": {k: str(v) for k, v in files.items()}}, indent=2, default=str) + "\n")
        return
    typer.echo(format_markdown(rows, line).rstrip())
    if ratios:
        typer.echo(format_ratios(ratios))
    if previous is not None:
        typer.echo(format_comparison(extra["compare"], compare).rstrip())
    typer.echo(f"wrote {', '.join(sorted(files))} to {out}")


def _profile_extra(models: Annotated[list[str], typer.Argument(
        help="ONNX files, e.g. model_fp32.onnx model_int8_u8s8.onnx.")], as_json: AsJson = False) -> None:
    """chs-bench profile's files and output switch."""


@bench_app.command()
@one_line_errors
@options_command(ProfileOptions, extra=_profile_extra)
def profile(opts: ProfileOptions, models: list[str], as_json: bool) -> None:
    """ONNX Runtime CPU kernel time per operator type: what an FP16 or INT8 file adds beside the convolutions."""
    from chs.benchmarks.profile import format_profiles, op_profile

    profiles = [op_profile(m, opts.batch, opts.runs, opts.warmup, opts.threads) for m in models]
    if as_json:
        sys.stdout.write(json.dumps(profiles, indent=2) + "\n")
    else:
        typer.echo(format_profiles(profiles, opts.top))


@bench_app.command()
@one_line_errors
def gpu(
    iters: Annotated[int | None, typer.Option(help="Timed runs per row (default: the check's own).")] = None,
    json_out: Annotated[str | None, typer.Option("--json", help="Also write the rows to this JSON file.")] = None,
) -> None:
    """One GPU check: torch eager / CUDA graph / FP16 / BF16, ORT CUDA and TensorRT rows with parity
    against CPU FP32; says so and exits 0 where there is no CUDA device."""
    from chs.benchmarks.gpu_check import run_gpu_check

    given = {"iters": iters, "json_path": json_out}
    raise typer.Exit(run_gpu_check(**{k: v for k, v in given.items() if v is not None}))


def _serve_extra(ctx: typer.Context, as_json: AsJson = False, out: Annotated[str | None, typer.Option(
        help="Also write serve.json/.md, machine.json, command.txt here.")] = None) -> None:
    """chs-bench serve's output options."""


@bench_app.command()
@one_line_errors
@options_command(ServeBenchOptions, extra=_serve_extra)
def serve(opts: ServeBenchOptions, ctx: typer.Context, as_json: bool, out: str | None) -> None:
    """Throughput and p50/p99 per face through a Triton server on loopback, beside the same load in-process."""
    from pathlib import Path

    from chs.benchmarks.machine import machine_info, machine_line
    from chs.benchmarks.serve import format_serve, run_serve_bench

    _check_out(out)
    info = machine_info(None)
    result = run_serve_bench(opts, log=_log)
    text = format_serve(result, machine_line(info))
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "serve.md").write_text(text + "\n")
    _emit(ctx, out, "serve.json", {"machine": info, **result}, as_json, text)


@bench_app.command()
@one_line_errors
def video(
    ctx: typer.Context,
    data: Annotated[str, typer.Option(help="Annotated stills to make clips from, e.g. ../shared/data/ytf68/val.")],
    model: Annotated[str, typer.Option(help="'default' (the bundled model) or an .onnx file.")] = VideoBench.model,
    clips: Annotated[int | None, typer.Option(help=f"Clips spread over the set [default: {VideoBench.clips}].")] = None,
    frames: Annotated[int | None, typer.Option(help=f"Frames per clip [default: {ClipSpec.frames}].")] = None,
    detectors: Annotated[str, typer.Option(help="Comma list: per-frame rows for each; the first one tracks.")
                         ] = ",".join(VideoBench.detectors),
    out: Annotated[str | None, typer.Option(help="Write video.json/.md, jitter_vs_nme.png, machine.json, "
                                            "command.txt here.")] = None,
    as_json: AsJson = False,
) -> None:
    """Video stability: NME, jitter (known motion removed), detector calls/frame and frames/s of per-frame
    detection, tracking and tracking + smoothing on clips made from annotated stills."""
    from chs.benchmarks.video import run_video_command

    _check_out(out)
    bench = VideoBench.from_options(data, model, clips, frames, comma_list(detectors, "--detectors"))
    result = run_video_command(bench, out, _command_line(ctx), log=_log)
    sys.stdout.write(json.dumps(result["overall"], indent=2) + "\n" if as_json else result["table"])

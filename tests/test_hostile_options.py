"""Hostile options of chs-train, chs-eval and chs-export (issue 14 items 8-10, 14-17): refused with one line
before any work, a diverging run stopped, and an export folder never left holding a mix of two exports."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from chs.benchmarks.request import BenchRequest
from chs.calibration.reader import CropReader
from chs.cli import eval_app, export_app, train_app
from chs.export import pipeline
from chs.export.pipeline import ExportOptions, run_export
from chs.export.triton import TritonModelSettings
from chs.model.checkpoint import save_checkpoint
from chs.model.chs import build_model
from chs.model.config import get_preset
from chs.model.training.trainer import Trainer, TrainOptions
from chs.runtime.errors import ChsError

FACES = Path(__file__).resolve().parent / "fixtures" / "pts"


def _one_error_line(res, pattern: str = "") -> str:
    assert res.exit_code == 2, (res.exit_code, res.stdout[-500:], res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "internal error" not in lines[0] and pattern in lines[0], lines[0]
    return lines[0]


def _run(app, *args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture()
def faces(tmp_path) -> Path:
    return Path(shutil.copytree(FACES, tmp_path / "faces"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(get_preset("tiny"))
    for stage in model.ccr:
        torch.nn.init.normal_(stage.fc.weight, std=0.01)
    return save_checkpoint(model.eval(), tmp_path_factory.mktemp("ckpt") / "tiny")


# ---------------------------------------------------------------------------------------- 8, 9, 16, 17: training
@pytest.mark.parametrize("option, value, message", [
    ("lr", math.nan, "--lr must be a finite number"),
    ("lr", -1.0, "--lr must be > 0, got -1.0"),
    ("lr", 0.0, "--lr must be > 0"),
    ("epochs", 0, "--epochs must be >= 1, got 0"),
    ("epochs", -1, "--epochs must be >= 1, got -1"),
    ("batch_size", 0, "--batch-size must be >= 1, got 0"),
    ("sigma", -1.0, "--sigma must be in (0, 16] heatmap cells, got -1.0"),
    ("max_samples", -3, "--max-samples must be >= 0, got -3"),
    ("device", "cuda:7", "--device cuda:7: this machine has"),
    ("device", "gpu", "--device must be cpu, cuda or cuda:N"),
    ("seed", 2**32, "--seed must be < 2**32 (4294967296), got 4294967296"),  # seed * 1000 + epoch overflowed torch
    # once checked only after the data was read and the model built
    ("mix", 1.0, "--mix must be in (0, 1), got 1.0"),
    ("flip5", 1.5, "--flip5 must be a probability in [0, 1], got 1.5"),
    ("offset_lr_scale", 0.0, "--offset-lr-scale must be > 0, got 0.0"),
    ("amp", "fp16", "--amp fp16 is not supported on cpu (none, bf16; fp16 needs CUDA)"),
])
def test_training_options_are_checked_when_made(tmp_path, option, value, message):
    if option == "device" and value == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(ChsError) as e:
        TrainOptions(data=str(FACES), out=str(tmp_path / "run"), **{option: value})
    assert message in str(e.value), str(e.value)


@pytest.mark.parametrize("args, message", [
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--device", "cuda:7"], "--device cuda:7"),
    (["--sigma", "-1"], "--sigma must be in (0, 16]"),
    (["--max-samples", "-3"], "--max-samples must be >= 0"),
    (["--seed", "100000000000000000"], "--seed must be < 2**32"),
    (["--batch-size", "10"], "--batch-size 10 is more than the 4 training faces"),  # once: 0 steps, exit 0
    (["--preset", "wflw"], "dataset has 68-point landmarks but the model predicts 98"),  # once: IndexError
])
def test_chs_train_refuses_bad_options_and_writes_nothing(tmp_path, args, message):
    if "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    res = _run(train_app, "--data", FACES, "--preset", "tiny", "--out", tmp_path / "bad", *args)
    _one_error_line(res, message)
    assert "checkpoints in" not in res.stdout and not (tmp_path / "bad").exists()


def test_chs_train_out_on_an_existing_file_is_refused_before_training(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    res = _run(train_app, "--data", FACES, "--preset", "tiny", "--out", afile, "--batch-size", "2")
    _one_error_line(res, f"--out {afile} exists and is not a folder")
    assert afile.read_text() == "keep me"


def test_chs_train_out_holding_a_run_is_refused_unless_resumed(tmp_path):
    """A second run into a run folder replaced last/ and best/ and kept the first run's later epoch_NNN/."""
    run = tmp_path / "run"
    args = ("--data", FACES, "--preset", "tiny", "--out", run, "--batch-size", "2", "--threads", "1")
    assert _run(train_app, *args, "--epochs", "2").exit_code == 0
    before = (run / "last" / "config.json").read_text()
    _one_error_line(_run(train_app, *args, "--epochs", "1"),
                    f"--out {run} holds a training run (best, epoch_000, epoch_001, ...); continue it with "
                    f"--resume {run / 'last'}, or choose another --out")
    assert (run / "last" / "config.json").read_text() == before
    other = tmp_path / "other"
    assert _run(train_app, *args[:-5], other, *args[-4:], "--epochs", "1").exit_code == 0
    _one_error_line(_run(train_app, *args, "--epochs", "3", "--resume", other / "last"), f"--out {run} holds")
    res = _run(train_app, *args, "--epochs", "3", "--resume", run / "last")  # continuing the run itself
    assert res.exit_code == 0, res.stderr[-2000:]
    assert json.loads((run / "last" / "config.json").read_text())["info"]["epoch"] == 2


def test_chs_train_reports_the_best_nme_in_percent(tmp_path):
    res = _run(train_app, "--data", FACES, "--val", FACES, "--preset", "tiny", "--out", tmp_path / "run",
               "--batch-size", "2", "--epochs", "1", "--threads", "1")
    assert res.exit_code == 0, res.stderr[-2000:]
    best = json.loads((tmp_path / "run" / "best" / "config.json").read_text())["info"]["best"]  # a fraction
    line = res.stdout.strip().splitlines()[-1]
    assert line == f"best val NME (IOD): {best * 100:.2f} %  checkpoints in {tmp_path / 'run'}", line


def test_diverging_training_stops_with_one_line(faces, tmp_path):
    opts = TrainOptions(data=str(faces), out=str(tmp_path / "run"), epochs=2, batch_size=2, lr=1e25, sigma=1.5,
                        threads=1, schedule="cosine")
    with pytest.raises(ChsError, match="training diverged: the weights became NaN or infinite at epoch 0 step 0"):
        Trainer(get_preset("tiny"), opts, log=lambda *a: None).fit()
    opts = TrainOptions(data=str(faces), out=str(tmp_path / "run2"), epochs=2, batch_size=2, lr=1e6, sigma=1.5,
                        threads=1, schedule="cosine")
    with pytest.raises(ChsError, match="training diverged"):  # finite weights, overflowing activations
        Trainer(get_preset("tiny"), opts, log=lambda *a: None).fit()
    assert not (tmp_path / "run" / "last").exists() and not (tmp_path / "run2" / "last").exists()


def test_resume_from_a_folder_without_safetensors_says_what_is_missing(faces, tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"\x80\x04not really a pickle")
    res = _run(train_app, "--data", faces, "--preset", "tiny", "--out", tmp_path / "run", "--resume", folder,
               "--epochs", "1")
    line = _one_error_line(res, f"--resume {folder}: missing config.json, model.safetensors, optimizer.safetensors")
    assert "None" not in line


# ---------------------------------------------------------------------------------------- 15: chs-eval
def test_chs_eval_batch_size_zero(ckpt):
    _one_error_line(_run(eval_app, ckpt, "--data", FACES, "--batch-size", "0"), "--batch-size must be >= 1, got 0")


def test_chs_eval_plot_extension_checked_before_evaluating(ckpt, tmp_path, monkeypatch):
    import chs.runtime.evaluate as evaluate

    def no_work(*a, **k):
        raise AssertionError("evaluation started")

    monkeypatch.setattr(evaluate, "evaluate_runner", no_work)
    _one_error_line(_run(eval_app, ckpt, "--data", FACES, "--plot", tmp_path / "ced.txt"),
                    "--plot ced.txt: use a .png, .pdf, .svg file name")


# ---------------------------------------------------------------------------------------- 10, 14, 17: chs-export
@pytest.fixture()
def no_export_work(monkeypatch):
    """Fail loudly if an export gets as far as loading the model: option checks must come first."""
    def no_work(*a, **k):
        raise AssertionError("export work started before the options were checked")

    monkeypatch.setattr(pipeline, "load_checkpoint", no_work)


@pytest.mark.parametrize("changes, message", [
    ({"calib_method": "bogus"}, "--calib-method must be one of"),
    ({"triton": "../../escape"}, "Triton model name '../../escape' must be"),
    ({"int8": True, "calib": "/nonexistent/calib"}, "--calib /nonexistent/calib not found"),
    ({"calib": "/nonexistent/calib"}, "--calib is only used by --int8"),  # was ignored: an FP32-only export
    ({"calib_method": "percentile"}, "--calib-method is only used by --int8"),  # was ignored too
    ({"calib_images": 32}, "--calib-images is only used by --int8"),
    ({"batch": (8, 1, 32)}, "--batch needs 1 <= MIN <= OPT <= MAX, got 8:1:32"),  # the engine builder's checker
])
def test_export_options_checked_before_work(ckpt, tmp_path, no_export_work, changes, message):
    with pytest.raises(ChsError) as e:
        run_export(ExportOptions(model=str(ckpt), out=str(tmp_path / "e"), engine="never", **changes))
    assert message in str(e.value)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("changes, message", [
    ({"engine": "always"}, "--engine always: no TensorRT here"),
    ({"triton": "m", "triton_backend": "tensorrt"}, "--triton-backend tensorrt: no TensorRT here"),  # was at the end
])
def test_export_needing_an_engine_without_tensorrt_fails_before_work(ckpt, tmp_path, no_export_work, monkeypatch,
                                                                     changes, message):
    from chs.export import tensorrt

    monkeypatch.setattr(tensorrt, "tensorrt_available", lambda: (False, "no TensorRT here"))
    with pytest.raises(ChsError) as e:
        run_export(ExportOptions(model=str(ckpt), out=str(tmp_path / "e"), **changes))
    assert str(e.value) == message
    assert list(tmp_path.iterdir()) == []


def test_export_and_engine_builder_share_one_batch_profile_default():
    from chs.export.options import BATCH_PROFILE
    from chs.export.tensorrt import BuildOptions

    assert ExportOptions(model="default").batch == BuildOptions().batch == BATCH_PROFILE


def test_export_out_existing_file_refused_before_work(ckpt, tmp_path, no_export_work):
    (tmp_path / "taken").write_text("x")
    res = _run(export_app, ckpt, "--out", tmp_path / "taken", "--engine", "never")
    _one_error_line(res, "--out")
    assert "exists and is not a folder" in res.stderr and (tmp_path / "taken").read_text() == "x"


def test_export_into_non_empty_folder_needs_force(ckpt, tmp_path, no_export_work):
    out = tmp_path / "e"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _one_error_line(_run(export_app, ckpt, "--out", out, "--engine", "never"), "is not empty: pass --force")
    _one_error_line(_run(export_app, ckpt, "--out", out, "--engine", "never", "--force"),
                    "holds files that are not a chs export")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("where", ["model", "calib", "parity_data"])
def test_forced_export_refuses_an_out_that_holds_its_input(ckpt, tmp_path, no_export_work, where):
    """--force replaces --out whole: an input inside it (or --out itself) would be deleted with it."""
    out = tmp_path / "e"
    out.mkdir()
    (out / "report.json").write_text("{}")  # a previous export: --force would replace it
    inner = Path(shutil.copytree(ckpt, out / "ckpt"))
    args = {"model": [inner], "calib": [ckpt, "--int8", "--calib", inner],
            "parity_data": [ckpt, "--parity-data", out]}[where]
    option = {"model": "model", "calib": "--calib", "parity_data": "--parity-data"}[where]
    _one_error_line(_run(export_app, *args, "--out", out, "--engine", "never", "--force"),
                    f"--out {out} holds the {option} ")
    assert sorted(p.name for p in inner.iterdir()) == sorted(p.name for p in ckpt.iterdir())


def test_forced_export_replaces_the_previous_one_whole(ckpt, tmp_path):
    out = tmp_path / "e"
    out.mkdir()
    (out / "model_fp16.onnx").write_bytes(b"an older export with another CCR count")
    (out / "report.json").write_text(json.dumps({"ccr": 1, "files": {"fp16": "model_fp16.onnx"}}))
    res = _run(export_app, ckpt, "--ccr", "0", "--out", out, "--engine", "never", "--force")
    assert res.exit_code == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["ccr"] == 0 and report["files"] == {"fp32": "model_fp32.onnx"}
    assert not (out / "model_fp16.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]  # no temporary folders left beside it


@pytest.mark.parametrize("make, message", [
    (lambda: TritonModelSettings(max_batch=2.5),
     "max_batch must be a whole number, got 2.5"),
    (lambda: TritonModelSettings(instance_count=0),
     "instance_count must be >= 1, got 0"),
    (lambda: TritonModelSettings(max_queue_delay_us=1.5),
     "max_queue_delay_us must be a whole number, got 1.5"),
    (lambda: CropReader(torch.zeros(2, 3, 8, 8).numpy(), 1.5),
     "batch size must be a whole number, got 1.5"),
    (lambda: BenchRequest("default", repeats=2.5),
     "--repeats must be a whole number, got 2.5"),
    (lambda: BenchRequest("default", batches=(1, 0)),
     "batch sizes must be >= 1, got 0"),
    (lambda: BenchRequest("default", threads=1.5),
     "--threads must be a whole number, got 1.5"),
])
def test_library_counts_are_whole_numbers(make, message):
    """Counts given through the Python API (not typer, which parses ints) are refused with one line when they are
    fractions or too small, instead of failing later inside ONNX Runtime, Triton or a range()."""
    with pytest.raises(ChsError) as err:
        make()
    assert str(err.value) == message

"""chs-export on a tiny checkpoint: files, report, parity gate, and one-line errors that leave no files."""

import json
import subprocess
import sys

import onnx
import pytest
import torch

from chs.model.checkpoint import save_checkpoint
from chs.model.chs import build_model
from chs.model.config import get_preset


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(get_preset("tiny"))
    for stage in model.ccr:
        torch.nn.init.normal_(stage.fc.weight, std=0.01)
    return save_checkpoint(model.eval(), tmp_path_factory.mktemp("ckpt") / "tiny")


def _export(*args):
    return subprocess.run([sys.executable, "-m", "chs", "export", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_fp32_export_writes_checked_files_and_report(tiny_ckpt, tmp_path):
    out = tmp_path / "e"
    proc = _export(tiny_ckpt, "--ccr", "1", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "engine step skipped: TensorRT engine step needs" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["ccr"] == 1 and report["meta"]["input_size"] == 64 and report["meta"]["scheme"] == "68"
    (row,) = report["parity"]
    assert row["passed"] and row["max_px"] <= 0.01
    proto = onnx.load(str(out / "model_fp32.onnx"))
    assert sum(n.op_type == "RoiAlign" for n in proto.graph.node) == 1
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["chs.meta"])
    assert meta["ccr"] == 1 and meta["crop_rule"]["scale"] == 1.3
    assert {"golden.npz", "golden_inputs.json", "golden_outputs.json"} <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize("args,message", [
    (["--ccr", "3"], "--ccr 3 is not available"),
    (["--int8"], "--int8 needs --calib"),
    (["--engine", "always"], "--engine always"),
    (["--batch", "8:1:32"], "--batch needs 1 <= MIN <= OPT <= MAX"),
    (["--triton", "m", "--triton-backend", "torch"], "--triton-backend must be one of"),
    (["--triton", "m", "--triton-backend", "tensorrt", "--engine", "never"], "drop --engine never"),
])
def test_bad_options_fail_with_one_line_and_no_files(tiny_ckpt, tmp_path, args, message):
    out = tmp_path / "e"
    proc = _export(tiny_ckpt, *args, "--out", out)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_empty_calibration_folder_and_truncated_checkpoint(tiny_ckpt, tmp_path):
    empty = tmp_path / "calib"
    empty.mkdir()
    proc = _export(tiny_ckpt, "--int8", "--calib", empty, "--out", tmp_path / "e")
    assert proc.returncode == 2 and "no calibration images" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "e").exists()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_ckpt / "config.json").read_text())
    (broken / "model.safetensors").write_bytes((tiny_ckpt / "model.safetensors").read_bytes()[:4096])
    proc = _export(broken, "--out", tmp_path / "e2")
    assert proc.returncode == 2 and "truncated or corrupt" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "e2").exists()

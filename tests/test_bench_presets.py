"""``chs-bench latency --preset``: random-weights checkpoints timed with INT8 rows, marked timing only."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from chs.bench_cmd import bench_app  # noqa: E402
from chs.benchmarks.latency import latency_rows  # noqa: E402
from chs.benchmarks.presets import TIMING_ONLY, preset_checkpoint  # noqa: E402
from chs.benchmarks.report import format_latency  # noqa: E402
from chs.benchmarks.request import BenchRequest  # noqa: E402
from chs.model.checkpoint import read_checkpoint_config  # noqa: E402
from chs.runtime.errors import ChsError  # noqa: E402


def test_preset_checkpoint_is_made_once_and_reused(tmp_path):
    ckpt = preset_checkpoint("tiny", tmp_path)
    cfg = read_checkpoint_config(ckpt)
    assert cfg["config"]["name"] == "tiny" and cfg["info"]["random_weights"]
    mtime = (ckpt / "model.safetensors").stat().st_mtime_ns
    assert preset_checkpoint("tiny", tmp_path) == ckpt
    assert (ckpt / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(ChsError, match="unknown preset"):
        preset_checkpoint("nope", tmp_path)


def test_timing_only_rows_include_int8_without_calibration_data(tmp_path):
    ckpt = preset_checkpoint("tiny", tmp_path)
    rows = latency_rows(BenchRequest(ckpt, ("ort",), ("fp32", "int8"), (1,), (1,), tmp_path / "work", repeats=2,
                                     warmup=1, peak_seconds=0.1, detector=False, peer=False, threads=1,
                                     timing_only=True))
    lm = {r["precision"]: r for r in rows if r["kind"] == "landmarks"}
    assert set(lm) == {"fp32", "int8"}
    assert all(r["status"] == "ok" and r["timing_only"] and r["p50_ms"] > 0 for r in lm.values()), lm
    assert lm["int8"]["file"].endswith("model_int8_u8s8.onnx") and lm["int8"]["peak_dtype"] == "int8"
    report = json.loads((tmp_path / "work" / "ccr1" / "report.json").read_text())
    assert report["parity_gate"]["enforced"] is False  # random weights: reported, never a reason to skip
    assert report["calibration"]["crops"] == 1  # the bundled demo image
    assert f"landmark rows: {TIMING_ONLY}" in format_latency(rows)


def test_latency_cli_preset(tmp_path):
    res = CliRunner().invoke(bench_app, [
        "latency", "--preset", "tiny", "--backend", "ort", "--precision", "fp32,int8", "--ccr", "0", "--batch", "1",
        "--repeats", "2", "--warmup", "1", "--threads", "1", "--no-detector", "--work-dir", str(tmp_path),
        "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout[res.stdout.index("{"):])
    rows = [r for r in payload["rows"] if r["kind"] == "landmarks"]
    assert {r["precision"] for r in rows if r["status"] == "ok"} == {"fp32", "int8"}
    assert all(r["timing_only"] for r in rows)
    assert any(q["what"] == "ort_int8_vs_fp32" for q in payload["ratios"])
    assert (tmp_path / "preset-tiny-seed0" / "config.json").is_file()

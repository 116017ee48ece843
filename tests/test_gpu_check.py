"""The prepared GPU check, as far as a CPU machine can take it: it must say "no CUDA device" and exit 0,
run from a bare checkout, and its torch rows must compute (here on CPU) with honest parity figures."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import chs.benchmarks.gpu_check as gc

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")


@no_cuda
def test_without_cuda_it_says_so_and_exits_0():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--iters", "2"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == gc.NO_CUDA and not r.stderr.strip()
    from typer.testing import CliRunner

    from chs.cli import bench_app

    res = CliRunner().invoke(bench_app, ["gpu", "--iters", "2"])
    assert res.exit_code == 0 and res.output.strip() == gc.NO_CUDA


def test_runs_from_a_bare_checkout():
    """Without the installed package (the lent GPU machines have none), the script maps the folders itself."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path[:] = [p for p in sys.path if "__editable__" not in p]
        import importlib.util
        assert importlib.util.find_spec("chs") is None, "chs is still importable"
        sys.path.insert(0, {str(ROOT / "benchmarks")!r})
        import gpu_check
        gpu_check.ensure_chs_importable()
        import chs.runtime.backends.trt_sidecar as m
        print(m.__file__)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == ROOT / "runtime" / "backends" / "trt_sidecar.py"


def test_torch_rows_compute_on_cpu(monkeypatch):
    from chs.model.chs import build_model
    from chs.model.config import get_preset

    torch.manual_seed(0)
    model = build_model(get_preset("ytf68"))
    s = model.cfg.input_size
    crops = np.random.default_rng(0).normal(size=(8, 3, s, s)).astype(np.float32)
    only = ("torch eager FP32", "torch CUDA graph FP32", "torch BF16 autocast")  # CPU FP16 convs crawl
    monkeypatch.setattr(gc, "BATCHES", (1, 2))
    monkeypatch.setattr(gc, "WARMUP", 0)
    rows = gc._torch_rows(model, crops[:2], iters=1, device="cpu", only=only)
    by = {(r["path"], r["batch"]): r for r in rows}
    assert by[("torch eager FP32", 1)]["max_dpx"] < 1e-3 and by[("torch eager FP32", 2)]["max_dpx"] < 1e-3
    assert by[("torch CUDA graph FP32", None)]["note"].startswith("skipped: CUDA graphs need a CUDA device")
    assert all(r["ms_per_face"] > 0 for r in rows if r["batch"])
    bf16 = by[("torch BF16 autocast", 2)]["max_dpx"]
    assert 0.0 < bf16 < s  # low precision moves landmarks a little, not off the crop
    table = gc.format_table(rows, "header")
    assert table.count("\n| torch") == len(rows) and "| torch eager FP32 | 2 |" in table

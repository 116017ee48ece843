"""nvidia-smi is asked in one place (trt_env.nvidia_smi): the TensorRT probes and the benchmarks' machine
record parse its lines; a fake nvidia-smi on PATH stands in for the real one."""

from __future__ import annotations

import os
import stat

from chs.benchmarks.machine import _gpus
from chs.runtime.backends.trt_env import gpu_info, gpu_present, nvidia_smi

FAKE = """#!/bin/sh
case "$1" in
  -L) echo "GPU 0: NVIDIA H200 (UUID: GPU-1234)";;
  --query-gpu=name,compute_cap) echo "NVIDIA H200, 9.0";;
  --query-gpu=name,driver_version,memory.total) echo "NVIDIA H200, 570.86, 143771";;
  *) exit 3;;
esac
"""


def _fake_smi(tmp_path, monkeypatch, text: str = FAKE) -> None:
    exe = tmp_path / "nvidia-smi"
    exe.write_text(text)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def test_probes_parse_one_nvidia_smi(tmp_path, monkeypatch):
    _fake_smi(tmp_path, monkeypatch)
    assert gpu_present() == (True, "GPU 0: NVIDIA H200 (UUID: GPU-1234)")
    no_cudart = object()  # a cudart that cannot answer: nvidia-smi is asked next
    assert gpu_info(no_cudart) == {"name": "NVIDIA H200", "compute_capability": "9.0", "source": "nvidia-smi"}
    assert _gpus() == [{"name": "NVIDIA H200", "driver": "570.86", "memory_mib": "143771"}]
    assert nvidia_smi("--bogus") == []  # a failing call is no answer, not an exception


def test_without_nvidia_smi_nothing_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert nvidia_smi("-L") == [] and _gpus() == []
    assert gpu_present()[0] is os.path.exists("/dev/nvidia0")

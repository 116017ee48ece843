"""The TensorRT runner's defences against what the real API does and the fake now mimics: refused and
misaligned tensor addresses, producers that need stream ordering, tensors that require grad, engines from
another TensorRT or GPU, a driver too old for cuda-python, and the process-wide logger.

Outcomes are checked (the numbers the engine computed, the error line), not the order of calls.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
from fake_tensorrt import FakeCudaArray, FakeCudart, FakeCudaTensor, landmark_engine_bytes, make_fake_trt
from test_trt_runner import N_PTS, S, _expected, _write_engine

from chs.runtime.backends.cuda_interop import ALIGNMENT, cuda_call
from chs.runtime.backends.trt import TensorRTRunner
from chs.runtime.backends.trt_env import shared_logger
from chs.runtime.errors import ChsError


def _runner(tmp: Path, trt, cu, **facts) -> TensorRTRunner:
    return TensorRTRunner(_write_engine(tmp, landmark_engine_bytes(S, N_PTS), engine_facts=facts), trt=trt, cudart=cu)


def _upload_at_offset(cu: FakeCudart, x: np.ndarray, offset: int) -> int:
    """Device copy of x starting ``offset`` bytes into a fresh (aligned) allocation."""
    raw = np.zeros(x.nbytes + offset, np.uint8)
    base = cu.upload(raw)
    cu.write(base + offset, np.ascontiguousarray(x).tobytes())
    return base + offset


def test_misaligned_input_is_copied_not_run_on_stale_data(tmp_path, trt, cu):
    r = _runner(tmp_path, trt, cu)
    first = np.full((2, 3, S, S), 1.0, np.float32)
    r.infer_device(FakeCudaArray(cu.upload(first), first.shape))  # binds an aligned input
    second = np.random.default_rng(3).random((2, 3, S, S), dtype=np.float32)
    ptr = _upload_at_offset(cu, second, 4)
    assert ptr % ALIGNMENT
    out = r.infer_device(FakeCudaArray(ptr, second.shape), to_host=True)
    np.testing.assert_allclose(out["landmarks"], _expected(second)[0], rtol=1e-6)  # not the first batch's 1.0
    np.testing.assert_allclose(out["scores"], _expected(second)[1], rtol=1e-6)


def test_refused_tensor_address_is_an_error(tmp_path, trt, cu, monkeypatch):
    r = _runner(tmp_path, trt, cu)
    x = np.ones((1, 3, S, S), np.float32)
    r.infer(x)
    ctx = r._state().context
    monkeypatch.setattr(ctx, "set_tensor_address", lambda name, memory: name != "scores")
    with pytest.raises(ChsError, match="TensorRT refused the device address 0x[0-9a-f]+ for tensor 'scores'"):
        r.infer(x)


def test_dlpack_is_preferred_and_ordered_on_the_engine_stream(tmp_path, trt, cu):
    r = _runner(tmp_path, trt, cu)
    x = np.random.default_rng(4).random((3, 3, S, S), dtype=np.float32)
    t = FakeCudaTensor(cu.upload(x), x.shape)  # torch-like: DLPack + CAI v2 without a stream
    out = r.infer_device(t, to_host=True)
    np.testing.assert_allclose(out["landmarks"], _expected(x)[0], rtol=1e-6)
    (own,) = cu.streams
    assert t.dlpack_streams == [own]  # the producer was asked to order its work before the engine's stream

    class Ext:
        cuda_stream = 0x4242

    r.infer_device(t, stream=Ext())
    assert t.dlpack_streams[-1] == 0x4242
    r.infer_device(t, stream=0)  # the legacy default stream is 1 in DLPack (0 is not allowed)
    assert t.dlpack_streams[-1] == 1


def test_requires_grad_is_one_line(tmp_path, trt, cu):
    r = _runner(tmp_path, trt, cu)
    t = FakeCudaTensor(cu.upload(np.zeros((1, 3, S, S), np.float32)), (1, 3, S, S), requires_grad=True)
    with pytest.raises(ChsError, match=r"^the device input requires grad: pass tensor.detach\(\) to infer_device$"):
        r.infer_device(t)
    torch = pytest.importorskip("torch")
    with pytest.raises(ChsError, match="requires grad"):
        r.infer_device(torch.zeros((1, 3, S, S), requires_grad=True))


@pytest.mark.parametrize(
    ("facts", "message"),
    [
        ({"tensorrt_version": "10.9.0"}, "built with TensorRT 10.9.0; this is TensorRT 11.0.0"),
        ({"gpu": {"name": "NVIDIA A10", "compute_capability": "8.6"}},
         r"built for compute capability 8.6 \(NVIDIA A10\); this GPU has compute capability 9.0"),
    ],
)
def test_engine_from_another_tensorrt_or_gpu_names_the_difference(tmp_path, trt, cu, facts, message):
    with pytest.raises(ChsError, match=message):
        _runner(tmp_path, trt, cu, **facts)
    assert "deserialize_cuda_engine" not in trt.recorder.names()  # refused before TensorRT sees it


def test_driver_too_old_for_cuda_python_names_both(tmp_path):
    cu = FakeCudart(runtime=13000, driver=12040)
    with pytest.raises(ChsError) as e:
        _runner(tmp_path, make_fake_trt(cudart=cu), cu)
    msg = str(e.value)
    assert "cudaErrorInsufficientDriver" in msg and "built for CUDA 13" in msg
    assert "driver supports CUDA 12.4 only" in msg and "chs[tensorrt-cu12]" in msg and "\n" not in msg


def test_cuda_call_names_missing_driver():
    cu = FakeCudart(driver=0)
    with pytest.raises(ChsError, match="no NVIDIA driver is installed"):
        cuda_call(cu, cu.cudaSetDevice(0), "cudaSetDevice")


def test_runners_share_one_logger_that_outlives_them(tmp_path, trt, cu):
    a = _runner(tmp_path, trt, cu)
    b = TensorRTRunner(a.engine_path, trt=trt, cudart=cu)
    assert len(trt.recorder.find("Logger")) == 1 and len(trt.recorder.find("init_libnvinfer_plugins")) == 1
    ref = weakref.ref(trt.plugin_logger)
    a.close()
    b.close()
    del a, b
    gc.collect()
    assert ref() is not None and ref() is shared_logger(trt)


def test_synchronize_and_close(tmp_path, trt, cu):
    r = _runner(tmp_path, trt, cu)
    r.synchronize()  # no thread state yet: nothing to wait for
    r.infer(np.zeros((1, 3, S, S), np.float32))
    (own,) = cu.streams
    cu.recorder.calls.clear()
    r.synchronize()
    assert cu.recorder.find("cudaStreamSynchronize") == [(own,)]
    r.close()
    r.close()  # idempotent
    assert not cu.mem and not cu.streams

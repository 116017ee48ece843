"""TensorRTRunner end to end on CPU against the fake TensorRT + fake cuda-python runtime.

The fake context writes landmarks = per-sample input mean and scores = mean + 1, so the tests see real
data flow host -> "device" -> engine -> "device" -> host. Real TensorRT behaviour is not covered here.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from fake_tensorrt import FakeCudaArray, landmark_engine_bytes, make_fake_trt
from onnx import TensorProto, helper

from chs.export.tensorrt import build_engine
from chs.runtime.artifact import ModelMeta
from chs.runtime.backends.base import Runner
from chs.runtime.backends.cuda_interop import DeviceTensor, parse_cuda_array, parse_dlpack, stream_handle
from chs.runtime.backends.trt import TensorRTRunner
from chs.runtime.backends.trt_sidecar import sidecar_record
from chs.runtime.contract import io_contract
from chs.runtime.errors import ChsError

S, N_PTS = 8, 5
META = ModelMeta(scheme="test5", num_points=N_PTS, input_size=S, heatmap_stride=2, ccr=0)


def _write_engine(
    tmp: Path, data: bytes, *, meta: ModelMeta = META, engine_facts: dict | None = None, sidecar: dict | None = None
) -> Path:
    """An engine file and its sidecar as chs.export.tensorrt writes them; ``engine_facts`` / ``sidecar``
    override entries of the contract's engine block / of the sidecar itself."""
    engine = tmp / "model.engine"
    engine.write_bytes(data)
    inputs = [{"name": "input", "shape": [-1, 3, S, S], "dtype": "float32"}]
    outputs = [
        {"name": "landmarks", "shape": [-1, N_PTS, 2], "dtype": "float32"},
        {"name": "scores", "shape": [-1, N_PTS], "dtype": "float32"},
    ]
    facts = {
        "file": engine.name,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "tensorrt_version": "11.0.0",
        "gpu": {"name": "Fake GPU 80GB", "compute_capability": "9.0"},
    }
    facts.update(engine_facts or {})
    sc = sidecar_record(io_contract(meta, inputs, outputs, facts))
    sc.update(sidecar or {})
    (tmp / "model.engine.json").write_text(json.dumps(sc))
    return engine


def _runner(tmp: Path, trt, cu, **kw) -> TensorRTRunner:
    return TensorRTRunner(_write_engine(tmp, landmark_engine_bytes(S, N_PTS, **kw)), trt=trt, cudart=cu)


def _expected(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = x.astype(np.float32).reshape(len(x), -1).mean(axis=1)
    return np.broadcast_to(m[:, None, None], (len(x), N_PTS, 2)), np.broadcast_to(
        m[:, None] + 1, (len(x), N_PTS)
    )


def test_infer_end_to_end(tmp_path, trt, cu):
    r = _runner(tmp_path, trt, cu)
    assert isinstance(r, Runner) and r.name == "trt" and r.meta.num_points == N_PTS
    assert (r.min_batch, r.max_batch) == (1, 4)
    x = np.random.default_rng(0).normal(size=(3, 3, S, S)).astype(np.float32)
    out = r.infer(x)
    lm, sc = _expected(x)
    assert out["landmarks"].dtype == np.float32 and out["landmarks"].shape == (3, N_PTS, 2)
    np.testing.assert_allclose(out["landmarks"], lm, rtol=1e-6)
    np.testing.assert_allclose(out["scores"], sc, rtol=1e-6)
    rec = trt.recorder
    assert rec.find("set_input_shape") == [("input", (3, 3, S, S))]
    assert {a[0] for a in rec.find("set_tensor_address")} == {"input", "landmarks", "scores"}
    (stream,) = cu.streams
    assert rec.find("execute_async_v3") == [(stream,)]
    kinds = [c[0] for c in cu.recorder.find("memcpy")]
    assert kinds == [1, 2, 2] and all(c[2] == stream for c in cu.recorder.find("memcpy"))
    assert cu.recorder.find("cudaStreamSynchronize") == [(stream,)]
    r.close()
    assert not cu.mem and not cu.streams
    with pytest.raises(ChsError, match="closed"):
        r.infer(x)


def test_build_then_run_on_fakes(tmp_path, cu):
    """chs.export.tensorrt's engine + sidecar feed the runner directly."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, S, S])
    lm = helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, ["N", N_PTS, 2])
    sc = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", N_PTS])
    consts = [
        helper.make_tensor(n, TensorProto.INT64, [len(v)], v)
        for n, v in [("zero", [0]), ("ten", [10]), ("five", [N_PTS]), ("one", [1]), ("shape", [-1, N_PTS, 2])]
    ]
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("Slice", ["flat", "zero", "ten", "one"], ["s10"]),
        helper.make_node("Reshape", ["s10", "shape"], ["landmarks"]),
        helper.make_node("Slice", ["flat", "zero", "five", "one"], ["scores"]),
    ]
    graph = helper.make_graph(nodes, "io", [x], [lm, sc], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / "m.onnx")
    trt = make_fake_trt("11.0.0", cudart=cu)
    build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", trt=trt, meta=META, batch=(1, 2, 4), cudart=cu)
    r = TensorRTRunner(tmp_path / "m.engine", trt=trt, cudart=cu)
    batch = np.random.default_rng(1).random((2, 3, S, S), dtype=np.float32)
    out = r.infer(batch)
    np.testing.assert_allclose(out["landmarks"], _expected(batch)[0], rtol=1e-6)


def test_float16_engines(tmp_path, trt, cu):
    r = _runner(tmp_path, trt, cu, input_dtype="HALF", output_dtype="HALF")
    assert r.input_dtype == np.float16
    x = np.full((2, 3, S, S), 0.25, np.float32)
    for batch in (x, x.astype(np.float16)):
        out = r.infer(batch)
        assert out["landmarks"].dtype == np.float32 and out["scores"].dtype == np.float32
        np.testing.assert_allclose(out["landmarks"], 0.25)
        np.testing.assert_allclose(out["scores"], 1.25)
    with pytest.raises(ChsError, match="must be float16"):
        r.infer(x.astype(np.float64))


def test_infer_validation(tmp_path, trt, cu):
    r = _runner(tmp_path, trt, cu)
    good = np.zeros((2, 3, S, S), np.float32)
    with pytest.raises(ChsError, match="must be float32, got float64"):
        r.infer(good.astype(np.float64))
    with pytest.raises(ChsError, match="must be float32, got float16"):
        r.infer(good.astype(np.float16))
    with pytest.raises(ChsError, match=r"shape \(N, 3, 8, 8\)"):
        r.infer(good[0])
    with pytest.raises(ChsError, match=r"shape \(N, 3, 8, 8\)"):
        r.infer(np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(ChsError, match="batch of 5 exceeds the engine's profile maximum 4"):
        r.infer(np.zeros((5, 3, S, S), np.float32))
    with pytest.raises(ChsError, match="numpy array"):
        r.infer(good.tolist())
    with pytest.raises(ChsError, match="NaN or infinity"):  # the runner base's check, shared by every backend
        r.infer(np.full((2, 3, S, S), np.nan, np.float32))
    empty = r.infer(np.zeros((0, 3, S, S), np.float32))
    assert empty["landmarks"].shape == (0, N_PTS, 2) and empty["scores"].shape == (0, N_PTS)
    assert "execute_async_v3" not in trt.recorder.names()


def test_one_context_and_stream_per_thread(tmp_path, trt, cu):
    r = _runner(tmp_path, trt, cu)
    results, errors = {}, []

    def work(i: int) -> None:
        try:
            x = np.full((1 + i, 3, S, S), float(i), np.float32)
            for _ in range(3):
                results[i] = r.infer(x)["landmarks"]
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(3):
        np.testing.assert_allclose(results[i], float(i))
    assert trt.recorder.names().count("create_execution_context") == 3
    assert len(cu.streams) == 3
    r.close()
    assert not cu.mem


def test_truncated_or_foreign_engines(tmp_path, trt, cu):
    full = landmark_engine_bytes(S, N_PTS)
    with pytest.raises(ChsError, match="truncated"):  # sidecar hash no longer matches
        TensorRTRunner(
            _write_engine(tmp_path, full[:20], engine_facts={"bytes": len(full)}), trt=trt, cudart=cu
        )
    msg = "is truncated or was built by another TensorRT version"
    no_hash = {"bytes": None, "sha256": None, "tensorrt_version": "unknown"}
    with pytest.raises(ChsError, match=msg):  # deserialize_cuda_engine returns None
        TensorRTRunner(_write_engine(tmp_path, full[:20], engine_facts=no_hash), trt=trt, cudart=cu)
    with pytest.raises(ChsError, match=msg):
        TensorRTRunner(_write_engine(tmp_path, b"", engine_facts=no_hash), trt=trt, cudart=cu)
    foreign = landmark_engine_bytes(S, N_PTS, version="10.9.0")
    with pytest.raises(ChsError, match=msg):  # a sidecar that does not know its version
        TensorRTRunner(_write_engine(tmp_path, foreign, engine_facts=no_hash), trt=trt, cudart=cu)


def test_sidecar_problems(tmp_path, trt, cu):
    engine = _write_engine(tmp_path, landmark_engine_bytes(S, N_PTS))
    with pytest.raises(ChsError, match="does not exist"):
        TensorRTRunner(tmp_path / "other.engine", trt=trt, cudart=cu)
    with pytest.raises(ChsError, match="sidecar .* is missing"):
        TensorRTRunner(engine, tmp_path / "elsewhere.json", trt=trt, cudart=cu)
    _write_engine(tmp_path, landmark_engine_bytes(S, N_PTS), sidecar={"contract": None})
    with pytest.raises(ChsError, match="no model metadata"):
        TensorRTRunner(engine, trt=trt, cudart=cu)
    _write_engine(tmp_path, landmark_engine_bytes(S, N_PTS), sidecar={"sidecar_version": 1})
    with pytest.raises(ChsError, match="sidecar_version 1; this chs reads 2: rebuild the engine"):
        TensorRTRunner(engine, trt=trt, cudart=cu)
    c = io_contract(META, [], [])
    c["contract_version"] = 2
    _write_engine(tmp_path, landmark_engine_bytes(S, N_PTS), sidecar={"contract": c})
    with pytest.raises(ChsError, match="upgrade chs"):
        TensorRTRunner(engine, trt=trt, cudart=cu)
    _write_engine(tmp_path, landmark_engine_bytes(S, N_PTS), meta=ModelMeta("x", N_PTS, 16, 4, 0))
    with pytest.raises(ChsError, match="does not match the sidecar's input_size 16"):
        TensorRTRunner(engine, trt=trt, cudart=cu)
    (tmp_path / "model.engine.json").write_text("{broken")
    with pytest.raises(ChsError, match="not valid JSON"):
        TensorRTRunner(engine, trt=trt, cudart=cu)


def test_engine_without_chs_outputs(tmp_path, trt, cu):
    from fake_tensorrt import engine_bytes_from_spec

    spec = {
        "tensors": [
            {"name": "input", "shape": [-1, 3, S, S], "dtype": "FLOAT", "mode": "INPUT"},
            {"name": "landmarks", "shape": [-1, N_PTS, 2], "dtype": "FLOAT", "mode": "OUTPUT"},
        ],
        "profiles": {"input": [[1, 3, S, S]] * 3},
    }
    with pytest.raises(ChsError, match="lacks output.*scores"):
        TensorRTRunner(_write_engine(tmp_path, engine_bytes_from_spec(spec)), trt=trt, cudart=cu)


# ------------------------------------------------------------------------------------------ device input


def test_infer_device_cuda_array_interface(tmp_path, trt, cu):
    r = _runner(tmp_path, trt, cu)
    x = np.random.default_rng(2).random((2, 3, S, S), dtype=np.float32)
    ptr = cu.upload(x)
    cu.recorder.calls.clear()
    out = r.infer_device(FakeCudaArray(ptr, x.shape))
    assert not [c for c in cu.recorder.find("memcpy") if c[0] == 1]  # no host->device copy of the input
    assert ("input", ptr) in trt.recorder.find("set_tensor_address")
    lm = out["landmarks"]
    assert isinstance(lm, DeviceTensor)
    cai = lm.__cuda_array_interface__
    assert cai["shape"] == (2, N_PTS, 2) and cai["typestr"] == "<f4" and cai["version"] == 3
    assert cai["stream"] is None  # the runner synchronised its own stream
    assert parse_cuda_array(lm) == (lm.ptr, (2, N_PTS, 2), "float32")
    np.testing.assert_allclose(lm.to_host(), _expected(x)[0], rtol=1e-6)
    np.testing.assert_allclose(out["scores"].to_host(), _expected(x)[1], rtol=1e-6)
    host = r.infer_device(FakeCudaArray(ptr, x.shape), to_host=True)
    assert isinstance(host["scores"], np.ndarray)


def test_infer_device_external_stream_and_raw_pointer(tmp_path, trt, cu):
    r = _runner(tmp_path, trt, cu)
    x = np.full((1, 3, S, S), 2.0, np.float32)
    ptr = cu.upload(x)

    class TorchLikeStream:
        cuda_stream = 0x777

    cu.recorder.calls.clear()
    out = r.infer_device(ptr, shape=x.shape, stream=TorchLikeStream())
    assert trt.recorder.find("execute_async_v3")[-1] == (0x777,)
    assert not cu.recorder.find("cudaStreamSynchronize")  # nothing waits on a caller's stream
    assert out["landmarks"].__cuda_array_interface__["stream"] == 0x777
    np.testing.assert_allclose(out["landmarks"].to_host(), 2.0)
    assert cu.recorder.find("memcpy")[-1][2] == 0x777
    with pytest.raises(ChsError, match="needs shape"):
        r.infer_device(ptr)
    # a CAI v3 producer stream is waited on before the engine reads
    cu.recorder.calls.clear()
    r.infer_device(FakeCudaArray(ptr, x.shape, stream=0x999))
    assert (0x999,) in cu.recorder.find("cudaStreamSynchronize")


def test_infer_device_validation(tmp_path, trt, cu):
    r = _runner(tmp_path, trt, cu)
    ptr = cu.upload(np.zeros((4, 3, S, S), np.float32))
    with pytest.raises(ChsError, match="must be float32 for this engine, got float16"):
        r.infer_device(FakeCudaArray(ptr, (2, 3, S, S), typestr="<f2"))
    with pytest.raises(ChsError, match="not C-contiguous"):
        r.infer_device(FakeCudaArray(ptr, (2, 3, S, S), strides=(4, 2 * 4 * S * S * 3, 4 * S, 4)))
    with pytest.raises(ChsError, match="exceeds"):
        r.infer_device(FakeCudaArray(ptr, (5, 3, S, S)))
    with pytest.raises(ChsError, match=r"shape \(N, 3, 8, 8\)"):
        r.infer_device(FakeCudaArray(ptr, (2, 3, S)))
    with pytest.raises(ChsError, match="not on a CUDA GPU"):
        r.infer_device(np.zeros((1, 3, S, S), np.float32))  # host memory via DLPack
    with pytest.raises(ChsError, match="null"):
        r.infer_device(FakeCudaArray(0, (1, 3, S, S)))
    with pytest.raises(ChsError, match="takes a CUDA array"):
        r.infer_device("nope")


# ------------------------------------------------------------------------------------------ pure helpers


def test_parse_cuda_array():
    s = (2, 3, 4, 4)
    assert parse_cuda_array(FakeCudaArray(1234, s)) == (1234, s, "float32")
    assert parse_cuda_array(FakeCudaArray(1234, s, typestr="<f2", version=2)) == (1234, s, "float16")
    c_strides = (3 * 16 * 4, 16 * 4, 4 * 4, 4)
    assert parse_cuda_array(FakeCudaArray(8, s, strides=c_strides))[1] == s
    assert parse_cuda_array(FakeCudaArray(8, (1, 3, 4, 4), strides=(999, 64, 16, 4)))[1] == (1, 3, 4, 4)
    assert parse_cuda_array({"version": 3, "data": (5, False), "shape": s, "typestr": "<f4"})[0] == 5
    assert parse_cuda_array((77, s)) == (77, s, "float32")
    assert parse_cuda_array((77, s, "float16")) == (77, s, "float16")
    assert parse_cuda_array(FakeCudaArray(3, s, typestr="<i4"))[2] == "int32"
    with pytest.raises(ChsError, match="not C-contiguous"):
        parse_cuda_array(FakeCudaArray(8, s, strides=(4, 64, 16, 4)))
    with pytest.raises(ChsError, match="version 1"):
        parse_cuda_array(FakeCudaArray(8, s, version=1))
    with pytest.raises(ChsError, match="big-endian"):
        parse_cuda_array(FakeCudaArray(8, s, typestr=">f4"))
    bad = FakeCudaArray(8, s)
    bad.__cuda_array_interface__["mask"] = object()
    with pytest.raises(ChsError, match="masked"):
        parse_cuda_array(bad)
    with pytest.raises(ChsError, match="not a CUDA array"):
        parse_cuda_array(object())


def test_parse_dlpack_reads_the_capsule():
    a = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    ptr, shape, dtype, capsule = parse_dlpack(a, require_cuda=False)
    assert (ptr, shape, dtype) == (a.ctypes.data, a.shape, "float32")
    assert capsule is not None
    h = a[1:].astype(np.float16)
    assert parse_dlpack(h, require_cuda=False)[:3] == (h.ctypes.data, h.shape, "float16")
    assert parse_dlpack(a[1:], require_cuda=False)[0] == a.ctypes.data + a[0].nbytes
    with pytest.raises(ChsError, match="not C-contiguous"):
        parse_dlpack(a[:, :, :, ::2], require_cuda=False)
    with pytest.raises(ChsError, match="need float32/float16"):
        parse_dlpack(np.zeros(3, np.int32), require_cuda=False)
    with pytest.raises(ChsError, match="not on a CUDA GPU"):
        parse_dlpack(a)


def test_stream_handle():
    class Torch:
        cuda_stream = 11

    class Cupy:
        ptr = 12

    class Numba:
        handle = ctypes.c_void_p(13)

    class CudaPython:
        def __int__(self) -> int:
            return 14

    assert [stream_handle(s) for s in (None, 10, Torch(), Cupy(), Numba(), CudaPython())] == [
        None,
        10,
        11,
        12,
        13,
        14,
    ]
    with pytest.raises(ChsError, match="stream handle"):
        stream_handle("default")

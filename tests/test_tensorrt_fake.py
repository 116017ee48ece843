"""chs.export.tensorrt against the recorded fake TensorRT (no GPU, no tensorrt here).

These tests pin down which TensorRT calls the builder makes; they cannot show that a real TensorRT
accepts them.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from fake_tensorrt import ENGINE_MAGIC, FakeCudart, make_fake_trt
from onnx import TensorProto, helper

import chs.export.tensorrt as trt_export
from chs.export.tensorrt import (
    build_engine,
    build_engine_subprocess,
    interpret_child,
    sidecar_path_for,
    tensorrt_available,
)
from chs.runtime.artifact import ModelMeta
from chs.runtime.errors import ChsError

TESTS = Path(__file__).resolve().parent
META = ModelMeta(scheme="wflw", num_points=98, input_size=8, heatmap_stride=4, ccr=3, precision="fp16")


def _onnx(path: Path, *, op: str = "Relu", batch: int | str = "N", meta: ModelMeta | None = None) -> Path:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 3, 8, 8])
    graph = helper.make_graph([helper.make_node(op, ["input"], ["output"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if meta is not None:
        helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return _onnx(tmp_path / "model.onnx")


def test_import_does_not_import_tensorrt():
    importlib.import_module("chs.export.tensorrt")
    importlib.import_module("chs.runtime.backends.trt")
    assert "tensorrt" not in sys.modules
    tensorrt_available()
    assert "tensorrt" not in sys.modules
    code = (
        "import sys, chs.export.tensorrt as m, chs.runtime.backends.trt; m.tensorrt_available();"
        "print('tensorrt' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_tensorrt_available_reasons(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorrt" else real(n, *a))
    ok, why = tensorrt_available()
    assert not ok
    assert why == "TensorRT engine step needs the tensorrt package and an NVIDIA GPU: tensorrt not installed"
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "tensorrt" else real(n, *a)
    )
    monkeypatch.setattr(trt_export, "_gpu_present", lambda: (False, "no NVIDIA GPU found"))
    ok, why = tensorrt_available()
    assert not ok and why.endswith(": no NVIDIA GPU found")


@pytest.mark.skipif(tensorrt_available()[0], reason="a real TensorRT is present")
def test_without_tensorrt_build_says_why(onnx_file, tmp_path):
    with pytest.raises(ChsError, match="needs the tensorrt package and an NVIDIA GPU"):
        build_engine(onnx_file, tmp_path / "m.engine", meta=META)


@pytest.mark.parametrize("version", ["11.0.0", "10.9.0"])
def test_build_records_the_modern_path(onnx_file, tmp_path, version):
    trt = make_fake_trt(version)
    cache = tmp_path / "caches" / "timing.cache"
    engine = tmp_path / "out" / "model.engine"
    sidecar = build_engine(onnx_file, engine, trt=trt, meta=META, timing_cache=cache, cudart=FakeCudart())
    rec = trt.recorder
    names = rec.names()

    # strongly typed network; no precision flags, calibrators or config attributes touched
    assert rec.find("create_network") == [(1 << 1,)]
    assert not [n for n in names if n.startswith("BuilderFlag.") or n.startswith("config.")]
    assert "set_flag" not in names
    # plugins before parsing; parse from the file
    assert rec.index("init_libnvinfer_plugins") < rec.index("parse_from_file")
    assert rec.find("parse_from_file") == [(str(onnx_file),)]
    # one batch profile, workspace limit, timing cache created, set, saved
    assert rec.find("profile.set_shape") == [("input", (1, 3, 8, 8), (8, 3, 8, 8), (32, 3, 8, 8))]
    assert rec.find("set_memory_pool_limit") == [(trt.MemoryPoolType.WORKSPACE, 2048 << 20)]
    assert rec.find("create_timing_cache") == [(b"",)]
    assert rec.find("set_timing_cache")[0][1] is False
    assert rec.index("set_timing_cache") < rec.index("build_serialized_network")
    assert cache.read_bytes() == b"|fake-timing-entries"
    # engine and sidecar on disk
    (serialized,) = rec.find("serialized")
    assert engine.read_bytes() == serialized[0] and engine.read_bytes().startswith(ENGINE_MAGIC)
    assert sidecar_path_for(engine) == tmp_path / "out" / "model.engine.json"
    assert json.loads(sidecar_path_for(engine).read_text()) == sidecar
    for key in ("tensorrt_version", "gpu", "precision", "inputs", "outputs", "profile", "contract", "meta"):
        assert key in sidecar
    assert sidecar["tensorrt_version"] == version
    assert sidecar["gpu"] == {"name": "Fake GPU 80GB", "compute_capability": "9.0", "source": "cuda-python"}
    assert sidecar["precision"] == "fp16" and sidecar["strongly_typed"] is True
    assert sidecar["inputs"] == [{"name": "input", "shape": [-1, 3, 8, 8], "dtype": "float32"}]
    assert sidecar["outputs"] == [{"name": "output", "shape": [-1, 3, 8, 8], "dtype": "float32"}]
    assert sidecar["profile"]["max"] == [32, 3, 8, 8]
    assert sidecar["contract"]["contract_version"] == 1
    assert sidecar["contract"]["engine"]["tensorrt_version"] == version
    assert sidecar["contract"]["normalization"]["mean"] == [0.5, 0.5, 0.5]

    # a second build loads the saved cache
    trt2 = make_fake_trt(version)
    build_engine(onnx_file, engine, trt=trt2, meta=META, timing_cache=cache, batch=(2, 4, 6), workspace_mb=64)
    assert trt2.recorder.find("create_timing_cache") == [(b"|fake-timing-entries",)]
    assert trt2.recorder.find("profile.set_shape") == [("input", (2, 3, 8, 8), (4, 3, 8, 8), (6, 3, 8, 8))]
    assert trt2.recorder.find("set_memory_pool_limit")[0][1] == 64 << 20


def test_removed_flags_really_raise_in_fake_11():
    trt = make_fake_trt("11.0.0")
    for name in ("FP16", "INT8", "BF16"):
        with pytest.raises(AttributeError):
            getattr(trt.BuilderFlag, name)
    assert make_fake_trt("10.9.0").BuilderFlag.FP16 == 10


def test_no_strongly_typed_flag(onnx_file, tmp_path):
    trt = make_fake_trt("11.0.0", strongly_typed_flag=False)
    build_engine(onnx_file, tmp_path / "m.engine", trt=trt, meta=META)
    assert trt.recorder.find("create_network") == [(0,)]
    assert "create_timing_cache" not in trt.recorder.names()
    old = make_fake_trt("8.6.1", strongly_typed_flag=False)
    with pytest.raises(ChsError, match="no strongly typed networks"):
        build_engine(onnx_file, tmp_path / "o.engine", trt=old, meta=META)


def test_parser_errors_become_chserror(onnx_file, tmp_path):
    trt = make_fake_trt(parse_errors=["No importer registered for op: Foo", "second"])
    with pytest.raises(ChsError, match="could not parse .*No importer registered for op: Foo.*second"):
        build_engine(onnx_file, tmp_path / "m.engine", trt=trt, meta=META)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01not onnx at all")
    with pytest.raises(ChsError, match="could not parse"):
        build_engine(garbage, tmp_path / "m.engine", trt=make_fake_trt(), meta=META)
    assert not (tmp_path / "m.engine").exists()


def test_build_failure_and_bad_arguments(onnx_file, tmp_path):
    with pytest.raises(ChsError, match="could not build"):
        build_engine(onnx_file, tmp_path / "m.engine", trt=make_fake_trt(fail_build=True), meta=META)
    with pytest.raises(ChsError, match="no input 'image'"):
        build_engine(onnx_file, tmp_path / "m.engine", trt=make_fake_trt(), input_name="image", meta=META)
    with pytest.raises(ChsError, match="min <= opt <= max"):
        build_engine(onnx_file, tmp_path / "m.engine", trt=make_fake_trt(), batch=(8, 4, 2))
    with pytest.raises(ChsError, match="does not exist"):
        build_engine(tmp_path / "nope.onnx", tmp_path / "m.engine", trt=make_fake_trt())
    fixed = _onnx(tmp_path / "fixed.onnx", batch=1)
    with pytest.raises(ChsError, match="fixed batch of 1"):
        build_engine(fixed, tmp_path / "m.engine", trt=make_fake_trt(), meta=META)
    trt = make_fake_trt()
    build_engine(fixed, tmp_path / "m.engine", trt=trt, batch=(1, 1, 1), meta=META)
    assert "profile.set_shape" not in trt.recorder.names()


def test_meta_comes_from_onnx_when_not_given(tmp_path):
    with_meta = _onnx(tmp_path / "a.onnx", meta=META)
    sc = build_engine(with_meta, tmp_path / "a.engine", trt=make_fake_trt())
    assert sc["precision"] == "fp16" and sc["meta"]["scheme"] == "wflw"
    bare = _onnx(tmp_path / "b.onnx")
    sc = build_engine(bare, tmp_path / "b.engine", trt=make_fake_trt())
    assert sc["precision"] == "unknown" and sc["contract"] is None


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    return env


def test_build_in_subprocess(onnx_file, tmp_path):
    engine = tmp_path / "sub" / "model.engine"
    sc = build_engine_subprocess(
        onnx_file,
        engine,
        batch=(1, 2, 4),
        meta=META,
        timing_cache=tmp_path / "t.cache",
        trt_factory="fake_tensorrt:make_fake_trt",
        env=_child_env(),
        timeout=120,
    )
    assert engine.is_file() and (tmp_path / "t.cache").is_file()
    assert sc["profile"]["max"] == [4, 3, 8, 8] and sc["precision"] == "fp16"
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"nope")
    with pytest.raises(ChsError, match="could not parse"):
        build_engine_subprocess(
            garbage, engine, trt_factory="fake_tensorrt:make_fake_trt", env=_child_env(), timeout=120
        )


def test_crash_at_exit_after_success_is_a_success(tmp_path):
    sidecar = tmp_path / "m.engine.json"
    sidecar.write_text(json.dumps({"precision": "fp32"}))
    out = f"chs-trt-build: ok {sidecar}\n"
    assert interpret_child(-11, out, "Segmentation fault", sidecar) == {"precision": "fp32"}
    with pytest.raises(ChsError, match="exit code -11"):
        interpret_child(-11, "", "Segmentation fault", sidecar)

"""chs.export.tensorrt against the recorded fake TensorRT (no GPU, no tensorrt here).

The fake refuses what the real API refuses (see its docstring); the tests check outcomes: what the built
engine records about how it was built, which files end up on disk, what the sidecar says.
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
from fake_tensorrt import CORRUPT_CACHE, ENGINE_MAGIC, OTHER_GPU_CACHE, FakeCudart, make_fake_trt
from onnx import TensorProto, helper

import chs.export.tensorrt as trt_export
import chs.runtime.backends.trt_env as trt_env
import chs.runtime.backends.trt_sidecar as trt_sidecar
from chs.export.tensorrt import (
    BuildOptions,
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
    monkeypatch.setattr(trt_export, "gpu_present", lambda: (False, "no NVIDIA GPU found"))
    ok, why = tensorrt_available()
    assert not ok and why.endswith(": no NVIDIA GPU found")


@pytest.mark.skipif(tensorrt_available()[0], reason="a real TensorRT is present")
def test_without_tensorrt_build_says_why(onnx_file, tmp_path):
    with pytest.raises(ChsError, match="needs the tensorrt package and an NVIDIA GPU"):
        build_engine(onnx_file, tmp_path / "m.engine", meta=META)


def _engine_spec(engine: Path) -> dict:
    """What the fake builder recorded inside the engine about how it was built."""
    return json.loads(engine.read_bytes()[len(ENGINE_MAGIC) :])


@pytest.mark.parametrize("version", ["11.0.0", "10.9.0"])
def test_build_writes_engine_and_sidecar(onnx_file, tmp_path, version):
    trt = make_fake_trt(version)
    cache = tmp_path / "caches" / "timing.cache"
    engine = tmp_path / "out" / "model.engine"
    sidecar = build_engine(onnx_file, engine, trt=trt, meta=META, timing_cache=cache, cudart=FakeCudart())
    spec = _engine_spec(engine)
    assert spec["strongly_typed"] is True and spec["profiles"]["input"] == [[1, 3, 8, 8], [8, 3, 8, 8], [32, 3, 8, 8]]
    # no precision flags touched: the ONNX carries the precision
    assert not [n for n in trt.recorder.names() if n.startswith("BuilderFlag.") and n != "BuilderFlag.TF32"]
    assert trt.recorder.find("set_memory_pool_limit") == [(trt.MemoryPoolType.WORKSPACE, 2048 << 20)]
    assert cache.read_bytes() == b"|fake-timing-entries"
    assert sidecar_path_for(engine) == tmp_path / "out" / "model.engine.json"
    assert json.loads(sidecar_path_for(engine).read_text()) == sidecar
    # the sidecar stores the metadata once (in the contract) and no precision of its own
    assert set(sidecar) == {"sidecar_version", "contract", "onnx", "build"}
    text = json.dumps({k: v for k, v in sidecar.items() if k != "contract"})
    assert "precision" not in text and "scheme" not in text
    contract, facts = sidecar["contract"], sidecar["contract"]["engine"]
    assert contract["precision"] == "fp16" and contract["meta"]["scheme"] == "wflw"
    assert "precision" not in contract["meta"]
    assert facts["tensorrt_version"] == version and facts["bytes"] == len(engine.read_bytes())
    assert facts["gpu"] == {"name": "Fake GPU 80GB", "compute_capability": "9.0", "source": "cuda-python"}
    assert facts["profile"]["max"] == [32, 3, 8, 8] and facts["tf32"] is False
    assert contract["inputs"] == [{"name": "input", "shape": [-1, 3, 8, 8], "dtype": "float32"}]
    assert sidecar["build"]["timing_cache_status"] == "new"
    assert trt_sidecar.read_sidecar(engine).meta == META

    # a second build loads the saved cache
    trt2 = make_fake_trt(version)
    sc2 = build_engine(onnx_file, engine, trt=trt2, meta=META, timing_cache=cache, batch=(2, 4, 6), workspace_mb=64)
    assert trt2.recorder.find("create_timing_cache") == [(b"|fake-timing-entries",)]
    assert sc2["build"]["timing_cache_status"] == "loaded"
    assert _engine_spec(engine)["profiles"]["input"] == [[2, 3, 8, 8], [4, 3, 8, 8], [6, 3, 8, 8]]
    assert trt2.recorder.find("set_memory_pool_limit")[0][1] == 64 << 20


def test_network_flags_per_major_version(onnx_file, tmp_path):
    """11.x: STRONGLY_TYPED = 0 is deprecated; passing 1 << 0 would ask for PREFER_JIT_PYTHON_PLUGINS."""
    build_engine(onnx_file, tmp_path / "a.engine", trt=make_fake_trt("11.0.0"), meta=META)
    spec = _engine_spec(tmp_path / "a.engine")
    assert spec["strongly_typed"] is True and spec["network_flags"] == []
    build_engine(onnx_file, tmp_path / "b.engine", trt=make_fake_trt("10.9.0"), meta=META)
    spec = _engine_spec(tmp_path / "b.engine")
    assert spec["strongly_typed"] is True and spec["network_flags"] == ["STRONGLY_TYPED"]


def test_tf32_is_cleared_unless_asked_for(onnx_file, tmp_path):
    sc = build_engine(onnx_file, tmp_path / "a.engine", trt=make_fake_trt(), meta=META)
    assert _engine_spec(tmp_path / "a.engine")["tf32"] is False and sc["contract"]["engine"]["tf32"] is False
    sc = build_engine(onnx_file, tmp_path / "b.engine", BuildOptions(tf32=True), trt=make_fake_trt(), meta=META)
    assert _engine_spec(tmp_path / "b.engine")["tf32"] is True and sc["contract"]["engine"]["tf32"] is True


@pytest.mark.parametrize("stale", [CORRUPT_CACHE + b"...", OTHER_GPU_CACHE + b"..."])
def test_refused_timing_cache_is_replaced(onnx_file, tmp_path, stale):
    """create_timing_cache -> None (corrupt) or set_timing_cache -> False (another GPU): build anyway."""
    cache = tmp_path / "timing.cache"
    cache.write_bytes(stale)
    engine = tmp_path / "m.engine"
    with pytest.warns(UserWarning, match="refused the timing cache"):
        sc = build_engine(onnx_file, engine, trt=make_fake_trt(), meta=META, timing_cache=cache)
    assert sc["build"]["timing_cache_status"] == "refused, rebuilt"
    assert cache.read_bytes() == b"|fake-timing-entries"
    assert trt_sidecar.read_sidecar(engine).engine["bytes"] == len(engine.read_bytes())


def test_no_timing_cache_after_build_still_writes_both(onnx_file, tmp_path):
    """get_timing_cache() may return None: the engine and its sidecar are written all the same."""
    engine, cache = tmp_path / "m.engine", tmp_path / "timing.cache"
    sc = build_engine(onnx_file, engine, trt=make_fake_trt(cache_out=False), meta=META, timing_cache=cache)
    assert engine.is_file() and sidecar_path_for(engine).is_file() and not cache.exists()
    assert sc["build"]["timing_cache_status"] == "new, not saved (TensorRT returned no timing cache)"
    trt_sidecar.read_sidecar(engine).check_engine_bytes(engine, engine.read_bytes())


def test_an_unsaved_timing_cache_leaves_no_temporary_file(onnx_file, tmp_path):
    """A timing cache that cannot be saved (its path is a folder) warns; no temporary file stays beside it."""
    engine, cache = tmp_path / "m.engine", tmp_path / "timing.cache"
    cache.mkdir()
    with pytest.warns(UserWarning, match="could not save the timing cache"):
        build_engine(onnx_file, engine, trt=make_fake_trt(), meta=META, timing_cache=cache)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json", "model.onnx", "timing.cache"]
    assert list(cache.iterdir()) == []


def test_engine_and_sidecar_are_written_together_or_not_at_all(onnx_file, tmp_path, monkeypatch):
    engine = tmp_path / "m.engine"
    build_engine(onnx_file, engine, trt=make_fake_trt(), meta=META)
    before = (engine.read_bytes(), sidecar_path_for(engine).read_text())

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(trt_sidecar.json, "dumps", broken)
    with pytest.raises(OSError, match="disk full"):
        build_engine(onnx_file, engine, trt=make_fake_trt(), meta=META, batch=(1, 2, 4))
    monkeypatch.undo()
    assert (engine.read_bytes(), sidecar_path_for(engine).read_text()) == before  # the old pair, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json", "model.onnx"]
    fresh = tmp_path / "new" / "m.engine"
    monkeypatch.setattr(trt_sidecar.json, "dumps", broken)
    with pytest.raises(OSError):
        build_engine(onnx_file, fresh, trt=make_fake_trt(), meta=META)
    assert not fresh.exists() and not sidecar_path_for(fresh).exists()


def test_one_logger_for_the_process(onnx_file, tmp_path):
    """The plugin library keeps a raw pointer to the first logger: it must outlive every build."""
    import gc
    import weakref

    trt = make_fake_trt()
    build_engine(onnx_file, tmp_path / "a.engine", trt=trt, meta=META)
    build_engine(onnx_file, tmp_path / "b.engine", trt=trt, meta=META)
    assert len(trt.recorder.find("Logger")) == 1 and len(trt.recorder.find("init_libnvinfer_plugins")) == 1
    ref = weakref.ref(trt.plugin_logger)
    gc.collect()
    assert ref() is not None and ref() is trt_env.shared_logger(trt)


def test_removed_flags_really_raise_in_fake_11():
    trt = make_fake_trt("11.0.0")
    for name in ("FP16", "INT8", "BF16"):
        with pytest.raises(AttributeError):
            getattr(trt.BuilderFlag, name)
    assert make_fake_trt("10.9.0").BuilderFlag.FP16 == 0


def test_no_strongly_typed_networks_before_10(onnx_file, tmp_path):
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
    with pytest.raises(ChsError, match="^batch needs 1 <= MIN <= OPT <= MAX, got 8:4:2$"):
        build_engine(onnx_file, tmp_path / "m.engine", trt=make_fake_trt(), batch=(8, 4, 2))
    with pytest.raises(ChsError, match="^batch must be three integers MIN:OPT:MAX, got 'abc'$"):
        build_engine(onnx_file, tmp_path / "m.engine", trt=make_fake_trt(), batch="abc")
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
    assert sc["contract"]["precision"] == "fp16" and sc["contract"]["meta"]["scheme"] == "wflw"
    bare = _onnx(tmp_path / "b.onnx")
    with pytest.raises(ChsError, match="carries no CHS metadata"):  # the runner could not serve it
        build_engine(bare, tmp_path / "b.engine", trt=make_fake_trt())
    assert not (tmp_path / "b.engine").exists()
    with pytest.raises(ChsError, match="unknown engine build option"):
        build_engine(with_meta, tmp_path / "c.engine", trt=make_fake_trt(), batchsize=4)


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
    assert sc["contract"]["engine"]["profile"]["max"] == [4, 3, 8, 8] and sc["contract"]["precision"] == "fp16"
    # options left out keep BuildOptions' defaults: the child's argparse has none of its own
    out = tmp_path / "defaults.engine"
    r = subprocess.run(
        [sys.executable, "-m", "chs.export.tensorrt", str(_onnx(tmp_path / "m2.onnx", meta=META)), str(out),
         "--trt-factory", "fake_tensorrt:make_fake_trt"],
        capture_output=True, text=True, env=_child_env(), timeout=120,
    )
    assert r.returncode == 0, r.stderr
    facts = json.loads(sidecar_path_for(out).read_text())["contract"]["engine"]
    d = BuildOptions()
    assert facts["profile"]["min"][0] == d.batch[0] and facts["profile"]["max"][0] == d.batch[2]
    assert json.loads(sidecar_path_for(out).read_text())["build"]["workspace_mb"] == d.workspace_mb
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"nope")
    with pytest.raises(ChsError, match="not a readable ONNX file"):  # the child's one error line
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

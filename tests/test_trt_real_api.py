"""The TensorRT runner and its fake against the REAL bindings that install on a CPU machine.

``tensorrt_lean`` (pip install tensorrt-lean-cu12) carries the runtime half of TensorRT's Python API and
``cuda.bindings`` (cuda-bindings 12.x) cuda-python's runtime. Neither can run anything without a GPU, and
creating TensorRT objects without a driver can crash the interpreter, so the real modules are only
introspected (names, enum values, pybind signatures) or called where cuda-python merely returns
``cudaErrorInsufficientDriver`` -- and always in a child process. The builder half (Builder, OnnxParser,
IBuilderConfig) is not in any wheel that installs here: its names are held to TensorRT's binding sources
(``python/src/infer/pyCore.cpp``), written down below.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fake_tensorrt import FakeCudart, make_fake_trt

TESTS = Path(__file__).resolve().parent
HAS_LEAN = importlib.util.find_spec("tensorrt_lean") is not None
HAS_CUDA_BINDINGS = (
    importlib.util.find_spec("cuda") is not None and importlib.util.find_spec("cuda.bindings") is not None
)
needs_lean = pytest.mark.skipif(not HAS_LEAN, reason="tensorrt_lean not installed (pip install tensorrt-lean-cu12)")
needs_cuda = pytest.mark.skipif(not HAS_CUDA_BINDINGS, reason="cuda-bindings not installed (pip install cuda-bindings)")

# what the runner calls: class -> {method: (parameter names after self, return annotation or None)}
RUNNER_SURFACE = {
    "Runtime": {"deserialize_cuda_engine": (["serialized_engine"], None)},
    "ICudaEngine": {
        "get_tensor_name": (["index"], "str"),
        "get_tensor_mode": (["name"], None),
        "get_tensor_dtype": (["name"], None),
        "get_tensor_shape": (["name"], None),
        "get_tensor_profile_shape": (["name", "profile_index"], None),
        "create_execution_context": (None, None),
    },
    "IExecutionContext": {
        "set_input_shape": (["name", "shape"], "bool"),
        "set_tensor_address": (["name", "memory"], "bool"),
        "execute_async_v3": (["stream_handle"], "bool"),
        "get_tensor_shape": (["name"], None),
    },
    "IOptimizationProfile": {"set_shape": (["input", "min", "opt", "max"], "None")},
    "ITimingCache": {"serialize": ([], None)},
}
RUNNER_PROPERTIES = {"ICudaEngine": ["num_io_tensors"]}
ENUMS = ("DataType", "TensorIOMode", "MemoryPoolType", "BuilderFlag")

# builder half, from TensorRT's pybind sources (not installable on CPU): method -> parameter names
BUILDER_SURFACE = {
    "Builder": {"create_network": ["flags"], "create_builder_config": [], "create_optimization_profile": [],
                "build_serialized_network": ["network", "config"]},
    "IBuilderConfig": {"set_memory_pool_limit": ["pool", "pool_size"], "clear_flag": ["flag"],
                       "set_flag": ["flag"], "get_flag": ["flag"], "add_optimization_profile": ["profile"],
                       "create_timing_cache": ["serialized_timing_cache"],
                       "set_timing_cache": ["cache", "ignore_mismatch"], "get_timing_cache": []},
    "OnnxParser": {"parse_from_file": ["model"], "get_error": ["index"]},
}

_INTROSPECT = textwrap.dedent(
    """
    import json, os, sys
    import tensorrt_lean as t
    out = {"version": t.__version__, "enums": {}, "methods": {}, "properties": {}, "module": sorted(dir(t))}
    for e in %r:
        out["enums"][e] = {k: int(v) for k, v in getattr(t, e).__members__.items()}
    for cls in ("Runtime", "ICudaEngine", "IExecutionContext", "IOptimizationProfile", "ITimingCache", "Logger"):
        c = getattr(t, cls)
        out["methods"][cls] = {n: (getattr(c, n).__doc__ or "") for n in dir(c) if not n.startswith("_")
                               and callable(getattr(c, n))}
        out["properties"][cls] = [n for n in dir(c) if isinstance(getattr(c, n), property)]
    out["logger_init"] = t.Logger.__init__.__doc__
    out["logger_warning"] = int(t.Logger.WARNING)
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)  # no teardown of TensorRT state on a machine without a driver
    """
) % (ENUMS,)


@pytest.fixture(scope="module")
def real() -> dict:
    r = subprocess.run([sys.executable, "-c", _INTROSPECT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _signatures(doc: str, method: str) -> list[tuple[list[str], str]]:
    """(parameter names after self, return annotation) of every overload in a pybind11 docstring."""
    sigs = []
    for m in re.finditer(rf"^(?:\d+\. )?{method}\((.*)\) -> (.+)$", doc, re.M):
        params = [p.split(":")[0].strip() for p in re.split(r",\s*(?![^\[]*\])", m.group(1)) if p.strip()]
        sigs.append(([p for p in params if p != "self"], m.group(2).strip()))
    return sigs


@needs_lean
def test_every_runner_call_exists_with_its_signature(real):
    for cls, methods in RUNNER_SURFACE.items():
        for name, (params, ret) in methods.items():
            assert name in real["methods"][cls], f"{cls}.{name} is not in tensorrt_lean {real['version']}"
            sigs = _signatures(real["methods"][cls][name], name)
            assert sigs, f"{cls}.{name}: no signature in its docstring"
            if params is not None:
                match = [s for s in sigs if s[0][: len(params)] == params]
                assert match, f"{cls}.{name}{params} not among {sigs}"
                if ret is not None:
                    assert any(s[1] == ret for s in match), f"{cls}.{name} returns {[s[1] for s in match]}"
    for cls, props in RUNNER_PROPERTIES.items():
        assert set(props) <= set(real["properties"][cls])
    assert {"Logger", "nptype", "Runtime", "TensorIOMode", "DataType"} <= set(real["module"])
    assert "min_severity" in real["logger_init"] and real["logger_warning"] == 2


@needs_lean
def test_fake_enums_are_the_real_values(real):
    fake = make_fake_trt("11.0.0")
    for enum_name in ENUMS:
        if enum_name == "BuilderFlag":
            fake_members = object.__getattribute__(fake.BuilderFlag, "_present")
        else:
            fake_members = {k: int(v) for k, v in getattr(fake, enum_name).__members__.items()}
        real_members = real["enums"][enum_name]
        assert set(fake_members) <= set(real_members), f"{enum_name}: fake has names the real one lacks"
        assert {k: real_members[k] for k in fake_members} == fake_members, enum_name
    assert "FP16" not in real["enums"]["BuilderFlag"] and "INT8" not in real["enums"]["BuilderFlag"]


def _fake_classes(trt, cu) -> dict[str, type]:
    """The fake's classes under the real names, reached through a fake build and a fake engine."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, 8, 8])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g", [x], [y]))
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.onnx"
        onnx.save(model, p)
        builder = trt.Builder(None)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, None)
        assert parser.parse_from_file(str(p))
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        profile.set_shape("input", (1, 3, 8, 8), (1, 3, 8, 8), (2, 3, 8, 8))
        config.add_optimization_profile(profile)
        engine = trt.Runtime(None).deserialize_cuda_engine(builder.build_serialized_network(network, config))
        return {
            "Builder": type(builder), "IBuilderConfig": type(config), "OnnxParser": type(parser),
            "IOptimizationProfile": type(profile), "ITimingCache": type(config.create_timing_cache(b"")),
            "Runtime": trt.Runtime, "ICudaEngine": type(engine),
            "IExecutionContext": type(engine.create_execution_context()), "Logger": trt.Logger,
        }


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


@needs_lean
def test_fake_surface_is_a_subset_of_the_real_one(real):
    classes = _fake_classes(make_fake_trt("11.0.0", cudart=FakeCudart()), FakeCudart())
    for cls in ("Runtime", "ICudaEngine", "IExecutionContext", "IOptimizationProfile", "ITimingCache"):
        fake_methods = {n for n, v in vars(classes[cls]).items() if callable(v) and not n.startswith("_")}
        missing = fake_methods - set(real["methods"][cls])
        assert not missing, f"fake {cls} has {sorted(missing)}, which tensorrt_lean lacks"
        for name in fake_methods:
            real_sigs = _signatures(real["methods"][cls][name], name)
            assert any(s[0][: len(_params(getattr(classes[cls], name)))] == _params(getattr(classes[cls], name))
                       for s in real_sigs), f"fake {cls}.{name}{_params(getattr(classes[cls], name))} vs {real_sigs}"


def test_fake_builder_matches_the_binding_sources():
    classes = _fake_classes(make_fake_trt("11.0.0"), None)
    for cls, methods in BUILDER_SURFACE.items():
        fake_methods = {n for n, v in vars(classes[cls]).items() if callable(v) and not n.startswith("_")}
        assert fake_methods <= set(methods), f"fake {cls} has {sorted(fake_methods - set(methods))}"
        for name in fake_methods:
            assert _params(getattr(classes[cls], name)) == methods[name], f"{cls}.{name}"


_CUDART_CALLS = textwrap.dedent(
    """
    import json, os, sys
    from cuda.bindings import runtime as cu
    from chs.runtime.backends import cuda_interop as ci
    k = cu.cudaMemcpyKind
    calls = {
        "cudaSetDevice": lambda: cu.cudaSetDevice(0),
        "cudaGetDeviceProperties": lambda: cu.cudaGetDeviceProperties(0),
        "cudaMalloc": lambda: cu.cudaMalloc(256),
        "cudaFree": lambda: cu.cudaFree(1 << 32),
        "cudaStreamCreate": lambda: cu.cudaStreamCreate(),
        "cudaStreamSynchronize": lambda: cu.cudaStreamSynchronize(0x5000),
        "cudaStreamDestroy": lambda: cu.cudaStreamDestroy(0x5000),
        "cudaMemcpyAsync H2D": lambda: cu.cudaMemcpyAsync(1 << 32, 1 << 33, 16, k.cudaMemcpyHostToDevice, 0x5000),
        "cudaMemcpyAsync D2H": lambda: cu.cudaMemcpyAsync(1 << 33, 1 << 32, 16, k.cudaMemcpyDeviceToHost, 0x5000),
        "cudaMemcpyAsync D2D": lambda: cu.cudaMemcpyAsync(1 << 32, 1 << 33, 16, k.cudaMemcpyDeviceToDevice, 0),
        "cudaDriverGetVersion": lambda: cu.cudaDriverGetVersion(),
        "cudaRuntimeGetVersion": lambda: cu.cudaRuntimeGetVersion(),
    }
    out = {name: int(f()[0]) for name, f in calls.items()}
    try:
        ci.cuda_call(cu, cu.cudaSetDevice(0), "cudaSetDevice")
        out["message"] = None
    except ci.ChsError as e:
        out["message"] = str(e)
    out["found"] = ci.import_cudart() is cu
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)
    """
)


@needs_cuda
def test_cudart_calls_accept_the_runners_arguments():
    """Every cuda-python call the runner makes takes its argument types (no TypeError); on this driverless
    machine each returns an error code, and the runner's message names the driver/flavour mismatch."""
    r = subprocess.run([sys.executable, "-c", _CUDART_CALLS], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["found"] is True
    if out["cudaSetDevice"] == 0:
        pytest.skip("a working CUDA driver is present: the no-driver message cannot be checked here")
    assert out["cudaDriverGetVersion"] == 0 and out["cudaRuntimeGetVersion"] == 0
    assert all(v in (35, 100) for k, v in out.items() if k.startswith("cuda") and "Version" not in k), out
    assert out["message"].startswith("CUDA call cudaSetDevice failed: cudaErrorInsufficientDriver: cuda-python")
    assert "is built for CUDA 12" in out["message"] or "is built for CUDA 13" in out["message"]
    assert "no NVIDIA driver is installed" in out["message"]
    assert set(vars(FakeCudart)) >= {"cudaSetDevice", "cudaMemcpyAsync", "cudaDriverGetVersion"}


def test_extras_pin_cuda_python_to_the_tensorrt_flavour():
    """An unpinned cuda-python resolves to 13.x, which fails every call on a CUDA 12 driver (error 35)."""
    import tomllib
    from packaging.requirements import Requirement

    extras = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "tensorrt" not in extras
    for major in (12, 13):
        reqs = {Requirement(r).name: Requirement(r).specifier for r in extras[f"tensorrt-cu{major}"]}
        assert f"tensorrt-cu{major}" in reqs
        assert reqs["cuda-python"].contains(f"{major}.9") and not reqs["cuda-python"].contains(f"{major + 1}.0")
        assert not reqs["cuda-python"].contains(f"{major - 1}.9")
    dev = {Requirement(r).name: Requirement(r).specifier for r in extras["dev"]}
    assert "tensorrt-lean-cu12" in dev
    assert dev["cuda-bindings"].contains("12.9") and not dev["cuda-bindings"].contains("13.0")

"""Triton model repository: config.pbtxt content, model file placement, contract beside the config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_tensorrt import make_fake_trt
from triton_pbtxt import parse_pbtxt_minimal

from chs.export.tensorrt import build_engine
from chs.export.triton import TritonModelSettings, write_triton_repository
from chs.runtime.artifact import ModelMeta
from chs.runtime.backends.triton import TritonRunner, is_triton_url, parse_triton_url
from chs.runtime.contract import read_contract
from chs.runtime.errors import ChsError

META = ModelMeta(scheme="wflw", num_points=98, input_size=256, heatmap_stride=4, ccr=3, precision="fp16")


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 256, 256])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, 256, 256])
    g = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "g", [x], [y])
    p = tmp_path / "model.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), p)
    return p


def _check_common(cfg: dict, name: str, max_batch: int = 32) -> None:
    assert cfg["name"] == name and cfg["max_batch_size"] == max_batch
    (inp,) = cfg["input"]
    assert inp == {"name": "input", "data_type": "TYPE_FP32", "dims": [3, 256, 256]}  # no batch dim
    lm, sc = cfg["output"]
    assert lm == {"name": "landmarks", "data_type": "TYPE_FP32", "dims": [98, 2]}
    assert sc == {"name": "scores", "data_type": "TYPE_FP32", "dims": [98]}
    assert cfg["dynamic_batching"] == {"preferred_batch_size": [8, 16], "max_queue_delay_microseconds": 2000}
    assert cfg["instance_group"][0]["count"] == 1


def test_onnx_repository(onnx_file, tmp_path):
    d = write_triton_repository(tmp_path / "repo", "chs_wflw", onnx_path=onnx_file, meta=META)
    assert d == tmp_path / "repo" / "chs_wflw"
    assert (d / "1" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    assert not (d / "1" / "model.plan").exists()
    cfg = parse_pbtxt_minimal((d / "config.pbtxt").read_text())
    assert cfg["platform"] == "onnxruntime_onnx"
    _check_common(cfg, "chs_wflw")
    assert cfg["instance_group"][0]["kind"] == "KIND_AUTO"
    c = read_contract(d / "chs_contract.json")
    assert c["crop"]["input_size"] == 256 and c["precision"] == "fp16"
    assert c["engine"]["platform"] == "onnxruntime_onnx"


def test_engine_repository_uses_sidecar(onnx_file, tmp_path):
    engine = tmp_path / "model.engine"
    build_engine(onnx_file, engine, trt=make_fake_trt(), meta=META, batch=(1, 8, 32))
    d = write_triton_repository(tmp_path / "repo", "chs_trt", engine_path=engine, meta=META)
    assert (d / "1" / "model.plan").read_bytes() == engine.read_bytes()
    cfg = parse_pbtxt_minimal((d / "config.pbtxt").read_text())
    assert cfg["platform"] == "tensorrt_plan"
    _check_common(cfg, "chs_trt")
    assert cfg["instance_group"][0]["kind"] == "KIND_GPU"
    contract = json.loads((d / "chs_contract.json").read_text())
    assert contract["engine"]["tensorrt_version"] == "11.0.0"  # the sidecar's contract, copied
    with pytest.raises(ChsError, match="exceeds the engine's profile maximum 32"):
        write_triton_repository(tmp_path / "repo", "chs_trt", engine_path=engine, meta=META,
                                settings=TritonModelSettings(max_batch=64))


def test_engine_without_sidecar_and_options(tmp_path):
    plan = tmp_path / "bare.plan"
    plan.write_bytes(b"engine")
    d = write_triton_repository(
        tmp_path / "r",
        "m",
        engine_path=plan,
        meta=META,
        settings=TritonModelSettings(
            max_batch=4, preferred_batch=(4, 2), max_queue_delay_us=100, input_dtype="float16", instance_count=2
        ),
    )
    cfg = parse_pbtxt_minimal((d / "config.pbtxt").read_text())
    assert cfg["max_batch_size"] == 4 and cfg["input"][0]["data_type"] == "TYPE_FP16"
    assert cfg["dynamic_batching"] == {"preferred_batch_size": [2, 4], "max_queue_delay_microseconds": 100}
    assert cfg["instance_group"] == [{"count": 2, "kind": "KIND_GPU"}]


def test_argument_errors(onnx_file, tmp_path):
    with pytest.raises(ChsError, match="exactly one"):
        write_triton_repository(tmp_path, "m", meta=META)
    with pytest.raises(ChsError, match="exactly one"):
        write_triton_repository(tmp_path, "m", onnx_path=onnx_file, engine_path=onnx_file, meta=META)
    with pytest.raises(ChsError, match="model name"):
        write_triton_repository(tmp_path, "a/b", onnx_path=onnx_file, meta=META)
    with pytest.raises(ChsError, match="must lie in 1..4"):
        TritonModelSettings(max_batch=4)
    with pytest.raises(ChsError, match="does not exist"):
        write_triton_repository(tmp_path, "m", onnx_path=tmp_path / "x.onnx", meta=META)
    with pytest.raises(ChsError, match="instance_kind"):
        TritonModelSettings(instance_kind="GPU")


def test_switching_backend_removes_the_other_model_file(onnx_file, tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    write_triton_repository(tmp_path / "r", "m", onnx_path=onnx_file, meta=META)
    d = write_triton_repository(tmp_path / "r", "m", engine_path=plan, meta=META)
    assert sorted(p.name for p in (d / "1").iterdir()) == ["model.plan"]


def test_parse_pbtxt_minimal_subset():
    text = """
    # comment
    name: "x"  # trailing
    max_batch_size: 8
    input [ { name: "a" dims: [ 1, 2 ] }, { name: "b", dims: [3] } ]
    parameters { key: "k" value: { string_value: "v" } }
    instance_group { kind: KIND_CPU }
    instance_group { kind: KIND_GPU }
    flag: true
    ratio: 0.5
    """
    cfg = parse_pbtxt_minimal(text)
    assert cfg["name"] == "x" and cfg["max_batch_size"] == 8 and cfg["flag"] is True and cfg["ratio"] == 0.5
    assert cfg["input"] == [{"name": "a", "dims": [1, 2]}, {"name": "b", "dims": [3]}]
    assert cfg["parameters"] == {"key": "k", "value": {"string_value": "v"}}
    assert cfg["instance_group"] == [{"kind": "KIND_CPU"}, {"kind": "KIND_GPU"}]
    with pytest.raises(ChsError):
        parse_pbtxt_minimal("a { b: 1")


def test_python_backend_repository(onnx_file, tmp_path):
    d = write_triton_repository(tmp_path / "r", "chs_py", onnx_path=onnx_file, meta=META, backend="python")
    assert sorted(p.name for p in (d / "1").iterdir()) == ["model.onnx", "model.py"]
    model_py = (d / "1" / "model.py").read_text()
    assert "CHS_TRITON_SYS_PATH" in model_py and "from chs.runtime.triton_model import TritonPythonModel" in model_py
    compile(model_py, "model.py", "exec")
    cfg = parse_pbtxt_minimal((d / "config.pbtxt").read_text())
    assert cfg["backend"] == "python" and "platform" not in cfg
    _check_common(cfg, "chs_py")
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU"
    assert ModelMeta.from_props({"chs.meta": cfg["parameters"]["value"]["string_value"]}) == META
    # back to onnxruntime: model.py goes
    d = write_triton_repository(tmp_path / "r", "chs_py", onnx_path=onnx_file, meta=META)
    assert sorted(p.name for p in (d / "1").iterdir()) == ["model.onnx"]


def test_backend_errors(onnx_file, tmp_path):
    with pytest.raises(ChsError, match="backend must be one of onnxruntime, python, tensorrt"):
        write_triton_repository(tmp_path, "m", onnx_path=onnx_file, meta=META, backend="torch")
    with pytest.raises(ChsError, match="tensorrt Triton backend serves a TensorRT engine"):
        write_triton_repository(tmp_path, "m", onnx_path=onnx_file, meta=META, backend="tensorrt")
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    with pytest.raises(ChsError, match="got backend 'python' with an engine"):
        write_triton_repository(tmp_path, "m", engine_path=plan, meta=META, backend="python")


@pytest.mark.parametrize("changes, message", [
    ({"startup_timeout": float("nan")}, "--startup-timeout must be a finite number of seconds > 0, got nan"),
    ({"startup_timeout": -5.0}, "--startup-timeout must be a finite number of seconds > 0, got -5.0"),
    ({"tritonserver": "script.py"}, "cannot run tritonserver {cwd}/script.py: Exec format error"),
])
def test_serve_refuses_a_bad_timeout_and_an_unrunnable_binary(onnx_file, tmp_path, monkeypatch, changes, message):
    """chs-serve: an executable without a shebang (even named without a folder) and a NaN or negative startup
    timeout are one-line errors, not an OSError or a server started and stopped at once."""
    from chs.runtime.triton_server import ServeOptions, TritonServer

    write_triton_repository(tmp_path / "r", "chs", onnx_path=onnx_file, meta=META, backend="python")
    script = tmp_path / "script.py"
    script.write_text("print('not a server')\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ChsError) as e:
        TritonServer(ServeOptions(str(tmp_path / "r"), **changes)).start()
    assert str(e.value) == message.format(cwd=tmp_path)


@pytest.mark.parametrize("backend", ["onnxruntime", "python", "tensorrt"])
def test_config_parses_into_tritons_model_config(onnx_file, tmp_path, backend):
    """Triton's own protobuf (strict text format) accepts every config, parameters and all."""
    pytest.importorskip("tritonclient.grpc", reason="the serve extra (tritonclient) is not installed")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    src = {"engine_path": tmp_path / "m.plan"} if backend == "tensorrt" else {"onnx_path": onnx_file}
    if backend == "tensorrt":
        src["engine_path"].write_bytes(b"x")
    d = write_triton_repository(tmp_path / "r", "m", meta=META, backend=backend, **src)
    cfg = text_format.Parse((d / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.max_batch_size == 32 and cfg.input[0].dims == [3, 256, 256]
    assert (cfg.backend, cfg.platform) == {"python": ("python", ""), "onnxruntime": ("", "onnxruntime_onnx"),
                                           "tensorrt": ("", "tensorrt_plan")}[backend]
    assert ModelMeta.from_props({"chs.meta": cfg.parameters["chs.meta"].string_value}) == META


def test_chs_export_writes_a_python_backend_repository(tmp_path):
    """chs-export --triton NAME --triton-backend python: the FP32 ONNX beside model.py."""
    torch = pytest.importorskip("torch")
    from chs.export.pipeline import ExportOptions, run_export
    from chs.model.checkpoint import save_checkpoint
    from chs.model.chs import build_model
    from chs.model.config import get_preset

    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model(get_preset("tiny")).eval(), tmp_path / "tiny")
    out = tmp_path / "e"
    run_export(ExportOptions(model=str(ckpt), out=str(out), engine="never", triton="chs",
                             triton_backend="python", batch=(1, 2, 4)), log=lambda *_: None)
    d = out / "triton" / "chs"
    assert (d / "1" / "model.onnx").read_bytes() == (out / "model_fp32.onnx").read_bytes()
    assert (d / "1" / "model.py").is_file()
    cfg = parse_pbtxt_minimal((d / "config.pbtxt").read_text())
    assert cfg["backend"] == "python" and cfg["input"][0]["dims"] == [3, 64, 64]
    # --batch 1:2:4: served up to 4 faces, without the default preferred sizes 8 and 16 (it was refused for them)
    assert cfg["max_batch_size"] == 4 and cfg["dynamic_batching"] == {"max_queue_delay_microseconds": 2000}


def test_settings_up_to_a_batch_keep_the_default_preferred_sizes_that_fit():
    assert TritonModelSettings.up_to(32) == TritonModelSettings()
    assert TritonModelSettings.up_to(8).preferred_batch == (8,)
    assert TritonModelSettings.up_to(4) == TritonModelSettings(max_batch=4, preferred_batch=())


def test_served_files_carry_the_precision_they_serve(tmp_path, monkeypatch):
    """--fp16 --triton NAME: the repository serves model_fp16.onnx, so its chs.meta and contract say fp16 (they
    said fp32); an engine built from the FP16 file gets an fp16 record in its sidecar too."""
    torch = pytest.importorskip("torch")
    from chs.export import tensorrt
    from chs.export.pipeline import ExportOptions, run_export
    from chs.model.checkpoint import save_checkpoint
    from chs.model.chs import build_model
    from chs.model.config import get_preset

    built = {}
    monkeypatch.setattr(tensorrt, "tensorrt_available", lambda: (True, ""))
    monkeypatch.setattr(tensorrt, "build_engine_subprocess",
                        lambda onnx_path, engine_path, **kw: built.update(file=Path(onnx_path).name, **kw) or {})
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model(get_preset("tiny")).eval(), tmp_path / "tiny")
    out = tmp_path / "e"
    report = run_export(ExportOptions(model=str(ckpt), out=str(out), ccr=1, fp16=True, triton="chs",
                                      gate=False),  # random weights: FP16 drifts past its gate
                        log=lambda *_: None)
    d = out / "triton" / "chs"
    assert (d / "1" / "model.onnx").read_bytes() == (out / "model_fp16.onnx").read_bytes()
    cfg = parse_pbtxt_minimal((d / "config.pbtxt").read_text())
    assert ModelMeta.from_props({"chs.meta": cfg["parameters"]["value"]["string_value"]}).precision == "fp16"
    assert read_contract(d / "chs_contract.json")["precision"] == "fp16"
    assert report["triton"] == {"name": "chs", "backend": "onnxruntime", "serves": "model_fp16.onnx",
                                "precision": "fp16"}
    assert built["file"] == "model_fp16.onnx" and built["meta"].precision == "fp16"


def test_python_backend_model_closes_its_runner_when_unloaded():
    """finalize (Triton unloading the model) closes the ONNX Runtime runner instead of dropping it."""
    from types import SimpleNamespace

    from chs.runtime.triton_model import TritonPythonModel

    closed: list[bool] = []
    model = TritonPythonModel()
    model.runner = SimpleNamespace(close=lambda: closed.append(True))
    model.finalize()
    model.finalize()  # twice (or before initialize): nothing left to close
    assert closed == [True] and model.runner is None


def test_url_parsing():
    assert parse_triton_url("triton://127.0.0.1:8000/chs") == ("http", "127.0.0.1:8000", "chs", "")
    assert parse_triton_url("triton+grpc://localhost:8001/chs/2") == ("grpc", "localhost:8001", "chs", "2")
    assert parse_triton_url("triton://[::1]:8000/m") == ("http", "[::1]:8000", "m", "")
    for bad in ("triton://host/chs", "triton://host:port/chs", "triton://h:1/", "triton://h:1/a/b/c", "http://h:1/m",
                "triton://[::1/chs", "triton+grpc://[::1:8001/chs"):
        with pytest.raises(ChsError, match="triton://HOST:PORT/NAME") as e:
            parse_triton_url(bad)
        assert str(e.value).endswith(f"got '{bad}'")
    for bad, message in (("triton://h:1/m?timeout=x", "must be a number"),
                         ("triton://h:1/m?retries=2", r"only \?timeout"),
                         ("triton://h:1/m?timeout=0", "timeout must be > 0")):
        with pytest.raises(ChsError, match=message):
            TritonRunner(bad)
    assert is_triton_url("triton+grpc://h:1/m") and not is_triton_url("model.onnx") and not is_triton_url(3)

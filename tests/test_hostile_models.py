"""Hostile model files (issue 14 items 4, 7, 8, 15): checkpoint configs that would allocate without end or
do not match their weights, non-finite weights, non-UTF-8 configs, and ONNX metadata that lies about the
graph. Each is refused with one line when the model is opened, before anything big is built."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file, save_file

from chs.model.checkpoint import load_checkpoint, save_checkpoint
from chs.model.chs import build_model
from chs.model.config import get_preset
from chs.runtime.backends.ort import OrtRunner
from chs.runtime.errors import ChsError


def _cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chs", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _one_error_line(res, pattern: str = "") -> str:
    assert res.returncode == 2, (res.returncode, res.stdout[-500:], res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert pattern in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_model(get_preset("tiny")).eval(), tmp_path_factory.mktemp("ckpt") / "tiny")


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_config(folder: Path, **changes) -> None:
    meta = json.loads((folder / "config.json").read_text())
    meta["config"].update(changes)
    (folder / "config.json").write_text(json.dumps(meta))


# ---------------------------------------------------------------------------------------- 4: configs
def test_num_stacks_100000_is_refused_before_building(ckpt, tmp_path):
    bad = _copy(ckpt, tmp_path / "huge")
    _edit_config(bad, num_stacks=100000)
    with pytest.raises(ChsError, match="num_stacks must be <= 16, got 100000"):
        load_checkpoint(bad)
    faces = Path(__file__).resolve().parent / "fixtures" / "pts"
    _one_error_line(_cli("eval", bad, "--data", faces, timeout=60), "num_stacks must be <= 16, got 100000")


def test_config_of_98_points_over_68_point_weights(ckpt, tmp_path):
    bad = _copy(ckpt, tmp_path / "mismatch")
    _edit_config(bad, num_points=98, scheme="98")
    with pytest.raises(ChsError, match=r"does not match its config: '.*' is \(69, .*\) in the weights but \(99, "):
        load_checkpoint(bad)


@pytest.mark.parametrize("field, value, message", [
    ("hg_features", "64", "hg_features must be a whole number"),
    ("crop_rule", {"scale": -1.3, "shift_y": 0.0, "box_source": "landmarks"}, "crop_rule.scale must be in (0, 10]"),
    ("normalization", {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.0, 0.5]}, "normalization.std must be in (0, 1000]"),
])
def test_config_types_and_ranges(ckpt, tmp_path, field, value, message):
    bad = _copy(ckpt, tmp_path / "bad")
    _edit_config(bad, **{field: value})
    with pytest.raises(ChsError) as e:
        load_checkpoint(bad)
    assert message in str(e.value)


def test_non_utf8_config_is_one_line(ckpt, tmp_path):
    bad = _copy(ckpt, tmp_path / "latin1")
    text = (bad / "config.json").read_text().replace('"tiny"', '"tiny\u00e9"')
    (bad / "config.json").write_bytes(text.encode("latin-1"))
    faces = Path(__file__).resolve().parent / "fixtures" / "pts"
    line = _one_error_line(_cli("eval", bad, "--data", faces), "checkpoint config")
    assert line.endswith("config.json is not UTF-8 text"), line


def test_config_nested_too_deeply_is_one_line(ckpt, tmp_path):
    from chs.model.checkpoint import read_checkpoint_config

    bad = _copy(ckpt, tmp_path / "deep")
    (bad / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ChsError, match="checkpoint config .*config.json is nested too deeply"):
        read_checkpoint_config(bad)


# ---------------------------------------------------------------------------------------- 8: non-finite weights
def test_nan_weights_are_refused_at_load(ckpt, tmp_path):
    bad = _copy(ckpt, tmp_path / "nan")
    state = load_file(str(bad / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name][0] = float("nan")
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(ChsError, match=f"contain NaN or infinity \\(1 tensor\\(s\\), first '{name}'\\)"):
        load_checkpoint(bad)
    _one_error_line(_cli("export", bad, "--out", tmp_path / "e", "--engine", "never"), "contain NaN or infinity")
    assert not (tmp_path / "e").exists()


# ---------------------------------------------------------------------------------------- 7: ONNX metadata
def _with_meta(src: Path, dst: Path, **changes) -> Path:
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props["chs.meta"])
    for key, value in changes.items():
        if key == "crop_scale":
            meta["crop_rule"]["scale"] = value
        else:
            meta[key] = value
    onnx.helper.set_model_props(model, {**props, "chs.meta": json.dumps(meta)})
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize("changes, message", [
    ({"crop_scale": -1.3}, "crop_rule.scale must be in (0, 10], got -1.3"),
    ({"input_size": 256}, "metadata says input 256x256 but the graph takes 64x64"),
    ({"input_size": 32}, "metadata says input 32x32 but the graph takes 64x64"),
    ({"input_size": "128"}, "input_size must be a whole number"),
    ({"num_points": 98}, "scheme '68' has 68 points, metadata says 98"),
    ({"crop_scale": "big"}, "crop_rule.scale must be a finite number"),
])
def test_lying_onnx_metadata_is_refused_at_open(tiny_onnx, tmp_path, changes, message):
    bad = _with_meta(tiny_onnx, tmp_path / "bad.onnx", **changes)
    with pytest.raises(ChsError) as e:
        OrtRunner(bad, providers="cpu")
    assert message in str(e.value), str(e.value)


def test_lying_onnx_metadata_via_chs_align(tiny_onnx, tmp_path):
    bad = _with_meta(tiny_onnx, tmp_path / "mirror.onnx", crop_scale=-1.3)
    demo = Path(__file__).resolve().parents[1] / "runtime" / "assets" / "demo" / "astronaut.png"
    boxes = tmp_path / "b.json"
    boxes.write_text(json.dumps({"astronaut.png": [[182, 89, 270, 190]]}))
    _one_error_line(_cli("align", demo, "--model", bad, "--boxes", boxes), "crop_rule.scale must be in (0, 10]")
    model = onnx.load(str(tiny_onnx))
    onnx.helper.set_model_props(model, {"chs.meta": "[1, 2]"})
    onnx.save(model, str(tmp_path / "list.onnx"))
    _one_error_line(_cli("align", demo, "--model", tmp_path / "list.onnx", "--boxes", boxes),
                    "CHS metadata must be a JSON object")


def test_the_real_exports_still_open(tiny_onnx):
    runner = OrtRunner(tiny_onnx, providers="cpu")
    out = runner.infer(np.zeros((1, 3, 64, 64), np.float32))
    assert out["landmarks"].shape == (1, 68, 2)


# ---- ONNX files whose graph loads but whose weights or batch axis would answer wrongly --------------------

BUNDLED_ONNX = Path(__file__).resolve().parents[1] / "runtime" / "assets" / "default" / "model.onnx"
DEMO = Path(__file__).resolve().parents[1] / "runtime" / "assets" / "demo" / "astronaut.png"


def _edited_bundled(dst: Path, batch: int | None = None, nan: bool = False) -> Path:
    model = onnx.load(str(BUNDLED_ONNX))
    if batch is not None:
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    if nan:  # one NaN in the first sizeable float weight: a damaged file the opener cannot see
        t = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 100)
        a = onnx.numpy_helper.to_array(t).copy()
        a.flat[0] = np.nan
        t.CopyFrom(onnx.numpy_helper.from_array(a, t.name))
    onnx.save(model, str(dst))
    return dst


def test_nan_onnx_weights_end_in_one_line(tmp_path):
    bad = _edited_bundled(tmp_path / "nan.onnx", nan=True)
    x = np.zeros((2, 3, 128, 128), np.float32)
    with pytest.raises(ChsError, match="nan.onnx failed while running"):
        OrtRunner(bad, providers="cpu").infer(x)
    res = _cli("align", DEMO, "--model", bad, "--json")
    _one_error_line(res, "nan.onnx failed while running")
    assert res.stdout == ""


def test_non_finite_outputs_are_refused():
    from chs.runtime.backends.base import RunnerBase

    class Damaged(RunnerBase):  # a graph whose damaged weights reach the outputs without a failing op
        name, meta = "damaged", OrtRunner(BUNDLED_ONNX, providers="cpu").meta

        def _run(self, x):
            return {"landmarks": np.full((len(x), 68, 2), np.nan, np.float32), "scores": np.ones((len(x), 68))}

    with pytest.raises(ChsError, match="damaged: the model answered NaN or infinity \\(landmarks\\)"):
        Damaged().infer(np.zeros((1, 3, 128, 128), np.float32))


@pytest.mark.parametrize("batch", [1, 2])
def test_fixed_batch_onnx_runs_in_chunks_of_its_batch(tmp_path, batch):
    fixed = OrtRunner(_edited_bundled(tmp_path / f"b{batch}.onnx", batch=batch), providers="cpu")
    assert fixed.fixed_batch == batch
    x = np.random.default_rng(0).standard_normal((3, 3, 128, 128)).astype(np.float32)
    ref = OrtRunner(BUNDLED_ONNX, providers="cpu").infer(x)
    out = fixed.infer(x)
    assert out["landmarks"].shape == (3, 68, 2)
    assert fixed.infer(x[:0])["landmarks"].shape == (0, 68, 2)  # as a dynamic-batch graph answers
    np.testing.assert_allclose(out["landmarks"], ref["landmarks"], atol=1e-3)
    with pytest.raises(ChsError, match=f"fixed batch of {batch}: split sessions need a dynamic batch axis"):
        OrtRunner(tmp_path / f"b{batch}.onnx", providers="cpu", sessions=2)

"""The I/O contract: complete, JSON-able, versioned, and its written crop formula equals geometry.py's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chs.runtime.artifact import ModelMeta
from chs.runtime.contract import (
    CONTRACT_VERSION,
    REQUIRED_KEYS,
    contract_crop_affine,
    contract_meta,
    io_contract,
    read_contract,
    write_contract,
)
from chs.runtime.errors import ChsError
from chs.runtime.geometry import CropRule, crop_affine, invert_affine, transform_points

INPUTS = [{"name": "input", "shape": [None, 3, 64, 64], "dtype": "float32"}]
OUTPUTS = [
    {"name": "landmarks", "shape": [-1, 98, 2], "dtype": "float32"},
    {"name": "scores", "shape": [-1, 98], "dtype": "float32"},
]


def _meta(**kw) -> ModelMeta:
    base = dict(scheme="wflw", num_points=98, input_size=64, heatmap_stride=4, ccr=3, precision="fp16")
    base.update(kw)
    return ModelMeta(**base)


def test_contract_has_everything_a_host_needs():
    c = io_contract(_meta(), INPUTS, OUTPUTS, engine={"tensorrt_version": "11.0.0"})
    assert c["contract_version"] == CONTRACT_VERSION == 1
    assert all(k in c for k in REQUIRED_KEYS)
    assert c["inputs"][0] == {"name": "input", "shape": [-1, 3, 64, 64], "dtype": "float32"}
    assert [o["name"] for o in c["outputs"]] == ["landmarks", "scores"]
    assert c["normalization"]["mean"] == [0.5, 0.5, 0.5] and c["normalization"]["channel_order"] == "RGB"
    assert c["normalization"]["layout"] == "NCHW" and "255" in c["normalization"]["pixel_scale"]
    assert c["crop"]["scale"] == 1.3 and c["crop"]["input_size"] == 64
    assert "max(x1 - x0, y1 - y0) * scale" in c["crop"]["formula"]
    assert "integers" in c["crop"]["pixel_centers"]
    assert "inverse of the crop affine" in c["output_frame"]["landmarks"]
    assert c["landmarks"]["scheme"] == "wflw" and c["landmarks"]["num_points"] == 98
    assert c["ccr"] == 3 and c["precision"] == "fp16" and c["engine"]["tensorrt_version"] == "11.0.0"
    assert json.loads(json.dumps(c)) == c
    assert "precision" not in c["meta"] and contract_meta(c) == _meta()  # the record, its precision stored once


@pytest.mark.parametrize("rule", [CropRule(), CropRule(scale=1.25, shift_y=0.1)])
@pytest.mark.parametrize("box", [(10, 20, 110, 140), (3.5, 7.25, 50.0, 30.0)])
def test_contract_affine_equals_geometry(rule, box):
    c = io_contract(_meta(crop_rule=rule.to_dict()), INPUTS, OUTPUTS)
    a = contract_crop_affine(c, box)
    np.testing.assert_allclose(a, crop_affine(box, 64, rule), atol=1e-12)
    pts = np.array([[0.0, 0.0], [63.0, 63.0], [31.5, 10.0]])
    back = transform_points(transform_points(pts, invert_affine(a)), a)
    np.testing.assert_allclose(back, pts, atol=1e-9)


def test_write_read_roundtrip(tmp_path):
    p = tmp_path / "sub" / "chs_contract.json"
    c = write_contract(p, io_contract(_meta(), INPUTS, OUTPUTS))
    assert read_contract(p) == c


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.pop("contract_version"), "not a CHS I/O contract"),
        (lambda c: c.update(producer="mmdeploy"), "not by chs"),
        (lambda c: c.update(contract_version=0), "older"),
        (lambda c: c.update(contract_version=2), "upgrade chs"),
        (lambda c: c.update(contract_version="1"), "unreadable"),
        (lambda c: c.pop("crop"), "lacks required keys: crop"),
    ],
)
def test_read_rejects_foreign_old_new_incomplete(tmp_path, mutate, message):
    c = io_contract(_meta(), INPUTS, OUTPUTS)
    mutate(c)
    p = tmp_path / "c.json"
    p.write_text(json.dumps(c))
    with pytest.raises(ChsError, match=message):
        read_contract(p)


def test_read_rejects_missing_and_garbage(tmp_path):
    with pytest.raises(ChsError, match="does not exist"):
        read_contract(tmp_path / "nope.json")
    (tmp_path / "g.json").write_text("{not json")
    with pytest.raises(ChsError, match="not valid JSON"):
        read_contract(tmp_path / "g.json")
    (tmp_path / "l.json").write_text("[1, 2]")
    with pytest.raises(ChsError, match="not a JSON object"):
        read_contract(tmp_path / "l.json")


def test_bad_tensor_description():
    with pytest.raises(ChsError, match="'name' and 'shape'"):
        io_contract(_meta(), [{"name": "input"}], OUTPUTS)

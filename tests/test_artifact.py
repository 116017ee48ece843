"""The metadata record: frozen, typed, one JSON form, torch-free ONNX I/O, rebuilt from the I/O contract."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from chs.runtime.artifact import META_KEY, ModelMeta, read_onnx_meta, write_onnx_meta
from chs.runtime.errors import ChsError
from chs.runtime.geometry import CropRule
from chs.runtime.preprocess import Normalization

BUNDLED = Path(__file__).resolve().parent.parent / "runtime" / "assets" / "default" / "model.onnx"
META = ModelMeta(scheme="68", num_points=68, input_size=64, heatmap_stride=4, ccr=1, preset="tiny",
                 crop_rule=CropRule(scale=1.25, shift_y=0.1), normalization=Normalization((0.4, 0.5, 0.6)))


class _Props:
    """The two things the ONNX I/O touches on an ``onnx.ModelProto``."""

    def __init__(self):
        self.metadata_props = _PropList()
        self.producer_name = ""


class _PropList(list):
    def add(self, key: str, value: str):
        self.append(type("Prop", (), {"key": key, "value": value})())


def test_record_is_frozen_and_typed():
    with pytest.raises(dataclasses.FrozenInstanceError):
        META.precision = "fp16"  # type: ignore[misc]
    fp16 = dataclasses.replace(META, precision="fp16")
    assert fp16.precision == "fp16" and META.precision == "fp32" and fp16.crop_rule is META.crop_rule
    assert isinstance(META.crop_rule, CropRule) and META.crop.scale == 1.25 and META.norm.mean == (0.4, 0.5, 0.6)


def test_json_round_trip_and_dict_inputs():
    back = ModelMeta.from_dict(json.loads(META.to_json()))
    assert back == META and isinstance(back.normalization, Normalization)
    d = META.to_dict()
    assert d["crop_rule"] == {"scale": 1.25, "shift_y": 0.1, "box_source": "landmarks"}
    assert d["normalization"]["channel_order"] == "RGB" and d["normalization"]["std"] == [0.5, 0.5, 0.5]
    with pytest.raises(ChsError, match="incomplete"):
        ModelMeta.from_dict({"scheme": "68"})


def test_bundled_model_metadata_reads_and_rewrites_byte_identical():
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(BUNDLED), load_external_data=False)
    stored = {p.key: p.value for p in proto.metadata_props}[META_KEY]
    meta = read_onnx_meta(proto)
    assert meta.to_json() == stored and meta.ccr == 2 and meta.crop.box_source == "landmarks"


def test_onnx_io_needs_no_onnx_package():
    proto = _Props()
    proto.metadata_props.add("other", "kept")
    write_onnx_meta(proto, META)
    assert [p.key for p in proto.metadata_props] == [META_KEY, "other"] and proto.producer_name == "chs-export"
    assert read_onnx_meta(proto) == META
    with pytest.raises(ChsError, match="carries no CHS metadata"):
        read_onnx_meta(_Props(), source="x.onnx")

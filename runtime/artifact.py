"""The one metadata record that travels inside every model artifact, and its ONNX ``metadata_props`` I/O.

A runtime reads the crop rule, input size, normalisation and landmark scheme from here, never from defaults of its own,
so an artifact is always served the way it was trained. The record is frozen: derive a changed copy with
``dataclasses.replace(meta, precision="fp16")``. Reading and writing ONNX metadata needs neither torch nor the ``onnx``
package (it only touches ``proto.metadata_props``), so INT8 quantisation and FP16 conversion stay torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from chs.runtime.errors import ChsError
from chs.runtime.files import parse_json
from chs.runtime.geometry import CropRule
from chs.runtime.preprocess import Normalization

META_KEY = "chs.meta"
SCHEMA_VERSION = 1
PRODUCER = "chs-export"

# I/O names shared by the exporter, every backend and the C++ contract.
INPUT_NAME = "input"
OUTPUT_LANDMARKS = "landmarks"  # (N, n, 2) float32, crop pixel coordinates (x, y)
OUTPUT_SCORES = "scores"  # (N, n) float32, heatmap peak per landmark (a confidence)


def typed_preprocessing(obj: Any) -> None:
    """Turn JSON-decoded ``crop_rule`` / ``normalization`` mappings of a (frozen) dataclass into records."""
    if isinstance(obj.crop_rule, Mapping):
        object.__setattr__(obj, "crop_rule", CropRule.from_dict(obj.crop_rule))
    if isinstance(obj.normalization, Mapping):
        object.__setattr__(obj, "normalization", Normalization.from_dict(obj.normalization))


@dataclass(frozen=True)
class ModelMeta:
    scheme: str
    num_points: int
    input_size: int
    heatmap_stride: int
    ccr: int
    precision: str = "fp32"
    preset: str = ""
    crop_rule: CropRule = field(default_factory=CropRule)
    normalization: Normalization = field(default_factory=Normalization)
    versions: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        typed_preprocessing(self)

    @property
    def crop(self) -> CropRule:
        """Short name for ``crop_rule``."""
        return self.crop_rule

    @property
    def norm(self) -> Normalization:
        """Short name for ``normalization``."""
        return self.normalization

    def to_dict(self) -> dict:
        return {**asdict(self), "crop_rule": self.crop_rule.to_dict(), "normalization": self.normalization.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> ModelMeta:
        try:
            return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
        except (TypeError, ValueError) as e:
            raise ChsError(f"model metadata is incomplete: {e}") from None

    def to_props(self) -> dict[str, str]:
        """ONNX ``metadata_props`` entries."""
        return {META_KEY: self.to_json()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelMeta:
        if META_KEY not in props:
            raise ChsError(f"{source} carries no CHS metadata ('{META_KEY}'): not a model exported by chs-export")
        data = parse_json(props[META_KEY], f"{source}'s CHS metadata")
        if not isinstance(data, dict):
            raise ChsError(f"{source}: CHS metadata must be a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)


def read_onnx_meta(proto: Any, source: str = "model") -> ModelMeta:
    """The record stored in an ``onnx.ModelProto``'s ``metadata_props``."""
    return ModelMeta.from_props({p.key: p.value for p in proto.metadata_props}, source=source)


def write_onnx_meta(proto: Any, meta: ModelMeta) -> None:
    """Store ``meta`` in an ``onnx.ModelProto`` (other metadata entries are kept, keys sorted)."""
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(meta.to_props())
    del proto.metadata_props[:]
    for k, v in sorted(props.items()):
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = PRODUCER

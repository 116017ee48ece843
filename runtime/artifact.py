"""Metadata that travels inside every model artifact (checkpoint JSON, ONNX metadata_props, engine sidecar).

A runtime reads the crop rule, input size, normalisation and landmark scheme from here, never from
defaults of its own, so an artifact is always served the way it was trained.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from chs.runtime.errors import ChsError
from chs.runtime.geometry import CropRule
from chs.runtime.preprocess import Normalization

META_KEY = "chs.meta"
SCHEMA_VERSION = 1

# I/O names shared by the exporter, every backend and the C++ contract.
INPUT_NAME = "input"
OUTPUT_LANDMARKS = "landmarks"  # (N, n, 2) float32, crop pixel coordinates (x, y)
OUTPUT_SCORES = "scores"  # (N, n) float32, heatmap peak per landmark (a confidence)


@dataclass
class ModelMeta:
    scheme: str
    num_points: int
    input_size: int
    heatmap_stride: int
    ccr: int
    precision: str = "fp32"
    preset: str = ""
    crop_rule: dict = field(default_factory=lambda: CropRule().to_dict())
    normalization: dict = field(default_factory=lambda: Normalization().to_dict())
    versions: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def crop(self) -> CropRule:
        return CropRule.from_dict(self.crop_rule)

    @property
    def norm(self) -> Normalization:
        return Normalization.from_dict(self.normalization)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> ModelMeta:
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except TypeError as e:
            raise ChsError(f"model metadata is incomplete: {e}") from None

    def to_props(self) -> dict[str, str]:
        """ONNX ``metadata_props`` entries."""
        return {META_KEY: self.to_json()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelMeta:
        if META_KEY not in props:
            raise ChsError(f"{source} carries no CHS metadata ('{META_KEY}'): not a model exported by chs-export")
        try:
            return cls.from_dict(json.loads(props[META_KEY]))
        except json.JSONDecodeError:
            raise ChsError(f"{source} has unreadable CHS metadata") from None

"""Model configuration that travels with the weights (timm's PretrainedCfg idea): presets and validation."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field

from chs.model.codec import HeatmapCodec
from chs.model.config_limits import check_config_limits
from chs.runtime.artifact import typed_preprocessing
from chs.runtime.errors import ChsError
from chs.runtime.geometry import CropRule
from chs.runtime.preprocess import Normalization

BACKWARD_MODES = ("ccr", "task", "full")


@dataclass(frozen=True)
class ChsConfig:
    """Everything needed to rebuild a CHS network and to feed it the crops it was trained on.

    Frozen: derive a changed copy with :meth:`replace` (validated)."""

    name: str = "custom"
    scheme: str = "98"
    num_points: int = 98
    input_size: int = 256
    # AWing hourglass heatmap network
    hg_features: int = 256
    num_stacks: int = 4
    hg_depth: int = 4
    upsample: str = "bilinear"  # "bilinear" (nn.Upsample, CHS) or "nearest" (AWing)
    boundary: bool = True  # one extra boundary heatmap per stack
    # feature extractor and selective feature module
    stem_channels: int = 64
    fe_channels: int = 128
    num_branches: int = 3
    sf_width: int = 64
    sf_squeeze: int = 32
    # cascaded coordinate regression
    ccr_stages: int = 4
    ccr_width: int = 128
    roi_size: int = 5
    sampling_ratio: int = 2
    backward: str = "ccr"  # "ccr", "task" or "full" (paper section 3.2)
    baseline: bool = False  # the AWing 4-HG network alone (no selective features, no CCR)
    # preprocessing that must match at serving time
    crop_rule: CropRule = field(default_factory=CropRule)
    normalization: Normalization = field(default_factory=Normalization)

    def __post_init__(self) -> None:
        typed_preprocessing(self)

    @property
    def codec(self) -> HeatmapCodec:
        """The heatmap geometry (targets, decode, cells <-> crop pixels) at the default target sigma."""
        return HeatmapCodec(self.input_size)

    @property
    def heatmap_size(self) -> int:
        return self.codec.size

    @property
    def heatmap_stride(self) -> int:
        return self.codec.stride

    @property
    def heatmap_channels(self) -> int:
        return self.num_points + (1 if self.boundary else 0)

    def validate(self) -> ChsConfig:
        """Raise ChsError with one line naming the first bad field."""
        check_config_limits(self)
        if self.num_points < 1:
            raise ChsError(f"config '{self.name}': num_points must be >= 1, got {self.num_points}")
        stride = self.heatmap_stride
        if self.input_size < 16 or self.input_size % stride:
            raise ChsError(f"config '{self.name}': input_size must be a multiple of {stride} and >= 16, "
                           f"got {self.input_size}")
        hm = self.heatmap_size
        if hm % (2**self.hg_depth):
            raise ChsError(
                f"config '{self.name}': heatmap size {hm} is not divisible by 2**hg_depth ({2**self.hg_depth})"
            )
        for f in ("num_stacks", "hg_depth", "hg_features", "fe_channels", "stem_channels", "num_branches",
                  "sf_width", "sf_squeeze", "ccr_width", "roi_size", "sampling_ratio"):
            if getattr(self, f) < 1:
                raise ChsError(f"config '{self.name}': {f} must be >= 1, got {getattr(self, f)}")
        if self.ccr_stages < 0:
            raise ChsError(f"config '{self.name}': ccr_stages must be >= 0, got {self.ccr_stages}")
        if self.hg_features % 4 or self.fe_channels % 4:
            raise ChsError(f"config '{self.name}': hg_features and fe_channels must be multiples of 4")
        if self.backward not in BACKWARD_MODES:
            raise ChsError(f"config '{self.name}': backward must be one of {BACKWARD_MODES}, got '{self.backward}'")
        if self.upsample not in ("bilinear", "nearest"):
            raise ChsError(f"config '{self.name}': upsample must be 'bilinear' or 'nearest'")
        if self.baseline and self.ccr_stages:
            raise ChsError(f"config '{self.name}': the AWing baseline has no CCR stages")
        return self

    def replace(self, **changes) -> ChsConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ChsError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict:
        return {**asdict(self), "crop_rule": self.crop_rule.to_dict(), "normalization": self.normalization.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> ChsConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ChsError(f"config has unknown field(s): {', '.join(sorted(unknown))}")
        return cls(**d).validate()


def _wflw(**kw) -> ChsConfig:
    return ChsConfig(**kw)


PRESETS: dict[str, ChsConfig] = {
    # the paper's size (Table 9): 256x256 input, 4 stacks, 4 CCR stages
    "wflw": _wflw(name="wflw", scheme="98", num_points=98),
    "300w": _wflw(name="300w", scheme="68", num_points=68),
    "cofw": _wflw(name="cofw", scheme="29", num_points=29),
    "aflw": _wflw(name="aflw", scheme="19", num_points=19),
    "awing": _wflw(name="awing", scheme="98", num_points=98, ccr_stages=0, baseline=True, upsample="nearest"),
    # compact 68-point model that trains on 2 CPU cores; the shipped default model uses it
    "ytf68": ChsConfig(
        name="ytf68", scheme="68", num_points=68, input_size=128, hg_features=64, num_stacks=2, hg_depth=3,
        stem_channels=16, fe_channels=32, num_branches=2, sf_width=16, sf_squeeze=8, ccr_stages=2, ccr_width=8,
    ),
    # tiny config for tests
    "tiny": ChsConfig(
        name="tiny", scheme="68", num_points=68, input_size=64, hg_features=16, num_stacks=2, hg_depth=2,
        stem_channels=8, fe_channels=16, sf_width=8, sf_squeeze=4, ccr_stages=2, ccr_width=4,
    ),
}


def get_preset(name: str, **overrides) -> ChsConfig:
    """A validated copy of a preset, with field overrides."""
    if name not in PRESETS:
        raise ChsError(f"unknown preset '{name}' (known: {', '.join(sorted(PRESETS))})")
    return PRESETS[name].replace(**overrides)

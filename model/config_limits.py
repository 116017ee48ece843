"""Upper limits and types for a ChsConfig read from a file, checked before any layer is built.

A config.json claiming ``num_stacks: 100000`` would otherwise allocate until the machine gives out. The
limits are far above every preset (the paper's WFLW model: 256 features, 4 stacks, 4 CCR stages).
"""

from __future__ import annotations

from typing import Any

from chs.runtime.errors import ChsError
from chs.runtime.meta_checks import MAX_INPUT_SIZE, MAX_POINTS, check_crop_rule, check_normalization

INT_LIMITS = {"num_points": MAX_POINTS, "input_size": MAX_INPUT_SIZE, "hg_features": 1024, "num_stacks": 16,
              "hg_depth": 8, "stem_channels": 1024, "fe_channels": 1024, "num_branches": 8, "sf_width": 1024,
              "sf_squeeze": 1024, "ccr_stages": 16, "ccr_width": 1024, "roi_size": 32, "sampling_ratio": 16}


def check_config_limits(cfg: Any) -> None:
    """ChsError naming the first field of the wrong type or above its limit (lower bounds: ChsConfig.validate)."""
    source = f"config '{cfg.name}'"
    for name, hi in INT_LIMITS.items():
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ChsError(f"{source}: {name} must be a whole number, got {value!r:.40}")
        if value > hi:
            raise ChsError(f"{source}: {name} must be <= {hi}, got {value}")
    for name in ("boundary", "baseline"):
        if not isinstance(getattr(cfg, name), bool):
            raise ChsError(f"{source}: {name} must be true or false, got {getattr(cfg, name)!r:.40}")
    for name in ("name", "scheme", "upsample", "backward"):
        if not isinstance(getattr(cfg, name), str):
            raise ChsError(f"{source}: {name} must be a string, got {getattr(cfg, name)!r:.40}")
    check_crop_rule(cfg.crop_rule, source)
    check_normalization(cfg.normalization, source)

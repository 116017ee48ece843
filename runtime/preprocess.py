"""Pixel normalisation shared by every backend (the values travel in the artifact metadata)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Normalization:
    """RGB crop in [0, 255] -> (x / 255 - mean) / std, channel order RGB, layout NCHW float32."""

    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "channel_order": "RGB", "layout": "NCHW"}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(tuple(d.get("mean", cls.mean)), tuple(d.get("std", cls.std)))

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) or (H, W, 3) uint8 RGB -> (N, 3, H, W) float32."""
        x = np.asarray(crops)
        if x.ndim == 3:
            x = x[None]
        x = x.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


__all__ = ["Normalization"]

"""The heatmap codec: landmarks <-> Gaussian heatmaps, and heatmap cells <-> crop pixels.

One object owns the heatmap geometry (input size, stride, sigma): training encodes its targets with it,
the network decodes its last heatmaps with it, the export wrapper and the PyTorch runner map cells to
crop pixels with it. Cell centres sit on integers, like pixel centres, so cell c covers crop pixels
``[c * stride, (c + 1) * stride)`` and its centre is crop pixel ``(c + 0.5) * stride - 0.5``.

Decoding: argmax, then a sub-pixel shift from a parabola fitted to the log-heatmap at the peak's
neighbours (exact for a Gaussian peak; the shift is clamped to half a cell). Built only from ops that
export to ONNX (ArgMax, Gather) and kept in float32 in every exported precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where decoding runs, so configs and options stay torch-free
    import torch

HEATMAP_STRIDE = 4  # the hourglass works at 1/4 of the input resolution
DEFAULT_SIGMA = 1.0  # Gaussian target width in heatmap cells
Points = Any  # numpy array or torch tensor: the frame formulas are the same arithmetic on both

# A Gaussian peak of sigma s has log-curvature 1/s^2 (0.44 at s = 1.5). Flatter "peaks" get no sub-cell
# shift: dividing by a near-zero curvature would turn rounding noise into half-cell jumps.
MIN_CURVATURE = 0.05


def decode_heatmaps(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, n, H, W) -> landmarks (N, n, 2) in heatmap cells (x, y; centres on integers), scores (N, n).

    Always computed in float32 (a no-op when tracing the FP32 export): under bf16 autocast the cell indices
    would be rounded past 256, i.e. on any heatmap larger than 16x16.
    """
    import torch

    heatmaps = heatmaps.float()
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)
    idx = flat.argmax(dim=2)
    peak = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], dim=-1).to(heatmaps.dtype)  # (N, n, 2)
    # the peak and its four neighbours in one gather (a handful of graph nodes, not five chains of them):
    # columns centre, left, right, up, down
    step = torch.tensor([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=heatmaps.dtype, device=heatmaps.device)
    at = torch.minimum((peak[..., None, :] + step).clamp(min=0), peak.new_tensor([w - 1, h - 1]))
    values = torch.gather(flat, 2, (at[..., 1] * w + at[..., 0]).long())  # (N, n, 5)
    logs = torch.log(values.clamp(min=1e-3))
    c, before, after = logs[..., :1], logs[..., 1::2], logs[..., 2::2]  # before/after: (x, y)
    curv = 2 * c - before - after
    s = 0.5 * (after - before) / curv.clamp(min=MIN_CURVATURE)
    coords = peak + torch.where(curv > MIN_CURVATURE, s, torch.zeros_like(s)).clamp(-0.5, 0.5)
    score = values[..., 0]
    return coords, score


@dataclass(frozen=True)
class HeatmapCodec:
    """Heatmap geometry of one model: ``input_size`` crop pixels, ``stride`` pixels per cell, target ``sigma``."""

    input_size: int
    stride: int = HEATMAP_STRIDE
    sigma: float = DEFAULT_SIGMA

    @property
    def size(self) -> int:
        """Heatmap side in cells."""
        return self.input_size // self.stride

    def to_box_frame(self, cells: Points) -> Points:
        """Cell coordinates (centres on integers) -> the continuous frame in which cell c spans [c, c + 1)
        (the frame of ROI-align boxes)."""
        return cells + 0.5

    def to_unit(self, cells: Points) -> Points:
        """Cell coordinates -> [-1, 1] across the heatmap (first cell centre -1, last +1)."""
        return cells * (2.0 / (self.size - 1)) - 1

    def to_cells(self, points: Points) -> Points:
        """Crop pixel coordinates -> heatmap cell coordinates (numpy or torch)."""
        return (points + 0.5) / float(self.stride) - 0.5

    def to_crop(self, points: Points) -> Points:
        """Heatmap cell coordinates -> crop pixel coordinates (numpy or torch)."""
        return self.to_box_frame(points) * float(self.stride) - 0.5

    def encode(self, points: np.ndarray) -> np.ndarray:
        """(n, 2) crop pixels -> (n, size, size) float32 Gaussians of peak 1 (all zero for a NaN point)."""
        pts = np.asarray(self.to_cells(np.asarray(points)), dtype=np.float32)
        grid = np.arange(self.size, dtype=np.float32)
        gx = np.exp(-0.5 * ((grid[None, :] - pts[:, :1]) / self.sigma) ** 2)  # (n, size)
        gy = np.exp(-0.5 * ((grid[None, :] - pts[:, 1:]) / self.sigma) ** 2)
        hm = gy[:, :, None] * gx[:, None, :]
        hm[~np.isfinite(pts).all(axis=1)] = 0.0
        return np.nan_to_num(hm).astype(np.float32)

    def decode(self, heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, n, H, W) -> landmarks (N, n, 2) in heatmap cells, peak scores (N, n); see :func:`decode_heatmaps`."""
        return decode_heatmaps(heatmaps)

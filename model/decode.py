"""Heatmaps -> landmark coordinates (stage 0 of the cascade).

Argmax, then a sub-pixel shift from a parabola fitted to the log-heatmap at the peak's neighbours
(exact for a Gaussian peak; the shift is clamped to half a cell). Built only from ops that export to
ONNX (ArgMax, Gather) and kept in float32 in every exported precision.
"""

from __future__ import annotations

import torch

# A Gaussian peak of sigma s has log-curvature 1/s^2 (0.44 at s = 1.5). Flatter "peaks" get no sub-cell
# shift: dividing by a near-zero curvature would turn rounding noise into half-cell jumps.
MIN_CURVATURE = 0.05


def decode_heatmaps(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, n, H, W) -> landmarks (N, n, 2) in heatmap cells (x, y; centres on integers), scores (N, n).

    Always computed in float32 (a no-op when tracing the FP32 export): under bf16 autocast the cell indices
    would be rounded past 256, i.e. on any heatmap larger than 16x16.
    """
    heatmaps = heatmaps.float()
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)
    idx = flat.argmax(dim=2)
    score = torch.gather(flat, 2, idx[..., None])[..., 0]
    px = (idx % w).to(heatmaps.dtype)
    py = torch.div(idx, w, rounding_mode="floor").to(heatmaps.dtype)

    def at(dx: int, dy: int) -> torch.Tensor:
        xi = (px + dx).clamp(0, w - 1)
        yi = (py + dy).clamp(0, h - 1)
        j = (yi * w + xi).long()
        v = torch.gather(flat, 2, j[..., None])[..., 0]
        return torch.log(v.clamp(min=1e-3))

    c = torch.log(score.clamp(min=1e-3))
    shifts = []
    for left, right in ((at(-1, 0), at(1, 0)), (at(0, -1), at(0, 1))):
        curv = 2 * c - left - right
        s = 0.5 * (right - left) / curv.clamp(min=MIN_CURVATURE)
        shifts.append(torch.where(curv > MIN_CURVATURE, s, torch.zeros_like(s)).clamp(-0.5, 0.5))
    coords = torch.stack([px + shifts[0], py + shifts[1]], dim=-1)
    return coords, score

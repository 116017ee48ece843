"""Cascaded coordinate regression stage: ROI-align a window around each landmark and regress an offset."""

from __future__ import annotations

import torch
from torch import nn

from chs.model.layers import BasicBlock
from chs.model.roi_align import roi_align
from chs.model.selective import SelectiveFeature


class CCRStage(nn.Module):
    """One refinement stage; the n per-landmark blocks run as grouped convolutions (groups = n)."""

    def __init__(self, num_points: int, fe_channels: int, hg_features: int, branches: int, width: int,
                 squeeze: int, ccr_width: int, roi_size: int, sampling_ratio: int, heatmap_size: int):
        super().__init__()
        self.n, self.roi, self.sr, self.hm = num_points, roi_size, sampling_ratio, heatmap_size
        self.select = SelectiveFeature(branches, fe_channels, width, squeeze, guide_channels=num_points)
        self.link = nn.Conv2d(hg_features, fe_channels, 1)
        self.block = BasicBlock(fe_channels + 2, ccr_width, groups=num_points)
        self.out = nn.Conv2d(ccr_width * num_points, 2 * num_points, 1, groups=num_points)
        self.fc = nn.Linear(2 * num_points * roi_size * roi_size, 2 * num_points)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, feats: list[torch.Tensor], ll: torch.Tensor, heatmaps: torch.Tensor,
                landmarks: torch.Tensor) -> torch.Tensor:
        """landmarks (N, n, 2) in heatmap cells -> refined landmarks, same frame."""
        fmap = self.select(feats, heatmaps) + self.link(ll)
        n, k = landmarks.shape[:2]
        r = self.roi / 2.0
        centre = landmarks.reshape(n * k, 2) + 0.5  # cell centres -> the half-pixel box frame
        rois = torch.cat([centre - r, centre + r], dim=1)
        batch_idx = torch.arange(n, device=landmarks.device).repeat_interleave(k)
        patches = roi_align(fmap, rois, batch_idx, (self.roi, self.roi), 1.0, self.sr)  # (N*n, C, R, R)
        # coordinates of the ROI bins, scaled to [-1, 1] over the heatmap
        steps = torch.arange(self.roi, device=landmarks.device, dtype=landmarks.dtype) - (self.roi - 1) / 2.0
        gx = landmarks[..., 0].reshape(n * k, 1, 1, 1) + steps.reshape(1, 1, 1, -1)
        gy = landmarks[..., 1].reshape(n * k, 1, 1, 1) + steps.reshape(1, 1, -1, 1)
        scale = 2.0 / (self.hm - 1)
        coords = torch.cat([(gx * scale - 1).expand(-1, 1, self.roi, self.roi),
                            (gy * scale - 1).expand(-1, 1, self.roi, self.roi)], dim=1)
        x = torch.cat([patches, coords], 1).reshape(n, k * (patches.shape[1] + 2), self.roi, self.roi)
        x = self.out(self.block(x))
        offsets = self.fc(x.reshape(n, -1)).reshape(n, k, 2)
        return landmarks + offsets

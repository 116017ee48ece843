"""Cascaded coordinate regression stage: ROI-align a window around each landmark and regress an offset."""

from __future__ import annotations

import torch
from torch import nn

from chs.model.config import ChsConfig
from chs.model.layers import BasicBlock
from chs.model.roi_align import roi_align
from chs.model.selective import SelectiveFeature


class CCRStage(nn.Module):
    """One refinement stage; the n per-landmark blocks run as grouped convolutions (groups = n)."""

    def __init__(self, cfg: ChsConfig):
        super().__init__()
        n, fe = cfg.num_points, cfg.fe_channels
        self.n, self.roi, self.sr, self.codec = n, cfg.roi_size, cfg.sampling_ratio, cfg.codec
        self.select = SelectiveFeature(cfg.num_branches, fe, cfg.sf_width, cfg.sf_squeeze, guide_channels=n)
        self.link = nn.Conv2d(cfg.hg_features, fe, 1)
        self.block = BasicBlock(fe + 2, cfg.ccr_width, groups=n)
        self.out = nn.Conv2d(cfg.ccr_width * n, 2 * n, 1, groups=n)
        self.fc = nn.Linear(2 * n * cfg.roi_size * cfg.roi_size, 2 * n)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, feats: list[torch.Tensor], ll: torch.Tensor, heatmaps: torch.Tensor,
                landmarks: torch.Tensor) -> torch.Tensor:
        """landmarks (N, n, 2) in heatmap cells -> refined landmarks, same frame."""
        fmap = self.select(feats, heatmaps) + self.link(ll)
        n, k = landmarks.shape[:2]
        r = self.roi / 2.0
        centre = self.codec.to_box_frame(landmarks.reshape(n * k, 2))
        rois = torch.cat([centre - r, centre + r], dim=1)
        batch_idx = torch.arange(n, device=landmarks.device).repeat_interleave(k)
        patches = roi_align(fmap, rois, batch_idx, (self.roi, self.roi), 1.0, self.sr)  # (N*n, C, R, R)
        # cell coordinates of the ROI bins, as [-1, 1] over the heatmap
        steps = torch.arange(self.roi, device=landmarks.device, dtype=landmarks.dtype) - (self.roi - 1) / 2.0
        gx = self.codec.to_unit(landmarks[..., 0].reshape(n * k, 1, 1, 1) + steps.reshape(1, 1, 1, -1))
        gy = self.codec.to_unit(landmarks[..., 1].reshape(n * k, 1, 1, 1) + steps.reshape(1, 1, -1, 1))
        coords = torch.cat([gx.expand(-1, 1, self.roi, self.roi), gy.expand(-1, 1, self.roi, self.roi)], dim=1)
        x = torch.cat([patches, coords], 1).reshape(n, k * (patches.shape[1] + 2), self.roi, self.roi)
        x = self.out(self.block(x))
        offsets = self.fc(x.reshape(n, -1)).reshape(n, k, 2)
        return landmarks + offsets

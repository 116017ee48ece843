"""Selective feature module (paper Eq. 1-4), optionally heatmap-guided (task stages t > 0)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chs.model.layers import BasicBlock


class SelectiveFeature(nn.Module):
    """Fuse B same-size feature branches with softmax channel attention (SKNet-style) across branches.

    With ``guide_channels`` > 0 each branch is gated by a basic block over the branch and the landmark
    heatmaps, so the attention follows where the landmarks are.
    """

    def __init__(self, branches: int, cin: int, width: int, squeeze: int, guide_channels: int = 0):
        super().__init__()
        self.reduce = nn.ModuleList(nn.Conv2d(cin, width, 1, bias=False) for _ in range(branches))
        self.guide = (nn.ModuleList(BasicBlock(cin + guide_channels, width) for _ in range(branches))
                      if guide_channels else None)
        self.spatial = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(branches))
        self.squeeze = nn.Conv2d(width, squeeze, 1)
        self.select = nn.ModuleList(nn.Conv2d(squeeze, width, 1) for _ in range(branches))
        self.expand = nn.Conv2d(width, cin, 1, bias=False)

    def forward(self, feats: list[torch.Tensor], heatmaps: torch.Tensor | None = None) -> torch.Tensor:
        us = []
        for i, f in enumerate(feats):
            u = self.reduce[i](f)
            if self.guide is not None:
                u = u * self.guide[i](torch.cat([f, heatmaps], 1))
            us.append(self.spatial[i](u))
        z = F.relu(self.squeeze(F.adaptive_avg_pool2d(sum(us), 1)))
        s = torch.softmax(torch.stack([sel(z) for sel in self.select]), dim=0)
        return self.expand(sum(s[i] * u for i, u in enumerate(us)))

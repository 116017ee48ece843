"""The AWing stacked-hourglass heatmap network (official ``FAN(num_modules=4)`` layout)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chs.model.layers import ConvBlock, CoordConv


class Hourglass(nn.Module):
    """Depth-d hourglass of HPM blocks; begins with a 1x1 CoordConv (boundary-masked coords after stack 1)."""

    def __init__(self, depth: int, features: int, first: bool, upsample: str):
        super().__init__()
        self.depth = depth
        self.coordconv = CoordConv(features, features, 1, boundary=not first)
        self.up = nn.ModuleList(ConvBlock(features, features) for _ in range(depth))
        self.low1 = nn.ModuleList(ConvBlock(features, features) for _ in range(depth))
        self.low3 = nn.ModuleList(ConvBlock(features, features) for _ in range(depth))
        self.bottom = ConvBlock(features, features)
        # modules (not F.interpolate) so the complexity counter sees them, as thop did for the paper
        kw = {"align_corners": False} if upsample == "bilinear" else {}
        self.upsample = nn.ModuleList(nn.Upsample(scale_factor=2, mode=upsample, **kw) for _ in range(depth))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        up = self.up[level](x)
        low = self.low1[level](F.avg_pool2d(x, 2, 2))
        low = self._level(level + 1, low) if level + 1 < self.depth else self.bottom(low)
        low = self.low3[level](low)
        return up + self.upsample[level](low)

    def forward(self, x: torch.Tensor, boundary_map: torch.Tensor | None) -> torch.Tensor:
        return self._level(0, self.coordconv(x, boundary_map))


class StackedHourglass(nn.Module):
    """S stacks; returns the heatmaps of every stack and the last stack's feature ``ll``."""

    def __init__(self, stacks: int, depth: int, features: int, heatmap_channels: int, boundary: bool, upsample: str):
        super().__init__()
        self.boundary = boundary
        self.hgs = nn.ModuleList(Hourglass(depth, features, i == 0, upsample) for i in range(stacks))
        self.top = nn.ModuleList(ConvBlock(features, features) for _ in range(stacks))
        self.conv_last = nn.ModuleList(nn.Conv2d(features, features, 1) for _ in range(stacks))
        self.bn_end = nn.ModuleList(nn.BatchNorm2d(features) for _ in range(stacks))
        self.head = nn.ModuleList(nn.Conv2d(features, heatmap_channels, 1) for _ in range(stacks))
        self.bl = nn.ModuleList(nn.Conv2d(features, features, 1) for _ in range(stacks - 1))
        self.al = nn.ModuleList(nn.Conv2d(heatmap_channels, features, 1) for _ in range(stacks - 1))

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        heatmaps: list[torch.Tensor] = []
        prev_hm = None
        ll = x
        for i, hg in enumerate(self.hgs):
            boundary_map = None
            if prev_hm is not None:
                # the boundary channel when there is one, else the landmark maximum
                boundary_map = prev_hm[:, -1:] if self.boundary else prev_hm.amax(1, keepdim=True)
            ll = self.top[i](hg(x, boundary_map))
            ll = F.relu(self.bn_end[i](self.conv_last[i](ll)))
            prev_hm = self.head[i](ll)
            heatmaps.append(prev_hm)
            if i < len(self.hgs) - 1:
                x = x + self.bl[i](ll) + self.al[i](prev_hm)
        return heatmaps, ll

"""Building blocks from the AWing code base that CHS reuses (HPM ConvBlock, CoordConv, BasicBlock)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(cin: int, cout: int, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False, groups=groups)


class ConvBlock(nn.Module):
    """Bulat's hierarchical, parallel, multi-scale block (pre-activation, no conv bias)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv3x3(cin, cout // 2)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout // 2), conv3x3(cout // 2, cout // 4)
        self.bn3, self.conv3 = nn.BatchNorm2d(cout // 4), conv3x3(cout // 4, cout // 4)
        self.downsample = (None if cin == cout
                           else nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1(F.relu(self.bn1(x)))
        b = self.conv2(F.relu(self.bn2(a)))
        c = self.conv3(F.relu(self.bn3(b)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.cat([a, b, c], 1) + shortcut


def coord_channels(n: int, h: int, w: int, like: torch.Tensor, with_r: bool = True) -> torch.Tensor:
    """x, y in [-1, 1] (and r = sqrt(x^2 + y^2) / max) as (n, 2 or 3, h, w)."""
    ys = torch.linspace(-1.0, 1.0, h, dtype=like.dtype, device=like.device)
    xs = torch.linspace(-1.0, 1.0, w, dtype=like.dtype, device=like.device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    chans = [xx, yy]
    if with_r:
        r = torch.sqrt(xx * xx + yy * yy)
        chans.append(r / r.max())
    return torch.stack(chans).unsqueeze(0).expand(n, -1, -1, -1)


class CoordConv(nn.Module):
    """Conv over the input plus coordinate channels; with ``boundary`` also x, y masked by a boundary map."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, boundary: bool = False):
        super().__init__()
        self.boundary = boundary
        extra = 3 + (2 if boundary else 0)
        self.conv = nn.Conv2d(cin + extra, cout, kernel, stride=stride, padding=kernel // 2, bias=True)

    def forward(self, x: torch.Tensor, boundary_map: torch.Tensor | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        coords = coord_channels(n, h, w, x)
        parts = [x, coords]
        if self.boundary:
            mask = (boundary_map > 0.05).to(x.dtype)
            parts.append(coords[:, :2] * mask)
        return self.conv(torch.cat(parts, 1))


class BasicBlock(nn.Module):
    """3x3-ReLU-3x3 with a 1x1 shortcut, no BN (as the AWing repo writes it); ``groups`` runs many at once."""

    def __init__(self, cin: int, cout: int, groups: int = 1):
        super().__init__()
        self.conv1 = conv3x3(cin * groups, cout * groups, groups)
        self.conv2 = conv3x3(cout * groups, cout * groups, groups)
        self.shortcut = None if cin == cout else nn.Conv2d(cin * groups, cout * groups, 1, bias=False, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))

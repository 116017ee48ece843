"""The CHS network: selective multi-level features -> stacked hourglass heatmaps -> cascaded regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chs.model.ccr import CCRStage
from chs.model.config import ChsConfig
from chs.model.hourglass import StackedHourglass
from chs.model.layers import ConvBlock, CoordConv
from chs.model.selective import SelectiveFeature


class FeatureExtractor(nn.Module):
    """CoordConv stem and B HPM branches at 1/4 resolution (F0, F1, F2 in the paper)."""

    def __init__(self, cfg: ChsConfig):
        super().__init__()
        self.stem = CoordConv(3, cfg.stem_channels, 7, stride=2)
        self.bn = nn.BatchNorm2d(cfg.stem_channels)
        self.first = ConvBlock(cfg.stem_channels, cfg.fe_channels)
        self.more = nn.ModuleList(ConvBlock(cfg.fe_channels, cfg.fe_channels) for _ in range(cfg.num_branches - 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.avg_pool2d(self.first(F.relu(self.bn(self.stem(x)))), 2, 2)
        feats = [x]
        for block in self.more:
            feats.append(block(feats[-1]))
        return feats


class AWingStem(nn.Module):
    """The AWing baseline's stem: the same CoordConv + HPM 64->128 + pool + HPM 128->128 as two feature
    branches, then HPM 128->256 into the hourglasses."""

    def __init__(self, cfg: ChsConfig):
        super().__init__()
        self.features = FeatureExtractor(cfg.replace(num_branches=2))
        self.conv4 = ConvBlock(cfg.fe_channels, cfg.hg_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv4(self.features(x)[-1])


class CHSNet(nn.Module):
    """Forward returns a dict:

    - ``heatmaps``: list over stacks of (N, n [+1 boundary], H, W)
    - ``landmarks``: list over cascade stages 0..K of (N, n, 2) in heatmap cells (stage 0 = decoded heatmaps)
    - ``scores``: (N, n) peak value of the last heatmaps
    """

    def __init__(self, cfg: ChsConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.codec = cfg.codec
        if cfg.baseline:
            self.awing_stem = AWingStem(cfg)
        else:
            self.features = FeatureExtractor(cfg)
            self.select = SelectiveFeature(cfg.num_branches, cfg.fe_channels, cfg.sf_width, cfg.sf_squeeze)
            self.to_hg = nn.Conv2d(cfg.fe_channels, cfg.hg_features, 1)
        self.hourglass = StackedHourglass(cfg.num_stacks, cfg.hg_depth, cfg.hg_features, cfg.heatmap_channels,
                                          cfg.boundary, cfg.upsample)
        self.ccr = nn.ModuleList(CCRStage(cfg) for _ in range(cfg.ccr_stages))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        n_pts = self.cfg.num_points
        if self.cfg.baseline:
            feats: list[torch.Tensor] = []
            hg_in = self.awing_stem(x)
        else:
            feats = self.features(x)
            hg_in = self.to_hg(self.select(feats))
        heatmaps, ll = self.hourglass(hg_in)
        last = heatmaps[-1][:, :n_pts]
        coords, scores = self.codec.decode(last)
        landmarks = [coords]
        mode = self.cfg.backward
        for t, stage in enumerate(self.ccr):
            inp = landmarks[-1]
            if mode == "task" or (mode == "ccr" and t == 0):
                inp = inp.detach()
            landmarks.append(stage(feats, ll, last, inp))
        return {"heatmaps": heatmaps, "landmarks": landmarks, "scores": scores}


def build_model(cfg: ChsConfig) -> CHSNet:
    return CHSNet(cfg)

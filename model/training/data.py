"""Training dataset: in-memory faces, deterministic per-(seed, epoch, index) augmentation, targets."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.utils.data import Dataset

from chs.model.config import ChsConfig
from chs.model.training.augment import AugmentConfig, augment_crop
from chs.model.training.targets import awing_weight_map, boundary_heatmap
from chs.runtime.datasets import FaceSample
from chs.runtime.evaluate import load_images
from chs.runtime.schemes import get_scheme


class FaceTrainSet(Dataset):
    """Yields (input, heatmap target, weight map, landmark target in heatmap cells)."""

    def __init__(self, samples: list[FaceSample], cfg: ChsConfig, sigma: float, seed: int,
                 augment: AugmentConfig | None = AugmentConfig()):
        kept, self.images, self.skipped = load_images(samples)
        self.landmarks = [s.landmarks for s in kept]
        self.boxes = [s.crop_box(cfg.crop_rule.box_source) for s in kept]
        self.cfg, self.seed, self.augment = cfg, seed, augment
        self.codec = dataclasses.replace(cfg.codec, sigma=sigma)
        self.scheme = get_scheme(cfg.scheme)
        self.rule = cfg.crop_rule
        self.norm = cfg.normalization
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        rng = None if self.augment is None else np.random.default_rng([self.seed, self.epoch, i])
        cfg = self.cfg
        crop, pts = augment_crop(self.images[i], self.landmarks[i], self.boxes[i], cfg.input_size, self.rule,
                                 self.scheme, rng, self.augment or AugmentConfig())
        codec = self.codec
        hm_pts = codec.to_cells(np.asarray(pts))
        maps = codec.encode(pts)
        if cfg.boundary:
            boundary = boundary_heatmap(hm_pts, self.scheme.boundaries, codec.size, codec.sigma)
            maps = np.concatenate([maps, boundary[None]])
        x = self.norm(crop)[0]
        return (torch.from_numpy(x), torch.from_numpy(maps), torch.from_numpy(awing_weight_map(maps)),
                torch.from_numpy(hm_pts.astype(np.float32)))

"""Mixed supervision: batches of fully labelled faces (the model's scheme, e.g. ytf68's 68 points) beside
partially labelled 5-point faces (mtfl5), each face contributing loss only for the points it has.

* A full face: the usual heatmap (AWing) and CCR (log-Wing) terms.
* A 5-point face: heatmap terms on the model landmarks it labels directly (in iBUG-68: nose tip 30, mouth
  corners 48 and 54), and coordinate terms on the 5 reduced points (eye centres = means of six contour
  points, which no heatmap channel holds) through the decoded coordinates: a windowed soft-argmax of the
  last heatmaps (differentiable, unlike the argmax decoder) and every CCR stage's output.
* The 5-point labels follow their own conventions (MTFL's eyes are at the pupil, not at the mean of the
  eye contour; other labellers), so a small learned offset per reduced point is added to the model's
  reduced points *inside the 5-point loss only* (and moves the 5-point heatmap targets, detached): the 68
  points are not dragged towards another set's definition. It is reported in the epoch log.

Batches hold a fixed share ``mix`` of 5-point faces (:class:`MixedBatchSampler`); an epoch is one pass
over the full faces.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Sampler

from chs.model.codec import decode_heatmaps
from chs.model.config import ChsConfig
from chs.model.training.augment import AugmentConfig, augment_crop
from chs.model.training.data import FaceTrainSet
from chs.model.training.losses import adaptive_wing_loss, log_wing_loss
from chs.model.training.targets import AWING_THRESHOLD, AWING_WEIGHT
from chs.runtime.datasets import FaceSample
from chs.runtime.errors import ChsError
from chs.runtime.evaluate import load_images
from chs.runtime.schemes import get_scheme

FULL, FIVE = 0, 1  # the ``kind`` of a face in a mixed batch


def five_point_matrix(scheme: str) -> torch.Tensor:
    """(5, n) matrix whose product with (n, 2) landmarks is the scheme's 5-point reduction."""
    groups = get_scheme(scheme).to5
    if groups is None:
        raise ChsError(f"scheme {scheme} has no 5-point reduction")
    m = torch.zeros(5, get_scheme(scheme).num_points)
    for k, g in enumerate(groups):
        m[k, list(g)] = 1.0 / len(g)
    return m


def direct_points(scheme: str) -> list[tuple[int, int]]:
    """(5-point index, model landmark index) pairs where a reduced point *is* one model landmark."""
    return [(k, g[0]) for k, g in enumerate(get_scheme(scheme).to5 or ()) if len(g) == 1]


def soft_decode(heatmaps: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """(N, n, H, W) -> (N, n, 2) cell coordinates that coordinate losses can train the heatmaps through.

    The value is the served decoder's (argmax + parabola, :func:`decode_heatmaps`); the gradient is that of
    the centroid of the (ReLU'd) heatmap in a window around the peak (straight-through): the windowed
    centroid alone is pulled towards the cell centre by the window's truncation, and the parabola alone
    cannot move a peak by more than half a cell."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.float().reshape(n, k, h * w)
    idx = flat.detach().argmax(dim=2)
    py, px = torch.div(idx, w, rounding_mode="floor"), idx % w
    r = torch.arange(-radius, radius + 1, device=heatmaps.device)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    ys = (py[..., None] + dy.reshape(-1)).clamp(0, h - 1)
    xs = (px[..., None] + dx.reshape(-1)).clamp(0, w - 1)
    v = torch.gather(flat, 2, ys * w + xs).clamp(min=0) + 1e-6
    soft = torch.stack([(v * xs).sum(-1), (v * ys).sum(-1)], dim=-1) / v.sum(-1, keepdim=True)
    return decode_heatmaps(heatmaps.detach())[0] + (soft - soft.detach())


def gaussian_maps(points: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(N, m, 2) cell coordinates -> (N, m, size, size) Gaussians with peak 1 (the numpy targets' torch twin)."""
    grid = torch.arange(size, device=points.device, dtype=torch.float32)
    gx = torch.exp(-0.5 * ((grid - points[..., :1]) / sigma) ** 2)  # (N, m, size)
    gy = torch.exp(-0.5 * ((grid - points[..., 1:]) / sigma) ** 2)
    return gy[..., :, None] * gx[..., None, :]


def awing_weights(target: torch.Tensor) -> torch.Tensor:
    """:func:`awing_weight_map`'s torch twin for (N, m, H, W) targets made on the training device."""
    return 1.0 + (AWING_WEIGHT - 1.0) * F.max_pool2d((target > AWING_THRESHOLD).float(), 3, 1, 1)


class FivePointTerms(nn.Module):
    """The 5-point faces' loss, with the learned per-point offset (heatmap cells) of their labels."""

    def __init__(self, cfg: ChsConfig, sigma: float):
        super().__init__()
        self.register_buffer("reduce", five_point_matrix(cfg.scheme))
        self.direct = direct_points(cfg.scheme)
        self.offset = nn.Parameter(torch.zeros(5, 2))
        self.sigma, self.size = sigma, cfg.heatmap_size

    def forward(self, heatmaps: list[torch.Tensor], landmarks: list[torch.Tensor], five: torch.Tensor) -> torch.Tensor:
        """heatmaps / landmarks: the network's outputs for the 5-point faces only; five: (N, 5, 2) cells."""
        last = heatmaps[-1][:, : self.reduce.shape[1]]
        coords = [soft_decode(last)] + [lm.float() for lm in landmarks[1:]]
        coord = sum(log_wing_loss(self.reduce @ c + self.offset, five) for c in coords) / len(coords)
        if not self.direct:
            return coord
        k5, k68 = zip(*self.direct, strict=True)
        target = gaussian_maps(five[:, list(k5)] - self.offset[list(k5)].detach(), self.size, self.sigma)
        weight = awing_weights(target)
        hm = sum(adaptive_wing_loss(h[:, list(k68)].float(), target, weight) for h in heatmaps) / len(heatmaps)
        return coord + hm


class FivePointTrainSet(Dataset):
    """5-point faces as mixed-batch items: (input, zero heatmaps, zero weights, NaN landmarks, 5 points in
    heatmap cells, FIVE). Crops use the reader's 68-point-equivalent box (``FaceSample.crop_box``)."""

    def __init__(self, samples: list[FaceSample], cfg: ChsConfig, seed: int, augment: AugmentConfig | None):
        kept, self.images, self.skipped = load_images(samples)
        bad = sorted({s.scheme for s in kept} - {"5"})
        if bad:
            raise ChsError(f"5-point training set has {bad[0]}-point faces")
        self.points = [s.landmarks for s in kept]
        self.boxes = [s.crop_box(cfg.crop_rule.box_source) for s in kept]
        self.cfg, self.seed, self.augment, self.epoch = cfg, seed, augment, 0
        self.rule, self.norm = cfg.crop_rule, cfg.normalization

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        cfg = self.cfg
        rng = None if self.augment is None else np.random.default_rng([self.seed, 5, self.epoch, i])
        crop, pts = augment_crop(self.images[i], self.points[i], self.boxes[i], cfg.input_size, self.rule,
                                 get_scheme("5"), rng, self.augment or AugmentConfig())
        size = cfg.heatmap_size
        return (torch.from_numpy(self.norm(crop)[0]), torch.zeros(cfg.heatmap_channels, size, size),
                torch.zeros(cfg.heatmap_channels, size, size), torch.full((cfg.num_points, 2), float("nan")),
                torch.from_numpy(cfg.codec.to_cells(pts).astype(np.float32)), FIVE)


class MixedTrainSet(Dataset):
    """Full faces (indices 0..len(full)-1, with their reduced 5 points added) then 5-point faces."""

    def __init__(self, full: FaceTrainSet, five: FivePointTrainSet):
        self.full, self.five = full, five
        self.reduce = get_scheme(full.cfg.scheme).to_five
        self.skipped = full.skipped + five.skipped

    def set_epoch(self, epoch: int) -> None:
        self.full.set_epoch(epoch)
        self.five.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.full) + len(self.five)

    def __getitem__(self, i: int):
        if i >= len(self.full):
            return self.five[i - len(self.full)]
        x, maps, weight, target = self.full[i]
        return x, maps, weight, target, torch.from_numpy(self.reduce(target.numpy()).astype(np.float32)), FULL


class MixedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` with round(batch_size * mix) 5-point faces; one epoch = one pass over the
    full faces (drop_last), the 5-point faces drawn from a per-epoch permutation (cycled if needed). ``mix`` in
    (0, 1) is check_train_options' to check."""

    def __init__(self, n_full: int, n_five: int, batch_size: int, mix: float, seed: int, epoch: int):
        self.k5 = min(max(round(batch_size * mix), 1), batch_size - 1)
        if batch_size < 2 or n_five < 1 or n_full < batch_size - self.k5:
            raise ChsError(f"mixed batches of {batch_size} need >= {batch_size - self.k5} full and >= 1 5-point faces "
                           f"(have {n_full} and {n_five}; lower --batch-size)")
        self.n_full, self.n_five, self.batch_size = n_full, n_five, batch_size
        self.rng = np.random.default_rng([seed, 15, epoch])

    def __len__(self) -> int:
        return self.n_full // (self.batch_size - self.k5)

    def __iter__(self):
        k_full = self.batch_size - self.k5
        full = self.rng.permutation(self.n_full)
        need = len(self) * self.k5
        five = np.concatenate([self.rng.permutation(self.n_five) for _ in range(-(-need // self.n_five))])
        for b in range(len(self)):
            yield ([int(i) for i in full[b * k_full : (b + 1) * k_full]]
                   + [self.n_full + int(i) for i in five[b * self.k5 : (b + 1) * self.k5]])


def with_offset_group(groups: list[dict], terms: FivePointTerms | None, lr_scale: float) -> list[dict]:
    """The optimiser's parameter groups with the 5-point label offset moved into its own group at
    ``lr_scale`` x the lr, without weight decay. At the network's fine-tuning lr the offset cannot follow a
    pixel-sized label convention within a run, and the network then absorbs it instead (measured: see the
    model card), which is exactly what the offset is there to prevent."""
    if terms is None:
        return groups
    out = [g | {"params": [p for p in g["params"] if p is not terms.offset]} for g in groups]
    return [g for g in out if g["params"]] + [{"params": [terms.offset], "lr_scale": lr_scale, "weight_decay": 0.0}]


def mixed_losses(out: dict, maps, weight, target, five, kind, terms: FivePointTerms, n_ccr: int) -> list[torch.Tensor]:
    """[heatmap, CCR stage 1..K, 5-point] losses of a mixed batch; a kind absent from the batch adds 0."""
    full, part = kind == FULL, kind == FIVE
    zero = out["heatmaps"][-1].sum() * 0.0
    if full.any():
        hm = sum(adaptive_wing_loss(h[full].float(), maps[full], weight[full]) for h in out["heatmaps"])
        losses = [hm / len(out["heatmaps"])] + [log_wing_loss(lm[full].float(), target[full])
                                                for lm in out["landmarks"][1:]]
    else:
        losses = [zero] * (1 + n_ccr)
    if part.any():
        losses.append(terms([h[part] for h in out["heatmaps"]], [lm[part] for lm in out["landmarks"]], five[part]))
    else:
        losses.append(zero)
    return losses


__all__ = ["FIVE", "FULL", "FivePointTerms", "FivePointTrainSet", "MixedBatchSampler", "MixedTrainSet",
           "awing_weights", "direct_points", "five_point_matrix", "gaussian_maps", "mixed_losses", "soft_decode",
           "with_offset_group"]

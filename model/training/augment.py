"""Paper augmentation (section 4.2) expressed through the shared crop geometry, so a training crop is
an inference crop with jittered parameters. numpy/OpenCV only."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from chs.runtime.geometry import CropRule, crop_affine, crop_side, transform_points, warp_crop
from chs.runtime.schemes import LandmarkScheme


@dataclass(frozen=True)
class AugmentConfig:
    scale: float = 0.15  # +-15 %
    rotation: float = 50.0  # +-50 degrees (the paper); drawn from a clipped normal so most are small
    translation: float = 25.0  # +-25 px at 256 input; scaled with the input size
    flip: float = 0.5
    occlusion: float = 0.5  # probability; the occluder covers 0-50 % of the crop side per axis
    photometric: float = 0.8  # probability of one photometric transform


def _photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of: Gaussian noise, grayscale, contrast, colour, gamma, histogram eq., JPEG, lighting."""
    choice = rng.integers(8)
    f = img.astype(np.float32)
    if choice == 0:
        f = f + rng.normal(0, rng.uniform(3, 15), f.shape)
    elif choice == 1:
        g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        return np.repeat(g[..., None], 3, axis=2)
    elif choice == 2:
        f = (f - f.mean()) * rng.uniform(0.6, 1.4) + f.mean()
    elif choice == 3:
        f = f * rng.uniform(0.8, 1.2, size=3)
    elif choice == 4:
        f = 255.0 * (f / 255.0) ** rng.uniform(0.6, 1.6)
    elif choice == 5:
        ycc = cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb)
        ycc[..., 0] = cv2.equalizeHist(ycc[..., 0])
        return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)
    elif choice == 6:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(15, 60))])
        return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else img
    else:
        h, w = img.shape[:2]
        gx = np.linspace(-1, 1, w)[None, :] * rng.uniform(-0.4, 0.4)
        gy = np.linspace(-1, 1, h)[:, None] * rng.uniform(-0.4, 0.4)
        f = f * (1.0 + gx + gy)[..., None]
    return np.clip(f, 0, 255).astype(np.uint8)


def _occlude(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    oh, ow = int(h * rng.uniform(0.1, 0.5)), int(w * rng.uniform(0.1, 0.5))
    y, x = int(rng.integers(0, h - oh + 1)), int(rng.integers(0, w - ow + 1))
    out = img.copy()
    out[y : y + oh, x : x + ow] = rng.integers(0, 256, size=(1, 1, 3), dtype=np.uint8)
    return out


def augment_crop(image: np.ndarray, landmarks: np.ndarray, box: np.ndarray, size: int, rule: CropRule,
                 scheme: LandmarkScheme, rng: np.random.Generator | None,
                 cfg: AugmentConfig = AugmentConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Crop (and with ``rng``, augment) one face. Returns (crop RGB uint8, landmarks in crop pixels)."""
    if rng is None:
        m = crop_affine(box, size, rule)
        return warp_crop(image, m, size), transform_points(landmarks, m)
    flip = rng.random() < cfg.flip
    side = crop_side(box, rule)
    shift = rng.uniform(-1, 1, 2) * cfg.translation / 256.0 * side
    m = crop_affine(box, size, rule,
                    rotation_deg=float(np.clip(rng.normal(0, cfg.rotation / 2.5), -cfg.rotation, cfg.rotation)),
                    scale_jitter=float(rng.uniform(1 - cfg.scale, 1 + cfg.scale)),
                    shift_px=(float(shift[0]), float(shift[1])), flip=flip)
    crop = warp_crop(image, m, size)
    pts = transform_points(landmarks, m)
    if flip:
        pts = pts[list(scheme.flip_perm)]
    if rng.random() < cfg.occlusion:
        crop = _occlude(crop, rng)
    if rng.random() < cfg.photometric:
        crop = _photometric(crop, rng)
    return crop, pts

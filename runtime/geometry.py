"""The one crop geometry: face box -> similarity transform -> input crop, and back for landmarks.

Training, augmentation, calibration, evaluation and serving all call these functions, so a model never
sees a crop that was cut differently from the ones it was trained on. Coordinates are continuous pixel
coordinates with pixel centres on integers (the 300-W ``.pts`` convention, 0-based).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from chs.runtime.errors import ChsError


@dataclass(frozen=True)
class CropRule:
    """How a face box becomes a square crop. Travels with every model artifact."""

    scale: float = 1.3  # side of the square crop = max(box w, box h) * scale
    shift_y: float = 0.0  # move the crop centre down by this fraction of the side (0 = box centre)
    box_source: str = "landmarks"  # what the box was made from in training: "landmarks" or "detector"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CropRule:
        known = {k: d[k] for k in ("scale", "shift_y", "box_source") if k in d}
        return cls(**known)


def box_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Tight [x0, y0, x1, y1] box around the (finite) landmarks."""
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        raise ChsError("no finite landmarks to build a box from")
    return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])


# Box sanity rules (README "Limits"): a box must be a plausible face, or the crop it makes is nonsense.
MIN_BOX_PX = 4.0  # each side at least this many pixels
MAX_BOX_IMAGE_RATIO = 4.0  # each side at most this multiple of the image's longer side
MIN_BOX_OVERLAP = 0.25  # at least this fraction of the box's area inside the image
MAX_COORD = 1e7  # coordinates beyond +-10 million pixels are refused (no overflow downstream)


def _to_box_array(box) -> np.ndarray:
    try:
        return np.asarray(box, dtype=np.float64).reshape(-1)
    except OverflowError:
        raise ChsError("box has a number too large for a coordinate") from None
    except (TypeError, ValueError):
        raise ChsError(f"a box needs 4 numbers [x0, y0, x1, y1], got {box!r:.80}") from None


def check_box(box, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Validate an [x0, y0, x1, y1] box: finite, bounded, at least MIN_BOX_PX a side; with the image's shape
    also at most MAX_BOX_IMAGE_RATIO times the image and at least MIN_BOX_OVERLAP of it inside the image."""
    b = _to_box_array(box)
    if b.shape != (4,):
        raise ChsError(f"a box needs 4 numbers [x0, y0, x1, y1], got {b.size}")
    if not np.isfinite(b).all():
        raise ChsError(f"box {b.tolist()} contains NaN or infinity")
    if np.abs(b).max() > MAX_COORD:
        raise ChsError(f"box {b.tolist()} has coordinates beyond +-{MAX_COORD:g} pixels")
    if b[2] <= b[0] or b[3] <= b[1]:
        raise ChsError(f"box {b.tolist()} is empty or inverted (need x1 > x0 and y1 > y0)")
    bw, bh = b[2] - b[0], b[3] - b[1]
    if min(bw, bh) < MIN_BOX_PX:
        raise ChsError(f"box {b.tolist()} is {bw:.3g}x{bh:.3g} px: smaller than {MIN_BOX_PX:g} px a side")
    if image_shape is not None:
        h, w = image_shape[:2]
        if b[2] <= 0 or b[3] <= 0 or b[0] >= w or b[1] >= h:
            raise ChsError(f"box {b.tolist()} lies outside the {w}x{h} image")
        if max(bw, bh) > MAX_BOX_IMAGE_RATIO * max(w, h):
            raise ChsError(f"box {b.tolist()} is more than {MAX_BOX_IMAGE_RATIO:g}x the size of the {w}x{h} image")
        inside = (min(b[2], w) - max(b[0], 0.0)) * (min(b[3], h) - max(b[1], 0.0))
        if inside < MIN_BOX_OVERLAP * bw * bh:
            raise ChsError(f"box {b.tolist()} lies mostly outside the {w}x{h} image "
                           f"({inside / (bw * bh):.0%} inside; at least {MIN_BOX_OVERLAP:.0%} needed)")
    return b


def crop_side(box, rule: CropRule = CropRule()) -> float:
    """Side in image pixels of the square crop of a (checked) box, before any jitter: the one formula that
    inference crops and training augmentation (whose shifts scale with it) share."""
    return float(max(box[2] - box[0], box[3] - box[1]) * rule.scale)


def crop_affine(box, size: int, rule: CropRule = CropRule(), *, rotation_deg: float = 0.0, scale_jitter: float = 1.0,
                shift_px: tuple[float, float] = (0.0, 0.0), flip: bool = False) -> np.ndarray:
    """2x3 matrix mapping image coordinates to crop coordinates.

    The crop is a square of side ``max(w, h) * rule.scale * scale_jitter`` centred on the box centre
    (moved by ``rule.shift_y`` and ``shift_px``), rotated by ``rotation_deg`` (counter-clockwise in the
    image) and optionally mirrored; it is resampled to ``size`` x ``size`` pixels.
    """
    x0, y0, x1, y1 = check_box(box)
    side = crop_side((x0, y0, x1, y1), rule) * scale_jitter
    cx = (x0 + x1) / 2.0 + shift_px[0]
    cy = (y0 + y1) / 2.0 + rule.shift_y * side + shift_px[1]
    s = size / side
    a = math.radians(rotation_deg)
    cos, sin = math.cos(a) * s, math.sin(a) * s
    c = (size - 1) / 2.0
    # rotate about the box centre, scale, then move that centre to the crop centre
    m = np.array([[cos, sin, 0.0], [-sin, cos, 0.0]])
    m[:, 2] = np.array([c, c]) - m[:, :2] @ np.array([cx, cy])
    if flip:
        m[0] = -m[0]
        m[0, 2] += size - 1
    return m


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix."""
    full = np.vstack([np.asarray(m, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def transform_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to (..., 2) points."""
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2x3 similarity (scale, rotation, translation) taking ``src`` (n, 2) onto ``dst`` (n, 2)
    (Umeyama without reflection); points that are not finite in either are left out."""
    ok = np.isfinite(src).all(axis=1) & np.isfinite(dst).all(axis=1)
    a, b = src[ok], dst[ok]
    if len(a) < 2:
        return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    ac, bc = a - ma, b - mb
    den = float((ac**2).sum())
    if den <= 0:
        return np.array([[1.0, 0.0, mb[0] - ma[0]], [0.0, 1.0, mb[1] - ma[1]]])
    c = float((ac * bc).sum()) / den
    s = float((ac[:, 0] * bc[:, 1] - ac[:, 1] * bc[:, 0]).sum()) / den
    r = np.array([[c, -s], [s, c]])
    return np.concatenate([r, (mb - r @ ma)[:, None]], axis=1)


def warp_crop(image: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """Cut the ``size`` x ``size`` crop that ``m`` describes (bilinear, black outside the image)."""
    return cv2.warpAffine(image, m.astype(np.float64), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)


def crop_face(image: np.ndarray, box, size: int, rule: CropRule = CropRule()) -> tuple[np.ndarray, np.ndarray]:
    """Crop one face for inference. Returns (crop, image->crop affine); invert the affine for landmarks."""
    m = crop_affine(check_box(box, image.shape), size, rule)
    return warp_crop(image, m, size), m

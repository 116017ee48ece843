"""Training targets besides the landmark Gaussians (:class:`chs.model.codec.HeatmapCodec` encodes those):
the boundary heatmap and AWing's weight map (numpy)."""

from __future__ import annotations

import cv2
import numpy as np

# AWing's weight map: ``AWING_WEIGHT`` on the 3x3-dilated foreground (heatmap > ``AWING_THRESHOLD``), 1 elsewhere;
# the full faces' numpy targets and the 5-point faces' torch targets (model/training/mixed.py) both use these
AWING_THRESHOLD = 0.2
AWING_WEIGHT = 10.0


def boundary_heatmap(points: np.ndarray, lines: tuple[tuple[int, ...], ...], size: int, sigma: float) -> np.ndarray:
    """Facial-boundary map as in AWing: draw the polylines, then a Gaussian of the distance to them."""
    up = 4  # draw at 4x resolution for sub-cell accuracy
    canvas = np.full((size * up, size * up), 255, np.uint8)
    for line in lines:
        p = np.asarray(points)[list(line)]
        if not np.isfinite(p).all():
            continue
        p = np.round((p + 0.5) * up - 0.5).astype(np.int32)
        cv2.polylines(canvas, [p.reshape(-1, 1, 2)], False, 0, 1)
    dist = cv2.distanceTransform(canvas, cv2.DIST_L2, 5) / up
    small = cv2.resize(dist, (size, size), interpolation=cv2.INTER_AREA)
    hm = np.exp(-0.5 * (small / sigma) ** 2)
    hm[small > 3 * sigma] = 0.0
    return hm.astype(np.float32)


def awing_weight_map(heatmaps: np.ndarray, threshold: float = AWING_THRESHOLD,
                     weight: float = AWING_WEIGHT) -> np.ndarray:
    """1 on the background, ``weight`` on the 3x3-dilated foreground (heatmap > threshold)."""
    fg = (heatmaps > threshold).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    dil = np.stack([cv2.dilate(f, kernel) for f in fg])
    return (1.0 + (weight - 1.0) * dil).astype(np.float32)

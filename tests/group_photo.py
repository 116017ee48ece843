"""A synthetic group photo for detector tests: the four fixture faces pasted side by side at different sizes
(one under 40 px wide), with their ground-truth landmarks moved along."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from chs.runtime.datasets import load_dataset
from chs.runtime.geometry import box_from_landmarks

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pts"
WIDTHS = (150, 100, 64, 34)  # landmark-box width of each pasted face, px


def group_photo(width: int = 640, height: int = 240, widths: tuple[int, ...] = WIDTHS, gray: int = 120
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    """RGB canvas and the (68, 2) landmarks of each pasted face, in canvas pixels."""
    canvas = np.full((height, width, 3), gray, np.uint8)
    faces = []
    x = 10.0
    for sample, w in zip(load_dataset(FIXTURES), widths, strict=False):
        img = sample.load_image()
        box = box_from_landmarks(sample.landmarks)
        s = w / (box[2] - box[0])
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = 1.6 * max(box[2] - box[0], box[3] - box[1]) * s  # the face with context, pasted as a square
        m = np.array([[s, 0, x + side / 2 - s * cx], [0, s, height / 2 - s * cy]])
        patch = cv2.warpAffine(img, m, (width, height), flags=cv2.INTER_AREA, borderValue=(gray, gray, gray))
        x0, x1 = int(x), int(min(width, x + side))
        y0, y1 = int(max(0, height / 2 - side / 2)), int(min(height, height / 2 + side / 2))
        canvas[y0:y1, x0:x1] = patch[y0:y1, x0:x1]
        faces.append(sample.landmarks @ m[:, :2].T + m[:, 2])
        x += side + 10
    return canvas, faces

"""Calibration crops: real faces cut exactly like training and serving cut them.

INT8 ranges and the FP16 range scan are only as good as the crops they see, so the crops come from the
shared geometry (:func:`chs.runtime.geometry.crop_face`) with the model's own crop rule and normalisation.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from chs.runtime.artifact import ModelMeta
from chs.runtime.datasets import IMAGE_EXTENSIONS, FaceSample, load_dataset
from chs.runtime.errors import ChsError
from chs.runtime.evaluate import sample_box
from chs.runtime.geometry import crop_face
from chs.runtime.imageio import read_image

BOXES_FILE = "boxes.json"


def _is_dataset_folder(folder: Path) -> bool:
    """A folder that load_dataset reads (ytf68 list.txt layout, or images with .pts beside them)."""
    if (folder / "list.txt").is_file():
        return True
    return any(d.is_dir() and any(d.glob("*.pts")) for d in (folder, folder / "images"))


def _even_subset(n: int, k: int, seed: int) -> np.ndarray:
    """k indices spread evenly over range(n); ``seed`` picks the offset inside the first step."""
    if n <= k:
        return np.arange(n)
    step = n / k
    offset = np.random.default_rng(seed).uniform(0.0, step)
    return np.minimum((offset + step * np.arange(k)).astype(np.int64), n - 1)


def _read_boxes(folder: Path) -> dict[str, list[float]]:
    path = folder / BOXES_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, json.JSONDecodeError) as e:
        raise ChsError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ChsError(f"{path} must map image file names to [x0, y0, x1, y1] boxes")
    return data


def _plain_folder(folder: Path) -> list[tuple[Path, list[float] | None]]:
    images = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    boxes = _read_boxes(folder)
    return [(f, boxes.get(f.name)) for f in images]


def load_calibration_crops(source: str | os.PathLike, meta: ModelMeta, max_images: int = 256,
                           seed: int = 0) -> np.ndarray:
    """(N, 3, S, S) float32 normalised crops from ``source``, at most ``max_images``, deterministic.

    ``source`` is a dataset :func:`chs.runtime.datasets.load_dataset` reads (boxes from the GT landmarks
    via :func:`chs.runtime.evaluate.sample_box`), or a plain folder of face images with an optional
    ``boxes.json`` ({"file.jpg": [x0, y0, x1, y1]}); an image without a box is used whole. Unreadable
    images and unusable boxes are skipped with a warning naming the file.
    """
    if max_images < 1:
        raise ChsError(f"max_images must be >= 1, got {max_images}")
    src = Path(source)
    items: list[tuple[Path | FaceSample, list[float] | None]]
    if src.is_dir() and not _is_dataset_folder(src):
        items = list(_plain_folder(src))
    elif src.is_dir() or src.is_file():
        items = [(s, None) for s in load_dataset(src)]
    else:
        raise ChsError(f"no calibration images in {src} (not found)")
    if not items:
        raise ChsError(f"no calibration images in {src}")

    crops = []
    for i in _even_subset(len(items), max_images, seed):
        item, box = items[int(i)]
        name = item.image_path if isinstance(item, FaceSample) else item
        try:
            if isinstance(item, FaceSample):
                image = item.load_image()
                box = sample_box(item, meta)
            else:
                image = read_image(item)
                if box is None:
                    h, w = image.shape[:2]
                    box = [-0.5, -0.5, w - 0.5, h - 0.5]  # the whole image (pixel centres on integers)
            crop, _ = crop_face(image, box, meta.input_size, meta.crop)
        except ChsError as e:
            warnings.warn(f"skipping calibration image {name}: {e}", stacklevel=2)
            continue
        crops.append(crop)
    if not crops:
        raise ChsError(f"no calibration images in {src} (none of {len(items)} could be used)")
    return meta.norm(np.stack(crops))


__all__ = ["BOXES_FILE", "load_calibration_crops"]

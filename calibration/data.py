"""Calibration crops: real faces cut exactly like training and serving cut them.

INT8 ranges and the FP16 range scan are only as good as the crops they see, so the crops come from the
shared geometry (:func:`chs.runtime.geometry.crop_face`) with the model's own crop rule and normalisation.
The export's INT8 gate needs faces the calibration never saw: :func:`split_held_out` sets some aside,
whole identities at a time where the file names tell identities apart.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chs.runtime.artifact import ModelMeta
from chs.runtime.datasets import IMAGE_EXTENSIONS, FaceSample, is_dataset_folder, load_dataset
from chs.runtime.errors import ChsError
from chs.runtime.evaluate import sample_box
from chs.runtime.files import read_json
from chs.runtime.geometry import crop_face
from chs.runtime.imageio import read_image
from chs.runtime.options import whole_number

BOXES_FILE = "boxes.json"


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
    data = read_json(path, "calibration boxes file")
    if not isinstance(data, dict):
        raise ChsError(f"{path} must map image file names to [x0, y0, x1, y1] boxes")
    return data


def _plain_folder(folder: Path) -> list[tuple[Path, list[float] | None]]:
    images = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    boxes = _read_boxes(folder)
    return [(f, boxes.get(f.name)) for f in images]


# one calibration item: an annotated face, or an image file with its optional box
Item = tuple[Path | FaceSample, list[float] | None]
_FRAME_SUFFIX = re.compile(r"(?:[_-]\d+)+$")
_SOURCE_PREFIX = re.compile(r"^[a-z]_(?=[A-Z])")  # ytf68: a_/b_ name the source folder, not the person


def calibration_items(source: str | os.PathLike) -> tuple[list[Item], bool]:
    """(items, labelled): a dataset :func:`chs.runtime.datasets.load_dataset` reads (labelled), or a plain
    folder of face images with an optional ``boxes.json`` ({"file.jpg": [x0, y0, x1, y1]}; unlabelled)."""
    src = Path(source)
    if src.is_dir() and not is_dataset_folder(src):
        items: list[Item] = list(_plain_folder(src))
        labelled = False
    elif src.is_dir() or src.is_file():
        items, labelled = [(s, None) for s in load_dataset(src)], True
    else:
        raise ChsError(f"no calibration images in {src} (not found)")
    if not items:
        raise ChsError(f"no calibration images in {src}")
    return items, labelled


def item_name(item: Item) -> str:
    """The file stem of an item's image ('' for an image embedded in a dataset file)."""
    obj = item[0]
    path = obj.image_path if isinstance(obj, FaceSample) else obj
    return Path(path).stem if path is not None else ""


def identity(name: str) -> str:
    """The person in a file name: the stem without trailing frame/index numbers and a one-letter source
    prefix (``a_Abdel_Aziz_Al-Hakim_10`` and ``b_Abdel_Aziz_Al-Hakim_52`` -> ``Abdel_Aziz_Al-Hakim``,
    ``Aaron_Eckhart_0001`` -> ``Aaron_Eckhart``). On ytf68 this gives its 243 / 35 identities exactly."""
    return _SOURCE_PREFIX.sub("", _FRAME_SUFFIX.sub("", name)) or name


def item_identity(item: Item, index: int) -> str:
    """Who an item shows: the person the dataset names (mtfl5 numbers its files per source, ``lfw_0001``, and
    records LFW's person; its web images name nobody, so each is its own), else :func:`identity` of the file
    name, else the item's index."""
    obj = item[0]
    if isinstance(obj, FaceSample) and "person" in obj.attributes:
        return obj.attributes["person"] or f"#{index}"
    name = item_name(item)
    return identity(name) if name else f"#{index}"


@dataclass(frozen=True)
class HeldOut:
    """Items for calibration and items set aside for the export's gate; ``by`` says how they were split."""

    calib: list[Item]
    gate: list[Item]
    by: str  # "identity", "image" or "none"


def split_held_out(items: Sequence[Item], gate_faces: int) -> HeldOut:
    """Set aside about ``gate_faces`` items (at most a quarter of them) that calibration never sees.

    Whole identities go to one side (near-duplicate frames of one person on both sides would make the gate
    measure faces the calibration saw); identities are picked evenly over their sorted names, so the held
    out faces are spread over the set and the choice is deterministic. Without identity numbering in the
    names every image is its own identity (``by="image"``); sets under 8 items are not split (``"none"``)."""
    items = list(items)
    target = min(int(gate_faces), len(items) // 4)
    if target < 1 or len(items) < 8:
        return HeldOut(items, [], "none")
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(item_identity(it, i), []).append(i)
    keys = sorted(groups)
    by = "identity" if len(keys) < len(items) else "image"
    if len(keys) < 2:  # one person throughout: hold out frames evenly, there is no other way
        keys, groups, by = [str(i) for i in range(len(items))], {str(i): [i] for i in range(len(items))}, "image"
    mean_size = len(items) / len(keys)
    step = max(2, int(len(keys) / max(1.0, target / mean_size)))
    gate_idx: list[int] = []
    for offset in range(step):  # usually one sweep is enough; more only when the picked groups are small
        for k in keys[offset::step]:
            if len(gate_idx) >= target:
                break
            gate_idx += groups[k]
        if len(gate_idx) >= target:
            break
    chosen = set(gate_idx)
    return HeldOut([it for i, it in enumerate(items) if i not in chosen], [items[i] for i in sorted(chosen)], by)


def crops_from_items(items: Sequence[Item], meta: ModelMeta, max_images: int = 256, seed: int = 0,
                     source: str = "") -> np.ndarray:
    """(N, 3, S, S) float32 normalised crops of at most ``max_images`` items spread evenly, deterministic.

    Annotated faces are boxed from their GT landmarks (:func:`chs.runtime.evaluate.sample_box`); an image
    without a box is used whole. Unreadable images and unusable boxes are skipped with a warning."""
    whole_number(max_images, "max_images", 1)
    if not items:
        raise ChsError(f"no calibration images in {source}")
    crops = []
    for i in _even_subset(len(items), max_images, seed):
        item, box = items[int(i)]
        name = item.image_path if isinstance(item, FaceSample) else item
        try:
            image, box = item_image_and_box(item, box, meta)
            crop, _ = crop_face(image, box, meta.input_size, meta.crop)
        except ChsError as e:
            warnings.warn(f"skipping calibration image {name}: {e}", stacklevel=2)
            continue
        crops.append(crop)
    if not crops:
        raise ChsError(f"no calibration images in {source} (none of {len(items)} could be used)")
    return meta.norm(np.stack(crops))


def item_image_and_box(item: Path | FaceSample, box: list[float] | None, meta: ModelMeta
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The RGB image of an item and the box to crop (GT-landmark box, the given box, or the whole image)."""
    if isinstance(item, FaceSample):
        return item.load_image(), sample_box(item, meta)
    image = read_image(item)
    if box is None:
        h, w = image.shape[:2]
        box = [-0.5, -0.5, w - 0.5, h - 0.5]  # the whole image (pixel centres on integers)
    return image, np.asarray(box, dtype=np.float64)


def load_calibration_crops(source: str | os.PathLike, meta: ModelMeta, max_images: int = 256,
                           seed: int = 0) -> np.ndarray:
    """(N, 3, S, S) float32 normalised crops from ``source``, at most ``max_images``, deterministic.

    ``source`` is a dataset :func:`chs.runtime.datasets.load_dataset` reads (boxes from the GT landmarks
    via :func:`chs.runtime.evaluate.sample_box`), or a plain folder of face images with an optional
    ``boxes.json`` ({"file.jpg": [x0, y0, x1, y1]}); an image without a box is used whole. Unreadable
    images and unusable boxes are skipped with a warning naming the file.
    """
    whole_number(max_images, "max_images", 1)
    items, _ = calibration_items(source)
    return crops_from_items(items, meta, max_images, seed, str(source))


__all__ = ["BOXES_FILE", "HeldOut", "calibration_items", "crops_from_items", "identity", "item_image_and_box",
           "load_calibration_crops", "split_held_out"]

"""Read any supported landmark dataset by its path (:func:`load_dataset`) as a list of :class:`FaceSample`.

The record and the per-format readers live in :mod:`chs.runtime.dataset_formats` and are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset_formats import (
    IMAGE_EXTENSIONS,
    FaceSample,
    PathLike,
    load_aflw19,
    load_coco_keypoints,
    load_cofw_mat,
    load_pts_folder,
    load_wflw,
    read_pts,
    write_pts,
)
from .errors import ChsError
from .schemes import WFLW_ATTRIBUTES


def _wflw_image_root(txt: Path) -> Path:
    """Where WFLW images live relative to an annotation list: the txt folder's sibling ``images``, an ``images`` folder
    beside the txt, the official ``WFLW_images`` (next to ``WFLW_annotations``), or else the txt's own folder."""
    parent = txt.parent
    for cand in (parent.parent / "images", parent / "images", parent.parent.parent / "WFLW_images",
                 parent.parent / "WFLW_images"):
        if cand.is_dir():
            return cand
    return parent


def spread_evenly(samples: list[FaceSample], k: int) -> list[FaceSample]:
    """At most ``k`` of ``samples``, evenly spaced over the list (first and last included), in order: a subset
    that covers a set sorted by identity or source instead of its first faces."""
    if not k or len(samples) <= k:
        return list(samples)
    pick = np.linspace(0, len(samples) - 1, k).round().astype(int)
    return [samples[i] for i in sorted(set(pick))]


def is_dataset_folder(path: PathLike) -> bool:
    """Whether :func:`load_dataset` reads this folder as annotated faces: mtfl5 (``landmarks.csv`` +
    ``sources.csv``), the ytf68 ``list.txt`` layout, or images with ``.pts`` beside them (in the folder or its
    ``images/``). Anything else is a plain image folder to callers that accept both."""
    from .mtfl import is_mtfl_folder

    p = Path(path)
    if not p.is_dir():
        return False
    if is_mtfl_folder(p) or (p / "list.txt").is_file():
        return True
    return any(d.is_dir() and any(d.glob("*.pts")) for d in (p, p / "images"))


def load_dataset(path: PathLike, split: str | None = None) -> list[FaceSample]:
    """Read any supported dataset by its path: a folder (``.pts``, or mtfl5's ``landmarks.csv``), ``.json``
    (COCO-style), ``.mat`` (COFW), ``.txt`` (WFLW; images in a nearby ``images`` / ``WFLW_images`` folder,
    else beside the txt) or ``.csv`` (AFLW-19; image names relative to the csv's folder). ``split``
    (all / train / val) selects part of a set that defines splits (mtfl5)."""
    from .mtfl import is_mtfl_folder, load_mtfl5

    p = Path(path)
    if p.is_dir() and is_mtfl_folder(p):
        return load_mtfl5(p, split or "all")
    if split not in (None, "all"):
        raise ChsError(f"{p} defines no '{split}' split (splits exist for mtfl5 folders)")
    if p.is_dir():
        return load_pts_folder(p)
    if not p.exists():
        raise ChsError(f"dataset not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".json":
        return load_coco_keypoints(p)
    if suffix == ".mat":
        return load_cofw_mat(p)
    if suffix == ".txt":
        return load_wflw(p, _wflw_image_root(p))
    if suffix == ".csv":
        return load_aflw19(p, p.parent)
    raise ChsError(f"unknown dataset format '{p.name}' (expected a folder, .json, .mat, .txt or .csv)")


__all__ = ["IMAGE_EXTENSIONS", "WFLW_ATTRIBUTES", "FaceSample", "is_dataset_folder", "load_aflw19",
           "load_coco_keypoints", "load_cofw_mat", "load_dataset", "load_pts_folder", "load_wflw", "read_pts",
           "spread_evenly", "write_pts"]

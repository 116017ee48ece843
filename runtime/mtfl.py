"""The MTFL 5-point face set (``mtfl5-train``) and the crop box of a face that has only 5 points.

A 5-point face is a *partially labelled* face for a 68-point model: it carries the points it has in its
own scheme ("5": eye centres, nose tip, mouth corners, image-left first), and whoever needs 68-point
quantities reduces the model's output to 5 (:meth:`LandmarkScheme.to_five`) instead of inventing labels.

The one thing a 5-point face cannot give is the model's crop: models are trained on the box of the 68 ground-truth
points, and the box of 5 points is a different, much smaller box. :func:`box_from_five` predicts the 68-point box from
the 5 points with constants fitted once on ``ytf68/train`` (see :func:`fit_five_point_box`) and stored here, so every
caller (evaluation, training, the dlib peer) gets the same box from the reader instead of re-deriving its own.
"""

from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets import FaceSample
from .errors import ChsError
from .geometry import box_from_landmarks, fit_similarity, transform_points

PathLike = str | os.PathLike

# ---- the 5-point -> 68-point-box fit ------------------------------------------------------------------
# Canonical frame: the mean ytf68/train 5-point shape (reduced from 68) with centroid 0, eye distance 1 and
# the eyes level. A face's 5 points are mapped into it by a least-squares similarity to this template.
FIVE_TEMPLATE = np.array([[-0.50672, -0.56632], [0.49328, -0.56632], [0.02010, 0.03392],
                          [-0.40888, 0.54944], [0.40221, 0.54929]])
# In that frame the 68-point box (centre x, centre y, half width, half height) is linear in the nose tip's
# position (the yaw / pitch cue: turning the head moves the nose one way and the jaw contour the other):
# rows are (nose_x, nose_y, 1) coefficients, least squares over the 2,977 ytf68/train faces.
BOX_FROM_NOSE = np.array([[-2.11489, 0.00867, 0.01498],
                          [0.00897, -0.24723, 0.17327],
                          [0.00510, 0.09872, 1.18295],
                          [-0.00444, -0.25815, 1.13542]])
# The nose positions seen in that fit (0.5 / 99.5 percentiles): extrapolating a linear fit further than
# this (full profiles) would move the box off the face, so the nose is clamped to this range first.
NOSE_RANGE = ((-0.340, 0.371), (-0.186, 0.279))


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity src -> dst (2x3); a face whose points all coincide has none."""
    if not np.ptp(np.asarray(src, dtype=np.float64), axis=0).any():
        raise ChsError("5-point face has all points at one place")
    return fit_similarity(np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64))


def box_from_five(points: np.ndarray, coef: np.ndarray = BOX_FROM_NOSE,
                  nose_range: tuple[tuple[float, float], tuple[float, float]] = NOSE_RANGE) -> np.ndarray:
    """[x0, y0, x1, y1]: the box the 68 ground-truth points of this face would have, from its 5 points.

    On ytf68/val (429 faces) it is off the true 68-point box by a mean 4.1 % (x) and 2.4 % (y) of the box
    side at the centre and 4.4 % in size (mean IoU 0.86); a box from the eyes alone is off 10 % in x.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.shape != (5, 2) or not np.isfinite(p).all():
        raise ChsError(f"a 5-point box needs 5 finite (x, y) points, got shape {p.shape}")
    to_canon = _similarity(p, FIVE_TEMPLATE)
    nose = transform_points(p, to_canon)[2]
    nose = np.clip(nose, [r[0] for r in nose_range], [r[1] for r in nose_range])
    cx, cy, hw, hh = coef @ np.array([nose[0], nose[1], 1.0])
    back = _similarity(FIVE_TEMPLATE, p)
    centre = transform_points(np.array([cx, cy]), back)
    scale = float(np.hypot(back[0, 0], back[1, 0]))
    return np.array([centre[0] - scale * hw, centre[1] - scale * hh, centre[0] + scale * hw, centre[1] + scale * hh])


def fit_five_point_box(landmarks68: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Refit (FIVE_TEMPLATE, BOX_FROM_NOSE) from (N, 68, 2) faces: how the constants above were made."""
    from .schemes import get_scheme

    lm = np.asarray(landmarks68, dtype=np.float64)
    five = get_scheme("68").to_five(lm)
    shapes = []
    for p in five:  # centroid 0, eye distance 1, eyes level
        d = p[1] - p[0]
        th = np.arctan2(d[1], d[0])
        rot = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
        shapes.append((p - p.mean(0)) @ rot.T / np.hypot(*d))
    template = np.mean(shapes, axis=0)
    template -= template.mean(0)
    feats, target = [], []
    for full, p in zip(lm, five, strict=True):
        sim = _similarity(p, template)
        nose = transform_points(p, sim)[2]
        b = box_from_landmarks(transform_points(full, sim))
        feats.append([nose[0], nose[1], 1.0])
        target.append([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, (b[2] - b[0]) / 2, (b[3] - b[1]) / 2])
    coef = np.linalg.lstsq(np.array(feats), np.array(target), rcond=None)[0].T
    return template, coef


# ---- the MTFL reader ----------------------------------------------------------------------------------
MTFL_COLUMNS = ("lex", "ley", "rex", "rey", "nx", "ny", "lmx", "lmy", "rmx", "rmy")
# MTFL's pose code -> the subset it is reported in (1/5 left/right profile, 2/4 left/right, 3 frontal)
POSE_SUBSET = {1: "profile", 2: "half", 3: "frontal", 4: "half", 5: "profile"}
POSE_SUBSETS = ("profile", "half", "frontal")
# Groups of the same photograph in MTFL's training list (mtfl5-train/README.md): one side of a split each.
DUPLICATE_GROUPS = (("lfw_0560", "lfw_3278"), ("lfw_2056", "net_2529"), ("net_0118", "net_0490", "net_1970"),
                    ("net_0797", "net_3632"), ("net_0930", "net_4740"), ("net_1671", "net_3851"),
                    ("net_0955", "net_4993", "net_5248"), ("net_5373", "net_5455"))
SPLIT_DIR = Path(__file__).resolve().parent / "assets" / "splits"
SPLITS = ("all", "train", "val")


@dataclass(frozen=True)
class MtflSplit:
    """Which faces a split of mtfl5-train holds: the validation stems are a file in the package."""

    val_file: Path = SPLIT_DIR / "mtfl5-val.txt"

    def val_stems(self) -> set[str]:
        if not self.val_file.is_file():
            raise ChsError(f"mtfl5 validation split file not found: {self.val_file}")
        lines = self.val_file.read_text(encoding="utf-8").splitlines()
        return {s.strip() for s in lines if s.strip() and not s.startswith("#")}


def is_mtfl_folder(path: PathLike) -> bool:
    p = Path(path)
    return (p / "landmarks.csv").is_file() and (p / "sources.csv").is_file()


def _rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    except OSError as e:
        raise ChsError(f"cannot read {path}: {e}") from e


def _int(row: dict, key: str, where: str) -> int:
    try:
        return int(row[key])
    except (KeyError, TypeError, ValueError):
        raise ChsError(f"{where}: '{key}' is missing or not an integer") from None


def load_mtfl5(root: PathLike, split: str = "all", split_def: MtflSplit = MtflSplit()) -> list[FaceSample]:
    """mtfl5-train: ``landmarks.csv`` (5 points, 0-based pixel centres), ``sources.csv`` (attributes) and
    ``images/``. Each face gets scheme "5", the 68-point-equivalent box (:func:`box_from_five`, with
    ``landmark_box`` set so crops use it) and attributes: pose (1-5) with its subset, gender, smile,
    glasses, source ("lfw" / "net"), person (LFW names; None for web images) and the stem."""
    root = Path(root)
    if split not in SPLITS:
        raise ChsError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    if not is_mtfl_folder(root):
        raise ChsError(f"{root} is not an mtfl5 folder (needs landmarks.csv and sources.csv)")
    sources = {r.get("name", ""): r for r in _rows(root / "sources.csv")}
    val = split_def.val_stems() if split != "all" else set()
    samples = []
    for k, row in enumerate(_rows(root / "landmarks.csv")):
        where = f"{root / 'landmarks.csv'}:{k + 2}"
        name = (row.get("name") or "").strip()
        stem = Path(name).stem
        if split == "val" and stem not in val or split == "train" and stem in val:
            continue
        try:
            pts = np.array([float(row[c]) for c in MTFL_COLUMNS]).reshape(5, 2)
        except (KeyError, TypeError, ValueError):
            raise ChsError(f"{where}: needs the numeric columns {', '.join(MTFL_COLUMNS)}") from None
        if not np.isfinite(pts).all():
            raise ChsError(f"{where}: non-finite landmark")
        src = sources.get(name)
        if src is None:
            raise ChsError(f"{where}: {name} is not in sources.csv")
        pose = _int(src, "pose", f"sources.csv {name}")
        if pose not in POSE_SUBSET:
            raise ChsError(f"sources.csv {name}: pose {pose} is not 1-5")
        path = src.get("mtfl_path", "")
        person = Path(path).stem.rsplit("_", 1)[0] if path.startswith("lfw") else None
        attrs = {"stem": stem, "pose": pose, "pose_subset": POSE_SUBSET[pose], "source": stem.split("_")[0],
                 "person": person, "gender": _int(src, "gender", name), "smile": _int(src, "smile", name) == 1,
                 "glasses": _int(src, "glasses", name) == 1}
        samples.append(FaceSample(image_path=root / "images" / name, landmarks=pts, scheme="5",
                                  box=box_from_five(pts), attributes=attrs, landmark_box=True))
    if not samples:
        raise ChsError(f"{root}: no faces in split '{split}'")
    return samples


def make_val_split(samples: list[FaceSample], fraction: float = 0.1, seed: int = 15) -> list[str]:
    """Validation stems: whole groups drawn at random until ``fraction`` of the faces. A group is one LFW
    person (several photos of one person stay together) merged with the README's duplicate photos, so no
    photograph or LFW identity straddles the split. How ``assets/splits/mtfl5-val.txt`` was made."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    stems = [s.attributes["stem"] for s in samples]
    for s in samples:
        find(s.attributes["stem"])
        if s.attributes.get("person"):
            union(s.attributes["stem"], "person:" + s.attributes["person"])
    for group in DUPLICATE_GROUPS:
        present = [g for g in group if g in parent]
        for g in present[1:]:
            union(g, present[0])
    groups: dict[str, list[str]] = {}
    for st in stems:
        groups.setdefault(find(st), []).append(st)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    target, out = round(fraction * len(stems)), []
    for key in keys:
        if len(out) >= target:
            break
        out += groups[key]
    return sorted(out)


__all__ = ["DUPLICATE_GROUPS", "POSE_SUBSETS", "POSE_SUBSET", "MtflSplit", "box_from_five",
           "fit_five_point_box", "is_mtfl_folder", "load_mtfl5", "make_val_split"]

"""The landmark annotation formats: one reader per format, all returning the same FaceSample list.

Training, evaluation and calibration then never care where a face came from (``datasets.load_dataset`` picks the reader
by path). Coordinates are image pixels, 0-based, with pixel centres on integers (the geometry module's convention);
missing points are NaN. Only COFW's MATLAB file is converted (1-based -> 0-based); other formats are taken as written:

* ``.pts`` files: the original 300-W release is 1-based, but this project's ``.pts`` data (ytf68) is
  documented 0-based, so ``.pts`` coordinates are used unchanged. Convert 1-based sets before use.
* WFLW ``.txt``, HRNet's AFLW ``.csv`` and mmpose's COCO-style ``.json`` are 0-based already.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ChsError
from .files import read_json
from .geometry import box_from_landmarks
from .imageio import read_image
from .schemes import SCHEMES, WFLW_ATTRIBUTES

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

PathLike = str | os.PathLike


@dataclass
class FaceSample:
    """One annotated face: where its image is, its landmarks and whatever the format adds."""

    image_path: Path | None
    landmarks: np.ndarray  # (n, 2) float64 image pixels, 0-based; NaN for missing points
    scheme: str
    box: np.ndarray | None = None  # [x0, y0, x1, y1]
    attributes: dict = field(default_factory=dict)  # e.g. WFLW flags, COFW {"occluded": bool array}
    image: np.ndarray | None = None  # RGB image when the format embeds images (COFW .mat)
    # box follows the GT-landmark-box convention although the landmarks cannot give it (partially labelled
    # faces, e.g. 5-point MTFL: the reader predicts the 68-point box)
    landmark_box: bool = False

    def crop_box(self, box_source: str = "landmarks") -> np.ndarray:
        """The box a model trained on ``box_source`` boxes ("landmarks" or "detector") crops this face from."""
        if self.box is not None and (self.landmark_box or box_source != "landmarks"):
            return np.asarray(self.box, dtype=np.float64)
        return box_from_landmarks(self.landmarks)

    def load_image(self) -> np.ndarray:
        """The RGB uint8 image: the embedded one, else read from image_path."""
        if self.image is not None:
            return self.image
        if self.image_path is None:
            raise ChsError("this sample has neither an embedded image nor an image path")
        return read_image(self.image_path)


# ---- 300-W .pts -----------------------------------------------------------------------------------


def read_pts(path: PathLike) -> np.ndarray:
    """Read a 300-W ``.pts`` file -> (n, 2) float64, coordinates as written."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ChsError(f"landmarks file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ChsError(f"cannot read landmarks file {p}: {e}") from e
    numbered = [(i + 1, ln.strip()) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    lines = [ln for _, ln in numbered]
    n_points = None
    try:
        start = lines.index("{")
        end = lines.index("}", start)
    except ValueError:
        raise ChsError(f"{p} is not a .pts file (no '{{' ... '}}' block)") from None
    for ln in lines[:start]:
        key, _, value = ln.partition(":")
        if key.strip().lower() == "n_points":
            try:
                n_points = int(value)
            except ValueError:
                raise ChsError(f"{p}: bad n_points line '{ln}'") from None
    pts = []
    for k, (lineno, ln) in enumerate(numbered[start + 1 : end]):
        parts = ln.split()
        try:
            if len(parts) != 2:
                raise ValueError
            x, y = float(parts[0]), float(parts[1])
        except ValueError:
            raise ChsError(f"{p}: point {k} is not 'x y': '{ln}'") from None
        if math.isinf(x) or math.isinf(y):  # NaN marks a missing point; infinity is a broken file
            raise ChsError(f"{p} line {lineno}: point {k} has an infinite coordinate: '{ln}'")
        pts.append((x, y))
    if n_points is not None and n_points != len(pts):
        raise ChsError(f"{p}: header says {n_points} points but the file has {len(pts)}")
    if not pts:
        raise ChsError(f"{p}: no points")
    return np.asarray(pts, dtype=np.float64)


def write_pts(path: PathLike, landmarks: np.ndarray) -> None:
    """Write (n, 2) landmarks as a 300-W ``.pts`` file (6 decimals, as in the 300-W release)."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ChsError(f"landmarks must have shape (n, 2), got {tuple(pts.shape)}")
    if not np.isfinite(pts).all():
        raise ChsError("cannot write NaN / infinite landmarks to a .pts file")
    body = "".join(f"{x:.6f} {y:.6f}\n" for x, y in pts)
    Path(path).write_text(f"version: 1\nn_points: {len(pts)}\n{{\n{body}}}\n", encoding="utf-8")


def _scheme_for(n: int, source: object) -> str:
    if str(n) not in SCHEMES:
        known = ", ".join(sorted(SCHEMES, key=int))
        raise ChsError(f"{source}: {n} landmarks match no known scheme (known: {known})")
    return str(n)


def _find_image(folder: Path, stem: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        for cand in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


def _pts_sample(image: Path, pts_path: Path) -> FaceSample:
    lm = read_pts(pts_path)
    return FaceSample(image_path=image, landmarks=lm, scheme=_scheme_for(len(lm), pts_path))


def load_pts_folder(root: PathLike) -> list[FaceSample]:
    """A folder of images with ``.pts`` landmarks.

    With ``list.txt`` (one stem per line; the ytf68 layout) the files are ``images/STEM.<ext>`` and
    ``images/STEM.pts``, and every listed stem must have both. Without it, every image in the folder (or
    in its ``images/`` subfolder if the folder itself has none) that has a ``.pts`` beside it is used.
    """
    root = Path(root)
    if not root.is_dir():
        raise ChsError(f"dataset folder not found: {root}")
    listing = root / "list.txt"
    samples: list[FaceSample] = []
    if listing.is_file():
        stems = [s.strip() for s in listing.read_text(encoding="utf-8-sig").splitlines() if s.strip()]
        img_dir = root / "images"
        for stem in stems:
            pts_path = img_dir / f"{stem}.pts"
            if not pts_path.is_file():
                raise ChsError(f"missing landmarks file images/{stem}.pts")
            image = _find_image(img_dir, stem)
            if image is None:
                raise ChsError(f"missing image images/{stem}.* (listed in {listing})")
            samples.append(_pts_sample(image, pts_path))
        if not samples:
            raise ChsError(f"{listing} lists no images")
        return samples
    for folder in (root, root / "images"):
        if not folder.is_dir():
            continue
        images = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        samples = [_pts_sample(f, f.with_suffix(".pts")) for f in images if f.with_suffix(".pts").is_file()]
        if samples:
            return samples
    raise ChsError(f"no images with .pts landmarks beside them in {root}")


# ---- WFLW -----------------------------------------------------------------------------------------


def load_wflw(annotation_txt: PathLike, image_root: PathLike) -> list[FaceSample]:
    """WFLW annotation list: per line 196 floats (98 x, y), box x_min y_min x_max y_max, 6 attribute
    flags (pose expression illumination make-up occlusion blur) and the image path relative to image_root."""
    txt, image_root = Path(annotation_txt), Path(image_root)
    if not txt.is_file():
        raise ChsError(f"annotation file not found: {txt}")
    samples = []
    for lineno, line in enumerate(txt.read_text(encoding="utf-8-sig").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 207:
            raise ChsError(f"{txt}:{lineno}: expected 207 fields (196 coords, 4 box, 6 flags, name), got {len(parts)}")
        try:
            nums = np.array([float(v) for v in parts[:206]])
        except ValueError:
            raise ChsError(f"{txt}:{lineno}: non-numeric landmark, box or flag value") from None
        attrs = {k: bool(v) for k, v in zip(WFLW_ATTRIBUTES, nums[200:206], strict=True)}
        samples.append(FaceSample(image_path=image_root / parts[206], landmarks=nums[:196].reshape(98, 2), scheme="98",
                                  box=nums[196:200].copy(), attributes=attrs))
    if not samples:
        raise ChsError(f"{txt} has no annotations")
    return samples


# ---- COFW -----------------------------------------------------------------------------------------


def _cofw_image(cell) -> np.ndarray:
    img = np.asarray(cell)
    while img.dtype == object and img.size == 1:  # nested MATLAB cells
        img = np.asarray(img.reshape(-1)[0])
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ChsError(f"COFW image has unexpected shape {img.shape}")
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)  # MATLAB images are RGB already


def load_cofw_mat(path: PathLike) -> list[FaceSample]:
    """COFW ``.mat`` (COFW_train.mat / COFW_test.mat): images embedded in IsTr / IsT, landmarks in
    phisTr / phisT rows (29 x, 29 y, 29 occlusion flags), boxes in bboxesTr / bboxesT as x, y, w, h.
    MATLAB's 1-based pixel coordinates are shifted to 0-based."""
    from scipy.io import loadmat  # scipy only needed for this format

    p = Path(path)
    if not p.is_file():
        raise ChsError(f"COFW file not found: {p}")
    with open(p, "rb") as f:
        head = f.read(128)
    if b"MATLAB 7.3" in head or head.startswith(b"\x89HDF"):
        raise ChsError(f"{p} is a MATLAB v7.3 (HDF5) file, which scipy cannot read; "
                       "re-save it with MATLAB's save -v7 (or convert with h5py)")
    try:
        mat = loadmat(str(p))
    except Exception as e:  # scipy raises several types for bad files
        raise ChsError(f"cannot read COFW file {p}: {e}") from e
    layouts = (("IsT", "phisT", "bboxesT"), ("IsTr", "phisTr", "bboxesTr"))  # test set first
    keys = next((k for k in layouts if k[0] in mat and k[1] in mat), None)
    if keys is None:
        raise ChsError(f"{p} has neither IsT/phisT nor IsTr/phisTr: not a COFW file")
    img_key, pts_key, box_key = keys
    phis = np.asarray(mat[pts_key], dtype=np.float64)
    images = np.asarray(mat[img_key], dtype=object).reshape(-1)
    if phis.ndim != 2 or phis.shape[1] < 58:
        raise ChsError(f"{p}: {pts_key} has shape {phis.shape}; expected (N, 87)")
    if len(images) != len(phis):
        raise ChsError(f"{p}: {len(images)} images but {len(phis)} landmark rows")
    boxes = None
    if box_key in mat:
        boxes = np.asarray(mat[box_key], dtype=np.float64).reshape(-1, 4)
        if len(boxes) != len(phis):
            raise ChsError(f"{p}: {len(boxes)} boxes but {len(phis)} landmark rows")
    samples = []
    for i, row in enumerate(phis):
        lm = np.stack([row[:29], row[29:58]], axis=1) - 1.0
        attrs = {"index": i}
        if row.size >= 87:
            attrs["occluded"] = row[58:87].astype(bool)
        box = None
        if boxes is not None:
            x, y, w, h = boxes[i]
            box = np.array([x - 1.0, y - 1.0, x - 1.0 + w, y - 1.0 + h])
        samples.append(FaceSample(image_path=None, landmarks=lm, scheme="29", box=box, attributes=attrs,
                                  image=_cofw_image(images[i])))
    return samples


# ---- AFLW-19 (HRNet CSV) -------------------------------------------------------------------------


def _float(v: str, where: str) -> float:
    try:
        return float(v)
    except ValueError:
        raise ChsError(f"{where}: '{v}' is not a number") from None


def load_aflw19(csv_path: PathLike, image_root: PathLike) -> list[FaceSample]:
    """HRNet's ``face_landmarks_aflw_{train,test}.csv``: image_name, scale, box_size, center_w, center_h,
    then x, y for each of the 19 points (as HRNet's AFLW loader indexes it).

    With a header row the columns are found by name (so a file without box_size also works: then the
    box side is scale * 200, HRNet's convention); without one, the HRNet column order is assumed. The box
    is the box_size square around the centre, so the "box" NME normaliser sqrt(w*h) equals box_size.
    """
    path, image_root = Path(csv_path), Path(image_root)
    if not path.is_file():
        raise ChsError(f"annotation file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise ChsError(f"{path} is empty")
    n_meta = len(rows[0]) - 1 - 38
    if n_meta not in (3, 4):
        raise ChsError(f"{path}: {len(rows[0])} columns; expected name, scale, [box_size,] center_w, "
                       "center_h and 38 coordinates")
    try:
        float(rows[0][1])
        header = None
    except ValueError:
        header = [c.strip().lower() for c in rows[0]]
        rows = rows[1:]
    if header is not None and {"scale", "center_w", "center_h"} <= set(header):
        col = {k: header.index(k) for k in ("scale", "center_w", "center_h")}
        col["box_size"] = header.index("box_size") if "box_size" in header else -1
    elif n_meta == 4:
        col = {"scale": 1, "box_size": 2, "center_w": 3, "center_h": 4}
    else:
        col = {"scale": 1, "box_size": -1, "center_w": 2, "center_h": 3}
    first_pt = 1 + n_meta
    samples = []
    for k, r in enumerate(rows):
        where = f"{path}:{k + (2 if header else 1)}"
        if len(r) != first_pt + 38:
            raise ChsError(f"{where}: expected {first_pt + 38} columns, got {len(r)}")
        scale = _float(r[col["scale"]], where)
        size = _float(r[col["box_size"]], where) if col["box_size"] >= 0 else scale * 200.0
        cx, cy = _float(r[col["center_w"]], where), _float(r[col["center_h"]], where)
        lm = np.array([_float(v, where) for v in r[first_pt:]]).reshape(19, 2)
        box = np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])
        samples.append(FaceSample(image_path=image_root / r[0].strip(), landmarks=lm, scheme="19", box=box,
                                  attributes={"scale": scale, "center": (cx, cy), "box_size": size}))
    if not samples:
        raise ChsError(f"{path} has no annotations")
    return samples


# ---- COCO-style keypoints -------------------------------------------------------------------------


def load_coco_keypoints(json_path: PathLike, image_root: PathLike | None = None) -> list[FaceSample]:
    """COCO-style face keypoints (as mmpose ships 300-W / WFLW / COFW / AFLW): ``images`` with file_name,
    ``annotations`` with keypoints [x, y, v] * n and bbox [x, y, w, h]. v == 0 (unlabelled) -> NaN; the
    scheme follows from n. image_root defaults to the JSON's folder."""
    path = Path(json_path)
    root = Path(image_root) if image_root is not None else path.parent
    data = read_json(path, "COCO annotation file")
    if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
        raise ChsError(f"{path} is not COCO-style (needs 'images' and 'annotations')")
    files = {img["id"]: img for img in data["images"]}
    samples = []
    for k, ann in enumerate(data["annotations"]):
        where = f"{path}: annotation {ann.get('id', k)}"
        kp = np.asarray(ann.get("keypoints", []), dtype=np.float64)
        if kp.size == 0 or kp.size % 3:
            raise ChsError(f"{where}: keypoints must be [x, y, v] triples, got {kp.size} numbers")
        kp = kp.reshape(-1, 3)
        if ann.get("image_id") not in files:
            raise ChsError(f"{where}: image_id {ann.get('image_id')} is not in 'images'")
        info = files[ann["image_id"]]
        lm = kp[:, :2].copy()
        lm[kp[:, 2] == 0] = np.nan
        box = None
        if ann.get("bbox") is not None and len(ann["bbox"]) == 4:
            x, y, w, h = (float(v) for v in ann["bbox"])
            box = np.array([x, y, x + w, y + h])
        attrs: dict = {"visibility": kp[:, 2].copy(), "image_id": ann["image_id"], "id": ann.get("id")}
        attrs.update({key: ann[key] for key in ("box_size", "center", "scale") if key in ann})
        samples.append(FaceSample(image_path=root / info["file_name"], landmarks=lm, scheme=_scheme_for(len(kp), where),
                                  box=box, attributes=attrs))
    return samples

"""Face detectors for the landmark runtime: a small protocol, an offline default, and the box mapping.

The landmark models are trained on crops around the ground-truth-landmark box (x1.3, ``CropRule``); a detector's box is
centred and sized differently, so feeding it straight in shifts and scales every crop. Each detector therefore carries a
:class:`BoxMap` fitted on annotated data that turns its boxes into GT-landmark-like boxes before cropping.

Default detector: YuNet (``chs.runtime.yunet``), bundled in the package and run by ONNX Runtime, so
``pip install chs`` alone finds faces. dlib's HOG frontal-face detector stays available
(``make_detector("dlib")``; ``pip install chs[detect]`` = ``dlib-bin``), imported lazily.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from chs.runtime.errors import ChsError

# a detection and a reference box (ground truth, a track) are the same face from this IoU on; detector evaluation,
# the tracker and the benchmarks all match faces with it
MATCH_IOU = 0.3


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (k, 4) with every box in b (m, 4) -> (k, m)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)[:, None]
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)[None]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(union - inter, 1e-12)


NO_DETECTOR = "the dlib detector is not installed: pip install chs[detect], or use the bundled yunet detector"


@dataclass(frozen=True)
class BoxMap:
    """Linear map from a detector box to a GT-landmark box, relative to the detector box size.

    With the detector box centre (cx, cy) and size (w, h): centre' = (cx + dx*w, cy + dy*h), size' = (sw*w, sh*h).
    """

    dx: float = 0.0
    dy: float = 0.0
    sw: float = 1.0
    sh: float = 1.0

    def apply(self, boxes) -> np.ndarray:
        """(k, 4) detector boxes -> (k, 4) GT-landmark-like boxes."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        cx = (b[:, 0] + b[:, 2]) / 2 + self.dx * w
        cy = (b[:, 1] + b[:, 3]) / 2 + self.dy * h
        hw, hh = self.sw * w / 2, self.sh * h / 2
        return np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=1)


IDENTITY_MAP = BoxMap()

# dlib HOG (upsample 1 on images up to 1024 px, threshold 0) -> bounding box of the 68 ytf68 landmarks.
# Fitted by chs.runtime.detector_eval.fit_box_map(DlibHogDetector(fallback_threshold=None,
# box_map=IDENTITY_MAP), load_dataset(".../ytf68/train")): 2 887 of 2 977 images had a detection with
# IoU >= 0.3 against the GT-landmark box; each number is the mean over those pairs (least squares in
# detector-size units; std 0.10, 0.05, 0.10, 0.09: head pose moves the landmark box inside the detector
# box). The landmark box sits 10 % of the detector height lower and is ~5 % smaller. On those pairs the
# mapped box has median IoU 0.75 with the GT-landmark box (raw detector box: 0.67).
# Refit when the detector or its settings change.
DLIB_HOG_BOX_MAP = BoxMap(dx=0.0072, dy=0.1049, sw=0.9642, sh=0.9267)


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that finds faces. ``box_map`` turns its boxes into the landmark crop convention."""

    name: str
    box_map: BoxMap

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 (H, W, 3) -> boxes (k, 4) [x0, y0, x1, y1] in the detector's own convention and
        scores (k,), best first. Must be thread-safe."""
        ...


def dlib_available() -> bool:
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return True


class DlibHogDetector:
    """dlib's HOG + linear SVM frontal-face detector (needs ``dlib``, e.g. the ``dlib-bin`` wheel).

    HOG finds faces down to ~80 px per side; ``upsample`` doubles the image first (faces down to ~40 px).
    ``None`` = upsample once when the longer side is at most 1024 px (small images usually hold small
    faces; upsampling a large frame costs 4x the time). ``fallback_threshold``: when nothing scores above
    ``threshold``, return the single best detection above this lower threshold, since an image handed to a
    landmark tool almost always holds a face (ytf68/val: 12 of 429 faces missed without it, none with it).
    Set it to ``None`` for videos or images that may hold no face.
    """

    name = "dlib-hog"

    def __init__(self, upsample: int | None = None, threshold: float = 0.0,
                 fallback_threshold: float | None = -0.5, box_map: BoxMap = DLIB_HOG_BOX_MAP):
        try:
            import dlib
        except ImportError:
            raise ChsError(NO_DETECTOR) from None
        self._detector = dlib.get_frontal_face_detector()
        self._lock = threading.Lock()  # dlib makes no thread-safety promise for one detector object
        self.upsample = upsample
        self.threshold = float(threshold)
        self.fallback_threshold = None if fallback_threshold is None else float(fallback_threshold)
        self.box_map = box_map

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        img = np.ascontiguousarray(image)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ChsError(f"face detector needs an RGB uint8 (H, W, 3) image, got {img.dtype} {img.shape}")
        up = self.upsample if self.upsample is not None else int(max(img.shape[:2]) <= 1024)
        low = self.threshold if self.fallback_threshold is None else min(self.threshold, self.fallback_threshold)
        with self._lock:
            rects, scores, _ = self._detector.run(img, up, low)
        if not rects:
            return np.zeros((0, 4)), np.zeros(0)
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], dtype=np.float64)
        sc = np.asarray(scores, dtype=np.float64)
        order = np.argsort(-sc, kind="stable")
        boxes, sc = boxes[order], sc[order]
        keep = sc >= self.threshold
        if not keep.any():  # fallback: the best weak detection only
            keep[0] = True
        return boxes[keep], sc[keep]


DETECTOR_NAMES = ("auto", "yunet", "dlib")


def make_detector(name: str = "auto", providers: str = "auto") -> FaceDetector:
    """A detector by name: ``auto``/``yunet`` = the bundled YuNet, ``dlib`` = dlib HOG (one-line ChsError
    naming the extra when dlib is missing), or a path to a YuNet ``.onnx`` file. ``providers``: ONNX
    Runtime's provider choice for YuNet (``LandmarkRuntime`` passes the landmark model's)."""
    if name in ("auto", "yunet"):
        from chs.runtime.yunet import YuNetDetector

        return YuNetDetector(providers=providers)
    if name == "dlib":
        return DlibHogDetector()
    if name.lower().endswith(".onnx"):
        from chs.runtime.yunet import YuNetDetector

        return YuNetDetector(name, providers=providers)
    raise ChsError(f"unknown detector '{name}' (yunet, dlib, or a YuNet .onnx file)")


def default_detector() -> FaceDetector:
    """The offline default detector: the bundled YuNet."""
    return make_detector("auto")


def landmark_boxes(detector: FaceDetector, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Detect faces and return (GT-landmark-like boxes (k, 4), detector scores (k,))."""
    boxes, scores = detector.detect(image)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    box_map = getattr(detector, "box_map", IDENTITY_MAP)
    return box_map.apply(boxes), np.asarray(scores, dtype=np.float64).reshape(-1)


__all__ = ["DETECTOR_NAMES", "DLIB_HOG_BOX_MAP", "IDENTITY_MAP", "MATCH_IOU", "NO_DETECTOR", "BoxMap",
           "DlibHogDetector", "FaceDetector", "box_iou", "default_detector", "dlib_available", "landmark_boxes",
           "make_detector"]

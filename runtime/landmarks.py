"""The user-facing landmark API: image (+ optional boxes) in, faces with landmarks in image pixels out.

Torch-free: it serves exported models (ONNX Runtime, TensorRT) or any object with the Runner protocol.
Cropping, normalisation and the inverse mapping are the shared ones from ``chs.runtime.evaluate``, so a
face predicted here matches ``chs-eval`` on the same box exactly.

Thread safety: a runtime holds only read-only state (the runner, whose ``infer`` is thread-safe, and the detector, which
guards itself), so one instance can serve many threads; results are bit-identical to serial calls.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chs.runtime.assets import DEFAULT_MODEL
from chs.runtime.backends.base import DEFAULT_BATCH, Runner
from chs.runtime.backends.opener import open_model
from chs.runtime.detector import DETECTOR_NAMES, FaceDetector, landmark_boxes, make_detector
from chs.runtime.errors import ChsError
from chs.runtime.evaluate import crop_batch, to_image_coords
from chs.runtime.geometry import check_box
from chs.runtime.imageio import check_pixel_count, read_image
from chs.runtime.options import whole_number
from chs.runtime.tracking import FaceTracker, TrackerSettings

ImageLike = str | os.PathLike | np.ndarray


@dataclass(frozen=True, eq=False)  # arrays inside: compare fields with numpy, not ==
class Face:
    """One face: ``landmarks`` (n, 2) float64 image pixels (0-based, pixel centres on integers), the
    ``box`` the crop was cut from (GT-landmark convention), ``score`` = mean heatmap peak, ``scores`` (n,)
    per landmark, the detector's score when the box came from a detector, and in video the ``track_id``
    that stays with one face from frame to frame."""

    landmarks: np.ndarray
    box: np.ndarray
    score: float
    scores: np.ndarray
    detection_score: float | None = None
    track_id: int | None = None

    def to_dict(self) -> dict:
        """JSON-ready: plain lists and floats."""
        d = {"box": [float(v) for v in self.box], "score": float(self.score),
             "landmarks": [[float(x), float(y)] for x, y in self.landmarks], "scores": [float(s) for s in self.scores]}
        if self.detection_score is not None:
            d["detection_score"] = float(self.detection_score)
        if self.track_id is not None:
            d["track_id"] = int(self.track_id)
        return d


def as_rgb_image(image: ImageLike) -> np.ndarray:
    """A path (read and normalised by imageio) or an RGB uint8 (H, W, 3) array, validated."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if not isinstance(image, np.ndarray):
        raise ChsError(f"image must be a file path or an RGB uint8 array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ChsError(f"image array must have shape (H, W, 3) RGB, got {image.shape}")
    if image.dtype != np.uint8:
        raise ChsError(f"image array must be uint8, got {image.dtype} (convert 16-bit/float images to 8-bit RGB)")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ChsError(f"image is empty ({image.shape[1]}x{image.shape[0]})")
    check_pixel_count(image.shape[1], image.shape[0], "array")  # before OpenCV sees it
    if min(image.strides) <= 0:  # broadcast or reversed views: OpenCV needs real, positive strides
        image = np.ascontiguousarray(image)
    return image


def check_boxes(boxes: Any, image_shape: tuple[int, ...]) -> np.ndarray:
    """(k, 4) array-like (or one box of 4 numbers) -> (k, 4) float64; each box validated against the image."""
    try:
        b = np.asarray(boxes, dtype=np.float64)
    except OverflowError:
        raise ChsError("boxes hold a number too large for a coordinate") from None
    except (TypeError, ValueError):
        raise ChsError(f"boxes must be numbers [[x0, y0, x1, y1], ...], got {boxes!r:.80}") from None
    if b.ndim == 1 and b.shape[0] == 4:
        b = b[None]
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim != 2 or b.shape[1] != 4:
        raise ChsError(f"boxes must have shape (k, 4) [[x0, y0, x1, y1], ...], got {b.shape}")
    for i, box in enumerate(b):
        try:
            check_box(box, image_shape)
        except ChsError as e:
            raise ChsError(f"box {i}: {e}") from None
    return b


class LandmarkRuntime:
    """Predicts landmarks with one runner (ONNX Runtime, TensorRT, or any Runner) and an optional detector.

    ``detector``: any object with the FaceDetector protocol, a name (``"auto"`` = the bundled YuNet,
    ``"yunet"``, ``"dlib"``; created when first needed, so a missing install is reported only when a call
    actually needs it) or ``None`` (boxes must always be given).
    """

    def __init__(self, runner: Runner, detector: FaceDetector | str | None = "auto", max_batch: int = DEFAULT_BATCH):
        if not isinstance(runner, Runner):
            raise ChsError(f"{type(runner).__name__} is not a runner (needs .name, .meta and .infer(batch))")
        whole_number(max_batch, "max_batch", 1)
        if isinstance(detector, str) and detector not in DETECTOR_NAMES and not detector.endswith(".onnx"):
            raise ChsError(f"unknown detector '{detector}' (yunet, dlib, a YuNet .onnx file, or a FaceDetector object)")
        if detector is not None and not isinstance(detector, str) and not callable(getattr(detector, "detect", None)):
            raise ChsError(f"{type(detector).__name__} is not a face detector (needs .detect(image) -> "
                           "(boxes, scores), and .box_map to map its boxes)")
        self.runner = runner
        self.meta = runner.meta
        self.max_batch = int(max_batch)
        self._detector = detector
        self._detector_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, model: str | os.PathLike | Runner = "default", backend: str = "auto", providers: str = "auto",
             detector: FaceDetector | str | None = "auto", max_batch: int = DEFAULT_BATCH) -> LandmarkRuntime:
        """``model``: ``"default"`` (the bundled ONNX model), an ``.onnx`` file, an ``.engine``/``.plan``
        TensorRT engine, ``triton://HOST:PORT/NAME`` (crop here, infer on a Triton server) or a Runner
        object. ``backend``: auto (by file type), ort or tensorrt."""
        if not isinstance(model, (str, os.PathLike)):
            return cls(model, detector=detector, max_batch=max_batch)
        return cls(open_model(model, backend, providers), detector=detector, max_batch=max_batch)

    # ------------------------------------------------------------------------------------------ detector
    @property
    def detector(self) -> FaceDetector:
        """The face detector; ChsError (one line, naming the extra to install) when there is none."""
        det = self._detector
        if det is None:
            raise ChsError("this runtime has no face detector: pass boxes")
        if isinstance(det, str):
            with self._detector_lock:  # created once, then read-only
                if isinstance(self._detector, str):
                    self._detector = make_detector(self._detector, runner_providers(self.runner))
                det = self._detector
        return det  # type: ignore[return-value]

    def detect(self, image: ImageLike, detector: FaceDetector | None = None) -> tuple[np.ndarray, np.ndarray]:
        """GT-landmark-like boxes (k, 4) and detector scores (k,) for one image (``detector``: instead of
        this runtime's own)."""
        img = as_rgb_image(image)
        det = detector if detector is not None else self.detector
        if self.meta.crop.box_source != "landmarks":  # a model trained on detector boxes takes them raw
            boxes, scores = det.detect(img)
            return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(scores, dtype=np.float64)
        return landmark_boxes(det, img)

    # ------------------------------------------------------------------------------------------ predict
    def predict(self, image: ImageLike, boxes: Any = None) -> list[Face]:
        """Faces in one image. ``boxes`` (k, 4) [x0, y0, x1, y1] in the model's crop convention
        (GT-landmark box); ``None`` runs the face detector."""
        return self.predict_batch([image], None if boxes is None else [boxes])[0]

    def predict_batch(self, images: Sequence[ImageLike], boxes_list: Sequence[Any] | None = None) -> list[list[Face]]:
        """Faces in several images; all their crops go through the runner in chunks of ``max_batch``."""
        if isinstance(images, (str, bytes, os.PathLike)):  # a str is a Sequence too: of one-letter "paths"
            raise ChsError(f"predict_batch takes a list of images, got one path {str(images)!r:.80}; use predict() "
                           "for one image")
        if boxes_list is not None and len(boxes_list) != len(images):
            raise ChsError(f"got {len(images)} images but {len(boxes_list)} box lists")
        imgs: list[np.ndarray] = []
        per_image: list[tuple[np.ndarray, np.ndarray | None]] = []
        for i, image in enumerate(images):
            img = as_rgb_image(image)
            if boxes_list is None or boxes_list[i] is None:
                b, det_scores = self.detect(img)
            else:
                b, det_scores = check_boxes(boxes_list[i], img.shape), None
            imgs.append(img)
            per_image.append((b, det_scores))
        flat_img = [imgs[i] for i, (b, _) in enumerate(per_image) for _ in range(len(b))]
        flat_box = [box for b, _ in per_image for box in b]
        lms, scs = self._infer(flat_img, flat_box)
        out: list[list[Face]] = []
        k = 0
        for b, det_scores in per_image:
            faces = []
            for j in range(len(b)):
                sc = scs[k].astype(np.float64)
                faces.append(Face(landmarks=lms[k], box=b[j].copy(), score=float(sc.mean()), scores=sc,
                                  detection_score=None if det_scores is None else float(det_scores[j])))
                k += 1
            out.append(faces)
        return out

    # ------------------------------------------------------------------------------------------ video
    def tracker(self, fps: float = 30.0, settings: TrackerSettings | None = None) -> FaceTracker:
        """A :class:`~chs.runtime.tracking.FaceTracker` for one video stream (one per stream; not shared)."""
        return FaceTracker(self, settings, fps=fps)

    def track(self, frames: Iterable[ImageLike], fps: float = 30.0, settings: TrackerSettings | None = None
              ) -> Iterator[list[Face]]:
        """Faces per frame of a video stream, tracked (stable ``track_id``) and One-Euro smoothed (set
        ``TrackerSettings(smooth=False)`` for raw landmarks). ``fps`` sets the smoothing's time base."""
        return self.tracker(fps, settings).track(frames)

    def _infer(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Crop, run in chunks, map back: (N, n, 2) float64 image pixels and (N, n) float32 scores."""
        n = self.meta.num_points
        if not boxes:
            return np.zeros((0, n, 2)), np.zeros((0, n), np.float32)
        lms, scs = [], []
        for s in range(0, len(boxes), self.max_batch):
            x, affines = crop_batch(images[s : s + self.max_batch], boxes[s : s + self.max_batch], self.meta)
            res = self.runner.infer(x)
            lm = np.asarray(res["landmarks"], dtype=np.float64)
            if lm.shape != (len(x), n, 2):
                raise ChsError(f"runner {self.runner.name} returned landmarks of shape {lm.shape}, "
                               f"expected {(len(x), n, 2)}")
            lms.append(to_image_coords(lm, affines))
            scs.append(np.asarray(res["scores"], dtype=np.float32).reshape(len(x), n))
        return np.concatenate(lms), np.concatenate(scs)


def runner_providers(runner: Runner) -> str:
    """The ONNX Runtime provider choice that matches a runner ("ort-cuda" -> "cuda"), so the detector runs
    where the landmark model runs; "auto" for other runners (TensorRT engines, torch)."""
    name = str(getattr(runner, "name", ""))
    provider = name[4:] if name.startswith("ort-") else ""
    return provider if provider in ("cpu", "cuda", "tensorrt") else "auto"


__all__ = ["DEFAULT_MODEL", "Face", "LandmarkRuntime", "as_rgb_image", "check_boxes", "open_model", "runner_providers"]

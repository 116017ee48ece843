"""Video: follow faces from frame to frame with the landmarks themselves, calling the detector only when needed.

Between detections, a face's next crop box is the bounding box of its previous landmarks -- exactly the box convention
the model was trained on -- so the landmark network tracks the face by itself (the approach of MediaPipe's face mesh).
The detector runs on the first frame, every ``redetect_every`` frames (to pick up new faces), whenever a track's
landmark score drops below ``min_score`` (the face was lost, occluded or left the crop) and on every frame while no face
is tracked. Each face keeps a stable ``track_id``; a track ends when its face leaves the frame or cannot be recovered.
Landmarks are smoothed per track with a One-Euro filter (``chs.runtime.smoothing``) unless ``smooth`` is off; the next
box is always taken from the unsmoothed landmarks, so smoothing never makes the crop lag.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from chs.runtime.detector import MATCH_IOU, box_iou
from chs.runtime.errors import ChsError
from chs.runtime.geometry import box_from_landmarks, check_box
from chs.runtime.options import finite_number, whole_number
from chs.runtime.smoothing import LandmarkSmoother, OneEuroSettings

if TYPE_CHECKING:
    from chs.runtime.detector import FaceDetector
    from chs.runtime.landmarks import Face, LandmarkRuntime

# two tracks whose faces overlap this much follow one face: the younger one is dropped
DUPLICATE_IOU = 0.5
NEW, TAKEN = -1, -2  # what _match says of a box: a face no track follows; its track went to a better-matching box


def _match(boxes: np.ndarray, track_boxes: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """(box index, track index or NEW / TAKEN) for each box, the best-overlapping boxes first: each box continues
    the track it overlaps most if that overlap reaches ``min_iou`` and no better-matching box took the track."""
    if len(boxes) and len(track_boxes):
        iou = box_iou(boxes, track_boxes)
    else:
        iou = np.zeros((len(boxes), len(track_boxes)))
    claimed: set[int] = set()
    out = []
    for d in np.argsort(-iou.max(axis=1) if iou.size else np.zeros(len(boxes)), kind="stable"):
        j = int(iou[d].argmax()) if iou.shape[1] else -1
        if j < 0 or iou[d, j] < min_iou:
            out.append((int(d), NEW))
        elif j in claimed:
            out.append((int(d), TAKEN))
        else:
            claimed.add(j)
            out.append((int(d), j))
    return out


@dataclass(frozen=True)
class TrackerSettings:
    """``redetect_every``: run the detector at least every N frames to pick up new faces (0 = only when a
    track is lost or none exists); ``min_score``: mean landmark heatmap peak below which a track counts as
    lost (the bundled model: 0.86-0.94 on ytf68/val faces, 0.25-0.75 on crops shifted off the face);
    ``match_iou``: a detection overlapping a track's box this much is the same face; ``smooth``:
    One-Euro smoothing (``one_euro`` settings); ``max_faces``: keep at most this many tracks (best first)."""

    redetect_every: int = 30
    min_score: float = 0.7
    match_iou: float = MATCH_IOU
    smooth: bool = True
    one_euro: OneEuroSettings = field(default_factory=OneEuroSettings)
    max_faces: int | None = None

    def __post_init__(self) -> None:
        whole_number(self.redetect_every, "redetect_every", 0)
        finite_number(self.min_score, "min_score")
        if not 0 < finite_number(self.match_iou, "match_iou") <= 1:
            raise ChsError(f"match_iou must be in (0, 1], got {self.match_iou}")
        if self.max_faces is not None:
            whole_number(self.max_faces, "max_faces", 1)
        if not isinstance(self.one_euro, OneEuroSettings):
            raise ChsError(f"one_euro must be a OneEuroSettings, got {type(self.one_euro).__name__}")


@dataclass
class _Track:
    id: int
    landmarks: np.ndarray  # raw (unsmoothed) landmarks of the last frame: the next frame's box
    smoother: LandmarkSmoother
    box: np.ndarray | None = None  # the last frame's crop box: what a given box of the next frame is matched to


def video_detector(detector: FaceDetector) -> FaceDetector:
    """The detector with its still-image fallback off: a video frame may hold no face at all."""
    if getattr(detector, "fallback_threshold", None) is None:
        return detector
    quiet = copy.copy(detector)  # shares the (thread-safe) session / model
    quiet.fallback_threshold = None  # type: ignore[attr-defined]
    return quiet


def _inside(box: np.ndarray, shape: tuple[int, ...], min_fraction: float = 0.5) -> bool:
    """True when at least ``min_fraction`` of the box's area lies in the image and the runtime's box rules
    (``check_box``: size, overlap) accept it."""
    h, w = shape[:2]
    iw = min(box[2], w) - max(box[0], 0)
    ih = min(box[3], h) - max(box[1], 0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    if not (iw > 0 and ih > 0 and area > 0 and iw * ih >= min_fraction * area):
        return False
    try:
        check_box(box, shape)
    except ChsError:
        return False
    return True


class FaceTracker:
    """Tracks faces through consecutive frames of one video; ``update(frame)`` -> faces with ``track_id``.

    Not thread-safe (it holds per-video state): use one tracker per stream; the runtime behind it is shared. ``frames``
    and ``detector_calls`` count the work done, so ``detector_calls / frames`` is the detector rate of the stream.
    """

    def __init__(self, runtime: LandmarkRuntime, settings: TrackerSettings | None = None, fps: float = 30.0):
        if not finite_number(fps, "fps") > 0:  # the smoothing's time base: frame n is at n / fps seconds
            raise ChsError(f"fps must be > 0, got {fps}")
        if settings is not None and not isinstance(settings, TrackerSettings):
            raise ChsError(f"settings must be a TrackerSettings, got {type(settings).__name__}")
        self.runtime = runtime
        self.settings = settings or TrackerSettings()
        self.fps = float(fps)
        self.frames = 0
        self.detector_calls = 0
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._last_detection = -1
        self._detector: FaceDetector | None = None

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            self._detector = video_detector(self.runtime.detector)
        return self._detector

    def _detect(self, image: np.ndarray) -> np.ndarray:
        self.detector_calls += 1
        self._last_detection = self.frames
        boxes, _ = self.runtime.detect(image, detector=self.detector)
        return boxes

    def _new_track(self, landmarks: np.ndarray) -> _Track:
        track = _Track(self._next_id, landmarks, LandmarkSmoother(self.settings.one_euro))
        self._next_id += 1
        return track

    def update(self, frame: Any, boxes: Any = None) -> list[Face]:
        """Faces in the next frame (RGB uint8 array or image path), each with its ``track_id``.

        ``boxes`` (N x 4, the landmark-box convention): this frame's faces as the caller knows them (its own detector,
        a boxes file). They replace both following and detecting for this frame and are answered as given, every
        one and in order; each continues the track it overlaps (``match_iou``) or starts one, so ids and smoothing
        carry on through frames with and without given boxes."""
        from chs.runtime.landmarks import as_rgb_image

        image = as_rgb_image(frame)
        if boxes is not None:
            return self._given(image, boxes)
        s = self.settings
        # 1. follow every track from its previous landmarks; a box mostly outside the frame ends the track
        tracks = [t for t in self._tracks if _inside(box_from_landmarks(t.landmarks), image.shape)]
        faces = self.runtime.predict(image, [box_from_landmarks(t.landmarks) for t in tracks]) if tracks else []
        ok = [f.score >= s.min_score for f in faces]
        due = s.redetect_every > 0 and self.frames - self._last_detection >= s.redetect_every
        # 2. the detector: on the first frame, when due, when a track is weak, or while nothing is tracked
        if not tracks or due or not all(ok):
            det = np.array([b for b in self._detect(image) if _inside(b, image.shape, 0.0)]).reshape(-1, 4)
            current = np.array([f.box for f in faces]).reshape(-1, 4)
            retry: list[tuple[int, np.ndarray]] = []  # (track index or NEW for a new face, box)
            for d, j in _match(det, current, s.match_iou):
                if j == NEW or (j >= 0 and not ok[j]):  # a new face, or a weak track re-seeded from its detection
                    retry.append((j, det[d]))
            redo = self.runtime.predict(image, [b for _, b in retry]) if retry else []
            for (j, _), face in zip(retry, redo, strict=True):  # the detector vouches for these faces
                if j >= 0:
                    faces[j], ok[j] = face, True
                else:
                    tracks.append(self._new_track(face.landmarks))
                    faces.append(face)
                    ok.append(True)
        keep = [i for i in range(len(tracks)) if ok[i]]
        tracks, faces = [tracks[i] for i in keep], [faces[i] for i in keep]
        # 3. one track per face: a track that overlaps an older one is a duplicate
        order = sorted(range(len(tracks)), key=lambda i: tracks[i].id)
        kept: list[int] = []
        for i in order:
            if all(box_iou(faces[i].box, faces[k].box)[0, 0] < DUPLICATE_IOU for k in kept):
                kept.append(i)
        if s.max_faces is not None:
            kept = sorted(kept, key=lambda i: -faces[i].score)[: s.max_faces]
            kept.sort(key=lambda i: tracks[i].id)
        return self._emit([tracks[i] for i in kept], [faces[i] for i in kept])

    def _given(self, image: np.ndarray, boxes: Any) -> list[Face]:
        """``update`` with the caller's boxes: every box answered; tracks matched to them by overlap."""
        faces = self.runtime.predict(image, boxes)  # checks the boxes (one-line errors)
        self._last_detection = self.frames  # they stand in for a detection: the redetect schedule starts again
        current = np.array([f.box for f in faces]).reshape(-1, 4)
        previous = np.array([t.box for t in self._tracks]).reshape(-1, 4)
        continued = {i: j for i, j in _match(current, previous, self.settings.match_iou) if j >= 0}
        tracks = [self._tracks[continued[i]] if i in continued else self._new_track(face.landmarks)
                  for i, face in enumerate(faces)]
        return self._emit(tracks, faces)

    def _emit(self, tracks: list[_Track], faces: list[Face]) -> list[Face]:
        """The frame's answer: each face smoothed on its track; these tracks are the ones followed next frame."""
        t = self.frames / self.fps
        out: list[Face] = []
        for track, face in zip(tracks, faces, strict=True):
            track.landmarks, track.box = face.landmarks, face.box
            lm = track.smoother(face.landmarks, t) if self.settings.smooth else face.landmarks
            out.append(replace(face, landmarks=lm, track_id=track.id))
        self._tracks = list(tracks)
        self.frames += 1
        return out

    def track(self, frames: Iterable[Any]) -> Iterator[list[Face]]:
        """``update`` over a stream of frames."""
        for frame in frames:
            yield self.update(frame)


__all__ = ["FaceTracker", "TrackerSettings", "video_detector"]

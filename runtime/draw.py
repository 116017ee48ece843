"""Drawing predicted faces onto images and videos, for ``chs align --out`` and the demo.

Sizes scale with the face box so that a 40 px face and a 400 px face are both readable. Images are RGB
in and out; the BGR conversion for OpenCV's writers happens here and nowhere else.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from chs.runtime.errors import ChsError
from chs.runtime.files import atomic_output
from chs.runtime.imageheader import declared_size
from chs.runtime.imageio import check_pixel_count

if TYPE_CHECKING:
    from chs.runtime.landmarks import Face, LandmarkRuntime
    from chs.runtime.tracking import FaceTracker

IMAGE_WRITE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# containers OpenCV's FFmpeg reads (phone exports: .m4v, .3gp; web: .webm); .ts is left out (TypeScript in folders)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")
POINT_COLOR = (0, 255, 0)  # RGB
BOX_COLOR = (255, 64, 64)
WRITE_FPS_RANGE = (0.1, 1000.0)  # annotated videos: mp4v refuses 1e-5 and 70000 fps, which only broken headers declare
MP4V_SIDE_RANGE = (2, 8191)  # frame sides (px) the mp4v (MPEG-4 part 2) encoder accepts


class UnreadableVideo(ChsError):
    """A video file that opens but holds no decodable frame: bad input, like an unreadable image."""


def _quiet_ffmpeg() -> None:
    """FFmpeg writes its own complaints about broken files to stderr; the ChsErrors here say it in one line."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def _open_capture(path: Path) -> cv2.VideoCapture:
    """A capture through FFmpeg when this OpenCV has it. With no backend named, OpenCV tries its own AVI/MJPEG
    reader after FFmpeg refuses a file, and that reader prints its complaints about a broken AVI (with raw bytes
    of the file) straight to stderr, beside the one-line error."""
    _quiet_ffmpeg()
    if not cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):
        return cv2.VideoCapture(str(path))
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # "can't be used to capture by name"
    try:
        return cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    finally:
        cv2.utils.logging.setLogLevel(level)


def writable_fps(fps: float) -> float:
    """The frame rate an annotated video is written at: the source's, clamped to ``WRITE_FPS_RANGE`` (mp4v
    refuses 70000 fps and 1e-5 fps, which only broken headers declare); 25 when it is not a positive number."""
    if not (math.isfinite(fps) and fps > 0):
        return 25.0
    return min(max(float(fps), WRITE_FPS_RANGE[0]), WRITE_FPS_RANGE[1])


def draw_faces(image: np.ndarray, faces: Sequence[Face], point_color: tuple[int, int, int] = POINT_COLOR,
               box_color: tuple[int, int, int] | None = BOX_COLOR, copy: bool = True) -> np.ndarray:
    """Landmarks as dots (radius ~1.5 % of the box side, at least 1 px) and the face box, on an RGB image."""
    out = np.array(image, dtype=np.uint8, copy=True) if copy else image
    if out.ndim != 3 or out.shape[2] != 3:
        raise ChsError(f"can only draw on an RGB (H, W, 3) image, got shape {out.shape}")
    for face in faces:
        x0, y0, x1, y1 = (float(v) for v in face.box)
        side = max(x1 - x0, y1 - y0, 1.0)
        radius = max(1, round(side * 0.015))
        thick = max(1, round(side * 0.01))
        if box_color is not None:
            cv2.rectangle(out, (round(x0), round(y0)), (round(x1), round(y1)), box_color, thick, cv2.LINE_AA)
            if getattr(face, "track_id", None) is not None:  # video: the face's track id above its box
                font = max(0.35, side / 250)
                cv2.putText(out, str(face.track_id), (round(x0), max(round(y0) - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                            font, box_color, max(1, round(font * 2)), cv2.LINE_AA)
        for x, y in np.asarray(face.landmarks, dtype=np.float64):
            if np.isfinite(x) and np.isfinite(y):
                # 4 fractional bits: sub-pixel centres, so small faces are not drawn on a jittery grid
                cv2.circle(out, (round(x * 16), round(y * 16)), radius * 16, point_color, -1, cv2.LINE_AA, shift=4)
    return out


def write_image(path: str | os.PathLike, image: np.ndarray, jpeg_quality: int = 92) -> Path:
    """Write an RGB uint8 image as PNG or JPEG (by extension); creates the folder; unicode paths work."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in IMAGE_WRITE_EXTENSIONS:
        raise ChsError(f"cannot write '{p.name}': use a .png, .jpg or .jpeg file name")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext != ".png" else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ChsError(f"could not encode {p.name}")
    try:
        with atomic_output(p) as partial:  # an interrupted run leaves whole files only
            buf.tofile(str(partial))
    except OSError as e:
        raise ChsError(f"cannot write {p}: {e.strerror or e}") from None
    return p


class VideoReader:
    """RGB frames of a video file (cv2.VideoCapture), with its fps, size and (estimated) frame count.

    The frame size is held to the image pixel limit (``imageio.max_image_pixels``) before any frame is decoded:
    an image header is checked before OpenCV opens the file, the stream's size right after."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise ChsError(f"video not found: {self.path}")
        try:  # a 12000x12000 PNG named .mp4: FFmpeg would decode it while probing the file
            with open(self.path, "rb") as f:
                size = declared_size(f.read(1 << 16))
        except OSError as e:
            raise ChsError(f"cannot read video {self.path}: {e.strerror or e}") from None
        if size is not None:
            check_pixel_count(size[0], size[1], str(self.path), what="video")
        self._cap = self._open()
        fps = float(self._cap.get(cv2.CAP_PROP_FPS))
        self.fps = fps if math.isfinite(fps) and fps > 0 else 25.0
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        try:
            check_pixel_count(self.width, self.height, str(self.path), what="video")
        except ChsError:
            self.close()
            raise
        self.frame_count = max(0, int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)))

    def _open(self) -> cv2.VideoCapture:
        cap = _open_capture(self.path)
        if not cap.isOpened():
            raise ChsError(f"cannot open video {self.path}: not a readable video file")
        return cap

    def __iter__(self) -> Iterator[np.ndarray]:
        """The frames from the first one; a reader iterated again reads the file again (not zero frames)."""
        if not self._cap.isOpened():  # closed by the end of an earlier pass (or by close())
            self._cap = self._open()
        try:
            while True:
                ok, frame = self._cap.read()
                if not ok or frame is None:
                    return
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            self.close()

    def close(self) -> None:
        self._cap.release()


class VideoWriter:
    """mp4v video writer taking RGB frames; the size is fixed by the first frame (later frames of another
    size are resized to it), the frame rate is ``writable_fps(fps)``.

    The file is written under a unique temporary name beside the target (``files.atomic_output``, so two runs
    writing the same file do not share it) and renamed when ``close()`` completes, so an interrupted run leaves
    either a complete, playable video or none (``abort()`` deletes the part).
    """

    def __init__(self, path: str | os.PathLike, fps: float):
        self.path = Path(path)
        self.part: Path | None = None
        self.fps = writable_fps(fps)
        self.frames = 0
        self._size: tuple[int, int] | None = None
        self._writer: cv2.VideoWriter | None = None
        self._output: AbstractContextManager[Path] | None = None

    def _open(self, w: int, h: int) -> None:
        lo, hi = MP4V_SIDE_RANGE
        if not (lo <= w <= hi and lo <= h <= hi):
            raise ChsError(f"cannot write video {self.path}: its {w}x{h} px frames are outside what the mp4v codec "
                           f"can write ({lo} to {hi} px a side)")
        self._output = atomic_output(self.path)
        try:
            self.part = self._output.__enter__()
        except OSError as e:
            self._output = None
            raise ChsError(f"cannot write video {self.path}: {e.strerror or e}") from None
        self._size = (w, h)
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # the ChsError below is the one line
        try:
            self._writer = cv2.VideoWriter(str(self.part), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not self._writer.isOpened():
            self.abort()
            raise ChsError(f"cannot write video {self.path}: OpenCV has no working mp4v encoder for {w}x{h} px at "
                           f"{self.fps:g} fps")

    def write(self, frame: np.ndarray) -> None:
        if self._writer is None:
            _quiet_ffmpeg()
            self._open(frame.shape[1], frame.shape[0])
        assert self._writer is not None
        if (frame.shape[1], frame.shape[0]) != self._size:
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        """Finish the file and move it to its name (nothing is written for a video without frames)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._output is not None:
            output, self._output = self._output, None
            try:
                output.__exit__(None, None, None)  # renames the part into place
            except OSError as e:
                raise ChsError(f"cannot write video {self.path}: {e.strerror or e}") from None

    def abort(self) -> None:
        """Drop a partly written video."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._output is not None:
            output, self._output = self._output, None
            aborted = ChsError(f"writing {self.path} aborted")
            output.__exit__(ChsError, aborted, None)  # deletes the part

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def annotate_video(runtime: LandmarkRuntime, src: str | os.PathLike, dst: str | os.PathLike | None = None,
                   boxes: Callable[[int], Any] | None = None,
                   tracker: FaceTracker | None = None) -> Iterator[tuple[int, list[Face]]]:
    """Track faces through a video file; yields (frame index, faces) and, with ``dst``, writes the annotated video
    (mp4v; complete or not at all).

    ``tracker``: ``runtime.tracker(fps, settings)``; default: default settings at the video's fps (unsmoothed:
    ``TrackerSettings(smooth=False)``; frames predicted independently of each other: ``runtime.predict_batch`` over
    ``VideoReader(src)``). ``boxes(frame_index)`` gives a frame's boxes, or None for none known; given boxes stand in
    for the tracker's own on their frames. A video without a readable frame is a ChsError."""
    reader = VideoReader(src)
    if tracker is None:
        tracker = runtime.tracker(reader.fps)
    writer = VideoWriter(dst, reader.fps) if dst is not None else None
    n = 0
    try:
        for n, frame in enumerate(reader, start=1):
            given = boxes(n - 1) if boxes is not None else None
            try:
                faces = tracker.update(frame, given)
            except ChsError as e:  # a given box that does not fit this frame: say which frame
                if given is None:
                    raise
                raise ChsError(f"{reader.path} frame {n - 1}: {e}") from None
            if writer is not None:
                writer.write(draw_faces(frame, faces, copy=False))
            yield n - 1, faces
        if n == 0:
            raise UnreadableVideo(f"video {reader.path} has no readable frames (empty, truncated or corrupt)")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        reader.close()
    if writer is not None:
        writer.close()


__all__ = ["VIDEO_EXTENSIONS", "WRITE_FPS_RANGE", "UnreadableVideo", "VideoReader", "VideoWriter", "annotate_video",
           "draw_faces", "write_image", "writable_fps"]

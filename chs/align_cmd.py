"""``chs align``: landmarks for images, folders and videos with an exported model, torch-free.

Registered by chs/cli.py as ``chs align`` and ``chs-align``. Output: one human-readable line per face, or
``--json`` lines (one JSON object per face) on stdout; warnings, progress and the summary go to stderr,
so stdout stays machine-readable. Bad inputs end with ``error: <one line>`` and exit code 2; inside a
folder an unreadable image or video is reported and skipped, so one bad file does not stop a batch job.
"""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer

from chs.errors_cli import fail, one_line_errors, printable
from chs.options_cli import options_command
from chs.runtime.assets import DEMO_IMAGE
from chs.runtime.backends.base import DEFAULT_BATCH
from chs.runtime.datasets import IMAGE_EXTENSIONS
from chs.runtime.draw import (
    VIDEO_EXTENSIONS,
    UnreadableVideo,
    VideoReader,
    annotate_video,
    draw_faces,
    writable_fps,
    write_image,
)
from chs.runtime.errors import ChsError
from chs.runtime.files import check_input, check_output_dir, read_json
from chs.runtime.imageio import read_image
from chs.runtime.landmarks import Face, LandmarkRuntime
from chs.runtime.options import option, whole_number
from chs.runtime.tracking import FaceTracker, TrackerSettings

DEMO_OUT = "chs-demo"


@dataclass(frozen=True)
class Item:
    """One input file; ``root`` is the folder it was found in (None = named on the command line)."""

    path: Path
    root: Path | None
    video: bool


# ------------------------------------------------------------------------------------------------ boxes
class BoxBook:
    """Boxes from ``--boxes``: keys are a path as given, an absolute path, a path relative to the input
    folder, or a bare file name; ``"clip.mp4#12"`` is frame 12 of a video (``"clip.mp4"`` = every frame)."""

    def __init__(self, entries: dict[str, np.ndarray]):
        self.entries = entries

    @classmethod
    def read(cls, path: str) -> BoxBook:
        p = Path(path)
        data = read_json(p, "boxes file")  # names a folder, FIFO or device for what it is
        if not isinstance(data, dict):
            raise ChsError(f'boxes file {p} must hold an object {{"image": [[x0, y0, x1, y1], ...]}}')
        entries = {}
        for key, value in data.items():
            try:
                b = np.asarray(value, dtype=np.float64)
            except OverflowError:
                raise ChsError(f"boxes file {p}: '{key}' holds a number too large for a coordinate") from None
            except (TypeError, ValueError):
                raise ChsError(f"boxes file {p}: '{key}' is not a list of [x0, y0, x1, y1] boxes") from None
            if b.ndim == 1 and b.size == 4:
                b = b[None]
            if b.size and (b.ndim != 2 or b.shape[1] != 4):
                raise ChsError(f"boxes file {p}: '{key}' is not a list of [x0, y0, x1, y1] boxes")
            bad = np.flatnonzero(~np.isfinite(b.reshape(-1, 4)).all(axis=1))
            if bad.size:  # found before any work (size and placement need the image: checked then)
                raise ChsError(f"boxes file {p}: '{key}' box {bad[0]} holds NaN or infinity")
            entries[str(key)] = b.reshape(-1, 4)
        return cls(entries)

    def keys_for(self, item: Item) -> list[str]:
        p = item.path
        keys = [str(p), p.as_posix(), str(p.resolve()), p.name]
        if item.root is not None:
            keys.insert(1, p.relative_to(item.root).as_posix())
        return keys

    def lookup(self, item: Item, suffix: str = "") -> np.ndarray | None:
        for k in self.keys_for(item):
            if k + suffix in self.entries:
                return self.entries[k + suffix]
        return None


# ------------------------------------------------------------------------------------------------ inputs
def collect_inputs(inputs: list[str]) -> tuple[list[Item], int]:
    """(items, entries skipped): files as named (videos by extension); folders expanded to their images and
    videos, sorted. A named FIFO, device or symlink loop is an error; inside a folder such entries are skipped
    with a warning and counted with the unreadable files."""
    items: list[Item] = []
    skipped = 0
    for raw in inputs:
        if not raw:
            raise ChsError("an input path is empty ('')")  # Path('') would be the current folder
        p = Path(raw)
        st = check_input(p, "input")
        if stat.S_ISDIR(st.st_mode):
            found = []
            for f in sorted(p.rglob("*")):
                if f.suffix.lower() not in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS or f.is_dir():
                    continue
                if f.is_file():
                    found.append(f)
                    continue
                try:
                    check_input(f, "file")
                except ChsError as e:
                    typer.echo(f"warning: skipped {printable(str(f))}: {printable(str(e))}", err=True)
                    skipped += 1
            if not found:
                typer.echo(f"warning: no images or videos in folder {printable(str(p))}", err=True)
            items += [Item(f, p, f.suffix.lower() in VIDEO_EXTENSIONS) for f in found]
        else:
            items.append(Item(p, None, p.suffix.lower() in VIDEO_EXTENSIONS))
    return items, skipped


class OutputNames:
    """``<out>/<relative folder>/<stem>_landmarks.<png|jpg|mp4>``, made unique within one run."""

    def __init__(self, out: Path):
        self.out = out
        self.used: set[Path] = set()

    def __call__(self, item: Item) -> Path:
        ext = ".mp4" if item.video else ".jpg" if item.path.suffix.lower() in (".jpg", ".jpeg") else ".png"
        sub = item.path.parent.relative_to(item.root) if item.root is not None else Path()
        target = self.out / sub / f"{item.path.stem}_landmarks{ext}"
        n = 2
        while target in self.used:
            target = self.out / sub / f"{item.path.stem}_landmarks_{n}{ext}"
            n += 1
        self.used.add(target)
        return target


@dataclass(frozen=True)
class Job:
    """What every input of one run shares: the model, the boxes, where and how to report, and the counts."""

    runtime: LandmarkRuntime
    book: BoxBook
    names: OutputNames | None
    as_json: bool
    stats: dict[str, int]
    progress: Callable[..., Any]
    batch_size: int
    settings: TrackerSettings


# ------------------------------------------------------------------------------------------------ output
def _emit(name: str, faces: list[Face], as_json: bool, frame: int | None = None) -> None:
    for j, f in enumerate(faces):
        if as_json:
            rec: dict[str, Any] = {"image": name}
            if frame is not None:
                rec["frame"] = frame
            rec["face"] = j
            if f.track_id is not None:
                rec["track"] = f.track_id
            rec.update({"box": [round(float(v), 3) for v in f.box], "score": round(f.score, 6),
                        "landmarks": [[round(float(x), 3), round(float(y), 3)] for x, y in f.landmarks]})
            sys.stdout.write(json.dumps(rec) + "\n")
        else:
            where = f"{printable(name)} frame {frame}" if frame is not None else printable(name)
            box = ", ".join(f"{v:.1f}" for v in f.box)
            track = f"  track {f.track_id}" if f.track_id is not None else ""
            typer.echo(f"{where}  face {j}{track}  score {f.score:.3f}  box [{box}]  {len(f.landmarks)} landmarks")


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[..., Any]]:
    """A rich progress bar on stderr (only on a terminal); yields ``update(description, advance, total)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, transient=True, disable=not (enabled and console.is_terminal))
    with bar:
        tasks: dict[str, int] = {}

        def update(description: str, advance: int = 1, total: int | None = None) -> None:
            if description not in tasks:
                tasks[description] = bar.add_task(description, total=total)
            bar.update(tasks[description], advance=advance, total=total)

        yield update


# ------------------------------------------------------------------------------------------------ command
@dataclass(frozen=True)
class AlignOptions:
    """``chs-align``'s options (their one home)."""

    inputs: list[str] | None = option(None, "Image files, folders (searched recursively) and videos "
                                      f"({' '.join(VIDEO_EXTENSIONS)}).")
    model: str = option("default", "'default' (the bundled model), an .onnx file or a TensorRT .engine.")
    boxes: str | None = option(None, 'JSON file {"image name or path": list of (x0, y0, x1, y1) boxes}: boxes around '
                               "the face landmarks (brows/jaw to chin); images not listed use the face detector. "
                               "Videos: \"clip.mp4\" for every frame, \"clip.mp4#N\" for frame N.")
    out: str | None = option(None, "Folder for annotated images and videos.")
    as_json: bool = option(False, "JSON lines on stdout, one per face.", flag="--json")
    demo: bool = option(False, "Run on the bundled astronaut photo and write <out or ./chs-demo>/"
                        "astronaut_landmarks.png.", flag="--demo")
    backend: str = option("auto", "auto (by file type), ort or tensorrt.")
    batch_size: int = option(DEFAULT_BATCH, "Faces per inference batch.")
    detector: str = option("yunet", "Face detector for images without boxes: yunet (bundled), dlib (pip install "
                           "chs[detect]) or a YuNet .onnx file.")
    smooth: bool = option(True, "Video: One-Euro smoothing of the tracked landmarks (never applied to still "
                          "images).", flag="--smooth/--no-smooth")
    redetect_every: int | None = option(None, "Video: run the detector at least every N frames to pick up new faces "
                                        f"(0 = only when a face is lost) [default: {TrackerSettings.redetect_every}].")

    def runtime(self) -> LandmarkRuntime:
        return LandmarkRuntime.load(self.model, backend=self.backend, max_batch=self.batch_size, detector=self.detector)


@one_line_errors
@options_command(AlignOptions, arguments=("inputs",))
def align(opts: AlignOptions) -> None:
    """Predict facial landmarks in images, folders and videos (videos: faces tracked, landmarks smoothed)."""
    inputs, out, as_json, batch_size = opts.inputs, opts.out, opts.as_json, opts.batch_size
    whole_number(batch_size, "--batch-size", 1)
    if opts.boxes == "":
        raise ChsError("--boxes is an empty path ('')")
    settings = TrackerSettings(smooth=opts.smooth) if opts.redetect_every is None else \
        TrackerSettings(smooth=opts.smooth, redetect_every=whole_number(opts.redetect_every, "--redetect-every", 0))
    if opts.demo:
        if inputs:
            raise ChsError("--demo takes no inputs")
        _run_demo(opts, check_output_dir(DEMO_OUT if out is None else out))
        return
    if not inputs:
        raise ChsError("no inputs: give image files, folders or videos (or try --demo)")
    book = BoxBook.read(opts.boxes) if opts.boxes is not None else BoxBook({})  # before --out is made
    if out is not None:
        check_output_dir(out)
    items, skipped = collect_inputs(inputs)
    if not items:
        raise ChsError("no images or videos found in the given folders")
    runtime = opts.runtime()
    names = OutputNames(Path(out)) if out is not None else None
    stats = {"images": 0, "faces": 0, "skipped": skipped, "videos": 0, "frames": 0, "detector_calls": 0, "cut_short": 0}
    show_bar = any(i.root is not None or i.video for i in items)
    with _progress(show_bar) as progress:
        job = Job(runtime, book, names, as_json, stats, progress, batch_size, settings)
        images = [i for i in items if not i.video]
        for start in range(0, len(images), batch_size):
            _align_images(job, images[start : start + batch_size])
            progress("images", advance=len(images[start : start + batch_size]), total=len(images))
        for item in (i for i in items if i.video):
            _align_video(job, item)
    if stats["skipped"] and not stats["images"] and not stats["videos"]:
        fail(f"none of the {stats['skipped']} files could be read")
    parts = [f"{stats['faces']} face(s) in {stats['images']} image(s)"]
    if stats["videos"]:
        parts.append(f"{stats['frames']} frame(s) of {stats['videos']} video(s), detector on {stats['detector_calls']} "
                     f"frame(s) ({stats['detector_calls'] / max(stats['frames'], 1):.3f} per frame)")
    if stats["cut_short"]:
        parts.append(f"{stats['cut_short']} video(s) ended before their declared frame count")
    if stats["skipped"]:
        parts.append(f"{stats['skipped']} unreadable file(s) skipped")
    if names is not None:
        parts.append(f"annotated files in {names.out}")
    typer.echo("; ".join(parts), err=True)


def _skip_or_raise(job: Job, item: Item, error: ChsError) -> None:
    """An unreadable file: an error when it was named on the command line, a warning and a skip inside a folder."""
    if item.root is None:
        raise error
    typer.echo(f"warning: skipped {printable(str(item.path))}: {printable(str(error))}", err=True)
    job.stats["skipped"] += 1


def _align_images(job: Job, chunk: list[Item]) -> None:
    """Read a chunk of images (folder images that fail are skipped), predict them in one batch, report."""
    runtime, stats = job.runtime, job.stats
    kept: list[tuple[Item, np.ndarray]] = []
    for item in chunk:
        try:
            kept.append((item, read_image(item.path)))
        except ChsError as e:
            _skip_or_raise(job, item, e)
    box_list = [job.book.lookup(item) for item, _ in kept]
    try:
        results = runtime.predict_batch([img for _, img in kept], box_list)
    except ChsError as e:
        # name the image whose boxes were bad: redo one by one to find it
        for (item, img), b in zip(kept, box_list, strict=True):
            try:
                runtime.predict(img, b)
            except ChsError as e1:
                raise ChsError(f"{item.path}: {e1}") from None
        raise e
    for (item, img), faces in zip(kept, results, strict=True):
        stats["images"] += 1
        stats["faces"] += len(faces)
        if not faces:
            typer.echo(f"warning: no face found in {printable(str(item.path))}", err=True)
        _emit(str(item.path), faces, job.as_json)
        if job.names is not None:
            write_image(job.names(item), draw_faces(img, faces))


def _align_video(job: Job, item: Item) -> None:
    """One video, tracked and smoothed; boxes ``--boxes`` lists for it (every frame, or ``#N`` for frame N) are
    used as given on their frames, in place of the tracker's own."""
    book = job.book
    try:
        probe = VideoReader(item.path)  # fails early, with one line, on an unreadable video
    except ChsError as e:
        _skip_or_raise(job, item, e)
        return
    total, fps = probe.frame_count or None, probe.fps
    probe.close()

    def frame_boxes(i: int) -> np.ndarray | None:
        b = book.lookup(item, f"#{i}")
        return b if b is not None else book.lookup(item)

    tracker = job.runtime.tracker(fps, job.settings)
    dst = job.names(item) if job.names is not None else None  # VideoWriter renames it into place only when complete
    if dst is not None and writable_fps(fps) != fps:
        typer.echo(f"warning: {printable(str(item.path))} declares {fps:g} fps; {printable(str(dst))} is written at "
                   f"{writable_fps(fps):g} fps", err=True)
    try:
        frames = _video_frames(job, item, dst, frame_boxes, total, tracker)
    except UnreadableVideo as e:  # opened, but not one frame decoded: nothing was reported or written for it
        _skip_or_raise(job, item, e)
        return
    job.stats["videos"] += 1
    if total is not None and frames < total:  # the decoder stopped early: a damaged or cut file
        job.stats["cut_short"] += 1
        typer.echo(f"warning: video {printable(str(item.path))} ended after {frames} of the {total} frames its header "
                   "declares (damaged or truncated file)", err=True)


def _video_frames(job: Job, item: Item, dst: Path | None, frame_boxes: Callable[[int], Any], total: int | None,
                  tracker: FaceTracker) -> int:
    """Frames of one video through ``tracker`` (``frame_boxes``: given boxes, or None); how many were decoded."""
    stats = job.stats
    n = 0
    frames = annotate_video(job.runtime, item.path, dst, frame_boxes, tracker=tracker)
    with closing(frames):
        for idx, faces in frames:
            stats["frames"] += 1
            stats["faces"] += len(faces)
            _emit(str(item.path), faces, job.as_json, frame=idx)
            job.progress(item.path.name, advance=1, total=total)
            n += 1
    stats["detector_calls"] += tracker.detector_calls
    return n


def _run_demo(opts: AlignOptions, out: Path) -> None:
    """The bundled photo: the face detector (best face only: the photo holds one), or ``--boxes``."""
    runtime = opts.runtime()
    image = read_image(DEMO_IMAGE)
    item = Item(DEMO_IMAGE, None, False)
    if opts.boxes is not None:
        box = BoxBook.read(opts.boxes).lookup(item)
        source = opts.boxes
    else:
        box, source = runtime.detect(image)[0][:1], runtime.detector.name
    if box is None or not len(box):
        raise ChsError(f"no face box for the demo image from {source}")
    faces = runtime.predict(image, box)
    target = write_image(out / "astronaut_landmarks.png", draw_faces(image, faces))
    if opts.as_json:
        _emit(DEMO_IMAGE.name, faces, True)
    else:
        f = faces[0]
        typer.echo(f"{DEMO_IMAGE.name}: model {runtime.runner.name} ({runtime.meta.preset or runtime.meta.scheme}), "
                   f"box [{', '.join(f'{v:.1f}' for v in f.box)}] from {source}, score {f.score:.3f}")
        typer.echo("landmarks (x, y) in image pixels:")
        for i, (x, y) in enumerate(f.landmarks):
            typer.echo(f"  {i:2d}  {x:7.1f} {y:7.1f}")
    typer.echo(f"wrote {target}", err=opts.as_json)


__all__ = ["BoxBook", "align", "collect_inputs"]

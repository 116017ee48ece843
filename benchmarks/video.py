"""``chs-bench video``: stability of the video pipeline on clips with a known motion and real compression.

Each clip is one annotated still (e.g. ytf68/val) moved by a smooth similarity motion (translation, scale,
small rotation), encoded with a real video codec (mp4v, OpenCV) and decoded again, so the pipeline sees
compression noise that changes from frame to frame while the true landmarks are known exactly (the still's
labels moved by the motion). Per clip and overall, for each pipeline:
- NME (inter-ocular) against the moved ground truth, on the frames where the face was reported;
- jitter: mean frame-to-frame landmark displacement after the known motion is undone, in % of the
  inter-ocular distance (a still face should show zero); the labels' own noise does not enter it;
- detector calls per frame, lost frames (no face reported where one is), and end-to-end frames/s of the
  pipeline (detector + crops + landmark model + tracking/smoothing; decoding the video is not timed).
Rows: per-frame detection (each detector), tracking, tracking + smoothing. The pipelines run clip by clip
in turn, so the frames/s ratios hold on a shared machine.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from chs.runtime.datasets import FaceSample
from chs.runtime.detector import MATCH_IOU, box_iou
from chs.runtime.draw import VideoReader, VideoWriter
from chs.runtime.geometry import box_from_landmarks, invert_affine, transform_points
from chs.runtime.landmarks import Face, LandmarkRuntime
from chs.runtime.metrics import nme, normalizing_distance
from chs.runtime.smoothing import OneEuroSettings
from chs.runtime.tracking import TrackerSettings


@dataclass(frozen=True)
class ClipSpec:
    """One clip: ``frames`` at ``fps``; the still sits on a canvas ``pad`` times its size, shifted by up to ``shift`` of
    the canvas size, scaled by 1 +- ``zoom`` and rotated by +- ``rotation_deg``, each a sine of its own period (s)."""

    frames: int = 60
    fps: float = 30.0
    pad: float = 1.5
    shift: float = 0.06
    zoom: float = 0.12
    rotation_deg: float = 6.0
    periods: tuple[float, float, float, float] = (2.7, 3.3, 4.1, 3.7)  # x shift, y shift, zoom, rotation

    def motion(self, t: int, size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
        """2x3 affine: still-image pixels -> frame ``t`` pixels (frame ``size`` = (w, h))."""
        w, h = size
        iw, ih = image_size
        s = t / self.fps
        px, py, pz, pr = (2 * math.pi * s / p for p in self.periods)
        scale = 1 + self.zoom * math.sin(pz)
        a = math.radians(self.rotation_deg * math.sin(pr))
        cx = w / 2 + self.shift * w * math.sin(px)
        cy = h / 2 + self.shift * h * math.sin(py)
        c, sn = math.cos(a) * scale, math.sin(a) * scale
        m = np.array([[c, sn, 0.0], [-sn, c, 0.0]])
        m[:, 2] = np.array([cx, cy]) - m[:, :2] @ np.array([(iw - 1) / 2, (ih - 1) / 2])
        return m


@dataclass
class Clip:
    name: str
    frames: list[np.ndarray]  # decoded RGB frames
    truth: np.ndarray  # (T, n, 2) moved ground truth
    motions: np.ndarray  # (T, 2, 3) still -> frame
    iod: float  # inter-ocular distance in the still
    fps: float


def make_clip(sample: FaceSample, spec: ClipSpec = ClipSpec(), workdir: str | None = None) -> Clip:
    """Render, encode (mp4v) and decode one clip of ``sample``'s image with the known motion."""
    img = sample.load_image()
    ih, iw = img.shape[:2]
    w, h = int(round(iw * spec.pad / 2)) * 2, int(round(ih * spec.pad / 2)) * 2
    motions = np.stack([spec.motion(t, (w, h), (iw, ih)) for t in range(spec.frames)])
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "clip.mp4"
        with VideoWriter(path, spec.fps) as writer:
            for m in motions:
                writer.write(cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
        frames = list(VideoReader(path))
    if len(frames) != spec.frames:
        raise RuntimeError(f"clip of {sample.image_path} decoded {len(frames)} of {spec.frames} frames")
    truth = np.stack([transform_points(sample.landmarks, m) for m in motions])
    iod = float(normalizing_distance(sample.landmarks[None], sample.scheme)[0])
    name = Path(sample.image_path).stem if sample.image_path is not None else "clip"
    return Clip(name, frames, truth, motions, iod, spec.fps)


def _pick(faces: list[Face], truth: np.ndarray) -> np.ndarray | None:
    """The reported face that is this clip's face (IoU >= MATCH_IOU with the moved GT-landmark box), or None."""
    if not faces:
        return None
    gt = box_from_landmarks(truth)
    iou = box_iou(np.array([f.box for f in faces]), gt)[:, 0]
    k = int(iou.argmax())
    return faces[k].landmarks if iou[k] >= MATCH_IOU else None


def run_pipeline(runtime: LandmarkRuntime, clip: Clip, mode: str, settings: TrackerSettings) -> dict:
    """One pipeline over one clip: ``detect`` (per frame, the runtime's detector) or ``track`` (``settings``)."""
    preds: list[np.ndarray | None] = []
    t0 = time.perf_counter()
    tracker = None if mode == "detect" else runtime.tracker(clip.fps, settings)
    for frame in clip.frames:
        faces = runtime.predict(frame) if tracker is None else tracker.update(frame)
        preds.append(_pick(faces, clip.truth[len(preds)]))
    calls = len(clip.frames) if tracker is None else tracker.detector_calls
    seconds = time.perf_counter() - t0
    return score(clip, preds, runtime.meta.scheme) | {"detector_calls": calls, "seconds": seconds}


def score(clip: Clip, preds: Sequence[np.ndarray | None], scheme: str) -> dict:
    """NME on the frames with a face, jitter over consecutive frames that both have one, lost frames."""
    found = [i for i, p in enumerate(preds) if p is not None]
    errs = nme(np.stack([preds[i] for i in found]), clip.truth[found], scheme) if found else np.zeros(0)
    still = {i: transform_points(preds[i], invert_affine(clip.motions[i])) for i in found}
    steps = [np.linalg.norm(still[i] - still[i - 1], axis=-1).mean() / clip.iod for i in found if i - 1 in still]
    return {"frames": len(preds), "lost": len(preds) - len(found), "nme_sum": float(errs.sum()),
            "nme_n": len(found), "jitter_sum": float(np.sum(steps)), "jitter_n": len(steps)}


@dataclass(frozen=True)
class Row:
    """A pipeline of the benchmark: a mode, its detector name and (for tracking) its settings."""

    label: str
    mode: str  # detect | track
    detector: str
    settings: TrackerSettings = field(default_factory=TrackerSettings)


DETECTORS = ("yunet", "dlib")  # per-frame rows for each; the first one tracks


def default_rows(detectors: Sequence[str] = DETECTORS, one_euro: OneEuroSettings | None = None,
                 redetect_every: int | None = None) -> list[Row]:
    """Per-frame detection with each detector, then tracking and tracking + smoothing (first detector)."""
    base = TrackerSettings() if redetect_every is None else TrackerSettings(redetect_every=redetect_every)
    smooth = base if one_euro is None else TrackerSettings(redetect_every=base.redetect_every, one_euro=one_euro)
    rows = [Row(f"per-frame detection ({d})", "detect", d) for d in detectors]
    rows.append(Row("tracking", "track", detectors[0], TrackerSettings(redetect_every=base.redetect_every,
                                                                      smooth=False)))
    rows.append(Row("tracking + smoothing", "track", detectors[0], smooth))
    return rows


def run_video_benchmark(model: str, samples: Sequence[FaceSample], rows: Sequence[Row],
                        spec: ClipSpec = ClipSpec(), log=None) -> dict:
    """Every row on every clip (rows interleaved clip by clip); per-clip and overall figures."""
    runtimes = {d: LandmarkRuntime.load(model, detector=d) for d in dict.fromkeys(r.detector for r in rows)}
    totals = {r.label: {"frames": 0, "lost": 0, "nme_sum": 0.0, "nme_n": 0, "jitter_sum": 0.0, "jitter_n": 0,
                        "detector_calls": 0, "seconds": 0.0} for r in rows}
    clips = []
    for k, sample in enumerate(samples):
        clip = make_clip(sample, spec)
        per = {}
        for r in rows:
            res = run_pipeline(runtimes[r.detector], clip, r.mode, r.settings)
            for key in totals[r.label]:
                totals[r.label][key] += res[key]
            per[r.label] = _summary(res)
        clips.append({"clip": clip.name, "size": list(clip.frames[0].shape[1::-1]), "iod": round(clip.iod, 2),
                      "rows": per})
        if log is not None:
            log(f"clip {k + 1}/{len(samples)} {clip.name}: " +
                ", ".join(f"{lab} jitter {v['jitter_pct']:.2f}" for lab, v in per.items()))
    overall = [{"row": r.label, "mode": r.mode, "detector": r.detector,
                "settings": asdict(r.settings) if r.mode == "track" else None} | _summary(totals[r.label])
               for r in rows]
    return {"spec": asdict(spec), "clips": clips, "overall": overall}


def _summary(t: dict) -> dict:
    return {"nme_pct": 100 * t["nme_sum"] / max(t["nme_n"], 1),
            "jitter_pct": 100 * t["jitter_sum"] / max(t["jitter_n"], 1),
            "detector_per_frame": t["detector_calls"] / max(t["frames"], 1), "lost_frames": t["lost"],
            "frames": t["frames"], "fps": t["frames"] / max(t["seconds"], 1e-9)}


def format_table(result: dict) -> str:
    lines = ["| pipeline | NME % | jitter % IOD | detector calls/frame | lost frames | frames/s |",
             "|---|---|---|---|---|---|"]
    for r in result["overall"]:
        lines.append(f"| {r['row']} | {r['nme_pct']:.3f} | {r['jitter_pct']:.3f} | {r['detector_per_frame']:.3f} | "
                     f"{r['lost_frames']}/{r['frames']} | {r['fps']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str | Path) -> None:
    """Jitter vs NME per pipeline (marker area ~ frames/s), and per-clip jitter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for r in result["overall"]:
        ax.scatter(r["jitter_pct"], r["nme_pct"], s=20 + 3 * r["fps"], alpha=0.7)
        ax.annotate(f"{r['row']}\n{r['fps']:.0f} fps, det {r['detector_per_frame']:.2f}/frame",
                    (r["jitter_pct"], r["nme_pct"]), fontsize=7, xytext=(5, 5), textcoords="offset points")
    ax.set_xlabel("jitter (% IOD per frame, known motion removed)")
    ax.set_ylabel("NME (% IOD) vs moved ground truth")
    ax.set_xlim(0, 1.6 * max(r["jitter_pct"] for r in result["overall"]))
    ax.grid(alpha=0.3)
    labels = [r["row"] for r in result["overall"]]
    x = np.arange(len(result["clips"]))
    width = 0.8 / len(labels)
    for j, lab in enumerate(labels):
        bx.bar(x + j * width, [c["rows"][lab]["jitter_pct"] for c in result["clips"]], width, label=lab)
    bx.set_xticks(x + 0.4 - width / 2, [str(i + 1) for i in x], fontsize=7)
    bx.set_xlabel("clip")
    bx.set_ylabel("jitter (% IOD)")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


__all__ = ["Clip", "ClipSpec", "Row", "VideoBench", "default_rows", "format_table", "make_clip", "plot", "run_pipeline",
           "run_video_benchmark", "run_video_command", "score"]


@dataclass(frozen=True)
class VideoBench:
    """What ``chs-bench video`` runs: ``clips`` stills spread evenly over ``data``, each a ``spec`` clip."""

    data: str
    model: str = "default"
    clips: int = 20
    spec: ClipSpec = field(default_factory=ClipSpec)
    detectors: tuple[str, ...] = DETECTORS

    @classmethod
    def from_options(cls, data: str, model: str, clips: int | None, frames: int | None,
                     detectors: Sequence[str]) -> VideoBench:
        from chs.runtime.detector import DETECTOR_NAMES
        from chs.runtime.errors import ChsError
        from chs.runtime.options import whole_number

        if clips is not None:
            whole_number(clips, "--clips", 1)
        if frames is not None:
            whole_number(frames, "--frames", 2)
        for d in detectors:
            if d not in DETECTOR_NAMES and not d.endswith(".onnx"):
                raise ChsError(f"unknown detector '{d}' (yunet, dlib, or a YuNet .onnx file)")
        kw: dict = {"data": data, "model": model, "detectors": tuple(detectors)}
        if clips is not None:
            kw["clips"] = clips
        if frames is not None:
            kw["spec"] = ClipSpec(frames=frames)
        return cls(**kw)


def run_video_command(bench: VideoBench, out: str | None, command: str, log=None) -> dict:
    """The benchmark, its table, and (with ``out``) the files: video.json, video.md, jitter_vs_nme.png,
    machine.json, command.txt."""
    import json

    from chs.benchmarks.machine import machine_info, machine_line
    from chs.runtime.datasets import load_dataset
    from chs.runtime.errors import ChsError

    samples = load_dataset(bench.data)
    if not samples:
        raise ChsError(f"no annotated images in {bench.data}")
    step = max(1, len(samples) // bench.clips)
    chosen = samples[::step][: bench.clips]
    result = run_video_benchmark(bench.model, chosen, default_rows(bench.detectors), bench.spec, log=log)
    info = machine_info()
    info["load_avg_1m_after"] = round(__import__("os").getloadavg()[0], 2)
    result.update(data=bench.data, model=bench.model, machine=info, command=command)
    result["table"] = table = format_table(result)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "video.json").write_text(json.dumps({k: v for k, v in result.items() if k != "table"},
                                                      indent=1, default=str) + "\n")
        (folder / "video.md").write_text(f"{machine_line(info)}\n\n{table}")
        (folder / "command.txt").write_text(command + "\n")
        (folder / "machine.json").write_text(json.dumps(info, indent=1) + "\n")
        plot(result, folder / "jitter_vs_nme.png")
    return result

"""Video tracking and smoothing with the bundled model and detector: one stable id per face, the detector
called only when needed, faces leaving and re-entering, several faces, changing frame sizes, no faces, and
the smoother's promises (no lag on pure head motion, less jitter)."""

from __future__ import annotations

import numpy as np
import pytest
from group_photo import group_photo

from chs.benchmarks.video import ClipSpec, make_clip, score
from chs.runtime.datasets import load_dataset
from chs.runtime.errors import ChsError
from chs.runtime.geometry import box_from_landmarks
from chs.runtime.landmarks import LandmarkRuntime
from chs.runtime.metrics import nme
from chs.runtime.smoothing import LandmarkSmoother, OneEuroFilter, OneEuroSettings, fit_similarity
from chs.runtime.tracking import TrackerSettings

SPEC = ClipSpec(frames=24, fps=30.0)


@pytest.fixture(scope="module")
def rt() -> LandmarkRuntime:
    return LandmarkRuntime.load("default", providers="cpu")


@pytest.fixture(scope="module")
def clip(fixtures_dir):
    takeo = [s for s in load_dataset(fixtures_dir / "pts") if s.image_path.stem == "takeo"][0]
    return make_clip(takeo, SPEC)


def test_one_face_one_id_few_detector_calls(rt, clip):
    tracker = rt.tracker(clip.fps, TrackerSettings(redetect_every=30))
    out = [tracker.update(f) for f in clip.frames]
    assert all(len(faces) == 1 for faces in out)
    assert {faces[0].track_id for faces in out} == {0}
    assert tracker.detector_calls == 1 and tracker.frames == SPEC.frames  # the first frame only
    errs = nme(np.stack([f[0].landmarks for f in out]), clip.truth, "68")
    assert errs.mean() < 0.08, errs.mean()
    assert out[3][0].to_dict()["track_id"] == 0


def test_smoothing_lowers_jitter_without_losing_accuracy(rt, clip):
    results = {}
    for smooth in (False, True):
        preds = [f[0].landmarks for f in rt.track(clip.frames, clip.fps, TrackerSettings(smooth=smooth))]
        results[smooth] = score(clip, preds, "68")
    raw, smoothed = results[False], results[True]
    assert smoothed["jitter_sum"] < 0.8 * raw["jitter_sum"]
    assert smoothed["nme_sum"] < raw["nme_sum"] * 1.03


def test_face_leaves_and_reenters(rt, clip):
    gray = np.full_like(clip.frames[0], 127)
    frames = clip.frames[:6] + [gray] * 4 + clip.frames[6:12]
    tracker = rt.tracker(clip.fps)
    out = [tracker.update(f) for f in frames]
    assert [len(f) for f in out] == [1] * 6 + [0] * 4 + [1] * 6
    assert out[0][0].track_id == out[5][0].track_id == 0
    assert out[10][0].track_id == out[15][0].track_id == 1  # a new track after the face came back
    assert tracker.detector_calls == 1 + 4 + 1  # first frame, every empty frame, the re-entry


def test_face_moving_out_of_the_frame_ends_its_track(rt, clip):
    frame = clip.frames[0]
    h, w = frame.shape[:2]
    tracker = rt.tracker(clip.fps)
    seen = []
    for dx in range(0, w + 1, max(1, w // 8)):  # slide the picture out to the right
        shifted = np.full_like(frame, 127)
        shifted[:, dx:] = frame[:, : w - dx]
        seen.append(len(tracker.update(shifted)))
    assert seen[0] == 1 and seen[-1] == 0


def test_several_faces_keep_their_ids(rt):
    img, truth = group_photo()
    tracker = rt.tracker(25.0, TrackerSettings(redetect_every=3))
    frames = [tracker.update(np.roll(img, k, axis=1)) for k in range(7)]  # a slow pan
    ids = [sorted(f.track_id for f in faces) for faces in frames]
    assert len(ids[0]) >= 3 and all(i == ids[0] for i in ids)  # same faces, same ids, no duplicates
    assert tracker.detector_calls == 3  # frames 0, 3 and 6
    first = {f.track_id: f.landmarks[:, 0].mean() for f in frames[0]}
    last = {f.track_id: f.landmarks[:, 0].mean() for f in frames[-1]}
    shifts = [last[k] - first[k] for k in first]
    assert all(4 < d < 8 for d in shifts), shifts  # every track followed its own face by the 6 px pan


def test_no_faces_and_changing_frame_sizes(rt, clip):
    tracker = rt.tracker(30.0)
    assert [tracker.update(np.full((90, 120, 3), v, np.uint8)) for v in (0, 128, 255)] == [[], [], []]
    assert tracker.detector_calls == 3
    big = clip.frames[0]
    small = np.ascontiguousarray(big[: big.shape[0] // 2, : big.shape[1] // 2])
    tracker = rt.tracker(30.0)
    for frame in (big, small, big):
        faces = tracker.update(frame)
        for f in faces:
            assert np.isfinite(f.landmarks).all()
    with pytest.raises(ChsError, match="uint8"):
        tracker.update(np.zeros((10, 10, 3), np.float32))


def test_given_boxes_are_answered_as_given_and_keep_their_track(rt, clip):
    """Boxes the caller gives for a frame replace following and detecting there: each answered in order, exactly as
    ``predict`` answers it (smoothing off), on the track it overlaps; frames without boxes follow the face."""
    boxes = [box_from_landmarks(t) for t in clip.truth]
    tracker = rt.tracker(clip.fps, TrackerSettings(smooth=False))
    out = [tracker.update(f, [b]) for f, b in zip(clip.frames, boxes, strict=True)]
    for frame, b, faces in zip(clip.frames, boxes, out, strict=True):
        (face,) = faces
        np.testing.assert_array_equal(face.box, b)
        np.testing.assert_array_equal(face.landmarks, rt.predict(frame, [b])[0].landmarks)
    assert {f[0].track_id for f in out} == {0} and tracker.detector_calls == 0
    # boxes on frames 0 and 12 only: the frames between follow the landmarks, no detector call
    tracker = rt.tracker(clip.fps, TrackerSettings(smooth=False))
    out = [tracker.update(f, [boxes[i]] if i in (0, 12) else None) for i, f in enumerate(clip.frames)]
    assert [len(f) for f in out] == [1] * SPEC.frames and {f[0].track_id for f in out} == {0}
    assert tracker.detector_calls == 0
    # a second box starts a second track; an empty list is a frame without faces, as given
    frame, b = clip.frames[0], boxes[0]
    other = b + [b[2] - b[0] + 5, 0, b[2] - b[0] + 5, 0]
    tracker = rt.tracker(clip.fps)
    tracker.update(frame, [b])
    two = tracker.update(frame, [other, b])
    assert [f.track_id for f in two] == [1, 0]
    np.testing.assert_array_equal(two[0].box, other)
    assert tracker.update(frame, np.zeros((0, 4))) == [] and tracker.detector_calls == 0
    with pytest.raises(ChsError, match="box"):
        tracker.update(frame, [[0, 0, float("nan"), 10]])


def test_given_boxes_are_smoothed_like_tracked_ones(rt, clip):
    boxes = [[box_from_landmarks(t)] for t in clip.truth]
    results = {}
    for smooth in (False, True):
        tracker = rt.tracker(clip.fps, TrackerSettings(smooth=smooth))
        results[smooth] = score(clip, [tracker.update(f, b)[0].landmarks for f, b in zip(clip.frames, boxes,
                                                                                          strict=True)], "68")
    raw, smoothed = results[False], results[True]
    assert smoothed["jitter_sum"] < 0.8 * raw["jitter_sum"], (smoothed, raw)
    assert smoothed["nme_sum"] < raw["nme_sum"] * 1.03


def test_tracker_settings_are_checked():
    with pytest.raises(ChsError, match="redetect_every"):
        TrackerSettings(redetect_every=-1)
    with pytest.raises(ChsError, match="min_cutoff"):
        OneEuroSettings(min_cutoff=0)
    with pytest.raises(ChsError, match="mode"):
        OneEuroSettings(mode="kalman")


@pytest.mark.parametrize("make, message", [
    (lambda: TrackerSettings(max_faces=float("nan")), "max_faces must be a whole number, got nan"),
    (lambda: TrackerSettings(max_faces=0), "max_faces must be >= 1, got 0"),
    (lambda: TrackerSettings(redetect_every="3"), "redetect_every must be a whole number, got '3'"),
    (lambda: TrackerSettings(redetect_every=float("nan")), "redetect_every must be a whole number, got nan"),
    (lambda: TrackerSettings(min_score=float("nan")), "min_score must be a finite number, got nan"),
    (lambda: TrackerSettings(min_score=float("inf")), "min_score must be a finite number, got inf"),
    (lambda: TrackerSettings(match_iou="0.3"), "match_iou must be a finite number, got '0.3'"),
    (lambda: TrackerSettings(one_euro={"beta": 1}), "one_euro must be a OneEuroSettings, got dict"),
    (lambda: OneEuroSettings(beta=float("nan")), "beta must be a finite number, got nan"),
    (lambda: OneEuroSettings(pose_min_cutoff=0), "pose_min_cutoff must be > 0"),
])
def test_tracker_settings_refuse_wrong_types_and_non_finite_values(make, message):
    with pytest.raises(ChsError) as e:
        make()
    assert str(e.value) == message or str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("fps, message", [
    (float("inf"), "fps must be a finite number, got inf"), (float("nan"), "fps must be a finite number, got nan"),
    ("30", "fps must be a finite number, got '30'"), (0, "fps must be > 0, got 0"), (-5.0, "fps must be > 0, got -5.0"),
])
def test_tracker_fps_is_checked(rt, fps, message):
    with pytest.raises(ChsError) as e:
        rt.tracker(fps=fps)
    assert str(e.value) == message
    with pytest.raises(ChsError, match="settings must be a TrackerSettings, got dict"):
        rt.tracker(settings={"smooth": False})


# ------------------------------------------------------------------------------------------ smoothing
def _shape(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(68, 2)) * 20 + 100


def test_fit_similarity_recovers_a_known_motion():
    pts = _shape()
    a = 0.3
    m = np.array([[1.2 * np.cos(a), -1.2 * np.sin(a), 7.0], [1.2 * np.sin(a), 1.2 * np.cos(a), -4.0]])
    np.testing.assert_allclose(fit_similarity(pts, pts @ m[:, :2].T + m[:, 2]), m, atol=1e-9)


def test_aligned_smoother_has_no_lag_on_pure_head_motion_and_filters_noise():
    shape = _shape()
    rng = np.random.default_rng(1)
    exact = LandmarkSmoother(OneEuroSettings(pose_min_cutoff=None))  # the shape filtered, the pose not at all
    aligned, pixels = LandmarkSmoother(), LandmarkSmoother(OneEuroSettings(mode="pixels"))
    lag_exact = lag_aligned = lag_pixels = noise_in = noise_out = 0.0
    for t in range(60):
        a, s = 0.02 * t, 1 + 0.01 * t
        m = np.array([[s * np.cos(a), -s * np.sin(a), 3.0 * t], [s * np.sin(a), s * np.cos(a), 1.5 * t]])
        truth = shape @ m[:, :2].T + m[:, 2]
        lag_exact = max(lag_exact, np.abs(exact(truth, t / 30) - truth).max())
        lag_aligned = max(lag_aligned, np.abs(aligned(truth, t / 30) - truth).max())
        lag_pixels = max(lag_pixels, np.abs(pixels(truth, t / 30) - truth).max())
    assert lag_exact < 1e-6  # head motion passes through the aligned filter untouched
    assert lag_aligned < 0.2 * lag_pixels, (lag_aligned, lag_pixels)  # the default's light pose filter: small lag
    still = LandmarkSmoother()
    for t in range(60):
        noisy = shape + rng.normal(scale=1.0, size=shape.shape)
        out = still(noisy, t / 30)
        if t > 10:
            noise_in += np.abs(noisy - shape).mean()
            noise_out += np.abs(out - shape).mean()
    assert noise_out < 0.5 * noise_in


def test_one_euro_constant_and_time_order():
    f = OneEuroFilter()
    x = np.array([[1.0, 2.0]])
    for t in range(5):
        np.testing.assert_allclose(f(x, t / 10), x)
    with pytest.raises(ChsError, match="increase"):
        f(x, 0.0)


def test_video_reader_reads_the_file_again_when_iterated_again(tmp_path):
    """``for frame in video`` twice: the second pass gets every frame again, not none."""
    import cv2

    from chs.runtime.draw import VideoReader

    path = tmp_path / "c.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (48, 32))
    for i in range(4):
        writer.write(np.full((32, 48, 3), 40 * i, np.uint8))
    writer.release()
    video = VideoReader(path)
    first, second = list(video), list(video)
    assert len(first) == len(second) == 4
    assert [int(f.mean()) for f in second] == [int(f.mean()) for f in first]
    video.close()
    assert len(list(video)) == 4


def test_annotate_video_tracks_like_runtime_track_and_writes_every_frame(rt, clip, tmp_path):
    """``annotate_video`` (the Python face of ``chs-align clip.mp4 --out``): the same faces as ``rt.track`` over the
    same decoded frames, one track, the annotated file complete with every frame; given boxes answered as given."""
    import cv2

    from chs.runtime.draw import VideoReader, annotate_video

    src, dst = tmp_path / "clip.avi", tmp_path / "out" / "clip.mp4"
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"MJPG"), clip.fps, clip.frames[0].shape[1::-1])
    for frame in clip.frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    frames = list(VideoReader(src))
    expected = list(rt.track(frames, fps=clip.fps))
    got = list(annotate_video(rt, src, dst))
    assert [i for i, _ in got] == list(range(len(clip.frames)))
    assert all(len(faces) == 1 and faces[0].track_id == 0 for _, faces in got)
    np.testing.assert_allclose(np.stack([f[0].landmarks for _, f in got]), np.stack([f[0].landmarks for f in expected]))
    errs = nme(np.stack([f[0].landmarks for _, f in got]), clip.truth, "68")
    assert errs.mean() < 0.08, errs.mean()
    written = VideoReader(dst)
    assert written.frame_count == len(clip.frames) and (written.width, written.height) == clip.frames[0].shape[1::-1]
    written.close()

    box = box_from_landmarks(clip.truth[5])
    given = list(annotate_video(rt, src, None, boxes=lambda i: [box] if i == 5 else None,
                                tracker=rt.tracker(clip.fps, TrackerSettings(smooth=False))))
    np.testing.assert_allclose(given[5][1][0].box, box)
    assert {faces[0].track_id for _, faces in given} == {0}

"""Face detector: box mapping, miss-rate and fit arithmetic on fakes, the missing-extra message, and the
dlib HOG default on the bundled photo and a slice of ytf68/val when dlib is installed."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from chs.runtime.datasets import FaceSample
from chs.runtime.detector import (
    DLIB_HOG_BOX_MAP,
    IDENTITY_MAP,
    NO_DETECTOR,
    BoxMap,
    FaceDetector,
    default_detector,
    dlib_available,
    landmark_boxes,
    make_detector,
)
from chs.runtime.detector_eval import box_iou, detector_miss_rate, fit_box_map
from chs.runtime.errors import ChsError
from chs.runtime.geometry import box_from_landmarks
from chs.runtime.imageio import read_image

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "runtime" / "assets" / "demo"
needs_dlib = pytest.mark.skipif(not dlib_available(), reason="dlib not installed (pip install chs[detect])")


def test_box_map_apply():
    b = np.array([[10.0, 20.0, 50.0, 100.0]])  # w 40, h 80, centre (30, 60)
    np.testing.assert_allclose(IDENTITY_MAP.apply(b), b)
    out = BoxMap(dx=0.25, dy=-0.1, sw=0.5, sh=1.5).apply(b)
    np.testing.assert_allclose(out, [[30.0, -8.0, 50.0, 112.0]])  # centre (40, 52), size 20 x 120
    assert BoxMap().apply(np.zeros((0, 4))).shape == (0, 4)


def test_box_iou():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    b = np.array([[5, 0, 15, 10]])
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150], [0.0]])


class _ScriptedDetector:
    """Returns pre-set raw boxes per image (keyed by the image's first pixel value)."""

    name = "scripted"

    def __init__(self, per_image: dict[int, list[list[float]]], box_map: BoxMap = IDENTITY_MAP):
        self.per_image = per_image
        self.box_map = box_map

    def detect(self, image):
        boxes = np.asarray(self.per_image[int(image[0, 0, 0])], dtype=np.float64).reshape(-1, 4)
        return boxes, np.ones(len(boxes))


def _sample(i: int, box: list[float]) -> FaceSample:
    x0, y0, x1, y1 = box
    lm = np.array([[x0, y0], [x1, y1], [(x0 + x1) / 2, (y0 + y1) / 2]])
    img = np.full((200, 200, 3), i, np.uint8)
    return FaceSample(image_path=None, landmarks=lm, scheme="custom", image=img)


def test_miss_rate_counts_misses_and_empty_images():
    gt = [[50, 50, 100, 100]] * 4
    samples = [_sample(i, g) for i, g in enumerate(gt)]
    det = _ScriptedDetector({
        0: [[52, 48, 102, 98]],  # hit
        1: [],  # no detection
        2: [[150, 150, 190, 190]],  # wrong place
        3: [[150, 150, 190, 190], [50, 50, 100, 100]],  # second box hits
    })
    assert isinstance(det, FaceDetector)
    res = detector_miss_rate(det, samples)
    assert res["n"] == 4 and res["misses"] == 2 and res["miss_rate"] == 0.5 and res["no_detection"] == 1
    assert res["detections_per_image"] == 1.0
    # the IoU is measured on the mapped box: a map that moves boxes far away turns hits into misses
    det.box_map = BoxMap(dx=3.0)
    assert detector_miss_rate(det, samples)["misses"] == 4
    assert detector_miss_rate(det, samples)["miss_rate_raw"] == 0.5
    with pytest.raises(ChsError, match="no samples"):
        detector_miss_rate(det, [])


def test_fit_box_map_recovers_a_known_map():
    truth = BoxMap(dx=0.05, dy=0.12, sw=0.9, sh=0.85)
    rng = np.random.default_rng(0)
    per_image, samples = {}, []
    for i in range(20):
        cx, cy, s = rng.uniform(60, 140), rng.uniform(60, 140), rng.uniform(30, 60)
        det = np.array([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2])
        gt = truth.apply(det)[0]
        per_image[i] = [det.tolist(), [0, 0, 5, 5]]  # plus a stray box that must not be matched
        samples.append(_sample(i, gt.tolist()))
    fitted, stats = fit_box_map(_ScriptedDetector(per_image), samples)
    np.testing.assert_allclose([fitted.dx, fitted.dy, fitted.sw, fitted.sh], [0.05, 0.12, 0.9, 0.85], atol=1e-4)
    assert stats["pairs"] == 20 and stats["median_iou_mapped"] > 0.999


def test_landmark_boxes_uses_the_detector_map():
    det = _ScriptedDetector({0: [[10, 20, 50, 100]]}, BoxMap(dx=0.25, dy=-0.1, sw=0.5, sh=1.5))
    boxes, scores = landmark_boxes(det, np.zeros((10, 10, 3), np.uint8))
    np.testing.assert_allclose(boxes, [[30.0, -8.0, 50.0, 112.0]])
    np.testing.assert_allclose(scores, [1.0])


def test_missing_dlib_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)
    assert not dlib_available()
    with pytest.raises(ChsError) as e:
        make_detector("dlib")
    assert str(e.value) == NO_DETECTOR and "\n" not in str(e.value)
    assert default_detector().name == "yunet"  # the default needs no extra
    with pytest.raises(ChsError, match="unknown detector 'hog'"):
        make_detector("hog")


def test_stored_demo_box_is_sane():
    box = json.loads((DEMO_DIR / "astronaut_box.json").read_text())["astronaut.png"][0]
    x0, y0, x1, y1 = box
    assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512 and 60 < x1 - x0 < 140 and 60 < y1 - y0 < 140


# ------------------------------------------------------------------------------------------ dlib HOG
@needs_dlib
def test_dlib_finds_the_astronaut_and_is_thread_safe():
    det = make_detector("dlib")
    img = read_image(DEMO_DIR / "astronaut.png")
    boxes, scores = landmark_boxes(det, img)
    assert len(boxes) >= 1 and np.all(np.diff(scores) <= 0)  # best first
    hand = json.loads((DEMO_DIR / "astronaut_box.json").read_text())["astronaut.png"]
    assert box_iou(boxes[:1], hand)[0, 0] > 0.6
    ref_boxes, ref_scores = det.detect(img)
    with ThreadPoolExecutor(4) as pool:
        for b, s in pool.map(lambda _: det.detect(img), range(8)):
            np.testing.assert_array_equal(b, ref_boxes)
            np.testing.assert_array_equal(s, ref_scores)
    with pytest.raises(ChsError, match="RGB uint8"):
        det.detect(img.astype(np.float32))


@needs_dlib
def test_dlib_fallback_threshold():
    """An image with no face above the threshold still yields its single best weak detection, unless the
    fallback is off."""
    from chs.runtime.detector import DlibHogDetector

    noise = np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    strict = DlibHogDetector(fallback_threshold=None)
    assert len(strict.detect(noise)[0]) == 0
    assert len(DlibHogDetector(fallback_threshold=-5.0).detect(noise)[0]) <= 1


@needs_dlib
def test_dlib_miss_rate_on_ytf68_val_slice(shared_data):
    from chs.runtime.datasets import load_dataset

    val = shared_data / "ytf68" / "val"
    if not val.is_dir():
        pytest.skip("ytf68/val not in the shared data")
    samples = load_dataset(val)[::10]  # 43 of the 429 images, ~1 s
    res = detector_miss_rate(make_detector("dlib"), samples)
    assert res["n"] == len(samples) and res["miss_rate"] <= 0.05 and res["median_best_iou"] > 0.65
    assert make_detector("dlib").box_map == DLIB_HOG_BOX_MAP


def test_gt_box_helper_matches_geometry():
    s = _sample(0, [50, 60, 90, 120])
    np.testing.assert_allclose(box_from_landmarks(s.landmarks), [50, 60, 90, 120])


def test_evaluate_with_detector_counts_misses_and_matches_gt_boxes(tiny_onnx, fixtures_dir):
    """A detector that returns the GT-landmark box for all faces but one: the miss is counted and the NME of
    the rest equals the GT-box evaluation of the same faces."""
    from chs.runtime.backends.ort import OrtRunner
    from chs.runtime.datasets import load_dataset
    from chs.runtime.detector_eval import evaluate_with_detector
    from chs.runtime.evaluate import evaluate_runner
    from chs.runtime.geometry import box_from_landmarks

    samples = load_dataset(fixtures_dir / "pts")
    missed = samples[0].image_path

    class Oracle:
        name = "oracle"

        def detect(self, image):
            s = next(s for s in samples if s.load_image().shape == image.shape
                     and np.array_equal(s.load_image(), image))
            if s.image_path == missed:
                return np.zeros((0, 4)), np.zeros(0)
            return box_from_landmarks(s.landmarks)[None], np.ones(1)

    runner = OrtRunner(tiny_onnx)
    res = evaluate_with_detector(runner, Oracle(), samples)
    ref = evaluate_runner(runner, samples[1:])
    assert res["n_images"] == len(samples) and res["misses"] == 1 and res["n"] == len(samples) - 1
    assert res["nme_iod"] == pytest.approx(ref["nme_iod"], abs=1e-12)


def test_detector_timing_reports_median_and_min_of_the_same_calls(monkeypatch):
    import chs.benchmarks.detectors as detectors

    class Stub:
        def __init__(self):
            self.calls = 0

        def detect(self, image):
            self.calls += 1
            return np.zeros((0, 4)), np.zeros(0)

    # each timed call reads the clock twice; call k of "a" lasts a[k] ms, of "b" b[k] ms (interleaved a, b, a, b)
    a, b = [5.0, 1.0, 9.0], [2.0, 8.0, 4.0]
    ticks, now = [], 0.0
    for da, db in zip(a, b, strict=True):
        for d in (da, db):
            ticks += [now, now + d / 1000]
            now += 1.0
    clock = iter(ticks)
    monkeypatch.setattr(detectors.time, "perf_counter", lambda: next(clock))
    dets = {"a": Stub(), "b": Stub()}
    timed = detectors.time_detectors(dets, np.zeros((8, 8, 3), np.uint8), repeats=3)
    assert [d.calls for d in dets.values()] == [4, 4]  # one warm-up + 3 timed calls each
    assert timed["a"] == pytest.approx({"median": 5.0, "min": 1.0})
    assert timed["b"] == pytest.approx({"median": 4.0, "min": 2.0})

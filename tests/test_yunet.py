"""YuNet, the bundled default detector: decoding equals OpenCV's FaceDetectorYN, every face of a group photo
(one under 40 px) is found, NMS arithmetic, thread safety, bad detector files, and the shipped files."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from group_photo import group_photo

from chs.runtime.detector import IDENTITY_MAP, landmark_boxes
from chs.runtime.detector_eval import box_iou, detector_miss_rate
from chs.runtime.errors import ChsError
from chs.runtime.geometry import box_from_landmarks
from chs.runtime.imageio import read_image
from chs.runtime.yunet import YUNET_BOX_MAP, YUNET_MODEL, YuNetDetector, nms

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "runtime" / "assets" / "demo"


@pytest.fixture(scope="module")
def det() -> YuNetDetector:
    return YuNetDetector(providers="cpu")


def test_decoding_matches_opencv_face_detector_yn(det):
    """OpenCV's own YuNet decoder + NMS on the same file and image: same boxes, keypoints and scores."""
    img = read_image(DEMO_DIR / "astronaut.png")
    boxes, scores, kps = det.detect_full(img)
    h, w = img.shape[:2]
    ref = cv2.FaceDetectorYN.create(str(YUNET_MODEL), "", (w, h), det.score_threshold, det.nms_threshold)
    _, faces = ref.detect(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert faces is not None and len(faces) == len(boxes) >= 1
    ref_boxes = np.concatenate([faces[:, :2], faces[:, :2] + faces[:, 2:4]], axis=1)
    np.testing.assert_allclose(boxes, ref_boxes, atol=0.05)
    np.testing.assert_allclose(kps.reshape(len(kps), 10), faces[:, 4:14], atol=0.05)
    np.testing.assert_allclose(scores, faces[:, 14], atol=1e-4)


def test_astronaut_box_maps_onto_the_hand_box(det):
    img = read_image(DEMO_DIR / "astronaut.png")
    boxes, scores = landmark_boxes(det, img)
    hand = json.loads((DEMO_DIR / "astronaut_box.json").read_text())["astronaut.png"]
    assert scores[0] > 0.9 and box_iou(boxes[:1], hand)[0, 0] > 0.7
    _, _, kps = det.detect_full(img)
    right_eye, left_eye = kps[0, 0], kps[0, 1]
    assert right_eye[0] < left_eye[0] and abs(right_eye[1] - left_eye[1]) < 5  # image-left eye first, level


def test_group_photo_every_face_including_one_under_40px():
    img, faces = group_photo()
    gt = np.array([box_from_landmarks(f) for f in faces])
    assert gt[-1, 2] - gt[-1, 0] < 40
    found, scores = landmark_boxes(YuNetDetector(score_threshold=0.5, fallback_threshold=None), img)
    assert len(found) == len(gt) and np.all(np.diff(scores) <= 0)
    iou = box_iou(found, gt)
    assert (iou.max(axis=0) > 0.6).all(), iou.round(2)  # each face has its own well-placed box
    assert len(set(iou.argmax(axis=0).tolist())) == len(gt)


def test_large_images_are_downscaled_and_boxes_come_back_in_image_pixels():
    img, _ = group_photo()
    big = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)  # 1280 x 480 -> run at 640 x 240
    det = YuNetDetector(score_threshold=0.5, fallback_threshold=None)
    assert det.max_side == 640
    small_boxes, _ = det.detect(img)
    big_boxes, _ = det.detect(big)
    assert len(big_boxes) == len(small_boxes)
    assert box_iou(big_boxes / 2, small_boxes).max(axis=1).min() > 0.9  # same faces, in the big image's pixels
    full, _ = YuNetDetector(score_threshold=0.5, fallback_threshold=None, max_side=None).detect(big)
    assert box_iou(full, big_boxes).max(axis=1).min() > 0.7  # full size finds the same faces


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 9.0]])
    scores = np.array([0.8, 0.9, 0.5, 0.1])
    assert nms(boxes, scores, 0.3).tolist() == [1, 2]
    assert nms(boxes, scores, 0.95).tolist() == [1, 0, 2, 3]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.3).tolist() == []


def test_no_face_fallback_tiny_and_odd_sizes(det):
    noise = cv2.resize(np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8), (160, 120))
    strict = YuNetDetector(fallback_threshold=None)
    assert strict.detect(noise)[0].shape == (0, 4)
    assert len(YuNetDetector(fallback_threshold=0.0).detect(noise)[0]) == 1  # the single best weak box
    for h, w in ((7, 9), (33, 65), (241, 97)):  # not multiples of 32, smaller than the smallest stride
        b, s = strict.detect(np.full((h, w, 3), 128, np.uint8))
        assert b.shape[1:] == (4,) and len(b) == len(s)
    with pytest.raises(ChsError, match="RGB uint8"):
        det.detect(np.zeros((10, 10), np.uint8))


def test_thread_safe_bit_identical(det):
    img, _ = group_photo()
    ref = det.detect(img)
    with ThreadPoolExecutor(4) as pool:
        for b, s in pool.map(lambda _: det.detect(img), range(8)):
            np.testing.assert_array_equal(b, ref[0])
            np.testing.assert_array_equal(s, ref[1])


def test_missing_and_foreign_detector_files(tmp_path, foreign_onnx):
    with pytest.raises(ChsError, match="face detector model not found"):
        YuNetDetector(tmp_path / "nope.onnx")
    with pytest.raises(ChsError, match="is not a YuNet face detector"):
        YuNetDetector(foreign_onnx)
    (tmp_path / "cut.onnx").write_bytes(YUNET_MODEL.read_bytes()[:5000])
    with pytest.raises(ChsError, match="cannot load face detector") as e:
        YuNetDetector(tmp_path / "cut.onnx")
    assert "\n" not in str(e.value)


def test_shipped_files_and_notice():
    assets = YUNET_MODEL.parent
    assert YUNET_MODEL.is_file()
    assert "Apache License" in (assets / "LICENSE").read_text()
    notice = (assets / "NOTICE").read_text()
    assert "libfacedetection.train" in notice and "Apache" in notice
    assert YUNET_MODEL.stat().st_size < 1_000_000
    assert YuNetDetector().box_map == YUNET_BOX_MAP != IDENTITY_MAP


def test_miss_rate_on_ytf68_val_slice(shared_data):
    from chs.runtime.datasets import load_dataset

    val = shared_data / "ytf68" / "val"
    if not val.is_dir():
        pytest.skip("ytf68/val not in the shared data")
    samples = load_dataset(val)[::10]
    res = detector_miss_rate(YuNetDetector(), samples)
    assert res["n"] == len(samples) and res["misses"] == 0 and res["median_best_iou"] > 0.8

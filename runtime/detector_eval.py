"""How well a face detector serves the landmark model: miss rate against GT-landmark boxes, and the fit
of the detector->GT-landmark :class:`~chs.runtime.detector.BoxMap`.

A detector that misses a face loses the face entirely, and one whose (mapped) box is off shifts the crop
the model sees; both are measured here against the same GT-landmark boxes the model was trained on.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import numpy as np

from chs.runtime.backends.base import DEFAULT_BATCH, Runner
from chs.runtime.datasets import FaceSample
from chs.runtime.detector import IDENTITY_MAP, MATCH_IOU, BoxMap, FaceDetector, box_iou
from chs.runtime.errors import ChsError
from chs.runtime.evaluate import dataset_scheme, predict_samples
from chs.runtime.metrics import nme, primary_normaliser, summarize
from chs.runtime.schemes import get_scheme


def _detections(detector: FaceDetector, samples: Sequence[FaceSample]):
    """(sample, image, GT box, raw detector boxes) per readable sample; unreadable images are skipped with a
    warning naming the file."""
    for s in samples:
        try:
            img = s.load_image()
        except ChsError as e:
            warnings.warn(f"skipping {s.image_path}: {e}", stacklevel=3)
            continue
        boxes, _ = detector.detect(img)
        yield s, img, s.crop_box(), np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def detector_miss_rate(detector: FaceDetector, samples: Sequence[FaceSample], iou_threshold: float = MATCH_IOU) -> dict:
    """Fraction of faces the detector misses: no detection, or none whose IoU with the GT-landmark box is
    at least ``iou_threshold``.

    IoU is taken on the box the runtime crops from (the detector box after ``detector.box_map``);
    ``miss_rate_raw`` uses the detector's own box. Also reports how many images got no detection at all,
    detections per image and the median best IoU.
    """
    if not samples:
        raise ChsError("no samples to evaluate the detector on")
    box_map = getattr(detector, "box_map", IDENTITY_MAP)
    n = misses = misses_raw = no_det = n_det = 0
    best_ious: list[float] = []
    t0 = time.perf_counter()
    for _, _, gt, raw in _detections(detector, samples):
        n += 1
        n_det += len(raw)
        if len(raw) == 0:
            no_det += 1
            misses += 1
            misses_raw += 1
            best_ious.append(0.0)
            continue
        best = float(box_iou(box_map.apply(raw), gt).max())
        best_ious.append(best)
        misses += best < iou_threshold
        misses_raw += float(box_iou(raw, gt).max()) < iou_threshold
    if n == 0:
        raise ChsError("none of the samples' images could be read")
    return {"n": n, "misses": misses, "miss_rate": misses / n, "miss_rate_raw": misses_raw / n, "no_detection": no_det,
            "detections_per_image": n_det / n, "median_best_iou": float(np.median(best_ious)),
            "iou_threshold": iou_threshold, "seconds_per_image": (time.perf_counter() - t0) / n,
            "detector": getattr(detector, "name", type(detector).__name__)}


def fit_box_map(detector: FaceDetector, samples: Sequence[FaceSample], min_iou: float = MATCH_IOU
                ) -> tuple[BoxMap, dict]:
    """Least-squares :class:`BoxMap` from the detector's boxes to GT-landmark boxes.

    Each image contributes its best-matching raw detection (IoU >= ``min_iou``). Offsets and scales are
    measured in detector-box units, so the fit is the mean of (gt centre - det centre) / det size and
    gt size / det size: the least-squares solution in the crop's own (scale-free) frame.
    """
    rows = []
    for _, _, gt, raw in _detections(detector, samples):
        if len(raw) == 0:
            continue
        ious = box_iou(raw, gt)[:, 0]
        k = int(ious.argmax())
        if ious[k] < min_iou:
            continue
        d = raw[k]
        w, h = d[2] - d[0], d[3] - d[1]
        rows.append([((gt[0] + gt[2]) - (d[0] + d[2])) / 2 / w, ((gt[1] + gt[3]) - (d[1] + d[3])) / 2 / h,
                     (gt[2] - gt[0]) / w, (gt[3] - gt[1]) / h, ious[k]])
    if len(rows) < 4:
        raise ChsError(f"only {len(rows)} matched detections: too few to fit a box map")
    r = np.asarray(rows)
    fitted = BoxMap(*(round(float(v), 4) for v in r[:, :4].mean(axis=0)))
    mapped_iou = []
    for _, _, gt, raw in _detections(detector, samples):
        if len(raw):
            ious = box_iou(raw, gt)[:, 0]
            k = int(ious.argmax())
            if ious[k] >= min_iou:
                mapped_iou.append(float(box_iou(fitted.apply(raw[k]), gt)[0, 0]))
    stats = {"pairs": len(r), "std": r[:, :4].std(axis=0).round(4).tolist(),
             "median_iou_raw": float(np.median(r[:, 4])), "median_iou_mapped": float(np.median(mapped_iou))}
    return fitted, stats


def match_detections(detector: FaceDetector, samples: Sequence[FaceSample],
                     iou_threshold: float = MATCH_IOU
                     ) -> tuple[int, list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(readable images, and per found face: image, mapped detector box, GT landmarks).

    Each face keeps the mapped detection that overlaps its GT-landmark box most; faces with no detection of
    IoU >= ``iou_threshold`` are misses and are left out, as a deployment would lose them.
    """
    box_map = getattr(detector, "box_map", IDENTITY_MAP)
    images, boxes, gts = [], [], []
    n = 0
    for s, img, gt, raw in _detections(detector, samples):
        n += 1
        if len(raw) == 0:
            continue
        found = box_map.apply(raw)
        ious = box_iou(found, gt)[:, 0]
        if ious.max() < iou_threshold:
            continue
        images.append(img)
        boxes.append(found[int(ious.argmax())])
        gts.append(s.landmarks)
    if n == 0:
        raise ChsError("none of the samples' images could be read")
    if not images:
        raise ChsError("the detector found none of the faces")
    return n, images, boxes, gts


def evaluate_with_detector(runner: Runner, detector: FaceDetector, samples: Sequence[FaceSample],
                           iou_threshold: float = MATCH_IOU, batch_size: int = DEFAULT_BATCH) -> dict:
    """Landmark metrics when the crop comes from the detector instead of the GT landmarks (misses counted
    and left out of the NME; see :func:`match_detections`)."""
    n, images, boxes, gts = match_detections(detector, samples, iou_threshold)
    pred = predict_samples(runner, images, boxes, batch_size)["landmarks"]
    scheme = dataset_scheme(samples, runner.meta.scheme) if samples else runner.meta.scheme
    if scheme != runner.meta.scheme:  # 5-point labels: the model's points reduced to 5
        pred = get_scheme(runner.meta.scheme).to_five(pred)
    gt = np.stack(gts)
    result = summarize(pred, gt, scheme, shift="own" if scheme == "5" else None)
    result.update(n_images=n, misses=n - len(images), miss_rate=(n - len(images)) / n,
                  detector=getattr(detector, "name", type(detector).__name__), boxes="detector",
                  ccr=runner.meta.ccr, scheme=scheme)
    if len(gt):  # what chs-eval --plot draws, as for ground-truth boxes
        result["per_sample_nme"] = nme(pred, gt, scheme, primary_normaliser(scheme))
    return result


__all__ = ["box_iou", "detector_miss_rate", "evaluate_with_detector", "fit_box_map", "match_detections"]

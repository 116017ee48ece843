"""YuNet, the bundled default face detector: ONNX Runtime for the network, numpy for decoding and NMS.

YuNet (Shiqi Yu et al., libfacedetection.train, Apache-2.0; see ``assets/yunet/NOTICE``) is a 76 k-parameter
anchor-free detector that finds faces from ~10 px up. The bundled file takes any input size that is a
multiple of 32, so an image is run at its own size (padded bottom/right) instead of being squeezed into a
fixed square: small faces in large frames survive. It runs through the same ONNX Runtime provider choice as
the landmark model (``pick_providers``), so it also runs on CUDA and builds into a TensorRT engine.
Images larger than ``max_side`` (640) are downscaled first: see the class doc for the measured trade-off.

Output (per face): the box, a score and 5 keypoints (right eye, left eye, nose tip, right and left mouth
corner; image-left first), all in image pixels. ``box_map`` turns the box into the landmark model's
crop convention (the box of the 68 landmarks); it was fitted on ytf68/train, see ``YUNET_BOX_MAP``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from chs.runtime.assets import ASSETS
from chs.runtime.detector import BoxMap, box_iou
from chs.runtime.errors import ChsError

YUNET_MODEL = ASSETS / "yunet" / "yunet_n_dynamic.onnx"
STRIDES = (8, 16, 32)
MIN_INPUT = 64  # images are upscaled so that their shorter side is at least this (tiny crops hold big faces)

# YuNet box (default settings) -> bounding box of the 68 ytf68 landmarks. Fitted by
# chs.runtime.detector_eval.fit_box_map(YuNetDetector(box_map=IDENTITY_MAP, fallback_threshold=None),
# load_dataset(".../ytf68/train")): all 2 977 images had a detection with IoU >= 0.3; each number is the
# mean over those pairs (std 0.035, 0.026, 0.064, 0.050: half of dlib HOG's). YuNet's box includes the
# forehead, so the landmark box sits 13 % of its height lower and is 24 % shorter. Median IoU with the
# GT-landmark box: mapped 0.88, raw 0.68 (dlib HOG: 0.75 mapped). Refit when the model file or the
# decoding changes (benchmarks/results/detector-ytf68/ holds the fit and the comparison with dlib).
YUNET_BOX_MAP = BoxMap(dx=0.0056, dy=0.1346, sw=1.0798, sh=0.7638)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[box_iou(boxes[i], boxes[rest])[0] <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def decode(outputs: dict[str, np.ndarray], height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """YuNet's 12 raw outputs for one padded input of ``height`` x ``width`` -> boxes (N, 4) [x0, y0, x1, y1],
    scores (N,) = sqrt(cls * obj) (the score OpenCV's FaceDetectorYN reports), keypoints (N, 5, 2)."""
    all_boxes, all_scores, all_kps = [], [], []
    for s in STRIDES:
        rows, cols = height // s, width // s
        ys, xs = np.mgrid[0:rows, 0:cols]
        prior = np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1).astype(np.float32) * s
        cls = np.clip(outputs[f"cls_{s}"][0, :, 0], 0.0, 1.0)
        obj = np.clip(outputs[f"obj_{s}"][0, :, 0], 0.0, 1.0)
        bbox = outputs[f"bbox_{s}"][0]
        kps = outputs[f"kps_{s}"][0].reshape(-1, 5, 2)
        centre = bbox[:, :2] * s + prior
        size = np.exp(bbox[:, 2:]) * s
        all_boxes.append(np.concatenate([centre - size / 2, centre + size / 2], axis=1))
        all_scores.append(np.sqrt(cls * obj))
        all_kps.append(kps * s + prior[:, None, :])
    return (np.concatenate(all_boxes).astype(np.float64), np.concatenate(all_scores).astype(np.float64),
            np.concatenate(all_kps).astype(np.float64))


class YuNetDetector:
    """The bundled YuNet face detector (ONNX Runtime; thread-safe: ``InferenceSession.run`` is).

    ``score_threshold`` on sqrt(cls * obj); ``nms_threshold`` = IoU above which the weaker box goes.
    ``fallback_threshold``: when nothing passes ``score_threshold``, keep the single best box above this lower one,
    since a still image handed to a landmark tool almost always holds a face. ``None`` (what video tracking uses)
    returns nothing instead. ``max_side``: larger images are downscaled to this longer side first. YuNet's cost grows
    with the pixel count: at 1280x720 full size it took 0.6-0.9x dlib HOG's time on the 2-core machine, at 640 about
    0.1x (benchmarks/results/detector-ytf68/). At 640 a 1280 px frame still yields faces from ~20 px (dlib HOG without
    upsampling: ~80 px); ``None`` runs at full size for tiny faces in big photos.
    """

    name = "yunet"

    def __init__(self, model: str | os.PathLike | None = None, providers: str = "auto",
                 score_threshold: float = 0.6, nms_threshold: float = 0.3, fallback_threshold: float | None = 0.2,
                 max_side: int | None = 640, box_map: BoxMap = YUNET_BOX_MAP, threads: int = 0):
        from chs.runtime.backends.ort import open_session

        path = Path(model) if model is not None else YUNET_MODEL
        if not path.is_file():
            raise ChsError(f"face detector model not found: {path}")
        self.session = open_session(path, "face detector", providers, threads)
        inputs = self.session.get_inputs()
        outputs = {o.name for o in self.session.get_outputs()}
        expected = {f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in STRIDES}
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or expected - outputs:
            raise ChsError(f"{path.name} is not a YuNet face detector (needs one NCHW input and the outputs "
                           "cls/obj/bbox/kps for strides 8, 16, 32)")
        self.input_name = inputs[0].name
        h, w = inputs[0].shape[2:]
        self.fixed_size = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        self.path = path
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.fallback_threshold = None if fallback_threshold is None else float(fallback_threshold)
        self.max_side = max_side
        self.box_map = box_map
        self.provider = self.session.get_providers()[0]

    def _scale_for(self, h: int, w: int) -> float:
        if self.fixed_size is not None:
            return min(self.fixed_size[0] / h, self.fixed_size[1] / w)
        scale = max(1.0, MIN_INPUT / min(h, w))
        if self.max_side is not None and max(h, w) * scale > self.max_side:
            scale = self.max_side / max(h, w)
        return scale

    def detect_full(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RGB uint8 (H, W, 3) -> boxes (k, 4), scores (k,), keypoints (k, 5, 2), image pixels, best first."""
        import cv2

        img = np.asarray(image)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ChsError(f"face detector needs an RGB uint8 (H, W, 3) image, got {img.dtype} {img.shape}")
        h, w = img.shape[:2]
        scale = self._scale_for(h, w)
        bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        if scale != 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        sh, sw = bgr.shape[:2]
        ph, pw = self.fixed_size or (-(-sh // 32) * 32, -(-sw // 32) * 32)
        x = np.zeros((1, 3, ph, pw), np.float32)
        x[0, :, :sh, :sw] = bgr.transpose(2, 0, 1)
        names = [o.name for o in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(names, {self.input_name: x}), strict=True))
        boxes, scores, kps = decode(outputs, ph, pw)
        low = self.score_threshold if self.fallback_threshold is None else min(self.score_threshold,
                                                                               self.fallback_threshold)
        cand = scores >= low
        boxes, scores, kps = boxes[cand], scores[cand], kps[cand]
        if len(scores) == 0:
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        keep = nms(boxes, scores, self.nms_threshold)
        boxes, scores, kps = boxes[keep], scores[keep], kps[keep]
        strong = scores >= self.score_threshold
        if not strong.any():  # fallback: the best weak detection only
            strong[0] = True
        boxes, scores, kps = boxes[strong] / scale, scores[strong], kps[strong] / scale
        return boxes, scores, kps

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The FaceDetector protocol: boxes (k, 4) in YuNet's own convention and scores (k,), best first."""
        boxes, scores, _ = self.detect_full(image)
        return boxes, scores


__all__ = ["STRIDES", "YUNET_BOX_MAP", "YUNET_MODEL", "YuNetDetector", "decode", "nms"]

"""Parity gate: every exported file against PyTorch on real face crops, in crop pixels and NME points."""

from __future__ import annotations

import numpy as np

from chs.runtime.artifact import ModelMeta
from chs.runtime.assets import demo_face
from chs.runtime.datasets import load_dataset
from chs.runtime.errors import ChsError
from chs.runtime.evaluate import crop_batch, load_images, sample_box
from chs.runtime.geometry import CropRule, crop_affine, transform_points, warp_crop
from chs.runtime.metrics import nme

# gates of the export (issue acceptance): FP32 in crop pixels, the others in NME percentage points
GATES = {"fp32": ("max_px", 0.01), "fp16": ("dnme_pt", 0.02), "int8": ("dnme_pt", 0.15)}


def parity_crops(meta: ModelMeta, data: str | None = None, max_images: int = 64, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(crops, ground truth in crop pixels or None, description).

    With ``data`` (any dataset ``load_dataset`` reads): evenly spaced annotated faces. Without: the bundled
    public-domain demo face cut 16 ways (the exact crop plus jittered scale, rotation and shift)."""
    if data:
        samples = load_dataset(data)
        if not samples:
            raise ChsError(f"no faces in parity data {data}")
        pick = np.linspace(0, len(samples) - 1, min(max_images, len(samples))).round().astype(int)
        kept, images, _ = load_images([samples[i] for i in sorted(set(pick))])
        if not kept:
            raise ChsError(f"none of the parity images in {data} could be read")
        boxes = [sample_box(s, meta) for s in kept]
        crops, affines = crop_batch(images, boxes, meta)
        gt = np.stack([transform_points(s.landmarks, m) for s, m in zip(kept, affines, strict=True)])
        return crops, gt, f"{len(kept)} annotated faces from {data}"
    image, box = demo_face()
    rng = np.random.default_rng(seed)
    rule: CropRule = meta.crop
    crops = []
    for i in range(16):
        jitter = {} if i == 0 else {
            "rotation_deg": float(rng.uniform(-15, 15)), "scale_jitter": float(rng.uniform(0.9, 1.1)),
            "shift_px": tuple(float(v) for v in rng.uniform(-8, 8, 2))}
        crops.append(warp_crop(image, crop_affine(box, meta.input_size, rule, **jitter), meta.input_size))
    return meta.norm(np.stack(crops)), None, "the bundled demo face, 16 jittered crops (no ground truth)"


def compare(reference: np.ndarray, candidate: np.ndarray, scheme: str, gt: np.ndarray | None) -> dict:
    """Max / mean landmark difference (crop px) and ΔNME in percentage points.

    With ground truth: ΔNME = NME(candidate) - NME(reference). Without it the reference stands in for the
    truth, which gives an upper bound |ΔNME| <= mean |candidate - reference| / IOD (reported as such)."""
    diff = np.linalg.norm(candidate.astype(np.float64) - reference.astype(np.float64), axis=-1)
    row = {"max_px": float(diff.max()), "mean_px": float(diff.mean())}
    if gt is not None:
        row["nme_pt"] = float(nme(candidate, gt, scheme).mean() * 100)
        row["dnme_pt"] = float((nme(candidate, gt, scheme).mean() - nme(reference, gt, scheme).mean()) * 100)
        row["dnme_kind"] = "measured"
    else:
        row["dnme_pt"] = float(nme(candidate, reference, scheme).mean() * 100)
        row["dnme_kind"] = "bound"
    return row


def gate(precision: str, row: dict) -> tuple[bool, str]:
    key, limit = GATES["int8" if precision.startswith("int8") else precision]
    value = abs(row[key])
    unit = "px" if key == "max_px" else "pt"
    return value <= limit, f"{key} {value:.4f} {unit} <= {limit} {unit}" if value <= limit else \
        f"{key} {value:.4f} {unit} > {limit} {unit}"

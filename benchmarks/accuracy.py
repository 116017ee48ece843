"""``chs-bench accuracy``: NME / FR / AUC of every (CCR count, backend, precision) on one dataset split.

The runners (and the exported ONNX files in ``work_dir``) are the ones ``chs-bench latency`` times, and every row goes
through :func:`chs.runtime.evaluate.evaluate_runner`, so latency and accuracy rows describe the same artifacts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from chs.benchmarks.peers import dlib_peer, dlib_predict
from chs.benchmarks.request import BenchRequest, Log, model_complexity, quiet
from chs.benchmarks.runners import RunnerFactory, Skip, runner_factory
from chs.benchmarks.timing import torch_threads
from chs.runtime.detector import MATCH_IOU
from chs.runtime.errors import ChsError

METRICS = ("n", "nme", "nme_iod", "nme_ipd", "fr_8", "fr_10", "auc_8", "auc_10")
# 5-point data (mtfl5) also reports the NME after removing the set-wide shift of the labels' convention
SHIFTED = ("nme_shifted", "fr_10_shifted", "auc_10_shifted", "shift_x", "shift_y")


def load_samples(data: str | os.PathLike, max_samples: int | None = None, split: str | None = None) -> list:
    """The dataset's faces; with ``max_samples``, that many spread evenly over the split."""
    from chs.runtime.datasets import load_dataset, spread_evenly

    samples = load_dataset(data, split)
    if not samples:
        raise ChsError(f"no annotated faces in {data}")
    return spread_evenly(samples, max_samples)


def accuracy_rows(request: BenchRequest, *, factory: RunnerFactory | None = None, log: Log = quiet) -> list[dict]:
    """One row per (ccr, backend, precision) with the metrics (fractions, not percent) on ``request.data``;
    torch on CUDA is evaluated eagerly only (a CUDA graph replays the same kernels). Plus a dlib 68-point
    peer row (skipped, with a reason, when not installed)."""
    if not request.data:
        raise ChsError("accuracy rows need an annotated dataset (--data)")
    samples = load_samples(request.data, request.max_samples, request.split)
    with runner_factory(request, factory, log) as factory, torch_threads(factory.threads):
        return _accuracy_rows(request, factory, samples, log)


def _accuracy_rows(req: BenchRequest, factory: RunnerFactory, samples: list, log: Log) -> list[dict]:
    from chs.runtime.evaluate import evaluate_runner

    rows: list[dict] = []
    for c in factory.combos():
        if c.mode in ("cudagraph", "parallel"):  # the same answers as the eager / sequential runner's
            continue
        row: dict[str, Any] = {"kind": "landmarks", "ccr": c.ccr, "backend": c.backend, "precision": c.precision,
                               "data": str(req.data), "status": "ok", "reason": "", "runner": None,
                               "gmacs": model_complexity(req.model, c.ccr)[1] / 1e9}
        try:
            runner = factory.get(c)
        except Skip as e:
            rows.append(row | {"status": "skipped", "reason": str(e)})
            continue
        log(f"evaluating ccr {c.ccr} {runner.name} {c.precision} on {len(samples)} faces")
        res = evaluate_runner(runner, samples, req.batch_size)
        row["runner"] = runner.name
        row.update({k: res.get(k) for k in METRICS + SHIFTED if k in METRICS or k in res})
        if "nme_iod_per_stage" in res:
            row["nme_iod_per_stage"] = res["nme_iod_per_stage"]
        row["skipped_images"] = len(res.get("skipped", []))
        rows.append(row)
    if req.peer:
        rows.append(peer_accuracy_row(samples, str(req.data)))
    return rows


def peer_accuracy_row(samples: Sequence, data: str, iou_threshold: float = MATCH_IOU) -> dict:
    """dlib's 68-point predictor on the same faces, fed by its own detector (dlib HOG, raw boxes: the boxes the
    predictor was trained on), when installed. Faces the detector misses are counted and left out of the
    NME, as for ``chs-eval --boxes detector``; compare with that row, not with the GT-box rows. On 5-point
    data (mtfl5) dlib's 68 points are reduced to 5 as the model's are."""
    from chs.runtime.detector import IDENTITY_MAP, DlibHogDetector
    from chs.runtime.detector_eval import match_detections
    from chs.runtime.metrics import summarize
    from chs.runtime.schemes import get_scheme

    row = {"kind": "peer", "ccr": None, "backend": "dlib-68", "precision": "", "data": data, "status": "ok",
           "reason": "", "runner": "dlib-68", "gmacs": None, "boxes": "dlib-hog"}
    predictor, why = dlib_peer()
    if predictor is None:
        return row | {"status": "skipped", "reason": why}
    scheme = samples[0].scheme if samples else "68"
    if scheme not in ("68", "5"):
        return row | {"status": "skipped", "reason": "dlib peer predicts 68 points (or their 5-point reduction); "
                      f"this dataset is {scheme}-point"}
    n, images, boxes, gts = match_detections(DlibHogDetector(box_map=IDENTITY_MAP), samples, iou_threshold)
    pred = np.stack([dlib_predict(predictor, img, box) for img, box in zip(images, boxes, strict=True)])
    if scheme == "5":
        pred = get_scheme("68").to_five(pred)
    res = summarize(pred, np.stack(gts), scheme, shift="own" if scheme == "5" else None)
    keys = METRICS + (SHIFTED if scheme == "5" else ())
    return row | {k: res.get(k) for k in keys} | {"n_images": n, "misses": n - len(images)}

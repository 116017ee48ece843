"""Rows beside the landmark rows: the face detector's time per image and dlib's 68-point predictor (a peer).

Both run on the bundled demo face; missing installs become skipped rows with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from chs.benchmarks.request import NOISE_THRESHOLD
from chs.benchmarks.timing import finish_row
from chs.runtime.assets import demo_face
from chs.runtime.errors import ChsError
from chs.runtime.timing import time_calls


def _extra_row(kind: str, backend: str, reason: str = "") -> dict:
    return {"kind": kind, "ccr": None, "backend": backend, "mode": "", "precision": "", "batch": 1,
            "device": "cpu", "status": "skipped" if reason else "ok", "reason": reason, "runner": backend,
            "file": None}


def _time_rows(row: dict, fn: Callable[[], object], repeats: int, warmup: int, passes: int, noise: float) -> dict:
    samples = []
    for p in range(passes):
        samples.append(time_calls(fn, repeats=repeats, warmup=warmup if p == 0 else 1))
    finish_row(row, samples, 1, noise)
    return row


def detector_row(repeats: int = 20, warmup: int = 2, passes: int = 2, noise_threshold: float = NOISE_THRESHOLD) -> dict:
    """Face detector time per image on the demo image (reported apart from the per-face landmark rows)."""
    from chs.runtime.detector import default_detector

    try:
        det = default_detector()
    except ChsError as e:
        return _extra_row("detector", "detector", str(e))
    image, _ = demo_face()
    row = _extra_row("detector", getattr(det, "name", type(det).__name__))
    row["image"] = f"astronaut.png {image.shape[1]}x{image.shape[0]}"
    row["faces"] = int(len(det.detect(image)[0]))
    return _time_rows(row, lambda: det.detect(image), repeats, warmup, passes, noise_threshold)


def dlib_peer() -> tuple[Any, str]:
    """(dlib 68-point shape predictor or None, reason when missing)."""
    try:
        import dlib
    except ImportError:
        return None, "dlib peer skipped: dlib is not installed"
    model = dlib_68_model_path()
    if model is None:
        return None, "dlib peer skipped: face_recognition_models (the 68-point predictor) is not installed"
    return dlib.shape_predictor(str(model)), ""


def dlib_68_model_path() -> Path | None:
    """The 68-point model file inside the installed face_recognition_models package, found without importing
    it (its __init__ needs pkg_resources, which recent setuptools no longer ships)."""
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "models" / "shape_predictor_68_face_landmarks.dat"
        if path.is_file():
            return path
    return None


def dlib_predict(predictor: Any, image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(68, 2) points of dlib's predictor inside ``box`` (0-based pixel centres, as the project's data)."""
    import dlib

    x0, y0, x1, y1 = (int(round(v)) for v in box)
    shape = predictor(np.ascontiguousarray(image), dlib.rectangle(x0, y0, x1, y1))
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)


def peer_latency_row(repeats: int = 20, passes: int = 2, noise_threshold: float = NOISE_THRESHOLD) -> dict:
    """dlib's 68-point predictor on the demo face, when dlib and face_recognition_models are installed."""
    predictor, why = dlib_peer()
    if predictor is None:
        return _extra_row("peer", "dlib-68", why)
    image, box = demo_face()
    row = _extra_row("peer", "dlib-68")
    return _time_rows(row, lambda: dlib_predict(predictor, image, box), repeats, 2, passes, noise_threshold)

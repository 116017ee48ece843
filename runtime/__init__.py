"""Torch-free runtime: ``LandmarkRuntime`` (image or video in, faces with landmarks out), the bundled
YuNet detector, tracking and smoothing, image/video I/O. Names load on first use, so ``import chs.runtime``
stays cheap and never imports torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LandmarkRuntime": "landmarks", "Face": "landmarks", "open_model": "backends.opener",
    "DEFAULT_MODEL": "assets", "DEMO_IMAGE": "assets",
    "FaceDetector": "detector", "BoxMap": "detector", "DlibHogDetector": "detector", "make_detector": "detector",
    "YuNetDetector": "yunet",
    "FaceTracker": "tracking", "TrackerSettings": "tracking",
    "LandmarkSmoother": "smoothing", "OneEuroSettings": "smoothing",
    "ChsError": "errors", "read_image": "imageio",
    "VideoReader": "draw", "VideoWriter": "draw", "draw_faces": "draw", "write_image": "draw",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"chs.runtime.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'chs.runtime' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

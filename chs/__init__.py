"""CHS face alignment toolchain. The serving API is re-exported here from ``chs.runtime`` (lazily)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["ChsError", "Face", "FaceTracker", "LandmarkRuntime", "TrackerSettings", "YuNetDetector", "__version__"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        import chs.runtime

        return getattr(chs.runtime, name)
    raise AttributeError(f"module 'chs' has no attribute '{name}'")

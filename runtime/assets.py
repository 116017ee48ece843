"""Files shipped inside the package: the bundled model folder and the public-domain demo face.

The assets root is computed here only; ``"default"`` names the bundled model folder everywhere (it holds
the checkpoint, ``model.safetensors`` + ``config.json``, and its FP32 export, ``model.onnx``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_DIR = ASSETS / "default"
DEFAULT_MODEL = DEFAULT_DIR / "model.onnx"
DEMO_IMAGE = ASSETS / "demo" / "astronaut.png"
DEMO_BOX = ASSETS / "demo" / "astronaut_box.json"


def resolve_model_path(model: str | os.PathLike) -> Path:
    """``"default"`` -> the bundled model folder; anything else as a path."""
    return DEFAULT_DIR if str(model) == "default" else Path(model)


def demo_face() -> tuple[np.ndarray, np.ndarray]:
    """The bundled demo image (RGB uint8) and its stored face box [x0, y0, x1, y1]."""
    from chs.runtime.imageio import read_image

    box = json.loads(DEMO_BOX.read_text())[DEMO_IMAGE.name][0]
    return read_image(DEMO_IMAGE), np.asarray(box, dtype=np.float64)

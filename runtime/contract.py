"""The versioned I/O contract: everything a host needs to run a CHS model without Python.

An ONNX file or a TensorRT engine says nothing about how its input crop was cut, normalised or how its
outputs map back to the image. Getting any of that wrong loses accuracy silently, so every exported
artifact ships this JSON (``chs_contract.json``, the engine sidecar's ``contract`` entry). A C++ (or any
other) host reads it once and needs no other source of truth.

Usage from C++ (pseudo-code)::

    json c = json::parse(read_file("chs_contract.json"));
    assert(c["contract_version"] == 1);
    int S = c["crop"]["input_size"];
    // 1. crop: image -> crop affine from the face box (x0, y0, x1, y1)
    double side = max(x1 - x0, y1 - y0) * c["crop"]["scale"];
    double cx = (x0 + x1) / 2, cy = (y0 + y1) / 2 + c["crop"]["shift_y"] * side;
    double s = S / side, m = (S - 1) / 2.0;
    cv::Mat A = (cv::Mat_<double>(2, 3) << s, 0, m - s * cx,  0, s, m - s * cy);
    cv::warpAffine(rgb, crop, A, {S, S}, cv::INTER_LINEAR, cv::BORDER_CONSTANT, 0);
    // 2. normalise: NCHW float32, channel c = (pixel / 255 - mean[c]) / std[c], RGB order
    // 3. run: set the input shape (N, 3, S, S), bind "input", "landmarks", "scores", execute
    // 4. map back: landmarks are crop pixels (x, y); image point = invert(A) * (x, y, 1)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from chs.runtime.artifact import INPUT_NAME, OUTPUT_LANDMARKS, OUTPUT_SCORES, ModelMeta
from chs.runtime.errors import ChsError
from chs.runtime.files import read_json

CONTRACT_VERSION = 1
CONTRACT_FILE = "chs_contract.json"
PRODUCER = "chs"
REQUIRED_KEYS = ("contract_version", "producer", "inputs", "outputs", "normalization", "crop", "output_frame",
                 "landmarks", "precision")

CROP_FORMULA = ("side = max(x1 - x0, y1 - y0) * scale; centre = ((x0 + x1) / 2, (y0 + y1) / 2 + shift_y * side); "
                "the square of that side centred there is resampled to input_size x input_size pixels")
AFFINE_FORMULA = ("s = input_size / side; m = (input_size - 1) / 2; "
                  "A = [[s, 0, m - s * cx], [0, s, m - s * cy]] maps image (x, y, 1) to crop (x, y)")


def _tensor_list(tensors: list[dict], what: str) -> list[dict]:
    out = []
    for t in tensors:
        if not isinstance(t, dict) or "name" not in t or "shape" not in t:
            raise ChsError(f"{what} tensor description needs 'name' and 'shape', got {t!r}")
        shape = [int(d) if d is not None and int(d) >= 0 else -1 for d in t["shape"]]
        out.append({"name": str(t["name"]), "shape": shape, "dtype": str(t.get("dtype", "float32"))})
    return out


def io_contract(meta: ModelMeta, inputs: list[dict], outputs: list[dict], engine: dict | None = None) -> dict:
    """Build the JSON-able contract from the model metadata and the artifact's tensors.

    ``inputs`` / ``outputs`` are ``{"name", "shape", "dtype"}`` dicts as the artifact declares them
    (a dynamic batch axis as -1 or None). ``engine`` is optional engine information (version, profile).
    """
    crop = meta.crop
    norm = meta.norm
    s = int(meta.input_size)
    return {
        "contract_version": CONTRACT_VERSION,
        "producer": PRODUCER,
        "inputs": _tensor_list(inputs, "input"),
        "outputs": _tensor_list(outputs, "output"),
        "input": {
            "name": INPUT_NAME,
            "shape": [-1, 3, s, s],
            "layout": "NCHW",
            "channel_order": "RGB",
            "batch_axis": 0,
        },
        "normalization": {
            "mean": [float(v) for v in norm.mean],
            "std": [float(v) for v in norm.std],
            "channel_order": "RGB",
            "layout": "NCHW",
            "pixel_scale": "x / 255",
            "formula": "value[c] = (pixel[c] / 255 - mean[c]) / std[c], pixel in [0, 255], RGB",
        },
        "crop": {
            "input_size": s,
            "scale": float(crop.scale),
            "shift_y": float(crop.shift_y),
            "box_source": crop.box_source,
            "box_format": "[x0, y0, x1, y1] image pixels",
            "formula": CROP_FORMULA,
            "affine": AFFINE_FORMULA,
            "pixel_centers": "integers (0-based; the 300-W .pts convention)",
            "resampling": "bilinear, 0 outside the image (cv2.warpAffine INTER_LINEAR, BORDER_CONSTANT)",
        },
        "output_frame": {
            OUTPUT_LANDMARKS: "crop pixels (x, y), (N, n, 2); map back with the inverse of the crop affine",
            OUTPUT_SCORES: "heatmap peak per landmark (a confidence), shape (N, n)",
        },
        "landmarks": {
            "scheme": meta.scheme,
            "num_points": int(meta.num_points),
            "order": "x, y",
            "output": OUTPUT_LANDMARKS,
            "scores": OUTPUT_SCORES,
        },
        "heatmap_stride": int(meta.heatmap_stride),
        "ccr": int(meta.ccr),
        "precision": meta.precision,
        "engine": dict(engine) if engine else None,
        "meta": {k: v for k, v in meta.to_dict().items() if k != "precision"},  # precision: once, above
    }


def contract_meta(contract: dict) -> ModelMeta:
    """The model record a contract stores (its precision is kept once, in the top-level ``precision``)."""
    return ModelMeta.from_dict({**contract["meta"], "precision": contract["precision"]})


def validate_contract(contract: object, source: str = "contract") -> dict:
    """Reject foreign, older, newer or incomplete contracts with a one-line ChsError."""
    if not isinstance(contract, dict):
        raise ChsError(f"{source} is not a CHS I/O contract (not a JSON object)")
    if "contract_version" not in contract:
        raise ChsError(f"{source} is not a CHS I/O contract (no 'contract_version')")
    if contract.get("producer", PRODUCER) != PRODUCER:
        raise ChsError(f"{source} was written by '{contract.get('producer')}', not by chs")
    version = contract["contract_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise ChsError(f"{source} has an unreadable contract_version {version!r}")
    if version < CONTRACT_VERSION:
        raise ChsError(f"{source} has contract_version {version}, older than {CONTRACT_VERSION}: re-export")
    if version > CONTRACT_VERSION:
        raise ChsError(f"{source} has contract_version {version}; this chs reads {CONTRACT_VERSION}: upgrade chs")
    missing = [k for k in REQUIRED_KEYS if k not in contract]
    if missing:
        raise ChsError(f"{source} lacks required keys: {', '.join(missing)}")
    return contract


def write_contract(path: str | Path, contract: dict) -> dict:
    """Write a contract (:func:`io_contract`'s, or an engine sidecar's copy) as JSON to ``path``; returns it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(contract, indent=2, sort_keys=True) + "\n")
    return contract


def read_contract(path: str | Path) -> dict:
    """Read and validate a contract file."""
    p = Path(path)
    if not p.is_file():
        raise ChsError(f"contract file {p} does not exist")
    data = read_json(p, "contract file")
    return validate_contract(data, f"contract file {p}")


def contract_crop_affine(contract: dict, box) -> np.ndarray:
    """The image->crop affine computed only from the contract's numbers (what a C++ host does).

    Kept next to the written formula so a test can hold it equal to ``geometry.crop_affine``.
    """
    c = contract["crop"]
    x0, y0, x1, y1 = (float(v) for v in box)
    size = int(c["input_size"])
    side = max(x1 - x0, y1 - y0) * float(c["scale"])
    if side <= 0:
        raise ChsError(f"box {list(box)} is empty")
    cx = (x0 + x1) / 2.0
    cy = (y0 + y1) / 2.0 + float(c["shift_y"]) * side
    s = size / side
    m = (size - 1) / 2.0
    return np.array([[s, 0.0, m - s * cx], [0.0, s, m - s * cy]])

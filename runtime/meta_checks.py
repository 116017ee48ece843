"""Sanity rules for the metadata an artifact carries (ONNX ``chs.meta``, checkpoint config, engine sidecar).

Metadata is read from files a user hands us: a crop scale of -1.3 mirrors every landmark silently, an input
size that differs from the graph's fails deep inside ONNX Runtime, a string where a number belongs fails
as a TypeError. These checks run when a model is opened, and name the field and the file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from chs.runtime.artifact import INPUT_NAME, OUTPUT_LANDMARKS
from chs.runtime.errors import ChsError

MAX_POINTS = 1000
MAX_INPUT_SIZE = 2048
MAX_CROP_SCALE = 10.0


def _int(value: Any, field: str, source: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ChsError(f"{source}: {field} must be a whole number, got {value!r:.40}")
    if not lo <= value <= hi:
        raise ChsError(f"{source}: {field} must be in [{lo}, {hi}], got {value}")
    return value


def _float(value: Any, field: str, source: str, lo: float, hi: float, *, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ChsError(f"{source}: {field} must be a finite number, got {value!r:.40}")
    if value < lo or value > hi or (open_low and value == lo):
        bracket = "(" if open_low else "["
        raise ChsError(f"{source}: {field} must be in {bracket}{lo:g}, {hi:g}], got {value}")
    return float(value)


def check_crop_rule(rule: Any, source: str) -> None:
    """scale in (0, 10], shift_y in [-1, 1], box_source landmarks|detector (a CropRule or its dict)."""
    if hasattr(rule, "to_dict"):
        rule = {"scale": rule.scale, "shift_y": rule.shift_y, "box_source": rule.box_source}
    if not isinstance(rule, dict):
        raise ChsError(f"{source}: crop_rule must be an object, got {type(rule).__name__}")
    if "scale" in rule:
        _float(rule["scale"], "crop_rule.scale", source, 0.0, MAX_CROP_SCALE, open_low=True)
    if "shift_y" in rule:
        _float(rule["shift_y"], "crop_rule.shift_y", source, -1.0, 1.0)
    if rule.get("box_source", "landmarks") not in ("landmarks", "detector"):
        raise ChsError(f"{source}: crop_rule.box_source must be 'landmarks' or 'detector', "
                       f"got {rule.get('box_source')!r:.40}")


def check_normalization(norm: Any, source: str) -> None:
    """Three finite means and three positive finite standard deviations (a Normalization or its dict)."""
    if hasattr(norm, "to_dict"):
        norm = {"mean": list(norm.mean), "std": list(norm.std)}
    if not isinstance(norm, dict):
        raise ChsError(f"{source}: normalization must be an object, got {type(norm).__name__}")
    for key, lo, open_low in (("mean", -1e3, False), ("std", 0.0, True)):
        if key not in norm:
            continue
        values = norm[key]
        if not isinstance(values, (list, tuple)) or len(values) != 3:
            raise ChsError(f"{source}: normalization.{key} must be 3 numbers (R, G, B), got {values!r:.60}")
        for v in values:
            _float(v, f"normalization.{key}", source, lo, 1e3, open_low=open_low)


def validate_meta(meta: Any, source: str) -> None:
    """Types and ranges of a ModelMeta's fields; a known scheme must match the point count."""
    from chs.runtime.schemes import get_scheme

    if not isinstance(meta.scheme, str):
        raise ChsError(f"{source}: scheme must be a name, got {meta.scheme!r:.40}")
    _int(meta.num_points, "num_points", source, 1, MAX_POINTS)
    _int(meta.input_size, "input_size", source, 4, MAX_INPUT_SIZE)
    _int(meta.heatmap_stride, "heatmap_stride", source, 1, 64)
    _int(meta.ccr, "ccr", source, 0, 64)
    if meta.input_size % meta.heatmap_stride:
        raise ChsError(f"{source}: input_size {meta.input_size} is not a multiple of heatmap_stride "
                       f"{meta.heatmap_stride}")
    try:
        scheme = get_scheme(meta.scheme)
    except ChsError:  # a scheme this runtime does not know is served as is
        scheme = None
    if scheme is not None and scheme.num_points != meta.num_points:
        raise ChsError(f"{source}: scheme '{meta.scheme}' has {scheme.num_points} points, metadata says "
                       f"{meta.num_points}")
    check_crop_rule(meta.crop_rule, source)
    check_normalization(meta.normalization, source)


def check_meta_against_graph(meta: Any, input_shape: Sequence[Any], landmarks_shape: Sequence[Any] | None,
                             source: str) -> None:
    """The metadata must describe the graph it rides on: (N, 3, S, S) input, (N, n, 2) landmarks (static
    dimensions compared; symbolic ones such as the batch axis are skipped)."""
    dims = list(input_shape)
    if len(dims) != 4:
        raise ChsError(f"{source}: the graph input has {len(dims)} dimensions, expected (N, 3, S, S)")
    expected = [None, 3, meta.input_size, meta.input_size]
    for axis, (got, want) in enumerate(zip(dims, expected, strict=True)):
        if want is not None and isinstance(got, int) and got != want:
            raise ChsError(f"{source}: metadata says input {meta.input_size}x{meta.input_size} but the graph "
                           f"takes {dims[2]}x{dims[3]} (axis {axis}: {got})")
    if landmarks_shape is not None and len(landmarks_shape) == 3:
        n = landmarks_shape[1]
        if isinstance(n, int) and n != meta.num_points:
            raise ChsError(f"{source}: metadata says {meta.num_points} points but the graph outputs {n}")


def check_onnx_meta(meta: Any, session: Any, source: str) -> None:
    """validate_meta + check_meta_against_graph for an onnxruntime InferenceSession."""
    validate_meta(meta, source)
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    check_meta_against_graph(meta, inputs.get(INPUT_NAME, []), outputs.get(OUTPUT_LANDMARKS), source)


__all__ = ["check_onnx_meta", "check_crop_rule", "check_meta_against_graph", "check_normalization", "validate_meta"]

"""INT8 calibration: real-face crops, ORT calibrators with a range cache, and Q/DQ ONNX in two flavours."""

from chs.calibration.calibrate import TensorRanges, calibrate
from chs.calibration.data import load_calibration_crops
from chs.calibration.quantize import quantize_int8
from chs.calibration.reader import CropReader

__all__ = ["CropReader", "TensorRanges", "calibrate", "load_calibration_crops", "quantize_int8"]

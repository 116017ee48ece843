"""Feeds calibration crops to ONNX Runtime's calibrators in batches.

ORT's strided calibration (``CalibStridedMinMax``) calls ``len(reader)`` and ``set_range`` to collect a
slice at a time and keep memory flat; the base class leaves both unimplemented, so they live here.
Units of ``__len__`` and ``set_range`` are batches (what ``get_next`` yields).
"""

from __future__ import annotations

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from chs.runtime.artifact import INPUT_NAME
from chs.runtime.errors import ChsError
from chs.runtime.options import whole_number


class CropReader(CalibrationDataReader):
    """Yields ``{input_name: crops[i : i + batch_size]}`` until the (range of) batches is exhausted."""

    def __init__(self, crops: np.ndarray, batch_size: int = 8, input_name: str = INPUT_NAME):
        x = np.ascontiguousarray(crops, dtype=np.float32)
        if x.ndim != 4 or len(x) == 0:
            raise ChsError(f"calibration crops must be a non-empty (N, 3, S, S) array, got shape {tuple(x.shape)}")
        whole_number(batch_size, "batch size", 1)
        self.crops, self.batch_size, self.input_name = x, int(batch_size), input_name
        self._start, self._end = 0, len(self)
        self._pos = 0

    def __len__(self) -> int:
        return -(-len(self.crops) // self.batch_size)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Restrict the reader to batches [start_index, end_index) and rewind to start_index."""
        n = len(self)
        if not 0 <= start_index <= end_index:
            raise ChsError(f"bad calibration range [{start_index}, {end_index})")
        self._start, self._end = start_index, min(end_index, n)
        self._pos = self._start

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= self._end:
            return None
        i = self._pos * self.batch_size
        self._pos += 1
        return {self.input_name: self.crops[i : i + self.batch_size]}

    def rewind(self) -> None:
        """Back to the first batch of the current range."""
        self._pos = self._start


__all__ = ["CropReader"]

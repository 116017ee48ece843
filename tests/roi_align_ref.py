"""Independent NumPy RoiAlign following the ONNX operator spec (avg mode, half_pixel), loop by loop."""

from __future__ import annotations

import numpy as np


def _bilinear(f: np.ndarray, y: float, x: float) -> np.ndarray:
    h, w = f.shape[1:]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(f.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * f[:, y0, x0] + (1 - ly) * lx * f[:, y0, x1]
            + ly * (1 - lx) * f[:, y1, x0] + ly * lx * f[:, y1, x1])


def roi_align_ref(x: np.ndarray, rois: np.ndarray, batch_idx: np.ndarray, out_h: int, out_w: int,
                  spatial_scale: float, sampling_ratio: int) -> np.ndarray:
    out = np.zeros((len(rois), x.shape[1], out_h, out_w))
    for r, (roi, b) in enumerate(zip(rois, batch_idx, strict=True)):
        x0, y0, x1, y1 = roi * spatial_scale - 0.5
        bw, bh = (x1 - x0) / out_w, (y1 - y0) / out_h
        for ph in range(out_h):
            for pw in range(out_w):
                acc = np.zeros(x.shape[1])
                for iy in range(sampling_ratio):
                    yy = y0 + ph * bh + (iy + 0.5) * bh / sampling_ratio
                    for ix in range(sampling_ratio):
                        xx = x0 + pw * bw + (ix + 0.5) * bw / sampling_ratio
                        acc += _bilinear(x[b], yy, xx)
                out[r, :, ph, pw] = acc / sampling_ratio**2
    return out

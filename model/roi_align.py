"""RoiAlign (average mode, half-pixel) as the project's own op: pure torch with gradients, no torchvision.

During ``torch.onnx.export`` it becomes the standard ONNX ``RoiAlign`` node (opset 16+, explicit
``sampling_ratio`` so TensorRT's ROIAlign_TRT plugin and ONNX Runtime sample the same points).
"""

from __future__ import annotations

import torch


def _roi_align_torch(features: torch.Tensor, rois: torch.Tensor, batch_idx: torch.Tensor, out_h: int, out_w: int,
                     spatial_scale: float, sampling_ratio: int) -> torch.Tensor:
    n, c, h, w = features.shape
    r = rois.shape[0]
    sr = sampling_ratio
    boxes = rois * spatial_scale - 0.5  # half_pixel
    x0, y0, x1, y1 = boxes.unbind(1)
    bin_w = (x1 - x0) / out_w
    bin_h = (y1 - y0) / out_h
    steps_w = (torch.arange(out_w * sr, device=rois.device, dtype=rois.dtype) + 0.5) / sr  # in bins
    steps_h = (torch.arange(out_h * sr, device=rois.device, dtype=rois.dtype) + 0.5) / sr
    xs = x0[:, None] + bin_w[:, None] * steps_w[None]  # (R, out_w*sr)
    ys = y0[:, None] + bin_h[:, None] * steps_h[None]  # (R, out_h*sr)
    ys_g = ys[:, :, None].expand(r, out_h * sr, out_w * sr)
    xs_g = xs[:, None, :].expand(r, out_h * sr, out_w * sr)
    valid = (ys_g >= -1.0) & (ys_g <= h) & (xs_g >= -1.0) & (xs_g <= w)
    y = ys_g.clamp(min=0)
    x = xs_g.clamp(min=0)
    y_low = y.detach().floor().clamp(max=h - 1)
    x_low = x.detach().floor().clamp(max=w - 1)
    y = torch.where(y_low >= h - 1, y_low, y)
    x = torch.where(x_low >= w - 1, x_low, x)
    y_high = (y_low + 1).clamp(max=h - 1)
    x_high = (x_low + 1).clamp(max=w - 1)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    flat = features.permute(0, 2, 3, 1).reshape(n * h * w, c)
    base = (batch_idx.to(torch.long) * (h * w))[:, None, None]

    def tap(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        # NaN coordinates (a diverging training step) sample cell 0 and stay NaN: never an index error
        idx = base + yi.nan_to_num(0.0).long() * w + xi.nan_to_num(0.0).long()
        return flat[idx.reshape(-1)].reshape(r, out_h * sr, out_w * sr, c)

    val = (
        tap(y_low, x_low) * (hy * hx)[..., None]
        + tap(y_low, x_high) * (hy * lx)[..., None]
        + tap(y_high, x_low) * (ly * hx)[..., None]
        + tap(y_high, x_high) * (ly * lx)[..., None]
    )
    val = val * valid[..., None].to(val.dtype)
    val = val.reshape(r, out_h, sr, out_w, sr, c).mean(dim=(2, 4))
    return val.permute(0, 3, 1, 2).contiguous()


def roi_align(features: torch.Tensor, rois: torch.Tensor, batch_idx: torch.Tensor, output_size: tuple[int, int],
              spatial_scale: float = 1.0, sampling_ratio: int = 2) -> torch.Tensor:
    """ONNX-semantics RoiAlign: rois (R, 4) as x0, y0, x1, y1 in input units, batch_idx (R,) int64."""
    out_h, out_w = output_size
    if torch.onnx.is_in_onnx_export():
        return torch.onnx.ops.symbolic(
            "::RoiAlign",
            (features, rois, batch_idx.to(torch.int64)),
            {
                "mode": "avg",
                "output_height": int(out_h),
                "output_width": int(out_w),
                "sampling_ratio": int(sampling_ratio),
                "spatial_scale": float(spatial_scale),
                "coordinate_transformation_mode": "half_pixel",
            },
            dtype=features.dtype,
            shape=(rois.shape[0], features.shape[1], out_h, out_w),
            version=16,
        )
    return _roi_align_torch(features, rois, batch_idx, out_h, out_w, spatial_scale, sampling_ratio)

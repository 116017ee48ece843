"""The heatmap codec: encode -> decode returns the landmarks; one frame convention for numpy and torch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from chs.model.codec import HeatmapCodec  # noqa: E402
from chs.model.config import get_preset  # noqa: E402


@pytest.mark.parametrize("sigma", [1.0, 1.5])
def test_encode_decode_round_trip(sigma):
    codec = HeatmapCodec(input_size=64, sigma=sigma)
    rng = np.random.default_rng(0)
    pts = rng.uniform(6, 58, (68, 2))  # crop pixels, away from the border so every peak has neighbours
    maps = codec.encode(pts)
    assert maps.shape == (68, 16, 16) and maps.dtype == np.float32
    cells, scores = codec.decode(torch.from_numpy(maps)[None])
    back = codec.to_crop(cells[0].numpy().astype(np.float64))
    # a Gaussian's log is a parabola: the sub-cell fit recovers the point up to float32 rounding
    assert np.abs(back - pts).max() < 2e-3
    assert scores.min().item() > 0.6


def test_nan_point_encodes_to_an_empty_map():
    maps = HeatmapCodec(32).encode(np.array([[np.nan, 3.0], [10.0, 12.0]]))
    assert maps[0].max() == 0.0 and maps[1].max() > 0.5


def test_frames_are_inverse_and_backend_neutral():
    codec = HeatmapCodec(128)
    assert codec.size == 32 and codec.to_crop(np.array(0.0)) == 1.5  # cell 0 covers pixels 0..3
    pts = np.array([[0.0, 127.0], [63.5, 10.25]])
    np.testing.assert_allclose(codec.to_crop(codec.to_cells(pts)), pts, atol=1e-12)
    t = codec.to_crop(torch.from_numpy(pts.astype(np.float32)))
    np.testing.assert_allclose(t.numpy(), codec.to_crop(pts.astype(np.float32)), atol=0)

    # the CCR's frames: ROI boxes put cell c on [c, c + 1); coordinate channels span the heatmap as [-1, 1]
    assert codec.to_box_frame(np.array(3.0)) == 3.5 and codec.to_crop(np.array(3.0)) == 3.5 * 4 - 0.5
    np.testing.assert_allclose(codec.to_unit(np.array([0.0, 15.5, 31.0])), [-1.0, 0.0, 1.0], atol=1e-12)


def test_config_owns_one_codec():
    cfg = get_preset("ytf68")
    assert cfg.codec == HeatmapCodec(128) and cfg.heatmap_size == 32 and cfg.heatmap_stride == 4

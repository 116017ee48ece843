import cv2
import numpy as np
import pytest

from chs.runtime.errors import ChsError
from chs.runtime.imageio import decode_image, read_image


def _rgb(h=24, w=32) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 200  # R
    img[..., 1] = 100  # G
    img[..., 2] = 30  # B
    return img


def _encode(ext: str, img_bgr_or_gray: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img_bgr_or_gray)
    assert ok
    return buf.tobytes()


def test_png_roundtrip_is_rgb(tmp_path):
    rgb = _rgb()
    path = tmp_path / "a.png"
    path.write_bytes(_encode(".png", rgb[..., ::-1]))
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, rgb)


def test_unicode_path_and_jpeg(tmp_path):
    path = tmp_path / "顔_é.jpg"
    path.write_bytes(_encode(".jpg", _rgb()[..., ::-1]))
    out = read_image(path)
    assert out.shape == (24, 32, 3)
    assert abs(int(out[12, 16, 0]) - 200) <= 3 and abs(int(out[12, 16, 2]) - 30) <= 3


def test_16bit_gray_and_rgba(tmp_path):
    img16 = np.full((8, 9), 0xABCD, np.uint16)
    (tmp_path / "g16.png").write_bytes(_encode(".png", img16))
    out = read_image(tmp_path / "g16.png")
    assert out.shape == (8, 9, 3) and (out == 0xAB).all()

    gray = np.arange(6 * 7, dtype=np.uint8).reshape(6, 7)
    out = decode_image(_encode(".png", gray))
    assert out.shape == (6, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)

    bgra = np.zeros((5, 5, 4), np.uint8)
    bgra[...] = (10, 20, 30, 0)  # fully transparent: alpha is dropped, colour kept
    out = decode_image(_encode(".png", bgra))
    assert out.shape == (5, 5, 3) and tuple(out[0, 0]) == (30, 20, 10)

    rgb16 = np.zeros((4, 4, 3), np.uint16)
    rgb16[...] = (0x0100, 0x8000, 0xFFFF)  # B, G, R
    out = decode_image(_encode(".png", rgb16))
    assert tuple(out[0, 0]) == (0xFF, 0x80, 0x01)


def test_missing_empty_and_not_an_image(tmp_path):
    with pytest.raises(ChsError, match="image not found: .*nope.jpg"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ChsError, match="empty"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "notes.jpg").write_text("hello, not an image\n")
    with pytest.raises(ChsError, match=r"cannot decode image .*notes.jpg: not a supported image file"):
        read_image(tmp_path / "notes.jpg")


@pytest.mark.parametrize("keep", [0.3, 0.7, -2])
def test_truncated_jpeg(tmp_path, keep):
    data = _encode(".jpg", (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8))
    cut = data[: int(len(data) * keep)] if keep > 0 else data[:keep]
    path = tmp_path / "t.jpg"
    path.write_bytes(cut)
    with pytest.raises(ChsError, match=r"image .*t.jpg is truncated"):
        read_image(path)


def test_jpeg_with_trailing_bytes_is_fine():
    data = _encode(".jpg", _rgb()[..., ::-1]) + b"\x00" * 100 + b"camera trailer"
    assert decode_image(data).shape == (24, 32, 3)


@pytest.mark.parametrize("keep", [20, 0.5, -12])
def test_truncated_png(tmp_path, keep):
    data = _encode(".png", (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8))
    cut = data[: int(len(data) * keep)] if isinstance(keep, float) else data[:keep]
    path = tmp_path / "t.png"
    path.write_bytes(cut)
    with pytest.raises(ChsError, match=r"image .*t.png is truncated|cannot decode image .*t.png"):
        read_image(path)


def test_too_small(tmp_path):
    path = tmp_path / "px.png"
    path.write_bytes(_encode(".png", np.zeros((1, 1, 3), np.uint8)))
    with pytest.raises(ChsError, match=r"image .*px.png is too small \(1x1\)"):
        read_image(path)
    assert decode_image(_encode(".png", np.zeros((2, 2, 3), np.uint8))).shape == (2, 2, 3)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(ChsError, match="directory"):
        read_image(tmp_path)

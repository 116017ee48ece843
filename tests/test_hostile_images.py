"""Hostile image files (issue 14 items 1, 2, 5, 11, 17): pixel bombs, FIFOs, special files, symlink loops,
EXIF orientation and grey-filled corrupt JPEGs. Each ends in one ChsError line (or, where the input is
valid, the right pixels), within seconds and without decoding what must not be decoded."""

from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from chs.runtime import imageio
from chs.runtime.errors import ChsError
from chs.runtime.imageheader import apply_orientation, declared_size, exif_orientation
from chs.runtime.imageio import decode_image, read_image

DEMO = Path(__file__).resolve().parents[1] / "runtime" / "assets" / "demo" / "astronaut.png"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares width x height (its few rows of data are all there is)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * min(width, 4096)) * 4)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def exif_app1(orientation: int, big_endian: bool = True) -> bytes:
    """A JPEG APP1 segment holding only the EXIF orientation tag."""
    e = ">" if big_endian else "<"
    tiff = (b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(e + "I", 8)
    tiff += struct.pack(e + "H", 1) + struct.pack(e + "HHI", 0x0112, 3, 1) + struct.pack(e + "HH", orientation, 0)
    tiff += struct.pack(e + "I", 0)
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def _jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


# ---------------------------------------------------------------------------------------- 1: pixel bombs
def test_declared_30000x30000_png_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(30000, 30000))
    assert path.stat().st_size < 100_000 and declared_size(path.read_bytes()) == (30000, 30000)

    def no_decode(*a, **k):
        raise AssertionError("decoder called on a pixel bomb")

    monkeypatch.setattr(imageio.cv2, "imdecode", no_decode)
    with pytest.raises(ChsError, match=r"30000x30000 = 900\.0 MP, over the limit of 100 MP"):
        read_image(path)


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    img = np.zeros((1200, 1000, 3), np.uint8)  # 1.2 MP, a valid image
    path = tmp_path / "big.png"
    ok, buf = cv2.imencode(".png", img)
    path.write_bytes(buf.tobytes())
    assert read_image(path).shape == (1200, 1000, 3)
    monkeypatch.setenv("CHS_MAX_IMAGE_PIXELS", "1000000")
    with pytest.raises(ChsError, match="over the limit of 1 MP"):
        read_image(path)
    assert read_image(path, max_pixels=2_000_000).shape == (1200, 1000, 3)


@pytest.mark.parametrize("ext", [".jpg", ".bmp", ".tiff", ".webp", ".ppm", ".gif"])
def test_every_header_reader_sees_the_declared_size(ext):
    img = np.zeros((37, 53, 3), np.uint8)
    ok, buf = cv2.imencode(ext, img)
    if not ok:
        pytest.skip(f"OpenCV cannot write {ext} here")
    assert declared_size(buf.tobytes()) == (53, 37)


# ---------------------------------------------------------------------------------------- 2, 17: special files
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    outcome: list = []

    def attempt():
        try:
            read_image(fifo)
            outcome.append("read")
        except ChsError as e:
            outcome.append(str(e))

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # unblock the reader so the test run can end
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    assert outcome and "is a FIFO (named pipe), not a regular file" in outcome[0], outcome


def test_symlink_loop_is_named(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(ChsError, match="symlink loop"):
        read_image(a)


@pytest.mark.parametrize("path, message", [("/dev/zero", "character device, not a regular file"),
                                           ("/proc/self/mem", "special file of unknown size")])
def test_endless_and_pseudo_files_are_not_called_empty(path, message):
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist here")
    with pytest.raises(ChsError, match=message):
        read_image(path)


# ---------------------------------------------------------------------------------------- 5: EXIF orientation
def _asymmetric(h: int = 64, w: int = 96) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:16, :24] = (250, 20, 20)  # red top-left
    img[-16:, -32:] = (20, 20, 250)  # blue bottom-right
    img[:, w // 2 : w // 2 + 4, 1] = 200
    return img


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_opencv_display(orientation, tmp_path):
    stored = _asymmetric()
    jpg = _jpeg(stored)
    tagged = jpg[:2] + exif_app1(orientation, big_endian=orientation % 2 == 0) + jpg[2:]
    assert exif_orientation(tagged) == orientation
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(tagged)
    got = read_image(path)
    displayed = cv2.imdecode(np.frombuffer(tagged, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]  # cv2 applies EXIF
    assert got.shape == displayed.shape
    np.testing.assert_array_equal(got, displayed)
    expected = apply_orientation(read_image_plain(jpg), orientation)
    np.testing.assert_array_equal(got, expected)


def read_image_plain(jpg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1]


def test_orientation_6_turns_portrait_upright():
    stored = _asymmetric(60, 100)
    jpg = _jpeg(stored)
    got = decode_image(jpg[:2] + exif_app1(6) + jpg[2:])
    assert got.shape == (100, 60, 3)  # displayed as portrait
    # orientation 6 = rotate 90 degrees clockwise for display: stored top-left goes to top-right
    assert got[:10, -10:, 0].mean() > 200 and got[:10, :10, 0].mean() < 60


# ---------------------------------------------------------------------------------------- 11: corrupt JPEG
def truncated_jpeg_with_eoi() -> bytes:
    """The issue's reproduction: the demo photo as JPEG, cut at 55 %, an end-of-image marker appended."""
    rgb = cv2.imread(str(DEMO))[..., ::-1]
    jpg = _jpeg(rgb, 90)
    return jpg[: len(jpg) * 55 // 100] + b"\xff\xd9"


def test_truncated_jpeg_with_end_marker_is_corrupt(tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(truncated_jpeg_with_eoi())
    with pytest.raises(ChsError, match=r"is corrupt \(Corrupt JPEG data: premature end of data segment\)"):
        read_image(path)


def test_flat_grey_jpeg_is_not_mistaken_for_corruption():
    grey = np.full((48, 64, 3), 128, np.uint8)
    out = decode_image(_jpeg(grey))
    assert (out == 128).all()


def test_progressive_jpeg_still_reads():
    rgb = _asymmetric()
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1].copy(), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    out = decode_image(buf.tobytes())
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).mean() < 4


# ---------------------------------------------------------------------------------------- 17: .pts infinity
def test_pts_infinity_is_an_error_naming_file_and_line(tmp_path):
    from chs.runtime.datasets import read_pts

    body = "".join(f"{i}.0 {i + 1}.0\n" for i in range(68)).replace("5.0 6.0\n", "inf 6.0\n")
    path = tmp_path / "face.pts"
    path.write_text(f"version: 1\nn_points: 68\n{{\n{body}}}\n")
    with pytest.raises(ChsError, match=r"face\.pts line 9: point 5 has an infinite coordinate: 'inf 6.0'"):
        read_pts(path)
    path.write_text(f"version: 1\nn_points: 68\n{{\n{body.replace('inf', 'nan')}}}\n")
    pts = read_pts(path)  # NaN stays the marker of a missing point
    assert np.isnan(pts[5, 0]) and np.isfinite(np.delete(pts, 5, axis=0)).all()

"""Image reading that fails loudly: RGB uint8 out, or one ChsError line saying what is wrong with the file.

cv2.imread returns None for every kind of failure and silently grey-fills truncated JPEGs; a landmark
model fed such an image gives confident nonsense. Here missing, empty, truncated, undecodable and tiny
images are told apart, 16-bit / gray / alpha images are normalised, and unicode paths work (np.fromfile
+ cv2.imdecode instead of cv2.imread).

EXIF orientation is deliberately not applied: dataset annotations refer to the stored pixel grid.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .errors import ChsError

_JPEG_SOI = b"\xff\xd8"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an RGB uint8 (H, W, 3) array."""
    p = Path(path)
    if not p.exists():
        raise ChsError(f"image not found: {p}")
    if p.is_dir():
        raise ChsError(f"image path is a directory, not a file: {p}")
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as e:
        raise ChsError(f"cannot read image {p}: {e.strerror or e}") from e
    return decode_image(data, str(p))


def _jpeg_is_complete(data: bytes) -> bool:
    """True when the JPEG has an end-of-image marker after its first scan.

    Walks the marker segments up to the first SOS so that an EOI inside an EXIF thumbnail does not count,
    then looks for FF D9 in the entropy-coded data (where a literal FF is always stuffed as FF 00, so FF D9
    can only be the marker). Trailing bytes after EOI (camera trailers) are fine.
    """
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False  # lost sync in the header: corrupt, treat as truncated
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xD9:
            return False  # EOI before any scan: no image data
        seg_len = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:
            return data.find(b"\xff\xd9", i + 2 + seg_len) >= 0
        i += 2 + seg_len
    return False


def _to_rgb8(img: np.ndarray, name: str) -> np.ndarray:
    """Any cv2 IMREAD_UNCHANGED result -> RGB uint8."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        finite = np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        img = np.clip(finite * scale + 0.5, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ChsError(f"image {name} has an unsupported pixel type ({img.dtype})")
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels in (1, 2):  # gray, gray + alpha
        return np.ascontiguousarray(np.repeat(img[:, :, :1], 3, axis=2))
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)  # alpha dropped, not composited
    raise ChsError(f"image {name} has {channels} channels; expected 1 to 4")


def decode_image(data: bytes | bytearray | memoryview | np.ndarray, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, BMP, PPM, TIFF, WebP, ...) to RGB uint8 (H, W, 3)."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    if buf.dtype != np.uint8:
        raise ChsError(f"image {name}: expected encoded bytes (uint8), got {buf.dtype}")
    if buf.size == 0:
        raise ChsError(f"image {name} is empty (0 bytes)")
    raw = buf.tobytes()
    if raw.startswith(_JPEG_SOI) and not _jpeg_is_complete(raw):
        raise ChsError(f"image {name} is truncated")
    if raw.startswith(_PNG_SIG) and raw.rfind(b"IEND") < 0:
        raise ChsError(f"image {name} is truncated")
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        if raw.startswith((_JPEG_SOI, _PNG_SIG)):
            raise ChsError(f"cannot decode image {name}: corrupt {'JPEG' if raw[0] == 0xFF else 'PNG'} data")
        raise ChsError(f"cannot decode image {name}: not a supported image file")
    rgb = _to_rgb8(img, name)
    h, w = rgb.shape[:2]
    if h < 2 or w < 2:
        raise ChsError(f"image {name} is too small ({w}x{h})")
    return rgb


__all__ = ["decode_image", "read_image"]

"""Image reading that fails loudly: RGB uint8 out, or one ChsError line saying what is wrong with the file.

cv2.imread returns None for every kind of failure and silently grey-fills truncated JPEGs; a landmark
model fed such an image gives confident nonsense. Here missing, empty, truncated, undecodable, corrupt
and tiny images are told apart, 16-bit / gray / alpha images are normalised, and unicode paths work
(bytes read by ``files.read_input_bytes`` + cv2.imdecode instead of cv2.imread).

Limits: the size a header declares is checked against ``max_pixels`` (default 100 MP, or the
``CHS_MAX_IMAGE_PIXELS`` environment variable) before decoding; files larger than 8 bytes per allowed
pixel are not read. FIFOs, devices and other special files are refused without being read.

EXIF orientation (JPEG, PNG) is applied: the pixels come out as an image viewer displays them, so
landmarks are in the displayed frame. Arrays given to the API are never turned.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np

from .errors import ChsError
from .files import read_input_bytes
from .imageheader import apply_orientation, declared_size, exif_orientation, jpeg_segments

_JPEG_SOI = b"\xff\xd8"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
DEFAULT_MAX_PIXELS = 100_000_000
_stderr_lock = threading.Lock()


def max_image_pixels(max_pixels: int | None = None) -> int:
    """The pixel limit in force: the argument, else $CHS_MAX_IMAGE_PIXELS, else 100 MP."""
    if max_pixels is not None:
        return int(max_pixels)
    env = os.environ.get("CHS_MAX_IMAGE_PIXELS", "")
    try:
        return int(env) if env else DEFAULT_MAX_PIXELS
    except ValueError:
        raise ChsError(f"CHS_MAX_IMAGE_PIXELS must be a whole number, got '{env}'") from None


def check_pixel_count(width: int, height: int, name: str, max_pixels: int | None = None, what: str = "image") -> None:
    """ChsError when width x height exceeds the pixel limit (``what``: "image", or "video" for a video's frames)."""
    limit = max_image_pixels(max_pixels)
    if width * height > limit:
        raise ChsError(f"{what} {name} is {width}x{height} = {width * height / 1e6:.1f} MP, over the limit of "
                       f"{limit / 1e6:g} MP (set CHS_MAX_IMAGE_PIXELS to allow more)")


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as an RGB uint8 (H, W, 3) array, turned by its EXIF orientation."""
    p = Path(path)
    data = read_input_bytes(p, "image", max_bytes=8 * max_image_pixels(max_pixels) + (1 << 20))
    return decode_image(data, str(p), max_pixels=max_pixels)


def _jpeg_is_complete(data: bytes) -> bool:
    """True when the JPEG has an end-of-image marker after its first scan.

    Walks the marker segments up to the first SOS so that an EOI inside an EXIF thumbnail does not count,
    then looks for FF D9 in the entropy-coded data (where a literal FF is always stuffed as FF 00, so FF D9
    can only be the marker). Trailing bytes after EOI (camera trailers) are fine.
    """
    for marker, _start, end in jpeg_segments(data):
        if marker == 0xDA:
            return data.find(b"\xff\xd9", end) >= 0
    return False


def _decode_capturing_stderr(buf: np.ndarray, flags: int) -> tuple[np.ndarray | None, str]:
    """cv2.imdecode with file descriptor 2 captured: libjpeg reports corrupt data only as a warning on stderr
    (and grey-fills what is missing). Serialised by a lock, since fd 2 is process-wide: JPEG decoding runs
    one image at a time across threads; anything else written to stderr meanwhile is passed on."""
    with _stderr_lock, tempfile.TemporaryFile() as cap:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(cap.fileno(), 2)
            try:
                img = cv2.imdecode(buf, flags)
            except cv2.error:
                img = None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        cap.seek(0)
        text = cap.read().decode("utf-8", "replace")
    other = [ln for ln in text.splitlines(keepends=True) if not _is_libjpeg_warning(ln)]
    if other:
        os.write(2, "".join(other).encode())
    return img, text


def _is_libjpeg_warning(line: str) -> bool:
    return line.startswith(("Corrupt JPEG data", "Premature end of JPEG file", "Invalid SOS parameters",
                            "Warning: ", "Inconsistent progression", "Unknown Adobe"))


def _corruption(text: str) -> str | None:
    """The first libjpeg warning that means missing or damaged image data (not merely odd padding)."""
    for line in text.splitlines():
        if _is_libjpeg_warning(line) and "extraneous bytes" not in line:
            return line.strip().rstrip(".")
    return None


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


def decode_image(data: bytes | bytearray | memoryview | np.ndarray, name: str = "image",
                 max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, BMP, PPM, TIFF, WebP, ...) to RGB uint8 (H, W, 3), turned by
    the file's EXIF orientation."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    if buf.dtype != np.uint8:
        raise ChsError(f"image {name}: expected encoded bytes (uint8), got {buf.dtype}")
    if buf.size == 0:
        raise ChsError(f"image {name} is empty (0 bytes)")
    raw = buf.tobytes()
    jpeg = raw.startswith(_JPEG_SOI)
    if jpeg and not _jpeg_is_complete(raw):
        raise ChsError(f"image {name} is truncated")
    if raw.startswith(_PNG_SIG) and raw.rfind(b"IEND") < 0:
        raise ChsError(f"image {name} is truncated")
    size = declared_size(raw)
    if size is not None:
        check_pixel_count(size[0], size[1], name, max_pixels)
    if jpeg:  # libjpeg reports corrupt data only on stderr: capture it, so it is one error line, not a warning
        img, warnings = _decode_capturing_stderr(buf, cv2.IMREAD_UNCHANGED)
        problem = _corruption(warnings)
        if problem and img is not None:
            raise ChsError(f"image {name} is corrupt ({problem})")
    else:
        try:
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        except cv2.error:
            img = None
    if img is None or img.size == 0:
        if raw.startswith((_JPEG_SOI, _PNG_SIG)):
            raise ChsError(f"cannot decode image {name}: corrupt {'JPEG' if raw[0] == 0xFF else 'PNG'} data")
        raise ChsError(f"cannot decode image {name}: not a supported image file")
    check_pixel_count(img.shape[1], img.shape[0], name, max_pixels)  # formats without a header reader
    rgb = _to_rgb8(img, name)
    h, w = rgb.shape[:2]
    if h < 2 or w < 2:
        raise ChsError(f"image {name} is too small ({w}x{h})")
    return apply_orientation(rgb, exif_orientation(raw))


__all__ = ["DEFAULT_MAX_PIXELS", "check_pixel_count", "decode_image", "max_image_pixels", "read_image"]

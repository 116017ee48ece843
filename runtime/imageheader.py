"""What an encoded image's header declares, read without decoding: its size and its EXIF orientation.

The size is checked against a pixel limit *before* the decoder allocates anything (a 875 KB PNG can
declare 30000 x 30000 pixels = 2.7 GB decoded). The orientation is how cameras record a portrait shot
stored sideways; OpenCV's IMREAD_UNCHANGED ignores it, so it is read here and applied by the caller.
Unknown formats return None: the caller then relies on checks after decoding.
"""

from __future__ import annotations

import re

import numpy as np

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNM = re.compile(rb"^P[1-6fF]((?:\s+|#[^\n]*\n)+)(\d+)((?:\s+|#[^\n]*\n)+)(\d+)")
_EXIF_ORIENTATION_TAG = 0x0112


def _u16(b: bytes, i: int, big: bool) -> int:
    return int.from_bytes(b[i : i + 2], "big" if big else "little")


def _u32(b: bytes, i: int, big: bool) -> int:
    return int.from_bytes(b[i : i + 4], "big" if big else "little")


def jpeg_segments(raw: bytes):
    """(marker, payload start, payload end) of each JPEG header segment up to and including the first SOS."""
    i, n = 2, len(raw)
    while i + 4 <= n:
        if raw[i] != 0xFF:
            return
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xD9:
            yield marker, i + 2, i + 2
            return
        seg_len = _u16(raw, i + 2, True)
        yield marker, i + 4, i + 2 + seg_len
        if marker == 0xDA:
            return
        i += 2 + seg_len


def _tiff_ifd0(raw: bytes, base: int = 0) -> tuple[bool, dict[int, int]]:
    """Byte order and the SHORT/LONG values of the first IFD of a TIFF structure starting at ``base``."""
    head = raw[base : base + 4]
    if head not in (b"II*\x00", b"MM\x00*"):
        return False, {}
    big = head[:2] == b"MM"
    ifd = base + _u32(raw, base + 4, big)
    if ifd + 2 > len(raw):
        return big, {}
    tags: dict[int, int] = {}
    for k in range(min(_u16(raw, ifd, big), 512)):
        e = ifd + 2 + 12 * k
        if e + 12 > len(raw):
            break
        tag, typ = _u16(raw, e, big), _u16(raw, e + 2, big)
        if typ == 3:  # SHORT
            tags[tag] = _u16(raw, e + 8, big)
        elif typ == 4:  # LONG
            tags[tag] = _u32(raw, e + 8, big)
    return big, tags


def declared_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a JPEG, PNG, GIF, BMP, WebP, TIFF, PNM/PFM or Sun raster file."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n") and raw[12:16] == b"IHDR":
        return _u32(raw, 16, True), _u32(raw, 20, True)
    if raw.startswith(b"\xff\xd8"):
        for marker, start, end in jpeg_segments(raw):
            if marker in _JPEG_SOF and end - start >= 5:
                return _u16(raw, start + 3, True), _u16(raw, start + 1, True)
        return None
    if raw[:6] in (b"GIF87a", b"GIF89a") and len(raw) >= 10:
        return _u16(raw, 6, False), _u16(raw, 8, False)
    if raw.startswith(b"BM") and len(raw) >= 26:
        if _u32(raw, 14, False) == 12:
            return _u16(raw, 18, False), _u16(raw, 20, False)
        w = int.from_bytes(raw[18:22], "little", signed=True)
        h = int.from_bytes(raw[22:26], "little", signed=True)
        return abs(w), abs(h)
    if raw.startswith(b"RIFF") and raw[8:12] == b"WEBP" and len(raw) >= 30:
        chunk = raw[12:16]
        if chunk == b"VP8X":
            return 1 + int.from_bytes(raw[24:27], "little"), 1 + int.from_bytes(raw[27:30], "little")
        if chunk == b"VP8L":
            bits = _u32(raw, 21, False)
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if chunk == b"VP8 ":
            return _u16(raw, 26, False) & 0x3FFF, _u16(raw, 28, False) & 0x3FFF
        return None
    if raw[:4] in (b"II*\x00", b"MM\x00*"):
        _, tags = _tiff_ifd0(raw)
        if 256 in tags and 257 in tags:
            return tags[256], tags[257]
        return None
    if raw.startswith(b"\x59\xa6\x6a\x95") and len(raw) >= 12:  # Sun raster
        return _u32(raw, 4, True), _u32(raw, 8, True)
    m = _PNM.match(raw[:512])
    if m:
        return int(m.group(2)), int(m.group(4))
    return None


def _exif_payload(raw: bytes) -> tuple[bytes, int] | None:
    """The TIFF-structured EXIF block of a JPEG (APP1 'Exif') or PNG ('eXIf' chunk), with its offset."""
    if raw.startswith(b"\xff\xd8"):
        for marker, start, end in jpeg_segments(raw):
            if marker == 0xE1 and raw[start : start + 6] == b"Exif\x00\x00":
                return raw[: end], start + 6
        return None
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        i = 8
        while i + 8 <= len(raw):
            length, kind = _u32(raw, i, True), raw[i + 4 : i + 8]
            if kind == b"eXIf":
                return raw[: i + 8 + length], i + 8
            if kind in (b"IDAT", b"IEND"):
                return None
            i += 12 + length
    return None


def exif_orientation(raw: bytes) -> int:
    """EXIF orientation 1..8 of a JPEG or PNG (1 = stored as displayed, also when absent or invalid)."""
    found = _exif_payload(raw)
    if found is None:
        return 1
    block, base = found
    _, tags = _tiff_ifd0(block, base)
    value = tags.get(_EXIF_ORIENTATION_TAG, 1)
    return value if 1 <= value <= 8 else 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """The stored pixels turned the way EXIF says the image is displayed (the same result as cv2.IMREAD_COLOR)."""
    if orientation == 2:
        out = img[:, ::-1]
    elif orientation == 3:
        out = img[::-1, ::-1]
    elif orientation == 4:
        out = img[::-1]
    elif orientation == 5:
        out = np.swapaxes(img, 0, 1)
    elif orientation == 6:
        out = np.rot90(img, -1)
    elif orientation == 7:
        out = np.rot90(np.swapaxes(img, 0, 1), 2)
    elif orientation == 8:
        out = np.rot90(img, 1)
    else:
        return img
    return np.ascontiguousarray(out)


__all__ = ["apply_orientation", "declared_size", "exif_orientation", "jpeg_segments"]

"""An image's size from its file's header, read before decoding: a huge image is refused
before it takes gigabytes (a 20000x20000 PNG of a few kilobytes decodes into 1.2 GB).

OpenCV has a limit of its own (``OPENCV_IO_MAX_IMAGE_PIXELS``, 2^30 pixels) but reads it
when cv2 is imported, so edged cannot set it; it stays the limit of the formats read here
without a header check (TIFF and the rarer ones).
"""

from __future__ import annotations

import struct
from pathlib import Path

# 64 megapixels (8K x 8K), about 200 MB as BGR: far above a camera frame or a photo a model
# needs, far below what decoding a hostile file would take
MAX_IMAGE_PIXELS = 64_000_000
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:  # no length
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", head[i + 2 : i + 4])[0]
        if marker in _SOF:
            height, width = struct.unpack(">HH", head[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(head) >= 30:
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


def image_size(path: Path, read: int = 65536) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG, JPEG, BMP, WebP or PNM file; None when unknown."""
    try:
        with path.open("rb") as f:
            head = f.read(read)
    except OSError:
        return None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        w, h = struct.unpack(">II", head[16:24])
        return w, h
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(head)
    if head[:2] == b"BM" and len(head) >= 26:
        w, h = struct.unpack("<ii", head[18:26])
        return abs(w), abs(h)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(head)
    if head[:1] == b"P" and head[1:2] in b"123456":
        fields = head[2:200].split(maxsplit=2)  # comments in PNM headers are rare: unknown then
        if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
            return int(fields[0]), int(fields[1])
    return None

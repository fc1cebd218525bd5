"""Generators of bad input for the tests: broken and hostile frames, odd keys, bad annotations (Label Studio results).

Every item is made here, from a real frame, so the corpus is reproducible and nothing binary is committed.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import cv2
import numpy as np


def corrupt_jpeg(good: bytes, seed: int = 0) -> bytes:
    """A whole-looking JPEG (header, end marker) whose image data has 2,000 bytes overwritten at random."""
    rng = np.random.default_rng(seed)
    b = bytearray(good)
    mid = len(b) // 2
    b[mid : mid + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    return bytes(b)


def truncated(good: bytes) -> bytes:
    """The first half of a frame (an upload cut off)."""
    return good[: len(good) // 2]


def png_of(good_jpeg: bytes) -> bytes:
    """The same picture as PNG bytes (to be stored under a ``.jpg`` key)."""
    img = cv2.imdecode(np.frombuffer(good_jpeg, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(".png", img)[1].tobytes()


def one_pixel() -> bytes:
    return cv2.imencode(".jpg", np.zeros((1, 1, 3), np.uint8))[1].tobytes()


def png_bomb(side: int = 20_000) -> bytes:
    """A real ``side x side`` PNG (1-bit grey, all black): ~50 KB that decodes to ``3 * side**2`` bytes in colour
    (1.2 GB at 20,000 px)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def jpeg_claiming(good: bytes, width: int = 20_000, height: int = 20_000) -> bytes:
    """A real JPEG whose frame header (SOF) claims ``width x height``: the decoder would allocate for that."""
    b = bytearray(good)
    i = 2
    while i + 9 < len(b):
        marker = b[i + 1]
        seg = int.from_bytes(b[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            b[i + 5 : i + 7] = height.to_bytes(2, "big")
            b[i + 7 : i + 9] = width.to_bytes(2, "big")
            return bytes(b)
        i += 2 + seg
    raise ValueError("no SOF marker")


# ---- Label Studio results (percent of the image) -------------------------------------------------------------
def rect(x: float, y: float, w: float, h: float, label: str, width: int = 640, height: int = 480) -> dict[str, Any]:
    return {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": width,
            "original_height": height, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]}}

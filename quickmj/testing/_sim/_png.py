"""Real, tiny PNG images made with zlib and struct: 2x2 grids, single images, previews."""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib

__all__ = ("Colour", "colours_for", "grid_png", "mp4_stub", "preview_png", "single_png")

Colour = tuple[int, int, int]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(width: int, height: int, rows: list[bytes]) -> bytes:
    """An 8-bit RGB PNG from ``height`` rows of ``3 * width`` bytes each."""
    raw = b"".join(b"\x00" + row for row in rows)  # filter type 0 (None) per row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def colours_for(key: str) -> tuple[Colour, Colour, Colour, Colour]:
    """Four colours derived from ``key`` (a task id): one per grid quadrant."""
    digest = hashlib.sha256(key.encode()).digest()
    out = [(digest[i], digest[i + 1], digest[i + 2]) for i in (0, 3, 6, 9)]
    return out[0], out[1], out[2], out[3]


def _gradient_row(colour: Colour, y: int, height: int, width: int) -> bytes:
    """One row of a vertical gradient from ``colour`` to a darker shade."""
    shade = 1.0 - 0.5 * (y / max(height - 1, 1))
    pixel = bytes(int(c * shade) for c in colour)
    return pixel * width


def _mix(colour: Colour, grey: float) -> Colour:
    r, g, b = colour
    return (
        int(r + (128 - r) * grey),
        int(g + (128 - g) * grey),
        int(b + (128 - b) * grey),
    )


@functools.lru_cache(maxsize=512)
def grid_png(colours: tuple[Colour, Colour, Colour, Colour], size: int) -> bytes:
    """A ``size`` x ``size`` 2x2 grid, quadrants 1-4 left to right, top to bottom."""
    half = size // 2
    other = size - half
    rows: list[bytes] = []
    for y in range(size):
        top = y < half
        local, span = (y, half) if top else (y - half, other)
        left, right = (colours[0], colours[1]) if top else (colours[2], colours[3])
        rows.append(
            _gradient_row(left, local, span, half) + _gradient_row(right, local, span, other)
        )
    return encode_png(size, size, rows)


@functools.lru_cache(maxsize=512)
def single_png(colour: Colour, size: int) -> bytes:
    """One ``size`` x ``size`` image (an upscale of one quadrant)."""
    rows = [_gradient_row(colour, y, size, size) for y in range(size)]
    return encode_png(size, size, rows)


@functools.lru_cache(maxsize=512)
def preview_png(colours: tuple[Colour, Colour, Colour, Colour], size: int, percent: int) -> bytes:
    """A half-size, greyed grid: the in-progress preview at ``percent``."""
    grey = max(0.0, min(1.0, 1.0 - percent / 100))
    faded = (
        _mix(colours[0], grey),
        _mix(colours[1], grey),
        _mix(colours[2], grey),
        _mix(colours[3], grey),
    )
    return grid_png(faded, max(2, size // 2))


def mp4_stub(key: str) -> bytes:
    """A few bytes that start like an MP4 file (``ftyp`` box): the simulated video."""
    tag = hashlib.sha256(key.encode()).digest()[:8]
    ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isommp41"
    free = struct.pack(">I", 16) + b"free" + tag
    return ftyp + free

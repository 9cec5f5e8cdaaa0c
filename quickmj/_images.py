"""Turning the caller's images (bytes, paths, data URLs, http URLs) into wire strings."""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path
from typing import Union

from ._blocking import off_loop
from .errors import InvalidInputError

__all__ = ("ImageInput", "to_data_url", "to_wire_images")

#: What the SDK accepts wherever an image is expected.
ImageInput = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]

#: Images larger than this are refused before upload (the relays reject them anyway).
MAX_IMAGE_BYTES = 20 * 1024 * 1024

_DATA_URL = re.compile(r"^data:(image/[A-Za-z0-9.+-]+);base64,([A-Za-z0-9+/=\s]+)$", re.S)

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def sniff_mime(data: bytes) -> str:
    """The image type from its first bytes (PNG, JPEG, GIF, WebP)."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise InvalidInputError("not a PNG, JPEG, GIF or WebP image (unrecognised leading bytes)")


def _from_bytes(data: bytes) -> str:
    if not data:
        raise InvalidInputError("empty image")
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidInputError(f"image larger than {MAX_IMAGE_BYTES} bytes")
    return f"data:{sniff_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"


async def to_data_url(image: ImageInput, *, allow_url: bool = True) -> str:
    """Encode one image for the wire.

    - bytes: sniffed and wrapped as ``data:image/...;base64,...``;
    - a ``data:image/...;base64,`` string: validated and passed through;
    - an ``http(s)://`` string: passed through (relays fetch it themselves) if allowed;
    - anything else (str or PathLike): read as a file path.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(image))
    if isinstance(image, str):
        text = image.strip()
        if text.startswith("data:"):
            m = _DATA_URL.match(text)
            if not m:
                raise InvalidInputError("malformed data URL: expected data:image/<type>;base64,...")
            try:
                base64.b64decode(m.group(2), validate=False)
            except (binascii.Error, ValueError) as exc:
                raise InvalidInputError("data URL does not hold valid base64") from exc
            return text
        if text.startswith(("http://", "https://")):
            if not allow_url:
                raise InvalidInputError("this field takes image data, not a URL")
            return text
    if not isinstance(image, (str, os.PathLike)):
        raise InvalidInputError(f"unsupported image type {type(image).__name__}")
    path = Path(os.fspath(image))
    try:
        data = await off_loop(path.read_bytes)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot read image file {os.fspath(image)!r}: {exc.strerror}"
        ) from exc
    return _from_bytes(data)


async def to_wire_images(
    images: ImageInput | list[ImageInput] | tuple[ImageInput, ...],
) -> tuple[str, ...]:
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    return tuple([await to_data_url(i) for i in items])

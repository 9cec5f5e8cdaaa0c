"""Turning the caller's images (bytes, paths, data URLs, http URLs) into wire strings."""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path

from ._blocking import off_loop
from ._types import ImageInput
from .errors import InvalidInputError

__all__ = (
    "SNIFF_BYTES",
    "media_type",
    "sniff_mime",
    "to_data_url",
    "to_wire_images",
    "what_came",
)

#: Images larger than this are refused before upload (the relays reject them anyway).
MAX_IMAGE_BYTES = 20 * 1024 * 1024

_DATA_URL = re.compile(r"^data:(image/[A-Za-z0-9.+-]+);base64,([A-Za-z0-9+/=\s]+)$", re.S)

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def _image_mime(data: bytes) -> str | None:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def sniff_mime(data: bytes) -> str:
    """The image type from its first bytes (PNG, JPEG, GIF, WebP)."""
    mime = _image_mime(data)
    if mime is None:
        raise InvalidInputError("not a PNG, JPEG, GIF or WebP image (unrecognised leading bytes)")
    return mime


#: ISO base media ``ftyp`` brands that are still images, not videos.
_STILL_BRANDS = {
    b"avif": "image/avif",
    b"avis": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"mif1": "image/heif",
}
#: Bytes enough to tell a media file from a web page (HTML can start with whitespace).
SNIFF_BYTES = 512


def media_type(head: bytes) -> str | None:
    """The type of a downloaded file from its first bytes, or None if it is no image/video.

    Images as the relays serve them (PNG, JPEG, GIF, WebP; AVIF/HEIC from re-hosting
    storage) and the videos of video jobs (MP4/MOV ``ftyp``, WebM). The Content-Type is
    not consulted: a gateway labels its HTML error page ``image/png`` as easily.
    """
    mime = _image_mime(head)
    if mime is not None:
        return mime
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _STILL_BRANDS:
            return _STILL_BRANDS[brand]
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    return None


def what_came(head: bytes, size: int, content_type: str) -> str:
    """Words for a download that is not media: "an HTML page", "an empty answer", ..."""
    if size == 0:
        return "an empty answer"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    mime = content_type.split(";", 1)[0].strip()
    label = f"labelled {mime}" if mime else "without a Content-Type"
    if text.startswith((b"<!doctype html", b"<head", b"<body")) or b"<html" in text:
        kind = "an HTML page"
    elif text.startswith((b"<?xml", b"<error")):
        kind = "an XML document"
    elif text.startswith((b"{", b"[")):
        kind = "a JSON text"
    else:
        kind = "data that is no image or video"
    return f"{kind} ({size} bytes, {label})"


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

"""Saving a task's image to disk: safe names, streamed writes, atomic rename."""

from __future__ import annotations

import contextlib
import mimetypes
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import anyio

from ._transport import MAX_DOWNLOAD_BYTES, Transport
from .errors import DownloadError, InvalidInputError

__all__ = ("download_url", "safe_stem")

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "video/mp4": ".mp4",
}
_KNOWN_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4"})


def safe_stem(name: str) -> str:
    """A file name stem that cannot leave the target directory or hide itself.

    Separators, ``..`` and anything outside ``[A-Za-z0-9_.-]`` become ``_``; leading dots
    are removed; an empty result becomes ``task``.
    """
    stem = _UNSAFE.sub("_", name).strip("._")[:120]
    return stem or "task"


def _extension(content_type: str, url: str) -> str:
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime in _EXTENSIONS:
        return _EXTENSIONS[mime]
    # The URL's suffix is used only if it is a known image suffix, never as a path.
    suffix = os.path.splitext(urlsplit(url).path)[1].lower()
    if suffix in _KNOWN_SUFFIXES:
        return suffix
    guessed = mimetypes.guess_extension(mime) if mime.startswith("image/") else None
    return guessed or ".bin"


async def download_url(
    transport: Transport,
    url: str,
    dest: str | os.PathLike[str],
    stem: str,
    *,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Path:
    """Stream ``url`` into ``dest/<stem><ext>``: a temp file first, renamed when complete.

    A failed or cancelled download leaves no partial file behind.
    """
    if not stem:
        raise InvalidInputError("empty file name")
    directory = Path(dest)
    try:
        await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create directory {str(directory)!r}: {exc.strerror}") from exc
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{stem}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            content_type = await transport.download_to(url, fh, max_bytes)
            fh.flush()
            os.fsync(fh.fileno())
        final = directory / f"{stem}{_extension(content_type, url)}"
        os.replace(tmp_name, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return final

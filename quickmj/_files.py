"""Saving a task's image to disk: safe names, streamed writes, atomic rename, umask.

The file appears only when complete (written to a ``.part`` temp file, flushed, then
renamed); a failed or cancelled download leaves nothing behind. A full or read-only disk
is a StorageError naming the path, never a transport error.
"""

from __future__ import annotations

import contextlib
import errno
import mimetypes
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from ._blocking import off_loop
from ._http import MAX_DOWNLOAD_BYTES
from ._relay import Relay
from .errors import InvalidInputError, QuickMJError, StorageError

__all__ = ("PART_SUFFIX", "download_url", "safe_stem", "storage_error")

PART_SUFFIX = ".part"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "video/mp4": ".mp4",
}
_KNOWN_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4"})
_DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, getattr(errno, "EDQUOT", errno.ENOSPC)}
)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Final files get the mode a plain ``open()`` would give them (temp files are 0600).
_FILE_MODE = 0o666 & ~_current_umask()


def safe_stem(name: str) -> str:
    """A file name stem that cannot leave the target directory or hide itself.

    Separators, ``..`` and anything outside ``[A-Za-z0-9_.-]`` become ``_``; leading dots
    are removed; an empty result becomes ``task``.
    """
    stem = _UNSAFE.sub("_", name).strip("._")[:120]
    return stem or "task"


def storage_error(exc: OSError, path: str | os.PathLike[str]) -> StorageError | None:
    """A StorageError for a full, read-only or forbidden disk; None for other OSErrors."""
    if exc.errno not in _DISK_ERRNOS:
        return None
    reason = {
        errno.ENOSPC: "no space left on the device",
        errno.EROFS: "the file system is read-only",
    }.get(exc.errno or 0, "permission denied")
    return StorageError(
        f"cannot write {os.fspath(path)!r}: {reason}", path=os.fspath(path), errno=exc.errno
    )


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
    relay: Relay,
    url: str,
    dest: str | os.PathLike[str],
    stem: str,
    *,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Path:
    """Stream ``url`` into ``dest/<stem><ext>``: a temp file first, renamed when complete."""
    if not stem:
        raise InvalidInputError("empty file name")
    directory = Path(dest)
    try:
        await off_loop(lambda: directory.mkdir(parents=True, exist_ok=True))
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{stem}.", suffix=PART_SUFFIX)
    except OSError as exc:
        raise storage_error(exc, directory) or _cannot(exc, directory) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            content_type = await relay.download(url, fh, max_bytes)
            fh.flush()
            os.fsync(fh.fileno())
        final = directory / f"{stem}{_extension(content_type, url)}"
        os.chmod(tmp_name, _FILE_MODE)
        os.replace(tmp_name, final)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        # quickmj's own ConnectError/RequestTimeoutError are OSErrors too: only the
        # disk's own failures become StorageError.
        if isinstance(exc, OSError) and not isinstance(exc, QuickMJError):
            raise storage_error(exc, tmp_name) or _cannot(exc, directory) from None
        raise
    return final


def _cannot(exc: OSError, path: Path) -> StorageError:
    return StorageError(
        f"cannot write into {str(path)!r}: {exc.strerror or exc}", path=str(path), errno=exc.errno
    )

"""Saving a task's image to disk: safe names, streamed writes, atomic rename, umask.

The file appears only when complete (written to a ``.part`` temp file, flushed, then
renamed); a failed or cancelled download leaves nothing behind. A full or read-only disk
is a StorageError naming the path, never a transport error.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import tempfile
import unicodedata
from collections.abc import Awaitable, Callable
from pathlib import Path

from ._blocking import off_loop
from ._http import MAX_DOWNLOAD_BYTES
from ._models import Task
from ._relay import Relay
from .errors import (
    ClientClosedError,
    DownloadError,
    ImageExpiredError,
    InvalidInputError,
    NotAnImageError,
    QuickMJError,
    StorageError,
)

__all__ = (
    "PART_SUFFIX",
    "STEM_BYTES",
    "cap_utf8",
    "download_url",
    "media_of",
    "safe_stem",
    "save_task_media",
    "storage_error",
)

logger = logging.getLogger("quickmj")

PART_SUFFIX = ".part"
_UNSAFE_RUN = re.compile("\0+")
_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "image/avif": ".avif",
    "image/heic": ".heic",
    "image/heif": ".heif",
}
_DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, getattr(errno, "EDQUOT", errno.ENOSPC)}
)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Final files get the mode a plain ``open()`` would give them (temp files are 0600).
_FILE_MODE = 0o666 & ~_current_umask()


#: A stem's longest UTF-8 form: with the temp file's ``.<stem>.XXXXXXXX.part`` it stays
#: well within the usual 255-byte limit on a file name.
STEM_BYTES = 120


def safe_stem(name: str) -> str:
    """A file name stem that cannot leave the target directory or hide itself.

    Letters and digits of any script (with their combining marks), ``_``, ``.`` and ``-``
    are kept; separators and anything else become ``_``; leading and trailing dots are
    removed; at most 120 bytes of UTF-8; an empty result becomes ``task``. Applying it
    twice changes nothing.
    """
    # A run of unsafe characters becomes one "_" (the old ASCII rule's names stay).
    kept = "".join(c if _name_char(c) else "\0" for c in name)
    stem = _UNSAFE_RUN.sub("_", kept).strip("._")
    stem = cap_utf8(stem, STEM_BYTES).strip("._")
    return stem or "task"


def _name_char(c: str) -> bool:
    if c.isascii():
        return c.isalnum() or c in "_.-"
    return c.isalnum() or unicodedata.category(c) in ("Mn", "Mc")


def cap_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, never inside a character."""
    return text.encode("utf-8", "surrogatepass")[:limit].decode("utf-8", "ignore")


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


def _extension(content_type: str, sniffed: str) -> str:
    """The extension of the bytes for an image (its magic bytes are exact: PNG bytes
    labelled image/jpeg are a .png); for a video the label's when it names a video too
    (an ``ftyp`` box tells MP4 from MOV less surely than the server does), else that of
    the bytes (a storage that serves application/octet-stream, a thumbnail labelled
    video/mp4); never from the URL."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if sniffed.startswith("video/") and mime.startswith("video/") and mime in _EXTENSIONS:
        return _EXTENSIONS[mime]
    return _EXTENSIONS.get(sniffed, ".bin")


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
            # The relay checks size and leading bytes before this returns: a web page or
            # an empty answer raises here, and the temp file is removed below.
            content_type, sniffed = await relay.download(url, fh, max_bytes)
            fh.flush()
            os.fsync(fh.fileno())
        final = directory / f"{stem}{_extension(content_type, sniffed)}"
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


# ---- a task's image, with one re-read of the task when its link is dead ----

#: A link that is dead (refused, gone) or serves no image: worth one re-read of the task.
_STALE = (ImageExpiredError, NotAnImageError)


def media_of(task: Task, index: int | None, filename: str | None) -> tuple[str, str]:
    """The URL to save for ``task`` and the file's stem (see ``AsyncClient.download``)."""
    if index is None:
        # A video job's image is its thumbnail: the video is what was asked for.
        url = task.video_url or task.image_url
        stem = safe_stem(filename or task.id)
    else:
        if not 1 <= index <= len(task.image_urls):
            raise InvalidInputError(
                f"task {task.id} has {len(task.image_urls)} image_urls; "
                f"index {index} is out of range"
            )
        url = task.image_urls[index - 1].url
        stem = safe_stem(filename or f"{task.id}-{index}")
    if not url:
        raise DownloadError(f"task {task.id} has no image yet (status {task.status})")
    return url, stem


async def save_task_media(
    relay: Relay,
    task: Task,
    dest: str | os.PathLike[str],
    *,
    index: int | None,
    filename: str | None,
    reread: Callable[[str], Awaitable[Task]] | None,
) -> Path:
    """Save ``task``'s image (or video) into ``dest``.

    A link the host refuses or that serves no image gets one more chance: ``reread`` (the
    client's fetch; None when ``task`` was read just now) reads the task again, and its
    link is tried if it changed (Discord signs links with ``ex=/is=/hm=`` that expire, a
    relay re-signs them). Otherwise the error says the relay has no fresher link.
    """
    url, stem = media_of(task, index, filename)
    try:
        return await download_url(relay, url, dest, stem)
    except _STALE as exc:
        if reread is None or not task.id:
            why = "the task was read just now, so the relay has no fresher link"
            raise _explained(exc, task.id, why) from exc
        failed = exc
    logger.info(
        "download of task %s failed (%s): reading the task again for a fresher link",
        task.id,
        type(failed).__name__,
    )
    try:
        fresh = await reread(task.id)
    except ClientClosedError:
        raise
    except QuickMJError as exc:
        said = " ".join(str(exc).split())  # its own error is the cause; a line here
        why = f"reading the task again failed ({type(exc).__name__}: {said[:200]})"
        raise _explained(failed, task.id, why) from exc
    try:
        fresh_url, _ = media_of(fresh, index, filename)
    except (DownloadError, InvalidInputError):
        raise _explained(failed, task.id, "the task read again has no such link") from failed
    if fresh_url == url:
        raise _explained(failed, task.id, "the relay has no fresher link") from failed
    try:
        return await download_url(relay, fresh_url, dest, stem)
    except _STALE as exc:
        raise _explained(exc, task.id, "the task read again gave a link that failed too") from exc


def _explained(exc: ImageExpiredError | NotAnImageError, task_id: str, why: str) -> DownloadError:
    """``exc`` again, naming the task and what the re-read found."""
    message = f"task {task_id}: {exc}; {why}" if task_id else f"{exc}; {why}"
    if isinstance(exc, ImageExpiredError):
        return ImageExpiredError(message, url=exc.url, status=exc.status, task_id=task_id)
    return NotAnImageError(message, url=exc.url, got=exc.got, task_id=task_id)

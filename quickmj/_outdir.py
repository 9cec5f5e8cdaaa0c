"""A batch's output directory: one writer at a time, its layout, and its safety checks.

``out/`` holds ``images/``, ``manifest.jsonl``, the journal ``.quickmj-journal.sqlite``
(the record of paid work) and ``.quickmj-lock``. A run owns the directory through an
OS-level lock on the lock file (``flock``; ``msvcrt.locking`` on Windows), which dies
with its holder: a ``kill -9`` never leaves the directory locked for the next
``--resume``. A second run, in another process or in the same one, is refused at once
with the holder's pid, host and start time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ._files import PART_SUFFIX, storage_error
from ._journal import Journal, JournalRow, manifest_lines
from .errors import BatchLockedError, JournalError, StorageError, UsageError

__all__ = ("JOURNAL_NAME", "LOCK_NAME", "MANIFEST_NAME", "BatchDir")

JOURNAL_NAME = ".quickmj-journal.sqlite"
MANIFEST_NAME = "manifest.jsonl"
LOCK_NAME = ".quickmj-lock"
IMAGES = "images"
#: Where a batch's downloads land (inside ``images/``) before they are linked into place.
STAGING = ".incoming"

# Directories held by runs of this process (flock already refuses them; this gives the
# clearer message without touching the file).
_held: set[str] = set()
_held_lock = threading.Lock()


class BatchDir:
    """The output directory of one run (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.journal_path = self.path / JOURNAL_NAME
        self.images = self.path / IMAGES
        self._lock_file: IO[str] | None = None

    def __repr__(self) -> str:
        return f"<BatchDir {str(self.path)!r}>"

    # ---- ownership ----

    def acquire(self) -> None:
        """Create the directory if needed and take the lock (BatchLockedError if held)."""
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"out {str(self.path)!r} is a file, not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, self.path) or _cannot(exc, self.path) from None
        key = str(self.path.resolve())
        with _held_lock:
            if key in _held:
                raise self._locked(f"another batch in this process (pid {os.getpid()})")
            fh = self._open_lock()
            if not _try_lock(fh):
                holder = _read_holder(fh)
                fh.close()
                raise self._locked(holder)
            _held.add(key)
        _write_holder(fh)
        self._lock_file = fh

    def release(self) -> None:
        """Give the directory up (the OS lock goes with the file)."""
        fh, self._lock_file = self._lock_file, None
        if fh is None:
            return
        with _held_lock:
            _held.discard(str(self.path.resolve()))
        fh.close()

    def __enter__(self) -> BatchDir:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _open_lock(self) -> IO[str]:
        try:
            return open(self.path / LOCK_NAME, "a+", encoding="utf-8")
        except OSError as exc:
            raise storage_error(exc, self.path) or _cannot(exc, self.path) from None

    def _locked(self, holder: str) -> BatchLockedError:
        info = _parse_holder(holder)
        return BatchLockedError(
            f"{str(self.path)!r} is in use by {holder}; wait for that run to end "
            "(or stop it), then resume=True",
            pid=info.get("pid"),
            host=str(info.get("host", "")),
            started=str(info.get("started", "")),
        )

    # ---- the journal ----

    def open_journal(
        self, items: list[tuple[str, dict[str, Any]]], *, resume: bool, check_input: bool = True
    ) -> Journal:
        """The journal for a fresh run (created) or a resume (which must find it whole)."""
        if resume:
            return self._resume_journal(items if check_input else None)
        journal = self._unstarted_journal()
        if journal is None and self.journal_path.exists():
            raise UsageError(
                f"{str(self.path)!r} already holds a batch: resume it with resume=True, "
                "or choose a new out directory"
            )
        leftovers = [p.name for p in (self.path / MANIFEST_NAME, self.images) if p.exists()]
        if leftovers:
            if journal is not None:
                journal.close()
            raise JournalError(
                f"{str(self.path)!r} holds {' and '.join(leftovers)} but no batch journal: "
                "it is another run's output; choose a new out directory"
            )
        if journal is None:
            journal = Journal(self.journal_path, create=True)
        try:
            journal.load_prompts(items)
        except BaseException:
            journal.close()
            raise
        return journal

    def _unstarted_journal(self) -> Journal | None:
        """The journal a fresh run killed before recording its prompts left (nothing was
        submitted: the same command may start again in it), else None."""
        if not self.journal_path.exists():
            return None
        journal = Journal(self.journal_path, create=False)
        try:
            if journal.is_empty() and not journal.holds_input():
                return journal
        except BaseException:
            journal.close()
            raise
        journal.close()
        return None

    def _resume_journal(self, items: list[tuple[str, dict[str, Any]]] | None) -> Journal:
        if not self.journal_path.exists():
            raise JournalError(
                f"nothing to resume: {str(self.path)!r} has no batch journal "
                f"({JOURNAL_NAME}); nothing was submitted"
            )
        journal = Journal(self.journal_path, create=False)
        try:
            journal.check_complete()
            if journal.is_empty() and not journal.holds_input():
                raise JournalError(
                    f"the batch journal in {str(self.path)!r} is empty: the run that made it "
                    "stopped before recording its prompts, so nothing was submitted; "
                    "run the same command again without resume=True"
                )
            if journal.is_empty():
                raise JournalError(
                    f"the batch journal in {str(self.path)!r} is empty (damaged or emptied); "
                    "refusing to resume: its jobs may have been paid for"
                )
            if items is not None and not journal.same_input(items):
                raise UsageError(
                    f"the prompts differ from the batch in {str(self.path)!r}; "
                    "resume with the same input file"
                )
        except BaseException:
            journal.close()
            raise
        return journal

    # ---- files ----

    def clean_parts(self) -> int:
        """Remove partial downloads a killed run left behind; returns how many."""
        removed = 0
        if self.images.is_dir():
            # Downloads a killed run left aside (complete or not) are fetched again.
            staged = self.images / STAGING
            leftovers = list(staged.iterdir()) if staged.is_dir() else []
            for part in [*self.images.glob(f".*{PART_SUFFIX}"), *leftovers]:
                with contextlib.suppress(OSError):
                    part.unlink()
                    removed += 1
        return removed

    def write_manifest(
        self, journal: Journal, extra: Callable[[JournalRow], dict[str, Any]] | None = None
    ) -> Path:
        """Write ``manifest.jsonl`` atomically from the journal (``extra``: more fields
        per row)."""
        path = self.path / MANIFEST_NAME
        tmp = self.path / f".{MANIFEST_NAME}{PART_SUFFIX}"
        lines = manifest_lines(journal.rows(), extra)
        try:
            tmp.write_text("".join(f"{line}\n" for line in lines), "utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise storage_error(exc, path) or _cannot(exc, path) from None
        return path


def _try_lock(fh: IO[str]) -> bool:
    try:
        if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
            import msvcrt

            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _write_holder(fh: IO[str]) -> None:
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
    with contextlib.suppress(OSError):
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(info))
        fh.flush()


def _read_holder(fh: IO[str]) -> str:
    with contextlib.suppress(OSError, ValueError):
        fh.seek(0)
        info = json.loads(fh.read() or "{}")
        if isinstance(info, dict) and info:
            return f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}"
    return "another run"


def _parse_holder(holder: str) -> dict[str, Any]:
    parts = holder.split()
    if len(parts) >= 6 and parts[0] == "pid":
        pid = int(parts[1]) if parts[1].isdigit() else None
        return {"pid": pid, "host": parts[3], "started": parts[5]}
    return {}


def _cannot(exc: OSError, path: Path) -> StorageError:
    return StorageError(
        f"cannot use {str(path)!r}: {exc.strerror or exc}", path=str(path), errno=exc.errno
    )

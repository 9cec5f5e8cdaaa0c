"""The batch journal: a small SQLite file, the record of paid work in a batch directory.

Every prompt has one row. A row is marked ``submitting`` (with the state tag it is sent
with) *before* its submit goes out and gets its task id right after the answer, so a run
that is killed at any instant resumes without paying twice: rows with a task id are
waited on again, rows caught between the two writes are "unknown outcome" (the tag lets
``quickmj reconcile`` find the job), never re-submitted blindly.

Durability: WAL mode, every change committed at once, so a ``kill -9`` loses nothing
acknowledged (the ``-wal`` file holds it until the next checkpoint). The main file
records whether a run is open; a run that ends (or is interrupted) checkpoints the WAL
into the main file and marks it closed, so the directory can be copied. A journal whose
run did not close and whose ``-wal`` file is missing (copied without it) is refused:
task ids of paid jobs may be missing from it.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

from ._converter import repair_text
from .errors import JournalError, StorageError

__all__ = ("RESERVE_SUFFIX", "Journal", "JournalRow", "Phase", "Snapshot", "read_snapshot")

logger = logging.getLogger("quickmj")

#: The file next to the journal that holds its reserved room (see ``Journal.reserve``).
RESERVE_SUFFIX = "-reserve"

_SCHEMA_VERSION = "2"
#: Pages (4 KiB) the -wal file holds before SQLite copies them into the main file.
_WAL_PAGES = 32


class Phase(str, enum.Enum):
    """Where one prompt stands."""

    PENDING = "pending"  # nothing sent yet
    SUBMITTING = "submitting"  # a submit is (or was) on the wire; no task id recorded
    RUNNING = "running"  # task id known; waiting, upscaling or downloading
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the relay reported FAILURE (or the job was cancelled)
    REJECTED = "rejected"  # the relay refused the submit: nothing was created
    TIMED_OUT = "timed_out"  # paid, still running when the wait limit hit: --resume waits again
    INCOMPLETE = "incomplete"  # paid, but not followed to the end (files not saved, ...): resumable
    UNKNOWN = "unknown"  # the submit's outcome is unknown: reconcile before re-submitting

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        """Nothing more to do for the prompt (a resume leaves it alone)."""
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.REJECTED, Phase.UNKNOWN)


@attrs.frozen
class JournalRow:
    """One prompt's record."""

    index: int
    prompt: str
    options: dict[str, Any]
    phase: Phase
    task_id: str | None = None
    upscales: dict[str, str] = attrs.field(factory=dict)  # "U1" -> task id
    pressing: str | None = None  # the label whose press is (or was) on the wire
    files: tuple[str, ...] = ()
    seed: str | None = None
    status: str | None = None
    reason: str | None = None
    code: int | None = None
    tag: str | None = None
    sent_at: float | None = None
    account: str | None = None
    names: dict[str, str] = attrs.field(factory=dict)
    """The file stems chosen for this prompt's images ("grid", "U1".. -> stem), recorded
    before any download so a resume saves under the same names."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    idx INTEGER PRIMARY KEY,
    prompt TEXT NOT NULL,
    options TEXT NOT NULL,
    phase TEXT NOT NULL,
    task_id TEXT,
    upscales TEXT NOT NULL DEFAULT '{}',
    pressing TEXT,
    files TEXT NOT NULL DEFAULT '[]',
    seed TEXT,
    status TEXT,
    reason TEXT,
    code INTEGER,
    tag TEXT,
    sent_at REAL,
    account TEXT,
    updated REAL NOT NULL,
    names TEXT NOT NULL DEFAULT '{}'
);
"""
_COLUMNS = (
    "idx, prompt, options, phase, task_id, upscales, pressing, files, seed, status, reason,"
    " code, tag, sent_at, account, names"
)


@contextlib.contextmanager
def _guard(what: str, path: Path) -> Iterator[None]:
    """Turn SQLite's failures into quickmj's typed errors (one line each)."""
    try:
        yield
    except sqlite3.Error as exc:
        text = str(exc).lower()
        if any(m in text for m in ("full", "readonly", "read-only", "disk i/o", "unable to open")):
            raise StorageError(
                f"cannot write the batch journal {str(path)!r}: {exc}", path=str(path)
            ) from None
        raise JournalError(
            f"the batch journal {str(path)!r} is damaged ({what}: {exc}); keep a copy, "
            "then resume from a backup or settle its jobs with 'quickmj reconcile'"
        ) from None


class Journal:
    """One SQLite file per output directory; every change is committed at once."""

    def __init__(self, path: str | Path, *, create: bool) -> None:
        self.path = Path(path)
        self._began = False  # this object began a run
        self._reserve = Path(f"{self.path}{RESERVE_SUFFIX}")
        self._reserved = False
        #: The disk filled up and the reserved room was given back to the journal.
        self.out_of_room = False
        #: Called (once) when that happens: the run must stop using the disk.
        self.on_full: Callable[[], None] | None = None
        # A killed run's news sits in the -wal file; without it the main file may lack
        # task ids (see check_complete). Noted before SQLite opens (and creates) it.
        wal = Path(f"{self.path}-wal")
        self._wal_found = wal.exists() and wal.stat().st_size > 0
        if not create and not self.path.exists():
            raise JournalError(f"no batch journal at {str(self.path)!r}")
        with _guard("open", self.path):
            self._db = sqlite3.connect(self.path, isolation_level=None)  # autocommit
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                # A bounded -wal file (SQLite's default lets it grow to ~4 MB): once it
                # has its size, writes reuse its blocks, and the journal needs little
                # room on a disk that fills up.
                self._db.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")
                self._db.executescript(_SCHEMA)
                _add_missing_columns(self._db)
            except BaseException:
                self._db.close()
                raise

    def close(self) -> None:
        """Close the file. SQLite checkpoints the WAL into the main file as it closes, so
        a run that gets this far is durable in the main file alone: say so there.

        Unless the journal came without the -wal file its open run needs (copied without
        it): then the "open" mark stays, so every later resume refuses it too."""
        with contextlib.suppress(sqlite3.Error, StorageError):
            whole = self._began or self._wal_found
            if whole and self._meta_raw("run_state") == "open":
                self._write(lambda: self._set_meta("run_state", "closed"), "end")
        self._db.close()
        self.release_reserve()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- runs ----

    def check_complete(self) -> None:
        """Refuse a journal whose last run did not close and whose WAL file is gone."""
        state = self._meta("run_state")
        wal = Path(f"{self.path}-wal")
        if state == "open" and (not wal.exists() or wal.stat().st_size == 0):
            raise JournalError(
                f"the batch journal {str(self.path)!r} is incomplete: its last run did not "
                f"end and its -wal file is missing (copied without it?); paid jobs may be "
                "missing from it. Copy the directory again with the journal's -wal file"
            )

    def begin_run(self) -> str:
        """Mark a run open (in the main file itself) and return its id."""
        run_id = uuid.uuid4().hex[:8]
        with _guard("begin", self.path):
            self._set_meta("run_state", "open")
            self._set_meta("run_id", run_id)
            # RESTART, not TRUNCATE: the main file says "open" and the -wal file keeps its
            # size, so a run killed before its next write is not mistaken by
            # check_complete for a journal copied without its -wal file.
            self._db.execute("PRAGMA wal_checkpoint(RESTART)")
        self._began = True
        return run_id

    def end_run(self) -> None:
        """Checkpoint everything into the main file and mark the run closed."""
        self._write(lambda: self._set_meta("run_state", "closed"), "end")
        with _guard("end", self.path):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # ---- room on a full disk ----

    def reserve(self, nbytes: int) -> None:
        """Hold ``nbytes`` of the disk for the journal (a file next to it, allocated now).

        Every journal write needs new blocks (SQLite appends to its ``-wal`` file). When
        the disk is full, the first write it refuses gives this room back and is tried
        again (``on_full`` is called: the run stops), so the task ids of submits already
        on the wire, and the run's closing marks, still reach the journal.

        Raises:
            StorageError: there is not that much room (nothing was submitted yet).
        """
        try:
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                _allocate(fd, nbytes)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._reserve.unlink()
            reason = "no space left on the device" if exc.errno == errno.ENOSPC else exc.strerror
            raise StorageError(
                f"cannot keep {nbytes // 1024} KiB free for the batch journal in "
                f"{str(self.path.parent)!r} ({reason}): nothing was submitted by this run",
                path=str(self._reserve),
                errno=exc.errno,
            ) from None
        self._reserved = True

    def release_reserve(self) -> bool:
        """Give the reserved room back to the disk; True if there was any."""
        had = self._reserved or self._reserve.exists()
        self._reserved = False
        with contextlib.suppress(OSError):
            self._reserve.unlink()
        return had

    def _write(self, do: Callable[[], object], what: str = "write") -> None:
        """One committed change; on a full disk, once more with the reserved room."""
        try:
            with _guard(what, self.path):
                do()
            return
        except StorageError:
            if not self.release_reserve():
                raise
        self.out_of_room = True
        logger.warning(
            "the disk holding %s is full: its reserved room goes to the journal", self.path
        )
        if self.on_full is not None:
            self.on_full()
        with _guard(what, self.path):
            do()

    def _meta(self, key: str) -> str | None:
        with _guard("read", self.path):
            return self._meta_raw(key)

    def _meta_raw(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ---- set-up ----

    def is_empty(self) -> bool:
        with _guard("read", self.path):
            return bool(self._db.execute("SELECT COUNT(*) FROM rows").fetchone()[0] == 0)

    def holds_input(self) -> bool:
        """Whether the prompts were ever recorded (``load_prompts`` committed). A journal
        without them was left by a run killed before its first submit: nothing was paid."""
        return self._meta("schema") is not None

    def load_prompts(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Record the input once (a resumed run must use the same input)."""
        now = time.time()
        with _guard("write", self.path):
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO rows (idx, prompt, options, phase, updated)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        (idx, _text(p), json.dumps(o, sort_keys=True), Phase.PENDING.value, now)
                        for idx, (p, o) in enumerate(items)
                    ),
                )
                self._set_meta("schema", _SCHEMA_VERSION)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def same_input(self, items: list[tuple[str, dict[str, Any]]]) -> bool:
        stored = [(r.prompt, r.options) for r in self.rows()]
        return stored == [(_text(p), json.loads(json.dumps(o, sort_keys=True))) for p, o in items]

    # ---- reading ----

    def rows(self) -> list[JournalRow]:
        with _guard("read", self.path):
            cur = self._db.execute(f"SELECT {_COLUMNS} FROM rows ORDER BY idx")
            return [_row(r, self.path) for r in cur]

    def row(self, index: int) -> JournalRow:
        with _guard("read", self.path):
            cur = self._db.execute(f"SELECT {_COLUMNS} FROM rows WHERE idx = ?", (index,))
            found = cur.fetchone()
        if found is None:
            raise JournalError(f"the batch journal has no row {index}")
        return _row(found, self.path)

    # ---- writing (each call one committed change) ----

    def mark_submitting(self, index: int, tag: str, *, pressing: str | None = None) -> None:
        """Written before a submit (or a button press) goes out."""
        fields: dict[str, Any] = {"tag": tag, "sent_at": time.time(), "pressing": pressing}
        if pressing is None:
            fields["phase"] = Phase.SUBMITTING
        self._update(index, **fields)

    def mark_pending(self, index: int, *, reason: str | None = None) -> None:
        """The submit certainly created nothing (refused before sending, say)."""
        self._update(index, phase=Phase.PENDING, reason=reason, pressing=None)

    def set_task(self, index: int, task_id: str, *, account: str | None = None) -> None:
        self._update(index, phase=Phase.RUNNING, task_id=task_id, account=account, reason=None)

    def set_upscale(self, index: int, label: str, task_id: str) -> None:
        upscales = dict(self.row(index).upscales)
        upscales[label] = task_id
        self._update(index, upscales=json.dumps(upscales, sort_keys=True), pressing=None)

    def set_phase(self, index: int, phase: Phase, **fields: Any) -> None:
        """Record where the prompt stands (``status``, ``reason``, ``code``, ``files``...)."""
        if "files" in fields:
            fields["files"] = json.dumps(list(fields["files"]))
        self._update(index, phase=phase, **fields)

    def set_names(self, index: int, names: dict[str, str]) -> None:
        """Record the file stems chosen for the prompt's images (before downloading)."""
        self._update(index, names=json.dumps(names, sort_keys=True, ensure_ascii=False))

    def _update(self, index: int, **fields: Any) -> None:
        names = ", ".join(f"{k} = ?" for k in fields)
        values = [_text(v) if isinstance(v, str) else v for v in fields.values()]
        self._write(
            lambda: self._db.execute(
                f"UPDATE rows SET {names}, updated = ? WHERE idx = ?", (*values, time.time(), index)
            )
        )


def _allocate(fd: int, nbytes: int) -> None:
    """Make the file ``nbytes`` long with every block really allocated."""
    if os.fstat(fd).st_size >= nbytes:
        return  # a killed run's reserve, still in place
    try:
        os.posix_fallocate(fd, 0, nbytes)
        return
    except AttributeError:  # pragma: no cover - macOS and Windows have no posix_fallocate
        pass
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
            raise
    # Written out, in random bytes: a compressing file system must store them whole.
    os.lseek(fd, 0, os.SEEK_SET)
    left = nbytes
    while left > 0:
        left -= os.write(fd, os.urandom(min(left, 1 << 16)))


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Journals written by an older quickmj lack the newer columns: add them."""
    have = {str(r[1]) for r in db.execute("PRAGMA table_info(rows)")}
    if "names" not in have:
        db.execute("ALTER TABLE rows ADD COLUMN names TEXT NOT NULL DEFAULT '{}'")


def _text(value: str) -> str:
    # SQLite stores UTF-8: text that is not valid Unicode must be repaired, not crash.
    return repair_text(value)


def _row(r: Any, path: Path) -> JournalRow:
    """A stored row, every column checked: a hand-edited or damaged value is a
    JournalError naming the file, the row and the column, never a bare ValueError."""
    index = r[0]
    check = _Checker(path, index, r)
    return JournalRow(
        index=index,
        prompt=check.text(1, "prompt", optional=False),
        options=check.json(2, "options", dict, "a JSON object"),
        phase=check.phase(3),
        task_id=check.text(4, "task_id"),
        upscales=check.json(5, "upscales", dict, 'a JSON object such as {"U1": "<task id>"}'),
        pressing=check.text(6, "pressing"),
        files=tuple(
            check.json(7, "files", list, 'a JSON list of file names such as ["images/x.png"]')
        ),
        seed=check.text(8, "seed"),
        status=check.text(9, "status"),
        reason=check.text(10, "reason"),
        code=check.number(11, "code", int),
        tag=check.text(12, "tag"),
        sent_at=check.number(13, "sent_at", float),
        account=check.text(14, "account"),
        names=check.json(15, "names", dict, 'a JSON object such as {"grid": "<file stem>"}'),
    )


class _Checker:
    """Decodes one row's columns; a bad one raises a JournalError that says what to do."""

    def __init__(self, path: Path, index: Any, raw: Any) -> None:
        self.path, self.index, self.raw = path, index, raw

    def bad(self, column: str, value: Any, expected: str) -> JournalError:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else f"{shown[:77]}..."
        task = self.raw[4] if isinstance(self.raw[4], str) else None
        fix = (
            f"set it back with sqlite3 (UPDATE rows SET {column} = ... WHERE idx = {self.index})"
            " or restore the journal from a backup"
        )
        if column == "phase" and task:
            fix += (
                f"; this prompt's job {task} is paid: phase 'incomplete' makes a resume "
                "follow it again"
            )
        return JournalError(
            f"the batch journal {str(self.path)!r} has a bad value in row {self.index} "
            f"(prompt {self.index + 1 if isinstance(self.index, int) else '?'} of the input), "
            f"column {column!r}: {shown} is not {expected}; {fix}, then run again "
            "with resume=True"
        )

    def text(self, at: int, column: str, *, optional: bool = True) -> Any:
        value = self.raw[at]
        if isinstance(value, str) or (value is None and optional):
            return value
        raise self.bad(column, value, "text" + (" or NULL" if optional else ""))

    def number(self, at: int, column: str, kind: type) -> Any:
        value = self.raw[at]
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            if kind is int and isinstance(value, float):
                raise self.bad(column, value, "a whole number or NULL")
            return value
        raise self.bad(column, value, "a number or NULL")

    def json(self, at: int, column: str, kind: type, expected: str) -> Any:
        value = self.raw[at]
        try:
            decoded = json.loads(value) if isinstance(value, (str, bytes)) else None
        except (ValueError, RecursionError):
            decoded = None
        items: list[Any] = []
        if isinstance(decoded, dict):
            items = list(decoded.values())
        elif isinstance(decoded, list):
            items = decoded
        shape_ok = isinstance(decoded, kind) and all(isinstance(v, str) for v in items)
        if column == "options":  # imagine options may hold any JSON value
            shape_ok = isinstance(decoded, dict)
        if not shape_ok:
            raise self.bad(column, value, expected)
        return decoded

    def phase(self, at: int) -> Phase:
        value = self.raw[at]
        try:
            return Phase(value)
        except ValueError:
            names = ", ".join(p.value for p in Phase)
            raise self.bad("phase", value, f"a phase ({names})") from None


def manifest_lines(
    rows: Iterable[JournalRow],
    extra: Callable[[JournalRow], dict[str, Any]] | None = None,
) -> Iterator[str]:
    """Manifest lines: one JSON object per prompt, in input order (``extra``: more
    fields per row, such as its spend)."""
    for r in rows:
        yield json.dumps(
            {
                "index": r.index,
                "prompt": r.prompt,
                "status": r.phase.value,
                "task_id": r.task_id,
                "upscale_task_ids": r.upscales,
                "files": list(r.files),
                "seed": r.seed,
                "task_status": r.status,
                "state": r.options.get("state"),
                "tag": r.tag,
                "sent_at": r.sent_at,
                "account": r.account,
                "reason": r.reason,
                "code": r.code,
                **(extra(r) if extra is not None else {}),
            },
            ensure_ascii=False,
        )


@attrs.frozen
class Snapshot:
    """A journal as it stood when read, without writing anything (see :func:`read_snapshot`)."""

    rows: list[JournalRow]
    run_open: bool
    """The last run recorded in it had not ended: it is running, or it was stopped without
    closing (killed); the rows are where every prompt stood then."""


def read_snapshot(path: str | Path) -> Snapshot:
    """Read a journal without writing to it or to its directory: no lock, no schema
    change, no checkpoint. For readers (the gallery) beside a run that may be writing.

    A journal with a ``-wal`` file (a run is open, or was killed) is read through SQLite
    read-only, which shares the writer's ``-shm`` index. A closed one (no ``-wal``) is read
    as immutable, so SQLite creates no ``-wal``/``-shm`` files next to it; if a run opened
    it meanwhile (the ``-wal`` file appeared, or the file changed), it is read again the
    first way.

    Raises:
        JournalError: no journal at ``path``, or a damaged one.
    """
    path = Path(path)
    wal = Path(f"{path}-wal")
    before = _identity(path)
    if not wal.exists():
        snap = _read_snapshot(path, immutable=True)
        if not wal.exists() and _identity(path) == before:
            return snap
    return _read_snapshot(path, immutable=False)


def _read_snapshot(path: Path, *, immutable: bool) -> Snapshot:
    uri = f"{path.resolve().as_uri()}?mode=ro{'&immutable=1' if immutable else ''}"
    with _guard("read", path):
        db = sqlite3.connect(uri, uri=True)
        try:
            rows = [_row(r, path) for r in db.execute(_snapshot_query(db))]
            state = db.execute("SELECT value FROM meta WHERE key = 'run_state'").fetchone()
        finally:
            db.close()
    return Snapshot(rows=rows, run_open=state is not None and state[0] == "open")


def _identity(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except OSError as exc:
        raise JournalError(f"no batch journal at {str(path)!r} ({exc.strerror})") from None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _snapshot_query(db: sqlite3.Connection) -> str:
    # A journal written by an older quickmj has no ``names`` column (read-only: not added).
    have = {str(r[1]) for r in db.execute("PRAGMA table_info(rows)")}
    columns = _COLUMNS if "names" in have else _COLUMNS.replace(", names", ", '{}'")
    return f"SELECT {columns} FROM rows ORDER BY idx"

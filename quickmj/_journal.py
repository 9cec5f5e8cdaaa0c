"""The batch journal: a small SQLite file that makes a batch run resumable.

Every prompt has one row. A row is marked ``submitting`` *before* its submit is sent and
gets its task id right after the answer, so a run that is killed can be resumed without
paying twice: rows with a task id are waited on again, rows caught between the two writes
are reported as "unknown outcome" for the user to decide, never re-submitted blindly.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

__all__ = ("Journal", "JournalRow", "Phase")


class Phase:
    """Row phases. Terminal ones end a prompt's story."""

    PENDING = "pending"  # nothing sent yet
    SUBMITTING = "submitting"  # a submit is (or was) on the wire; no task id recorded
    RUNNING = "running"  # task id known; waiting, upscaling or downloading
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the job ran and ended in FAILURE (or could not be finished)
    REJECTED = "rejected"  # the relay refused the submit: nothing was created
    UNKNOWN = "unknown"  # the submit's outcome is unknown: check before re-submitting

    TERMINAL = frozenset({SUCCEEDED, FAILED, REJECTED, UNKNOWN})


@attrs.frozen
class JournalRow:
    index: int
    prompt: str
    options: dict[str, Any]
    phase: str
    task_id: str | None = None
    upscales: dict[str, str] = attrs.field(factory=dict)  # "U1" -> task id
    files: tuple[str, ...] = ()
    seed: str | None = None
    status: str | None = None
    reason: str | None = None
    code: int | None = None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    idx INTEGER PRIMARY KEY,
    prompt TEXT NOT NULL,
    options TEXT NOT NULL,
    phase TEXT NOT NULL,
    task_id TEXT,
    upscales TEXT NOT NULL DEFAULT '{}',
    files TEXT NOT NULL DEFAULT '[]',
    seed TEXT,
    status TEXT,
    reason TEXT,
    code INTEGER,
    updated REAL NOT NULL
);
"""


class Journal:
    """One SQLite file per output directory; every change is committed at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None)  # autocommit
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- set-up ----

    def is_empty(self) -> bool:
        return bool(self._db.execute("SELECT COUNT(*) FROM rows").fetchone()[0] == 0)

    def load_prompts(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Record the input once (a resumed run must use the same input)."""
        with self._transaction():
            for idx, (prompt, options) in enumerate(items):
                self._db.execute(
                    "INSERT INTO rows (idx, prompt, options, phase, updated)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (idx, prompt, json.dumps(options, sort_keys=True), Phase.PENDING, time.time()),
                )

    def same_input(self, items: list[tuple[str, dict[str, Any]]]) -> bool:
        stored = [(r.prompt, r.options) for r in self.rows()]
        return stored == [(p, json.loads(json.dumps(o, sort_keys=True))) for p, o in items]

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # ---- reading ----

    def rows(self) -> list[JournalRow]:
        cur = self._db.execute(
            "SELECT idx, prompt, options, phase, task_id, upscales, files, seed, status, reason,"
            " code FROM rows ORDER BY idx"
        )
        return [_row(r) for r in cur]

    def row(self, index: int) -> JournalRow:
        cur = self._db.execute(
            "SELECT idx, prompt, options, phase, task_id, upscales, files, seed, status, reason,"
            " code FROM rows WHERE idx = ?",
            (index,),
        )
        return _row(cur.fetchone())

    # ---- writing ----

    def mark_submitting(self, index: int) -> None:
        self._update(index, phase=Phase.SUBMITTING)

    def mark_pending(self, index: int) -> None:
        """The submit certainly created nothing (rejected before sending, say)."""
        self._update(index, phase=Phase.PENDING)

    def set_task(self, index: int, task_id: str) -> None:
        self._update(index, phase=Phase.RUNNING, task_id=task_id)

    def set_upscale(self, index: int, label: str, task_id: str) -> None:
        upscales = dict(self.row(index).upscales)
        upscales[label] = task_id
        # Back to running: 'submitting' with a task id means a press is on the wire.
        self._update(index, phase=Phase.RUNNING, upscales=json.dumps(upscales, sort_keys=True))

    def finish(
        self,
        index: int,
        phase: str,
        *,
        status: str | None = None,
        reason: str | None = None,
        code: int | None = None,
        files: Iterable[str] = (),
        seed: str | None = None,
    ) -> None:
        assert phase in Phase.TERMINAL
        self._update(
            index,
            phase=phase,
            status=status,
            reason=reason,
            code=code,
            files=json.dumps(list(files)),
            seed=seed,
        )

    def _update(self, index: int, **fields: Any) -> None:
        names = ", ".join(f"{k} = ?" for k in fields)
        self._db.execute(
            f"UPDATE rows SET {names}, updated = ? WHERE idx = ?",
            (*fields.values(), time.time(), index),
        )

    def _transaction(self) -> Any:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _row(r: Any) -> JournalRow:
    return JournalRow(
        index=r[0],
        prompt=r[1],
        options=json.loads(r[2]),
        phase=r[3],
        task_id=r[4],
        upscales=json.loads(r[5]),
        files=tuple(json.loads(r[6])),
        seed=r[7],
        status=r[8],
        reason=r[9],
        code=r[10],
    )


def iter_jsonl(rows: Iterable[JournalRow]) -> Iterator[str]:
    """Manifest lines: one JSON object per prompt, in input order."""
    for r in rows:
        yield json.dumps(
            {
                "index": r.index,
                "prompt": r.prompt,
                "status": r.phase,
                "task_id": r.task_id,
                "upscale_task_ids": r.upscales,
                "files": list(r.files),
                "seed": r.seed,
                "task_status": r.status,
                "reason": r.reason,
                "code": r.code,
            },
            ensure_ascii=False,
        )

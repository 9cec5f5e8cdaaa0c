"""Batch integrity at its edges (issue 20): unique file names decided before the
download, task ids kept on a full disk, and hand-edited journals named precisely."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from quickmj import AsyncClient, JournalError, PollPolicy, StorageError
from quickmj._batch import BatchItem, _slug, run_batch
from quickmj._files import safe_stem
from quickmj._journal import Journal, Phase
from quickmj._outdir import JOURNAL_NAME
from quickmj.testing import SimulatorConfig, simulate

FAST = PollPolicy(interval=0.05, first_poll=0.02, near_done_interval=0.02, adaptive=False)


@pytest.fixture
async def relay() -> AsyncIterator[Any]:
    async with simulate(SimulatorConfig(seed=1)) as running:
        yield running


def client(relay: Any) -> AsyncClient:
    return AsyncClient(relay.api_key, base_url=relay.base_url, dialect=relay.dialect, poll=FAST)


def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _CrashOn:
    """AsyncClient.download that fails with a full disk for one file stem (once)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stem: str) -> None:
        self.stem = stem
        self.real = AsyncClient.download
        self.fired = 0
        monkeypatch.setattr(AsyncClient, "download", self)

    def __get__(self, obj: Any, kind: Any = None) -> Any:
        async def bound(task: Any, dest: Any, **kwargs: Any) -> Path:
            if kwargs.get("filename") == self.stem and not self.fired:
                self.fired += 1
                raise StorageError("no space left on the device", path=str(dest))
            return await self.real(obj, task, dest, **kwargs)

        return bound


# ---- names ----


def test_slugs_keep_letters_of_every_script() -> None:
    assert "a-cat" == _slug("A cat!") == _slug("a cat")
    assert "一只猫" == _slug("一只猫")
    assert "ünïcode-straße" == _slug("Ünïcode Straße")
    assert "full-width" == _slug("ｆｕｌｌ width")  # NFKC
    assert "prompt" == _slug("😀 !!")
    assert 80 >= len(_slug("猫" * 200).encode())  # capped in bytes, never mid-character
    assert "unicode-strasse" != _slug("Ünïcode Straße", ascii_only=True)
    assert _slug("Ünïcode", ascii_only=True).isascii()
    assert "一只猫" == safe_stem("一只猫") and "etc_passwd" == safe_stem("../../etc/passwd")
    assert safe_stem(safe_stem("a /é/ b")) == safe_stem("a /é/ b")


async def test_equal_slugs_get_their_own_files(relay: Any, tmp_path: Path) -> None:
    """Four prompts with one slug: four files, four names, each its own job's image."""
    items = [BatchItem(p) for p in ("a cat", "A cat!", "a  cat", "a-cat?")]
    items.append(BatchItem("一只猫"))
    async with client(relay) as mj:
        summary = await run_batch(mj, items, tmp_path, name="{slug}", concurrency=5)
        rows = manifest(tmp_path)
        tasks = [await mj.fetch(r["task_id"]) for r in rows]
    assert summary.ok
    files = [r["files"][0] for r in rows]
    assert 5 == len(set(files))
    assert {f"images/a-cat{s}.png" for s in ("", "-2", "-3", "-4")} == set(files[:4])
    assert "images/一只猫.png" == files[4]
    on_disk = [p.name for p in (tmp_path / "images").iterdir() if not p.name.startswith(".")]
    assert sorted(files) == sorted(f"images/{name}" for name in on_disk)
    # Each file holds its own job's image: the simulator draws each job's picture.
    async with client(relay) as mj:
        for row, task in zip(rows, tasks, strict=True):
            fresh = tmp_path / "fresh"
            path = await mj.download(task, fresh)
            assert digest(path) == digest(tmp_path / row["files"][0])
            shutil.rmtree(fresh)


async def test_a_file_already_there_is_never_replaced(
    relay: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume finds a stranger's file at a name it would choose: it picks the next one;
    a name it chose in an earlier run is its own (journaled) and is used again."""
    items = [BatchItem("a cat"), BatchItem("a cat"), BatchItem("a cat")]
    crash = _CrashOn(monkeypatch, "a-cat-2")
    async with client(relay) as mj:
        with pytest.raises(StorageError):
            await run_batch(mj, items, tmp_path, name="{slug}", concurrency=1)
        assert 1 == crash.fired
        with Journal(tmp_path / JOURNAL_NAME, create=False) as journal:
            named = {r.index: r.names for r in journal.rows()}
        assert {"grid": "a-cat"} == named[0] and {"grid": "a-cat-2"} == named[1]
        assert {} == named[2]
        stranger = tmp_path / "images" / "a-cat-3.png"
        stranger.write_bytes(b"someone else's picture")
        summary = await run_batch(mj, items, tmp_path, name="{slug}", concurrency=1, resume=True)
    assert summary.ok
    assert ["images/a-cat.png", "images/a-cat-2.png", "images/a-cat-4.png"] == [
        r["files"][0] for r in manifest(tmp_path)
    ]
    assert b"someone else's picture" == stranger.read_bytes()
    assert not list((tmp_path / "images" / ".incoming").iterdir())


async def test_a_name_taken_meanwhile_is_kept_and_the_row_resumable(
    relay: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that appears at the chosen name during the download is not replaced: the
    row is incomplete and a resume saves it under a new name."""
    real = AsyncClient.download
    stranger = tmp_path / "images" / "a-dog.png"

    async def intruder(self: AsyncClient, task: Any, dest: Any, **kwargs: Any) -> Path:
        path = await real(self, task, dest, **kwargs)
        if not stranger.exists():
            stranger.write_bytes(b"not yours")
        return path

    monkeypatch.setattr(AsyncClient, "download", intruder)
    async with client(relay) as mj:
        first = await run_batch(mj, [BatchItem("a dog")], tmp_path, name="{slug}")
        (row,) = manifest(tmp_path)
        assert 1 == first.incomplete and "already exists" in row["reason"]
        summary = await run_batch(mj, [BatchItem("a dog")], tmp_path, name="{slug}", resume=True)
    assert summary.ok and ["images/a-dog-2.png"] == manifest(tmp_path)[0]["files"]
    assert b"not yours" == stranger.read_bytes()


# ---- hand-edited journals ----


async def _finished_batch(relay: Any, out: Path) -> Path:
    async with client(relay) as mj:
        await run_batch(mj, [BatchItem("a cat"), BatchItem("a dog")], out, download=False)
    return out / JOURNAL_NAME


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("phase", "done", "is not a phase"),
        ("options", "{not json", "is not a JSON object"),
        ("files", '"images/x.png"', "is not a JSON list"),
        ("upscales", '{"U1": 5}', "is not a JSON object"),
        ("code", "abc", "is not a number"),
        ("task_id", b"\x00", "is not text"),
        ("names", "[]", "is not a JSON object"),
    ],
)
async def test_a_hand_edited_value_names_file_row_and_column(
    relay: Any, tmp_path: Path, column: str, value: Any, expected: str
) -> None:
    path = await _finished_batch(relay, tmp_path)
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE rows SET {column} = ? WHERE idx = 1", (value,))
    db.close()
    with pytest.raises(JournalError) as caught:
        async with client(relay) as mj:
            await run_batch(mj, [BatchItem("a cat"), BatchItem("a dog")], tmp_path, resume=True)
    text = str(caught.value)
    assert (
        str(path) in text
        and "row 1 (prompt 2 of the input)" in text
        and f"column {column!r}" in text
    )
    assert expected in text and "--resume" in text and "UPDATE rows SET" in text
    assert "\n" not in text


async def test_a_bad_phase_on_a_paid_row_says_how_to_resume_it(relay: Any, tmp_path: Path) -> None:
    path = await _finished_batch(relay, tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE rows SET phase = 'done' WHERE idx = 0")
    db.close()
    with Journal(path, create=False) as journal, pytest.raises(JournalError) as caught:
        journal.rows()
    assert "'done' is not a phase (pending, submitting" in str(caught.value)
    assert "phase 'incomplete' makes --resume follow it again" in str(caught.value)


def test_a_torn_last_write_is_tolerated(tmp_path: Path) -> None:
    """A write torn by a crash (the -wal file cut mid-frame) is dropped by SQLite's
    checksums: the journal opens with the commits before it, no error."""
    live = tmp_path / "live"
    live.mkdir()
    journal = Journal(live / JOURNAL_NAME, create=True)
    journal.load_prompts([("a cat", {}), ("a dog", {})])
    journal.begin_run()
    journal.set_task(0, "1730000000000001")
    journal.set_task(1, "1730000000000002")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (JOURNAL_NAME, f"{JOURNAL_NAME}-wal"):
        shutil.copy(live / name, copy / name)
    journal.close()
    wal = copy / f"{JOURNAL_NAME}-wal"
    wal.write_bytes(wal.read_bytes()[:-1000])  # the last frame cut short
    with Journal(copy / JOURNAL_NAME, create=False) as torn:
        torn.check_complete()
        rows = torn.rows()
    assert "1730000000000001" == rows[0].task_id
    assert rows[1].phase in (Phase.PENDING, Phase.RUNNING)

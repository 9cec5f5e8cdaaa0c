"""Batch integrity at its edges (issue 20): unique file names decided before the
download, task ids kept on a full disk, and hand-edited journals named precisely."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import can_mount_privately
from fakes import sim_client as client

from quickmj import AsyncClient, BatchItem, JournalError, StorageError, _journal, run_batch
from quickmj._batch import _slug
from quickmj._files import safe_stem
from quickmj._journal import Journal, Phase
from quickmj._outdir import JOURNAL_NAME
from quickmj.testing import SimulatorConfig, simulate


@pytest.fixture
async def relay() -> AsyncIterator[Any]:
    async with simulate(SimulatorConfig(seed=1)) as running:
        yield running


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
    assert expected in text and "resume=True" in text and "UPDATE rows SET" in text
    assert "\n" not in text


async def test_a_bad_phase_on_a_paid_row_says_how_to_resume_it(relay: Any, tmp_path: Path) -> None:
    path = await _finished_batch(relay, tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE rows SET phase = 'done' WHERE idx = 0")
    db.close()
    with Journal(path, create=False) as journal, pytest.raises(JournalError) as caught:
        journal.rows()
    assert "'done' is not a phase (pending, submitting" in str(caught.value)
    assert "phase 'incomplete' makes a resume follow it again" in str(caught.value)


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


# ---- a full disk never loses a paid job's id ----


class _DiskFills:
    """The disk fills up as the first task id is journaled: that write (and, with
    ``failures=2``, its retry on the reserved room too) is refused with ENOSPC."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, failures: int) -> None:
        self.failures = failures
        self.left = 0
        self.fired = False
        self.refused = 0
        real_set_task = Journal.set_task
        real_guard = _journal._guard

        def set_task(journal: Journal, index: int, task_id: str, **kwargs: Any) -> None:
            if not self.fired:
                self.fired, self.left = True, self.failures
            real_set_task(journal, index, task_id, **kwargs)

        @contextlib.contextmanager
        def guard(what: str, path: Path) -> Iterator[None]:
            if self.left and what == "write":
                self.left -= 1
                self.refused += 1
                raise StorageError(f"cannot write {str(path)!r}: no space left on the device")
            with real_guard(what, path):
                yield

        monkeypatch.setattr(Journal, "set_task", set_task)
        monkeypatch.setattr(_journal, "_guard", guard)


def _created(relay: Any) -> Counter[str]:
    return Counter(s.prompt for s in relay.simulator.submissions if s.endpoint == "/submit/imagine")


async def test_the_reserve_takes_the_ids_of_submits_on_the_wire(
    relay: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first refused journal write gets the reserved room: the run stops, every job
    the relay accepted has its id in the journal, and the resume finishes them all."""
    items = [BatchItem(f"a cat {i}") for i in range(12)]
    disk = _DiskFills(monkeypatch, failures=1)
    async with client(relay) as mj:
        with pytest.raises(StorageError) as caught:
            await run_batch(mj, items, tmp_path, concurrency=6)
        assert 1 == disk.refused and () == caught.value.unjournaled
        assert not (tmp_path / f"{JOURNAL_NAME}-reserve").exists()  # given back at the end
        created = _created(relay)
        with Journal(tmp_path / JOURNAL_NAME, create=False) as journal:
            ids = {r.prompt: r.task_id for r in journal.rows()}
        assert created and all(ids[prompt] for prompt in created)
        monkeypatch.undo()
        summary = await run_batch(mj, items, tmp_path, resume=True)
    assert summary.ok and {1} == set(_created(relay).values()) and 12 == len(_created(relay))


async def test_ids_the_disk_refused_are_named_in_the_error(
    relay: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even the reserve's room refused: the id is kept in memory and the error names the
    row, the prompt, the task id and what to run; never 'paid jobs are kept'."""
    items = [BatchItem(f"a dog {i}") for i in range(4)]
    _DiskFills(monkeypatch, failures=2)
    async with client(relay) as mj:
        with pytest.raises(StorageError) as caught:
            await run_batch(mj, items, tmp_path, concurrency=1)
    (task_id,) = caught.value.unjournaled
    text = str(caught.value)
    assert "1 paid job could not be journaled: row 0 (prompt 'a dog 0'): " in text
    assert f"task {task_id}: not journaled" in text and f"quickmj wait {task_id}" in text
    assert task_id in relay.simulator.engine.tasks
    assert "paid jobs are kept" not in _cli_hint(caught.value)
    assert "paid jobs are kept" in _cli_hint(StorageError("disk full"))


def _cli_hint(exc: StorageError) -> str:
    from quickmj._cli import _storage_hint

    return _storage_hint(exc)


def test_the_cli_prints_ids_it_could_not_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from quickmj._cli import main

    (tmp_path / "p.txt").write_text("a cat\na dog\n", "utf-8")
    _DiskFills(monkeypatch, failures=2)
    for name in [k for k in os.environ if k.startswith("QUICKMJ_")]:
        monkeypatch.delenv(name)
    code = main(["batch", str(tmp_path / "p.txt"), "--simulate", "--out", str(tmp_path / "o"),
                 "--plain", "--concurrency", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert 1 == code
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "could not be journaled: row 0 (prompt 'a cat')" in line and "quickmj wait " in line
    assert "paid jobs are kept" not in line and "--resume" in line


def test_no_room_for_the_reserve_submits_nothing(tmp_path: Path) -> None:
    """Where the journal's room cannot be set aside, the run stops before any submit."""
    journal = Journal(tmp_path / JOURNAL_NAME, create=True)
    with pytest.raises(StorageError) as caught:
        journal.reserve(1 << 62)
    journal.close()
    assert "cannot keep" in str(caught.value) and "nothing was submitted" in str(caught.value)
    assert not (tmp_path / f"{JOURNAL_NAME}-reserve").exists()


@pytest.mark.skipif(not can_mount_privately(), reason="needs unshare -rm and tmpfs (Linux)")
def test_a_tiny_real_disk_loses_no_task_id(tmp_path: Path) -> None:
    """A 300 KiB tmpfs fills up with 16 submits in flight: after the resume (with room)
    every prompt succeeded, none is 'unknown', no job was created twice."""
    script = Path(__file__).parent / "fixtures" / "tiny_disk_batch.py"
    done = subprocess.run(
        ["unshare", "-rm", sys.executable, str(script), str(tmp_path), "300k", "60", "16"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert 0 == done.returncode, done.stderr
    report = json.loads(done.stdout)
    assert report["first"].startswith("StorageError: ") and "no space left" in report["first"]
    assert 0 == report["lost"] and 0 == report["duplicates"]
    assert {"succeeded": 60} == report["statuses"] and 60 == report["images"]


def test_a_journal_from_before_names_gains_the_column(tmp_path: Path) -> None:
    """A journal written by an older quickmj (no ``names`` column) opens and resumes."""
    path = tmp_path / JOURNAL_NAME
    with Journal(path, create=True) as journal:
        journal.load_prompts([("a cat", {})])
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE rows DROP COLUMN names")
    db.close()
    with Journal(path, create=False) as journal:
        assert {} == journal.row(0).names
        journal.set_names(0, {"grid": "a-cat"})
        assert {"grid": "a-cat"} == journal.row(0).names


def test_the_journal_needs_little_room(tmp_path: Path) -> None:
    """The -wal file stays small (SQLite's default lets it grow to about 4 MB before it
    is copied into the main file): on a disk that fills up the journal asks for little."""
    with Journal(tmp_path / JOURNAL_NAME, create=True) as journal:
        journal.load_prompts([(f"a cat {i}", {}) for i in range(500)])
        journal.begin_run()
        for i in range(500):
            journal.mark_submitting(i, f"qmj:run:{i}")
            journal.set_task(i, str(1730000000000000 + i))
            journal.set_phase(i, Phase.SUCCEEDED, files=[f"images/a-cat-{i}.png"])
        wal = (tmp_path / f"{JOURNAL_NAME}-wal").stat().st_size
    assert wal < 256 * 1024
